//! The gates' verdicts from their signals: lag (from [`crate::lag::Lag`]),
//! backfill and verification (from the state schema), Redis and the lease.
//! A missing or stale signal *holds*: it never passes, and never counts as
//! a violation either.

use std::time::Duration;

use crate::config::CutoverSettings;
use crate::controller::machine::{Gate, GateName, Gates, Verdict};
use crate::state::backfill::StoredProgress;
use crate::state::verify::{PassResult, TableVerifyState};

/// What the gates are computed from.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// Replication lag in seconds (`None`: unknown).
    pub lag_seconds: Option<Duration>,
    /// Replication lag in bytes (`None`: unknown).
    pub lag_bytes: Option<u64>,
    /// How long the replication stream has been silent, and how long it may
    /// be before the lag figures count as stale (they hold the lag gates).
    pub stream_silence: Option<(Duration, Duration)>,
    /// Backfill progress per table (`None`: could not be read).
    pub backfill: Option<Vec<StoredProgress>>,
    /// Verification state per table and runner (`None`: could not be read).
    pub verify: Option<Vec<TableVerifyState>>,
    /// Target names of the mapped tables.
    pub tables: Vec<String>,
    /// Redis and the lease.
    pub redis: RedisHealth,
}

/// Redis as the controller sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RedisHealth {
    /// The last command succeeded.
    pub reachable: bool,
    /// This instance holds the lease (renewed within its TTL).
    pub lease_held: bool,
    /// Why not, when either is false.
    pub problem: Option<String>,
}

/// Evaluates every gate but soak (the state machine adds it).
pub fn evaluate(signals: &Signals, cutover: &CutoverSettings) -> Gates {
    vec![
        backfill(signals),
        lag_seconds(signals, cutover),
        lag_bytes(signals, cutover),
        verification(signals, cutover),
        redis(signals),
    ]
}

fn backfill(signals: &Signals) -> Gate {
    let limit = "complete for every table";
    let Some(progress) = &signals.backfill else {
        return Gate::new(GateName::Backfill, Verdict::Hold, "unreadable", limit);
    };
    let incomplete: Vec<&str> = signals
        .tables
        .iter()
        .filter(|t| !progress.iter().any(|p| &p.target_table == *t && p.complete))
        .map(String::as_str)
        .collect();
    if incomplete.is_empty() {
        Gate::new(
            GateName::Backfill,
            Verdict::Pass,
            format!("{} of {} complete", signals.tables.len(), signals.tables.len()),
            limit,
        )
    } else {
        // Not complete is not a failure of the copy: it holds.
        Gate::new(
            GateName::Backfill,
            Verdict::Hold,
            format!("incomplete: {}", incomplete.join(", ")),
            limit,
        )
    }
}

/// The lag figures are stale when the stream has been silent for longer
/// than its heartbeats allow: a stalled connection keeps its last figures.
fn stale(signals: &Signals) -> Option<String> {
    let (silent, limit) = signals.stream_silence?;
    (silent > limit)
        .then(|| format!("stale: nothing heard from the source for {:.1} s", silent.as_secs_f64()))
}

fn lag_seconds(signals: &Signals, cutover: &CutoverSettings) -> Gate {
    let limit = format!("{:.1} s", cutover.max_lag_seconds);
    // A lag already over the limit fails even when stale: it only grows.
    if let Some(stale) = stale(signals)
        && signals.lag_seconds.is_none_or(|l| l.as_secs_f64() <= cutover.max_lag_seconds)
    {
        return Gate::new(GateName::LagSeconds, Verdict::Hold, stale, limit);
    }
    match signals.lag_seconds {
        None => Gate::new(GateName::LagSeconds, Verdict::Hold, "unknown", limit),
        Some(lag) => {
            let v = if lag.as_secs_f64() <= cutover.max_lag_seconds {
                Verdict::Pass
            } else {
                Verdict::Fail
            };
            Gate::new(GateName::LagSeconds, v, format!("{:.2} s", lag.as_secs_f64()), limit)
        }
    }
}

fn lag_bytes(signals: &Signals, cutover: &CutoverSettings) -> Gate {
    let limit = format!("{} bytes", cutover.max_lag_bytes);
    if let Some(stale) = stale(signals) {
        return Gate::new(GateName::LagBytes, Verdict::Hold, stale, limit);
    }
    match signals.lag_bytes {
        None => Gate::new(GateName::LagBytes, Verdict::Hold, "unknown", limit),
        Some(b) => {
            let v = if b <= cutover.max_lag_bytes { Verdict::Pass } else { Verdict::Fail };
            Gate::new(GateName::LagBytes, v, format!("{b} bytes"), limit)
        }
    }
}

fn verification(signals: &Signals, cutover: &CutoverSettings) -> Gate {
    let max_age = cutover.verify_max_age.as_secs_f64();
    let limit = format!("clean, younger than {max_age:.0} s");
    let Some(states) = &signals.verify else {
        return Gate::new(GateName::Verification, Verdict::Hold, "unreadable", limit);
    };
    let mut oldest: Option<f64> = Some(0.0);
    let mut holds = Vec::new();
    for table in &signals.tables {
        let runs: Vec<&TableVerifyState> =
            states.iter().filter(|s| &s.target_table == table).collect();
        // Differences recorded by the newest finished pass, or by the pass
        // in progress, are a violation.
        let newest = runs
            .iter()
            .filter_map(|s| s.last.as_ref())
            .max_by(|a, b| a.finished_at.cmp(&b.finished_at));
        let dirty_now =
            runs.iter().filter_map(|s| s.pass.as_ref()).any(|p| p.counters.differences > 0);
        if dirty_now || newest.is_some_and(|l| l.result == PassResult::Differences) {
            let found = runs
                .iter()
                .filter_map(|s| s.pass.as_ref().map(|p| p.counters.differences))
                .chain(newest.map(|l| l.counters.differences))
                .max()
                .unwrap_or(0);
            return Gate::new(
                GateName::Verification,
                Verdict::Fail,
                format!("{table}: {found} difference(s) found"),
                limit,
            );
        }
        // A confirmed difference keeps the gate failing until a clean pass
        // that started after it, even if the row was repaired meanwhile: the
        // copy was wrong while reads may have been on new.
        let found = runs.iter().filter_map(|s| s.differences_found_unix_seconds).reduce(f64::max);
        let clean_start = runs.iter().filter_map(|s| s.last_clean_unix_seconds).reduce(f64::max);
        if let Some(found) = found {
            if clean_start.is_none_or(|c| c < found) {
                return Gate::new(
                    GateName::Verification,
                    Verdict::Fail,
                    format!(
                        "{table}: a difference was found; waiting for a clean pass that started \
                         after it"
                    ),
                    limit,
                );
            }
        }
        let clean_age = runs.iter().filter_map(|s| s.last_clean_age_seconds).reduce(f64::min);
        match clean_age {
            None => {
                holds.push(format!("{table}: no clean pass yet"));
                oldest = None;
            }
            Some(age) if age > max_age => {
                holds.push(format!("{table}: clean pass {age:.0} s old"));
                oldest = None;
            }
            Some(age) => oldest = oldest.map(|o| o.max(age)),
        }
    }
    match oldest {
        Some(age) => Gate::new(
            GateName::Verification,
            Verdict::Pass,
            format!("clean, oldest {age:.0} s ago"),
            limit,
        ),
        None => Gate::new(GateName::Verification, Verdict::Hold, holds.join("; "), limit),
    }
}

fn redis(signals: &Signals) -> Gate {
    let limit = "reachable, lease held";
    let r = &signals.redis;
    if r.reachable && r.lease_held {
        Gate::new(GateName::Redis, Verdict::Pass, "reachable, lease held", limit)
    } else {
        let why = r.problem.clone().unwrap_or_else(|| "unreachable".into());
        Gate::new(GateName::Redis, Verdict::Hold, why, limit)
    }
}
