//! `walshift run`: stream from the slot and apply into the shadow tables
//! until stopped.
//!
//! The mapping is compiled against both catalogs first (bad input exits 2
//! before anything runs). Then a supervisor runs *sessions*: one target
//! connection, one replication stream started at the target's checkpoint,
//! a reader task and an applier task joined by a bounded channel. A session
//! ends on shutdown or on an error, classified as:
//!
//! * transient (connection lost, server restart, serialization failure,
//!   deadlock, lock timeout): reconnect with exponential backoff and resume
//!   from the checkpoint;
//! * retry-strict (a coalesced batch hit a constraint or data error): resume
//!   at once from the checkpoint and replay the failed transactions one row
//!   per statement in source order;
//! * fatal (schema drift, a constraint the mapping violates in strict mode,
//!   a protocol violation): stop with the table, key and LSN in the error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::apply::between::WorkError;
use crate::apply::{Applier, ApplierOptions, ApplyError, ApplyErrorClass, ApplyStats};
use crate::backfill::step::BackfillWork;
use crate::backfill::{Backfill, BackfillBoard, BackfillOptions};
use crate::change::TableIdx;
use crate::checks;
use crate::config::ValidatedConfig;
use crate::cutover::drain::DrainHook;
use crate::error::{self, CheckFailure, CheckFailures, Error};
use crate::lag::Lag;
use crate::lsn::Lsn;
use crate::pg::client::{self, SessionLimits};
use crate::pg::{catalog, migrate};
use crate::replication::reader::{self, Reader, ReaderError};
use crate::replication::stream::{LogicalStream, StreamOptions};
use crate::runtime::pipeline::Pipeline;
use crate::runtime::shutdown;
use crate::runtime::shutdown::Shutdown;
use crate::runtime::tasks::spawn_named;
use crate::state::backfill as progress;
use crate::telemetry::metrics as m;
use crate::transform::Plan;
use crate::verify::hook::{RepairQueue, RepairRequest, VerifyHook};
use crate::verify::periodic::Periodic;
use crate::verify::{self, dirty, dirty::DirtyKeys};

/// First reconnect delay; doubles up to `source.reconnect_max_backoff_ms`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);

/// A session that lasted this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// What a run backfills and when it stops.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Backfill only these tables (source or target names, as configured);
    /// every incomplete table when empty.
    pub tables: Vec<String>,
    /// Copy `tables` again from the start, overwriting the target's rows
    /// (`walshift backfill --table T --restart`).
    pub restart: bool,
    /// Stop once the backfill of the tables in scope is complete
    /// (`walshift backfill`) instead of streaming until stopped.
    pub until_backfilled: bool,
    /// Live backfill progress, for whoever shows it.
    pub board: Arc<BackfillBoard>,
    /// Where the lag is computed (shared with `/status` and `/readyz`).
    pub lag: Arc<Lag>,
    /// Where this process's HTTP listener answers, recorded in the state
    /// schema for `walshift status`.
    pub http_addr: Option<std::net::SocketAddr>,
    /// The handle the controller reaches the pipeline through.
    pub pipeline: Pipeline,
}

/// Totals of a `run` that was stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// What the applier did, over all sessions.
    pub applied: ApplyStats,
    /// Sessions restarted after transient errors.
    pub reconnects: u64,
    /// Strict replays after a batch failed.
    pub strict_replays: u64,
    /// Whether every table in scope was completely backfilled.
    pub backfilled: bool,
}

/// How a session ended badly.
#[derive(Debug)]
enum SessionError {
    Apply(ApplyError),
    Reader(ReaderError),
    Setup(Error),
}

impl SessionError {
    fn class(&self) -> ApplyErrorClass {
        match self {
            SessionError::Apply(e) => e.class(),
            SessionError::Reader(e) if e.is_transient() => ApplyErrorClass::Transient,
            SessionError::Reader(_) => ApplyErrorClass::Fatal,
            SessionError::Setup(Error::Connect(_)) => ApplyErrorClass::Transient,
            SessionError::Setup(Error::Stream(e)) if e.is_transient() => ApplyErrorClass::Transient,
            SessionError::Setup(Error::Sql { source, .. })
                if client::classify(source) == client::SqlErrorKind::Transient =>
            {
                ApplyErrorClass::Transient
            }
            SessionError::Setup(_) => ApplyErrorClass::Fatal,
        }
    }

    fn into_error(self) -> Error {
        match self {
            SessionError::Apply(e) => Error::Apply(e),
            SessionError::Reader(e) => Error::Reader(e),
            SessionError::Setup(e) => e,
        }
    }

    fn describe(&self) -> String {
        match self {
            SessionError::Apply(e) => error::display_chain(e),
            SessionError::Reader(e) => error::display_chain(e),
            SessionError::Setup(e) => error::display_chain(e),
        }
    }
}

/// Checks the preconditions and compiles the plan; exits 2 on bad input.
pub async fn prepare(cfg: &ValidatedConfig) -> Result<Plan, Error> {
    let source = client::connect(&cfg.source.url, "run", SessionLimits::ADMIN).await?;
    let target = client::connect(&cfg.target.url, "run", SessionLimits::ADMIN).await?;
    // A state schema newer than this walshift, or migrated from other SQL,
    // is refused before anything else (exit 2, nothing changed).
    migrate::check(&target).await?;
    let plan = Plan::compile(cfg, &source, &target).await?;
    // Root causes first (`wal_level` lowered: a missing slot is its
    // symptom), and access to the mapped tables: see `crate::checks`.
    let mut failures = checks::stream_source(&source, &cfg.source.slot)
        .await
        .map_err(Error::sql("checking the source"))?;
    failures.extend(
        checks::table_access(&source, &target, &plan)
            .await
            .map_err(Error::sql("checking access to the mapped tables"))?,
    );
    if !failures.is_empty() {
        return Err(Error::Checks(CheckFailures(failures)));
    }
    let slot = catalog::slot_info(&source, &cfg.source.slot)
        .await
        .map_err(Error::sql("looking up the replication slot"))?;
    let registered = migrate::migration_registered(&target, &cfg.migration_name)
        .await
        .map_err(Error::sql("looking up the migration"))?;
    if let Some(what) = slot_gone(slot.as_ref()) {
        if registered {
            return Err(history_lost(cfg, &target, what).await);
        }
        return Err(Error::Precondition(format!(
            "replication slot {} does not exist on the source: run `walshift setup` first",
            cfg.source.slot
        )));
    }
    if !registered {
        return Err(Error::Precondition(format!(
            "migration {} is not registered in the target's walshift schema: run `walshift setup` first",
            cfg.migration_name
        )));
    }
    // A state schema created by an older walshift is upgraded in place
    // (logged, and audited per migration: `crate::state::schema`).
    let mut target = target;
    migrate::migrate(&mut target).await?;
    Ok(plan)
}

/// Ends walsender `pid` if it still holds this migration's slot, and waits
/// (at most 5 s) for the slot to be free. It served a connection that went
/// silent (a stalled network path), and would otherwise keep the slot until
/// its `wal_sender_timeout` (60 s by default) while every reconnect fails
/// with "replication slot is active". Best effort: failures are logged and
/// the reconnect loop carries on as before.
async fn end_stale_walsender(cfg: &ValidatedConfig, pid: i32) {
    let ended = async {
        let c = client::connect(&cfg.source.url, "run", SessionLimits::ADMIN)
            .await
            .map_err(|e| error::display_chain(&e))?;
        let row = c
            .query_one(
                "select count(pg_terminate_backend(active_pid)) from pg_replication_slots \
                 where slot_name = $1 and active_pid = $2",
                &[&cfg.source.slot, &pid],
            )
            .await
            .map_err(|e| client::server_message(&e))?;
        let terminated: i64 = row.try_get(0).map_err(|e| e.to_string())?;
        if terminated == 0 {
            return Ok(false);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let held = c
                .query_opt(
                    "select 1 from pg_replication_slots where slot_name = $1 and active_pid = $2",
                    &[&cfg.source.slot, &pid],
                )
                .await
                .map_err(|e| client::server_message(&e))?;
            if held.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok::<bool, String>(true)
    };
    match ended.await {
        Ok(true) => tracing::warn!(
            pid,
            slot = %cfg.source.slot,
            "ended the walsender of the connection that went silent, which still held the slot"
        ),
        Ok(false) => {}
        Err(error) => tracing::warn!(pid, %error, "could not end the stale walsender"),
    }
}

/// What happened to a slot that can no longer be read, if it can't:
/// missing, or invalidated (`wal_status = lost`).
fn slot_gone(slot: Option<&catalog::SlotInfo>) -> Option<String> {
    match slot {
        None => Some("no longer exists on the source".to_owned()),
        Some(s) if s.wal_status.as_deref() == Some("lost") => Some(
            "was invalidated by the source (wal_status lost: the WAL it needed was removed, \
             e.g. because it exceeded max_slot_wal_keep_size)"
                .to_owned(),
        ),
        Some(_) => None,
    }
}

/// [`Error::HistoryLost`] for this migration, with its applied position.
async fn history_lost(
    cfg: &ValidatedConfig,
    target: &tokio_postgres::Client,
    what: String,
) -> Error {
    let applied =
        crate::state::progress::load(target, &cfg.migration_name).await.unwrap_or(Lsn::ZERO);
    tracing::error!(slot = %cfg.source.slot, %what, "the replication slot's history is gone");
    Error::HistoryLost { slot: cfg.source.slot.clone(), what, applied }
}

/// Whether a failed `START_REPLICATION` means the slot is gone for good:
/// dropped (42704) or invalidated (55000 "can no longer get changes" /
/// "cannot read from logical replication slot").
fn slot_lost_on_start(err: &crate::replication::stream::StreamError) -> Option<String> {
    use crate::replication::stream::StreamError;
    let StreamError::Wire(wire) = err else { return None };
    let server = wire.server_error()?;
    match server.code.as_str() {
        "42704" => Some("no longer exists on the source".to_owned()),
        "55000" if server.message.contains("replication slot") => Some(format!(
            "was invalidated by the source ({}{})",
            server.message,
            server.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
        )),
        _ => None,
    }
}

/// Resolves `--table` names (source or target, `schema.table` or a bare
/// table name when unambiguous) to plan tables.
pub fn resolve_tables(plan: &Plan, names: &[String]) -> Result<Vec<TableIdx>, Error> {
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for name in names {
        let matches: Vec<TableIdx> = plan
            .tables
            .iter()
            .filter(|t| {
                [&t.source, &t.target]
                    .iter()
                    .any(|q| q.readable() == *name || (!name.contains('.') && q.raw_name() == name))
            })
            .map(|t| t.index)
            .collect();
        match matches.as_slice() {
            [t] => out.push(*t),
            [] => failures.push(CheckFailure {
                subject: format!("--table {name}"),
                problem: format!(
                    "no mapped table has this source or target name; mapped: {}",
                    plan.tables
                        .iter()
                        .map(|t| format!("{} -> {}", t.source.readable(), t.target.readable()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
            _ => failures.push(CheckFailure {
                subject: format!("--table {name}"),
                problem: "matches several mapped tables; use schema.table".into(),
            }),
        }
    }
    if failures.is_empty() { Ok(out) } else { Err(Error::Checks(CheckFailures(failures))) }
}

/// Runs until `shutdown`, or a fatal error, backfilling every incomplete
/// table.
pub async fn run(cfg: &ValidatedConfig, shutdown: Shutdown) -> Result<RunSummary, Error> {
    run_with(cfg, shutdown, RunOptions::default()).await
}

/// Runs with `options` until `shutdown`, a fatal error, or (with
/// `until_backfilled`) the end of the backfill.
pub async fn run_with(
    cfg: &ValidatedConfig,
    outer: Shutdown,
    options: RunOptions,
) -> Result<RunSummary, Error> {
    let plan = Arc::new(prepare(cfg).await?);
    // The stream needs a wal sender (checked here, not in `prepare`: a
    // standby waiting for the lease needs none yet).
    let source = client::connect(&cfg.source.url, "run", SessionLimits::ADMIN).await?;
    if let Some(failure) = checks::free_wal_sender(&source, &cfg.source.slot)
        .await
        .map_err(Error::sql("counting the source's wal senders"))?
    {
        return Err(Error::Checks(CheckFailures(vec![failure])));
    }
    drop(source);
    let only = if options.tables.is_empty() {
        None
    } else {
        Some(resolve_tables(&plan, &options.tables)?)
    };
    if options.restart {
        restart_tables(cfg, &plan, only.as_deref().unwrap_or(&[])).await?;
    }
    let backfill = BackfillOptions {
        migration: cfg.migration_name.clone(),
        chunk_rows_min: cfg.backfill.chunk_rows_min,
        chunk_rows_max: cfg.backfill.chunk_rows_max,
        target_chunk: cfg.backfill.target_chunk,
        max_lag: cfg.backfill.max_lag,
        max_rows_per_second: cfg.backfill.max_rows_per_second,
        only,
    };
    // Sessions stop on the outer shutdown or, for `walshift backfill`, once
    // the board says every table in scope is complete.
    let (stop, shutdown) = shutdown::channel();
    let mut done = options.board.subscribe_done();
    let until_backfilled = options.until_backfilled;
    let mut outer_wait = outer.clone();
    let _watcher = spawn_named("run-stop", async move {
        tokio::select! {
            () = outer_wait.wait() => {}
            _ = done.wait_for(|d| *d), if until_backfilled => {}
        }
        stop.trigger();
    });
    tracing::info!(
        migration = %cfg.migration_name,
        tables = plan.tables.len(),
        slot = %cfg.source.slot,
        "mapping compiled; starting to apply"
    );
    if let Some(addr) = options.http_addr {
        register_instance(cfg, addr).await;
    }
    // Shared by every session and the verification loop.
    let shared = Shared::new(
        cfg,
        &plan,
        options.until_backfilled,
        Arc::clone(&options.lag),
        Arc::clone(&options.pipeline),
    );
    options.pipeline.set_dirty(shared.dirty.clone());
    load_cut_over(cfg, &options.pipeline).await?;
    let heartbeat_task = spawn_named(
        "heartbeat",
        crate::replication::heartbeat::run(cfg.clone(), Arc::clone(&shared.lag), shutdown.clone()),
    );
    let verify_task = shared.dirty.as_ref().map(|dirty| {
        let periodic = Periodic {
            cfg: cfg.clone(),
            plan: Arc::clone(&plan),
            board: Arc::clone(&options.board),
            lag: Arc::clone(&shared.lag),
            dirty: Arc::clone(dirty),
            repairs: shared.repair_tx.clone(),
            lock: Arc::clone(&options.pipeline.verify_lock),
            pipeline: Arc::clone(&options.pipeline),
        };
        spawn_named("verify", verify::periodic::run(periodic, shutdown.clone()))
    });
    let result = sessions(cfg, plan, &backfill, &options, &shared, shutdown).await;
    heartbeat_task.abort();
    let _ = heartbeat_task.await;
    if let Some(task) = verify_task {
        // Verification state is written chunk by chunk: stopping it
        // anywhere is safe (the next run resumes the pass).
        task.abort();
        let _ = task.await;
    }
    result
}

/// What the sessions of one run share with each other and with the
/// verification loop.
struct Shared {
    /// The walsender of a stream that went silent (receive timeout): it
    /// may still hold the slot until its own `wal_sender_timeout`, so the
    /// next session ends it first.
    stale_walsender: std::sync::Mutex<Option<i32>>,
    lag: Arc<Lag>,
    pipeline: Pipeline,
    dirty: Option<Arc<DirtyKeys>>,
    repair_tx: Option<mpsc::Sender<RepairRequest>>,
    repair_queue: Option<RepairQueue>,
}

impl Shared {
    fn new(
        cfg: &ValidatedConfig,
        plan: &Plan,
        until_backfilled: bool,
        lag: Arc<Lag>,
        pipeline: Pipeline,
    ) -> Self {
        let verify = cfg.verify.enabled && !until_backfilled;
        let dirty =
            verify.then(|| Arc::new(DirtyKeys::new(plan.tables.len(), dirty::DEFAULT_CAPACITY)));
        let (repair_tx, repair_queue) = if verify && cfg.verify.repair {
            // One request at a time: the loop waits for each.
            let (tx, rx) = mpsc::channel(1);
            (Some(tx), Some(Arc::new(std::sync::Mutex::new(rx))))
        } else {
            (None, None)
        };
        Shared {
            stale_walsender: std::sync::Mutex::new(None),
            lag,
            pipeline,
            dirty,
            repair_tx,
            repair_queue,
        }
    }
}

/// Runs sessions until shutdown or a fatal error.
async fn sessions(
    cfg: &ValidatedConfig,
    plan: Arc<Plan>,
    backfill: &BackfillOptions,
    options: &RunOptions,
    shared: &Shared,
    shutdown: Shutdown,
) -> Result<RunSummary, Error> {
    let mut summary = RunSummary::default();
    let mut strict_through = Lsn::ZERO;
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let started = Instant::now();
        let session = session(
            cfg,
            Arc::clone(&plan),
            backfill,
            &options.board,
            shared,
            strict_through,
            shutdown.clone(),
        )
        .await;
        summary.backfilled = *options.board.subscribe_done().borrow();
        match session {
            Ok(stats) if shutdown.is_triggered() => {
                add(&mut summary.applied, stats);
                return Ok(summary);
            }
            Ok(stats) => {
                add(&mut summary.applied, stats);
                summary.reconnects += 1;
                metrics::counter!(m::RECONNECTS).increment(1);
                tracing::warn!("session ended without an error; resuming from the checkpoint");
            }
            Err((stats, err)) => {
                add(&mut summary.applied, stats);
                if shutdown.is_triggered() {
                    return Ok(summary);
                }
                match err.class() {
                    ApplyErrorClass::Fatal => {
                        note_error("fatal", err.describe());
                        return Err(err.into_error());
                    }
                    ApplyErrorClass::RetryStrict(through) => {
                        note_error("strict_replay", err.describe());
                        summary.strict_replays += 1;
                        strict_through = strict_through.max(through);
                        tracing::warn!(
                            error = %err.describe(),
                            through = %through,
                            "batch failed; replaying it row by row in source order"
                        );
                    }
                    ApplyErrorClass::Transient => {
                        note_error("transient", err.describe());
                        metrics::counter!(m::RECONNECTS).increment(1);
                        summary.reconnects += 1;
                        if started.elapsed() >= HEALTHY_SESSION {
                            backoff = INITIAL_BACKOFF;
                        }
                        tracing::warn!(
                            error = %err.describe(),
                            retry_in_ms = backoff.as_millis() as u64,
                            "transient error; resuming from the checkpoint"
                        );
                        let mut waiting = shutdown.clone();
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = waiting.wait() => return Ok(summary),
                        }
                        backoff = (backoff * 2).min(cfg.source.reconnect_max_backoff);
                    }
                }
            }
        }
    }
}

/// Loads the barrier of the write cutover in force (changes after it got
/// past the fence: reported, not applied).
async fn load_cut_over(cfg: &ValidatedConfig, pipeline: &Pipeline) -> Result<(), Error> {
    let target = client::connect(&cfg.target.url, "run", SessionLimits::ADMIN).await?;
    let stored = crate::state::controller::load(&target, &cfg.migration_name)
        .await
        .map_err(Error::sql("reading the controller state"))?;
    let cut_over = stored.is_some_and(|s| s.state == "cut_over");
    let barrier = if cut_over {
        crate::state::cutover::cut_over_barrier(&target, &cfg.migration_name)
            .await
            .map_err(Error::sql("reading the write cutover"))?
    } else {
        None
    };
    pipeline.set_cut_over_at(barrier);
    Ok(())
}

/// Counts an error of `kind` and keeps it for `status`.
fn note_error(kind: &'static str, message: String) {
    metrics::counter!(m::ERRORS, m::LABEL_KIND => kind).increment(1);
    crate::telemetry::recent::record("stream", kind, message);
}

fn add(total: &mut ApplyStats, stats: ApplyStats) {
    total.transactions += stats.transactions;
    total.changes += stats.changes;
    total.commits += stats.commits;
}

/// Records this process and its HTTP listener as the migration's instance
/// (best effort: `status` then falls back to the state schema).
async fn register_instance(cfg: &ValidatedConfig, addr: std::net::SocketAddr) {
    let host = crate::state::instance::host_name();
    let instance = crate::state::instance::Instance {
        pid: i32::try_from(std::process::id()).unwrap_or(0),
        host,
        http_addr: addr.to_string(),
    };
    let registered = async {
        let target = client::connect(&cfg.target.url, "run", SessionLimits::ADMIN)
            .await
            .map_err(|e| error::display_chain(&e))?;
        crate::state::instance::register(&target, &cfg.migration_name, &instance)
            .await
            .map_err(|e| client::server_message(&e))
    };
    if let Err(e) = registered.await {
        tracing::warn!(error = %e, "cannot record this instance; `walshift status` will read the state schema");
    }
}

/// Starts `tables` over: their progress is reset and chunks overwrite.
async fn restart_tables(
    cfg: &ValidatedConfig,
    plan: &Plan,
    tables: &[TableIdx],
) -> Result<(), Error> {
    if tables.is_empty() {
        return Err(Error::Checks(CheckFailures(vec![CheckFailure {
            subject: "--restart".into(),
            problem: "needs --table: name the table to copy again".into(),
        }])));
    }
    let source = client::connect(&cfg.source.url, "backfill", SessionLimits::ADMIN).await?;
    let target = client::connect(&cfg.target.url, "backfill", SessionLimits::ADMIN).await?;
    let slot = catalog::slot_info(&source, &cfg.source.slot)
        .await
        .map_err(Error::sql("looking up the replication slot"))?;
    if let Some(pid) = slot.and_then(|s| s.active_pid) {
        return Err(Error::Precondition(format!(
            "replication slot {} is in use (walsender pid {pid}): stop the running `walshift run` \
             first; nothing was changed",
            cfg.source.slot
        )));
    }
    for &t in tables {
        let tp = &plan.tables[t];
        let estimate = crate::backfill::estimate_rows(&source, &tp.source.to_string())
            .await
            .map_err(Error::sql("estimating the source's rows"))?;
        target
            .execute(
                progress::RESTART,
                &[&cfg.migration_name, &tp.source.readable(), &tp.target.readable(), &estimate],
            )
            .await
            .map_err(Error::sql("resetting the backfill progress"))?;
        tracing::info!(table = %tp.target.readable(), "backfill restarts from the first key");
    }
    Ok(())
}

async fn session(
    cfg: &ValidatedConfig,
    plan: Arc<Plan>,
    backfill: &BackfillOptions,
    board: &Arc<BackfillBoard>,
    shared: &Shared,
    strict_through: Lsn,
    shutdown: Shutdown,
) -> Result<ApplyStats, (ApplyStats, SessionError)> {
    let none = ApplyStats::default();
    let fail = |e: Error| (none, SessionError::Setup(e));
    let target = client::connect(&cfg.target.url, "apply", SessionLimits::APPLY)
        .await
        .map_err(|e| fail(e.into()))?;
    let checkpoint = crate::state::progress::load(&target, &cfg.migration_name)
        .await
        .map_err(|e| fail(Error::sql("reading the applied position")(e)))?;
    let (durable_tx, durable_rx) = watch::channel(Lsn::ZERO);
    let options = ApplierOptions {
        migration: cfg.migration_name.clone(),
        batch_max_rows: cfg.apply.batch_max_rows as usize,
        batch_max_wait: cfg.apply.batch_max_wait,
        strict_through,
    };
    let source_sql = client::connect(&cfg.source.url, "fetch", SessionLimits::APPLY)
        .await
        .map_err(|e| fail(e.into()))?;
    let copier = client::connect(&cfg.source.url, "backfill", SessionLimits::APPLY)
        .await
        .map_err(|e| fail(e.into()))?;
    let backfill =
        Backfill::start(copier, &target, Arc::clone(&plan), backfill.clone(), Arc::clone(board))
            .await
            .map_err(|e| (none, SessionError::Apply(WorkError::new(e.is_transient(), e).into())))?;
    let mut writers = Vec::new();
    if backfill.has_work() {
        for _ in 1..cfg.backfill.parallelism {
            let target = client::connect(&cfg.target.url, "backfill-writer", SessionLimits::APPLY)
                .await
                .map_err(|e| fail(e.into()))?;
            let source = client::connect(&cfg.source.url, "fetch", SessionLimits::APPLY)
                .await
                .map_err(|e| fail(e.into()))?;
            writers.push((target, source));
        }
    }
    let applier =
        Applier::new(target, source_sql, Arc::clone(&plan), options, checkpoint, durable_tx)
            .await
            .map_err(|e| (none, SessionError::Apply(e)))?;
    let backfill_work = BackfillWork::new(backfill, writers, Arc::clone(&plan))
        .await
        .map_err(|e| (none, SessionError::Apply(WorkError::new(e.is_transient(), e).into())))?;
    let mut applier = applier
        .with_lag(Arc::clone(&shared.lag))
        .with_work(Box::new(backfill_work))
        .with_work(Box::new(DrainHook::new(Arc::clone(&shared.pipeline.drain_queue))))
        .with_work_notify(Arc::clone(&shared.pipeline.work_arrived));
    if let Some(dirty) = &shared.dirty {
        let mut hook = VerifyHook::new(Arc::clone(&plan), Arc::clone(dirty));
        if let Some(queue) = &shared.repair_queue {
            let source = client::connect(&cfg.source.url, "repair", SessionLimits::APPLY)
                .await
                .map_err(|e| fail(e.into()))?;
            hook = hook.with_repairs(Arc::clone(queue), source);
        }
        applier = applier.with_work(Box::new(hook));
    }
    let stream_options = StreamOptions {
        slot: cfg.source.slot.clone(),
        publication: cfg.source.publication.clone(),
        start_lsn: checkpoint,
        status_interval: cfg.source.status_interval,
    };
    let stale = shared.stale_walsender.lock().ok().and_then(|mut s| s.take());
    if let Some(pid) = stale {
        end_stale_walsender(cfg, pid).await;
    }
    let source = cfg.source.url.with_application_name("walshift:reader");
    let stream = match LogicalStream::start(&source, &stream_options).await {
        Ok(stream) => stream,
        Err(e) => {
            if let Some(what) = slot_lost_on_start(&e) {
                return Err(fail(Error::HistoryLost {
                    slot: cfg.source.slot.clone(),
                    what,
                    applied: checkpoint,
                }));
            }
            return Err(fail(e.into()));
        }
    };
    tracing::info!(%checkpoint, strict_through = %strict_through, "streaming");

    let walsender = stream.backend_pid();
    let (tx, rx) = mpsc::channel(reader::CHANNEL_CHUNKS);
    let reader = Reader::new(stream, plan, checkpoint, tx, durable_rx)
        .with_lag(Arc::clone(&shared.lag))
        .with_pipeline(Arc::clone(&shared.pipeline));
    let reader_task = spawn_named("reader", reader.run(shutdown.clone()));
    let applier_task = spawn_named("applier", applier.run(rx, shutdown));
    let (read, applied) = tokio::join!(reader_task, applier_task);
    let joined = |what: &str, join| (none, SessionError::Setup(Error::task_failed(what, join)));
    let applied = applied.map_err(|join| joined("applier", join))?;
    let read = read.map_err(|join| joined("reader", join))?;
    if let Err(e) = &read
        && e.is_receive_timeout()
        && let Ok(mut stale) = shared.stale_walsender.lock()
    {
        *stale = walsender;
    }
    match (applied, read) {
        (Err(e), _) => Err((none, SessionError::Apply(e))),
        (Ok(stats), Err(e)) => Err((stats, SessionError::Reader(e))),
        (Ok(stats), Ok(_)) => Ok(stats),
    }
}
