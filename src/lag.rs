//! Replication lag, computed in one place and read by everyone who needs it:
//! backfill and verification pacing, `/readyz`, `/status` and `walshift
//! status`, the metrics, and (next) the cutover gates.
//!
//! Three figures:
//!
//! * **seconds**: the age, on the *source's* clock, of the oldest source
//!   commit not applied yet. The reader reports every transaction it
//!   forwards (with its commit time) and the applier every commit, so the
//!   oldest forwarded-but-unapplied commit is known exactly. WAL the
//!   walsender has not sent yet is covered by *heartbeats*: every
//!   `[source] heartbeat_interval_ms` walshift writes a logical message into
//!   the source WAL, noting the source's time and the message's position;
//!   a heartbeat not applied yet is a commit not applied yet. So lag is
//!   (nearly) zero on an idle source and rises steadily when any part of the
//!   pipeline stalls. Time is the source's clock: the heartbeat query reads
//!   `clock_timestamp()` and walshift keeps the offset to its own clock, so
//!   a skewed host clock does not corrupt the figure.
//! * **bytes**: the server's WAL end (from keepalives and heartbeats) minus
//!   the position durably applied to the target.
//! * **pacing**: what backfill and verification pace on: zero while the
//!   applier has nothing queued, else the age of the last applied commit
//!   (cheap, and never stuck on a heartbeat).
//!
//! Seconds is *unknown* (`None`) when nothing is outstanding but the stream
//! has not shown it is caught up (not connected, or no heartbeat came back
//! since it connected): a missing signal, which gates treat as "hold", never
//! as "passing". Heartbeats not applied yet survive reconnects, so a stream
//! that keeps failing shows a growing lag rather than an unknown one.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::lsn::Lsn;

/// Samples of the lag history kept for the status page (one per second:
/// 15 minutes).
pub const HISTORY_SAMPLES: usize = 900;

/// Most forwarded-but-unapplied commits remembered; the reader's channel
/// holds far fewer (8 chunks of at most 1,024 items).
const MAX_FORWARDED: usize = 1 << 20;

/// The slot as the source reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct SlotHealth {
    /// WAL the slot retains (`pg_current_wal_lsn() - restart_lsn`).
    pub retained_bytes: Option<i64>,
    /// `pg_replication_slots.wal_status` (`reserved`, `extended`,
    /// `unreserved`, `lost`).
    pub wal_status: Option<String>,
    /// `safe_wal_size`: WAL that can still be written before the slot is
    /// invalidated (only with `max_slot_wal_keep_size`).
    pub safe_wal_size: Option<i64>,
}

/// One sample of the lag history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct LagSample {
    /// Unix seconds (walshift's clock).
    pub at: f64,
    /// Lag in seconds, if known.
    pub seconds: Option<f64>,
    /// Lag in bytes, if known.
    pub bytes: Option<u64>,
}

#[derive(Debug, Default)]
struct LagState {
    /// Pacing: source commit time of the newest applied transaction.
    last_commit_time: Option<SystemTime>,
    applied: Lsn,
    durable: Lsn,
    waiting: bool,
    /// `(commit end, commit time)` forwarded by the reader, not applied yet.
    forwarded: VecDeque<(Lsn, SystemTime)>,
    /// `(message position, source time written)` of heartbeats not applied yet.
    heartbeats: VecDeque<(Lsn, SystemTime)>,
    /// Source time of the newest heartbeat applied.
    heartbeat_applied: Option<SystemTime>,
    /// A heartbeat was applied since the stream connected.
    heartbeat_since_connect: bool,
    /// Heartbeats are written (else seconds is known without them).
    heartbeats_enabled: bool,
    /// Source clock minus walshift's clock.
    clock_offset: Option<Duration>,
    clock_ahead: bool,
    wal_end: Lsn,
    /// When bytes last arrived on the replication stream.
    heard_at: Option<std::time::Instant>,
    connected: bool,
    slot: SlotHealth,
    history: VecDeque<LagSample>,
}

impl LagState {
    fn source_now(&self) -> SystemTime {
        let now = SystemTime::now();
        match self.clock_offset {
            Some(d) if self.clock_ahead => now + d,
            Some(d) => now.checked_sub(d).unwrap_or(now),
            None => now,
        }
    }

    fn seconds(&self) -> Option<Duration> {
        let oldest = [self.forwarded.front().map(|f| f.1), self.heartbeats.front().map(|h| h.1)]
            .into_iter()
            .flatten()
            .min();
        match oldest {
            // Something is not applied yet: its age, rising while anything
            // stalls (heartbeats outlive reconnects, so a stream that keeps
            // failing shows a growing lag, not an unknown one).
            Some(t) => Some(self.source_now().duration_since(t).unwrap_or_default()),
            // Nothing outstanding: caught up, if the stream is up and has
            // shown it (a heartbeat came back since it connected).
            None if self.connected
                && (!self.heartbeats_enabled || self.heartbeat_since_connect) =>
            {
                Some(Duration::ZERO)
            }
            None => None,
        }
    }

    fn bytes(&self) -> Option<u64> {
        let end = self.wal_end.max(self.heartbeats.back().map_or(Lsn::ZERO, |h| h.0));
        (!end.is_zero() && !self.durable.is_zero()).then(|| end.0.saturating_sub(self.durable.0))
    }
}

/// The pipeline's lag, shared across sessions (one per process).
#[derive(Debug, Default)]
pub struct Lag {
    state: Mutex<LagState>,
}

impl Lag {
    fn with<R: Default>(&self, f: impl FnOnce(&mut LagState) -> R) -> R {
        self.state.lock().map(|mut s| f(&mut s)).unwrap_or_default()
    }

    /// The reader forwarded a source transaction ending at `end`, committed
    /// at `commit_time` (source clock).
    pub fn forwarded(&self, end: Lsn, commit_time: SystemTime) {
        self.with(|s| {
            if s.forwarded.len() < MAX_FORWARDED {
                s.forwarded.push_back((end, commit_time));
            }
        });
    }

    /// The applier committed source transactions up to `applied`; the
    /// newest one committed at `commit_time`.
    pub fn applied(&self, applied: Lsn, commit_time: Option<SystemTime>) {
        self.with(|s| {
            s.applied = s.applied.max(applied);
            if commit_time.is_some() {
                s.last_commit_time = commit_time;
            }
            while s.forwarded.front().is_some_and(|f| f.0 <= applied) {
                s.forwarded.pop_front();
            }
            while let Some(&(at, written)) = s.heartbeats.front() {
                if at >= applied {
                    break;
                }
                s.heartbeats.pop_front();
                s.heartbeat_applied = Some(written);
                s.heartbeat_since_connect = true;
            }
        });
    }

    /// The applied position up to `durable` is flushed on the target.
    pub fn durable(&self, durable: Lsn) {
        self.with(|s| s.durable = s.durable.max(durable));
    }

    /// Whether stream items are waiting for the applier.
    pub fn waiting(&self, waiting: bool) {
        self.with(|s| s.waiting = waiting);
    }

    /// Bytes arrived on the replication stream.
    pub fn heard(&self) {
        self.with(|s| s.heard_at = Some(std::time::Instant::now()));
    }

    /// How long the replication stream has been silent (`None`: nothing
    /// heard yet). A stalled connection keeps its last figures; this tells
    /// they are stale.
    pub fn silent_for(&self) -> Option<Duration> {
        self.with(|s| s.heard_at.map(|t| t.elapsed()))
    }

    /// The server reported its WAL end.
    pub fn wal_end(&self, end: Lsn) {
        self.with(|s| s.wal_end = s.wal_end.max(end));
    }

    /// The stream (re)connected, or went away. Forgets what was in flight:
    /// a new stream resends it.
    pub fn connected(&self, connected: bool) {
        self.with(|s| {
            s.connected = connected;
            s.forwarded.clear();
            s.heartbeat_since_connect = false;
            if !connected {
                s.waiting = false;
            }
        });
    }

    /// A heartbeat message was written at position `at` when the source's
    /// clock read `source_time`; walshift's clock read `local_time` halfway
    /// through the query.
    pub fn heartbeat_written(&self, at: Lsn, source_time: SystemTime, local_time: SystemTime) {
        self.with(|s| {
            s.heartbeats_enabled = true;
            if at > s.applied {
                s.heartbeats.push_back((at, source_time));
                if s.heartbeats.len() > HISTORY_SAMPLES * 4 {
                    s.heartbeats.pop_front();
                }
            }
            s.wal_end = s.wal_end.max(at);
            match source_time.duration_since(local_time) {
                Ok(ahead) => {
                    s.clock_offset = Some(ahead);
                    s.clock_ahead = true;
                }
                Err(e) => {
                    s.clock_offset = Some(e.duration());
                    s.clock_ahead = false;
                }
            }
        });
    }

    /// The slot's health as last read from the source.
    pub fn set_slot(&self, slot: SlotHealth) {
        self.with(|s| s.slot = slot);
    }

    /// Records a history sample (once per second).
    pub fn sample(&self) {
        self.with(|s| {
            let at = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let sample =
                LagSample { at, seconds: s.seconds().map(|d| d.as_secs_f64()), bytes: s.bytes() };
            if s.history.len() >= HISTORY_SAMPLES {
                s.history.pop_front();
            }
            s.history.push_back(sample);
        });
    }

    /// Lag for pacing (see the module doc).
    pub fn current(&self) -> Option<Duration> {
        self.with(|s| {
            if !s.waiting {
                return Some(Duration::ZERO);
            }
            s.last_commit_time.map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
        })
    }

    /// Lag in seconds (see the module doc); `None` when unknown.
    pub fn seconds(&self) -> Option<Duration> {
        self.with(|s| s.seconds())
    }

    /// Lag in bytes; `None` when unknown.
    pub fn bytes(&self) -> Option<u64> {
        self.with(|s| s.bytes())
    }

    /// The last applied (committed) position.
    pub fn applied_lsn(&self) -> Lsn {
        self.with(|s| s.applied)
    }

    /// Whether the replication stream is connected.
    pub fn is_connected(&self) -> bool {
        self.with(|s| s.connected)
    }

    /// Source time of the newest heartbeat applied.
    pub fn heartbeat_applied(&self) -> Option<SystemTime> {
        self.with(|s| s.heartbeat_applied)
    }

    /// The slot's health.
    pub fn slot(&self) -> SlotHealth {
        self.with(|s| s.slot.clone())
    }

    /// The lag history, oldest first.
    pub fn history(&self) -> Vec<LagSample> {
        self.with(|s| s.history.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_is_zero_when_caught_up_else_age_of_last_commit() {
        let lag = Lag::default();
        assert_eq!(lag.current(), Some(Duration::ZERO));
        lag.waiting(true);
        assert_eq!(lag.current(), None);
        lag.applied(Lsn(10), Some(SystemTime::now() - Duration::from_secs(3)));
        let l = lag.current().unwrap();
        assert!(l >= Duration::from_secs(3) && l < Duration::from_secs(4));
        lag.waiting(false);
        assert_eq!(lag.current(), Some(Duration::ZERO));
        assert_eq!(lag.applied_lsn(), Lsn(10));
    }

    #[test]
    fn seconds_is_the_age_of_the_oldest_unapplied_commit_or_heartbeat() {
        let lag = Lag::default();
        assert_eq!(lag.seconds(), None, "not connected");
        lag.connected(true);
        // The source's clock is 5 s ahead of ours.
        let now = SystemTime::now();
        lag.heartbeat_written(Lsn(100), now + Duration::from_secs(5), now);
        assert!(lag.seconds().unwrap() < Duration::from_secs(1), "a heartbeat in flight");
        lag.applied(Lsn(101), None);
        assert_eq!(lag.seconds(), Some(Duration::ZERO), "caught up");
        assert!(lag.heartbeat_applied().is_some());
        // A commit made on the source 2 s ago (source clock) is 2 s old,
        // not 7 or -3.
        let source_now = SystemTime::now() + Duration::from_secs(5);
        lag.forwarded(Lsn(200), source_now - Duration::from_secs(2));
        lag.forwarded(Lsn(300), source_now - Duration::from_secs(1));
        let s = lag.seconds().unwrap();
        assert!(s >= Duration::from_secs(2) && s < Duration::from_millis(2500), "{s:?}");
        lag.applied(Lsn(200), None);
        let s = lag.seconds().unwrap();
        assert!(s >= Duration::from_secs(1) && s < Duration::from_millis(1500), "{s:?}");
        // A heartbeat still in the walsender counts as well.
        let three_ago = SystemTime::now() - Duration::from_secs(3);
        lag.heartbeat_written(Lsn(400), three_ago + Duration::from_secs(5), three_ago);
        let s = lag.seconds().unwrap();
        assert!(s >= Duration::from_secs(3), "{s:?}");
        lag.applied(Lsn(401), None);
        assert_eq!(lag.seconds(), Some(Duration::ZERO));
        // A stream that keeps failing: the heartbeat written meanwhile is
        // outstanding across the reconnect, and its age is the lag.
        lag.connected(false);
        assert_eq!(lag.seconds(), None);
        let two_ago = SystemTime::now() - Duration::from_secs(2);
        lag.heartbeat_written(Lsn(500), two_ago + Duration::from_secs(5), two_ago);
        lag.connected(true);
        let s = lag.seconds().unwrap();
        assert!(s >= Duration::from_secs(2), "{s:?}");
    }

    #[test]
    fn bytes_is_wal_end_minus_durable() {
        let lag = Lag::default();
        assert_eq!(lag.bytes(), None);
        lag.wal_end(Lsn(1000));
        lag.durable(Lsn(400));
        assert_eq!(lag.bytes(), Some(600));
        lag.durable(Lsn(1200));
        assert_eq!(lag.bytes(), Some(0));
    }
}
