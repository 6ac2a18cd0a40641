//! The write cutover, run by the leading controller (for `walshift cutover`
//! or `[traffic] write = "new"`), its recovery after a crash, and the
//! rollback after it. The steps and the argument that a crash between any
//! two of them is never half done are in `docs/cutover.md` ("Write
//! cutover"); the mechanisms are in [`crate::cutover`].
//!
//! The commit point is the fence transaction's commit on the source: before
//! it, every failure (and every crash) goes back to write "old" with nothing
//! changed; after it, everything goes forward to write "new". Redis is told
//! "new" only after the commit, so it never says "new" while the old tables
//! take writes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{Controller, Exit, LeadError, Live, empty_audit};
use crate::config::Reloadable;
use crate::controller::machine::{Gate, State, Step, Verdict};
use crate::cutover::fence::{self, Fence, FenceSpec};
use crate::cutover::{self as mech, Checker, CutoverStep, drain::DrainRequest, sequences};
use crate::lsn::Lsn;
use crate::pg::client::{self, SessionLimits};
use crate::runtime::shutdown::Shutdown;
use crate::state::controller::{self as stored, AuditEntry};
use crate::state::cutover::{self as record, Figures, MovedSequence, Outcome};
use crate::telemetry::metrics as m;
use crate::transform::Plan;

/// Added to the fence's budget for the deadline clients hold writes until.
const DEADLINE_SLACK: Duration = Duration::from_secs(2);

/// Longest time writes can be fenced: clients hold them until now + this
/// (`fence_deadline`); the fence's session gives up a little later.
fn fence_budget(c: &crate::config::CutoverSettings) -> Duration {
    c.fence_timeout + c.drain_timeout + c.final_check_timeout + DEADLINE_SLACK
}

/// What the operator (or the log) is told.
#[derive(Debug, Clone)]
pub(super) struct Answer {
    /// Done (or already the case).
    pub ok: bool,
    /// Attempted and failed (exit 1), as opposed to refused (exit 2).
    pub failed: bool,
    /// The text.
    pub message: String,
}

impl Answer {
    fn refused(message: String) -> Answer {
        Answer { ok: false, failed: false, message }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Why an attempt stops before the flip.
struct Abort {
    step: CutoverStep,
    reason: String,
}

impl Abort {
    fn at(step: CutoverStep, reason: impl Into<String>) -> Abort {
        Abort { step, reason: reason.into() }
    }
}

/// The describe() of a gate, for messages.
fn gate_text(g: &Gate) -> String {
    let verdict = match g.verdict {
        Verdict::Pass => "passes",
        Verdict::Hold => "holds",
        Verdict::Fail => "fails",
    };
    format!("{} {} (limit {}) {verdict}", g.name.as_str(), g.value, g.limit)
}

impl Controller {
    /// The gates of this evaluation plus soak.
    fn all_gates(&self, live: &Live, gates: &[Gate], settings: &Reloadable) -> Vec<Gate> {
        let mut all = gates.to_vec();
        all.push(live.machine.soak_gate(&settings.cutover, SystemTime::now()));
        all
    }

    /// Why a write cutover may not start now, if it may not.
    pub(super) fn cutover_refusal(
        &self,
        live: &Live,
        gates: &[Gate],
        settings: &Reloadable,
    ) -> Option<String> {
        let p = live.machine.position();
        if p.state != State::Shifting || p.read_new != 100 {
            return Some(format!(
                "the write cutover needs every read on new first: the controller is {} at {} % new \
                 (set [traffic] read_new_percent = 100 and let it shift)",
                p.state, p.read_new
            ));
        }
        let failing: Vec<String> = self
            .all_gates(live, gates, settings)
            .iter()
            .filter(|g| g.verdict != Verdict::Pass)
            .map(gate_text)
            .collect();
        if !failing.is_empty() {
            return Some(format!(
                "the write cutover needs every gate passing: {}",
                failing.join("; ")
            ));
        }
        None
    }

    /// Stores `step` with an audit entry of kind `cutover` and publishes it.
    async fn cutover_decision(
        &self,
        live: &mut Live,
        step: &Step,
        actor: &str,
    ) -> Result<Option<Exit>, LeadError> {
        let audit = AuditEntry {
            kind: "cutover".into(),
            from_state: Some(step.from.as_str().into()),
            to_state: Some(step.to.as_str().into()),
            read_new: Some(step.read_new_after),
            reason: step.reason.clone(),
            actor: Some(actor.to_owned()),
            ..empty_audit()
        };
        self.store_and_publish(live, audit).await
    }

    /// A progress line: logged and in the audit trail (`walshift cutover`
    /// prints these as they come).
    async fn cutover_note(&self, live: &Live, text: String) -> Result<(), LeadError> {
        tracing::info!(migration = %self.cfg.migration_name, "write cutover: {text}");
        let p = live.machine.position();
        crate::state::controller::audit(
            &live.client,
            &self.cfg.migration_name,
            &AuditEntry {
                kind: "cutover".into(),
                from_state: Some(p.state.as_str().into()),
                to_state: Some(p.state.as_str().into()),
                read_new: Some(p.read_new),
                reason: text,
                actor: Some(self.me.clone()),
                ..empty_audit()
            },
        )
        .await?;
        Ok(())
    }

    /// Why walshift's role could not fence the old tables, if it could not
    /// (the error names the tables, their owner and the fix).
    async fn fence_not_permitted(&self) -> Option<String> {
        // The fence step reports a source it cannot reach.
        let Ok(source) =
            client::connect(&self.cfg.source.url, "cutover", SessionLimits::ADMIN).await
        else {
            return None;
        };
        match fence::mode(&source, &self.cfg.migration_name, &self.config_fenced_tables()).await {
            Err(e @ fence::FenceError::NotPermitted { .. }) => Some(e.to_string()),
            _ => None,
        }
    }

    async fn connect_both(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio_postgres::Client), String> {
        let source = client::connect(&self.cfg.source.url, "cutover", SessionLimits::ADMIN)
            .await
            .map_err(|e| crate::error::display_chain(&e))?;
        let target = client::connect(&self.cfg.target.url, "cutover", SessionLimits::ADMIN)
            .await
            .map_err(|e| crate::error::display_chain(&e))?;
        Ok((source, target))
    }

    /// `walshift cutover [--dry-run]` or `[traffic] write = "new"`.
    pub(super) async fn write_cutover(
        &self,
        live: &mut Live,
        gates: &[Gate],
        settings: &Reloadable,
        by: &str,
        dry_run: bool,
        stop: &Shutdown,
    ) -> Result<(Answer, Option<Exit>), LeadError> {
        let p = live.machine.position().clone();
        if p.state == State::CutOver {
            let msg = "writes are already on new (the write cutover is done); nothing to do";
            return Ok((Answer { ok: true, failed: false, message: msg.into() }, None));
        }
        let refusal = self.cutover_refusal(live, gates, settings);
        if dry_run {
            return Ok((self.dry_run(live, gates, settings, refusal).await, None));
        }
        if let Some(why) = refusal {
            metrics::counter!(m::CUTOVER_ATTEMPTS, m::LABEL_RESULT => "refused").increment(1);
            return Ok((Answer::refused(format!("refused: {why}; nothing was changed")), None));
        }
        // A role that may not fence the old tables is refused before anything
        // is announced (docs/security.md).
        if let Some(why) = self.fence_not_permitted().await {
            metrics::counter!(m::CUTOVER_ATTEMPTS, m::LABEL_RESULT => "refused").increment(1);
            return Ok((Answer::refused(format!("refused: {why}")), None));
        }
        let attempt = record::begin(&live.client, &self.cfg.migration_name, by).await?;
        self.cutover_note(
            live,
            format!("attempt {attempt} by {by}: reads 100 % on new and every gate passing"),
        )
        .await?;
        let mut figures = Figures::default();
        let mut fence: Option<Fence> = None;
        let mut moved = Vec::new();
        let result = self
            .cutover_steps(live, settings, attempt, by, stop, &mut figures, &mut fence, &mut moved)
            .await;
        match result {
            Ok(Ok((barrier, granted_at, exit))) => {
                let pause = granted_at.elapsed();
                figures.pause_seconds = Some(pause.as_secs_f64());
                record::record(&live.client, attempt, &figures, &moved).await?;
                let summary = summary_line(&figures, &moved);
                record::finish(&live.client, attempt, Outcome::CutOver, &summary).await?;
                metrics::gauge!(m::CUTOVER_WRITE_PAUSE).set(pause.as_secs_f64());
                metrics::gauge!(m::CUTOVER_DONE).set(1.0);
                metrics::counter!(m::CUTOVER_ATTEMPTS, m::LABEL_RESULT => "cut_over").increment(1);
                self.cutover_note(live, format!("cut over at barrier {barrier}: {summary}"))
                    .await?;
                let message = format!(
                    "cut over: writes and reads on new; {summary}. The old tables reject writes \
                     (trigger {}); `walshift status` says what is left to do",
                    fence::TRIGGER
                );
                Ok((Answer { ok: true, failed: false, message }, exit))
            }
            Ok(Err(abort)) => {
                if let Some(f) = fence.take() {
                    f.abort().await;
                }
                record::record(&live.client, attempt, &figures, &moved).await?;
                self.abort_cutover(live, attempt, abort, !moved.is_empty()).await
            }
            Err(e) => {
                // The target is gone mid-attempt: dropping the fence's session
                // rolls it back (if it was not committed); the reconnected
                // leader finishes the attempt from its record.
                drop(fence.take());
                Err(e)
            }
        }
    }

    /// Goes back to write "old" after `abort` (the fence is rolled back).
    async fn abort_cutover(
        &self,
        live: &mut Live,
        attempt: i64,
        abort: Abort,
        sequences_moved: bool,
    ) -> Result<(Answer, Option<Exit>), LeadError> {
        let Abort { step, reason } = abort;
        tracing::warn!(step = %step, reason = %reason, "write cutover aborted; writes stay on old");
        live.write_side = "old".into();
        live.fence_deadline = None;
        let text = format!("write cutover aborted at step {step}: {reason}; writes stay on old");
        let change = live.machine.enter(State::Shifting, 100, text.clone(), SystemTime::now());
        record::finish(&live.client, attempt, Outcome::Aborted, &format!("{step}: {reason}"))
            .await?;
        metrics::counter!(m::CUTOVER_ATTEMPTS, m::LABEL_RESULT => "aborted").increment(1);
        let exit = self.cutover_decision(live, &change, &self.me.clone()).await?;
        let seq = if sequences_moved {
            " (target sequences moved forward stay so: harmless, ids have gaps)"
        } else {
            ""
        };
        let message = format!(
            "{text}: the fence was rolled back (no lock, no trigger), write \"old\" published; \
             nothing else was changed{seq}"
        );
        Ok((Answer { ok: false, failed: true, message }, exit))
    }

    /// The steps up to and including the flip. `Ok(Err(_))`: stop before the
    /// commit (the caller rolls the fence back); `Err(_)`: the target is
    /// gone.
    #[allow(clippy::too_many_arguments)]
    async fn cutover_steps(
        &self,
        live: &mut Live,
        settings: &Reloadable,
        attempt: i64,
        by: &str,
        stop: &Shutdown,
        figures: &mut Figures,
        fence_slot: &mut Option<Fence>,
        moved: &mut Vec<MovedSequence>,
    ) -> Result<Result<(Lsn, Instant, Option<Exit>), Abort>, LeadError> {
        let c = &settings.cutover;
        let migration = self.cfg.migration_name.clone();
        let stopping = |step| Abort::at(step, "walshift is stopping");

        // Pre-check, under the verification lock (kept until the end).
        mech::test_hold(CutoverStep::Precheck).await;
        if stop.is_triggered() {
            return Ok(Err(stopping(CutoverStep::Precheck)));
        }
        record::step(&live.client, attempt, CutoverStep::Precheck.as_str()).await?;
        let lock = Arc::clone(&self.pipeline.verify_lock);
        let Ok(_verify_guard) =
            tokio::time::timeout(c.final_check_timeout, lock.lock_owned()).await
        else {
            return Ok(Err(Abort::at(
                CutoverStep::Precheck,
                format!(
                    "a verification pass did not finish within {} (final_check_timeout_ms); try \
                     again",
                    ms(c.final_check_timeout)
                ),
            )));
        };
        let (source, target) = match self.connect_both().await {
            Ok(pair) => pair,
            Err(e) => return Ok(Err(Abort::at(CutoverStep::Precheck, e))),
        };
        let plan = match Plan::compile(&self.cfg, &source, &target).await {
            Ok(plan) => Arc::new(plan),
            Err(e) => {
                return Ok(Err(Abort::at(CutoverStep::Precheck, crate::error::display_chain(&e))));
            }
        };
        let pairs = match sequences::find(&source, &target, &plan).await {
            Ok(pairs) => pairs,
            Err(e) => {
                return Ok(Err(Abort::at(
                    CutoverStep::Precheck,
                    format!("reading the sequences: {}", client::server_message(&e)),
                )));
            }
        };
        let mut checker = match Checker::open(
            &self.cfg,
            Arc::clone(&plan),
            Arc::clone(&self.lag),
            self.pipeline.dirty(),
        )
        .await
        {
            Ok(checker) => checker,
            Err(e) => {
                return Ok(Err(Abort::at(CutoverStep::Precheck, crate::error::display_chain(&e))));
            }
        };
        let pre = match checker.check(stop).await {
            Ok(r) => r,
            Err(e) => {
                return Ok(Err(Abort::at(CutoverStep::Precheck, crate::error::display_chain(&e))));
            }
        };
        if !pre.clean() {
            return Ok(Err(Abort::at(CutoverStep::Precheck, differences_text(&pre))));
        }
        self.cutover_note(
            live,
            format!("pre-check clean: {} keys verified in {}", pre.rows, ms(pre.elapsed)),
        )
        .await?;

        // Announce.
        mech::test_hold(CutoverStep::Announce).await;
        record::step(&live.client, attempt, CutoverStep::Announce.as_str()).await?;
        let budget = fence_budget(c);
        live.write_side = "fenced".into();
        live.fence_deadline = Some(SystemTime::now() + budget);
        let change = live.machine.enter(
            State::Fenced,
            100,
            format!("write cutover attempt {attempt} (by {by}): writes fenced; hold them"),
            SystemTime::now(),
        );
        if let Some(exit) = self.cutover_decision(live, &change, by).await? {
            return Ok(Err(Abort::at(CutoverStep::Announce, format!("deposed: {exit:?}"))));
        }
        if live.published < live.version {
            let why = live.redis_problem.clone().unwrap_or_else(|| "no answer".into());
            return Ok(Err(Abort::at(
                CutoverStep::Announce,
                format!("Redis did not take write \"fenced\": {why}"),
            )));
        }

        // Fence.
        mech::test_hold(CutoverStep::Fence).await;
        if stop.is_triggered() {
            return Ok(Err(stopping(CutoverStep::Fence)));
        }
        record::step(&live.client, attempt, CutoverStep::Fence.as_str()).await?;
        let spec = FenceSpec {
            migration: migration.clone(),
            tables: mech::fenced_tables(&plan),
            timeout: c.fence_timeout,
            lock_timeout: c.fence_lock_timeout,
            idle_timeout: budget + Duration::from_secs(10),
            attempt,
        };
        let taken = fence::take(&self.cfg.source.url, &spec, stop).await;
        let held = match taken {
            Ok(f) => f,
            Err(e) => return Ok(Err(Abort::at(CutoverStep::Fence, e.to_string()))),
        };
        let granted_at = held.granted_at;
        figures.lock_attempts = i32::try_from(held.attempts).ok();
        figures.lock_wait_seconds = Some(held.waited.as_secs_f64());
        let attempts = held.attempts;
        let waited = held.waited;
        *fence_slot = Some(held);
        let names: Vec<String> = spec.tables.iter().map(|t| t.source.readable()).collect();
        self.cutover_note(
            live,
            format!(
                "fence held: {} locked in exclusive mode after {attempts} attempt(s), {} waiting; \
                 triggers created (uncommitted)",
                names.join(", "),
                ms(waited)
            ),
        )
        .await?;

        // Drain to a barrier written after the lock was granted: every
        // write committed to the old tables before the fence is before it.
        mech::test_hold(CutoverStep::Drain).await;
        let barrier = match fence::write_barrier(checker.source()).await {
            Ok(lsn) => lsn,
            Err(e) => {
                return Ok(Err(Abort::at(
                    CutoverStep::Drain,
                    format!("writing the barrier: {}", client::server_message(&e)),
                )));
            }
        };
        let drain_started = Instant::now();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let request = DrainRequest { attempt, barrier, done: done_tx };
        if self.pipeline.drain_tx.try_send(request).is_err() {
            return Ok(Err(Abort::at(
                CutoverStep::Drain,
                "the applier has a drain queued already",
            )));
        }
        self.pipeline.work_arrived.notify_one();
        let drained = tokio::time::timeout(c.drain_timeout, done_rx).await;
        let applied = match drained {
            Ok(Ok(Ok(applied))) => applied,
            Ok(Ok(Err(e))) => {
                return Ok(Err(Abort::at(CutoverStep::Drain, format!("recording the drain: {e}"))));
            }
            Ok(Err(_)) => {
                return Ok(Err(Abort::at(CutoverStep::Drain, "the applier stopped")));
            }
            Err(_) => {
                return Ok(Err(Abort::at(
                    CutoverStep::Drain,
                    format!(
                        "drain timeout: the applier did not apply past the barrier at {barrier} \
                         within {} (drain_timeout_ms); applied: {}",
                        ms(c.drain_timeout),
                        self.lag.applied_lsn()
                    ),
                )));
            }
        };
        let drain = drain_started.elapsed();
        figures.drain_seconds = Some(drain.as_secs_f64());
        metrics::gauge!(m::CUTOVER_DRAIN).set(drain.as_secs_f64());
        self.cutover_note(
            live,
            format!(
                "drained: applied {applied} past the barrier at {barrier} in {} (durable)",
                ms(drain)
            ),
        )
        .await?;

        // Final check of what changed since the pre-check.
        mech::test_hold(CutoverStep::FinalCheck).await;
        if stop.is_triggered() {
            return Ok(Err(stopping(CutoverStep::FinalCheck)));
        }
        record::step(&live.client, attempt, CutoverStep::FinalCheck.as_str()).await?;
        let checked = tokio::time::timeout(c.final_check_timeout, checker.check(stop)).await;
        let fin = match checked {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Ok(Err(Abort::at(
                    CutoverStep::FinalCheck,
                    crate::error::display_chain(&e),
                )));
            }
            Err(_) => {
                return Ok(Err(Abort::at(
                    CutoverStep::FinalCheck,
                    format!(
                        "the final check took longer than {} (final_check_timeout_ms)",
                        ms(c.final_check_timeout)
                    ),
                )));
            }
        };
        figures.check_seconds = Some(fin.elapsed.as_secs_f64());
        metrics::gauge!(m::CUTOVER_CHECK).set(fin.elapsed.as_secs_f64());
        if !fin.clean() {
            return Ok(Err(Abort::at(CutoverStep::FinalCheck, differences_text(&fin))));
        }
        let full = if fin.full.is_empty() {
            String::new()
        } else {
            format!(" (full pass of {}: its changed keys were not kept)", fin.full.join(", "))
        };
        self.cutover_note(
            live,
            format!("final check clean: {} keys in {}{full}", fin.rows, ms(fin.elapsed)),
        )
        .await?;

        // Sequences.
        mech::test_hold(CutoverStep::Sequences).await;
        record::step(&live.client, attempt, CutoverStep::Sequences.as_str()).await?;
        match sequences::advance(
            checker.source(),
            checker.target(),
            &pairs,
            c.sequence_margin,
            true,
        )
        .await
        {
            Ok(m) => *moved = m,
            Err(e) => {
                return Ok(Err(Abort::at(
                    CutoverStep::Sequences,
                    format!("moving the sequences: {}", client::server_message(&e)),
                )));
            }
        }
        self.cutover_note(live, sequences_text(moved)).await?;

        // Flip: Redis must answer (and the lease be ours) before the commit
        // point; after it, everything goes forward.
        mech::test_hold(CutoverStep::Flip).await;
        if stop.is_triggered() {
            return Ok(Err(stopping(CutoverStep::Flip)));
        }
        record::step(&live.client, attempt, CutoverStep::Flip.as_str()).await?;
        let lease = self.lease.borrow().clone();
        match self.redis.lease_holder().await {
            Ok(Some(holder)) if holder == lease.value => {}
            Ok(other) => {
                return Ok(Err(Abort::at(
                    CutoverStep::Flip,
                    format!(
                        "the controller lease is not ours at the flip (held by {})",
                        other.unwrap_or_else(|| "nobody".into())
                    ),
                )));
            }
            Err(e) => {
                return Ok(Err(Abort::at(
                    CutoverStep::Flip,
                    format!("Redis unreachable at the flip: {e}"),
                )));
            }
        }
        let Some(held) = fence_slot.take() else {
            return Ok(Err(Abort::at(CutoverStep::Flip, "the fence is gone")));
        };
        if !held.alive().await {
            return Ok(Err(Abort::at(
                CutoverStep::Flip,
                "the fence's session ended (idle_in_transaction_session_timeout or terminated)",
            )));
        }
        let committed = held.commit().await;
        if let Err(e) = committed {
            // Did the commit happen? The source knows: the triggers exist
            // if and only if the fence committed.
            tracing::warn!(error = %e, "fence commit failed or its answer was lost; asking the source");
            match self.fence_committed(&spec.tables).await {
                Ok(true) => {}
                Ok(false) => {
                    return Ok(Err(Abort::at(
                        CutoverStep::Flip,
                        format!("committing the fence: {e}"),
                    )));
                }
                Err(probe) => {
                    // Unknown: leave the attempt open; the recovery decides.
                    return Err(LeadError::Recover(format!(
                        "committing the fence: {e}; the source cannot say whether it committed: {probe}"
                    )));
                }
            }
        }
        let committed_after = granted_at.elapsed();
        mech::test_hold("committed").await;
        self.pipeline.set_cut_over_at(Some(barrier));
        live.write_side = "new".into();
        live.fence_deadline = None;
        let change = live.machine.enter(
            State::CutOver,
            100,
            format!(
                "write cutover attempt {attempt} (by {by}): writes on new; the old tables reject \
                 writes (fence committed {} after the lock)",
                ms(committed_after)
            ),
            SystemTime::now(),
        );
        let exit = self.cutover_decision(live, &change, by).await?;
        Ok(Ok((barrier, granted_at, exit)))
    }

    /// Whether the fence triggers exist on every old table (the fence
    /// committed), after terminating any fence session left behind.
    async fn fence_committed(&self, tables: &[fence::FencedTable]) -> Result<bool, String> {
        let source = client::connect(&self.cfg.source.url, "cutover", SessionLimits::ADMIN)
            .await
            .map_err(|e| crate::error::display_chain(&e))?;
        fence::terminate_orphans(&source, &self.cfg.migration_name)
            .await
            .map_err(|e| client::server_message(&e))?;
        let n = fence::installed(&source, tables).await.map_err(|e| client::server_message(&e))?;
        Ok(n > 0)
    }

    /// The tables of the config, as the fence names them.
    fn config_fenced_tables(&self) -> Vec<fence::FencedTable> {
        self.cfg
            .tables
            .iter()
            .map(|t| fence::FencedTable { source: t.source.clone(), target: t.target.clone() })
            .collect()
    }

    /// At the start of leading: an attempt that did not end (walshift
    /// crashed, or lost the target, mid-cutover) is brought to an end:
    /// forward when the fence committed, back otherwise.
    pub(super) async fn recover_cutover(&self, live: &mut Live) -> Result<Option<Exit>, LeadError> {
        let open = record::open(&live.client, &self.cfg.migration_name).await?;
        let state = live.machine.position().state;
        if open.is_none() && state != State::Fenced {
            let barrier = record::cut_over_barrier(&live.client, &self.cfg.migration_name).await?;
            self.pipeline.set_cut_over_at(if state == State::CutOver { barrier } else { None });
            metrics::gauge!(m::CUTOVER_DONE).set(if state == State::CutOver { 1.0 } else { 0.0 });
            // A request the previous leader took but never started on.
            stored::answer_picked(
                &live.client,
                &self.cfg.migration_name,
                "cutover",
                false,
                true,
                "the leader stopped before the write cutover started; nothing was changed",
            )
            .await?;
            return Ok(None);
        }
        let tables = self.config_fenced_tables();
        let committed = self.fence_committed(&tables).await.map_err(|e| {
            LeadError::Recover(format!("asking the source whether the fence committed: {e}"))
        })?;
        let step = open.as_ref().map_or_else(|| "?".to_owned(), |a| a.step.clone());
        let now = SystemTime::now();
        if committed {
            let barrier = open.as_ref().and_then(|a| a.barrier_lsn);
            self.pipeline.set_cut_over_at(barrier);
            live.write_side = "new".into();
            live.fence_deadline = None;
            let reason = format!(
                "write cutover recovered forward after a restart at step {step}: the fence had \
                 committed (triggers on the old tables); writes on new"
            );
            let change = live.machine.enter(State::CutOver, 100, reason.clone(), now);
            if let Some(a) = &open {
                record::finish(&live.client, a.id, Outcome::RecoveredForward, &reason).await?;
            }
            metrics::counter!(m::CUTOVER_ATTEMPTS, m::LABEL_RESULT => "recovered_forward")
                .increment(1);
            metrics::gauge!(m::CUTOVER_DONE).set(1.0);
            tracing::warn!("{reason}");
            stored::answer_picked(
                &live.client,
                &self.cfg.migration_name,
                "cutover",
                true,
                false,
                &reason,
            )
            .await?;
            self.cutover_decision(live, &change, &self.me.clone()).await
        } else {
            self.pipeline.set_cut_over_at(None);
            live.write_side = "old".into();
            live.fence_deadline = None;
            let reason = format!(
                "write cutover recovered back after a restart at step {step}: the fence never \
                 committed (no trigger on the old tables); writes stay on old"
            );
            let read_new = live.machine.position().read_new;
            let change = live.machine.enter(State::Shifting, read_new, reason.clone(), now);
            if let Some(a) = &open {
                record::finish(&live.client, a.id, Outcome::RecoveredBack, &reason).await?;
            }
            metrics::counter!(m::CUTOVER_ATTEMPTS, m::LABEL_RESULT => "recovered_back")
                .increment(1);
            tracing::warn!("{reason}");
            stored::answer_picked(
                &live.client,
                &self.cfg.migration_name,
                "cutover",
                false,
                true,
                &reason,
            )
            .await?;
            self.cutover_decision(live, &change, &self.me.clone()).await
        }
    }

    /// `walshift rollback` once writes are on new: refused unless the
    /// operator accepts that writes made to the new tables are not in the
    /// old ones.
    pub(super) async fn rollback_after_cutover(
        &self,
        live: &mut Live,
        settings: &Reloadable,
        who: &str,
        abandon_new_writes: bool,
    ) -> Result<(Answer, Option<Exit>), LeadError> {
        let since = record::latest(&live.client, &self.cfg.migration_name)
            .await?
            .and_then(|a| a.finished_at)
            .unwrap_or_else(|| "?".into());
        if !abandon_new_writes {
            return Ok((
                Answer::refused(format!(
                    "refused: writes are on the new tables since {since} (the write cutover is \
                     done). Writes made to the new tables since then are not in the old tables: \
                     rolling back would make every reader and writer of the old tables miss them \
                     (reverse replication, which would make this safe, is not built yet). To roll \
                     back anyway, pass --abandon-new-writes; nothing was changed"
                )),
                None,
            ));
        }
        let source =
            client::connect(&self.cfg.source.url, "rollback", SessionLimits::ADMIN).await?;
        let dropped =
            fence::drop_fence(&source, &self.cfg.migration_name, &self.config_fenced_tables())
                .await
                .map_err(|e| match e {
                    fence::FenceError::Sql { source, .. } => LeadError::Sql(source),
                    other => LeadError::Recover(other.to_string()),
                })?;
        self.pipeline.set_cut_over_at(None);
        live.write_side = "old".into();
        let outcome = live.machine.rollback(&settings.traffic, who, SystemTime::now());
        if let Some(a) = record::latest(&live.client, &self.cfg.migration_name).await? {
            record::finish(&live.client, a.id, Outcome::Undone, &format!("rolled back by {who}"))
                .await?;
        }
        metrics::gauge!(m::CUTOVER_DONE).set(0.0);
        let exit = match &outcome.step {
            Some(step) => self.cutover_decision(live, step, who).await?,
            None => None,
        };
        Ok((
            Answer {
                ok: true,
                failed: false,
                message: format!(
                    "rolled back after the write cutover: fence dropped from {}; reads and writes \
                     on old (write \"old\", read 0 % new). Writes made to the new tables since \
                     {since} are NOT in the old tables",
                    if dropped.is_empty() { "no table".into() } else { dropped.join(", ") }
                ),
            },
            exit,
        ))
    }

    /// `walshift cutover --dry-run`: every step with the current values;
    /// changes nothing (reads only).
    async fn dry_run(
        &self,
        live: &Live,
        gates: &[Gate],
        settings: &Reloadable,
        refusal: Option<String>,
    ) -> Answer {
        let c = &settings.cutover;
        let mut lines = vec!["dry run: nothing will be changed".to_owned()];
        lines.push("gates:".into());
        for g in self.all_gates(live, gates, settings) {
            lines.push(format!("  {}", gate_text(&g)));
        }
        let p = live.machine.position();
        lines.push(format!(
            "controller: {} at {} % new, write {}",
            p.state, p.read_new, live.write_side
        ));
        let (source, target) = match self.connect_both().await {
            Ok(pair) => pair,
            Err(e) => return Answer::refused(format!("dry run: {e}")),
        };
        let plan = match Plan::compile(&self.cfg, &source, &target).await {
            Ok(plan) => plan,
            Err(e) => {
                return Answer::refused(format!("dry run: {}", crate::error::display_chain(&e)));
            }
        };
        let budget = fence_budget(c);
        let announce = format!(
            "2. announce: publish write \"fenced\" with fence_deadline = now + {:.1} s",
            budget.as_secs_f64()
        );
        let dirty = self.pipeline.dirty();
        let keys = |t: usize| match &dirty {
            None => "full pass ([verify] enabled = false: changed keys are not tracked)".to_owned(),
            Some(d) => match d.pending(t) {
                Some(n) => format!("{n} changed key(s) so far"),
                None => "full pass (too many changed keys to keep)".to_owned(),
            },
        };
        lines.push(
            "1. pre-check: incremental verification of the keys changed since the last pass:"
                .into(),
        );
        for t in &plan.tables {
            lines.push(format!("     {}: {}", t.target.readable(), keys(t.index)));
        }
        lines.push(announce);
        let tables = mech::fenced_tables(&plan);
        lines.push(format!(
            "3. fence: lock table {} in exclusive mode (lock_timeout {}, retried for up to {}), \
             and create trigger {} on each (uncommitted until the flip):",
            tables.iter().map(|t| t.source.readable()).collect::<Vec<_>>().join(", "),
            ms(c.fence_lock_timeout),
            ms(c.fence_timeout),
            fence::TRIGGER
        ));
        for t in &tables {
            lines.push(format!(
                "     {}: writes fail with \"{}\"",
                t.source.readable(),
                fence::reject_message(t, &self.cfg.migration_name)
            ));
        }
        let mut refusal = refusal;
        match fence::mode(&source, &self.cfg.migration_name, &tables).await {
            Ok(fence::FenceMode::Direct) => {
                lines.push("     by walshift's role, which owns the tables".into());
            }
            Ok(fence::FenceMode::OwnerFunctions(f)) => {
                lines.push(format!("     through the owner's function(s) {}", f.join(", ")));
            }
            Err(e) => {
                lines.push(format!("     not possible: {e}"));
                refusal.get_or_insert_with(|| e.to_string());
            }
        }
        lines.push(format!(
            "4. drain: barrier into the source WAL; the applier applies past it within {} \
             (applied now: {})",
            ms(c.drain_timeout),
            self.lag.applied_lsn()
        ));
        lines.push(format!(
            "5. final check: incremental verification of the keys changed since the pre-check, \
             within {}",
            ms(c.final_check_timeout)
        ));
        match sequences::find(&source, &target, &plan).await {
            Ok(pairs) => {
                match sequences::advance(&source, &target, &pairs, c.sequence_margin, false).await {
                    Ok(would) if would.is_empty() && pairs.is_empty() => {
                        lines.push(
                            "6. sequences: no target column follows a sequence-fed source column"
                                .into(),
                        );
                    }
                    Ok(would) => {
                        lines.push(format!(
                            "6. sequences ({} found; margin {}):",
                            pairs.len(),
                            c.sequence_margin
                        ));
                        for p in &pairs {
                            match would.iter().find(|w| w.sequence == p.target) {
                                Some(w) => lines.push(format!(
                                    "     {} (now {}) to {} (source {})",
                                    w.sequence, w.from, w.to, w.source
                                )),
                                None => lines.push(format!(
                                    "     {}: already past {} + margin; unchanged",
                                    p.target, p.source
                                )),
                            }
                        }
                    }
                    Err(e) => lines.push(format!(
                        "6. sequences: cannot read them: {}",
                        client::server_message(&e)
                    )),
                }
            }
            Err(e) => lines
                .push(format!("6. sequences: cannot find them: {}", client::server_message(&e))),
        }
        lines.push(
            "7. flip: check Redis and the lease; commit the fence (triggers installed, locks \
             released); store cut_over; publish write \"new\", read 100 % new"
                .into(),
        );
        match refusal {
            Some(why) => {
                lines.push(format!("would be refused now: {why}"));
                Answer::refused(lines.join("\n"))
            }
            None => {
                lines.push("would start now: every precondition holds".into());
                Answer { ok: true, failed: false, message: lines.join("\n") }
            }
        }
    }
}

fn differences_text(r: &mech::CheckResult) -> String {
    let parts: Vec<String> =
        r.differences.iter().map(|(t, n)| format!("{t}: {n} differing key(s)")).collect();
    format!(
        "verification found differences ({}); see `walshift verify` / `walshift status`",
        parts.join(", ")
    )
}

fn sequences_text(moved: &[MovedSequence]) -> String {
    if moved.is_empty() {
        return "sequences: none to move".into();
    }
    let parts: Vec<String> = moved
        .iter()
        .map(|s| format!("{} {} -> {} (source {})", s.sequence, s.from, s.to, s.source))
        .collect();
    format!("sequences moved: {}", parts.join(", "))
}

fn summary_line(f: &Figures, moved: &[MovedSequence]) -> String {
    let sec = |v: Option<f64>| v.map_or_else(|| "?".into(), |s| format!("{:.1} ms", s * 1000.0));
    format!(
        "write pause {} (lock granted to write \"new\" published), lock wait {} ({} attempt(s)), \
         drain {}, final check {}, {} sequence(s) moved",
        sec(f.pause_seconds),
        sec(f.lock_wait_seconds),
        f.lock_attempts.unwrap_or(0),
        sec(f.drain_seconds),
        sec(f.check_seconds),
        moved.len()
    )
}

impl Controller {
    /// `[traffic] write = "new"`: arms one attempt each time the setting
    /// appears (at start or on reload); the attempt starts once the
    /// preconditions hold. An attempt that aborted is not retried by
    /// itself: `walshift cutover` (or setting `write` back and forth) does.
    pub(super) async fn cutover_from_config(
        &self,
        live: &mut Live,
        gates: &[Gate],
        settings: &Reloadable,
        stop: &Shutdown,
    ) -> Result<Option<Exit>, LeadError> {
        let wanted = settings.traffic.write;
        if wanted == crate::config::WriteTarget::New
            && live.write_wanted != crate::config::WriteTarget::New
        {
            live.write_armed = true;
        }
        if wanted == crate::config::WriteTarget::Old {
            live.write_armed = false;
        }
        live.write_wanted = wanted;
        if !live.write_armed {
            return Ok(None);
        }
        if live.machine.position().state == State::CutOver {
            live.write_armed = false;
            return Ok(None);
        }
        if self.cutover_refusal(live, gates, settings).is_some() {
            return Ok(None);
        }
        live.write_armed = false;
        let by = "config ([traffic] write = \"new\")";
        let (answer, exit) = self.write_cutover(live, gates, settings, by, false, stop).await?;
        if answer.ok {
            tracing::info!(answer = %answer.message, "write cutover from the config");
        } else {
            tracing::error!(answer = %answer.message, "write cutover from the config failed; `walshift cutover` retries");
        }
        Ok(exit)
    }

    /// What `status` says about the write cutover still wanted, if any.
    pub(super) fn write_wish(
        &self,
        live: &Live,
        gates: &[Gate],
        settings: &Reloadable,
    ) -> Option<String> {
        if settings.traffic.write != crate::config::WriteTarget::New
            || live.machine.position().state == State::CutOver
        {
            return None;
        }
        if !live.write_armed {
            return Some(
                "[traffic] write = \"new\": the last attempt did not cut over (see `walshift \
                 history`); `walshift cutover` tries again"
                    .into(),
            );
        }
        Some(match self.cutover_refusal(live, gates, settings) {
            Some(why) => format!("[traffic] write = \"new\" waits: {why}"),
            None => "[traffic] write = \"new\": starting".into(),
        })
    }
}
