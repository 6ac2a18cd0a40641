//! The reader task: replication stream in, projected [`StreamItem`]s out to
//! the applier through a bounded channel, standby status updates back.
//!
//! # Progress tracking
//!
//! The flush LSN reported to the server comes only from the applier's
//! durable position (a `watch` channel): the end LSN of the last source
//! transaction whose target commit is flushed. It is sent as soon as it
//! moves (and at least every status interval), so the slot, and any lag
//! measured from it, follows the target closely. While the reader is between
//! transactions and the applier has made durable everything forwarded, the
//! keepalive's WAL end is reported instead, so an idle slot (or one whose
//! traffic is all in unpublished tables) does not pin WAL. That position is
//! never stored as a resume point: the stored checkpoint is only ever a
//! commit the target applied.
//!
//! # Resuming
//!
//! The stream starts at the target's checkpoint (the end of the last
//! applied commit). Transactions whose commit record starts before it were
//! applied already and are skipped whole, whatever the server sends.
//!
//! # Backpressure
//!
//! Items travel in chunks (one per socket read, at most
//! [`CHUNK_MAX_ITEMS`] or [`CHUNK_MAX_BYTES`]); the channel holds
//! [`CHANNEL_CHUNKS`] chunks. When the applier falls behind, the reader stops
//! reading the socket, so lag shows up as WAL on the source rather than as
//! memory here; while it waits it still answers keepalives. A chunk holding a
//! row larger than [`CHUNK_MAX_BYTES`] (a 200 MB value) is only sent into an
//! empty channel, so such rows are never queued behind each other: at most
//! three are held at once (one being written, one queued, one just read).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::change::{Change, StreamItem};
use crate::lag::Lag;
use crate::lsn::Lsn;
use crate::replication::pgoutput::{PgOutputMessage, PgTimestamp};
use crate::replication::relation_cache::{RelationCache, RelationUpdate};
use crate::replication::stream::{LogicalStream, StreamError, StreamEvent};
use crate::runtime::shutdown::Shutdown;
use crate::telemetry::metrics as m;
use crate::transform::{DriftError, Plan, ProjectError, Projection};

/// Items per chunk: large enough that channel overhead is per thousand rows,
/// small enough that the applier starts on a backlog at once.
pub const CHUNK_MAX_ITEMS: usize = 1024;

/// Bytes per chunk, so chunks of very large rows stay small.
pub const CHUNK_MAX_BYTES: usize = 4 << 20;

/// Chunks in flight between reader and applier: enough to keep the applier
/// busy while the reader decodes the next socket read (about two default
/// batches), and at most `CHANNEL_CHUNKS * CHUNK_MAX_BYTES` (32 MiB) of rows,
/// or one chunk with a row larger than that (see the module doc).
pub const CHANNEL_CHUNKS: usize = 8;

/// Errors of the reader.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// The replication stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A mapped table changed incompatibly.
    #[error(
        "schema drift at {lsn}, nothing after the last applied transaction was applied: {source}"
    )]
    Drift {
        /// Position of the Relation message that showed it.
        lsn: Lsn,
        /// What changed.
        #[source]
        source: DriftError,
    },
    /// A tuple could not be projected.
    #[error("cannot read a change at {lsn}: {source}")]
    Project {
        /// Position of the change.
        lsn: Lsn,
        /// The cause.
        #[source]
        source: ProjectError,
    },
    /// The server broke pgoutput's rules.
    #[error("replication protocol violation at {lsn}: {problem}")]
    Protocol {
        /// Position of the offending message.
        lsn: Lsn,
        /// What was wrong.
        problem: String,
    },
}

impl ReaderError {
    /// Whether the stream went silent for the receive timeout.
    pub fn is_receive_timeout(&self) -> bool {
        matches!(self, ReaderError::Stream(e) if e.is_receive_timeout())
    }

    /// Whether reconnecting can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, ReaderError::Stream(e) if e.is_transient())
    }
}

/// How a relation id maps onto the plan.
#[derive(Debug)]
enum Mapped {
    /// Not a mapped table: its changes are ignored.
    Ignored,
    /// A mapped table and how to project its tuples.
    Table(usize, Projection),
}

/// Counters of one reader run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReaderStats {
    /// Transactions skipped because the checkpoint covers them.
    pub skipped_transactions: u64,
}

/// The reader task's state.
pub struct Reader {
    stream: LogicalStream,
    plan: Arc<Plan>,
    checkpoint: Lsn,
    relations: RelationCache,
    mapped: HashMap<u32, Mapped>,
    /// `Some(skip)` inside a transaction.
    in_txn: Option<bool>,
    /// End of the last transaction forwarded or skipped.
    last_end: Lsn,
    /// Latest keepalive WAL end.
    keepalive_end: Lsn,
    tx: mpsc::Sender<Vec<StreamItem>>,
    durable: watch::Receiver<Lsn>,
    chunk: Vec<StreamItem>,
    chunk_bytes: usize,
    /// The chunk holds an item larger than [`CHUNK_MAX_BYTES`].
    chunk_oversized: bool,
    stats: ReaderStats,
    lag: Option<Arc<Lag>>,
    pipeline: Option<crate::runtime::pipeline::Pipeline>,
    /// Inside a transaction committed after the cutover's barrier.
    late: bool,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("checkpoint", &self.checkpoint).finish_non_exhaustive()
    }
}

fn system_time(ts: PgTimestamp) -> SystemTime {
    let micros = ts.unix_micros().unwrap_or(0);
    match u64::try_from(micros) {
        Ok(m) => SystemTime::UNIX_EPOCH + Duration::from_micros(m),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

impl Reader {
    /// A reader of `stream` (started at `checkpoint`) feeding `tx`.
    pub fn new(
        stream: LogicalStream,
        plan: Arc<Plan>,
        checkpoint: Lsn,
        tx: mpsc::Sender<Vec<StreamItem>>,
        durable: watch::Receiver<Lsn>,
    ) -> Self {
        Reader {
            stream,
            plan,
            checkpoint,
            relations: RelationCache::new(),
            mapped: HashMap::new(),
            in_txn: None,
            last_end: checkpoint,
            keepalive_end: Lsn::ZERO,
            tx,
            durable,
            chunk: Vec::with_capacity(CHUNK_MAX_ITEMS),
            chunk_bytes: 0,
            chunk_oversized: false,
            stats: ReaderStats::default(),
            lag: None,
            pipeline: None,
            late: false,
        }
    }

    /// Reports (and does not forward) changes to mapped tables committed
    /// after the write cutover's barrier recorded in `pipeline`.
    pub fn with_pipeline(mut self, pipeline: crate::runtime::pipeline::Pipeline) -> Self {
        self.pipeline = Some(pipeline);
        self
    }

    /// Whether the change at `lsn` to `table` is after the cutover; if so
    /// it is reported.
    fn after_cutover(&self, table: usize, lsn: Lsn) -> bool {
        if !self.late {
            return false;
        }
        if let Some(p) = &self.pipeline {
            p.late_change(&self.plan.tables[table].source.readable(), lsn);
        }
        true
    }

    /// Reports forwarded transactions, the server's WAL end and the
    /// connection into `lag`.
    pub fn with_lag(mut self, lag: Arc<Lag>) -> Self {
        self.lag = Some(lag);
        self
    }

    /// Reads until shutdown, an error, or the applier going away. On
    /// shutdown it stops forwarding, waits for the applier to finish and
    /// reports its final durable position before closing the stream.
    pub async fn run(self, shutdown: Shutdown) -> Result<ReaderStats, ReaderError> {
        let lag = self.lag.clone();
        if let Some(lag) = &lag {
            lag.connected(true);
        }
        metrics::gauge!(m::STREAM_CONNECTED).set(1.0);
        let result = self.read(shutdown).await;
        if let Some(lag) = &lag {
            lag.connected(false);
        }
        metrics::gauge!(m::STREAM_CONNECTED).set(0.0);
        result
    }

    async fn read(mut self, mut shutdown: Shutdown) -> Result<ReaderStats, ReaderError> {
        loop {
            while let Some(event) = self.stream.next_buffered()? {
                self.handle(event)?;
                if (self.chunk.len() >= CHUNK_MAX_ITEMS || self.chunk_bytes >= CHUNK_MAX_BYTES)
                    && !self.send_chunk().await?
                {
                    return Ok(self.stats);
                }
            }
            // The received bytes are used up. If more are already waiting in
            // the socket, keep filling this chunk: sending one chunk per
            // socket read would make chunks (and so the channel's capacity in
            // rows) small, and the walsender would stall while the applier
            // runs a statement.
            if !self.chunk.is_empty() && self.chunk.len() < CHUNK_MAX_ITEMS {
                if let Ok(filled) = tokio::time::timeout(Duration::ZERO, self.stream.fill()).await {
                    filled?;
                    self.heard();
                    continue;
                }
            }
            if !self.chunk.is_empty() && !self.send_chunk().await? {
                return Ok(self.stats);
            }
            self.confirm();
            self.stream.send_status_if_due(false).await?;
            self.stream.send_status_if_advanced().await?;
            let status_at = self.stream.next_status_at();
            tokio::select! {
                filled = self.stream.fill() => {
                    filled?;
                    self.heard();
                }
                changed = self.durable.changed() => {
                    if changed.is_err() {
                        // The applier is gone (it failed); its error is the story.
                        return Ok(self.stats);
                    }
                }
                () = tokio::time::sleep_until(status_at.into()) => {}
                () = shutdown.wait() => break,
            }
        }
        // Shutdown: let the applier finish with what it has, then report its
        // final durable position.
        let Reader { mut stream, mut durable, tx, stats, .. } = self;
        drop(tx);
        while durable.changed().await.is_ok() {}
        let position = *durable.borrow();
        stream.confirm_flushed(position);
        stream.close().await?;
        tracing::info!(
            position = %position,
            "stopped: reported the final durable position to the slot"
        );
        Ok(stats)
    }

    /// Bytes arrived from the server: the source's signals are fresh.
    fn heard(&self) {
        if let Some(lag) = &self.lag {
            lag.heard();
        }
    }

    /// Reports the durable position (or the idle keepalive position).
    fn confirm(&mut self) {
        let durable = *self.durable.borrow();
        self.stream.confirm_flushed(durable);
        if self.in_txn.is_none() && durable >= self.last_end && self.keepalive_end > durable {
            self.stream.confirm_flushed(self.keepalive_end);
        }
    }

    /// Sends the current chunk, answering keepalives while the channel is
    /// full (or, for a chunk with an oversized row, not empty). Returns false
    /// when the applier is gone.
    async fn send_chunk(&mut self) -> Result<bool, ReaderError> {
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_MAX_ITEMS));
        self.chunk_bytes = 0;
        // Every slot free means the channel is empty.
        let slots =
            if std::mem::take(&mut self.chunk_oversized) { self.tx.max_capacity() } else { 1 };
        loop {
            let status_at = self.stream.next_status_at();
            tokio::select! {
                permits = self.tx.reserve_many(slots) => {
                    return match permits.map(|mut p| p.next()) {
                        Ok(Some(permit)) => {
                            permit.send(chunk);
                            Ok(true)
                        }
                        Ok(None) | Err(_) => Ok(false),
                    };
                }
                () = tokio::time::sleep_until(status_at.into()) => {
                    let durable = *self.durable.borrow();
                    self.stream.confirm_flushed(durable);
                    self.stream.send_status_if_due(false).await?;
                }
            }
        }
    }

    fn push(&mut self, item: StreamItem) {
        let size = item.size_hint();
        self.chunk_bytes += size;
        self.chunk_oversized |= size > CHUNK_MAX_BYTES;
        self.chunk.push(item);
    }

    fn protocol(lsn: Lsn, problem: impl Into<String>) -> ReaderError {
        ReaderError::Protocol { lsn, problem: problem.into() }
    }

    fn table_of(&self, lsn: Lsn, rel_id: u32) -> Result<Option<(usize, &Projection)>, ReaderError> {
        match self.mapped.get(&rel_id) {
            Some(Mapped::Table(idx, projection)) => Ok(Some((*idx, projection))),
            Some(Mapped::Ignored) => Ok(None),
            None => Err(Self::protocol(lsn, format!("change for unknown relation id {rel_id}"))),
        }
    }

    fn handle(&mut self, event: StreamEvent) -> Result<(), ReaderError> {
        let (lsn, message) = match event {
            StreamEvent::Keepalive { wal_end } => {
                self.keepalive_end = self.keepalive_end.max(wal_end);
                if let Some(lag) = &self.lag {
                    lag.wal_end(wal_end);
                }
                return Ok(());
            }
            StreamEvent::Message { lsn, message } => (lsn, message),
        };
        let skipping = self.in_txn.unwrap_or(false);
        let project = |source| ReaderError::Project { lsn, source };
        match message {
            PgOutputMessage::Begin(begin) => {
                if self.in_txn.is_some() {
                    return Err(Self::protocol(lsn, "begin inside a transaction"));
                }
                let skip = begin.final_lsn < self.checkpoint;
                self.in_txn = Some(skip);
                self.late = self
                    .pipeline
                    .as_ref()
                    .and_then(|p| p.cut_over_at())
                    .is_some_and(|barrier| begin.final_lsn > barrier);
                if skip {
                    self.stats.skipped_transactions += 1;
                } else {
                    self.push(StreamItem::Begin { final_lsn: begin.final_lsn, xid: begin.xid });
                }
            }
            PgOutputMessage::Commit(commit) => {
                if self.in_txn.take().is_none() {
                    return Err(Self::protocol(lsn, "commit outside a transaction"));
                }
                if !skipping {
                    let commit_time = system_time(commit.commit_time);
                    if let Some(lag) = &self.lag {
                        lag.forwarded(commit.end_lsn, commit_time);
                    }
                    self.push(StreamItem::Commit { end_lsn: commit.end_lsn, commit_time });
                }
                self.last_end = self.last_end.max(commit.end_lsn);
            }
            PgOutputMessage::Relation(rel) => {
                let rel_id = rel.rel_id;
                let mapped = match self.mapped.get(&rel_id) {
                    Some(Mapped::Table(idx, _)) => Some(*idx),
                    _ => self.plan.by_source(&rel.namespace, &rel.name).map(|t| t.index),
                };
                let entry = match mapped {
                    Some(idx) => Mapped::Table(
                        idx,
                        Projection::resolve(&self.plan.tables[idx], &rel)
                            .map_err(|source| ReaderError::Drift { lsn, source })?,
                    ),
                    None => Mapped::Ignored,
                };
                if let Mapped::Table(idx, _) = &entry {
                    let target = self.plan.tables[*idx].target.readable();
                    if let RelationUpdate::Changed { diff, .. } = self.relations.apply(rel) {
                        tracing::info!(
                            table = %target,
                            added = ?diff.added,
                            removed = ?diff.removed,
                            retyped = ?diff.retyped,
                            "mapped source table changed; columns the mapping does not read are ignored"
                        );
                    }
                }
                self.mapped.insert(rel_id, entry);
            }
            PgOutputMessage::Insert(insert) => {
                if self.in_txn.is_none() {
                    return Err(Self::protocol(lsn, "insert outside a transaction"));
                }
                if let Some((table, projection)) = self.table_of(lsn, insert.rel_id)? {
                    if !skipping && !self.after_cutover(table, lsn) {
                        let new = projection.insert(insert.new_tuple).map_err(project)?;
                        self.push(StreamItem::Change(Change::Insert { table, new }));
                    }
                }
            }
            PgOutputMessage::Update(update) => {
                if self.in_txn.is_none() {
                    return Err(Self::protocol(lsn, "update outside a transaction"));
                }
                if let Some((table, projection)) = self.table_of(lsn, update.rel_id)? {
                    if !skipping && !self.after_cutover(table, lsn) {
                        let (old_key, new) = projection
                            .update(update.old_tuple, update.new_tuple)
                            .map_err(project)?;
                        self.push(StreamItem::Change(Change::Update { table, old_key, new }));
                    }
                }
            }
            PgOutputMessage::Delete(delete) => {
                if self.in_txn.is_none() {
                    return Err(Self::protocol(lsn, "delete outside a transaction"));
                }
                if let Some((table, projection)) = self.table_of(lsn, delete.rel_id)? {
                    if !skipping && !self.after_cutover(table, lsn) {
                        let old_key = projection.delete(delete.old_tuple).map_err(project)?;
                        self.push(StreamItem::Change(Change::Delete { table, old_key }));
                    }
                }
            }
            PgOutputMessage::Truncate(truncate) => {
                if self.in_txn.is_none() {
                    return Err(Self::protocol(lsn, "truncate outside a transaction"));
                }
                let mut tables = Vec::new();
                for rel_id in truncate.rel_ids {
                    if let Some((table, _)) = self.table_of(lsn, rel_id)? {
                        if !self.after_cutover(table, lsn) {
                            tables.push(table);
                        }
                    }
                }
                if !skipping && !tables.is_empty() {
                    self.push(StreamItem::Truncate(tables));
                }
            }
            PgOutputMessage::Origin(_) | PgOutputMessage::Type(_) | PgOutputMessage::Message(_) => {
            }
        }
        Ok(())
    }
}
