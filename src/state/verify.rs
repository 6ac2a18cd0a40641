//! Verification state (`walshift.verify_tables`, `walshift.verify_differences`,
//! see `sql/0003_verify.sql`): per table and runner the pass in progress
//! (so a killed pass resumes after its last chunk) and the last finished
//! pass, and the differences found, down to the key.

use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::types::{PgLsn, ToSql};

use crate::lsn::Lsn;

/// Who runs a pass: the periodic verification inside `walshift run`, or
/// `walshift verify` in the foreground. Each keeps its own pass cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runner {
    /// Inside `walshift run`.
    Run,
    /// `walshift verify`.
    Cli,
}

impl Runner {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Runner::Run => "run",
            Runner::Cli => "cli",
        }
    }
}

/// A full pass compares every key range; an incremental one only the keys
/// the stream changed since the last pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PassKind {
    /// Every key range.
    Full,
    /// Only keys changed since the last pass.
    Incremental,
}

impl PassKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PassKind::Full => "full",
            PassKind::Incremental => "incremental",
        }
    }

    fn parse(text: &str) -> PassKind {
        if text == "incremental" { PassKind::Incremental } else { PassKind::Full }
    }
}

/// How a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PassResult {
    /// No difference.
    Clean,
    /// Confirmed differences.
    Differences,
    /// Only differences a change not yet applied could explain.
    Unconfirmed,
}

impl PassResult {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PassResult::Clean => "clean",
            PassResult::Differences => "differences",
            PassResult::Unconfirmed => "unconfirmed",
        }
    }

    fn parse(text: &str) -> PassResult {
        match text {
            "clean" => PassResult::Clean,
            "unconfirmed" => PassResult::Unconfirmed,
            _ => PassResult::Differences,
        }
    }
}

/// Counters of one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PassCounters {
    /// Source rows compared (in the chunks checked).
    pub rows: u64,
    /// Chunks (key ranges or key batches) checked.
    pub chunks: u64,
    /// Chunks whose hashes differed at first.
    pub mismatched: u64,
    /// Re-checks (narrowing down and confirming).
    pub rechecked: u64,
    /// Confirmed differences (rows).
    pub differences: u64,
    /// Differences a change not yet applied could explain.
    pub unconfirmed: u64,
    /// Keys the stream kept changing while they were being confirmed (so
    /// each read saw a change in flight): not reported, checked again in
    /// the next pass. Not stored.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deferred: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PassCounters {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &PassCounters) {
        self.rows += other.rows;
        self.chunks += other.chunks;
        self.mismatched += other.mismatched;
        self.rechecked += other.rechecked;
        self.differences += other.differences;
        self.unconfirmed += other.unconfirmed;
        self.deferred += other.deferred;
    }
}

/// A pass in progress.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PassState {
    /// Full or incremental.
    pub kind: PassKind,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// Source WAL position when it started.
    pub start_lsn: Lsn,
    /// Cursor of a full pass: the key of the last row checked.
    pub last_key: Option<Vec<String>>,
    /// Counters so far.
    pub counters: PassCounters,
}

/// The last finished pass.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct LastPass {
    /// Full or incremental.
    pub kind: PassKind,
    /// Its result.
    pub result: PassResult,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// When it finished (RFC 3339, UTC).
    pub finished_at: String,
    /// Seconds since it finished.
    pub age_seconds: f64,
    /// Seconds it took.
    pub elapsed_seconds: f64,
    /// Source position it covers (where it started).
    pub lsn: Lsn,
    /// Its counters.
    pub counters: PassCounters,
}

/// One table's stored verification state for one runner.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct TableVerifyState {
    /// Source table.
    pub source_table: String,
    /// Target table.
    pub target_table: String,
    /// Who runs its passes.
    pub runner: Runner,
    /// The pass in progress.
    pub pass: Option<PassState>,
    /// The last finished pass.
    pub last: Option<LastPass>,
    /// Seconds since the last clean full pass started, if any.
    pub last_clean_full_age_seconds: Option<f64>,
    /// Source position of the last clean full pass.
    pub last_clean_full_lsn: Option<Lsn>,
    /// When the last clean pass (full, or incremental after a clean full)
    /// started (RFC 3339): the age of the verification the controller reads.
    pub last_clean_at: Option<String>,
    /// Seconds since then.
    pub last_clean_age_seconds: Option<f64>,
    /// Unix time of `last_clean_at`, for metrics.
    pub last_clean_unix_seconds: Option<f64>,
    /// Source position it covers.
    pub last_clean_lsn: Option<Lsn>,
    /// Unix time verification last confirmed a difference (cleared only in
    /// effect, by a clean pass that started later).
    #[serde(default)]
    pub differences_found_unix_seconds: Option<f64>,
}

/// The kind of a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffKind {
    /// In `transform(source)`, not in the target.
    Missing,
    /// In the target, not in `transform(source)`.
    Extra,
    /// In both, with different values.
    Different,
}

impl DiffKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Different => "different",
        }
    }

    fn parse(text: &str) -> DiffKind {
        match text {
            "missing" => DiffKind::Missing,
            "extra" => DiffKind::Extra,
            _ => DiffKind::Different,
        }
    }
}

/// One differing column of a `different` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ColumnDiff {
    /// Target column.
    pub column: String,
    /// `transform(source)`'s value (abbreviated), `None` for NULL.
    pub source: Option<String>,
    /// The target's value (abbreviated), `None` for NULL.
    pub target: Option<String>,
}

/// A difference, down to the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Difference {
    /// Target table.
    pub table: String,
    /// Key (source text output per key column).
    pub key: Vec<String>,
    /// Its kind.
    pub kind: DiffKind,
    /// False when a change not yet applied could explain it.
    pub confirmed: bool,
    /// For `different`: the differing columns.
    pub columns: Vec<ColumnDiff>,
}

const TS: &str = "to_char(%s at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

fn ts(column: &str) -> String {
    TS.replace("%s", column)
}

fn age(column: &str) -> String {
    format!("extract(epoch from clock_timestamp() - {column})::float8")
}

/// Creates the rows of tables not seen before.
pub async fn init(
    client: &Client,
    migration: &str,
    runner: Runner,
    tables: &[(String, String)],
) -> Result<(), tokio_postgres::Error> {
    for (source, target) in tables {
        client
            .execute(
                "insert into walshift.verify_tables (migration, source_table, target_table, runner) \
                 values ($1, $2, $3, $4) on conflict (migration, target_table, runner) \
                 do update set source_table = excluded.source_table",
                &[&migration, source, target, &runner.as_str()],
            )
            .await?;
    }
    Ok(())
}

/// Every table's verification state of `migration` (all runners when
/// `runner` is `None`).
pub async fn load(
    client: &Client,
    migration: &str,
    runner: Option<Runner>,
) -> Result<Vec<TableVerifyState>, tokio_postgres::Error> {
    let sql = format!(
        "select source_table, target_table, runner, pass_kind, {pass_started}, pass_start_lsn, \
         pass_last_key, pass_rows, pass_chunks, pass_mismatched, pass_rechecked, \
         pass_differences, pass_unconfirmed, \
         last_kind, last_result, {last_started}, {last_finished}, {last_age}, \
         extract(epoch from last_finished_at - last_started_at)::float8, last_lsn, \
         last_rows, last_chunks, last_mismatched, last_rechecked, last_differences, \
         last_unconfirmed, {full_age}, last_clean_full_lsn, {clean_at}, {clean_age}, \
         extract(epoch from last_clean_at)::float8, last_clean_lsn, \
         extract(epoch from (to_jsonb(v) ->> 'differences_found_at')::timestamptz)::float8 \
         from walshift.verify_tables as v where migration = $1 and ($2::text is null or runner = $2) \
         order by target_table, runner",
        pass_started = ts("pass_started_at"),
        last_started = ts("last_started_at"),
        last_finished = ts("last_finished_at"),
        last_age = age("last_finished_at"),
        full_age = age("last_clean_full_at"),
        clean_at = ts("last_clean_at"),
        clean_age = age("last_clean_at"),
    );
    let runner_name = runner.map(Runner::as_str);
    let rows = client.query(&sql, &[&migration, &runner_name]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let n = |i: usize| -> Result<u64, tokio_postgres::Error> {
            Ok(row.try_get::<_, Option<i64>>(i)?.and_then(|v| u64::try_from(v).ok()).unwrap_or(0))
        };
        let lsn = |i: usize| -> Result<Option<Lsn>, tokio_postgres::Error> {
            Ok(row.try_get::<_, Option<PgLsn>>(i)?.map(|l| Lsn(u64::from(l))))
        };
        let runner_text: String = row.try_get(2)?;
        let pass_kind: Option<String> = row.try_get(3)?;
        let pass = match pass_kind {
            Some(kind) => Some(PassState {
                kind: PassKind::parse(&kind),
                started_at: row.try_get::<_, Option<String>>(4)?.unwrap_or_default(),
                start_lsn: lsn(5)?.unwrap_or(Lsn::ZERO),
                last_key: row.try_get(6)?,
                counters: PassCounters {
                    rows: n(7)?,
                    chunks: n(8)?,
                    mismatched: n(9)?,
                    rechecked: n(10)?,
                    differences: n(11)?,
                    unconfirmed: n(12)?,
                    deferred: 0,
                },
            }),
            None => None,
        };
        let last_kind: Option<String> = row.try_get(13)?;
        let last_result: Option<String> = row.try_get(14)?;
        let last = match (last_kind, last_result) {
            (Some(kind), Some(result)) => Some(LastPass {
                kind: PassKind::parse(&kind),
                result: PassResult::parse(&result),
                started_at: row.try_get::<_, Option<String>>(15)?.unwrap_or_default(),
                finished_at: row.try_get::<_, Option<String>>(16)?.unwrap_or_default(),
                age_seconds: row.try_get::<_, Option<f64>>(17)?.unwrap_or(0.0),
                elapsed_seconds: row.try_get::<_, Option<f64>>(18)?.unwrap_or(0.0),
                lsn: lsn(19)?.unwrap_or(Lsn::ZERO),
                counters: PassCounters {
                    rows: n(20)?,
                    chunks: n(21)?,
                    mismatched: n(22)?,
                    rechecked: n(23)?,
                    differences: n(24)?,
                    unconfirmed: n(25)?,
                    deferred: 0,
                },
            }),
            _ => None,
        };
        out.push(TableVerifyState {
            source_table: row.try_get(0)?,
            target_table: row.try_get(1)?,
            runner: if runner_text == "cli" { Runner::Cli } else { Runner::Run },
            pass,
            last,
            last_clean_full_age_seconds: row.try_get(26)?,
            last_clean_full_lsn: lsn(27)?,
            last_clean_at: row.try_get(28)?,
            last_clean_age_seconds: row.try_get(29)?,
            last_clean_unix_seconds: row.try_get(30)?,
            last_clean_lsn: lsn(31)?,
            differences_found_unix_seconds: row.try_get(32)?,
        });
    }
    Ok(out)
}

/// Starts a pass of `target_table` (a full pass starts at the first key).
pub async fn start_pass(
    client: &Client,
    migration: &str,
    target_table: &str,
    runner: Runner,
    kind: PassKind,
    start_lsn: Lsn,
) -> Result<(), tokio_postgres::Error> {
    let lsn = PgLsn::from(start_lsn.0);
    client
        .execute(
            "update walshift.verify_tables set pass_kind = $4, pass_started_at = clock_timestamp(), \
             pass_start_lsn = $5, pass_last_key = null, pass_rows = 0, pass_chunks = 0, \
             pass_mismatched = 0, pass_rechecked = 0, pass_differences = 0, pass_unconfirmed = 0, \
             updated_at = clock_timestamp() \
             where migration = $1 and target_table = $2 and runner = $3",
            &[&migration, &target_table, &runner.as_str(), &kind.as_str(), &lsn],
        )
        .await?;
    Ok(())
}

/// Records a checked chunk: the cursor moves to `last_key` (full passes)
/// and the counters grow by `delta`.
pub async fn save_chunk(
    client: &Client,
    migration: &str,
    target_table: &str,
    runner: Runner,
    last_key: Option<&[String]>,
    delta: &PassCounters,
) -> Result<(), tokio_postgres::Error> {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let values = [
        i(delta.rows),
        i(delta.chunks),
        i(delta.mismatched),
        i(delta.rechecked),
        i(delta.differences),
        i(delta.unconfirmed),
    ];
    let key: Option<Vec<String>> = last_key.map(<[String]>::to_vec);
    let runner = runner.as_str();
    let params: [&(dyn ToSql + Sync); 10] = [
        &migration,
        &target_table,
        &runner,
        &key,
        &values[0],
        &values[1],
        &values[2],
        &values[3],
        &values[4],
        &values[5],
    ];
    client
        .execute(
            "update walshift.verify_tables set pass_last_key = coalesce($4, pass_last_key), \
             pass_rows = pass_rows + $5, pass_chunks = pass_chunks + $6, \
             pass_mismatched = pass_mismatched + $7, pass_rechecked = pass_rechecked + $8, \
             pass_differences = pass_differences + $9, pass_unconfirmed = pass_unconfirmed + $10, \
             updated_at = clock_timestamp() \
             where migration = $1 and target_table = $2 and runner = $3",
            &params,
        )
        .await?;
    Ok(())
}

/// Ends the pass in progress with `result`: it becomes the last pass, and a
/// clean one moves the clean timestamps. An incremental pass only counts as
/// clean after a clean full one, and a full pass that is not clean forgets
/// the last clean full pass: differences beyond `max_differences` were not
/// stored, so only another full pass can find the table clean again. A pass
/// that found differences also clears the last clean pass: the table is not
/// clean now, however recently it was.
pub async fn finish_pass(
    client: &Client,
    migration: &str,
    target_table: &str,
    runner: Runner,
    result: PassResult,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "update walshift.verify_tables set last_kind = pass_kind, last_result = $4, \
             last_started_at = pass_started_at, last_finished_at = clock_timestamp(), \
             last_lsn = pass_start_lsn, last_rows = pass_rows, last_chunks = pass_chunks, \
             last_mismatched = pass_mismatched, last_rechecked = pass_rechecked, \
             last_differences = pass_differences, last_unconfirmed = pass_unconfirmed, \
             last_clean_full_at = case when pass_kind = 'full' \
                 then (case when $4 = 'clean' then pass_started_at end) \
                 else last_clean_full_at end, \
             last_clean_full_lsn = case when pass_kind = 'full' \
                 then (case when $4 = 'clean' then pass_start_lsn end) \
                 else last_clean_full_lsn end, \
             last_clean_at = case when $4 = 'clean' and (pass_kind = 'full' \
                 or last_clean_full_at is not null) then pass_started_at \
                 when $4 = 'differences' then null else last_clean_at end, \
             last_clean_lsn = case when $4 = 'clean' and (pass_kind = 'full' \
                 or last_clean_full_at is not null) then pass_start_lsn \
                 when $4 = 'differences' then null else last_clean_lsn end, \
             differences_found_at = case when $4 = 'differences' then clock_timestamp() \
                 else differences_found_at end, \
             pass_kind = null, pass_started_at = null, pass_start_lsn = null, \
             pass_last_key = null, updated_at = clock_timestamp() \
             where migration = $1 and target_table = $2 and runner = $3 and pass_kind is not null",
            &[&migration, &target_table, &runner.as_str(), &result.as_str()],
        )
        .await?;
    Ok(())
}

/// Stores differences (replacing what was stored for the same keys).
pub async fn record_differences(
    client: &Client,
    migration: &str,
    runner: Runner,
    differences: &[Difference],
) -> Result<(), tokio_postgres::Error> {
    for d in differences {
        let columns: Vec<&str> = d.columns.iter().map(|c| c.column.as_str()).collect();
        let source: Vec<Option<&str>> = d.columns.iter().map(|c| c.source.as_deref()).collect();
        let target: Vec<Option<&str>> = d.columns.iter().map(|c| c.target.as_deref()).collect();
        client
            .execute(
                "insert into walshift.verify_differences (migration, target_table, key, kind, \
                 confirmed, columns, source_values, target_values, runner) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 on conflict (migration, target_table, key) do update set kind = excluded.kind, \
                 confirmed = excluded.confirmed, columns = excluded.columns, \
                 source_values = excluded.source_values, target_values = excluded.target_values, \
                 runner = excluded.runner, found_at = clock_timestamp()",
                &[
                    &migration,
                    &d.table,
                    &d.key,
                    &d.kind.as_str(),
                    &d.confirmed,
                    &columns,
                    &source,
                    &target,
                    &runner.as_str(),
                ],
            )
            .await?;
        if d.confirmed {
            client
                .execute(
                    "update walshift.verify_tables set differences_found_at = clock_timestamp() \
                     where migration = $1 and target_table = $2 and runner = $3",
                    &[&migration, &d.table, &runner.as_str()],
                )
                .await?;
        }
    }
    Ok(())
}

/// Removes the stored differences of `keys` of `target_table` (found
/// clean again).
pub async fn clear_differences(
    client: &Client,
    migration: &str,
    target_table: &str,
    keys: &[Vec<String>],
) -> Result<(), tokio_postgres::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let k = keys.first().map_or(0, Vec::len);
    // Keys as one text[] per position, compared as arrays.
    let flat: Vec<String> = keys.iter().flatten().cloned().collect();
    let width = i64::try_from(k).unwrap_or(i64::MAX);
    client
        .execute(
            "delete from walshift.verify_differences d where d.migration = $1              and d.target_table = $2 and d.key in (select array_agg(v order by o)                  from unnest($3::text[]) with ordinality as u(v, o)                  group by (o - 1) / $4)",
            &[&migration, &target_table, &flat, &width],
        )
        .await?;
    Ok(())
}

/// Removes the stored differences of `target_table` found before the pass
/// in progress of `runner` started (a full pass that reaches its end
/// replaces the list with what it found).
pub async fn clear_differences_before_pass(
    client: &Client,
    migration: &str,
    target_table: &str,
    runner: Runner,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "delete from walshift.verify_differences d using walshift.verify_tables v              where d.migration = $1 and d.target_table = $2 and v.migration = $1              and v.target_table = $2 and v.runner = $3 and d.found_at < v.pass_started_at",
            &[&migration, &target_table, &runner.as_str()],
        )
        .await?;
    Ok(())
}

/// Stored differences of `migration` (every table when `table` is `None`).
pub async fn differences(
    client: &Client,
    migration: &str,
    table: Option<&str>,
) -> Result<Vec<Difference>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select target_table, key, kind, confirmed, columns, source_values, target_values \
             from walshift.verify_differences where migration = $1 \
             and ($2::text is null or target_table = $2) order by target_table, found_at, key",
            &[&migration, &table],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let columns: Vec<String> = row.try_get(4)?;
        let source: Vec<Option<String>> = row.try_get(5)?;
        let target: Vec<Option<String>> = row.try_get(6)?;
        let value = |v: Option<&Option<String>>| v.cloned().flatten();
        out.push(Difference {
            table: row.try_get(0)?,
            key: row.try_get(1)?,
            kind: DiffKind::parse(&row.try_get::<_, String>(2)?),
            confirmed: row.try_get(3)?,
            columns: columns
                .iter()
                .enumerate()
                .map(|(i, c)| ColumnDiff {
                    column: c.clone(),
                    source: value(source.get(i)),
                    target: value(target.get(i)),
                })
                .collect(),
        });
    }
    Ok(out)
}
