//! How big the next chunk is and when it may start: adaptive chunk size
//! toward a target duration, and an optional rows-per-second cap. Pure.

use std::time::{Duration, Instant};

/// Chunk sizing and rate limiting of one backfill.
#[derive(Debug, Clone)]
pub struct Pace {
    min: u32,
    max: u32,
    target: Duration,
    rows: u32,
    rate: Option<u32>,
    next_start: Option<Instant>,
}

impl Pace {
    /// Starts at `min` rows; adapts toward chunks lasting `target`.
    pub fn new(min: u32, max: u32, target: Duration, rate: Option<u32>) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        // A chunk never asks for more rows than a second's worth of the cap.
        let max = rate.map_or(max, |r| max.min(r.max(min)));
        Pace {
            min,
            max,
            target: target.max(Duration::from_millis(1)),
            rows: min,
            rate,
            next_start: None,
        }
    }

    /// Rows to ask for in the next chunk.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Target duration of one chunk.
    pub fn target(&self) -> Duration {
        self.target
    }

    /// When the next chunk may start (the rate cap), if it must wait.
    pub fn ready_at(&self) -> Option<Instant> {
        self.next_start
    }

    /// Records a chunk of `rows` read when `asked` were asked for, which
    /// took `elapsed` from the start of its read to its commit. Grows at
    /// most 2× per chunk, shrinks at once; a short final chunk (fewer rows
    /// than asked) says nothing about speed and does not resize.
    pub fn observe(&mut self, rows: usize, asked: u32, elapsed: Duration, now: Instant) {
        if let Some(rate) = self.rate {
            let spacing = Duration::from_secs_f64(rows as f64 / f64::from(rate.max(1)));
            // Spaced from the start of this chunk, or from when it was
            // allowed to start if that was later.
            let start = now.checked_sub(elapsed).unwrap_or(now);
            let base = self.next_start.map_or(start, |n| n.max(start));
            self.next_start = Some(base + spacing);
        }
        if rows < asked as usize || rows == 0 {
            return;
        }
        let secs = elapsed.as_secs_f64().max(1e-4);
        let ideal = rows as f64 * self.target.as_secs_f64() / secs;
        let next = ideal.min(f64::from(self.rows) * 2.0).round();
        self.rows = (next as u32).clamp(self.min, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_at_most_doubling_toward_the_target() {
        let mut p = Pace::new(1000, 50_000, Duration::from_millis(500), None);
        let now = Instant::now();
        // 1000 rows in 10 ms: ideal 50,000, but at most 2x per chunk.
        p.observe(1000, 1000, Duration::from_millis(10), now);
        assert_eq!(p.rows(), 2000);
        p.observe(2000, 2000, Duration::from_millis(20), now);
        assert_eq!(p.rows(), 4000);
        for _ in 0..10 {
            let asked = p.rows();
            p.observe(asked as usize, asked, Duration::from_millis(u64::from(asked) / 100), now);
        }
        assert_eq!(p.rows(), 50_000);
    }

    #[test]
    fn shrinks_at_once_but_not_below_the_minimum() {
        let mut p = Pace::new(1000, 50_000, Duration::from_millis(500), None);
        let now = Instant::now();
        for _ in 0..8 {
            let asked = p.rows();
            p.observe(asked as usize, asked, Duration::from_millis(1), now);
        }
        assert_eq!(p.rows(), 50_000);
        // 50,000 rows took 5 s: 10x too slow.
        p.observe(50_000, 50_000, Duration::from_secs(5), now);
        assert_eq!(p.rows(), 5000);
        p.observe(5000, 5000, Duration::from_secs(60), now);
        assert_eq!(p.rows(), 1000);
    }

    #[test]
    fn a_short_final_chunk_does_not_resize() {
        let mut p = Pace::new(1000, 50_000, Duration::from_millis(500), None);
        p.observe(10, 1000, Duration::from_millis(1), Instant::now());
        assert_eq!(p.rows(), 1000);
    }

    #[test]
    fn rate_cap_spaces_chunks() {
        let mut p = Pace::new(100, 50_000, Duration::from_millis(500), Some(1000));
        assert_eq!(p.max, 1000, "a chunk holds at most a second of the cap");
        assert_eq!(p.ready_at(), None);
        let now = Instant::now();
        p.observe(500, 500, Duration::from_millis(10), now);
        let ready = p.ready_at().unwrap();
        let wait = ready.duration_since(now);
        assert!(
            wait >= Duration::from_millis(490) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }
}
