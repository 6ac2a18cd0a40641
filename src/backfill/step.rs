//! The backfill as work between the applier's transactions (see
//! [`crate::apply::between`]): between two of its transactions the applier
//! lets the backfill copy chunks, each written at the applied position (see
//! the ordering invariant in [`crate::backfill`]).

use std::time::{Duration, Instant};

use crate::apply::between::{BetweenCtx, BetweenTxns, Step, StepFuture, WorkError};
use crate::apply::writer::Writer;
use crate::backfill::{Backfill, BackfillError, Chunk, ChunkWrite, Gate};
use crate::change::Datum;
use crate::lsn::Lsn;

/// Longest run of back-to-back backfill chunks before the applier looks at
/// its timers (durability polling) again.
const BACKFILL_ROUND_MAX: Duration = Duration::from_secs(5);

/// The backfill and the extra target sessions that write parts of each
/// chunk at once (`backfill.parallelism` - 1).
pub struct BackfillWork {
    backfill: Backfill,
    extra_writers: Vec<Writer>,
}

impl std::fmt::Debug for BackfillWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackfillWork").field("backfill", &self.backfill).finish_non_exhaustive()
    }
}

fn work_error(e: BackfillError) -> WorkError {
    WorkError::new(e.is_transient(), e)
}

impl BackfillWork {
    /// `backfill` with `writers` (target and source session pairs), each
    /// switched to `synchronous_commit = off`.
    pub async fn new(
        backfill: Backfill,
        writers: Vec<(tokio_postgres::Client, tokio_postgres::Client)>,
        plan: std::sync::Arc<crate::transform::Plan>,
    ) -> Result<Self, BackfillError> {
        let mut extra_writers = Vec::new();
        for (target, source) in writers {
            target.batch_execute("set synchronous_commit = off").await.map_err(|source| {
                BackfillError::Sql {
                    table: "target".into(),
                    context: "configuring a backfill writer session",
                    source,
                }
            })?;
            extra_writers.push(Writer::new(target, source, std::sync::Arc::clone(&plan)));
        }
        Ok(BackfillWork { backfill, extra_writers })
    }

    /// Between two target transactions: copies chunks if the gate allows.
    async fn step_inner(&mut self, ctx: BetweenCtx<'_>) -> Result<Step, BackfillError> {
        if ctx.shutdown.is_triggered() {
            return Ok(Step::Idle);
        }
        let Some(lag) = ctx.lag else {
            // Nothing applied yet in this session: apply first.
            return Ok(Step::Idle);
        };
        let now = Instant::now();
        match self.backfill.gate(lag, now) {
            Gate::Idle => Ok(Step::Idle),
            Gate::WaitUntil(at) => Ok(Step::WaitUntil(at)),
            Gate::Paused(reason) => {
                if let Some((write, reason)) = self.backfill.set_paused(Some(&reason)) {
                    store_pause(ctx.writer, &write, reason).await?;
                }
                Ok(Step::Idle)
            }
            Gate::Go => {
                if let Some((write, reason)) = self.backfill.set_paused(None) {
                    store_pause(ctx.writer, &write, reason).await?;
                }
                self.copy_round(ctx).await?;
                Ok(Step::Worked)
            }
        }
    }

    /// Copies chunks back to back while the stream has nothing waiting
    /// (reading the next chunk while writing one), at most
    /// [`BACKFILL_ROUND_MAX`]; one chunk otherwise.
    async fn copy_round(&mut self, ctx: BetweenCtx<'_>) -> Result<(), BackfillError> {
        let BackfillWork { backfill, extra_writers } = self;
        let started = Instant::now();
        let mut next = backfill.read_next().await?;
        while let Some(chunk) = next.take() {
            let write = backfill.chunk_write(&chunk);
            let now = Instant::now();
            let ahead = !ctx.stream_waiting()
                && !ctx.shutdown.is_triggered()
                && now.duration_since(started) < BACKFILL_ROUND_MAX
                && backfill.may_read_ahead(&chunk, now);
            let write_started = Instant::now();
            let mut writers: Vec<&mut Writer> = Vec::with_capacity(1 + extra_writers.len());
            writers.push(&mut *ctx.writer);
            writers.extend(extra_writers.iter_mut());
            let (written, read) = if ahead {
                let (w, r) =
                    tokio::join!(write_chunk(&mut writers, &write, &chunk), backfill.read_next());
                (w, Some(r))
            } else {
                (write_chunk(&mut writers, &write, &chunk).await, None)
            };
            tracing::debug!(
                rows = chunk.rows.len(),
                read_ms = chunk.read_time.as_millis() as u64,
                write_ms = write_started.elapsed().as_millis() as u64,
                ahead,
                "backfill chunk"
            );
            match written {
                Ok(()) => backfill.committed(&chunk, chunk.read_started.elapsed()),
                Err(ChunkError::ForeignKey(source)) => {
                    if let Some(Ok(Some(ahead))) = &read {
                        backfill.forget(ahead);
                    }
                    backfill.retry_later(&chunk, source)?;
                    return Ok(());
                }
                Err(ChunkError::Other(source)) => {
                    return Err(BackfillError::Write {
                        table: write.target_table,
                        after: write.after,
                        source,
                    });
                }
            }
            if let Some(read) = read {
                next = read?;
            }
        }
        Ok(())
    }
}

impl BetweenTxns for BackfillWork {
    fn begin(&mut self, xid: u32, _final_lsn: Lsn) {
        self.backfill.note_applied(xid);
    }

    fn step<'a>(&'a mut self, ctx: BetweenCtx<'a>) -> StepFuture<'a> {
        Box::pin(async move { self.step_inner(ctx).await.map_err(work_error) })
    }
}

async fn store_pause(
    writer: &Writer,
    write: &ChunkWrite,
    reason: Option<String>,
) -> Result<(), BackfillError> {
    writer
        .client()
        .execute(
            crate::state::backfill::PAUSE,
            &[&write.migration, &write.source_table, &write.target_table, &reason],
        )
        .await
        .map_err(|source| BackfillError::Sql {
            table: write.target_table.clone(),
            context: "recording a backfill pause",
            source,
        })?;
    Ok(())
}

/// Why a chunk was not written.
enum ChunkError {
    /// A foreign key found a parent row missing: the chunk's snapshot is
    /// newer than the applied position, and the stream brings the parent.
    ForeignKey(tokio_postgres::Error),
    /// Anything else.
    Other(tokio_postgres::Error),
}

/// Smallest part of a chunk worth its own connection.
const MIN_PART_ROWS: usize = 2000;

fn classify_chunk_error(e: tokio_postgres::Error) -> ChunkError {
    if e.as_db_error().is_some_and(|db| db.code().code() == "23503") {
        ChunkError::ForeignKey(e)
    } else {
        ChunkError::Other(e)
    }
}

/// Writes one backfill chunk and its checkpoint. New keys are inserted; a
/// key the target already has is overwritten with the chunk's version,
/// which is at least as new (see `docs/backfill.md`).
///
/// With more than one writer, the chunk is cut into consecutive key ranges
/// written at the same time, one target transaction per range, all at the
/// applier's current position. Constraints are checked before anything
/// commits; then the ranges commit in key order, each advancing the
/// checkpoint to its own last key, so a crash between two commits resumes
/// exactly after the last committed range. A foreign key between rows of
/// different ranges (a table referencing itself) cannot be checked that
/// way: the chunk is then written again through one connection.
async fn write_chunk(
    writers: &mut [&mut Writer],
    write: &ChunkWrite,
    chunk: &Chunk,
) -> Result<(), ChunkError> {
    let parts = writers.len().min(chunk.rows.len() / MIN_PART_ROWS).max(1);
    match write_parts(&mut writers[..parts], write, chunk).await {
        Err(ChunkError::ForeignKey(_)) if parts > 1 => {
            tracing::debug!(table = %write.target_table, "foreign key across parts; writing the chunk whole");
            write_parts(&mut writers[..1], write, chunk).await
        }
        other => other,
    }
}

async fn write_parts(
    writers: &mut [&mut Writer],
    write: &ChunkWrite,
    chunk: &Chunk,
) -> Result<(), ChunkError> {
    let parts = writers.len();
    let rows: Vec<&[Datum]> = chunk.rows.iter().map(Vec::as_slice).collect();
    let per = rows.len().div_ceil(parts).max(1);
    let slices: Vec<&[&[Datum]]> =
        if rows.is_empty() { vec![&rows[..]] } else { rows.chunks(per).collect() };
    // Phase 1: every range written (and, when split, checked) in its own
    // open transaction, at the same time.
    let writes = writers.iter_mut().zip(&slices).map(|(writer, part)| async move {
        writer
            .client()
            .batch_execute("begin; set constraints all deferred")
            .await
            .map_err(classify_chunk_error)?;
        let result = async {
            if !part.is_empty() {
                writer
                    .write_chunk_rows(chunk.table, part, write.overwrite)
                    .await
                    .map_err(|e| classify_chunk_error(e.source))?;
            }
            if parts > 1 {
                writer
                    .client()
                    .batch_execute("set constraints all immediate")
                    .await
                    .map_err(classify_chunk_error)?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = writer.client().batch_execute("rollback").await;
        }
        result
    });
    let results = futures_util::future::join_all(writes).await;
    if let Some(failed) = results.iter().position(Result::is_err) {
        for (writer, result) in writers.iter_mut().zip(&results) {
            if result.is_ok() {
                let _ = writer.client().batch_execute("rollback").await;
            }
        }
        return results.into_iter().nth(failed).unwrap_or(Ok(()));
    }
    // Phase 2: commit in key order, each with its checkpoint.
    let count = slices.len();
    for (i, (writer, part)) in writers.iter_mut().zip(&slices).enumerate() {
        let last = i + 1 == count;
        let last_key = if last {
            chunk.last_key.clone()
        } else {
            part.last().map(|row| crate::backfill::key_text(chunk.table, writer.plan(), row))
        };
        let complete = last && chunk.complete;
        let rows_in_part = part.len() as i64;
        let save = match writer.prepared(crate::state::backfill::SAVE).await {
            Ok(save) => save,
            Err(e) => {
                for other in writers.iter_mut().skip(i) {
                    let _ = other.client().batch_execute("rollback").await;
                }
                return Err(ChunkError::Other(e));
            }
        };
        let client = writer.client();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &write.migration,
            &write.source_table,
            &write.target_table,
            &last_key,
            &rows_in_part,
            &chunk.started_at,
            &complete,
        ];
        let (saved, committed) =
            tokio::join!(client.execute(&save, &params), client.batch_execute("commit"),);
        let outcome = match (saved, committed) {
            // A failed save aborts the transaction, and its COMMIT rolls back.
            (Err(e), _) => Err(ChunkError::Other(e)),
            (Ok(_), Err(e)) => Err(classify_chunk_error(e)),
            (Ok(_), Ok(())) => Ok(()),
        };
        if let Err(e) = outcome {
            for later in writers.iter_mut().skip(i + 1) {
                let _ = later.client().batch_execute("rollback").await;
            }
            // Earlier ranges are committed: only a restart of the session
            // (which reloads the checkpoint) may follow.
            return Err(match e {
                ChunkError::ForeignKey(e) if i > 0 => ChunkError::Other(e),
                other => other,
            });
        }
    }
    Ok(())
}
