//! The controller's state machine, without I/O: given the gates' verdicts,
//! the desired traffic and the time, what (if anything) changes. The
//! controller loop persists and publishes what this returns; tests drive it
//! directly. The rules are in `docs/cutover.md`.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{CutoverSettings, OnViolation, TrafficSettings};

/// Where the migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Some table is still being copied.
    Backfilling,
    /// Copied, but replication lag is over its limit (or unknown).
    CatchingUp,
    /// Lag within limits; no fresh clean verification yet.
    InSync,
    /// Every gate passes at 0 % new: ready to shift reads.
    Verified,
    /// Some reads are on new (or moving there).
    Shifting,
    /// A gate failed with `on_violation = "hold"`: weights kept, no advance.
    Paused,
    /// A gate failed (or `walshift rollback`): reads back on old, waiting
    /// to be re-armed.
    RolledBack,
    /// The write cutover runs: writes announced as fenced.
    Fenced,
    /// Writes (and reads) are on new; the old tables reject writes.
    CutOver,
}

impl State {
    /// Every state, for metrics.
    pub const ALL: [State; 9] = [
        State::Backfilling,
        State::CatchingUp,
        State::InSync,
        State::Verified,
        State::Shifting,
        State::Paused,
        State::RolledBack,
        State::Fenced,
        State::CutOver,
    ];

    /// The stored and published name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Backfilling => "backfilling",
            State::CatchingUp => "catching_up",
            State::InSync => "in_sync",
            State::Verified => "verified",
            State::Shifting => "shifting",
            State::Paused => "paused",
            State::RolledBack => "rolled_back",
            State::Fenced => "fenced",
            State::CutOver => "cut_over",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gate's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The signal is there and within its limit.
    Pass,
    /// The signal is missing or stale: nothing advances, nothing rolls back.
    Hold,
    /// The signal is there and over its limit: a violation once it lasts
    /// `failure_threshold` evaluations.
    Fail,
}

/// The gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateName {
    /// Every table's backfill is complete.
    Backfill,
    /// Replication lag in seconds.
    LagSeconds,
    /// Replication lag in bytes.
    LagBytes,
    /// A fresh clean verification of every table.
    Verification,
    /// Time at the current stage.
    Soak,
    /// Redis reachable and this instance holds the lease.
    Redis,
}

impl GateName {
    /// Every gate, for metrics.
    pub const ALL: [GateName; 6] = [
        GateName::Backfill,
        GateName::LagSeconds,
        GateName::LagBytes,
        GateName::Verification,
        GateName::Soak,
        GateName::Redis,
    ];

    /// The name in status, metrics and reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            GateName::Backfill => "backfill",
            GateName::LagSeconds => "lag_seconds",
            GateName::LagBytes => "lag_bytes",
            GateName::Verification => "verification",
            GateName::Soak => "soak",
            GateName::Redis => "redis",
        }
    }
}

/// One gate's evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    /// Which gate.
    pub name: GateName,
    /// Its verdict.
    pub verdict: Verdict,
    /// The signal's value, readable (`"2.1 s"`, `"missing"`).
    pub value: String,
    /// The limit it is held to, readable.
    pub limit: String,
}

impl Gate {
    /// A gate with its verdict.
    pub fn new(
        name: GateName,
        verdict: Verdict,
        value: impl Into<String>,
        limit: impl Into<String>,
    ) -> Gate {
        Gate { name, verdict, value: value.into(), limit: limit.into() }
    }

    fn describe(&self) -> String {
        format!("{} {} (limit {})", self.name.as_str(), self.value, self.limit)
    }
}

/// The gates of one evaluation.
pub type Gates = Vec<Gate>;

fn verdict(gates: &[Gate], name: GateName) -> Verdict {
    gates.iter().find(|g| g.name == name).map_or(Verdict::Hold, |g| g.verdict)
}

/// The state a migration at 0 % new is in, from its gates.
fn phase_of(gates: &[Gate]) -> (State, Option<&Gate>) {
    let first_not_passing = |names: &[GateName]| {
        gates.iter().find(|g| names.contains(&g.name) && g.verdict != Verdict::Pass)
    };
    if let Some(g) = first_not_passing(&[GateName::Backfill]) {
        return (State::Backfilling, Some(g));
    }
    if let Some(g) = first_not_passing(&[GateName::LagSeconds, GateName::LagBytes]) {
        return (State::CatchingUp, Some(g));
    }
    if let Some(g) = first_not_passing(&[GateName::Verification]) {
        return (State::InSync, Some(g));
    }
    (State::Verified, None)
}

/// What the controller has decided (the stored part of its state).
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    /// Current state.
    pub state: State,
    /// Why.
    pub reason: String,
    /// Since when.
    pub entered_at: SystemTime,
    /// Share of reads on new.
    pub read_new: u8,
    /// Start of the soak at the current stage.
    pub stage_entered_at: SystemTime,
    /// After a rollback: the configured `read_new_percent` then.
    pub rolled_back_at_percent: Option<u8>,
}

impl Position {
    /// Where a migration starts: nothing on new.
    pub fn initial(now: SystemTime) -> Position {
        Position {
            state: State::Backfilling,
            reason: "controller started".into(),
            entered_at: now,
            read_new: 0,
            stage_entered_at: now,
            rolled_back_at_percent: None,
        }
    }
}

/// Whether a step changes what is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// The read weights changed: publish.
    Decision,
    /// Only the state (and reason) changed: publish too (the state is part
    /// of the published JSON), but no weight moved.
    State,
}

/// A change the controller must persist and publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Decision or state change.
    pub kind: StepKind,
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Read share on new before.
    pub read_new_before: u8,
    /// Read share on new after.
    pub read_new_after: u8,
    /// Why.
    pub reason: String,
}

/// The answer to an operator command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutcome {
    /// Whether the command was carried out (or was already the case).
    pub ok: bool,
    /// What to tell the operator.
    pub message: String,
    /// The change, if any.
    pub step: Option<Step>,
}

/// The state machine: the stored position plus what only lives in memory
/// (how long the gates have been failing).
#[derive(Debug, Clone)]
pub struct Machine {
    position: Position,
    /// Consecutive evaluations with a failing gate.
    fail_streak: u32,
    /// A phase change at 0 % seen for this many evaluations in a row.
    pending_phase: Option<(State, u32)>,
}

impl Machine {
    /// Resumes from a stored position.
    pub fn new(position: Position) -> Machine {
        Machine { position, fail_streak: 0, pending_phase: None }
    }

    /// The current position.
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// Consecutive failing evaluations so far.
    pub fn fail_streak(&self) -> u32 {
        self.fail_streak
    }

    /// The soak gate at `now`.
    pub fn soak_gate(&self, cutover: &CutoverSettings, now: SystemTime) -> Gate {
        let soaked = now.duration_since(self.position.stage_entered_at).unwrap_or_default();
        let verdict = if soaked >= cutover.min_soak { Verdict::Pass } else { Verdict::Hold };
        Gate::new(
            GateName::Soak,
            verdict,
            format!("{:.1} s at {} %", soaked.as_secs_f64(), self.position.read_new),
            format!("{:.1} s", cutover.min_soak.as_secs_f64()),
        )
    }

    fn change(
        &mut self,
        kind: StepKind,
        to: State,
        read_new: u8,
        reason: String,
        now: SystemTime,
    ) -> Step {
        let from = self.position.state;
        let before = self.position.read_new;
        if read_new != before {
            self.position.stage_entered_at = now;
        }
        if to != from {
            self.position.entered_at = now;
        }
        self.position.state = to;
        self.position.read_new = read_new;
        self.position.reason.clone_from(&reason);
        self.pending_phase = None;
        Step { kind, from, to, read_new_before: before, read_new_after: read_new, reason }
    }

    /// One evaluation. `gates` holds every gate but soak, which the machine
    /// computes itself.
    pub fn evaluate(
        &mut self,
        gates: &[Gate],
        traffic: &TrafficSettings,
        cutover: &CutoverSettings,
        now: SystemTime,
    ) -> Option<Step> {
        let failing = gates.iter().find(|g| g.verdict == Verdict::Fail);
        self.fail_streak = if failing.is_some() { self.fail_streak.saturating_add(1) } else { 0 };
        let desired = traffic.read_new_percent;
        let pos = self.position.clone();

        // The write cutover owns these states: gates and the desired read
        // share no longer move anything (the old tables may be fenced).
        if matches!(pos.state, State::Fenced | State::CutOver) {
            return None;
        }

        if pos.state == State::RolledBack {
            return match pos.rolled_back_at_percent {
                Some(at) if at != desired => {
                    self.position.rolled_back_at_percent = None;
                    self.position.stage_entered_at = now;
                    let (phase, _) = phase_of(gates);
                    let reason = format!(
                        "re-armed: [traffic] read_new_percent changed from {at} % to {desired} %"
                    );
                    Some(self.change(StepKind::State, phase, 0, reason, now))
                }
                _ => None,
            };
        }

        // Toward old: at once, without gates.
        if desired < pos.read_new {
            let to = match pos.state {
                _ if desired == 0 => phase_of(gates).0,
                State::Paused => State::Paused,
                _ => State::Shifting,
            };
            let reason = format!(
                "operator lowered [traffic] read_new_percent to {desired} % (from {} %): \
                 moved at once, without gates",
                pos.read_new
            );
            return Some(self.change(StepKind::Decision, to, desired, reason, now));
        }

        // A violation while reads are on new.
        if pos.read_new > 0
            && pos.state != State::Paused
            && self.fail_streak >= cutover.failure_threshold
        {
            let gate = failing.map(Gate::describe).unwrap_or_default();
            let streak = self.fail_streak;
            return Some(match traffic.on_violation {
                OnViolation::Rollback => {
                    self.position.rolled_back_at_percent = Some(desired);
                    let reason = format!(
                        "rolled back from {} % new: gate {gate} failed {streak} evaluations in a row",
                        pos.read_new
                    );
                    self.change(StepKind::Decision, State::RolledBack, 0, reason, now)
                }
                OnViolation::Hold => {
                    let reason = format!(
                        "paused at {} % new (on_violation = \"hold\"): gate {gate} failed {streak} \
                         evaluations in a row",
                        pos.read_new
                    );
                    self.change(StepKind::State, State::Paused, pos.read_new, reason, now)
                }
            });
        }

        let all_pass = gates.iter().all(|g| g.verdict == Verdict::Pass);
        if pos.state == State::Paused {
            if all_pass {
                self.position.stage_entered_at = now;
                let reason = format!(
                    "gates passing again: shifting resumes at {} % (soak restarts)",
                    pos.read_new
                );
                return Some(self.change(
                    StepKind::State,
                    State::Shifting,
                    pos.read_new,
                    reason,
                    now,
                ));
            }
            return None;
        }

        if pos.read_new == 0 {
            let (phase, why) = phase_of(gates);
            if phase != pos.state {
                let seen = match self.pending_phase {
                    Some((p, n)) if p == phase => n + 1,
                    _ => 1,
                };
                self.pending_phase = Some((phase, seen));
                if seen >= cutover.failure_threshold {
                    let reason = match why {
                        Some(g) => format!("{phase}: gate {}", g.describe()),
                        None => format!("{phase}: every gate passes at 0 % new"),
                    };
                    return Some(self.change(StepKind::State, phase, 0, reason, now));
                }
                return None;
            }
            self.pending_phase = None;
        }

        // Toward new: one stage at a time, every gate passing, after the soak.
        let soak = self.soak_gate(cutover, now);
        let may_advance = matches!(pos.state, State::Verified | State::Shifting)
            && pos.read_new < desired
            && all_pass
            && soak.verdict == Verdict::Pass
            && verdict(gates, GateName::Redis) == Verdict::Pass;
        if may_advance {
            let next = next_stage(&traffic.stages, pos.read_new, desired);
            let reason = format!(
                "advanced to {next} % new (from {} %): every gate passing, soaked {}",
                pos.read_new, soak.value
            );
            return Some(self.change(StepKind::Decision, State::Shifting, next, reason, now));
        }
        None
    }

    /// A move of the write cutover: to `to` with `read_new` on new.
    pub fn enter(&mut self, to: State, read_new: u8, reason: String, now: SystemTime) -> Step {
        self.fail_streak = 0;
        self.change(StepKind::Decision, to, read_new, reason, now)
    }

    /// `walshift rollback`: 0 % new at once, then stay until re-armed.
    pub fn rollback(
        &mut self,
        traffic: &TrafficSettings,
        who: &str,
        now: SystemTime,
    ) -> CommandOutcome {
        let pos = self.position.clone();
        if pos.state == State::RolledBack {
            return CommandOutcome {
                ok: true,
                message: format!("already rolled back (0 % new): {}", pos.reason),
                step: None,
            };
        }
        self.position.rolled_back_at_percent = Some(traffic.read_new_percent);
        let reason = format!("rolled back from {} % new by the operator ({who})", pos.read_new);
        let step = self.change(StepKind::Decision, State::RolledBack, 0, reason, now);
        CommandOutcome {
            ok: true,
            message: format!(
                "rolled back: reads 100 % old (were {} % new); `walshift resume` or a new \
                 [traffic] read_new_percent re-arms",
                pos.read_new
            ),
            step: Some(step),
        }
    }

    /// `walshift resume`: re-arms after a rollback, or resumes a paused shift.
    pub fn resume(&mut self, gates: &[Gate], who: &str, now: SystemTime) -> CommandOutcome {
        let pos = self.position.clone();
        match pos.state {
            State::RolledBack => {
                self.position.rolled_back_at_percent = None;
                self.position.stage_entered_at = now;
                let (phase, _) = phase_of(gates);
                let reason = format!("re-armed by the operator ({who})");
                let step = self.change(StepKind::State, phase, 0, reason, now);
                CommandOutcome {
                    ok: true,
                    message: format!(
                        "re-armed: state {phase}; reads move toward new again once every gate passes"
                    ),
                    step: Some(step),
                }
            }
            State::Paused => {
                self.position.stage_entered_at = now;
                let reason = format!("resumed by the operator ({who}) at {} % new", pos.read_new);
                let step = self.change(StepKind::State, State::Shifting, pos.read_new, reason, now);
                CommandOutcome {
                    ok: true,
                    message: format!(
                        "resumed: shifting from {} % new once every gate passes",
                        pos.read_new
                    ),
                    step: Some(step),
                }
            }
            other => CommandOutcome {
                ok: false,
                message: format!(
                    "nothing to resume: the controller is {other} (resume re-arms after a rollback \
                     or resumes a paused shift)"
                ),
                step: None,
            },
        }
    }
}

/// The next read share on new: the smallest stage above `current`, capped at
/// `desired` (or `desired` when no stage is above).
pub fn next_stage(stages: &[u8], current: u8, desired: u8) -> u8 {
    stages.iter().copied().find(|&s| s > current).map_or(desired, |s| s.min(desired))
}

/// How long until the soak at the current stage is over (zero if it is).
pub fn soak_remaining(position: &Position, min_soak: Duration, now: SystemTime) -> Duration {
    let soaked = now.duration_since(position.stage_entered_at).unwrap_or_default();
    min_soak.saturating_sub(soaked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(desired: u8, on_violation: OnViolation) -> TrafficSettings {
        TrafficSettings {
            read_new_percent: desired,
            stages: vec![10, 50, 90, 100],
            on_violation,
            salt: "t".into(),
            write: crate::config::WriteTarget::Old,
        }
    }

    fn cutover(soak_secs: u64) -> CutoverSettings {
        CutoverSettings {
            evaluate_interval: Duration::from_secs(1),
            max_lag_seconds: 5.0,
            max_lag_bytes: 1 << 20,
            verify_max_age: Duration::from_secs(600),
            min_soak: Duration::from_secs(soak_secs),
            failure_threshold: 3,
            lease_ttl: Duration::from_secs(15),
            fence_timeout: Duration::from_secs(5),
            fence_lock_timeout: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(5),
            final_check_timeout: Duration::from_secs(10),
            sequence_margin: 1000,
        }
    }

    fn gates(overrides: &[(GateName, Verdict)]) -> Gates {
        [
            GateName::Backfill,
            GateName::LagSeconds,
            GateName::LagBytes,
            GateName::Verification,
            GateName::Redis,
        ]
        .into_iter()
        .map(|name| {
            let v = overrides.iter().find(|(n, _)| *n == name).map_or(Verdict::Pass, |(_, v)| *v);
            Gate::new(name, v, "x", "y")
        })
        .collect()
    }

    fn at(t0: SystemTime, secs: u64) -> SystemTime {
        t0 + Duration::from_secs(secs)
    }

    /// Runs evaluations once per second from `from` to `to` (inclusive).
    fn run(
        m: &mut Machine,
        g: &[Gate],
        t: &TrafficSettings,
        c: &CutoverSettings,
        t0: SystemTime,
        from: u64,
        to: u64,
    ) -> Vec<Step> {
        (from..=to).filter_map(|s| m.evaluate(g, t, c, at(t0, s))).collect()
    }

    #[test]
    fn walks_the_phases_then_the_stages_no_faster_than_the_soak() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut m = Machine::new(Position::initial(t0));
        let c = cutover(10);
        let t = traffic(100, OnViolation::Rollback);
        // Backfill incomplete: stays backfilling, nothing moves.
        let steps = run(&mut m, &gates(&[(GateName::Backfill, Verdict::Fail)]), &t, &c, t0, 0, 5);
        assert!(steps.is_empty(), "{steps:?}");
        // Lag unknown: catching up after three evaluations.
        let steps =
            run(&mut m, &gates(&[(GateName::LagSeconds, Verdict::Hold)]), &t, &c, t0, 6, 10);
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].to, State::CatchingUp);
        assert_eq!(m.position().read_new, 0);
        // No verification yet: in sync.
        let steps =
            run(&mut m, &gates(&[(GateName::Verification, Verdict::Hold)]), &t, &c, t0, 11, 15);
        assert_eq!(steps.iter().map(|s| s.to).collect::<Vec<_>>(), [State::InSync]);
        // Everything passes: verified, then 10, 50, 90, 100 each after 10 s.
        let steps = run(&mut m, &gates(&[]), &t, &c, t0, 16, 100);
        let moves: Vec<(u8, u64)> = steps
            .iter()
            .filter(|s| s.kind == StepKind::Decision)
            .map(|s| (s.read_new_after, 0))
            .collect();
        assert_eq!(moves.iter().map(|m| m.0).collect::<Vec<_>>(), [10, 50, 90, 100]);
        assert_eq!(steps[0].to, State::Verified);
        // Soak: consecutive moves at least 10 s apart.
        let mut m2 = Machine::new(Position { state: State::Verified, ..Position::initial(t0) });
        let mut last = None;
        for s in 0..60 {
            if m2.evaluate(&gates(&[]), &t, &c, at(t0, s)).is_some() {
                if let Some(prev) = last {
                    assert!(s - prev >= 10, "moved after {} s", s - prev);
                }
                last = Some(s);
            }
            let _ = s;
        }
        assert_eq!(m2.position().read_new, 100);
    }

    #[test]
    fn each_gate_alone_blocks_a_move_toward_new() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = cutover(0);
        let t = traffic(50, OnViolation::Rollback);
        for name in [
            GateName::Backfill,
            GateName::LagSeconds,
            GateName::LagBytes,
            GateName::Verification,
            GateName::Redis,
        ] {
            for v in [Verdict::Hold, Verdict::Fail] {
                let mut m = Machine::new(Position {
                    state: State::Shifting,
                    read_new: 10,
                    ..Position::initial(t0)
                });
                let steps = run(&mut m, &gates(&[(name, v)]), &t, &c, t0, 0, 30);
                assert!(
                    steps.iter().all(|s| s.read_new_after <= 10),
                    "{name:?} {v:?} let it advance: {steps:?}"
                );
            }
        }
        // Soak alone: with a 60 s soak nothing moves in 30 s.
        let mut m = Machine::new(Position {
            state: State::Shifting,
            read_new: 10,
            ..Position::initial(t0)
        });
        assert!(run(&mut m, &gates(&[]), &t, &cutover(60), t0, 0, 30).is_empty());
    }

    #[test]
    fn rollback_after_threshold_and_stays_until_rearmed() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = cutover(0);
        let t = traffic(90, OnViolation::Rollback);
        let mut m = Machine::new(Position {
            state: State::Shifting,
            read_new: 50,
            ..Position::initial(t0)
        });
        let bad = gates(&[(GateName::LagSeconds, Verdict::Fail)]);
        assert!(m.evaluate(&bad, &t, &c, at(t0, 1)).is_none());
        assert!(m.evaluate(&bad, &t, &c, at(t0, 2)).is_none());
        let step = m.evaluate(&bad, &t, &c, at(t0, 3)).expect("rollback on the third");
        assert_eq!(
            (step.to, step.read_new_after, step.kind),
            (State::RolledBack, 0, StepKind::Decision)
        );
        assert!(step.reason.contains("lag_seconds"), "{}", step.reason);
        // A noisy sample in between resets the count.
        let mut m2 = Machine::new(Position {
            state: State::Shifting,
            read_new: 50,
            ..Position::initial(t0)
        });
        let good = gates(&[]);
        for (s, g) in [(1, &bad), (2, &bad), (3, &good), (4, &bad), (5, &bad)] {
            assert!(m2.evaluate(g, &traffic(50, OnViolation::Rollback), &c, at(t0, s)).is_none());
        }
        // Gates pass again: still rolled back.
        assert!(run(&mut m, &good, &t, &c, t0, 4, 40).is_empty());
        assert_eq!(m.position().state, State::RolledBack);
        // A new desired percentage re-arms; then it advances again.
        let t2 = traffic(100, OnViolation::Rollback);
        let step = m.evaluate(&good, &t2, &c, at(t0, 41)).expect("re-armed");
        assert_eq!(step.to, State::Verified);
        let steps = run(&mut m, &good, &t2, &c, t0, 42, 50);
        assert_eq!(steps.first().map(|s| s.read_new_after), Some(10));
    }

    #[test]
    fn hold_pauses_and_resumes_when_gates_pass() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = cutover(0);
        let t = traffic(100, OnViolation::Hold);
        let mut m = Machine::new(Position {
            state: State::Shifting,
            read_new: 50,
            ..Position::initial(t0)
        });
        let steps =
            run(&mut m, &gates(&[(GateName::Verification, Verdict::Fail)]), &t, &c, t0, 1, 10);
        assert_eq!(steps.len(), 1);
        assert_eq!((steps[0].to, steps[0].read_new_after), (State::Paused, 50));
        let step = m.evaluate(&gates(&[]), &t, &c, at(t0, 11)).expect("resumes");
        assert_eq!((step.to, step.read_new_after), (State::Shifting, 50));
    }

    #[test]
    fn lowering_moves_at_once_without_gates() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let c = cutover(1000);
        let mut m = Machine::new(Position {
            state: State::Shifting,
            read_new: 90,
            ..Position::initial(t0)
        });
        let bad = gates(&[(GateName::Redis, Verdict::Hold), (GateName::LagSeconds, Verdict::Fail)]);
        let step =
            m.evaluate(&bad, &traffic(10, OnViolation::Rollback), &c, at(t0, 1)).expect("lowered");
        assert_eq!((step.read_new_after, step.to), (10, State::Shifting));
        let step =
            m.evaluate(&bad, &traffic(0, OnViolation::Rollback), &c, at(t0, 2)).expect("to 0");
        assert_eq!((step.read_new_after, step.to), (0, State::CatchingUp));
    }

    #[test]
    fn commands() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = traffic(100, OnViolation::Rollback);
        let mut m = Machine::new(Position {
            state: State::Shifting,
            read_new: 50,
            ..Position::initial(t0)
        });
        let out = m.rollback(&t, "ops@host", at(t0, 1));
        assert!(out.ok);
        assert_eq!(m.position().read_new, 0);
        assert!(m.rollback(&t, "ops@host", at(t0, 2)).step.is_none());
        // Still rolled back on evaluation (desired unchanged).
        assert!(m.evaluate(&gates(&[]), &t, &cutover(0), at(t0, 3)).is_none());
        let out = m.resume(&gates(&[]), "ops@host", at(t0, 4));
        assert!(out.ok);
        assert_eq!(m.position().state, State::Verified);
        let out = m.resume(&gates(&[]), "ops@host", at(t0, 5));
        assert!(!out.ok, "{}", out.message);
    }

    #[test]
    fn next_stage_caps_at_desired() {
        let stages = [10, 50, 90, 100];
        assert_eq!(next_stage(&stages, 0, 100), 10);
        assert_eq!(next_stage(&stages, 10, 100), 50);
        assert_eq!(next_stage(&stages, 10, 30), 30);
        assert_eq!(next_stage(&stages, 50, 60), 60);
        assert_eq!(next_stage(&[10, 50], 50, 80), 80);
    }

    #[test]
    fn the_write_cutover_states_ignore_gates_and_the_desired_share() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut m = Machine::new(Position {
            read_new: 100,
            state: State::Shifting,
            ..Position::initial(now)
        });
        let step = m.enter(State::CutOver, 100, "cut over".into(), now);
        assert_eq!(
            (step.from, step.to, step.kind),
            (State::Shifting, State::CutOver, StepKind::Decision)
        );
        let failing = gates(&[(GateName::LagSeconds, Verdict::Fail)]);
        for i in 0..10 {
            let later = now + Duration::from_secs(i);
            assert_eq!(
                m.evaluate(&failing, &traffic(0, OnViolation::Rollback), &cutover(0), later),
                None
            );
        }
        assert_eq!(m.position().state, State::CutOver);
        assert_eq!(m.position().read_new, 100);
        assert!(!m.resume(&failing, "op", now).ok);
        assert_eq!(State::parse("cut_over"), Some(State::CutOver));
        assert_eq!(State::parse("fenced"), Some(State::Fenced));
    }
}
