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

    /// Records that a chunk of `rows` was read, its read having started at
    /// `started`: with a rate cap, the next chunk may not start before
    /// `rows / rate` seconds after this one (or after the time this one was
    /// allowed to start, if that was later). Called when the read ends, so
    /// a chunk read ahead is spaced too.
    pub fn spaced(&mut self, rows: usize, started: Instant) {
        if let Some(rate) = self.rate {
            let spacing = Duration::from_secs_f64(rows as f64 / f64::from(rate.max(1)));
            let base = self.next_start.map_or(started, |n| n.max(started));
            self.next_start = Some(base + spacing);
        }
    }

    /// Records a chunk of `rows` read when `asked` were asked for, which
    /// took `elapsed` from the start of its read to its commit. Grows at
    /// most 2× per chunk, shrinks at once; a short final chunk (fewer rows
    /// than asked) says nothing about speed and does not resize.
    pub fn observe(&mut self, rows: usize, asked: u32, elapsed: Duration) {
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
        // 1000 rows in 10 ms: ideal 50,000, but at most 2x per chunk.
        p.observe(1000, 1000, Duration::from_millis(10));
        assert_eq!(p.rows(), 2000);
        p.observe(2000, 2000, Duration::from_millis(20));
        assert_eq!(p.rows(), 4000);
        for _ in 0..10 {
            let asked = p.rows();
            p.observe(asked as usize, asked, Duration::from_millis(u64::from(asked) / 100));
        }
        assert_eq!(p.rows(), 50_000);
    }

    #[test]
    fn shrinks_at_once_but_not_below_the_minimum() {
        let mut p = Pace::new(1000, 50_000, Duration::from_millis(500), None);
        for _ in 0..8 {
            let asked = p.rows();
            p.observe(asked as usize, asked, Duration::from_millis(1));
        }
        assert_eq!(p.rows(), 50_000);
        // 50,000 rows took 5 s: 10x too slow.
        p.observe(50_000, 50_000, Duration::from_secs(5));
        assert_eq!(p.rows(), 5000);
        p.observe(5000, 5000, Duration::from_secs(60));
        assert_eq!(p.rows(), 1000);
    }

    #[test]
    fn a_short_final_chunk_does_not_resize() {
        let mut p = Pace::new(1000, 50_000, Duration::from_millis(500), None);
        p.observe(10, 1000, Duration::from_millis(1));
        assert_eq!(p.rows(), 1000);
    }

    #[test]
    fn rate_cap_spaces_chunks() {
        let mut p = Pace::new(100, 50_000, Duration::from_millis(500), Some(1000));
        assert_eq!(p.max, 1000, "a chunk holds at most a second of the cap");
        assert_eq!(p.ready_at(), None);
        let started = Instant::now();
        p.spaced(500, started);
        assert_eq!(p.ready_at(), Some(started + Duration::from_millis(500)));
        // A chunk read ahead before that time is spaced after it.
        p.spaced(500, started + Duration::from_millis(10));
        assert_eq!(p.ready_at(), Some(started + Duration::from_millis(1000)));
    }
}
