//! Backfill: copying the rows that existed before the slot, in keyset
//! chunks, while the stream applies changes. The algorithm and why it
//! converges are in `docs/backfill.md`; in short (gh-ost's *serialized copy*):
//!
//! ```text
//!  applier task (owns the target's apply connection and the position X)
//!   ├─ apply stream transactions … commit (applied position X)
//!   ├─ between two of its transactions, a chunk:
//!   │    source: BEGIN REPEATABLE READ; snapshot S; SELECT … WHERE key > cursor
//!   │            ORDER BY key LIMIT n; COMMIT        (S sees everything ≤ X)
//!   │    target: BEGIN; INSERT rows (existing keys: overwrite with S's version);
//!   │            UPDATE walshift.backfill SET last_key …; COMMIT
//!   └─ apply stream transactions after X … (they are applied *after* the chunk)
//! ```
//!
//! # Ordering invariant
//!
//! A chunk is written at an applied position X, reading the source at a
//! snapshot S that contains every source transaction the applier has applied
//! (up to X). Then every row the chunk writes is at least as new as the
//! target's version of it, and every change missing from S comes later in
//! the stream, so it is applied after the chunk. [`Backfill::read_next`]
//! *checks* that S contains everything applied rather than assuming it:
//! a source transaction's commit record can reach the walsender (and so be
//! applied) before the transaction becomes visible to new snapshots (the
//! window between its WAL flush and its removal from the proc array, which a
//! synchronous standby stretches). A snapshot that misses an applied or a
//! committed transaction is discarded and taken again.
//!
//! While the applier writes chunk n it reads chunk n+1 (both at the same
//! position X, as nothing is applied in between), as long as the stream has
//! nothing waiting; otherwise it applies the stream after each chunk.
//!
//! Each chunk is its own short source transaction: no snapshot is held open
//! for the whole copy, so vacuum on the source is not held back.

pub mod keyset;
pub mod pace;
pub mod step;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio::sync::watch;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, Statement};

use crate::backfill::keyset::{SNAPSHOT_QUERY, Snapshot};
use crate::backfill::pace::Pace;
use crate::change::{Datum, Row, TableIdx};
use crate::pg::client;
use crate::state::backfill as progress;
use crate::telemetry::metrics as m;
use crate::transform::Plan;

/// A chunk stops early once its rows hold this many bytes, so wide rows
/// (large TOAST values) keep memory bounded whatever the row count.
pub const CHUNK_MAX_BYTES: usize = 64 << 20;

/// Longest wait for a snapshot that contains every applied transaction.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

/// Interval of the `backfill progress` log line.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Window of the copy rate shown in progress (rate and ETA).
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Consecutive chunks of one table rolled back for a missing parent row
/// before the backfill gives up.
const MAX_FOREIGN_KEY_RETRIES: u32 = 50;

/// Settings of one backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Migration name (the `walshift.backfill` rows).
    pub migration: String,
    /// Smallest chunk.
    pub chunk_rows_min: u32,
    /// Largest chunk.
    pub chunk_rows_max: u32,
    /// Chunk duration the size adapts toward.
    pub target_chunk: Duration,
    /// The backfill pauses while replication lag exceeds this.
    pub max_lag: Duration,
    /// Optional cap on rows copied per second.
    pub max_rows_per_second: Option<u32>,
    /// Only these tables (`walshift backfill --table`); all when `None`.
    pub only: Option<Vec<TableIdx>>,
}

/// Errors of the backfill.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// A source or target statement failed.
    #[error("backfill of {table}: {context}: {}", client::server_message(source))]
    Sql {
        /// Target table.
        table: String,
        /// What it was doing.
        context: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A chunk could not be written (a constraint or a value the mapping
    /// cannot convert).
    #[error(
        "backfill of {table}: cannot write the chunk after key {after}: {}",
        client::server_message(source)
    )]
    Write {
        /// Target table.
        table: String,
        /// The cursor the chunk started after (`start` for the first).
        after: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Chunks kept failing a foreign key.
    #[error(
        "backfill of {table}: {retries} chunks in a row after key {after} violate a foreign key: \
         {}; backfill the referenced table first (tables are copied parents first)",
        client::server_message(source)
    )]
    ForeignKey {
        /// Target table.
        table: String,
        /// The cursor.
        after: String,
        /// Attempts.
        retries: u32,
        /// The last violation.
        #[source]
        source: tokio_postgres::Error,
    },
    /// No snapshot contained every applied transaction in time.
    #[error(
        "backfill of {table}: source transaction {xid} was applied but is still not visible to \
         new snapshots after {}s (a synchronous standby not answering?)",
        SNAPSHOT_WAIT.as_secs()
    )]
    SnapshotWait {
        /// Target table.
        table: String,
        /// A transaction still invisible.
        xid: String,
    },
    /// Something read from the source or the state schema is not what
    /// the backfill expects.
    #[error("backfill: {0}")]
    Invalid(String),
}

impl BackfillError {
    /// Whether a reconnect and resume may fix it.
    pub fn is_transient(&self) -> bool {
        match self {
            BackfillError::Sql { source, .. } | BackfillError::Write { source, .. } => {
                client::classify(source) == client::SqlErrorKind::Transient
            }
            BackfillError::SnapshotWait { .. } => true,
            BackfillError::ForeignKey { .. } | BackfillError::Invalid(_) => false,
        }
    }
}

/// Live progress of one table, for the progress bar, `status` and the demo.
#[derive(Debug, Clone, PartialEq)]
pub struct TableStatus {
    /// Source table (`schema.table`).
    pub source: String,
    /// Target table.
    pub target: String,
    /// Rows copied (over every run).
    pub rows_copied: u64,
    /// Estimated total rows (`pg_class.reltuples`, raised to the rows
    /// copied when the estimate was low).
    pub rows_estimated: u64,
    /// Whether the copy is complete.
    pub complete: bool,
    /// Why it waits, while it does.
    pub paused: Option<String>,
    /// Recent copy rate.
    pub rows_per_second: f64,
}

impl TableStatus {
    /// Percent copied (100 once complete; at most 99.9 before).
    pub fn percent(&self) -> f64 {
        if self.complete {
            return 100.0;
        }
        if self.rows_estimated == 0 {
            return 0.0;
        }
        (self.rows_copied as f64 * 100.0 / self.rows_estimated as f64).min(99.9)
    }

    /// Estimated time to completion at the recent rate.
    pub fn eta(&self) -> Option<Duration> {
        if self.complete {
            return Some(Duration::ZERO);
        }
        if self.rows_per_second <= 0.0 {
            return None;
        }
        let left = self.rows_estimated.saturating_sub(self.rows_copied) as f64;
        Some(Duration::from_secs_f64(left / self.rows_per_second))
    }
}

/// Backfill progress shared between the applier (which writes it) and
/// whoever shows it. Lives across reconnects.
#[derive(Debug)]
pub struct BackfillBoard {
    tables: Mutex<Vec<TableStatus>>,
    done: watch::Sender<bool>,
}

impl Default for BackfillBoard {
    fn default() -> Self {
        BackfillBoard { tables: Mutex::new(Vec::new()), done: watch::channel(false).0 }
    }
}

impl BackfillBoard {
    /// The tables in scope, in copy order.
    pub fn tables(&self) -> Vec<TableStatus> {
        self.tables.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Becomes `true` once every table in scope is complete.
    pub fn subscribe_done(&self) -> watch::Receiver<bool> {
        self.done.subscribe()
    }

    fn update(&self, target: &str, f: impl FnOnce(&mut TableStatus)) {
        if let Ok(mut tables) = self.tables.lock() {
            if let Some(t) = tables.iter_mut().find(|t| t.target == target) {
                f(t);
            }
        }
    }

    fn replace(&self, tables: Vec<TableStatus>) {
        let done = tables.iter().all(|t| t.complete);
        if let Ok(mut current) = self.tables.lock() {
            *current = tables;
        }
        self.done.send_replace(done);
    }
}

/// A value read from the source as the server sent it: the text of
/// `column::text`, or a column's binary format (see
/// [`keyset::binary_inputs`]), kept as bytes.
struct RawValue(Bytes);

impl<'a> FromSql<'a> for RawValue {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(Bytes::copy_from_slice(raw)))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Rows read from the source for one table, to be written at the applier's
/// current position.
#[derive(Debug)]
pub struct Chunk {
    /// The table.
    pub table: TableIdx,
    /// Rows in plan input order, in key order.
    pub rows: Vec<Row>,
    /// The key of the last row (the cursor after this chunk).
    pub last_key: Option<Vec<String>>,
    /// Whether the table has no rows after this chunk.
    pub complete: bool,
    /// Rows asked for.
    pub asked: u32,
    /// When its read started.
    pub read_started: Instant,
    /// Wall-clock start of the read (stored as the table's `started_at`).
    pub started_at: SystemTime,
    /// How long the read took.
    pub read_time: Duration,
}

/// What the applier needs to write a chunk (owned, so the next read can
/// run while it writes).
#[derive(Debug, Clone)]
pub struct ChunkWrite {
    /// Migration name.
    pub migration: String,
    /// Source table, as stored.
    pub source_table: String,
    /// Target table, as stored.
    pub target_table: String,
    /// Overwrite rows the target has (a re-copy).
    pub overwrite: bool,
    /// The cursor the chunk starts after, for messages.
    pub after: String,
}

/// A table being copied.
#[derive(Debug)]
struct TableCursor {
    table: TableIdx,
    source_name: String,
    target_name: String,
    /// Cursor of the last committed chunk.
    committed: Option<Vec<String>>,
    /// Cursor of the last chunk read (ahead of `committed` while a chunk
    /// is being written).
    read: Option<Vec<String>>,
    /// A chunk that completes the table was read.
    exhausted: bool,
    rows_copied: u64,
    rows_estimated: u64,
    overwrite: bool,
    complete: bool,
    fk_retries: u32,
    rate: f64,
    /// `(when, rows_copied)` at recent commits, for the rate over
    /// [`RATE_WINDOW`].
    samples: std::collections::VecDeque<(Instant, u64)>,
    paused: bool,
}

/// Whether a chunk may start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Copy now.
    Go,
    /// The rate cap says wait until then.
    WaitUntil(Instant),
    /// Replication lag is over the threshold: apply the stream first.
    Paused(String),
    /// Nothing left to copy.
    Idle,
}

/// The backfill of one session: owns a source connection for chunk reads.
pub struct Backfill {
    source: Client,
    plan: Arc<Plan>,
    options: BackfillOptions,
    tables: Vec<TableCursor>,
    current: usize,
    statements: HashMap<(TableIdx, bool), Statement>,
    snapshot_statement: Statement,
    pace: Pace,
    /// Source transactions applied since the last snapshot that passed the
    /// check (32-bit ids, as pgoutput sends them).
    unproven: Vec<u32>,
    board: Arc<BackfillBoard>,
    last_log: Instant,
}

impl std::fmt::Debug for Backfill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backfill").field("current", &self.current).finish_non_exhaustive()
    }
}

fn render_cursor(key: Option<&Vec<String>>) -> String {
    key.map_or_else(|| "start".to_owned(), |k| format!("({})", k.join(", ")))
}

impl Backfill {
    /// Loads (creating where missing) the progress of every table in scope
    /// from the target, estimates row counts from the source, and prepares
    /// the reads. `source` is a dedicated source session.
    pub async fn start(
        source: Client,
        target: &Client,
        plan: Arc<Plan>,
        options: BackfillOptions,
        board: Arc<BackfillBoard>,
    ) -> Result<Backfill, BackfillError> {
        let sql = |table: &str, context| {
            let table = table.to_owned();
            move |source| BackfillError::Sql { table, context, source }
        };
        for &t in &plan.upsert_order {
            let tp = &plan.tables[t];
            if options.only.as_ref().is_some_and(|only| !only.contains(&t)) {
                continue;
            }
            let target_name = tp.target.readable();
            let estimate = estimate_rows(&source, &tp.source.to_string())
                .await
                .map_err(sql(&target_name, "estimating the source's rows"))?;
            target
                .execute(
                    progress::INIT,
                    &[&options.migration, &tp.source.readable(), &target_name, &estimate],
                )
                .await
                .map_err(sql(&target_name, "recording the backfill"))?;
        }
        let stored = progress::load(target, &options.migration)
            .await
            .map_err(sql("walshift.backfill", "reading the backfill progress"))?;
        let mut tables = Vec::new();
        for &t in &plan.upsert_order {
            if options.only.as_ref().is_some_and(|only| !only.contains(&t)) {
                continue;
            }
            let tp = &plan.tables[t];
            let (source_name, target_name) = (tp.source.readable(), tp.target.readable());
            let Some(p) = stored
                .iter()
                .find(|p| p.source_table == source_name && p.target_table == target_name)
            else {
                continue;
            };
            if p.last_key.as_ref().is_some_and(|k| k.len() != tp.key_inputs.len()) {
                return Err(BackfillError::Invalid(format!(
                    "stored cursor of {target_name} has {} values, its key has {} columns; \
                     re-copy it with `walshift backfill --table {target_name} --restart`",
                    p.last_key.as_ref().map_or(0, Vec::len),
                    tp.key_inputs.len()
                )));
            }
            tables.push(TableCursor {
                table: t,
                source_name,
                target_name,
                committed: p.last_key.clone(),
                read: p.last_key.clone(),
                exhausted: p.complete,
                rows_copied: p.rows_copied,
                rows_estimated: p.rows_estimated,
                overwrite: p.overwrite,
                complete: p.complete,
                fk_retries: 0,
                rate: 0.0,
                samples: std::collections::VecDeque::new(),
                paused: false,
            });
        }
        let snapshot_statement = source
            .prepare(SNAPSHOT_QUERY)
            .await
            .map_err(sql("source", "preparing the snapshot query"))?;
        let target_chunk = options.target_chunk.min(options.max_lag / 4);
        let pace = Pace::new(
            options.chunk_rows_min,
            options.chunk_rows_max,
            target_chunk,
            options.max_rows_per_second,
        );
        let backfill = Backfill {
            source,
            plan,
            options,
            current: 0,
            tables,
            statements: HashMap::new(),
            snapshot_statement,
            pace,
            unproven: Vec::new(),
            board,
            last_log: Instant::now(),
        };
        backfill.publish_all();
        if let Some(t) = backfill.tables.iter().find(|t| !t.complete) {
            tracing::info!(
                table = %t.target_name,
                rows_copied = t.rows_copied,
                rows_estimated = t.rows_estimated,
                after = %render_cursor(t.committed.as_ref()),
                "backfilling"
            );
        }
        Ok(backfill)
    }

    fn publish_all(&self) {
        let statuses = self
            .tables
            .iter()
            .map(|t| {
                metrics::gauge!(m::BACKFILL_ROWS_ESTIMATED, m::LABEL_TABLE => t.target_name.clone())
                    .set(t.rows_estimated as f64);
                metrics::gauge!(m::BACKFILL_COMPLETE, m::LABEL_TABLE => t.target_name.clone())
                    .set(if t.complete { 1.0 } else { 0.0 });
                status_of(t)
            })
            .collect();
        self.board.replace(statuses);
    }

    /// Whether any table in scope still has rows to copy.
    pub fn has_work(&self) -> bool {
        self.tables.iter().any(|t| !t.complete)
    }

    /// Notes a source transaction the applier is about to apply: the next
    /// chunk's snapshot must contain it.
    pub fn note_applied(&mut self, xid: u32) {
        if self.has_work() {
            self.unproven.push(xid);
        }
    }

    /// Whether a chunk may start now, given the stream's current lag.
    pub fn gate(&mut self, lag: Duration, now: Instant) -> Gate {
        let Some(idx) = self.tables.iter().position(|t| !t.complete) else {
            return Gate::Idle;
        };
        self.current = idx;
        if lag >= self.options.max_lag {
            return Gate::Paused(format!(
                "replication lag {:.1} s is over backfill.max_lag_seconds ({} s)",
                lag.as_secs_f64(),
                self.options.max_lag.as_secs()
            ));
        }
        match self.pace.ready_at() {
            Some(at) if at > now => Gate::WaitUntil(at),
            _ => Gate::Go,
        }
    }

    /// Records that the current table waits (`Some(reason)`) or resumed;
    /// returns the statement parameters to store it when that changed.
    pub fn set_paused(&mut self, reason: Option<&str>) -> Option<(ChunkWrite, Option<String>)> {
        let t = self.tables.get_mut(self.current)?;
        if t.paused == reason.is_some() {
            return None;
        }
        t.paused = reason.is_some();
        let target = t.target_name.clone();
        metrics::gauge!(m::BACKFILL_PAUSED, m::LABEL_TABLE => target.clone()).set(if t.paused {
            1.0
        } else {
            0.0
        });
        if let Some(reason) = reason {
            metrics::counter!(m::BACKFILL_PAUSES, m::LABEL_TABLE => target.clone()).increment(1);
            tracing::info!(table = %target, reason, "backfill paused");
        } else {
            tracing::info!(table = %target, "backfill resumed");
        }
        let reason = reason.map(str::to_owned);
        self.board.update(&target, |s| s.paused = reason.clone());
        Some((self.write_of(self.current), reason))
    }

    fn write_of(&self, idx: usize) -> ChunkWrite {
        let t = &self.tables[idx];
        ChunkWrite {
            migration: self.options.migration.clone(),
            source_table: t.source_name.clone(),
            target_table: t.target_name.clone(),
            overwrite: t.overwrite,
            after: render_cursor(t.committed.as_ref()),
        }
    }

    /// How to write `chunk`.
    pub fn chunk_write(&self, chunk: &Chunk) -> ChunkWrite {
        let idx = self.tables.iter().position(|t| t.table == chunk.table).unwrap_or(self.current);
        self.write_of(idx)
    }

    /// Whether another chunk of the current table can be read before this
    /// one is written (it does not complete the table, and the rate cap
    /// does not make it wait).
    pub fn may_read_ahead(&self, chunk: &Chunk, now: Instant) -> bool {
        !chunk.complete && self.pace.ready_at().is_none_or(|at| at <= now)
    }

    async fn statement(
        &mut self,
        table: TableIdx,
        after: bool,
    ) -> Result<Statement, BackfillError> {
        if let Some(s) = self.statements.get(&(table, after)) {
            return Ok(s.clone());
        }
        let tp = &self.plan.tables[table];
        let s = self.source.prepare(&keyset::chunk_query(tp, after)).await.map_err(|source| {
            BackfillError::Sql {
                table: tp.target.readable(),
                context: "preparing the chunk query",
                source,
            }
        })?;
        self.statements.insert((table, after), s.clone());
        Ok(s)
    }

    /// Reads the next chunk of the current table at a snapshot that contains
    /// every transaction applied so far; `None` when the table's last chunk
    /// was already read (it completes when that chunk commits).
    pub async fn read_next(&mut self) -> Result<Option<Chunk>, BackfillError> {
        let Some(idx) = self.tables.iter().position(|t| !t.complete) else { return Ok(None) };
        self.current = idx;
        if self.tables[idx].exhausted {
            return Ok(None);
        }
        let table = self.tables[idx].table;
        let cursor = self.tables[idx].read.clone();
        let statement = self.statement(table, cursor.is_some()).await?;
        let binary = keyset::binary_inputs(&self.plan.tables[table]);
        let asked = self.pace.rows();
        let target_name = self.tables[idx].target_name.clone();
        let sql = |context| {
            let table = target_name.clone();
            move |source| BackfillError::Sql { table, context, source }
        };
        let read_started = Instant::now();
        let started_at = SystemTime::now();
        let mut waited_for = None;
        let chunk = loop {
            let limit = i64::from(asked);
            let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
            if let Some(key) = &cursor {
                for v in key {
                    params.push(v);
                }
            }
            params.push(&limit);
            // Pipelined: one round trip for the whole read transaction.
            let (begun, snapshot, rows, committed) = tokio::join!(
                self.source.batch_execute("begin isolation level repeatable read, read only"),
                self.source.query_one(&self.snapshot_statement, &[]),
                read_rows(&self.source, &statement, &params, &binary),
                self.source.batch_execute("commit"),
            );
            begun.map_err(sql("starting the chunk's source transaction"))?;
            let snapshot = snapshot.map_err(sql("reading the chunk's snapshot"))?;
            let rows = rows.map_err(sql("reading a chunk"))?;
            committed.map_err(sql("ending the chunk's source transaction"))?;
            let text: String = snapshot.try_get(0).map_err(sql("reading the chunk's snapshot"))?;
            let committed_invisible: Vec<String> =
                snapshot.try_get(1).map_err(sql("reading the chunk's snapshot"))?;
            let parsed = Snapshot::parse(&text).ok_or_else(|| {
                BackfillError::Invalid(format!("cannot parse the source snapshot {text:?}"))
            })?;
            let missing = committed_invisible.first().cloned().or_else(|| {
                self.unproven.iter().find(|&&x| !parsed.sees_committed(x)).map(|x| x.to_string())
            });
            match missing {
                None => break rows,
                Some(xid) => {
                    let since = *waited_for.get_or_insert_with(Instant::now);
                    if since.elapsed() >= SNAPSHOT_WAIT {
                        return Err(BackfillError::SnapshotWait { table: target_name, xid });
                    }
                    tracing::debug!(xid, "snapshot misses a committed transaction; reading again");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        self.unproven.clear();
        let (rows, bytes_capped) = chunk;
        let tp = &self.plan.tables[table];
        let last_key = match rows.last() {
            Some(row) => {
                let mut key = Vec::with_capacity(tp.key_inputs.len());
                for &k in &tp.key_inputs {
                    match row.get(k) {
                        Some(Datum::Text(b)) => key.push(String::from_utf8_lossy(b).into_owned()),
                        _ => {
                            return Err(BackfillError::Invalid(format!(
                                "a key column of {} read as null",
                                tp.source.readable()
                            )));
                        }
                    }
                }
                Some(key)
            }
            None => cursor,
        };
        let complete = rows.len() < asked as usize && !bytes_capped;
        self.pace.spaced(rows.len(), read_started);
        let t = &mut self.tables[idx];
        t.read = last_key.clone();
        t.exhausted = complete;
        let read_time = read_started.elapsed();
        Ok(Some(Chunk {
            table,
            rows,
            last_key,
            complete,
            asked,
            read_started,
            started_at,
            read_time,
        }))
    }

    /// Records a committed chunk.
    pub fn committed(&mut self, chunk: &Chunk, elapsed: Duration) {
        let Some(idx) = self.tables.iter().position(|t| t.table == chunk.table) else { return };
        let now = Instant::now();
        self.pace.observe(chunk.rows.len(), chunk.asked, elapsed);
        let t = &mut self.tables[idx];
        t.committed = chunk.last_key.clone();
        t.rows_copied += chunk.rows.len() as u64;
        t.rows_estimated = t.rows_estimated.max(t.rows_copied);
        t.fk_retries = 0;
        if t.samples.is_empty() {
            // The first chunk of this session: its read started the clock.
            t.samples.push_back((now - elapsed, t.rows_copied - chunk.rows.len() as u64));
        }
        t.samples.push_back((now, t.rows_copied));
        // Keep one sample at least a window old as the base.
        while t.samples.len() > 2 && t.samples.get(1).is_some_and(|s| now - s.0 >= RATE_WINDOW) {
            t.samples.pop_front();
        }
        if let Some(&(since, base)) = t.samples.front() {
            let secs = (now - since).as_secs_f64();
            if secs > 0.0 {
                t.rate = (t.rows_copied - base) as f64 / secs;
            }
        }
        t.paused = false;
        if chunk.complete {
            t.complete = true;
        }
        let label = t.target_name.clone();
        metrics::counter!(m::BACKFILL_ROWS_COPIED, m::LABEL_TABLE => label.clone())
            .increment(chunk.rows.len() as u64);
        metrics::counter!(m::BACKFILL_CHUNKS, m::LABEL_TABLE => label.clone()).increment(1);
        metrics::gauge!(m::BACKFILL_CHUNK_ROWS, m::LABEL_TABLE => label.clone())
            .set(chunk.rows.len() as f64);
        metrics::gauge!(m::BACKFILL_ROWS_PER_SECOND, m::LABEL_TABLE => label.clone()).set(t.rate);
        metrics::gauge!(m::BACKFILL_ROWS_ESTIMATED, m::LABEL_TABLE => label.clone())
            .set(t.rows_estimated as f64);
        let status = status_of(t);
        if let Some(eta) = status.eta() {
            metrics::gauge!(m::BACKFILL_ETA_SECONDS, m::LABEL_TABLE => label.clone())
                .set(eta.as_secs_f64());
        }
        self.board.update(&label, |s| *s = status.clone());
        if chunk.complete {
            metrics::gauge!(m::BACKFILL_COMPLETE, m::LABEL_TABLE => label.clone()).set(1.0);
            tracing::info!(table = %label, rows_copied = status.rows_copied, "backfill of table complete");
            if let Some(next) = self.tables.iter().find(|t| !t.complete) {
                tracing::info!(
                    table = %next.target_name,
                    rows_estimated = next.rows_estimated,
                    "backfilling"
                );
            }
            if !self.has_work() {
                self.board.done.send_replace(true);
                tracing::info!("backfill complete");
            }
        } else if self.last_log.elapsed() >= PROGRESS_LOG_INTERVAL {
            self.last_log = Instant::now();
            tracing::info!(
                table = %label,
                rows_copied = status.rows_copied,
                rows_estimated = status.rows_estimated,
                percent = format!("{:.1}", status.percent()),
                rows_per_second = status.rows_per_second.round() as u64,
                eta_seconds = status.eta().map(|d| d.as_secs()),
                chunk_rows = self.pace.rows(),
                "backfill progress"
            );
        }
    }

    /// A chunk was rolled back for a missing parent row: read it again
    /// (after the stream has applied more); gives up after many in a row.
    pub fn retry_later(
        &mut self,
        chunk: &Chunk,
        source: tokio_postgres::Error,
    ) -> Result<(), BackfillError> {
        let Some(idx) = self.tables.iter().position(|t| t.table == chunk.table) else {
            return Ok(());
        };
        let t = &mut self.tables[idx];
        t.read = t.committed.clone();
        t.exhausted = false;
        t.fk_retries += 1;
        metrics::counter!(m::BACKFILL_CHUNK_RETRIES, m::LABEL_TABLE => t.target_name.clone())
            .increment(1);
        if t.fk_retries >= MAX_FOREIGN_KEY_RETRIES {
            return Err(BackfillError::ForeignKey {
                table: t.target_name.clone(),
                after: render_cursor(t.committed.as_ref()),
                retries: t.fk_retries,
                source,
            });
        }
        tracing::debug!(
            table = %t.target_name,
            retries = t.fk_retries,
            "chunk references a row the stream has not applied yet; reading it again later"
        );
        Ok(())
    }

    /// A read-ahead chunk was dropped unwritten: read its rows again.
    pub fn forget(&mut self, chunk: &Chunk) {
        if let Some(t) = self.tables.iter_mut().find(|t| t.table == chunk.table) {
            t.read = t.committed.clone();
            t.exhausted = false;
        }
    }
}

/// The key of `row` (plan input order) of `table` as the text stored in the
/// checkpoint. Key inputs are always read as text.
pub fn key_text(table: TableIdx, plan: &Plan, row: &[Datum]) -> Vec<String> {
    plan.tables[table]
        .key_inputs
        .iter()
        .map(|&k| match row.get(k) {
            Some(Datum::Text(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        })
        .collect()
}

fn status_of(t: &TableCursor) -> TableStatus {
    TableStatus {
        source: t.source_name.clone(),
        target: t.target_name.clone(),
        rows_copied: t.rows_copied,
        rows_estimated: t.rows_estimated.max(t.rows_copied),
        complete: t.complete,
        paused: None,
        rows_per_second: t.rate,
    }
}

/// `pg_class.reltuples` of a table given by its quoted name (0 when never
/// analyzed).
pub async fn estimate_rows(
    source: &Client,
    quoted_name: &str,
) -> Result<i64, tokio_postgres::Error> {
    let row = source
        .query_one(
            "select greatest(c.reltuples, 0)::bigint from pg_class c where c.oid = $1::text::regclass",
            &[&quoted_name],
        )
        .await?;
    row.try_get(0)
}

/// Runs a chunk query and collects its rows as text, stopping early once
/// they hold [`CHUNK_MAX_BYTES`]; returns the rows and whether it stopped
/// early.
async fn read_rows(
    source: &Client,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
    binary: &[bool],
) -> Result<(Vec<Row>, bool), tokio_postgres::Error> {
    let stream = source.query_raw(statement, params.iter().copied()).await?;
    futures_util::pin_mut!(stream);
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = stream.try_next().await? {
        let mut values = Vec::with_capacity(row.len());
        for i in 0..row.len() {
            let v: Option<RawValue> = row.try_get(i)?;
            values.push(match v {
                Some(RawValue(b)) => {
                    bytes += b.len() + 16;
                    if binary.get(i).copied().unwrap_or(false) {
                        Datum::Binary(b)
                    } else {
                        Datum::Text(b)
                    }
                }
                None => Datum::Null,
            });
        }
        rows.push(values);
        if bytes >= CHUNK_MAX_BYTES {
            return Ok((rows, true));
        }
    }
    Ok((rows, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(copied: u64, estimated: u64, rate: f64, complete: bool) -> TableStatus {
        TableStatus {
            source: "public.t".into(),
            target: "shadow.t".into(),
            rows_copied: copied,
            rows_estimated: estimated,
            complete,
            paused: None,
            rows_per_second: rate,
        }
    }

    #[test]
    fn percent_and_eta() {
        let s = status(250, 1000, 50.0, false);
        assert!((s.percent() - 25.0).abs() < 1e-9);
        assert_eq!(s.eta(), Some(Duration::from_secs(15)));
        assert_eq!(status(2000, 1000, 5.0, false).percent(), 99.9);
        assert_eq!(status(2000, 1000, 5.0, true).percent(), 100.0);
        assert_eq!(status(0, 0, 0.0, false).percent(), 0.0);
        assert_eq!(status(0, 10, 0.0, false).eta(), None);
    }

    #[test]
    fn cursor_rendering() {
        assert_eq!(render_cursor(None), "start");
        assert_eq!(render_cursor(Some(&vec!["eu".into(), "7".into()])), "(eu, 7)");
    }
}
