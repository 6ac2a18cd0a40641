//! Replication lag, computed in one place and read by whoever needs it
//! (backfill and verification pacing today; status, metrics and the cutover
//! gates read the same figure).
//!
//! The applier reports each commit (source commit time of its last
//! transaction, applied position) and whether stream items are waiting. Lag
//! is zero while nothing is waiting (caught up with everything received),
//! else the age of the last applied source commit: the next waiting
//! transaction committed after it, so its true lag is at most that.
//! Unknown (`None`) before anything was applied while items wait.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::lsn::Lsn;

#[derive(Debug, Default, Clone, Copy)]
struct LagState {
    last_commit_time: Option<SystemTime>,
    applied: Lsn,
    waiting: bool,
}

/// The applier's view of its lag, shared across sessions.
#[derive(Debug, Default)]
pub struct Lag {
    state: Mutex<LagState>,
}

impl Lag {
    /// A source transaction committed at `commit_time` was applied up to `applied`.
    pub fn applied(&self, applied: Lsn, commit_time: Option<SystemTime>) {
        if let Ok(mut s) = self.state.lock() {
            s.applied = s.applied.max(applied);
            if commit_time.is_some() {
                s.last_commit_time = commit_time;
            }
        }
    }

    /// Whether stream items are waiting for the applier.
    pub fn waiting(&self, waiting: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.waiting = waiting;
        }
    }

    /// The current lag (see the module doc).
    pub fn current(&self) -> Option<Duration> {
        let s = self.state.lock().map(|s| *s).unwrap_or_default();
        if !s.waiting {
            return Some(Duration::ZERO);
        }
        s.last_commit_time.map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
    }

    /// The last applied position reported.
    pub fn applied_lsn(&self) -> Lsn {
        self.state.lock().map(|s| s.applied).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_when_caught_up_else_age_of_last_commit() {
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
}
