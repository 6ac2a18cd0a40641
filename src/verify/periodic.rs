//! The verification loop inside `walshift run`: once a table's backfill is
//! complete, a pass every `[verify] interval_seconds`: a full pass first
//! (after every start of the process, and every `full_pass_interval_seconds`),
//! incremental passes over the keys the stream changed in between. With
//! `[verify] repair = true`, confirmed differences are re-copied by the
//! applier between its transactions ([`crate::verify::hook`]), then
//! re-checked. Errors are logged and retried with backoff: verification
//! never stops the stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::backfill::BackfillBoard;
use crate::config::ValidatedConfig;
use crate::lag::Lag;
use crate::pg::client::{self, SessionLimits};
use crate::runtime::shutdown::Shutdown;
use crate::state::verify::{self as store, PassKind, PassResult, Runner};
use crate::transform::Plan;
use crate::verify::dirty::DirtyKeys;
use crate::verify::hook::RepairRequest;
use crate::verify::position::Applied;
use crate::verify::{Verifier, VerifyError, VerifyOptions, compile};

/// First retry delay after an error; doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the loop needs from `run`.
#[derive(Debug, Clone)]
pub struct Periodic {
    /// The validated config.
    pub cfg: ValidatedConfig,
    /// The compiled plan.
    pub plan: Arc<Plan>,
    /// Backfill progress: a table is verified once complete.
    pub board: Arc<BackfillBoard>,
    /// The applier's lag and applied position.
    pub lag: Arc<Lag>,
    /// Keys the applier changed.
    pub dirty: Arc<DirtyKeys>,
    /// Where to send repairs (with `[verify] repair = true`).
    pub repairs: Option<mpsc::Sender<RepairRequest>>,
    /// Held for each pass (the write cutover holds it for its checks).
    pub lock: Arc<tokio::sync::Mutex<()>>,
    /// Whether the write cutover is in force (then nothing is verified).
    pub pipeline: crate::runtime::pipeline::Pipeline,
}

/// Runs until `shutdown`.
pub async fn run(p: Periodic, mut shutdown: Shutdown) {
    let mut full_done = vec![false; p.plan.tables.len()];
    let mut backoff = INITIAL_BACKOFF;
    loop {
        if shutdown.is_triggered() {
            return;
        }
        match session(&p, &mut full_done, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                crate::telemetry::recent::record(
                    "verify",
                    if e.is_transient() { "transient" } else { "fatal" },
                    crate::error::display_chain(&e),
                );
                tracing::warn!(
                    error = %crate::error::display_chain(&e),
                    retry_in_ms = backoff.as_millis() as u64,
                    "verification failed; retrying"
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.wait() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn complete_tables(p: &Periodic) -> Vec<bool> {
    let board = p.board.tables();
    p.plan
        .tables
        .iter()
        .map(|tp| {
            let name = tp.target.readable();
            board.iter().any(|b| b.target == name && b.complete)
        })
        .collect()
}

async fn session(
    p: &Periodic,
    full_done: &mut [bool],
    shutdown: &Shutdown,
) -> Result<(), VerifyError> {
    let cfg = &p.cfg;
    let connect_err = |e: client::ConnectError| VerifyError::Connect(e.to_string());
    let source = client::connect(&cfg.source.url, "verify", SessionLimits::ADMIN)
        .await
        .map_err(connect_err)?;
    let target = client::connect(&cfg.target.url, "verify", SessionLimits::ADMIN)
        .await
        .map_err(connect_err)?;
    let tables = compile::compile(&p.plan, &source, &target).await?;
    let names: Vec<(String, String)> =
        p.plan.tables.iter().map(|t| (t.source.readable(), t.target.readable())).collect();
    store::init(&target, &cfg.migration_name, Runner::Run, &names)
        .await
        .map_err(|source| VerifyError::Sql { context: "recording the tables to verify", source })?;
    let options = VerifyOptions::from_config(cfg, Runner::Run);
    let mut verifier =
        Verifier::new(source, target, tables, options, Applied::InProcess(Arc::clone(&p.lag)))
            .await?
            .with_dirty(Arc::clone(&p.dirty))
            .with_lag(Arc::clone(&p.lag));
    let mut shutdown = shutdown.clone();
    loop {
        let round_started = Instant::now();
        let complete = complete_tables(p);
        let stored =
            store::load(verifier.target(), &cfg.migration_name, Some(Runner::Run)).await.map_err(
                |source| VerifyError::Sql { context: "reading the verification state", source },
            )?;
        for &t in &p.plan.upsert_order {
            if !complete[t] || shutdown.is_triggered() {
                continue;
            }
            let name = p.plan.tables[t].target.readable();
            let state = stored.iter().find(|s| s.target_table == name);
            let full_due = state
                .and_then(|s| s.last_clean_full_age_seconds)
                .is_none_or(|age| age >= cfg.verify.full_pass_interval.as_secs_f64());
            let in_progress =
                state.and_then(|s| s.pass.as_ref()).is_some_and(|p| p.kind == PassKind::Full);
            let kind = if !full_done[t] || full_due || in_progress {
                PassKind::Full
            } else {
                PassKind::Incremental
            };
            let guard = p.lock.lock().await;
            // After the write cutover the application writes to the new
            // tables: they differ from transform(source) by design. Read
            // under the lock, which the cutover holds across the flip.
            if p.pipeline.cut_over_at().is_some() {
                drop(guard);
                continue;
            }
            let report = verifier.pass(t, kind, &shutdown).await?;
            if !report.complete {
                return Ok(());
            }
            if report.kind == PassKind::Full {
                full_done[t] = true;
            }
            tracing::info!(
                table = %report.target,
                kind = report.kind.as_str(),
                result = report.result.as_str(),
                rows = report.counters.rows,
                chunks = report.counters.chunks,
                mismatched = report.counters.mismatched,
                differences = report.counters.differences,
                unconfirmed = report.counters.unconfirmed,
                elapsed_ms = (report.elapsed_seconds * 1000.0) as u64,
                "verification pass"
            );
            if report.result == PassResult::Differences {
                if let Some(repairs) = &p.repairs {
                    let _guard = &guard;
                    let keys: Vec<Vec<String>> = report
                        .differences
                        .iter()
                        .filter(|d| d.confirmed)
                        .map(|d| d.key.clone())
                        .collect();
                    let (done_tx, done_rx) = oneshot::channel();
                    let request = RepairRequest { table: t, keys: keys.clone(), done: done_tx };
                    if repairs.send(request).await.is_ok() {
                        match done_rx.await {
                            Ok(Ok(done)) => {
                                tracing::info!(
                                    table = %name,
                                    rewritten = done.rewritten,
                                    deleted = done.deleted,
                                    "repaired; re-verifying the keys"
                                );
                                let again = verifier.pass_keys(t, keys, &shutdown).await?;
                                tracing::info!(
                                    table = %name,
                                    result = again.result.as_str(),
                                    "verification after repair"
                                );
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(table = %name, error = %e, "repair failed");
                            }
                            Err(_) => {}
                        }
                    }
                }
            }
        }
        let next = round_started + cfg.verify.interval;
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            () = shutdown.wait() => return Ok(()),
        }
    }
}
