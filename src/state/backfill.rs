//! The backfill's checkpoint: one `walshift.backfill` row per mapped table
//! (see `sql/0002_backfill.sql`), written in the same target transaction as
//! each chunk of rows it covers.

use std::time::SystemTime;

use tokio_postgres::Client;

/// Creates the row of a table not seen before; leaves existing rows alone.
pub const INIT: &str = "insert into walshift.backfill \
     (migration, source_table, target_table, rows_estimated) values ($1, $2, $3, $4) \
     on conflict (migration, source_table, target_table) do nothing";

/// Every table's progress in one migration.
pub const LOAD: &str = "select source_table, target_table, last_key, rows_copied, chunks, \
     rows_estimated, overwrite, completed_at is not null, started_at \
     from walshift.backfill where migration = $1";

/// Advances a table's checkpoint; runs inside the chunk's transaction.
/// `$4` last key, `$5` rows in the chunk, `$6` when the copy started (kept
/// if already set), `$7` whether this chunk completes the table.
pub const SAVE: &str = "update walshift.backfill set last_key = $4, \
     rows_copied = rows_copied + $5, chunks = chunks + 1, \
     started_at = coalesce(started_at, $6), \
     completed_at = case when $7 then clock_timestamp() end, \
     paused_reason = null, updated_at = clock_timestamp() \
     where migration = $1 and source_table = $2 and target_table = $3";

/// Records why a table's backfill waits (`$4`, null when it resumes).
pub const PAUSE: &str = "update walshift.backfill set paused_reason = $4, \
     pauses = pauses + (case when $4::text is not null then 1 else 0 end), updated_at = now() \
     where migration = $1 and source_table = $2 and target_table = $3 and completed_at is null";

/// Starts a table over (`walshift backfill --restart`): rows are copied
/// again, overwriting what the target has.
pub const RESTART: &str = "insert into walshift.backfill \
     (migration, source_table, target_table, rows_estimated, overwrite) \
     values ($1, $2, $3, $4, true) \
     on conflict (migration, source_table, target_table) do update set last_key = null, \
     rows_copied = 0, chunks = 0, rows_estimated = excluded.rows_estimated, overwrite = true, \
     paused_reason = null, started_at = null, completed_at = null, updated_at = now()";

/// One table's stored progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredProgress {
    /// Source table, as configured (`schema.table`).
    pub source_table: String,
    /// Target table.
    pub target_table: String,
    /// Key of the last row copied (text output per key column).
    pub last_key: Option<Vec<String>>,
    /// Rows copied so far.
    pub rows_copied: u64,
    /// Chunks committed so far.
    pub chunks: u64,
    /// Row estimate of the source table when the copy started.
    pub rows_estimated: u64,
    /// Whether chunks overwrite rows the target has (a re-copy).
    pub overwrite: bool,
    /// Whether the table is complete.
    pub complete: bool,
    /// When the first chunk was read.
    pub started_at: Option<SystemTime>,
}

/// Reads every table's progress of `migration`.
pub async fn load(
    client: &Client,
    migration: &str,
) -> Result<Vec<StoredProgress>, tokio_postgres::Error> {
    let rows = client.query(LOAD, &[&migration]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let count = |i: usize| -> Result<u64, tokio_postgres::Error> {
            Ok(u64::try_from(row.try_get::<_, i64>(i)?).unwrap_or(0))
        };
        out.push(StoredProgress {
            source_table: row.try_get(0)?,
            target_table: row.try_get(1)?,
            last_key: row.try_get(2)?,
            rows_copied: count(3)?,
            chunks: count(4)?,
            rows_estimated: count(5)?,
            overwrite: row.try_get(6)?,
            complete: row.try_get(7)?,
            started_at: row.try_get(8)?,
        });
    }
    Ok(out)
}
