//! The verifier: passes over a table's key space (full) or over the keys the
//! stream changed (incremental), each chunk hashed by both servers at once;
//! mismatching chunks narrowed down to keys and every difference confirmed
//! across a barrier before it is reported. See `docs/verify.md`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::{Client, Row, Statement};

use crate::backfill::pace::Pace;
use crate::change::TableIdx;
use crate::lag::Lag;
use crate::lsn::Lsn;
use crate::runtime::shutdown::Shutdown;
use crate::state::verify::{self as store, Difference, PassCounters, PassKind, PassResult, Runner};
use crate::telemetry::metrics as m;
use crate::transform::compare::{CompareTable, Scope};
use crate::verify::VerifyError;
use crate::verify::diff::{self, Candidate, RowImage, ValueImage};
use crate::verify::dirty::{Dirty, DirtyKeys};
use crate::verify::position::{self, Applied, Passed};

/// A range with at most this many rows on either side is diffed row by row.
pub const LEAF_ROWS: u64 = 512;

/// A mismatching range is split into this many sub-ranges per level.
pub const SPLIT: usize = 16;

/// Keys per chunk of an incremental pass or a confirmation read.
pub const KEY_BATCH: usize = 1000;

/// Reads across barriers before a difference that keeps changing is
/// reported as unconfirmed.
pub const CONFIRM_ROUNDS: usize = 6;

/// Pause before re-reading keys that changed, times the round.
const CONFIRM_PAUSE: Duration = Duration::from_millis(50);

/// How long to wait while lag is over the threshold before looking again.
const LAG_POLL: Duration = Duration::from_millis(200);

/// Settings of a verifier.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Migration name.
    pub migration: String,
    /// Who runs the passes.
    pub runner: Runner,
    /// Smallest chunk.
    pub chunk_rows_min: u32,
    /// Largest chunk.
    pub chunk_rows_max: u32,
    /// Chunk duration the size adapts toward.
    pub target_chunk: Duration,
    /// Wait while lag (as [`Lag`] computes it) is at or above this.
    pub max_lag: Duration,
    /// Optional cap on rows hashed per second.
    pub max_rows_per_second: Option<u32>,
    /// Differences kept per table and pass.
    pub max_differences: u32,
}

impl VerifyOptions {
    /// The `[verify]` settings of `cfg`, for passes run by `runner`.
    pub fn from_config(cfg: &crate::config::ValidatedConfig, runner: Runner) -> Self {
        VerifyOptions {
            migration: cfg.migration_name.clone(),
            runner,
            chunk_rows_min: cfg.verify.chunk_rows_min,
            chunk_rows_max: cfg.verify.chunk_rows_max,
            target_chunk: cfg.verify.target_chunk,
            max_lag: cfg.verify.max_lag,
            max_rows_per_second: cfg.verify.max_rows_per_second,
            max_differences: cfg.verify.max_differences,
        }
    }
}

/// One table's pass, as reported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableReport {
    /// Source table.
    pub source: String,
    /// Target table.
    pub target: String,
    /// `source` (hashed by each server) or `ship` (source rows shipped to
    /// the target, whose functions the mapping needs).
    pub path: &'static str,
    /// Full or incremental.
    pub kind: PassKind,
    /// Its result.
    pub result: PassResult,
    /// Whether the pass ran to the end (false: interrupted; it resumes).
    pub complete: bool,
    /// Counters.
    pub counters: PassCounters,
    /// Seconds it took (this run).
    pub elapsed_seconds: f64,
    /// Differences, at most `max_differences` (all are counted).
    pub differences: Vec<Difference>,
}

/// `count(*)` and hash sum of one side of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Digest {
    rows: u64,
    sum: String,
}

/// Verifies tables over one source and one target session.
pub struct Verifier {
    source: Client,
    target: Client,
    tables: Vec<CompareTable>,
    source_statements: HashMap<String, Statement>,
    target_statements: HashMap<String, Statement>,
    options: VerifyOptions,
    applied: Applied,
    dirty: Option<Arc<DirtyKeys>>,
    lag: Option<Arc<Lag>>,
    pace: Pace,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("options", &self.options).finish_non_exhaustive()
    }
}

/// Session settings that decide text forms; set alike on both sides.
const SESSION: &str = "set datestyle = 'ISO, YMD'; set intervalstyle = 'postgres'; \
     set extra_float_digits = 1; set bytea_output = 'hex'";

fn sql_err(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> VerifyError {
    move |source| VerifyError::Sql { context, source }
}

fn keys_param(keys: &[Vec<String>], k: usize) -> Vec<Vec<String>> {
    (0..k)
        .map(|j| keys.iter().map(|key| key.get(j).cloned().unwrap_or_default()).collect())
        .collect()
}

impl Verifier {
    /// A verifier over `source` and `target` (dedicated sessions, set up
    /// here), for `tables` (see [`crate::verify::compile`]).
    pub async fn new(
        source: Client,
        target: Client,
        tables: Vec<CompareTable>,
        options: VerifyOptions,
        applied: Applied,
    ) -> Result<Self, VerifyError> {
        target.batch_execute(SESSION).await.map_err(sql_err("configuring the target session"))?;
        source.batch_execute(SESSION).await.map_err(sql_err("configuring the source session"))?;
        // Expressions that depend on the time zone evaluate as apply does.
        let tz: String = target
            .query_one("select current_setting('TimeZone')", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(sql_err("reading the target's time zone"))?;
        source
            .execute("select set_config('TimeZone', $1, false)", &[&tz])
            .await
            .map_err(sql_err("setting the source session's time zone"))?;
        let pace = Pace::new(
            options.chunk_rows_min,
            options.chunk_rows_max,
            options.target_chunk,
            options.max_rows_per_second,
        );
        Ok(Verifier {
            source,
            target,
            tables,
            source_statements: HashMap::new(),
            target_statements: HashMap::new(),
            options,
            applied,
            dirty: None,
            lag: None,
            pace,
        })
    }

    /// Tracks changed keys (incremental passes) and watched keys
    /// (confirmation) through `dirty`.
    pub fn with_dirty(mut self, dirty: Arc<DirtyKeys>) -> Self {
        self.dirty = Some(dirty);
        self
    }

    /// Waits while `lag` is over `max_lag`.
    pub fn with_lag(mut self, lag: Arc<Lag>) -> Self {
        self.lag = Some(lag);
        self
    }

    /// The compiled tables.
    pub fn tables(&self) -> &[CompareTable] {
        &self.tables
    }

    /// The target session (for state reads).
    pub fn target(&self) -> &Client {
        &self.target
    }

    /// The source session.
    pub fn source(&self) -> &Client {
        &self.source
    }

    async fn prepare(&mut self, sql: String, target: bool) -> Result<Statement, VerifyError> {
        let (client, cache) = if target {
            (&self.target, &mut self.target_statements)
        } else {
            (&self.source, &mut self.source_statements)
        };
        if let Some(s) = cache.get(&sql) {
            return Ok(s.clone());
        }
        let statement = client.prepare(&sql).await.map_err(|source| VerifyError::Sql {
            context: if target {
                "preparing a verification query on the target"
            } else {
                "preparing a verification query on the source"
            },
            source,
        })?;
        cache.insert(sql, statement.clone());
        Ok(statement)
    }

    /// The source's current WAL position.
    pub async fn source_position(&self) -> Result<Lsn, VerifyError> {
        let row = self
            .source
            .query_one("select pg_current_wal_lsn()", &[])
            .await
            .map_err(sql_err("reading the source's WAL position"))?;
        let lsn: PgLsn = row.try_get(0).map_err(sql_err("reading the source's WAL position"))?;
        Ok(Lsn(u64::from(lsn)))
    }

    /// Waits for the pacing (lag, rate cap); false on shutdown.
    async fn wait_turn(&mut self, shutdown: &Shutdown) -> bool {
        loop {
            if shutdown.is_triggered() {
                return false;
            }
            if let Some(lag) = &self.lag {
                match lag.current() {
                    Some(l) if l < self.options.max_lag => {}
                    _ => {
                        tokio::time::sleep(LAG_POLL).await;
                        continue;
                    }
                }
            }
            match self.pace.ready_at() {
                Some(at) if at > Instant::now() => tokio::time::sleep_until(at.into()).await,
                _ => return true,
            }
        }
    }

    /// Runs one pass of table `t` (resuming a full pass the state schema
    /// says was interrupted). An incremental pass without dirty-key
    /// tracking, or whose table overflowed, runs as a full pass.
    pub async fn pass(
        &mut self,
        t: TableIdx,
        kind: PassKind,
        shutdown: &Shutdown,
    ) -> Result<TableReport, VerifyError> {
        self.pass_with(t, kind, None, shutdown).await
    }

    /// An incremental pass over `keys` (e.g. after a repair).
    pub async fn pass_keys(
        &mut self,
        t: TableIdx,
        keys: Vec<Vec<String>>,
        shutdown: &Shutdown,
    ) -> Result<TableReport, VerifyError> {
        self.pass_with(t, PassKind::Incremental, Some(keys), shutdown).await
    }

    async fn pass_with(
        &mut self,
        t: TableIdx,
        kind: PassKind,
        explicit: Option<Vec<Vec<String>>>,
        shutdown: &Shutdown,
    ) -> Result<TableReport, VerifyError> {
        let started = Instant::now();
        let ct = &self.tables[t];
        let (source_name, target_name) = (ct.plan.source.readable(), ct.plan.target.readable());
        let path = if ct.ship { "ship" } else { "source" };
        let migration = self.options.migration.clone();
        let runner = self.options.runner;
        let mut drop_dirty = false;
        let dirty = match (kind, explicit, &self.dirty) {
            (PassKind::Incremental, Some(keys), _) => Dirty::Keys(keys),
            (PassKind::Incremental, None, Some(d)) => d.take(t),
            (PassKind::Full, None, Some(_)) => {
                drop_dirty = true;
                Dirty::All
            }
            _ => Dirty::All,
        };
        let kind = if dirty == Dirty::All { PassKind::Full } else { kind };
        let stored = store::load(&self.target, &migration, Some(runner))
            .await
            .map_err(sql_err("reading the verification state"))?;
        let resume = stored
            .iter()
            .find(|s| s.target_table == target_name)
            .and_then(|s| s.pass.clone())
            .filter(|p| p.kind == PassKind::Full && kind == PassKind::Full);
        // A full pass from the first key compares every key at a time after
        // this instant: what changed before it needs no incremental pass
        // (a resumed pass compared its first chunks earlier: kept).
        if drop_dirty && resume.is_none() {
            if let Some(d) = &self.dirty {
                let _ = d.take(t);
            }
        }
        let mut counters = PassCounters::default();
        let mut cursor = None;
        match &resume {
            Some(p) => {
                counters = p.counters;
                cursor = p.last_key.clone();
                tracing::info!(
                    table = %target_name,
                    after = ?cursor,
                    chunks = p.counters.chunks,
                    "resuming the interrupted verification pass"
                );
            }
            None => {
                let at = self.source_position().await?;
                store::start_pass(&self.target, &migration, &target_name, runner, kind, at)
                    .await
                    .map_err(sql_err("recording the verification pass"))?;
            }
        }
        metrics::gauge!(m::VERIFY_RUNNING).set(1.0);
        let mut differences = Vec::new();
        let outcome = match dirty {
            Dirty::All => self.full(t, cursor, &mut counters, &mut differences, shutdown).await,
            Dirty::Keys(mut keys) => {
                let open = store::differences(&self.target, &migration, Some(&target_name))
                    .await
                    .map_err(sql_err("reading stored differences"))?;
                let mut seen: HashSet<Vec<String>> = keys.iter().cloned().collect();
                for d in open {
                    if seen.insert(d.key.clone()) {
                        keys.push(d.key);
                    }
                }
                self.incremental(t, keys, &mut counters, &mut differences, shutdown).await
            }
        };
        metrics::gauge!(m::VERIFY_RUNNING).set(0.0);
        let complete = outcome?;
        let result = if counters.differences > 0 {
            PassResult::Differences
        } else if counters.unconfirmed > 0 {
            PassResult::Unconfirmed
        } else {
            PassResult::Clean
        };
        let label = target_name.clone();
        if complete {
            if kind == PassKind::Full {
                // Differences found before this pass that it did not find
                // again are gone.
                store::clear_differences_before_pass(
                    &self.target,
                    &migration,
                    &target_name,
                    runner,
                )
                .await
                .map_err(sql_err("clearing old differences"))?;
            }
            store::finish_pass(&self.target, &migration, &target_name, runner, result)
                .await
                .map_err(sql_err("recording the end of the verification pass"))?;
            metrics::gauge!(m::VERIFY_MISMATCHED_ROWS, m::LABEL_TABLE => label.clone())
                .set(counters.differences as f64);
            // The stored clean time (cleared by a pass that found
            // differences: then 0, "not clean").
            let stored = store::load(&self.target, &migration, Some(runner))
                .await
                .map_err(sql_err("reading the verification state"))?;
            let clean_at = stored
                .iter()
                .find(|s| s.target_table == target_name)
                .and_then(|s| s.last_clean_unix_seconds)
                .unwrap_or(0.0);
            metrics::gauge!(m::VERIFY_LAST_CLEAN, m::LABEL_TABLE => label).set(clean_at);
        }
        Ok(TableReport {
            source: source_name,
            target: target_name,
            path,
            kind,
            result,
            complete,
            counters,
            elapsed_seconds: started.elapsed().as_secs_f64(),
            differences,
        })
    }

    /// A full pass from `cursor`; false when interrupted.
    async fn full(
        &mut self,
        t: TableIdx,
        mut lo: Option<Vec<String>>,
        counters: &mut PassCounters,
        differences: &mut Vec<Difference>,
        shutdown: &Shutdown,
    ) -> Result<bool, VerifyError> {
        let target_name = self.tables[t].plan.target.readable();
        loop {
            if !self.wait_turn(shutdown).await {
                return Ok(false);
            }
            let asked = self.pace.rows();
            let chunk_started = Instant::now();
            let mut delta = PassCounters::default();
            let (hi, source, target) = if self.tables[t].ship {
                self.shipped_chunk(t, lo.as_deref(), asked).await?
            } else {
                let hi = self.boundary(t, lo.as_deref(), asked).await?;
                let scope = Scope::Range { lo: lo.is_some(), hi: hi.is_some() };
                let mut params: Vec<String> = lo.clone().unwrap_or_default();
                params.extend(hi.clone().unwrap_or_default());
                let (s, tg) = self.digests(t, scope, &params).await?;
                (hi, s, tg)
            };
            let matched = checked(&target_name, &mut delta, &source, &target);
            // The chunk size adapts to the hashing alone: narrowing a
            // mismatch is extra work that says nothing about the next chunk.
            let hashed_in = chunk_started.elapsed();
            if !matched {
                delta.mismatched += 1;
                let candidates = self
                    .narrow(t, lo.clone(), hi.clone(), source.rows, target.rows, &mut delta)
                    .await?;
                self.confirm_and_record(t, candidates, &mut delta, differences).await?;
            }
            self.pace.spaced(source.rows as usize, chunk_started);
            self.pace.observe(source.rows as usize, asked, hashed_in);
            self.save_chunk(&target_name, hi.as_deref(), &delta).await?;
            counters.add(&delta);
            match hi {
                Some(hi) => lo = Some(hi),
                None => return Ok(true),
            }
        }
    }

    /// An incremental pass over `keys`; false when interrupted.
    async fn incremental(
        &mut self,
        t: TableIdx,
        keys: Vec<Vec<String>>,
        counters: &mut PassCounters,
        differences: &mut Vec<Difference>,
        shutdown: &Shutdown,
    ) -> Result<bool, VerifyError> {
        let target_name = self.tables[t].plan.target.readable();
        for batch in keys.chunks(KEY_BATCH) {
            if !self.wait_turn(shutdown).await {
                return Ok(false);
            }
            let mut delta = PassCounters::default();
            let batch = batch.to_vec();
            let (source, target) = self.key_digests(t, &batch).await?;
            let matched = checked(&target_name, &mut delta, &source, &target);
            if matched {
                // Differences stored for these keys are gone.
                store::clear_differences(
                    &self.target,
                    &self.options.migration,
                    &target_name,
                    &batch,
                )
                .await
                .map_err(sql_err("clearing resolved differences"))?;
            } else {
                delta.mismatched += 1;
                delta.rechecked += 1;
                let candidates = self.key_rows(t, &batch).await?;
                let found: HashSet<Vec<String>> =
                    candidates.iter().map(|c| c.key.clone()).collect();
                let resolved: Vec<Vec<String>> =
                    batch.iter().filter(|k| !found.contains(*k)).cloned().collect();
                store::clear_differences(
                    &self.target,
                    &self.options.migration,
                    &target_name,
                    &resolved,
                )
                .await
                .map_err(sql_err("clearing resolved differences"))?;
                self.confirm_and_record(t, candidates, &mut delta, differences).await?;
            }
            self.save_chunk(&target_name, None, &delta).await?;
            counters.add(&delta);
        }
        Ok(true)
    }

    /// Stores a checked chunk: the cursor (full passes) and the counters.
    async fn save_chunk(
        &self,
        target_name: &str,
        last_key: Option<&[String]>,
        delta: &PassCounters,
    ) -> Result<(), VerifyError> {
        store::save_chunk(
            &self.target,
            &self.options.migration,
            target_name,
            self.options.runner,
            last_key,
            delta,
        )
        .await
        .map_err(sql_err("recording a verified chunk"))
    }

    /// The upper bound of the chunk of `rows` rows after `lo` (`None`: the
    /// rest of the table).
    async fn boundary(
        &mut self,
        t: TableIdx,
        lo: Option<&[String]>,
        rows: u32,
    ) -> Result<Option<Vec<String>>, VerifyError> {
        let statement = self.prepare(self.tables[t].source_boundary(lo.is_some()), false).await?;
        let offset = i64::from(rows.max(1)) - 1;
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(lo) = lo {
            for v in lo {
                params.push(v);
            }
        }
        params.push(&offset);
        let row = self
            .source
            .query_opt(&statement, &params)
            .await
            .map_err(sql_err("finding a chunk's upper bound on the source"))?;
        row.map(|r| texts(&r, 0, self.tables[t].key_len())).transpose()
    }

    /// Both sides' digests of a key range (`params`: its bounds' keys).
    async fn digests(
        &mut self,
        t: TableIdx,
        scope: Scope,
        params: &[String],
    ) -> Result<(Digest, Digest), VerifyError> {
        let p: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let limit = self.options.chunk_rows_max as usize * 2;
        self.scope_digests(t, scope, &p, limit).await
    }

    /// Both sides' digests of a key set.
    async fn key_digests(
        &mut self,
        t: TableIdx,
        keys: &[Vec<String>],
    ) -> Result<(Digest, Digest), VerifyError> {
        let arrays = keys_param(keys, self.tables[t].key_len());
        self.scope_digests(t, Scope::Keys, &arrays_params(&arrays), keys.len()).await
    }

    /// Both sides' digests of `scope`, computed at the same time; with the
    /// ship path, the source's rows (at most `ship_limit`) are hashed on the
    /// target through the mapping.
    async fn scope_digests(
        &mut self,
        t: TableIdx,
        scope: Scope,
        params: &[&(dyn ToSql + Sync)],
        ship_limit: usize,
    ) -> Result<(Digest, Digest), VerifyError> {
        let tg = self.prepare(self.tables[t].target_hash(scope), true).await?;
        if self.tables[t].ship {
            let rows = self.source_inputs(t, scope, params, ship_limit).await?;
            let source = self.shipped_digest(t, &rows).await?;
            let tr = self
                .target
                .query_one(&tg, params)
                .await
                .map_err(sql_err("hashing rows on the target"))?;
            return Ok((source, digest(&tr)?));
        }
        let s = self.prepare(self.tables[t].source_hash(scope), false).await?;
        let (sr, tr) =
            tokio::join!(self.source.query_one(&s, params), self.target.query_one(&tg, params));
        let sr = sr.map_err(sql_err("hashing rows on the source"))?;
        let tr = tr.map_err(sql_err("hashing rows on the target"))?;
        Ok((digest(&sr)?, digest(&tr)?))
    }

    /// Ship path: reads up to `rows` source rows after `lo`, hashes them on
    /// the target through the mapping, and hashes the target's rows of the
    /// same range.
    async fn shipped_chunk(
        &mut self,
        t: TableIdx,
        lo: Option<&[String]>,
        rows: u32,
    ) -> Result<(Option<Vec<String>>, Digest, Digest), VerifyError> {
        let scope = Scope::Range { lo: lo.is_some(), hi: false };
        let params: Vec<String> = lo.map(<[String]>::to_vec).unwrap_or_default();
        let p: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let read = self.source_inputs(t, scope, &p, rows as usize).await?;
        let k = self.tables[t].key_len();
        let n_inputs = self.tables[t].plan.inputs.len();
        let hi = if read.len() >= rows as usize {
            read.last().map(|r| texts(r, n_inputs, k)).transpose()?
        } else {
            None
        };
        let source = self.shipped_digest(t, &read).await?;
        let scope = Scope::Range { lo: lo.is_some(), hi: hi.is_some() };
        let mut params = params;
        params.extend(hi.clone().unwrap_or_default());
        let tg = self.prepare(self.tables[t].target_hash(scope), true).await?;
        let p: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let tr = self
            .target
            .query_one(&tg, &p)
            .await
            .map_err(sql_err("hashing a chunk on the target"))?;
        Ok((hi, source, digest(&tr)?))
    }

    /// Ship path: the source's input rows over `scope` (at most `limit`).
    async fn source_inputs(
        &mut self,
        t: TableIdx,
        scope: Scope,
        params: &[&(dyn ToSql + Sync)],
        limit: usize,
    ) -> Result<Vec<Row>, VerifyError> {
        let statement = self.prepare(self.tables[t].source_inputs(scope), false).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut p: Vec<&(dyn ToSql + Sync)> = params.to_vec();
        p.push(&limit);
        self.source.query(&statement, &p).await.map_err(sql_err("reading source rows to ship"))
    }

    fn shipped_arrays(
        &self,
        t: TableIdx,
        rows: &[Row],
    ) -> Result<Vec<Vec<Option<String>>>, VerifyError> {
        let n = self.tables[t].plan.inputs.len();
        let mut arrays: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); n];
        for row in rows {
            for (i, array) in arrays.iter_mut().enumerate() {
                array.push(row.try_get(i).map_err(sql_err("reading source rows to ship"))?);
            }
        }
        Ok(arrays)
    }

    async fn shipped_digest(&mut self, t: TableIdx, rows: &[Row]) -> Result<Digest, VerifyError> {
        let arrays = self.shipped_arrays(t, rows)?;
        let statement = self.prepare(self.tables[t].shipped_hash(), true).await?;
        let p: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let row = self
            .target
            .query_one(&statement, &p)
            .await
            .map_err(sql_err("hashing shipped source rows on the target"))?;
        digest(&row)
    }

    /// Narrows the mismatching range `(lo, hi]` down to candidate keys.
    async fn narrow(
        &mut self,
        t: TableIdx,
        lo: Option<Vec<String>>,
        hi: Option<Vec<String>>,
        source_rows: u64,
        target_rows: u64,
        delta: &mut PassCounters,
    ) -> Result<Vec<Candidate>, VerifyError> {
        let mut stack = vec![(lo, hi, source_rows, target_rows)];
        let mut out = Vec::new();
        while let Some((lo, hi, s_rows, t_rows)) = stack.pop() {
            let scope = Scope::Range { lo: lo.is_some(), hi: hi.is_some() };
            let mut params: Vec<String> = lo.clone().unwrap_or_default();
            params.extend(hi.clone().unwrap_or_default());
            if s_rows.max(t_rows) <= LEAF_ROWS {
                out.extend(self.range_rows(t, scope, &params).await?);
                continue;
            }
            // Cut where the side with more rows has its keys.
            let from_target = t_rows > s_rows;
            let total = s_rows.max(t_rows);
            let statement =
                self.prepare(self.tables[t].keys(scope, from_target), from_target).await?;
            let limit = i64::try_from(total).unwrap_or(i64::MAX);
            let mut p: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            p.push(&limit);
            let client = if from_target { &self.target } else { &self.source };
            let rows = client
                .query(&statement, &p)
                .await
                .map_err(sql_err("reading keys to split a mismatching range"))?;
            let k = self.tables[t].key_len();
            let step = rows.len().div_ceil(SPLIT).max(1);
            let mut bounds: Vec<Option<Vec<String>>> = vec![lo.clone()];
            for i in (step..rows.len()).step_by(step) {
                bounds.push(Some(texts(&rows[i - 1], 0, k)?));
            }
            bounds.push(hi.clone());
            bounds.dedup();
            if bounds.len() <= 2 {
                // Cannot split further (all rows share the first cut): diff it.
                out.extend(self.range_rows(t, scope, &params).await?);
                continue;
            }
            for w in bounds.windows(2) {
                let (sub_lo, sub_hi) = (w[0].clone(), w[1].clone());
                let sub = Scope::Range { lo: sub_lo.is_some(), hi: sub_hi.is_some() };
                let mut sp: Vec<String> = sub_lo.clone().unwrap_or_default();
                sp.extend(sub_hi.clone().unwrap_or_default());
                delta.rechecked += 1;
                let (s, tg) = self.digests(t, sub, &sp).await?;
                if s != tg {
                    stack.push((sub_lo, sub_hi, s.rows, tg.rows));
                }
            }
        }
        Ok(out)
    }

    /// Both sides' rows of a small range, diffed.
    async fn range_rows(
        &mut self,
        t: TableIdx,
        scope: Scope,
        params: &[String],
    ) -> Result<Vec<Candidate>, VerifyError> {
        let p: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        self.rows_diff(t, scope, &p, LEAF_ROWS as usize * 4).await
    }

    /// Both sides' rows of a key set, diffed.
    async fn key_rows(
        &mut self,
        t: TableIdx,
        keys: &[Vec<String>],
    ) -> Result<Vec<Candidate>, VerifyError> {
        let arrays = keys_param(keys, self.tables[t].key_len());
        let p = arrays_params(&arrays);
        self.rows_diff(t, Scope::Keys, &p, keys.len()).await
    }

    async fn rows_diff(
        &mut self,
        t: TableIdx,
        scope: Scope,
        params: &[&(dyn ToSql + Sync)],
        limit: usize,
    ) -> Result<Vec<Candidate>, VerifyError> {
        let k = self.tables[t].key_len();
        let n = self.tables[t].columns.len();
        let lim = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let mut p: Vec<&(dyn ToSql + Sync)> = params.to_vec();
        p.push(&lim);
        let tg = self.prepare(self.tables[t].target_rows(scope), true).await?;
        let source_images = if self.tables[t].ship {
            let rows = self.source_inputs(t, scope, params, limit + 1).await?;
            let arrays = self.shipped_arrays(t, &rows)?;
            let statement = self.prepare(self.tables[t].shipped_rows(), true).await?;
            let ap: Vec<&(dyn ToSql + Sync)> =
                arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
            let computed = self
                .target
                .query(&statement, &ap)
                .await
                .map_err(sql_err("evaluating shipped source rows on the target"))?;
            let inputs = self.tables[t].plan.inputs.len();
            let mut images = Vec::with_capacity(rows.len());
            for (raw, c) in rows.iter().zip(&computed) {
                images.push(RowImage {
                    key: texts(raw, inputs, k)?,
                    version: raw.try_get(inputs + k).map_err(sql_err("reading source rows"))?,
                    keep: c.try_get(0).map_err(sql_err("reading shipped rows"))?,
                    values: values(c, 1, n)?,
                });
            }
            images
        } else {
            let s = self.prepare(self.tables[t].source_rows(scope), false).await?;
            let rows = self
                .source
                .query_raw(&s, p.iter().copied())
                .await
                .map_err(sql_err("reading rows to diff on the source"))?;
            let rows: Vec<Row> =
                rows.try_collect().await.map_err(sql_err("reading rows to diff on the source"))?;
            let mut images = Vec::with_capacity(rows.len());
            for r in &rows {
                images.push(RowImage {
                    key: texts(r, 0, k)?,
                    version: r.try_get(k).map_err(sql_err("reading rows to diff"))?,
                    keep: r.try_get(k + 1).map_err(sql_err("reading rows to diff"))?,
                    values: values(r, k + 2, n)?,
                });
            }
            images
        };
        let trows = self
            .target
            .query(&tg, &p)
            .await
            .map_err(sql_err("reading rows to diff on the target"))?;
        let mut target_images = Vec::with_capacity(trows.len());
        for r in &trows {
            target_images.push(RowImage {
                key: texts(r, 0, k)?,
                version: None,
                keep: true,
                values: values(r, k, n)?,
            });
        }
        let names = self.tables[t].column_names();
        Ok(diff::diff(&source_images, &target_images, &names))
    }

    /// Confirms `candidates` across barriers (see `docs/verify.md`) and
    /// records what remains.
    async fn confirm_and_record(
        &mut self,
        t: TableIdx,
        candidates: Vec<Candidate>,
        delta: &mut PassCounters,
        differences: &mut Vec<Difference>,
    ) -> Result<(), VerifyError> {
        if candidates.is_empty() {
            return Ok(());
        }
        let (confirmed, unconfirmed) = self.confirm(t, candidates, delta).await?;
        let table = self.tables[t].plan.target.readable();
        let mut found: Vec<Difference> = Vec::new();
        for (list, is_confirmed) in [(confirmed, true), (unconfirmed, false)] {
            for c in list {
                if is_confirmed {
                    delta.differences += 1;
                } else {
                    delta.unconfirmed += 1;
                }
                found.push(Difference {
                    table: table.clone(),
                    key: c.key,
                    kind: c.kind,
                    confirmed: is_confirmed,
                    columns: c.columns,
                });
            }
        }
        let room = (self.options.max_differences as usize).saturating_sub(differences.len());
        found.truncate(room);
        store::record_differences(
            &self.target,
            &self.options.migration,
            self.options.runner,
            &found,
        )
        .await
        .map_err(sql_err("recording differences"))?;
        for d in &found {
            tracing::warn!(
                table = %d.table,
                key = ?d.key,
                kind = d.kind.as_str(),
                confirmed = d.confirmed,
                columns = ?d.columns.iter().map(|c| c.column.as_str()).collect::<Vec<_>>(),
                "verification found a difference"
            );
        }
        differences.extend(found);
        Ok(())
    }

    /// Splits candidates into confirmed and unconfirmed differences; those
    /// that vanish on a later read were changes in flight.
    async fn confirm(
        &mut self,
        t: TableIdx,
        candidates: Vec<Candidate>,
        delta: &mut PassCounters,
    ) -> Result<(Vec<Candidate>, Vec<Candidate>), VerifyError> {
        let mut pending: Vec<Candidate> = Vec::new();
        let mut seen = HashSet::new();
        for c in candidates {
            if seen.insert(c.key.clone()) {
                pending.push(c);
            }
        }
        let mut confirmed = Vec::new();
        for round in 0..CONFIRM_ROUNDS {
            if pending.is_empty() {
                break;
            }
            if round > 0 {
                // A key that changed between two reads is hot: give the
                // stream a moment before reading it again.
                tokio::time::sleep(CONFIRM_PAUSE * round as u32).await;
            }
            delta.rechecked += 1;
            let keys: Vec<Vec<String>> = pending.iter().map(|c| c.key.clone()).collect();
            if let Some(d) = &self.dirty {
                d.watch(t, &keys);
            }
            let passed = position::barrier(&mut self.applied, &self.source, &self.target)
                .await
                .map_err(sql_err("writing a barrier into the source WAL"))?;
            let mut fresh: HashMap<Vec<String>, Candidate> = HashMap::new();
            for chunk in keys.chunks(KEY_BATCH) {
                for c in self.key_rows(t, chunk).await? {
                    fresh.insert(c.key.clone(), c);
                }
            }
            let touched: HashSet<Vec<String>> = match &self.dirty {
                Some(d) => {
                    let touched = keys.iter().filter(|k| d.touched(t, k)).cloned().collect();
                    d.unwatch(t, &keys);
                    touched
                }
                None => HashSet::new(),
            };
            let mut next = Vec::new();
            for c in pending {
                let Some(f) = fresh.remove(&c.key) else { continue };
                if passed != Passed::TimedOut && f.same_as(&c) && !touched.contains(&c.key) {
                    confirmed.push(f);
                } else {
                    next.push(f);
                }
            }
            pending = next;
            if passed == Passed::NotStreaming {
                // Nothing applies: stable differences stand unless changes
                // wait in the slot, which could explain them.
                if let Applied::Stopped { slot, publication } = &self.applied {
                    let waiting = position::pending_changes(&self.source, slot, publication)
                        .await
                        .map_err(sql_err("peeking at the slot for changes not applied yet"))?;
                    if waiting {
                        pending.append(&mut confirmed);
                        return Ok((confirmed, pending));
                    }
                }
            }
        }
        if !matches!(self.applied, Applied::Stopped { .. }) && !pending.is_empty() {
            // The stream kept changing these keys: each read saw a change in
            // flight, which is not a divergence. Check them again later.
            tracing::debug!(
                table = %self.tables[t].plan.target.readable(),
                keys = pending.len(),
                "keys kept changing while being confirmed; re-checking them in the next pass"
            );
            if let Some(d) = &self.dirty {
                for c in &pending {
                    d.touch(t, c.key.clone());
                }
            }
            delta.deferred += pending.len() as u64;
            pending.clear();
        }
        Ok((confirmed, pending))
    }
}

/// Counts a checked chunk into `delta` and the metrics; whether it matched.
fn checked(table: &str, delta: &mut PassCounters, source: &Digest, target: &Digest) -> bool {
    delta.rows += source.rows;
    delta.chunks += 1;
    let matched = source == target;
    metrics::counter!(m::VERIFY_ROWS, m::LABEL_TABLE => table.to_owned()).increment(source.rows);
    metrics::counter!(m::VERIFY_CHUNKS, m::LABEL_TABLE => table.to_owned(),
        m::LABEL_RESULT => if matched { "match" } else { "mismatch" })
    .increment(1);
    matched
}

fn arrays_params(arrays: &[Vec<String>]) -> Vec<&(dyn ToSql + Sync)> {
    arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

fn digest(row: &Row) -> Result<Digest, VerifyError> {
    let rows: i64 = row.try_get(0).map_err(sql_err("reading a chunk digest"))?;
    let sum: String = row.try_get(1).map_err(sql_err("reading a chunk digest"))?;
    Ok(Digest { rows: u64::try_from(rows).unwrap_or(0), sum })
}

fn texts(row: &Row, from: usize, n: usize) -> Result<Vec<String>, VerifyError> {
    (from..from + n)
        .map(|i| {
            row.try_get::<_, Option<String>>(i)
                .map(Option::unwrap_or_default)
                .map_err(sql_err("reading a key"))
        })
        .collect()
}

fn values(row: &Row, from: usize, n: usize) -> Result<Vec<ValueImage>, VerifyError> {
    (0..n)
        .map(|c| {
            let h: Option<i64> =
                row.try_get(from + 2 * c).map_err(sql_err("reading a row to diff"))?;
            let text: Option<String> =
                row.try_get(from + 2 * c + 1).map_err(sql_err("reading a row to diff"))?;
            Ok((h, text))
        })
        .collect()
}
