//! Writes pending operations to the target with multi-row statements,
//! prepared once per connection.
//!
//! Order within one flush (see `docs/apply.md`): deletes first, children
//! before parents; then upserts, parents before children; then partial
//! updates. Deleting first lets a row that took over a unique value from a
//! deleted row be written; parents first lets foreign keys between shadow
//! tables hold at every statement even when they are not deferrable.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::SinkExt;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::apply::batch::{Op, PendingOps, key_of};
use crate::apply::params::ColumnParam;
use crate::apply::statements;
use crate::change::{Datum, TableIdx};
use crate::transform::{Plan, TablePlan};

/// New rows and old keys of partial updates that leave the same outputs alone.
type PartialRows<'a> = (Vec<&'a [Datum]>, Vec<&'a [Datum]>);

/// The staging table rows go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Backfill chunks: some inputs typed (read in binary).
    Chunk,
    /// Large stream rows: every input as text.
    Stream,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum StatementKey {
    Insert(TableIdx),
    Upsert(TableIdx),
    Delete(TableIdx),
    Partial(TableIdx, Vec<usize>),
    /// Backfill chunks: some inputs as typed (binary) arrays.
    ChunkInsert(TableIdx),
    ChunkUpsert(TableIdx),
    /// Stream rows too large for array parameters: every input as text,
    /// from the stream's staging table.
    StagedInsert(TableIdx),
    StagedUpsert(TableIdx),
    /// A fixed statement (progress bookkeeping).
    Fixed(&'static str),
    DeleteSuperseded(TableIdx),
}

/// A write statement failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {table} ({rows}): {}", crate::pg::client::server_message(source))]
pub struct WriteError {
    /// What was written: `upsert into`, `delete from`, `update`, `truncate`.
    pub op: &'static str,
    /// Target table(s).
    pub table: String,
    /// `1 row, key id=7` or `250 rows`.
    pub rows: String,
    /// The cause.
    #[source]
    pub source: tokio_postgres::Error,
}

/// Executes pending operations on one target connection.
pub struct Writer {
    client: Client,
    /// A source connection, for rows a partial update finds missing.
    source: Client,
    plan: Arc<Plan>,
    statements: HashMap<StatementKey, Statement>,
    fetches: HashMap<TableIdx, Statement>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("statements", &self.statements.len()).finish()
    }
}

/// Runs `insert` inside a savepoint (savepoint, insert and release are
/// pipelined in one round trip). Returns `false` when a key already existed:
/// the insert is then rolled back to the savepoint and the caller upserts.
async fn insert_in_savepoint(
    client: &Client,
    insert: &Statement,
    params: &[ColumnParam<'_>],
) -> Result<bool, tokio_postgres::Error> {
    let (saved, inserted, released) = tokio::join!(
        client.batch_execute("savepoint walshift_insert"),
        client.execute_raw(insert, params.iter().map(|p| p as &dyn ToSql)),
        client.batch_execute("release savepoint walshift_insert"),
    );
    saved?;
    match inserted {
        Ok(_) => released.map(|()| true),
        Err(e) if e.as_db_error().is_some_and(|db| db.code().code() == "23505") => {
            client
                .batch_execute(
                    "rollback to savepoint walshift_insert; release savepoint walshift_insert",
                )
                .await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Largest piece of `COPY` data handed to the connection at once. The
/// connection copies every message whole into its write buffer, which keeps
/// its capacity, so rows go out in pieces of at most this size (large values
/// as zero-copy slices of the bytes received) and a 200 MB value costs no
/// second and third 200 MB buffer.
const COPY_PIECE_BYTES: usize = 1 << 20;

/// Values at least this large are sent as slices of their own bytes rather
/// than copied into a piece.
const COPY_SLICE_MIN_BYTES: usize = 64 << 10;

/// Inserted and upserted rows holding at least this many bytes are written
/// through a staging table with `COPY` (in pieces) instead of as array
/// parameters: a statement's parameters are encoded whole into one Bind
/// message and then copied again into the connection's write buffer, so
/// they cost twice their size in memory on top of the rows themselves.
const STAGE_MIN_BYTES: usize = 16 << 20;

/// Bytes of row data in `rows`.
fn rows_bytes(rows: &[&[Datum]]) -> usize {
    rows.iter()
        .flat_map(|r| r.iter())
        .map(|d| match d {
            Datum::Text(b) | Datum::Binary(b) => b.len(),
            Datum::Null | Datum::UnchangedToast => 0,
        })
        .sum()
}

/// Rows in PostgreSQL's binary `COPY` format, in pieces of at most
/// [`COPY_PIECE_BYTES`]: a header, then per row the field count and each
/// field as a length and the bytes as received (the text of text-mode
/// columns is also their binary format), -1 for NULL, then the trailer.
struct CopyPieces<'a> {
    rows: &'a [&'a [Datum]],
    row: usize,
    /// The next field of the current row; `None` before its field count.
    field: Option<usize>,
    /// The rest of a large value being sent in slices.
    large: Option<bytes::Bytes>,
    buf: bytes::BytesMut,
    done: bool,
}

impl<'a> CopyPieces<'a> {
    fn new(rows: &'a [&'a [Datum]]) -> Self {
        use bytes::BufMut;
        let mut buf = bytes::BytesMut::with_capacity(COPY_PIECE_BYTES.min(19 + rows_bytes(rows)));
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0);
        buf.put_i32(0);
        CopyPieces { rows, row: 0, field: None, large: None, buf, done: false }
    }
}

impl Iterator for CopyPieces<'_> {
    type Item = bytes::Bytes;

    fn next(&mut self) -> Option<bytes::Bytes> {
        use bytes::BufMut;
        if let Some(large) = &mut self.large {
            let piece = large.split_to(large.len().min(COPY_PIECE_BYTES));
            if large.is_empty() {
                self.large = None;
            }
            return Some(piece);
        }
        if self.done {
            return None;
        }
        while self.buf.len() < COPY_PIECE_BYTES {
            let Some(row) = self.rows.get(self.row) else {
                self.buf.put_i16(-1);
                self.done = true;
                break;
            };
            let Some(field) = self.field else {
                self.buf.put_i16(i16::try_from(row.len()).unwrap_or(i16::MAX));
                self.field = Some(0);
                continue;
            };
            let Some(value) = row.get(field) else {
                self.row += 1;
                self.field = None;
                continue;
            };
            self.field = Some(field + 1);
            match value {
                Datum::Text(b) | Datum::Binary(b) => {
                    self.buf.put_i32(i32::try_from(b.len()).unwrap_or(i32::MAX));
                    if b.len() >= COPY_SLICE_MIN_BYTES {
                        self.large = Some(b.clone());
                        break;
                    }
                    self.buf.put_slice(b);
                }
                Datum::Null | Datum::UnchangedToast => self.buf.put_i32(-1),
            }
        }
        Some(self.buf.split().freeze())
    }
}

/// `1 row, key id=7` or `250 rows`, for error messages.
fn rows_label(plan: &TablePlan, rows: usize, first_key: &[Datum]) -> String {
    if rows == 1 {
        format!("1 row, key {}", render_key(plan, first_key))
    } else {
        format!("{rows} rows")
    }
}

/// `id=7, region=eu` from key values, for error messages.
pub fn render_key(plan: &TablePlan, key: &[Datum]) -> String {
    let parts: Vec<String> = plan
        .key_inputs
        .iter()
        .zip(key)
        .map(|(&k, v)| {
            let value = match v {
                Datum::Text(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "null".into(),
            };
            format!("{}={value}", plan.inputs[k].name.readable())
        })
        .collect();
    parts.join(", ")
}

impl Writer {
    /// A writer on `client` (target) for `plan`; `source` reads rows that
    /// partial updates find missing.
    pub fn new(client: Client, source: Client, plan: Arc<Plan>) -> Self {
        Writer { client, source, plan, statements: HashMap::new(), fetches: HashMap::new() }
    }

    /// The connection, for transaction control and progress.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The plan it writes.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// `sql` prepared once on this connection. Statements pipelined with
    /// `COMMIT` must be prepared: an unprepared one is parsed in a round
    /// trip of its own first, so `COMMIT` would reach the server before it.
    pub async fn prepared(
        &mut self,
        sql: &'static str,
    ) -> Result<Statement, tokio_postgres::Error> {
        self.statement(StatementKey::Fixed(sql)).await
    }

    async fn statement(&mut self, key: StatementKey) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(&key) {
            return Ok(s.clone());
        }
        let sql = match &key {
            StatementKey::Insert(t) => statements::insert(&self.plan.tables[*t]),
            StatementKey::Upsert(t) => statements::upsert(&self.plan.tables[*t]),
            StatementKey::Delete(t) => statements::delete(&self.plan.tables[*t]),
            StatementKey::Partial(t, untouched) => {
                statements::partial_update(&self.plan.tables[*t], untouched)
            }
            StatementKey::Fixed(sql) => (*sql).to_owned(),
            StatementKey::DeleteSuperseded(t) => {
                statements::delete_superseded(&self.plan.tables[*t])
            }
            StatementKey::ChunkInsert(t) | StatementKey::ChunkUpsert(t) => {
                let plan = &self.plan.tables[*t];
                let binary = crate::backfill::keyset::binary_inputs(plan);
                let table = statements::stage_name(plan);
                let rows = statements::RowSource::Stage { table: &table, binary: &binary };
                if matches!(key, StatementKey::ChunkInsert(_)) {
                    statements::insert_with(plan, &rows)
                } else {
                    statements::upsert_with(plan, &rows)
                }
            }
            StatementKey::StagedInsert(t) | StatementKey::StagedUpsert(t) => {
                let plan = &self.plan.tables[*t];
                let table = statements::text_stage_name(plan);
                let rows = statements::RowSource::Stage { table: &table, binary: &[] };
                if matches!(key, StatementKey::StagedInsert(_)) {
                    statements::insert_with(plan, &rows)
                } else {
                    statements::upsert_with(plan, &rows)
                }
            }
        };
        let statement = self.client.prepare(&sql).await?;
        self.statements.insert(key, statement.clone());
        Ok(statement)
    }

    async fn execute(
        &mut self,
        key: StatementKey,
        op: &'static str,
        table: TableIdx,
        columns: &[&[&[Datum]]],
        widths: &[usize],
        first_key: &[Datum],
    ) -> Result<u64, WriteError> {
        let rows = columns.first().map_or(0, |c| c.len());
        let plan = Arc::clone(&self.plan);
        let describe = |source| {
            let plan = &plan.tables[table];
            WriteError {
                op,
                table: plan.target.readable(),
                rows: rows_label(plan, rows, first_key),
                source,
            }
        };
        let statement = match self.statement(key).await {
            Ok(s) => s,
            Err(e) => return Err(describe(e)),
        };
        let mut params = Vec::new();
        for (rows, &width) in columns.iter().zip(widths) {
            for col in 0..width {
                params.push(ColumnParam::new(rows, col));
            }
        }
        self.client
            .execute_raw(&statement, params.iter().map(|p| p as &dyn ToSql))
            .await
            .map_err(describe)
    }

    /// Writes everything in `pending` (which the caller then clears).
    pub async fn flush(&mut self, pending: &PendingOps) -> Result<(), WriteError> {
        if pending.is_empty() {
            return Ok(());
        }
        let plan = Arc::clone(&self.plan);
        for t in plan.delete_order() {
            let keys = pending.table(t).deletes();
            if let Some(first) = keys.first() {
                let width = plan.tables[t].key_inputs.len();
                self.execute(StatementKey::Delete(t), "delete from", t, &[&keys], &[width], first)
                    .await?;
            }
        }
        for &t in &plan.upsert_order {
            let rows = pending.table(t).inserts();
            if !rows.is_empty() {
                self.write_inserts(t, &rows).await?;
            }
            let rows = pending.table(t).upserts();
            if !rows.is_empty() {
                self.write_upserts(t, &rows).await?;
            }
        }
        for &t in &plan.upsert_order {
            let mut groups: HashMap<&[usize], PartialRows<'_>> = HashMap::new();
            for op in pending.table(t).ops() {
                if let Op::Partial { old_key, new, untouched } = op {
                    let group = groups.entry(untouched.as_slice()).or_default();
                    group.0.push(new);
                    group.1.push(old_key);
                }
            }
            for (untouched, (rows, keys)) in groups {
                self.write_partial(t, untouched, &rows, &keys).await?;
            }
        }
        Ok(())
    }

    async fn write_upserts(&mut self, t: TableIdx, rows: &[&[Datum]]) -> Result<(), WriteError> {
        let plan = Arc::clone(&self.plan);
        let tp = &plan.tables[t];
        if rows_bytes(rows) >= STAGE_MIN_BYTES {
            return self.write_staged(t, rows, Stage::Stream, true).await;
        }
        let key = key_of(tp, rows[0]);
        self.execute(StatementKey::Upsert(t), "upsert into", t, &[rows], &[tp.inputs.len()], &key)
            .await
            .map(|_| ())
    }

    /// Repairs rows of table `t` inside the open transaction (see
    /// `docs/verify.md`): deletes the keys in `gone` (absent from the
    /// source; key input order), then upserts `rows` (current source rows,
    /// every input as text; a row that fails the filter is deleted).
    pub async fn repair(
        &mut self,
        t: TableIdx,
        rows: &[Vec<Datum>],
        gone: &[Vec<Datum>],
    ) -> Result<(), WriteError> {
        let width = self.plan.tables[t].key_inputs.len();
        if let Some(first) = gone.first() {
            let keys: Vec<&[Datum]> = gone.iter().map(Vec::as_slice).collect();
            self.execute(StatementKey::Delete(t), "delete from", t, &[&keys], &[width], first)
                .await?;
        }
        if !rows.is_empty() {
            let refs: Vec<&[Datum]> = rows.iter().map(Vec::as_slice).collect();
            self.write_upserts(t, &refs).await?;
        }
        Ok(())
    }

    /// Writes a backfill chunk's rows (read by `backfill`, some inputs in
    /// binary) inside the open transaction: `COPY … (FORMAT binary)` into
    /// the session's staging table (temporary, no index, emptied at
    /// commit), then one `INSERT … SELECT` through the mapping. If a key
    /// exists already (the stream wrote it), or with `overwrite`, the rows
    /// are written as upserts instead.
    pub async fn write_chunk_rows(
        &mut self,
        t: TableIdx,
        rows: &[&[Datum]],
        overwrite: bool,
    ) -> Result<(), WriteError> {
        self.write_staged(t, rows, Stage::Chunk, overwrite).await
    }

    /// Writes `rows` through a staging table (see [`Self::write_chunk_rows`]):
    /// inserted, or with `upsert` (or when a key exists already) upserted.
    /// The stream's staging table is emptied afterwards: a target
    /// transaction may flush several times.
    async fn write_staged(
        &mut self,
        t: TableIdx,
        rows: &[&[Datum]],
        stage: Stage,
        upsert: bool,
    ) -> Result<(), WriteError> {
        let plan = Arc::clone(&self.plan);
        let tp = &plan.tables[t];
        let first = rows.first().map(|r| key_of(tp, r)).unwrap_or_default();
        let describe = |op, source| WriteError {
            op,
            table: tp.target.readable(),
            rows: rows_label(tp, rows.len(), &first),
            source,
        };
        let (create, name, insert_key, upsert_key) = match stage {
            Stage::Chunk => (
                statements::stage_table(tp, &crate::backfill::keyset::binary_inputs(tp)),
                statements::stage_name(tp),
                StatementKey::ChunkInsert(t),
                StatementKey::ChunkUpsert(t),
            ),
            Stage::Stream => (
                statements::text_stage_table(tp),
                statements::text_stage_name(tp),
                StatementKey::StagedInsert(t),
                StatementKey::StagedUpsert(t),
            ),
        };
        // The staging table is created in the transaction; one rolled back
        // takes it along, so it is created (if missing) each time.
        self.client.batch_execute(&create).await.map_err(|e| describe("stage rows for", e))?;
        let sink = self
            .client
            .copy_in::<_, bytes::Bytes>(&format!("copy {name} from stdin (format binary)"))
            .await
            .map_err(|e| describe("stage rows for", e))?;
        futures_util::pin_mut!(sink);
        for piece in CopyPieces::new(rows) {
            sink.feed(piece).await.map_err(|e| describe("stage rows for", e))?;
        }
        sink.as_mut().finish().await.map_err(|e| describe("stage rows for", e))?;
        let upsert_statement =
            self.statement(upsert_key).await.map_err(|e| describe("upsert into", e))?;
        let inserted = if upsert {
            false
        } else {
            let insert =
                self.statement(insert_key).await.map_err(|e| describe("insert into", e))?;
            insert_in_savepoint(&self.client, &insert, &[])
                .await
                .map_err(|e| describe("insert into", e))?
        };
        if !inserted {
            self.client
                .execute(&upsert_statement, &[])
                .await
                .map_err(|e| describe("upsert into", e))?;
        }
        if matches!(stage, Stage::Stream) {
            self.client
                .batch_execute(&format!("truncate {name}"))
                .await
                .map_err(|e| describe("stage rows for", e))?;
        }
        Ok(())
    }

    /// Plain multi-row INSERT of rows new to the target, inside a savepoint:
    /// if the target already has one of the keys (a row the operator loaded,
    /// or one a backfill chunk copied), the insert is rolled back to the
    /// savepoint and the rows are written as upserts instead.
    async fn write_inserts(&mut self, t: TableIdx, rows: &[&[Datum]]) -> Result<(), WriteError> {
        if rows_bytes(rows) >= STAGE_MIN_BYTES {
            return self.write_staged(t, rows, Stage::Stream, false).await;
        }
        let plan = Arc::clone(&self.plan);
        let tp = &plan.tables[t];
        let key = key_of(tp, rows[0]);
        let describe = |source| WriteError {
            op: "insert into",
            table: tp.target.readable(),
            rows: rows_label(tp, rows.len(), &key),
            source,
        };
        let statement = self.statement(StatementKey::Insert(t)).await.map_err(describe)?;
        let params: Vec<ColumnParam<'_>> =
            (0..tp.inputs.len()).map(|c| ColumnParam::new(rows, c)).collect();
        if insert_in_savepoint(&self.client, &statement, &params).await.map_err(describe)? {
            return Ok(());
        }
        tracing::debug!(table = %tp.target.readable(), "insert found existing keys; upserting");
        self.write_upserts(t, rows).await
    }

    /// Updates rows in place by old key, leaving `untouched` outputs alone.
    /// A row the target does not have (it was outside the filter, or not
    /// backfilled yet) cannot be completed from the change, so its current
    /// version is read from the source by key and upserted; later changes
    /// in the stream apply on top of it (see `docs/apply.md`).
    async fn write_partial(
        &mut self,
        t: TableIdx,
        untouched: &[usize],
        rows: &[&[Datum]],
        keys: &[&[Datum]],
    ) -> Result<(), WriteError> {
        let plan = Arc::clone(&self.plan);
        let tp = &plan.tables[t];
        let describe = |source, n: usize, key: &[Datum]| WriteError {
            op: "update",
            table: tp.target.readable(),
            rows: rows_label(tp, n, key),
            source,
        };
        let first = keys.first().copied().unwrap_or(&[]);
        let new_keys: Vec<Vec<Datum>> = rows.iter().map(|r| key_of(tp, r)).collect();
        let moved: Vec<usize> =
            (0..rows.len()).filter(|&i| keys[i] != new_keys[i].as_slice()).collect();
        if !moved.is_empty() {
            // A key change whose new key the target already has (a chunk
            // read after the change copied the row there): the row at the
            // new key is at least as new, so the one at the old key goes.
            let old: Vec<&[Datum]> = moved.iter().map(|&i| keys[i]).collect();
            let new: Vec<&[Datum]> = moved.iter().map(|&i| new_keys[i].as_slice()).collect();
            let width = tp.key_inputs.len();
            self.execute(
                StatementKey::DeleteSuperseded(t),
                "delete from",
                t,
                &[&old, &new],
                &[width, width],
                old[0],
            )
            .await?;
        }
        let found = self
            .update_partial(t, untouched, rows, keys)
            .await
            .map_err(|e| describe(e, rows.len(), first))?;
        // Rows not found by their old key: a moved row may already be at its
        // new key; anything else is read from the source by its new key.
        let retry: Vec<usize> =
            (0..rows.len()).filter(|&i| !found[i] && moved.contains(&i)).collect();
        let mut found_again = vec![false; rows.len()];
        if !retry.is_empty() {
            let retry_rows: Vec<&[Datum]> = retry.iter().map(|&i| rows[i]).collect();
            let retry_keys: Vec<&[Datum]> = retry.iter().map(|&i| new_keys[i].as_slice()).collect();
            let again = self
                .update_partial(t, untouched, &retry_rows, &retry_keys)
                .await
                .map_err(|e| describe(e, retry_rows.len(), retry_keys[0]))?;
            for (n, &i) in retry.iter().enumerate() {
                found_again[i] = again[n];
            }
        }
        let missing: Vec<&[Datum]> = (0..rows.len())
            .filter(|&i| !found[i] && !found_again[i])
            .map(|i| new_keys[i].as_slice())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let fetched = self.fetch_from_source(t, &missing).await.map_err(|e| WriteError {
            op: "read missing rows from",
            table: tp.source.readable(),
            rows: format!("{} rows", missing.len()),
            source: e,
        })?;
        tracing::debug!(
            table = %tp.target.readable(),
            missing = missing.len(),
            fetched = fetched.len(),
            "partial update found rows missing in the target; read them from the source"
        );
        if fetched.is_empty() {
            return Ok(());
        }
        let refs: Vec<&[Datum]> = fetched.iter().map(Vec::as_slice).collect();
        self.write_upserts(t, &refs).await
    }

    /// Runs the partial update of `rows` matched by `keys`; returns which
    /// rows the target had.
    async fn update_partial(
        &mut self,
        t: TableIdx,
        untouched: &[usize],
        rows: &[&[Datum]],
        keys: &[&[Datum]],
    ) -> Result<Vec<bool>, tokio_postgres::Error> {
        let plan = Arc::clone(&self.plan);
        let tp = &plan.tables[t];
        let statement = self.statement(StatementKey::Partial(t, untouched.to_vec())).await?;
        let mut params = Vec::new();
        for col in 0..tp.inputs.len() {
            params.push(ColumnParam::new(rows, col));
        }
        for col in 0..tp.key_inputs.len() {
            params.push(ColumnParam::new(keys, col));
        }
        let updated = self
            .client
            .query(&statement, &params.iter().map(|p| p as &(dyn ToSql + Sync)).collect::<Vec<_>>())
            .await?;
        let mut found = vec![false; keys.len()];
        for row in &updated {
            let n: i64 = row.try_get(0)?;
            if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| found.get_mut(i)) {
                *slot = true;
            }
        }
        Ok(found)
    }

    async fn fetch_from_source(
        &mut self,
        t: TableIdx,
        keys: &[&[Datum]],
    ) -> Result<Vec<Vec<Datum>>, tokio_postgres::Error> {
        let statement = match self.fetches.get(&t) {
            Some(s) => s.clone(),
            None => {
                let s = self.source.prepare(&statements::fetch_rows(&self.plan.tables[t])).await?;
                self.fetches.insert(t, s.clone());
                s
            }
        };
        let width = self.plan.tables[t].key_inputs.len();
        let params: Vec<ColumnParam<'_>> = (0..width).map(|c| ColumnParam::new(keys, c)).collect();
        let rows = self
            .source
            .query(&statement, &params.iter().map(|p| p as &(dyn ToSql + Sync)).collect::<Vec<_>>())
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut values = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                let v: Option<String> = row.try_get(i)?;
                values.push(match v {
                    Some(s) => Datum::Text(bytes::Bytes::from(s)),
                    None => Datum::Null,
                });
            }
            out.push(values);
        }
        Ok(out)
    }

    /// Writes one operation on its own (a barrier).
    pub async fn write_one(&mut self, table: TableIdx, op: &Op) -> Result<(), WriteError> {
        let change = match op {
            Op::Partial { old_key, new, untouched } => {
                return self.write_partial(table, untouched, &[new], &[old_key]).await;
            }
            Op::Upsert(new) | Op::Insert(new) => {
                crate::change::Change::Insert { table, new: new.clone() }
            }
            Op::Delete(old_key) => {
                crate::change::Change::Delete { table, old_key: old_key.clone() }
            }
        };
        let plan = Arc::clone(&self.plan);
        let mut pending = PendingOps::new(plan.tables.len());
        // Full rows and keys never fail the unchanged-TOAST check.
        let _ = pending.push(&plan, change);
        self.flush(&pending).await
    }

    /// Truncates the target tables of `tables`.
    pub async fn truncate(&mut self, tables: &[TableIdx]) -> Result<(), WriteError> {
        let plan = Arc::clone(&self.plan);
        let sql = statements::truncate(tables.iter().map(|&t| &plan.tables[t]));
        self.client.batch_execute(&sql).await.map_err(|source| WriteError {
            op: "truncate",
            table: tables
                .iter()
                .map(|&t| plan.tables[t].target.readable())
                .collect::<Vec<_>>()
                .join(", "),
            rows: "all rows".into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes, BytesMut};

    use super::*;

    /// The binary `COPY` data of `rows` built in one buffer.
    fn whole(rows: &[&[Datum]]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0);
        buf.put_i32(0);
        for row in rows {
            buf.put_i16(row.len() as i16);
            for value in row.iter() {
                match value {
                    Datum::Text(b) | Datum::Binary(b) => {
                        buf.put_i32(b.len() as i32);
                        buf.put_slice(b);
                    }
                    Datum::Null | Datum::UnchangedToast => buf.put_i32(-1),
                }
            }
        }
        buf.put_i16(-1);
        buf.to_vec()
    }

    #[test]
    fn copy_pieces_are_bounded_and_slice_large_values() {
        let large = Bytes::from(vec![7u8; 3 * COPY_PIECE_BYTES + 5]);
        let small: Vec<Vec<Datum>> = (0..20_000)
            .map(|i| vec![Datum::Text(Bytes::from(format!("{i}"))), Datum::Null])
            .collect();
        let mut rows: Vec<&[Datum]> = small.iter().map(Vec::as_slice).collect();
        let big_row = vec![Datum::Text(Bytes::from_static(b"k")), Datum::Binary(large.clone())];
        rows.insert(100, &big_row);
        let pieces: Vec<Bytes> = CopyPieces::new(&rows).collect();
        assert!(pieces.iter().all(|p| p.len() <= COPY_PIECE_BYTES + 64));
        assert_eq!(pieces.concat(), whole(&rows));
        // The large value went out as slices of its own bytes.
        let inside = |p: &Bytes| {
            let range = large.as_ptr() as usize..large.as_ptr() as usize + large.len();
            range.contains(&(p.as_ptr() as usize))
        };
        assert_eq!(pieces.iter().filter(|p| inside(p)).count(), 4);
        assert_eq!(CopyPieces::new(&[]).collect::<Vec<_>>().concat(), whole(&[]));
    }
}
