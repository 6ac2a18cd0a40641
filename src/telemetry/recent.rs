//! The last errors of this process (what `status` shows as "last errors"),
//! kept in memory: the log has them all; this is the short list an operator
//! sees first.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Errors kept.
pub const KEPT: usize = 10;

/// One error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentError {
    /// Unix seconds.
    pub at: f64,
    /// Where: `stream`, `verify`, `heartbeat`.
    pub stage: String,
    /// `transient`, `strict_replay` or `fatal`.
    pub kind: String,
    /// The message (never a secret: errors do not carry connection strings).
    pub message: String,
}

static RECENT: Mutex<VecDeque<RecentError>> = Mutex::new(VecDeque::new());

/// Records an error.
pub fn record(stage: &str, kind: &str, message: String) {
    let at =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    if let Ok(mut recent) = RECENT.lock() {
        if recent.len() >= KEPT {
            recent.pop_front();
        }
        recent.push_back(RecentError { at, stage: stage.into(), kind: kind.into(), message });
    }
}

/// The last errors, oldest first.
pub fn list() -> Vec<RecentError> {
    RECENT.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default()
}
