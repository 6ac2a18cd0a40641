//! The applier: whole source transactions into target transactions, with the
//! applied position stored in the same target transaction.
//!
//! ```text
//!  reader ──Vec<StreamItem>──▶ Applier
//!                               │ begin (first Begin of a batch)
//!                               │ push changes into PendingOps (coalesced per key)
//!                               │ flush: multi-row delete / upsert / partial update
//!                               │ ... more source transactions merged ...
//!                               │ at a Commit boundary: flush, save progress, commit
//!                               ▼
//!                        durable LSN (watch) ──▶ reader ──▶ standby status (flush LSN)
//! ```
//!
//! # Rules
//!
//! * A target transaction only ever commits at a source commit boundary, so a
//!   reader of the shadow tables never sees part of a source transaction.
//!   Several source transactions are merged into one target transaction until
//!   `batch_max_rows` changes or `batch_max_wait` have accumulated, or the
//!   reader has nothing more queued (group commit: a quiet stream commits at
//!   once, a backlog fills big batches).
//! * A large source transaction is flushed every `batch_max_rows` changes
//!   into the still-open target transaction: memory stays bounded by the
//!   batch, not by the transaction.
//! * `walshift.progress.applied_lsn` is set to the commit end LSN of the last
//!   merged source transaction in the same target transaction. On start the
//!   stream resumes from it (and the reader skips transactions at or before
//!   it), so a crash at any instant neither loses nor repeats a transaction.
//! * The apply session runs with `synchronous_commit = off` (as native
//!   logical replication workers do). A commit is only reported as durable
//!   (and so as the flush LSN to the source) once the target's WAL is
//!   flushed past it: after each commit the applier notes the target's WAL
//!   insert position and releases the source LSN when
//!   `pg_current_wal_flush_lsn()` passes it.
//! * Constraint violations in a coalesced, reordered batch may be an artefact
//!   of reordering (a unique value moved between rows, a cycle of foreign
//!   keys): the batch is rolled back and replayed in *strict* mode, one row
//!   per statement in exact source order, which is how native replication
//!   applies, each source transaction committed on its own. A violation in
//!   strict mode is the mapping's fault and stops the run, naming the table,
//!   the key and the LSN, with every transaction before it applied.

pub mod batch;
pub mod between;
pub mod params;
pub mod statements;
pub mod writer;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_postgres::types::PgLsn;

use crate::apply::batch::{PendingOps, Pushed};
use crate::apply::between::{BetweenCtx, BetweenTxns, Step, WorkError};
use crate::apply::writer::{WriteError, Writer};
use crate::change::{Change, StreamItem};
use crate::lag::Lag;
use crate::lsn::Lsn;
use crate::pg::client::{self, SqlErrorKind};
use crate::runtime::shutdown::Shutdown;
use crate::telemetry::metrics as m;
use crate::transform::Plan;
use crate::transform::plan::MissingToast;

/// How often to ask the target how far its WAL is flushed while commits
/// wait to become durable.
const FLUSH_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Longest wait for the last commits to become durable when stopping.
const FINAL_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Interval of the `applied` progress log line.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Pending bytes that force a flush whatever the row count, so a batch of
/// huge rows (large TOAST values) stays bounded in memory.
pub const BATCH_MAX_BYTES: usize = 32 << 20;

/// Settings of one applier.
#[derive(Debug, Clone)]
pub struct ApplierOptions {
    /// Migration name (the `walshift.progress` row).
    pub migration: String,
    /// Changes per target transaction before committing at the next source
    /// commit, and pending rows before a mid-transaction flush.
    pub batch_max_rows: usize,
    /// Longest time a target transaction stays open waiting for more
    /// source transactions.
    pub batch_max_wait: Duration,
    /// Source transactions whose commit position is at or before this are
    /// applied in strict mode.
    pub strict_through: Lsn,
}

/// Errors of the applier.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A write statement failed.
    #[error("{source} (source transaction committing at {lsn}{mode})")]
    Write {
        /// Commit position of the source transaction being applied.
        lsn: Lsn,
        /// Highest commit position in the failed target transaction.
        through: Lsn,
        /// Whether this was a strict (row by row) replay.
        strict: bool,
        /// `", strict replay"` or empty, for the message.
        mode: &'static str,
        /// The cause.
        #[source]
        source: WriteError,
    },
    /// An update left a needed TOAST value unchanged.
    #[error("{source} (source transaction committing at {lsn})")]
    MissingToast {
        /// Commit position of the source transaction.
        lsn: Lsn,
        /// The cause.
        #[source]
        source: MissingToast,
    },
    /// The target transaction could not commit (e.g. a deferred constraint).
    #[error(
        "cannot commit the target transaction holding source transactions up to {through}{mode}: {}",
        client::server_message(source)
    )]
    Commit {
        /// Highest source commit position in it.
        through: Lsn,
        /// Whether it was a strict replay.
        strict: bool,
        /// `", strict replay"` or empty, for the message.
        mode: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Transaction control or progress bookkeeping failed.
    #[error("{context}: {}", client::server_message(source))]
    Sql {
        /// What the applier was doing.
        context: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The reader broke the item protocol (a bug, not a server problem).
    #[error("apply protocol violation: {0}")]
    Protocol(&'static str),
    /// Work between transactions (backfill, repair) failed.
    #[error(transparent)]
    Work(#[from] WorkError),
}

/// What the supervisor should do after an [`ApplyError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyErrorClass {
    /// Reconnect with backoff and resume from the checkpoint.
    Transient,
    /// Resume from the checkpoint at once, replaying source transactions up
    /// to this commit position in strict mode.
    RetryStrict(Lsn),
    /// Stop.
    Fatal,
}

impl ApplyError {
    fn sql(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ApplyError {
        move |source| ApplyError::Sql { context, source }
    }

    /// How to handle this error.
    pub fn class(&self) -> ApplyErrorClass {
        match self {
            ApplyError::Write { source, strict, through, .. } => {
                match client::classify(&source.source) {
                    SqlErrorKind::Transient => ApplyErrorClass::Transient,
                    // Replay strictly to find out whether the batching caused it
                    // and, if not, to name the exact row.
                    _ if !strict => ApplyErrorClass::RetryStrict(*through),
                    _ => ApplyErrorClass::Fatal,
                }
            }
            ApplyError::Commit { source, strict, through, .. } => match client::classify(source) {
                SqlErrorKind::Transient => ApplyErrorClass::Transient,
                SqlErrorKind::Constraint if !strict => ApplyErrorClass::RetryStrict(*through),
                _ => ApplyErrorClass::Fatal,
            },
            ApplyError::Sql { source, .. } => match client::classify(source) {
                SqlErrorKind::Transient => ApplyErrorClass::Transient,
                _ => ApplyErrorClass::Fatal,
            },
            ApplyError::Work(e) if e.transient => ApplyErrorClass::Transient,
            ApplyError::MissingToast { .. } | ApplyError::Protocol(_) | ApplyError::Work(_) => {
                ApplyErrorClass::Fatal
            }
        }
    }
}

/// Counters of one applier run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Source transactions applied.
    pub transactions: u64,
    /// Row changes applied.
    pub changes: u64,
    /// Target transactions committed.
    pub commits: u64,
}

/// Source positions committed on the target but maybe not yet flushed.
#[derive(Debug, Default)]
struct Durability {
    /// `(target WAL insert position after the commit, source end LSN)`.
    waiting: VecDeque<(u64, Lsn)>,
    durable: Lsn,
}

impl Durability {
    fn committed(&mut self, target_lsn: u64, source: Lsn) {
        self.waiting.push_back((target_lsn, source));
    }

    /// Releases every commit the target flushed; returns the new durable
    /// position if it moved.
    fn flushed(&mut self, target_flush: u64) -> Option<Lsn> {
        let before = self.durable;
        while let Some(&(target, source)) = self.waiting.front() {
            if target > target_flush {
                break;
            }
            self.durable = self.durable.max(source);
            self.waiting.pop_front();
        }
        (self.durable > before).then_some(self.durable)
    }
}

/// The open target transaction.
#[derive(Debug)]
struct Batch {
    started: Instant,
    changes: usize,
    transactions: u64,
    /// Commit end of the last complete source transaction in it.
    end_lsn: Option<Lsn>,
    /// Highest source commit position seen in it (for strict replay).
    through: Lsn,
    /// Source commit time of the last complete transaction in it.
    commit_time: Option<SystemTime>,
}

/// The source transaction being received.
#[derive(Debug, Clone, Copy)]
struct SourceTxn {
    final_lsn: Lsn,
    strict: bool,
}

/// Applies stream items to the target.
pub struct Applier {
    writer: Writer,
    plan: Arc<Plan>,
    options: ApplierOptions,
    pending: PendingOps,
    batch: Option<Batch>,
    txn: Option<SourceTxn>,
    durability: Durability,
    durable_tx: watch::Sender<Lsn>,
    stats: ApplyStats,
    last_log: Instant,
    /// Work run between transactions (see [`between`]).
    work: Vec<Box<dyn BetweenTxns>>,
    /// End of the last source transaction committed on the target.
    applied: Lsn,
    /// A worker did work and the stream has not had its turn since: what
    /// it queued meanwhile is applied before the next step.
    stream_turn: bool,
    /// Notified when work arrives for a worker (a drain request): the
    /// workers get a turn at once, not only after the next stream item.
    work_arrived: Arc<tokio::sync::Notify>,
    /// Where the lag is computed (shared with pacing and status).
    lag: Arc<Lag>,
    /// Row changes in the open batch per table and op (insert, update,
    /// delete), counted into [`m::APPLY_CHANGES`] at commit.
    op_counts: Vec<[u64; 3]>,
    /// The metric handles of `op_counts`, resolved once.
    op_counters: Vec<[metrics::Counter; 3]>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl Applier {
    /// An applier writing through `client`, which must be a fresh session
    /// (it is switched to `synchronous_commit = off`); `source` is a source
    /// session for reading rows a partial update finds missing. `checkpoint`
    /// is the applied position read from the target at start.
    pub async fn new(
        client: tokio_postgres::Client,
        source: tokio_postgres::Client,
        plan: Arc<Plan>,
        options: ApplierOptions,
        checkpoint: Lsn,
        durable_tx: watch::Sender<Lsn>,
    ) -> Result<Self, ApplyError> {
        client
            .batch_execute("set synchronous_commit = off")
            .await
            .map_err(ApplyError::sql("configuring the apply session"))?;
        let op_counters: Vec<[metrics::Counter; 3]> = plan
            .tables
            .iter()
            .map(|t| {
                let table = t.target.readable();
                ["insert", "update", "delete"].map(|op| {
                    metrics::counter!(m::APPLY_CHANGES, m::LABEL_TABLE => table.clone(),
                        m::LABEL_OP => op)
                })
            })
            .collect();
        let mut applier = Applier {
            pending: PendingOps::new(plan.tables.len()),
            writer: Writer::new(client, source, Arc::clone(&plan)),
            plan,
            options,
            batch: None,
            txn: None,
            durability: Durability::default(),
            durable_tx,
            stats: ApplyStats::default(),
            last_log: Instant::now(),
            work: Vec::new(),
            applied: checkpoint,
            stream_turn: false,
            work_arrived: Arc::default(),
            lag: Arc::new(Lag::default()),
            op_counts: vec![[0; 3]; op_counters.len()],
            op_counters,
        };
        // The checkpoint may itself be an unflushed asynchronous commit of a
        // previous run: it only counts as durable once the WAL is flushed.
        let (insert, flush) = applier.wal_positions().await?;
        applier.durability.committed(flushable_position(insert), checkpoint);
        applier.release(flush);
        Ok(applier)
    }

    /// Reports lag into `lag` (shared with whoever reads it) instead of a
    /// private one.
    pub fn with_lag(mut self, lag: Arc<Lag>) -> Self {
        lag.applied(self.applied, None);
        self.lag = lag;
        self
    }

    /// Gives the workers a turn whenever `notify` is notified (work for
    /// them arrived), even while no stream item comes.
    pub fn with_work_notify(mut self, notify: Arc<tokio::sync::Notify>) -> Self {
        self.work_arrived = notify;
        self
    }

    /// Adds work to run between this applier's transactions, in the order
    /// added.
    pub fn with_work(mut self, work: Box<dyn BetweenTxns>) -> Self {
        self.work.push(work);
        self
    }

    async fn wal_positions(&self) -> Result<(u64, u64), ApplyError> {
        let row = self
            .writer
            .client()
            .query_one("select pg_current_wal_insert_lsn(), pg_current_wal_flush_lsn()", &[])
            .await
            .map_err(ApplyError::sql("reading the target's WAL position"))?;
        let insert: PgLsn =
            row.try_get(0).map_err(ApplyError::sql("reading the target's WAL position"))?;
        let flush: PgLsn =
            row.try_get(1).map_err(ApplyError::sql("reading the target's WAL position"))?;
        Ok((u64::from(insert), u64::from(flush)))
    }

    fn release(&mut self, target_flush: u64) {
        if let Some(durable) = self.durability.flushed(target_flush) {
            self.lag.durable(durable);
            self.durable_tx.send_replace(durable);
        }
    }

    /// Runs until the channel closes (the reader stopped) or an error.
    /// A complete batch is committed before returning; a source transaction
    /// cut off by the reader stopping is rolled back.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Vec<StreamItem>>,
        mut shutdown: Shutdown,
    ) -> Result<ApplyStats, ApplyError> {
        let mut work_wake = None;
        loop {
            if self.txn.is_none() && self.batch.is_none() {
                work_wake = self.between_step(&rx, &shutdown).await?;
            }
            let deadline = match (&self.batch, self.txn) {
                (Some(b), None) => Some(b.started + self.options.batch_max_wait),
                _ => None,
            };
            let poll_flush = !self.durability.waiting.is_empty();
            let chunk = tokio::select! {
                biased;
                chunk = rx.recv() => chunk,
                () = sleep_until_opt(deadline) => {
                    self.commit().await?;
                    continue;
                }
                () = tokio::time::sleep(FLUSH_POLL_INTERVAL), if poll_flush => {
                    let (_, flush) = self.wal_positions().await?;
                    self.release(flush);
                    continue;
                }
                () = sleep_until_opt(work_wake), if self.batch.is_none() => continue,
                () = self.work_arrived.notified(), if self.batch.is_none() => continue,
                () = shutdown.wait() => None,
            };
            let Some(chunk) = chunk else { break };
            for item in chunk {
                self.apply_item(item).await?;
            }
            if self.txn.is_none() && self.batch.is_some() && rx.is_empty() {
                self.commit().await?;
            }
        }
        if self.txn.is_none() && self.batch.is_some() {
            self.commit().await?;
        }
        self.finish().await
    }

    async fn finish(mut self) -> Result<ApplyStats, ApplyError> {
        if self.batch.is_some() {
            // A source transaction was cut off: drop its partial work.
            self.writer
                .client()
                .batch_execute("rollback")
                .await
                .map_err(ApplyError::sql("rolling back an incomplete transaction"))?;
        }
        let started = Instant::now();
        while !self.durability.waiting.is_empty() && started.elapsed() < FINAL_FLUSH_WAIT {
            let (_, flush) = self.wal_positions().await?;
            self.release(flush);
            if !self.durability.waiting.is_empty() {
                tokio::time::sleep(FLUSH_POLL_INTERVAL).await;
            }
        }
        Ok(self.stats)
    }

    fn write_error(&self, source: WriteError) -> ApplyError {
        // Between source transactions (a flush at commit time) the last
        // transaction of the batch is the one being written.
        let batch_through = self.batch.as_ref().map_or(Lsn::ZERO, |b| b.through);
        let (lsn, strict) = match self.txn {
            Some(t) => (t.final_lsn, t.strict),
            None => (batch_through, batch_through <= self.options.strict_through),
        };
        let through = batch_through.max(lsn);
        ApplyError::Write {
            lsn,
            through,
            strict,
            mode: if strict { ", strict replay" } else { "" },
            source,
        }
    }

    async fn apply_item(&mut self, item: StreamItem) -> Result<(), ApplyError> {
        match item {
            StreamItem::Begin { final_lsn, xid } => {
                for w in &mut self.work {
                    w.begin(xid, final_lsn);
                }
                if self.txn.is_some() {
                    return Err(ApplyError::Protocol("begin inside a transaction"));
                }
                if self.batch.is_none() {
                    self.writer
                        .client()
                        .batch_execute("begin; set constraints all deferred")
                        .await
                        .map_err(ApplyError::sql("starting a target transaction"))?;
                    self.batch = Some(Batch {
                        started: Instant::now(),
                        changes: 0,
                        transactions: 0,
                        end_lsn: None,
                        through: final_lsn,
                        commit_time: None,
                    });
                }
                if let Some(b) = &mut self.batch {
                    b.through = b.through.max(final_lsn);
                }
                let strict = final_lsn <= self.options.strict_through;
                self.txn = Some(SourceTxn { final_lsn, strict });
            }
            StreamItem::Change(change) => {
                let Some(txn) = self.txn else {
                    return Err(ApplyError::Protocol("change outside a transaction"));
                };
                if let Some(b) = &mut self.batch {
                    b.changes += 1;
                }
                for w in &mut self.work {
                    w.change(&change);
                }
                let op = match &change {
                    Change::Insert { .. } => 0,
                    Change::Update { .. } => 1,
                    Change::Delete { .. } => 2,
                };
                if let Some(c) = self.op_counts.get_mut(change.table()) {
                    c[op] += 1;
                }
                let pushed = self
                    .pending
                    .push(&self.plan, change)
                    .map_err(|source| ApplyError::MissingToast { lsn: txn.final_lsn, source })?;
                match pushed {
                    Pushed::Merged => {
                        if txn.strict
                            || self.pending.rows() >= self.options.batch_max_rows
                            || self.pending.bytes() >= BATCH_MAX_BYTES
                        {
                            self.flush().await?;
                        }
                    }
                    Pushed::Barrier(table, op) => {
                        self.flush().await?;
                        if let Err(e) = self.writer.write_one(table, &op).await {
                            return Err(self.write_error(e));
                        }
                    }
                }
            }
            StreamItem::Truncate(tables) => {
                if self.txn.is_none() {
                    return Err(ApplyError::Protocol("truncate outside a transaction"));
                }
                self.flush().await?;
                let tables: Vec<usize> =
                    tables.into_iter().filter(|&t| self.plan.tables[t].truncate).collect();
                for w in &mut self.work {
                    w.truncate(&tables);
                }
                if !tables.is_empty() {
                    if let Err(e) = self.writer.truncate(&tables).await {
                        return Err(self.write_error(e));
                    }
                }
            }
            StreamItem::Commit { end_lsn, commit_time } => {
                let Some(txn) = self.txn.take() else {
                    return Err(ApplyError::Protocol("commit outside a transaction"));
                };
                let Some(b) = &mut self.batch else {
                    return Err(ApplyError::Protocol("commit without a target transaction"));
                };
                b.end_lsn = Some(end_lsn);
                b.commit_time = Some(commit_time);
                b.transactions += 1;
                // A strict replay commits each source transaction on its own,
                // so a failure leaves every transaction before it applied.
                if txn.strict
                    || b.changes >= self.options.batch_max_rows
                    || b.started.elapsed() >= self.options.batch_max_wait
                {
                    self.commit().await?;
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ApplyError> {
        if let Err(e) = self.writer.flush(&self.pending).await {
            return Err(self.write_error(e));
        }
        self.pending.clear();
        Ok(())
    }

    /// Flushes, stores the progress and commits the open target transaction.
    async fn commit(&mut self) -> Result<(), ApplyError> {
        let Some(batch) = &self.batch else { return Ok(()) };
        let Some(end_lsn) = batch.end_lsn else {
            return Err(ApplyError::Protocol("commit of a batch without a complete transaction"));
        };
        let (transactions, changes, commit_time) =
            (batch.transactions, batch.changes, batch.commit_time);
        self.flush().await?;
        let save = self
            .writer
            .prepared(crate::state::progress::SAVE)
            .await
            .map_err(ApplyError::sql("saving the applied position"))?;
        let client = self.writer.client();
        let lsn = PgLsn::from(end_lsn.0);
        let migration = self.options.migration.as_str();
        // Pipelined: progress, commit and the WAL position go out together.
        let progress: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&migration, &lsn];
        let (saved, committed, position) = tokio::join!(
            client.execute(&save, &progress),
            client.batch_execute("commit"),
            client.query_one("select pg_current_wal_insert_lsn(), pg_current_wal_flush_lsn()", &[]),
        );
        // A failed progress write aborts the transaction, and COMMIT of an
        // aborted transaction rolls back: check it first.
        saved.map_err(ApplyError::sql("saving the applied position"))?;
        if let Err(source) = committed {
            let through = self.batch.as_ref().map_or(end_lsn, |b| b.through);
            let strict = through <= self.options.strict_through;
            let mode = if strict { ", strict replay" } else { "" };
            return Err(ApplyError::Commit { through, strict, mode, source });
        }
        let row = position.map_err(ApplyError::sql("reading the target's WAL position"))?;
        let insert: PgLsn =
            row.try_get(0).map_err(ApplyError::sql("reading the target's WAL position"))?;
        let flush: PgLsn =
            row.try_get(1).map_err(ApplyError::sql("reading the target's WAL position"))?;
        if let Some(b) = &self.batch {
            metrics::histogram!(m::APPLY_BATCH_DURATION).record(b.started.elapsed().as_secs_f64());
        }
        metrics::histogram!(m::APPLY_BATCH_ROWS).record(changes as f64);
        metrics::counter!(m::APPLY_COMMITS).increment(1);
        metrics::counter!(m::APPLY_TRANSACTIONS).increment(transactions);
        for (counts, counters) in self.op_counts.iter_mut().zip(&self.op_counters) {
            for (n, counter) in counts.iter_mut().zip(counters) {
                if *n > 0 {
                    counter.increment(*n);
                    *n = 0;
                }
            }
        }
        self.batch = None;
        self.stream_turn = false;
        self.applied = end_lsn;
        self.lag.applied(end_lsn, commit_time);
        self.stats.commits += 1;
        self.stats.transactions += transactions;
        self.stats.changes += changes as u64;
        self.durability.committed(flushable_position(u64::from(insert)), end_lsn);
        self.release(u64::from(flush));
        tracing::trace!(%end_lsn, transactions, changes, "committed batch");
        if self.last_log.elapsed() >= PROGRESS_LOG_INTERVAL {
            self.last_log = Instant::now();
            tracing::info!(
                applied_lsn = %end_lsn,
                durable_lsn = %self.durability.durable,
                transactions = self.stats.transactions,
                changes = self.stats.changes,
                commits = self.stats.commits,
                "applied"
            );
        }
        Ok(())
    }
}

impl Applier {
    /// Between two target transactions: runs each worker's step; returns
    /// when to look again (a rate cap), if one must wait.
    async fn between_step(
        &mut self,
        rx: &mpsc::Receiver<Vec<StreamItem>>,
        shutdown: &Shutdown,
    ) -> Result<Option<Instant>, ApplyError> {
        self.lag.waiting(!rx.is_empty());
        if self.work.is_empty() || shutdown.is_triggered() {
            return Ok(None);
        }
        if rx.is_empty() {
            self.stream_turn = false;
        } else if self.stream_turn {
            // Work and stream batches alternate while changes arrive, so
            // the stream is never more than about a round behind.
            return Ok(None);
        }
        let lag = self.lag.current();
        let mut wake: Option<Instant> = None;
        for w in &mut self.work {
            let ctx = BetweenCtx::new(&mut self.writer, self.applied, lag, shutdown, rx);
            match w.step(ctx).await? {
                Step::Idle => {}
                Step::WaitUntil(at) => wake = Some(wake.map_or(at, |w| w.min(at))),
                Step::Worked => {
                    self.stream_turn = true;
                    wake = Some(Instant::now());
                    if !rx.is_empty() {
                        break;
                    }
                }
            }
        }
        Ok(wake)
    }
}

/// WAL page size and the sizes of the page headers (`XLOG_BLCKSZ`,
/// `SizeOfXLogShortPHD`, `SizeOfXLogLongPHD`), for [`flushable_position`].
const WAL_PAGE: u64 = 8192;
const WAL_SHORT_HEADER: u64 = 24;
const WAL_LONG_HEADER: u64 = 40;
const WAL_SEGMENT: u64 = 16 << 20;

/// `pg_current_wal_insert_lsn()` reports a position *after* the header of
/// the next page when the last record ended exactly at a page boundary; no
/// WAL lies between the page start and that position, but the flush pointer
/// stops at the page start until more WAL is written (possibly much later
/// on an idle target). Maps such a position back to the page start so a
/// commit counts as durable once the flush pointer reaches it.
fn flushable_position(insert: u64) -> u64 {
    if insert % WAL_SEGMENT == WAL_LONG_HEADER {
        insert - WAL_LONG_HEADER
    } else if insert % WAL_PAGE == WAL_SHORT_HEADER {
        insert - WAL_SHORT_HEADER
    } else {
        insert
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_after_a_page_header_are_flushable_at_the_page_start() {
        assert_eq!(flushable_position(0x1_6000 + 24), 0x1_6000);
        assert_eq!(flushable_position(0x100_0000 + 40), 0x100_0000);
        assert_eq!(flushable_position(0x1_6000 + 100), 0x1_6000 + 100);
    }

    #[test]
    fn durability_releases_in_order_only_when_flushed() {
        let mut d = Durability::default();
        d.committed(100, Lsn(10));
        d.committed(200, Lsn(20));
        assert_eq!(d.flushed(99), None);
        assert_eq!(d.flushed(150), Some(Lsn(10)));
        assert_eq!(d.flushed(150), None);
        assert_eq!(d.flushed(200), Some(Lsn(20)));
        assert!(d.waiting.is_empty());
    }
}
