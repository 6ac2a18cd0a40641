//! The configuration file: parsed once, validated once, then read-only.
//!
//! ```text
//!  file text ─toml─▶ spanned table ─${VAR}─▶ Config ─validate()─▶ ValidatedConfig
//!             │                     │           │              │
//!       syntax errors:       "source.url: env   unknown key,   "backfill.chunk_rows_min:
//!       file:line:column     variable X is      wrong type:     must be > 0"
//!                            not set"           file:line:column
//! ```
//!
//! - [`Config`] mirrors the TOML (`config/walshift.example.toml` documents
//!   every key): `#[serde(deny_unknown_fields)]` everywhere, units in field
//!   names (`_ms`, `_seconds`, `_rows`), every default a documented
//!   `DEFAULT_*` constant. Defaults that depend on other values (slot and
//!   publication names from `migration.name`, the target URL from the
//!   source's) stay `Option` here and are resolved by validation.
//! - [`Config::validate`] is pure (no network, no file system) and turns the
//!   tree into a [`ValidatedConfig`]: URLs parsed into [`ConnInfo`], table
//!   names into [`QualifiedName`], milliseconds into [`Duration`]s. Commands
//!   take only a `ValidatedConfig`. Checks that need a database (tables exist,
//!   expressions compile) belong to `setup`/`run`, not here.
//!
//! # `${VAR}` interpolation
//!
//! Every string value (not keys, not numbers) may contain `${NAME}`, replaced
//! by the environment variable `NAME` before deserialization, so secrets need
//! not live in the file (`url = "postgres://walshift:${PGPASSWORD}@db/app"`).
//! `$$` is a literal `$`; any other `$` is an error, so a mistyped `$VAR`
//! cannot silently stay literal. This applies to SQL expressions too: write
//! `$$` for each `$` of a dollar-quoted string. An unset variable is an error
//! naming the key and the variable; a variable set to the empty string is
//! substituted as empty. Interpolation works on the spanned TOML tree, so
//! deserialization errors still point at the line and column in the file.
//!
//! # Column order
//!
//! `[tables.columns]` is a TOML table, and toml 0.9 without its
//! `preserve_order` feature sorts table keys. The declaration order is
//! recovered from the keys' source spans, so [`ValidatedTable::columns`]
//! lists the columns in the order the operator wrote them (which is the
//! order statements, logs and verification reports use).
//!
//! # Secrets
//!
//! `source.url`, `target.url` and `redis.url` are [`Secret`]s and
//! [`ConnInfo`] keeps the password as a `Secret`, so `Debug` of either config
//! never shows one, and no [`ConfigError`] message includes one.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::pg::conninfo::{ConnInfo, ConnInfoError};
use crate::pg::secret::Secret;
use crate::pg::sql::{MAX_IDENTIFIER_BYTES, NameError, QualifiedName};

/// Longest `migration.name`: leaves room for the `walshift_` prefix and
/// suffixes within Postgres's 63-byte names.
pub const MAX_MIGRATION_NAME_LEN: usize = 40;
/// Prefix of the default slot and publication names (`walshift_<name>`).
pub const DEFAULT_NAME_PREFIX: &str = "walshift_";
/// Standby status update interval: how often the reader reports the applied
/// position to the source even when nothing changes (the server's
/// `wal_sender_timeout` is 60 s by default; keepalives asking for a reply are
/// answered at once regardless).
pub const DEFAULT_STATUS_INTERVAL_MS: u64 = 10_000;
/// Connection timeout when neither the config nor the URL
/// (`connect_timeout`) gives one.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// A connection that owes a reply and hears nothing from the server for this
/// long is treated as dead and reopened (like the server's
/// `wal_receiver_timeout`): on the replication connection, a status update
/// asking for a reply goes out at half of it, so an idle but healthy server
/// always answers in time.
pub const DEFAULT_RECEIVE_TIMEOUT_MS: u64 = 60_000;
/// Upper bound of the exponential back-off between reconnect attempts.
pub const DEFAULT_RECONNECT_MAX_BACKOFF_MS: u64 = 30_000;
/// How often `run` writes a heartbeat message into the source WAL: it keeps
/// lag in seconds honest on an idle source (measured when the heartbeat
/// comes back through the stream) and moves the slot past WAL that holds
/// nothing for the mapped tables. One tiny WAL record and one target commit
/// per interval.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 1_000;
/// `/readyz` answers not ready while lag exceeds this many seconds.
pub const DEFAULT_READY_MAX_LAG_SECONDS: u64 = 10;
/// Whether a source `TRUNCATE` is applied to the target table.
pub const DEFAULT_TRUNCATE: bool = true;
/// Flush a merged target transaction once it holds this many row changes.
pub const DEFAULT_BATCH_MAX_ROWS: u32 = 5_000;
/// Flush a merged target transaction once its oldest change waited this long.
pub const DEFAULT_BATCH_MAX_MS: u64 = 100;
/// Smallest backfill chunk.
pub const DEFAULT_CHUNK_ROWS_MIN: u32 = 1_000;
/// Largest backfill chunk.
pub const DEFAULT_CHUNK_ROWS_MAX: u32 = 50_000;
/// The chunk size adapts so one chunk takes about this long.
pub const DEFAULT_TARGET_CHUNK_MS: u64 = 500;
/// The backfill pauses while replication lag exceeds this.
pub const DEFAULT_MAX_LAG_SECONDS: u64 = 30;
/// Target connections writing parts of each backfill chunk at once.
pub const DEFAULT_PARALLELISM: u32 = 2;
/// Upper bound of `backfill.parallelism`.
pub const MAX_PARALLELISM: u32 = 64;
/// Whether `walshift run` verifies the copy periodically.
pub const DEFAULT_VERIFY_ENABLED: bool = true;
/// Seconds between the starts of two verification passes inside `run`.
pub const DEFAULT_VERIFY_INTERVAL_SECONDS: u64 = 60;
/// Seconds between full passes; the passes in between re-check only the
/// keys the stream changed (incremental).
pub const DEFAULT_VERIFY_FULL_PASS_INTERVAL_SECONDS: u64 = 3_600;
/// Smallest verification chunk.
pub const DEFAULT_VERIFY_CHUNK_ROWS_MIN: u32 = 1_000;
/// Largest verification chunk: a chunk is hashed by each server, so rows do
/// not cross the network; its size only bounds how long one statement runs.
pub const DEFAULT_VERIFY_CHUNK_ROWS_MAX: u32 = 200_000;
/// The verification chunk size adapts so one chunk takes about this long.
pub const DEFAULT_VERIFY_TARGET_CHUNK_MS: u64 = 500;
/// Verification waits while replication lag exceeds this.
pub const DEFAULT_VERIFY_MAX_LAG_SECONDS: u64 = 10;
/// Differences kept (stored, printed) per table and pass; all are counted.
pub const DEFAULT_VERIFY_MAX_DIFFERENCES: u32 = 1_000;
/// Desired share of reads on the new tables: nothing moves until the
/// operator asks.
pub const DEFAULT_READ_NEW_PERCENT: u64 = 0;
/// The read-traffic stages of the seed runbooks.
pub const DEFAULT_STAGES: [u8; 4] = [10, 50, 90, 100];
/// Between two evaluations of the controller's gates.
pub const DEFAULT_EVALUATE_INTERVAL_MS: u64 = 1_000;
/// Lag gate: seconds.
pub const DEFAULT_CUTOVER_MAX_LAG_SECONDS: f64 = 5.0;
/// Lag gate: bytes of WAL not yet applied.
pub const DEFAULT_CUTOVER_MAX_LAG_BYTES: u64 = 64 << 20;
/// Verification gate: the clean pass (and the source position it covers)
/// must be younger than this.
pub const DEFAULT_VERIFY_MAX_AGE_SECONDS: u64 = 900;
/// Time at a stage before the next.
pub const DEFAULT_MIN_SOAK_SECONDS: f64 = 300.0;
/// Consecutive failing evaluations before a violation counts (as Flagger).
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// Lifetime of the controller's lease in Redis; renewed every third of it.
pub const DEFAULT_LEASE_TTL_MS: u64 = 15_000;

/// `[cutover] fence_timeout_ms`: how long the write cutover keeps trying
/// to lock the old tables before it gives up (nothing changed).
pub const DEFAULT_FENCE_TIMEOUT_MS: u64 = 5_000;

/// `[cutover] fence_lock_timeout_ms`: `lock_timeout` of one attempt to lock
/// the old tables; the application's writes queue behind a waiting attempt
/// for at most this long.
pub const DEFAULT_FENCE_LOCK_TIMEOUT_MS: u64 = 100;

/// `[cutover] drain_timeout_ms`: how long the applier may take to apply past
/// the cutover's barrier.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 5_000;

/// `[cutover] final_check_timeout_ms`: bound of the final verification of
/// what changed since the last clean pass, run while writes are fenced.
pub const DEFAULT_FINAL_CHECK_TIMEOUT_MS: u64 = 10_000;

/// `[cutover] sequence_margin`: how far past the source sequence's value
/// the target's sequence is set.
pub const DEFAULT_SEQUENCE_MARGIN: i64 = 1_000;
/// Prometheus endpoint address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9187";
/// Log line format.
pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Human;
/// Log filter (`EnvFilter` syntax).
pub const DEFAULT_LOG_LEVEL: &str = "info";

// ---------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------

/// The configuration file as written (see the module doc). Validate it with
/// [`Config::validate`] before use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[migration]`
    pub migration: MigrationConfig,
    /// `[source]`
    pub source: SourceConfig,
    /// `[target]`
    #[serde(default)]
    pub target: TargetConfig,
    /// `[[tables]]`
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// `[apply]`
    #[serde(default)]
    pub apply: ApplyConfig,
    /// `[backfill]`
    #[serde(default)]
    pub backfill: BackfillConfig,
    /// `[verify]`
    #[serde(default)]
    pub verify: VerifyConfig,
    /// `[redis]`
    #[serde(default)]
    pub redis: RedisConfig,
    /// `[traffic]`
    #[serde(default)]
    pub traffic: TrafficConfig,
    /// `[cutover]`
    #[serde(default)]
    pub cutover: CutoverConfig,
    /// `[metrics]`
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[log]`
    #[serde(default)]
    pub log: LogConfig,
}

/// `[migration]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    /// `[a-z0-9_]{1,40}`; names the slot, publication, Redis keys and the
    /// rows in the state schema.
    pub name: String,
}

/// `[source]`: the database whose tables are migrated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// libpq URL or key/value string.
    pub url: Secret,
    /// Replication slot; default `walshift_<migration.name>`.
    #[serde(default)]
    pub slot: Option<String>,
    /// Publication; default `walshift_<migration.name>`.
    #[serde(default)]
    pub publication: Option<String>,
    /// See [`DEFAULT_STATUS_INTERVAL_MS`].
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// Overrides the URL's `connect_timeout`; default
    /// [`DEFAULT_CONNECT_TIMEOUT_MS`] when neither is set.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// See [`DEFAULT_RECEIVE_TIMEOUT_MS`].
    #[serde(default = "default_receive_timeout_ms")]
    pub receive_timeout_ms: u64,
    /// See [`DEFAULT_RECONNECT_MAX_BACKOFF_MS`].
    #[serde(default = "default_reconnect_max_backoff_ms")]
    pub reconnect_max_backoff_ms: u64,
    /// See [`DEFAULT_HEARTBEAT_INTERVAL_MS`].
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
}

/// `[target]`: where the shadow tables live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Default: the source URL (a same-database migration).
    #[serde(default)]
    pub url: Option<Secret>,
    /// Like `source.connect_timeout_ms`.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Like `source.receive_timeout_ms`.
    #[serde(default = "default_receive_timeout_ms")]
    pub receive_timeout_ms: u64,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            url: None,
            connect_timeout_ms: None,
            receive_timeout_ms: DEFAULT_RECEIVE_TIMEOUT_MS,
        }
    }
}

/// One `[[tables]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `schema.table` on the source.
    pub source: String,
    /// `schema.table` on the target.
    pub target: String,
    /// Source columns identifying a row; default: the primary key.
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// `target_column = "<expr>"` or `{ expr = "<expr>", verify = false }`,
    /// in declaration order. Empty: every source column to the same-named
    /// target column.
    #[serde(default, deserialize_with = "deserialize_columns")]
    pub columns: Vec<ColumnMapping>,
    /// SQL predicate over source columns; rows that fail it are not copied.
    #[serde(default)]
    pub filter: Option<String>,
    /// Overrides `apply.truncate` for this table.
    #[serde(default)]
    pub truncate: Option<bool>,
}

/// One target column and the SQL expression that computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMapping {
    /// Target column name, exactly as in the catalog (case-sensitive, no
    /// quoting syntax).
    pub target: String,
    /// SQL expression over source columns, evaluated by the target.
    pub expr: String,
    /// Whether verification compares this column (`false` for values that
    /// are not a function of the source row, like `now()`).
    pub verify: bool,
}

/// `[apply]`: how streamed changes are written to the target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {
    /// See [`DEFAULT_BATCH_MAX_ROWS`].
    #[serde(default = "default_batch_max_rows")]
    pub batch_max_rows: u32,
    /// See [`DEFAULT_BATCH_MAX_MS`]; `0` applies every source transaction on
    /// its own.
    #[serde(default = "default_batch_max_ms")]
    pub batch_max_ms: u64,
    /// Default of `tables[].truncate`; see [`DEFAULT_TRUNCATE`].
    #[serde(default = "default_truncate")]
    pub truncate: bool,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        Self {
            batch_max_rows: DEFAULT_BATCH_MAX_ROWS,
            batch_max_ms: DEFAULT_BATCH_MAX_MS,
            truncate: DEFAULT_TRUNCATE,
        }
    }
}

/// `[backfill]`: copying the rows that existed before the slot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillConfig {
    /// See [`DEFAULT_CHUNK_ROWS_MIN`].
    #[serde(default = "default_chunk_rows_min")]
    pub chunk_rows_min: u32,
    /// See [`DEFAULT_CHUNK_ROWS_MAX`].
    #[serde(default = "default_chunk_rows_max")]
    pub chunk_rows_max: u32,
    /// See [`DEFAULT_TARGET_CHUNK_MS`].
    #[serde(default = "default_target_chunk_ms")]
    pub target_chunk_ms: u64,
    /// See [`DEFAULT_MAX_LAG_SECONDS`].
    #[serde(default = "default_max_lag_seconds")]
    pub max_lag_seconds: u64,
    /// Rate limit over all tables; none by default.
    #[serde(default)]
    pub max_rows_per_second: Option<u32>,
    /// See [`DEFAULT_PARALLELISM`].
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            chunk_rows_min: DEFAULT_CHUNK_ROWS_MIN,
            chunk_rows_max: DEFAULT_CHUNK_ROWS_MAX,
            target_chunk_ms: DEFAULT_TARGET_CHUNK_MS,
            max_lag_seconds: DEFAULT_MAX_LAG_SECONDS,
            max_rows_per_second: None,
            parallelism: DEFAULT_PARALLELISM,
        }
    }
}

/// `[verify]`: comparing `transform(source)` with the target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// See [`DEFAULT_VERIFY_ENABLED`].
    #[serde(default = "default_verify_enabled")]
    pub enabled: bool,
    /// See [`DEFAULT_VERIFY_INTERVAL_SECONDS`].
    #[serde(default = "default_verify_interval_seconds")]
    pub interval_seconds: u64,
    /// See [`DEFAULT_VERIFY_FULL_PASS_INTERVAL_SECONDS`].
    #[serde(default = "default_verify_full_pass_interval_seconds")]
    pub full_pass_interval_seconds: u64,
    /// See [`DEFAULT_VERIFY_CHUNK_ROWS_MIN`].
    #[serde(default = "default_verify_chunk_rows_min")]
    pub chunk_rows_min: u32,
    /// See [`DEFAULT_VERIFY_CHUNK_ROWS_MAX`].
    #[serde(default = "default_verify_chunk_rows_max")]
    pub chunk_rows_max: u32,
    /// See [`DEFAULT_VERIFY_TARGET_CHUNK_MS`].
    #[serde(default = "default_verify_target_chunk_ms")]
    pub target_chunk_ms: u64,
    /// See [`DEFAULT_VERIFY_MAX_LAG_SECONDS`].
    #[serde(default = "default_verify_max_lag_seconds")]
    pub max_lag_seconds: u64,
    /// Rate limit of rows hashed per second and side; none by default.
    #[serde(default)]
    pub max_rows_per_second: Option<u32>,
    /// Whether `walshift run` repairs confirmed differences itself (between
    /// its transactions, like the backfill); off by default: differences
    /// are reported for an operator to look at.
    #[serde(default)]
    pub repair: bool,
    /// See [`DEFAULT_VERIFY_MAX_DIFFERENCES`].
    #[serde(default = "default_verify_max_differences")]
    pub max_differences: u32,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            enabled: DEFAULT_VERIFY_ENABLED,
            interval_seconds: DEFAULT_VERIFY_INTERVAL_SECONDS,
            full_pass_interval_seconds: DEFAULT_VERIFY_FULL_PASS_INTERVAL_SECONDS,
            chunk_rows_min: DEFAULT_VERIFY_CHUNK_ROWS_MIN,
            chunk_rows_max: DEFAULT_VERIFY_CHUNK_ROWS_MAX,
            target_chunk_ms: DEFAULT_VERIFY_TARGET_CHUNK_MS,
            max_lag_seconds: DEFAULT_VERIFY_MAX_LAG_SECONDS,
            max_rows_per_second: None,
            repair: false,
            max_differences: DEFAULT_VERIFY_MAX_DIFFERENCES,
        }
    }
}

fn default_verify_enabled() -> bool {
    DEFAULT_VERIFY_ENABLED
}
fn default_verify_interval_seconds() -> u64 {
    DEFAULT_VERIFY_INTERVAL_SECONDS
}
fn default_verify_full_pass_interval_seconds() -> u64 {
    DEFAULT_VERIFY_FULL_PASS_INTERVAL_SECONDS
}
fn default_verify_chunk_rows_min() -> u32 {
    DEFAULT_VERIFY_CHUNK_ROWS_MIN
}
fn default_verify_chunk_rows_max() -> u32 {
    DEFAULT_VERIFY_CHUNK_ROWS_MAX
}
fn default_verify_target_chunk_ms() -> u64 {
    DEFAULT_VERIFY_TARGET_CHUNK_MS
}
fn default_verify_max_lag_seconds() -> u64 {
    DEFAULT_VERIFY_MAX_LAG_SECONDS
}
fn default_verify_max_differences() -> u32 {
    DEFAULT_VERIFY_MAX_DIFFERENCES
}

/// `[redis]`: where traffic weights are published.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://`, `rediss://` or `unix://` URL; none: nothing is published.
    #[serde(default)]
    pub url: Option<Secret>,
    /// Prefix of every key; default `walshift:<migration.name>:`.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// PEM file of the CA certificate(s) the server's certificate must chain
    /// to (`rediss://` only); none: the system's trust store.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

/// `[traffic]`: the read split the operator asks for. Reloadable while
/// `walshift run` runs (SIGHUP or a change of the file), except `salt`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficConfig {
    /// Desired share of reads on the new tables, 0..=100; see
    /// [`DEFAULT_READ_NEW_PERCENT`].
    #[serde(default)]
    pub read_new_percent: u64,
    /// Percentages the controller steps through, strictly increasing, each
    /// 1..=100; see [`DEFAULT_STAGES`].
    #[serde(default = "default_stages")]
    pub stages: Vec<u64>,
    /// What a violated gate does while reads are on new.
    #[serde(default)]
    pub on_violation: OnViolation,
    /// Salt of the bucketing hash; default: the migration name.
    #[serde(default)]
    pub salt: Option<String>,
    /// Where writes should go: `old` (default) or `new` (the write
    /// cutover, once reads are 100 % on new and every gate passes).
    #[serde(default)]
    pub write: WriteTarget,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            read_new_percent: DEFAULT_READ_NEW_PERCENT,
            stages: default_stages(),
            on_violation: OnViolation::default(),
            salt: None,
            write: WriteTarget::default(),
        }
    }
}

/// `traffic.write`: the side the operator wants writes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteTarget {
    /// The old (source) tables.
    #[default]
    Old,
    /// The new tables: run the write cutover.
    New,
}

impl WriteTarget {
    /// The configured name.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteTarget::Old => "old",
            WriteTarget::New => "new",
        }
    }
}

/// `traffic.on_violation`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnViolation {
    /// Publish 0 % new and stay `rolled_back` until re-armed.
    #[default]
    Rollback,
    /// Keep the weights and stay `paused` until the gates pass again.
    Hold,
}

impl OnViolation {
    /// The configured name.
    pub fn as_str(self) -> &'static str {
        match self {
            OnViolation::Rollback => "rollback",
            OnViolation::Hold => "hold",
        }
    }
}

/// `[cutover]`: the controller's gates and timing. Reloadable while
/// `walshift run` runs, except `lease_ttl_ms`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverConfig {
    /// See [`DEFAULT_EVALUATE_INTERVAL_MS`].
    #[serde(default = "default_evaluate_interval_ms")]
    pub evaluate_interval_ms: u64,
    /// See [`DEFAULT_CUTOVER_MAX_LAG_SECONDS`].
    #[serde(default = "default_cutover_max_lag_seconds")]
    pub max_lag_seconds: f64,
    /// See [`DEFAULT_CUTOVER_MAX_LAG_BYTES`].
    #[serde(default = "default_cutover_max_lag_bytes")]
    pub max_lag_bytes: u64,
    /// See [`DEFAULT_VERIFY_MAX_AGE_SECONDS`].
    #[serde(default = "default_verify_max_age_seconds")]
    pub verify_max_age_seconds: u64,
    /// See [`DEFAULT_MIN_SOAK_SECONDS`].
    #[serde(default = "default_min_soak_seconds")]
    pub min_soak_seconds: f64,
    /// See [`DEFAULT_FAILURE_THRESHOLD`].
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// See [`DEFAULT_LEASE_TTL_MS`].
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// See [`DEFAULT_FENCE_TIMEOUT_MS`].
    #[serde(default = "default_fence_timeout_ms")]
    pub fence_timeout_ms: u64,
    /// See [`DEFAULT_FENCE_LOCK_TIMEOUT_MS`].
    #[serde(default = "default_fence_lock_timeout_ms")]
    pub fence_lock_timeout_ms: u64,
    /// See [`DEFAULT_DRAIN_TIMEOUT_MS`].
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// See [`DEFAULT_FINAL_CHECK_TIMEOUT_MS`].
    #[serde(default = "default_final_check_timeout_ms")]
    pub final_check_timeout_ms: u64,
    /// See [`DEFAULT_SEQUENCE_MARGIN`].
    #[serde(default = "default_sequence_margin")]
    pub sequence_margin: i64,
}

impl Default for CutoverConfig {
    fn default() -> Self {
        Self {
            evaluate_interval_ms: DEFAULT_EVALUATE_INTERVAL_MS,
            max_lag_seconds: DEFAULT_CUTOVER_MAX_LAG_SECONDS,
            max_lag_bytes: DEFAULT_CUTOVER_MAX_LAG_BYTES,
            verify_max_age_seconds: DEFAULT_VERIFY_MAX_AGE_SECONDS,
            min_soak_seconds: DEFAULT_MIN_SOAK_SECONDS,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            lease_ttl_ms: DEFAULT_LEASE_TTL_MS,
            fence_timeout_ms: DEFAULT_FENCE_TIMEOUT_MS,
            fence_lock_timeout_ms: DEFAULT_FENCE_LOCK_TIMEOUT_MS,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
            final_check_timeout_ms: DEFAULT_FINAL_CHECK_TIMEOUT_MS,
            sequence_margin: DEFAULT_SEQUENCE_MARGIN,
        }
    }
}

fn default_stages() -> Vec<u64> {
    DEFAULT_STAGES.iter().map(|&s| u64::from(s)).collect()
}
fn default_evaluate_interval_ms() -> u64 {
    DEFAULT_EVALUATE_INTERVAL_MS
}
fn default_cutover_max_lag_seconds() -> f64 {
    DEFAULT_CUTOVER_MAX_LAG_SECONDS
}
fn default_cutover_max_lag_bytes() -> u64 {
    DEFAULT_CUTOVER_MAX_LAG_BYTES
}
fn default_verify_max_age_seconds() -> u64 {
    DEFAULT_VERIFY_MAX_AGE_SECONDS
}
fn default_min_soak_seconds() -> f64 {
    DEFAULT_MIN_SOAK_SECONDS
}
fn default_failure_threshold() -> u32 {
    DEFAULT_FAILURE_THRESHOLD
}
fn default_lease_ttl_ms() -> u64 {
    DEFAULT_LEASE_TTL_MS
}
fn default_fence_timeout_ms() -> u64 {
    DEFAULT_FENCE_TIMEOUT_MS
}
fn default_fence_lock_timeout_ms() -> u64 {
    DEFAULT_FENCE_LOCK_TIMEOUT_MS
}
fn default_drain_timeout_ms() -> u64 {
    DEFAULT_DRAIN_TIMEOUT_MS
}
fn default_final_check_timeout_ms() -> u64 {
    DEFAULT_FINAL_CHECK_TIMEOUT_MS
}
fn default_sequence_margin() -> i64 {
    DEFAULT_SEQUENCE_MARGIN
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` of the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`,
    /// `/status`, `/`); see [`DEFAULT_METRICS_LISTEN`].
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
    /// See [`DEFAULT_READY_MAX_LAG_SECONDS`].
    #[serde(default = "default_ready_max_lag_seconds")]
    pub ready_max_lag_seconds: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_METRICS_LISTEN.to_owned(),
            ready_max_lag_seconds: DEFAULT_READY_MAX_LAG_SECONDS,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// See [`DEFAULT_LOG_FORMAT`].
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// `EnvFilter` directive; see [`DEFAULT_LOG_LEVEL`].
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: DEFAULT_LOG_FORMAT, level: DEFAULT_LOG_LEVEL.to_owned() }
    }
}

/// `log.format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

fn default_status_interval_ms() -> u64 {
    DEFAULT_STATUS_INTERVAL_MS
}
fn default_heartbeat_interval_ms() -> u64 {
    DEFAULT_HEARTBEAT_INTERVAL_MS
}
fn default_ready_max_lag_seconds() -> u64 {
    DEFAULT_READY_MAX_LAG_SECONDS
}
fn default_reconnect_max_backoff_ms() -> u64 {
    DEFAULT_RECONNECT_MAX_BACKOFF_MS
}
fn default_truncate() -> bool {
    DEFAULT_TRUNCATE
}
fn default_batch_max_rows() -> u32 {
    DEFAULT_BATCH_MAX_ROWS
}
fn default_batch_max_ms() -> u64 {
    DEFAULT_BATCH_MAX_MS
}
fn default_chunk_rows_min() -> u32 {
    DEFAULT_CHUNK_ROWS_MIN
}
fn default_chunk_rows_max() -> u32 {
    DEFAULT_CHUNK_ROWS_MAX
}
fn default_target_chunk_ms() -> u64 {
    DEFAULT_TARGET_CHUNK_MS
}
fn default_max_lag_seconds() -> u64 {
    DEFAULT_MAX_LAG_SECONDS
}
fn default_parallelism() -> u32 {
    DEFAULT_PARALLELISM
}
fn default_receive_timeout_ms() -> u64 {
    DEFAULT_RECEIVE_TIMEOUT_MS
}

fn default_metrics_listen() -> String {
    DEFAULT_METRICS_LISTEN.to_owned()
}
fn default_log_format() -> LogFormat {
    DEFAULT_LOG_FORMAT
}
fn default_log_level() -> String {
    DEFAULT_LOG_LEVEL.to_owned()
}

/// A column's value in `[tables.columns]`: a bare expression or a table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnTable {
    expr: String,
    #[serde(default = "verify_default")]
    verify: bool,
}

fn verify_default() -> bool {
    true
}

struct ColumnSpec(ColumnTable);

impl<'de> Deserialize<'de> for ColumnSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = ColumnSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#"a SQL expression string or a table { expr = "...", verify = false }"#,
                )
            }

            fn visit_str<E: de::Error>(self, expr: &str) -> Result<ColumnSpec, E> {
                Ok(ColumnSpec(ColumnTable { expr: expr.to_owned(), verify: true }))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ColumnSpec, A::Error> {
                ColumnTable::deserialize(de::value::MapAccessDeserializer::new(map)).map(ColumnSpec)
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

/// Reads `[tables.columns]` keeping declaration order (see the module doc).
fn deserialize_columns<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ColumnMapping>, D::Error> {
    let map = BTreeMap::<Spanned<String>, ColumnSpec>::deserialize(deserializer)?;
    let mut entries: Vec<_> = map.into_iter().collect();
    entries.sort_by_key(|(name, _)| name.span().start);
    Ok(entries
        .into_iter()
        .map(|(name, ColumnSpec(spec))| ColumnMapping {
            target: name.into_inner(),
            expr: spec.expr,
            verify: spec.verify,
        })
        .collect())
}

// ---------------------------------------------------------------------------
// The validated configuration
// ---------------------------------------------------------------------------

/// A configuration that passed [`Config::validate`]; the only form commands
/// accept.
#[derive(Debug, Clone)]
pub struct ValidatedConfig {
    /// `migration.name`.
    pub migration_name: String,
    /// `[source]`, resolved.
    pub source: SourceSettings,
    /// `[target]`, resolved.
    pub target: TargetSettings,
    /// `[[tables]]`, resolved, in file order (at least one).
    pub tables: Vec<ValidatedTable>,
    /// `[apply]`.
    pub apply: ApplySettings,
    /// `[backfill]`.
    pub backfill: BackfillSettings,
    /// `[verify]`.
    pub verify: VerifySettings,
    /// `[redis]`.
    pub redis: RedisSettings,
    /// `[traffic]`.
    pub traffic: TrafficSettings,
    /// `[cutover]`.
    pub cutover: CutoverSettings,
    /// `[metrics]`.
    pub metrics: MetricsSettings,
    /// `[log]`.
    pub log: LogConfig,
}

/// `[source]`, resolved.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// Connection; `connect_timeout` already resolved.
    pub url: ConnInfo,
    /// Replication slot name (`[a-z0-9_]`, at most 63 bytes).
    pub slot: String,
    /// Publication name (`[a-z0-9_]`, at most 63 bytes).
    pub publication: String,
    /// Standby status update interval.
    pub status_interval: Duration,
    /// Upper bound of the reconnect back-off.
    pub reconnect_max_backoff: Duration,
    /// Interval of the heartbeat written into the source WAL.
    pub heartbeat_interval: Duration,
}

/// `[target]`, resolved.
#[derive(Debug, Clone)]
pub struct TargetSettings {
    /// Connection; `connect_timeout` already resolved.
    pub url: ConnInfo,
    /// `target.url` was omitted: the shadow tables are in the source database.
    pub same_as_source: bool,
}

/// One `[[tables]]` entry, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedTable {
    /// Source relation.
    pub source: QualifiedName,
    /// Target relation.
    pub target: QualifiedName,
    /// Source key columns (raw names); `None`: the primary key, resolved
    /// from the catalog.
    pub key: Option<Vec<String>>,
    /// Target columns in declaration order; empty: every source column to
    /// the same-named target column, resolved from the catalog.
    pub columns: Vec<ColumnMapping>,
    /// Row predicate over source columns.
    pub filter: Option<String>,
    /// Whether a source `TRUNCATE` truncates the target.
    pub truncate: bool,
}

/// `[apply]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplySettings {
    /// Flush a merged target transaction at this many row changes (> 0).
    pub batch_max_rows: u32,
    /// Flush a merged target transaction once its oldest change waited this
    /// long (zero: every source transaction on its own).
    pub batch_max_wait: Duration,
}

/// `[backfill]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillSettings {
    /// Smallest chunk (> 0).
    pub chunk_rows_min: u32,
    /// Largest chunk (>= `chunk_rows_min`).
    pub chunk_rows_max: u32,
    /// Chunk duration the size adapts toward.
    pub target_chunk: Duration,
    /// Pause while replication lag exceeds this.
    pub max_lag: Duration,
    /// Optional rate limit over all tables (> 0).
    pub max_rows_per_second: Option<u32>,
    /// Target connections writing parts of each chunk at once
    /// (1..=[`MAX_PARALLELISM`]).
    pub parallelism: u32,
}

/// `[verify]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySettings {
    /// Whether `run` verifies periodically.
    pub enabled: bool,
    /// Between the starts of two passes inside `run` (> 0).
    pub interval: Duration,
    /// Between full passes (>= `interval`).
    pub full_pass_interval: Duration,
    /// Smallest chunk (> 0).
    pub chunk_rows_min: u32,
    /// Largest chunk (>= `chunk_rows_min`).
    pub chunk_rows_max: u32,
    /// Chunk duration the size adapts toward.
    pub target_chunk: Duration,
    /// Verification waits while replication lag exceeds this.
    pub max_lag: Duration,
    /// Optional rate limit (> 0).
    pub max_rows_per_second: Option<u32>,
    /// Whether `run` repairs confirmed differences.
    pub repair: bool,
    /// Differences kept per table and pass (> 0).
    pub max_differences: u32,
}

/// `[redis]`, resolved.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Redis URL, if weights are published.
    pub url: Option<Secret>,
    /// Prefix of every key walshift writes.
    pub key_prefix: String,
    /// CA certificate file for `rediss://` (none: the system's trust store).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key files for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

/// `[traffic]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrafficSettings {
    /// Desired share of reads on new (0..=100).
    pub read_new_percent: u8,
    /// Stages, strictly increasing, each 1..=100.
    pub stages: Vec<u8>,
    /// What a violated gate does while reads are on new.
    pub on_violation: OnViolation,
    /// Salt of the bucketing hash.
    pub salt: String,
    /// Where the operator wants writes.
    pub write: WriteTarget,
}

/// `[cutover]`, resolved.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CutoverSettings {
    /// Between two evaluations of the gates (> 0).
    #[serde(serialize_with = "crate::config::millis")]
    pub evaluate_interval: Duration,
    /// Lag gate, seconds (> 0).
    pub max_lag_seconds: f64,
    /// Lag gate, bytes (> 0).
    pub max_lag_bytes: u64,
    /// Verification gate: maximum age (> 0).
    #[serde(serialize_with = "crate::config::millis")]
    pub verify_max_age: Duration,
    /// Soak time at each stage (>= 0).
    #[serde(serialize_with = "crate::config::millis")]
    pub min_soak: Duration,
    /// Failing evaluations in a row before a violation counts (> 0).
    pub failure_threshold: u32,
    /// Lease lifetime (>= 1 s).
    #[serde(serialize_with = "crate::config::millis")]
    pub lease_ttl: Duration,
    /// Write cutover: longest time spent trying to lock the old tables.
    #[serde(serialize_with = "crate::config::millis")]
    pub fence_timeout: Duration,
    /// Write cutover: `lock_timeout` of one locking attempt.
    #[serde(serialize_with = "crate::config::millis")]
    pub fence_lock_timeout: Duration,
    /// Write cutover: longest wait for the applier to pass the barrier.
    #[serde(serialize_with = "crate::config::millis")]
    pub drain_timeout: Duration,
    /// Write cutover: bound of the final check.
    #[serde(serialize_with = "crate::config::millis")]
    pub final_check_timeout: Duration,
    /// Write cutover: target sequences are set this far past the source's.
    pub sequence_margin: i64,
}

/// The settings `walshift run` picks up on reload (SIGHUP or a change of
/// the file): `[traffic]` (but `salt`) and `[cutover]` (but
/// `lease_ttl_ms`). Everything else needs a restart.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reloadable {
    /// `[traffic]`.
    pub traffic: TrafficSettings,
    /// `[cutover]`.
    pub cutover: CutoverSettings,
}

impl ValidatedConfig {
    /// The reloadable part.
    pub fn reloadable(&self) -> Reloadable {
        Reloadable { traffic: self.traffic.clone(), cutover: self.cutover.clone() }
    }
}

/// Top-level sections that may change while `walshift run` runs.
pub const RELOADABLE_SECTIONS: [&str; 2] = ["traffic", "cutover"];

/// The keys of `new_text` that differ from `old_text` and may not change
/// while running (top-level sections other than `[traffic]` and
/// `[cutover]`, plus `traffic.salt` and `cutover.lease_ttl_ms`), compared
/// as parsed TOML (so comments and layout do not count). Both texts must
/// parse.
pub fn fixed_keys_changed(old_text: &str, new_text: &str) -> Result<Vec<String>, String> {
    let parse = |text: &str| text.parse::<toml::Table>().map_err(|e| e.message().to_owned());
    let (old, new) = (parse(old_text)?, parse(new_text)?);
    let mut changed = Vec::new();
    let mut sections: Vec<&String> = old.keys().chain(new.keys()).collect();
    sections.sort();
    sections.dedup();
    for section in sections {
        if RELOADABLE_SECTIONS.contains(&section.as_str()) {
            continue;
        }
        if old.get(section) != new.get(section) {
            changed.push(section.clone());
        }
    }
    for (section, key) in [("traffic", "salt"), ("cutover", "lease_ttl_ms")] {
        let get = |t: &toml::Table| t.get(section).and_then(|s| s.get(key)).cloned();
        if get(&old) != get(&new) {
            changed.push(format!("{section}.{key}"));
        }
    }
    Ok(changed)
}

/// Serializes a duration as whole milliseconds.
pub(crate) fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `[metrics]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Address of the HTTP endpoint.
    pub listen: SocketAddr,
    /// `/readyz` is not ready while lag exceeds this.
    pub ready_max_lag: Duration,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why the configuration was rejected (exit code 2). Messages start with the
/// file or the dotted key path and never include a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, a missing key or a value of the wrong type.
    #[error(
        "{}{}: {}{message}",
        .file.display(),
        position(*.line_column),
        key_label(.key.as_deref())
    )]
    Parse {
        /// The file (or a label for text that did not come from a file).
        file: PathBuf,
        /// 1-based line and column, when known.
        line_column: Option<(usize, usize)>,
        /// Dotted key path, when the error is inside a key's value.
        key: Option<String>,
        /// What toml and serde said. Serde echoes a value only when its type
        /// is wrong (a string where a number belongs) or for unknown enum
        /// variants; the secret-holding keys take any string, so their
        /// values are never echoed.
        message: String,
    },
    /// A `${VAR}` could not be substituted.
    #[error("{key}: {problem}")]
    Interpolation {
        /// Dotted key path of the string.
        key: String,
        /// What was wrong.
        problem: InterpolationError,
    },
    /// A value is out of bounds or malformed.
    #[error("{field}: {constraint}")]
    Invalid {
        /// Dotted key path.
        field: String,
        /// What the value must satisfy.
        constraint: String,
    },
    /// A connection URL did not parse.
    #[error("{field}: invalid connection string")]
    ConnInfo {
        /// `source.url` or `target.url`.
        field: String,
        /// Why (never includes the password).
        #[source]
        source: ConnInfoError,
    },
    /// A table name did not parse.
    #[error("{field}: invalid table name {text:?}")]
    TableName {
        /// `tables[i].source` or `tables[i].target`.
        field: String,
        /// The text given.
        text: String,
        /// Why.
        #[source]
        source: NameError,
    },
    /// `log.level` is not an `EnvFilter` directive.
    #[error("log.level: invalid log filter {value:?}")]
    LogLevel {
        /// The text given.
        value: String,
        /// Why.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
}

fn position(line_column: Option<(usize, usize)>) -> String {
    line_column.map(|(line, column)| format!(":{line}:{column}")).unwrap_or_default()
}

fn key_label(key: Option<&str>) -> String {
    key.map(|key| format!("{key}: ")).unwrap_or_default()
}

impl ConfigError {
    fn invalid(field: impl Into<String>, constraint: impl Into<String>) -> Self {
        ConfigError::Invalid { field: field.into(), constraint: constraint.into() }
    }
}

/// Why a `${VAR}` could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    /// The variable is not set.
    #[error("environment variable {name} is not set")]
    Unset {
        /// The variable.
        name: String,
    },
    /// `${` without `}`.
    #[error("unterminated \"${{\" at byte {offset} (missing \"}}\")")]
    Unterminated {
        /// Byte offset of the `$` in the string.
        offset: usize,
    },
    /// `${}` or `${A-B}`.
    #[error("invalid environment variable name {name:?} at byte {offset}")]
    InvalidName {
        /// The text between the braces.
        name: String,
        /// Byte offset of the `$` in the string.
        offset: usize,
    },
    /// A `$` followed by neither `{` nor `$`.
    #[error("\"$\" at byte {offset} must start \"${{NAME}}\" or be doubled (\"$$\")")]
    BareDollar {
        /// Byte offset of the `$` in the string.
        offset: usize,
    },
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

impl Config {
    /// Reads, interpolates (`${VAR}` from the process environment) and
    /// deserializes a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &process_env)
    }

    /// [`Config::load`] with an injected environment.
    pub fn load_with_env(
        path: impl AsRef<Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml_str(&text, path, env)
    }

    /// Parses config text; `file` labels error messages.
    pub fn from_toml_str(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let parse_error = |err: toml::de::Error, root: Option<&DeTable<'_>>| {
            let offset = err.span().map(|span| span.start);
            ConfigError::Parse {
                file: file.to_owned(),
                line_column: offset.map(|offset| line_column(text, offset)),
                key: offset.zip(root).and_then(|(offset, root)| key_path_at(root, offset)),
                message: err.message().trim_end().to_owned(),
            }
        };
        let mut root = DeTable::parse(text).map_err(|err| parse_error(err, None))?;
        interpolate_table(root.get_mut(), "", env)?;
        Config::deserialize(toml::de::Deserializer::from(root)).map_err(|err| {
            // Locate the key on a fresh parse (the first was consumed); spans
            // are those of the file text either way.
            let fresh = DeTable::parse(text).ok();
            parse_error(err, fresh.as_ref().map(Spanned::get_ref))
        })
    }

    /// Checks everything that can be checked without a database and
    /// resolves defaults. Connection strings fall back to the process's
    /// `PG*` variables as libpq does.
    pub fn validate(self) -> Result<ValidatedConfig, ConfigError> {
        self.validate_with_env(&process_env)
    }

    /// [`Config::validate`] with an injected environment (for `PG*`
    /// fallbacks of the connection strings).
    pub fn validate_with_env(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ValidatedConfig, ConfigError> {
        let Config {
            migration,
            source,
            target,
            tables,
            apply,
            backfill,
            verify,
            redis,
            traffic,
            cutover,
            metrics,
            log,
        } = self;

        let name = migration.name;
        if name.is_empty()
            || name.len() > MAX_MIGRATION_NAME_LEN
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ConfigError::invalid(
                "migration.name",
                format!(
                    "{name:?} must be 1 to {MAX_MIGRATION_NAME_LEN} characters of a-z, 0-9 and _"
                ),
            ));
        }
        let default_object_name = format!("{DEFAULT_NAME_PREFIX}{name}");

        // [source]
        let mut source_url = parse_url("source.url", &source.url, env)?;
        positive_opt("source.connect_timeout_ms", source.connect_timeout_ms)?;
        resolve_connect_timeout(&mut source_url, source.connect_timeout_ms);
        positive("source.receive_timeout_ms", source.receive_timeout_ms)?;
        source_url.receive_timeout = Some(Duration::from_millis(source.receive_timeout_ms));
        let slot = source.slot.unwrap_or_else(|| default_object_name.clone());
        check_object_name("source.slot", &slot, "replication slot")?;
        let publication = source.publication.unwrap_or(default_object_name);
        check_object_name("source.publication", &publication, "publication")?;
        positive("source.status_interval_ms", source.status_interval_ms)?;
        positive("source.reconnect_max_backoff_ms", source.reconnect_max_backoff_ms)?;
        positive("source.heartbeat_interval_ms", source.heartbeat_interval_ms)?;

        // [target]
        positive_opt("target.connect_timeout_ms", target.connect_timeout_ms)?;
        let (mut target_url, same_as_source) = match &target.url {
            Some(url) => (parse_url("target.url", url, env)?, false),
            None => {
                // Same database: start from the source's text so the
                // source's connect_timeout override does not leak over.
                (parse_url("source.url", &source.url, env)?, true)
            }
        };
        resolve_connect_timeout(&mut target_url, target.connect_timeout_ms);
        positive("target.receive_timeout_ms", target.receive_timeout_ms)?;
        target_url.receive_timeout = Some(Duration::from_millis(target.receive_timeout_ms));
        let same_database = same_as_source || target_url.same_database(&source_url);

        // [[tables]]
        if tables.is_empty() {
            return Err(ConfigError::invalid(
                "tables",
                "at least one [[tables]] entry is required",
            ));
        }
        let mut validated: Vec<ValidatedTable> = Vec::with_capacity(tables.len());
        for (i, table) in tables.into_iter().enumerate() {
            validated.push(validate_table(i, table, apply.truncate)?);
        }
        let mut sources: HashMap<&QualifiedName, usize> = HashMap::new();
        let mut targets: HashMap<&QualifiedName, usize> = HashMap::new();
        for (i, table) in validated.iter().enumerate() {
            if let Some(first) = sources.insert(&table.source, i) {
                return Err(ConfigError::invalid(
                    format!("tables[{i}].source"),
                    format!("{} is already mapped by tables[{first}]", table.source.readable()),
                ));
            }
            if let Some(first) = targets.insert(&table.target, i) {
                return Err(ConfigError::invalid(
                    format!("tables[{i}].target"),
                    format!("{} is already the target of tables[{first}]", table.target.readable()),
                ));
            }
        }
        if same_database {
            for (i, table) in validated.iter().enumerate() {
                if let Some(j) = validated.iter().position(|other| other.source == table.target) {
                    return Err(ConfigError::invalid(
                        format!("tables[{i}].target"),
                        format!(
                            "{} is the source of tables[{j}] in the same database; \
                             choose a shadow table (e.g. in another schema)",
                            table.target.readable()
                        ),
                    ));
                }
            }
        }

        // [apply]
        positive("apply.batch_max_rows", apply.batch_max_rows.into())?;
        let apply = ApplySettings {
            batch_max_rows: apply.batch_max_rows,
            batch_max_wait: Duration::from_millis(apply.batch_max_ms),
        };

        // [backfill]
        positive("backfill.chunk_rows_min", backfill.chunk_rows_min.into())?;
        positive("backfill.chunk_rows_max", backfill.chunk_rows_max.into())?;
        if backfill.chunk_rows_max < backfill.chunk_rows_min {
            return Err(ConfigError::invalid(
                "backfill.chunk_rows_max",
                format!(
                    "must be >= backfill.chunk_rows_min ({}), got {}",
                    backfill.chunk_rows_min, backfill.chunk_rows_max
                ),
            ));
        }
        positive("backfill.target_chunk_ms", backfill.target_chunk_ms)?;
        positive("backfill.max_lag_seconds", backfill.max_lag_seconds)?;
        positive_opt("backfill.max_rows_per_second", backfill.max_rows_per_second.map(u64::from))?;
        if !(1..=MAX_PARALLELISM).contains(&backfill.parallelism) {
            return Err(ConfigError::invalid(
                "backfill.parallelism",
                format!("must be between 1 and {MAX_PARALLELISM}, got {}", backfill.parallelism),
            ));
        }
        let backfill = BackfillSettings {
            chunk_rows_min: backfill.chunk_rows_min,
            chunk_rows_max: backfill.chunk_rows_max,
            target_chunk: Duration::from_millis(backfill.target_chunk_ms),
            max_lag: Duration::from_secs(backfill.max_lag_seconds),
            max_rows_per_second: backfill.max_rows_per_second,
            parallelism: backfill.parallelism,
        };

        // [verify]
        positive("verify.interval_seconds", verify.interval_seconds)?;
        positive("verify.full_pass_interval_seconds", verify.full_pass_interval_seconds)?;
        if verify.full_pass_interval_seconds < verify.interval_seconds {
            return Err(ConfigError::invalid(
                "verify.full_pass_interval_seconds",
                format!(
                    "must be >= verify.interval_seconds ({}), got {}",
                    verify.interval_seconds, verify.full_pass_interval_seconds
                ),
            ));
        }
        positive("verify.chunk_rows_min", verify.chunk_rows_min.into())?;
        positive("verify.chunk_rows_max", verify.chunk_rows_max.into())?;
        if verify.chunk_rows_max < verify.chunk_rows_min {
            return Err(ConfigError::invalid(
                "verify.chunk_rows_max",
                format!(
                    "must be >= verify.chunk_rows_min ({}), got {}",
                    verify.chunk_rows_min, verify.chunk_rows_max
                ),
            ));
        }
        positive("verify.target_chunk_ms", verify.target_chunk_ms)?;
        positive("verify.max_lag_seconds", verify.max_lag_seconds)?;
        positive_opt("verify.max_rows_per_second", verify.max_rows_per_second.map(u64::from))?;
        positive("verify.max_differences", verify.max_differences.into())?;
        let verify = VerifySettings {
            enabled: verify.enabled,
            interval: Duration::from_secs(verify.interval_seconds),
            full_pass_interval: Duration::from_secs(verify.full_pass_interval_seconds),
            chunk_rows_min: verify.chunk_rows_min,
            chunk_rows_max: verify.chunk_rows_max,
            target_chunk: Duration::from_millis(verify.target_chunk_ms),
            max_lag: Duration::from_secs(verify.max_lag_seconds),
            max_rows_per_second: verify.max_rows_per_second,
            repair: verify.repair,
            max_differences: verify.max_differences,
        };

        // [redis]
        if let Some(url) = &redis.url {
            let text = url.expose().trim();
            if text.is_empty() {
                return Err(ConfigError::invalid(
                    "redis.url",
                    "must not be empty (omit it to publish nothing)",
                ));
            }
            if !["redis://", "rediss://", "unix://", "redis+unix://"]
                .iter()
                .any(|scheme| text.starts_with(scheme))
            {
                return Err(ConfigError::invalid(
                    "redis.url",
                    "must start with redis://, rediss://, unix:// or redis+unix://",
                ));
            }
        }
        let key_prefix = redis.key_prefix.clone().unwrap_or_else(|| format!("walshift:{name}:"));
        if key_prefix.is_empty() {
            return Err(ConfigError::invalid("redis.key_prefix", "must not be empty"));
        }
        let (tls_ca_file, tls_client) = validate_redis_tls(&redis)?;
        let redis = RedisSettings { url: redis.url, key_prefix, tls_ca_file, tls_client };

        // [traffic], [cutover]
        let traffic = validate_traffic(traffic, &name, redis.url.is_some())?;
        let cutover = validate_cutover(&cutover)?;

        // [metrics]
        let listen = metrics.listen.trim().parse::<SocketAddr>().map_err(|_| {
            ConfigError::invalid(
                "metrics.listen",
                format!(
                    "invalid socket address {:?}; expected ip:port, e.g. {DEFAULT_METRICS_LISTEN}",
                    metrics.listen
                ),
            )
        })?;

        positive("metrics.ready_max_lag_seconds", metrics.ready_max_lag_seconds)?;

        // [log]
        if let Err(source) = tracing_subscriber::EnvFilter::try_new(&log.level) {
            return Err(ConfigError::LogLevel { value: log.level, source });
        }

        Ok(ValidatedConfig {
            migration_name: name,
            source: SourceSettings {
                url: source_url,
                slot,
                publication,
                status_interval: Duration::from_millis(source.status_interval_ms),
                reconnect_max_backoff: Duration::from_millis(source.reconnect_max_backoff_ms),
                heartbeat_interval: Duration::from_millis(source.heartbeat_interval_ms),
            },
            target: TargetSettings { url: target_url, same_as_source },
            tables: validated,
            apply,
            backfill,
            verify,
            redis,
            traffic,
            cutover,
            metrics: MetricsSettings {
                listen,
                ready_max_lag: Duration::from_secs(metrics.ready_max_lag_seconds),
            },
            log,
        })
    }
}

/// The CA file and the client certificate and key files of `[redis]`.
type RedisTlsFiles = (Option<PathBuf>, Option<(PathBuf, PathBuf)>);

/// `[redis] tls_*`: only with a `rediss://` URL; certificate and key together.
fn validate_redis_tls(redis: &RedisConfig) -> Result<RedisTlsFiles, ConfigError> {
    let tls = redis.url.as_ref().is_some_and(|u| u.expose().trim().starts_with("rediss://"));
    if redis.url.as_ref().is_some_and(|u| tls && u.expose().trim().ends_with("#insecure")) {
        return Err(ConfigError::invalid(
            "redis.url",
            "#insecure (no certificate verification) is not supported: give the CA that signs \
             the server's certificate in redis.tls_ca_file",
        ));
    }
    for (key, value) in [
        ("redis.tls_ca_file", &redis.tls_ca_file),
        ("redis.tls_cert_file", &redis.tls_cert_file),
        ("redis.tls_key_file", &redis.tls_key_file),
    ] {
        if value.is_some() && !tls {
            return Err(ConfigError::invalid(key, "needs a rediss:// redis.url (TLS)"));
        }
    }
    let client = match (&redis.tls_cert_file, &redis.tls_key_file) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "redis.tls_key_file",
                "must be set with tls_cert_file",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "redis.tls_cert_file",
                "must be set with tls_key_file",
            ));
        }
    };
    Ok((redis.tls_ca_file.clone(), client))
}
fn validate_traffic(
    traffic: TrafficConfig,
    migration: &str,
    have_redis: bool,
) -> Result<TrafficSettings, ConfigError> {
    let percent = |field: &str, value: u64| -> Result<u8, ConfigError> {
        u8::try_from(value).ok().filter(|p| *p <= 100).ok_or_else(|| {
            ConfigError::invalid(field, format!("must be a percentage from 0 to 100, got {value}"))
        })
    };
    let read_new_percent = percent("traffic.read_new_percent", traffic.read_new_percent)?;
    if read_new_percent > 0 && !have_redis {
        return Err(ConfigError::invalid(
            "traffic.read_new_percent",
            format!(
                "asks for {read_new_percent} % of reads on new, but there is no [redis] url to \
                 publish the split to; set [redis] url or read_new_percent = 0"
            ),
        ));
    }
    if traffic.write == WriteTarget::New && !have_redis {
        return Err(ConfigError::invalid(
            "traffic.write",
            "asks for writes on new, but there is no [redis] url: the write cutover is run by the \
             controller; set [redis] url or write = \"old\"",
        ));
    }
    if traffic.write == WriteTarget::New && read_new_percent < 100 {
        return Err(ConfigError::invalid(
            "traffic.write",
            format!(
                "asks for writes on new while read_new_percent = {read_new_percent}: the write \
                 cutover needs every read on new first; set read_new_percent = 100"
            ),
        ));
    }
    if traffic.stages.is_empty() {
        return Err(ConfigError::invalid("traffic.stages", "must list at least one stage"));
    }
    let mut stages = Vec::with_capacity(traffic.stages.len());
    for (i, &stage) in traffic.stages.iter().enumerate() {
        let stage = percent(&format!("traffic.stages[{i}]"), stage)?;
        if stage == 0 {
            return Err(ConfigError::invalid(
                format!("traffic.stages[{i}]"),
                "must be > 0 (0 % is where every migration starts)",
            ));
        }
        if let Some(&previous) = stages.last() {
            if stage <= previous {
                return Err(ConfigError::invalid(
                    "traffic.stages",
                    format!(
                        "must be strictly increasing, got {stage} after {previous} in {:?}",
                        traffic.stages
                    ),
                ));
            }
        }
        stages.push(stage);
    }
    let salt = traffic.salt.unwrap_or_else(|| migration.to_owned());
    if salt.is_empty() {
        return Err(ConfigError::invalid("traffic.salt", "must not be empty"));
    }
    Ok(TrafficSettings {
        read_new_percent,
        stages,
        on_violation: traffic.on_violation,
        salt,
        write: traffic.write,
    })
}

fn validate_cutover(cutover: &CutoverConfig) -> Result<CutoverSettings, ConfigError> {
    positive("cutover.evaluate_interval_ms", cutover.evaluate_interval_ms)?;
    let seconds = |field: &str, value: f64, zero_ok: bool| -> Result<Duration, ConfigError> {
        if !value.is_finite() || value < 0.0 || (!zero_ok && value == 0.0) || value > 1e9 {
            let bound = if zero_ok { ">= 0" } else { "> 0" };
            return Err(ConfigError::invalid(
                field,
                format!("must be a number of seconds {bound}"),
            ));
        }
        Ok(Duration::from_secs_f64(value))
    };
    seconds("cutover.max_lag_seconds", cutover.max_lag_seconds, false)?;
    positive("cutover.max_lag_bytes", cutover.max_lag_bytes)?;
    positive("cutover.verify_max_age_seconds", cutover.verify_max_age_seconds)?;
    let min_soak = seconds("cutover.min_soak_seconds", cutover.min_soak_seconds, true)?;
    positive("cutover.failure_threshold", cutover.failure_threshold.into())?;
    if cutover.lease_ttl_ms < 1_000 {
        return Err(ConfigError::invalid(
            "cutover.lease_ttl_ms",
            format!("must be >= 1000 (renewed every third of it), got {}", cutover.lease_ttl_ms),
        ));
    }
    positive("cutover.fence_timeout_ms", cutover.fence_timeout_ms)?;
    positive("cutover.fence_lock_timeout_ms", cutover.fence_lock_timeout_ms)?;
    positive("cutover.drain_timeout_ms", cutover.drain_timeout_ms)?;
    positive("cutover.final_check_timeout_ms", cutover.final_check_timeout_ms)?;
    if cutover.fence_lock_timeout_ms > cutover.fence_timeout_ms {
        return Err(ConfigError::invalid(
            "cutover.fence_lock_timeout_ms",
            format!(
                "must be <= cutover.fence_timeout_ms ({}), got {}",
                cutover.fence_timeout_ms, cutover.fence_lock_timeout_ms
            ),
        ));
    }
    if cutover.sequence_margin < 0 {
        return Err(ConfigError::invalid(
            "cutover.sequence_margin",
            format!("must be >= 0, got {}", cutover.sequence_margin),
        ));
    }
    if cutover.evaluate_interval_ms > cutover.lease_ttl_ms {
        return Err(ConfigError::invalid(
            "cutover.evaluate_interval_ms",
            format!(
                "must be <= cutover.lease_ttl_ms ({}), got {}",
                cutover.lease_ttl_ms, cutover.evaluate_interval_ms
            ),
        ));
    }
    Ok(CutoverSettings {
        evaluate_interval: Duration::from_millis(cutover.evaluate_interval_ms),
        max_lag_seconds: cutover.max_lag_seconds,
        max_lag_bytes: cutover.max_lag_bytes,
        verify_max_age: Duration::from_secs(cutover.verify_max_age_seconds),
        min_soak,
        failure_threshold: cutover.failure_threshold,
        lease_ttl: Duration::from_millis(cutover.lease_ttl_ms),
        fence_timeout: Duration::from_millis(cutover.fence_timeout_ms),
        fence_lock_timeout: Duration::from_millis(cutover.fence_lock_timeout_ms),
        drain_timeout: Duration::from_millis(cutover.drain_timeout_ms),
        final_check_timeout: Duration::from_millis(cutover.final_check_timeout_ms),
        sequence_margin: cutover.sequence_margin,
    })
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn parse_url(
    field: &str,
    url: &Secret,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ConnInfo, ConfigError> {
    if url.expose().trim().is_empty() {
        return Err(ConfigError::invalid(field, "must not be empty"));
    }
    ConnInfo::parse_with_env(url.expose(), env)
        .map_err(|source| ConfigError::ConnInfo { field: field.to_owned(), source })
}

/// Config value if given, else the URL's `connect_timeout`, else the default.
fn resolve_connect_timeout(url: &mut ConnInfo, config_ms: Option<u64>) {
    url.connect_timeout = match config_ms {
        Some(ms) => Some(Duration::from_millis(ms)),
        None => url.connect_timeout.or(Some(Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS))),
    };
}

fn positive(field: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 { Err(ConfigError::invalid(field, "must be > 0")) } else { Ok(()) }
}

fn positive_opt(field: &str, value: Option<u64>) -> Result<(), ConfigError> {
    value.map_or(Ok(()), |value| positive(field, value))
}

/// Slot and publication names: `[a-z0-9_]`, 1 to 63 bytes (Postgres's rule
/// for slot names, applied to publications too so both need no quoting
/// anywhere, replication commands included).
fn check_object_name(field: &str, value: &str, what: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_IDENTIFIER_BYTES
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!(
                "{value:?} is not a valid {what} name: use 1 to {MAX_IDENTIFIER_BYTES} characters of a-z, 0-9 and _"
            ),
        ))
    }
}

fn check_column_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        Err(ConfigError::invalid(field, "column name must not be empty"))
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        Err(ConfigError::invalid(
            field,
            format!(
                "column name is {} bytes long; postgres would truncate it to {MAX_IDENTIFIER_BYTES}",
                name.len()
            ),
        ))
    } else if name.contains('\0') {
        Err(ConfigError::invalid(field, "column name must not contain a NUL character"))
    } else {
        Ok(())
    }
}

fn validate_table(
    i: usize,
    table: TableConfig,
    default_truncate: bool,
) -> Result<ValidatedTable, ConfigError> {
    let name = |field: &str, text: String| {
        QualifiedName::parse(&text).map_err(|source| ConfigError::TableName {
            field: format!("tables[{i}].{field}"),
            text,
            source,
        })
    };
    let source = name("source", table.source)?;
    let target = name("target", table.target)?;

    if let Some(key) = &table.key {
        if key.is_empty() {
            return Err(ConfigError::invalid(
                format!("tables[{i}].key"),
                "must list at least one column (omit key to use the primary key)",
            ));
        }
        for (k, column) in key.iter().enumerate() {
            let field = format!("tables[{i}].key[{k}]");
            check_column_name(&field, column)?;
            if key[..k].contains(column) {
                return Err(ConfigError::invalid(
                    field,
                    format!("column {column:?} is listed twice"),
                ));
            }
        }
    }

    for column in &table.columns {
        let field = format!("tables[{i}].columns.{}", toml_key(&column.target));
        check_column_name(&field, &column.target)?;
        if column.expr.trim().is_empty() {
            return Err(ConfigError::invalid(
                field,
                "expression must not be empty (use the source column name to copy it)",
            ));
        }
    }

    if let Some(filter) = &table.filter {
        if filter.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("tables[{i}].filter"),
                "must not be empty (omit filter to copy every row)",
            ));
        }
    }

    Ok(ValidatedTable {
        source,
        target,
        key: table.key,
        columns: table.columns,
        filter: table.filter,
        truncate: table.truncate.unwrap_or(default_truncate),
    })
}

// ---------------------------------------------------------------------------
// ${VAR} interpolation and error locations on the spanned TOML tree
// ---------------------------------------------------------------------------

/// A key as it would be written in a dotted TOML path.
fn toml_key(key: &str) -> Cow<'_, str> {
    let bare =
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { Cow::Borrowed(key) } else { Cow::Owned(format!("{key:?}")) }
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() { toml_key(key).into_owned() } else { format!("{path}.{}", toml_key(key)) }
}

fn interpolate_table(
    table: &mut DeTable<'_>,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (key, value) in table.iter_mut() {
        interpolate_value(value.get_mut(), &join_key(path, key.get_ref()), env)?;
    }
    Ok(())
}

fn interpolate_value(
    value: &mut DeValue<'_>,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        DeValue::String(text) => {
            let replaced = interpolate(text, env)
                .map_err(|problem| ConfigError::Interpolation { key: path.to_owned(), problem })?;
            if let Some(replaced) = replaced {
                *text = Cow::Owned(replaced);
            }
        }
        DeValue::Table(table) => interpolate_table(table, path, env)?,
        DeValue::Array(array) => {
            for (i, item) in array.iter_mut().enumerate() {
                interpolate_value(item.get_mut(), &format!("{path}[{i}]"), env)?;
            }
        }
        DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => {}
    }
    Ok(())
}

/// Substitutes `${NAME}` and `$$`; `None` when `text` has no `$`.
pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, InterpolationError> {
    if !text.contains('$') {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        let offset = text.len() - rest.len() + dollar;
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(InterpolationError::Unterminated { offset })?;
            let name = &body[..end];
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(InterpolationError::InvalidName { name: name.to_owned(), offset });
            }
            let value =
                env(name).ok_or_else(|| InterpolationError::Unset { name: name.to_owned() })?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            return Err(InterpolationError::BareDollar { offset });
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// The dotted path of the deepest key or value whose source span contains
/// `offset` (toml reports unknown keys at the key, type errors at the value,
/// missing keys at the table header).
fn key_path_at(root: &DeTable<'_>, offset: usize) -> Option<String> {
    find_in_table(root, offset, "")
}

fn find_in_table(table: &DeTable<'_>, offset: usize, path: &str) -> Option<String> {
    for (key, value) in table.iter() {
        let child = join_key(path, key.get_ref());
        if key.span().contains(&offset) {
            return Some(child);
        }
        if let Some(found) = find_in_value(value, offset, &child) {
            return Some(found);
        }
    }
    None
}

fn find_in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &str) -> Option<String> {
    let deeper = match value.get_ref() {
        DeValue::Table(table) => find_in_table(table, offset, path),
        DeValue::Array(array) => array
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_in_value(item, offset, &format!("{path}[{i}]"))),
        _ => None,
    };
    deeper.or_else(|| value.span().contains(&offset).then(|| path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../config/walshift.example.toml");
    const DEV: &str = include_str!("../config/dev.toml");

    const MINIMAL: &str = r#"
[migration]
name = "billing"

[source]
url = "postgres://walshift:hunter2@db.example.com/app"

[[tables]]
source = "public.a"
target = "shadow.a"
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("test.toml"), &no_env)
    }

    fn validate(text: &str) -> Result<ValidatedConfig, ConfigError> {
        parse(text)?.validate_with_env(&no_env)
    }

    /// The message as the binary prints it: the error and its causes.
    fn chain(err: &dyn std::error::Error) -> String {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    fn err_text(result: Result<impl fmt::Debug, ConfigError>) -> String {
        chain(&result.expect_err("expected an error"))
    }

    #[test]
    fn example_file_parses_and_validates() {
        let config = Config::from_toml_str(EXAMPLE, Path::new("walshift.example.toml"), &no_env)
            .unwrap_or_else(|e| panic!("{}", chain(&e)));
        let cfg = config.validate_with_env(&no_env).unwrap_or_else(|e| panic!("{}", chain(&e)));
        assert_eq!(cfg.migration_name, "billing_v2");
        assert_eq!(cfg.source.slot, "walshift_billing_v2");
        assert_eq!(cfg.source.publication, "walshift_billing_v2");
        assert!(cfg.target.same_as_source);
        let names: Vec<String> = cfg.tables.iter().map(|t| t.source.readable()).collect();
        assert_eq!(names, ["public.organizations", "public.usage_events", "public.invoices"]);
        assert!(cfg.tables.iter().all(|t| t.target.raw_schema() == "billing_new"));

        let usage = &cfg.tables[1];
        let columns: Vec<(&str, &str, bool)> =
            usage.columns.iter().map(|c| (c.target.as_str(), c.expr.as_str(), c.verify)).collect();
        // Declaration order, not alphabetical.
        assert_eq!(
            columns,
            [
                ("id", "id", true),
                ("organization_id", "org_id", true),
                ("event_type", "event_type", true),
                ("quantity", "quantity::numeric(20,6)", true),
                ("amount", "amount_cents / 100.0", true),
                ("occurred_at", "occurred_at", true),
                ("processing_status", "'migrated'", true),
                ("processed_at", "now()", false),
            ]
        );
        assert_eq!(usage.key.as_deref(), Some(&["id".to_owned()][..]));
        assert!(usage.filter.as_deref().is_some_and(|f| f.contains("event_type")));
        assert!(cfg.tables[0].columns.iter().any(|c| c.expr == "lower(email)"));
        assert!(!cfg.tables[2].truncate);
        assert!(cfg.tables[0].truncate);
    }

    #[test]
    fn dev_file_parses_and_validates() {
        let cfg = Config::from_toml_str(DEV, Path::new("dev.toml"), &no_env)
            .and_then(|c| c.validate_with_env(&no_env))
            .unwrap_or_else(|e| panic!("{}", chain(&e)));
        assert_eq!(cfg.source.url.port, 5432);
        assert!(cfg.redis.url.is_some());
    }

    #[test]
    fn defaults() {
        let cfg = validate(MINIMAL).unwrap();
        assert_eq!(cfg.migration_name, "billing");
        assert_eq!(cfg.source.slot, "walshift_billing");
        assert_eq!(cfg.source.publication, "walshift_billing");
        assert_eq!(cfg.source.status_interval, Duration::from_millis(DEFAULT_STATUS_INTERVAL_MS));
        assert_eq!(
            cfg.source.reconnect_max_backoff,
            Duration::from_millis(DEFAULT_RECONNECT_MAX_BACKOFF_MS)
        );
        assert_eq!(
            cfg.source.url.connect_timeout,
            Some(Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS))
        );
        assert!(cfg.target.same_as_source);
        assert_eq!(cfg.target.url, cfg.source.url);
        let table = &cfg.tables[0];
        assert_eq!(table.source, QualifiedName::new("public", "a"));
        assert_eq!(table.target, QualifiedName::new("shadow", "a"));
        assert_eq!(table.key, None);
        assert!(table.columns.is_empty());
        assert_eq!(table.filter, None);
        assert_eq!(table.truncate, DEFAULT_TRUNCATE);
        assert_eq!(
            cfg.apply,
            ApplySettings {
                batch_max_rows: DEFAULT_BATCH_MAX_ROWS,
                batch_max_wait: Duration::from_millis(DEFAULT_BATCH_MAX_MS),
            }
        );
        assert_eq!(
            cfg.backfill,
            BackfillSettings {
                chunk_rows_min: DEFAULT_CHUNK_ROWS_MIN,
                chunk_rows_max: DEFAULT_CHUNK_ROWS_MAX,
                target_chunk: Duration::from_millis(DEFAULT_TARGET_CHUNK_MS),
                max_lag: Duration::from_secs(DEFAULT_MAX_LAG_SECONDS),
                max_rows_per_second: None,
                parallelism: DEFAULT_PARALLELISM,
            }
        );
        assert_eq!(cfg.redis.url, None);
        assert_eq!(cfg.redis.key_prefix, "walshift:billing:");
        assert_eq!(cfg.metrics.listen, DEFAULT_METRICS_LISTEN.parse::<SocketAddr>().unwrap());
        assert_eq!(cfg.log, LogConfig::default());
    }

    #[test]
    fn connect_timeouts_resolve() {
        let text = MINIMAL.replace(
            "/app\"",
            "/app?connect_timeout=5\"\nconnect_timeout_ms = 1500\n[target]\nurl = \"host=t connect_timeout=7\"",
        );
        let cfg = validate(&text).unwrap();
        assert_eq!(cfg.source.url.connect_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(cfg.target.url.connect_timeout, Some(Duration::from_secs(7)));
        assert!(!cfg.target.same_as_source);
    }

    type Mutation = fn(&mut Config);

    #[test]
    fn validation_errors() {
        let cases: &[(Mutation, &str)] = &[
            (
                |c| c.traffic.write = WriteTarget::New,
                "traffic.write: asks for writes on new, but there is no [redis] url: the write \
                 cutover is run by the controller; set [redis] url or write = \"old\"",
            ),
            (|c| c.cutover.drain_timeout_ms = 0, "cutover.drain_timeout_ms: must be > 0"),
            (
                |c| c.cutover.fence_lock_timeout_ms = 6_000,
                "cutover.fence_lock_timeout_ms: must be <= cutover.fence_timeout_ms (5000), got 6000",
            ),
            (|c| c.cutover.sequence_margin = -1, "cutover.sequence_margin: must be >= 0, got -1"),
            (
                |c| c.migration.name = String::new(),
                r#"migration.name: "" must be 1 to 40 characters of a-z, 0-9 and _"#,
            ),
            (
                |c| c.migration.name = "Billing".into(),
                r#"migration.name: "Billing" must be 1 to 40 characters of a-z, 0-9 and _"#,
            ),
            (
                |c| c.migration.name = "a".repeat(41),
                "migration.name: \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\" must be 1 to 40 characters of a-z, 0-9 and _",
            ),
            (|c| c.source.url = Secret::new(" "), "source.url: must not be empty"),
            (
                |c| c.source.url = Secret::new("postgres://u:hunter2@h:99999/db"),
                r#"source.url: invalid connection string: invalid port number: "99999" in the URL"#,
            ),
            (
                |c| c.source.url = Secret::new("host=h password=hunter2 bogus=1"),
                r#"source.url: invalid connection string: invalid connection option "bogus""#,
            ),
            (
                |c| c.target.url = Some(Secret::new("postgres://u:hunter2@h/db?sslmode=sometimes")),
                "target.url: invalid connection string: invalid sslmode value: \"sometimes\" in the URL; expected disable, allow, prefer, require, verify-ca or verify-full",
            ),
            (
                |c| c.source.slot = Some("my-slot".into()),
                r#"source.slot: "my-slot" is not a valid replication slot name: use 1 to 63 characters of a-z, 0-9 and _"#,
            ),
            (
                |c| c.source.slot = Some("s".repeat(64)),
                "source.slot: \"ssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssss\" is not a valid replication slot name: use 1 to 63 characters of a-z, 0-9 and _",
            ),
            (
                |c| c.source.publication = Some("Pub".into()),
                r#"source.publication: "Pub" is not a valid publication name: use 1 to 63 characters of a-z, 0-9 and _"#,
            ),
            (|c| c.source.status_interval_ms = 0, "source.status_interval_ms: must be > 0"),
            (|c| c.source.connect_timeout_ms = Some(0), "source.connect_timeout_ms: must be > 0"),
            (|c| c.source.receive_timeout_ms = 0, "source.receive_timeout_ms: must be > 0"),
            (|c| c.target.receive_timeout_ms = 0, "target.receive_timeout_ms: must be > 0"),
            (
                |c| c.source.reconnect_max_backoff_ms = 0,
                "source.reconnect_max_backoff_ms: must be > 0",
            ),
            (|c| c.target.connect_timeout_ms = Some(0), "target.connect_timeout_ms: must be > 0"),
            (|c| c.tables.clear(), "tables: at least one [[tables]] entry is required"),
            (
                |c| c.tables[0].source = "a".into(),
                r#"tables[0].source: invalid table name "a": not schema-qualified; write schema.table, e.g. public.a"#,
            ),
            (
                |c| c.tables[0].target = r#"x."y"#.into(),
                r#"tables[0].target: invalid table name "x.\"y": unterminated quoted identifier starting at byte 2"#,
            ),
            (
                |c| c.tables[0].target = "public.a".into(),
                "tables[0].target: public.a is the source of tables[0] in the same database; choose a shadow table (e.g. in another schema)",
            ),
            (
                |c| c.tables[0].key = Some(vec![]),
                "tables[0].key: must list at least one column (omit key to use the primary key)",
            ),
            (
                |c| c.tables[0].key = Some(vec!["id".into(), String::new()]),
                "tables[0].key[1]: column name must not be empty",
            ),
            (
                |c| c.tables[0].key = Some(vec!["id".into(), "id".into()]),
                r#"tables[0].key[1]: column "id" is listed twice"#,
            ),
            (
                |c| {
                    c.tables[0].columns = vec![ColumnMapping {
                        target: "Total Cents".into(),
                        expr: " ".into(),
                        verify: true,
                    }];
                },
                r#"tables[0].columns."Total Cents": expression must not be empty (use the source column name to copy it)"#,
            ),
            (
                |c| {
                    c.tables[0].columns = vec![ColumnMapping {
                        target: "x".repeat(64),
                        expr: "1".into(),
                        verify: true,
                    }];
                },
                "tables[0].columns.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx: column name is 64 bytes long; postgres would truncate it to 63",
            ),
            (
                |c| c.tables[0].filter = Some("".into()),
                "tables[0].filter: must not be empty (omit filter to copy every row)",
            ),
            (
                |c| {
                    let t = c.tables[0].clone();
                    c.tables.push(TableConfig { target: "shadow.b".into(), ..t });
                },
                "tables[1].source: public.a is already mapped by tables[0]",
            ),
            (
                |c| {
                    let t = c.tables[0].clone();
                    c.tables.push(TableConfig { source: "public.b".into(), ..t });
                },
                "tables[1].target: shadow.a is already the target of tables[0]",
            ),
            (
                |c| {
                    let t = c.tables[0].clone();
                    c.tables.push(TableConfig {
                        source: "shadow.a".into(),
                        target: "shadow.b".into(),
                        ..t
                    });
                },
                "tables[0].target: shadow.a is the source of tables[1] in the same database; choose a shadow table (e.g. in another schema)",
            ),
            (|c| c.apply.batch_max_rows = 0, "apply.batch_max_rows: must be > 0"),
            (|c| c.backfill.chunk_rows_min = 0, "backfill.chunk_rows_min: must be > 0"),
            (|c| c.backfill.chunk_rows_max = 0, "backfill.chunk_rows_max: must be > 0"),
            (
                |c| {
                    c.backfill.chunk_rows_min = 10;
                    c.backfill.chunk_rows_max = 9;
                },
                "backfill.chunk_rows_max: must be >= backfill.chunk_rows_min (10), got 9",
            ),
            (|c| c.backfill.target_chunk_ms = 0, "backfill.target_chunk_ms: must be > 0"),
            (|c| c.backfill.max_lag_seconds = 0, "backfill.max_lag_seconds: must be > 0"),
            (
                |c| c.backfill.max_rows_per_second = Some(0),
                "backfill.max_rows_per_second: must be > 0",
            ),
            (
                |c| c.backfill.parallelism = 0,
                "backfill.parallelism: must be between 1 and 64, got 0",
            ),
            (
                |c| c.backfill.parallelism = 65,
                "backfill.parallelism: must be between 1 and 64, got 65",
            ),
            (
                |c| c.redis.url = Some(Secret::new("")),
                "redis.url: must not be empty (omit it to publish nothing)",
            ),
            (
                |c| c.redis.url = Some(Secret::new("http://:hunter2@r")),
                "redis.url: must start with redis://, rediss://, unix:// or redis+unix://",
            ),
            (|c| c.redis.key_prefix = Some(String::new()), "redis.key_prefix: must not be empty"),
            (
                |c| {
                    c.redis.url = Some(Secret::new("redis://r:6379"));
                    c.redis.tls_ca_file = Some("ca.pem".into());
                },
                "redis.tls_ca_file: needs a rediss:// redis.url (TLS)",
            ),
            (
                |c| {
                    c.redis.url = Some(Secret::new("rediss://r:6379"));
                    c.redis.tls_cert_file = Some("client.pem".into());
                },
                "redis.tls_key_file: must be set with tls_cert_file",
            ),
            (
                |c| c.redis.url = Some(Secret::new("rediss://:hunter2@r:6379/0#insecure")),
                "redis.url: #insecure (no certificate verification) is not supported: give the \
                 CA that signs the server's certificate in redis.tls_ca_file",
            ),
            (
                |c| c.metrics.listen = "localhost:9187".into(),
                r#"metrics.listen: invalid socket address "localhost:9187"; expected ip:port, e.g. 127.0.0.1:9187"#,
            ),
            (
                |c| c.metrics.listen = "127.0.0.1".into(),
                r#"metrics.listen: invalid socket address "127.0.0.1"; expected ip:port, e.g. 127.0.0.1:9187"#,
            ),
        ];
        let base = parse(MINIMAL).unwrap();
        for (mutate, expected) in cases {
            let mut config = base.clone();
            mutate(&mut config);
            let text = err_text(config.validate_with_env(&no_env));
            assert_eq!(text, *expected);
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn log_level_is_checked() {
        let mut config = parse(MINIMAL).unwrap();
        config.log.level = "walshift=debug,info".into();
        assert!(config.clone().validate_with_env(&no_env).is_ok());
        config.log.level = "walshift=loud".into();
        let text = err_text(config.validate_with_env(&no_env));
        assert!(text.starts_with(r#"log.level: invalid log filter "walshift=loud": "#), "{text}");
    }

    #[test]
    fn target_may_equal_source_name_in_another_database() {
        let text = format!("{MINIMAL}\n[target]\nurl = \"postgres://u@other-host/app\"\n")
            .replace("target = \"shadow.a\"", "target = \"public.a\"");
        let cfg = validate(&text).unwrap();
        assert_eq!(cfg.tables[0].target, cfg.tables[0].source);
        assert!(!cfg.target.same_as_source);
    }

    #[test]
    fn parse_errors_have_file_position_and_key_path() {
        let cases: &[(&str, &str)] = &[
            (
                "[migration]\nname = \"x\"\nbogus = 1\n",
                "test.toml:3:1: migration.bogus: unknown field `bogus`, expected `name`",
            ),
            (
                "surprise = 1\n",
                "test.toml:1:1: surprise: unknown field `surprise`, expected one of `migration`, \
                 `source`, `target`, `tables`, `apply`, `backfill`, `verify`, `redis`, `traffic`, \
                 `cutover`, `metrics`, `log`",
            ),
            (
                &format!("{MINIMAL}[backfill]\nchunk_rows = 5\n"),
                "test.toml:12:1: backfill.chunk_rows: unknown field `chunk_rows`, expected one of \
                 `chunk_rows_min`, `chunk_rows_max`, `target_chunk_ms`, `max_lag_seconds`, \
                 `max_rows_per_second`, `parallelism`",
            ),
            (
                &format!(
                    "{MINIMAL}\n[[tables]]\nsource = \"public.b\"\ntarget = \"shadow.b\"\nfiltre = \"x\"\n"
                ),
                "test.toml:15:1: tables[1].filtre: unknown field `filtre`, expected one of \
                 `source`, `target`, `key`, `columns`, `filter`, `truncate`",
            ),
            (
                &format!("{MINIMAL}columns = {{ a = {{ expr = \"a\", verfy = false }} }}\n"),
                "test.toml:11:31: tables[0].columns.a.verfy: unknown field `verfy`, expected `expr` or `verify`",
            ),
            (
                &format!("{MINIMAL}columns = {{ a = 5 }}\n"),
                "test.toml:11:17: tables[0].columns.a: invalid type: integer `5`, expected a SQL \
                 expression string or a table { expr = \"...\", verify = false }",
            ),
            (
                &format!("{MINIMAL}[apply]\nbatch_max_rows = \"many\"\n"),
                "test.toml:12:18: apply.batch_max_rows: invalid type: string \"many\", expected u32",
            ),
            (
                &format!("{MINIMAL}[apply]\nbatch_max_rows = -1\n"),
                "test.toml:12:18: apply.batch_max_rows: invalid value: integer `-1`, expected u32",
            ),
            (
                &format!("{MINIMAL}[log]\nformat = \"xml\"\n"),
                "test.toml:12:10: log.format: unknown variant `xml`, expected `human` or `json`",
            ),
            (
                "[migration]\nname = \"x\"\n[source]\nslot = \"s\"\n",
                "test.toml:3:1: source: missing field `url`",
            ),
            (
                "[migration]\nname = \n",
                "test.toml:2:8: string values must be quoted, expected literal string",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(err_text(parse(text)), *expected, "{text}");
        }
    }

    #[test]
    fn missing_file() {
        let err = Config::load("/nonexistent/walshift.toml").unwrap_err();
        assert_eq!(
            chain(&err),
            "cannot read config file /nonexistent/walshift.toml: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn env_interpolation() {
        const VARS: &[(&str, &str)] = &[("PGPASSWORD", "hunter2"), ("HOST", "db"), ("EMPTY", "")];
        let env = env_of(VARS);
        let cases: &[(&str, Result<&str, InterpolationError>)] = &[
            ("plain", Ok("plain")),
            ("postgres://u:${PGPASSWORD}@${HOST}/app", Ok("postgres://u:hunter2@db/app")),
            ("${HOST}${HOST}", Ok("dbdb")),
            ("a${EMPTY}b", Ok("ab")),
            ("cost $$5 and $${HOST}", Ok("cost $5 and ${HOST}")),
            ("$$$$", Ok("$$")),
            ("${NOPE}", Err(InterpolationError::Unset { name: "NOPE".into() })),
            ("x ${HOST", Err(InterpolationError::Unterminated { offset: 2 })),
            ("${}", Err(InterpolationError::InvalidName { name: String::new(), offset: 0 })),
            ("${A-B}", Err(InterpolationError::InvalidName { name: "A-B".into(), offset: 0 })),
            ("${1A}", Err(InterpolationError::InvalidName { name: "1A".into(), offset: 0 })),
            ("price $5", Err(InterpolationError::BareDollar { offset: 6 })),
            ("end$", Err(InterpolationError::BareDollar { offset: 3 })),
        ];
        for (text, expected) in cases {
            let got = interpolate(text, &env).map(|v| v.unwrap_or_else(|| text.to_string()));
            assert_eq!(got, expected.clone().map(str::to_owned), "{text}");
        }
    }

    #[test]
    fn env_interpolation_in_files() {
        const VARS: &[(&str, &str)] =
            &[("PGPASSWORD", "hunter2"), ("SCHEMA", "shadow"), ("ROWS", "7")];
        let env = env_of(VARS);
        let text = MINIMAL
            .replace("walshift:hunter2@", "walshift:${PGPASSWORD}@")
            .replace("\"shadow.a\"", "\"${SCHEMA}.a\"\nkey = [\"id\", \"${SCHEMA}_id\"]");
        let config = Config::from_toml_str(&text, Path::new("t.toml"), &env).unwrap();
        assert_eq!(config.source.url.expose(), "postgres://walshift:hunter2@db.example.com/app");
        assert_eq!(config.tables[0].target, "shadow.a");
        assert_eq!(config.tables[0].key.as_deref(), Some(&["id".into(), "shadow_id".into()][..]));
        // Spans survive interpolation: later errors still point into the file.
        let bad = format!("{text}[apply]\nbatch_max_rows = \"${{ROWS}}\"\n");
        assert_eq!(
            err_text(Config::from_toml_str(&bad, Path::new("t.toml"), &env)),
            "t.toml:13:18: apply.batch_max_rows: invalid type: string \"7\", expected u32"
        );

        let cases: &[(&str, &str)] = &[
            ("walshift:${PGPASSWORD}@", "source.url: environment variable PGPASSWORD is not set"),
            ("walshift:${PGPASSWORD@", r#"source.url: unterminated "${" at byte 20 (missing "}")"#),
            (
                "walshift:$PGPASSWORD@",
                r#"source.url: "$" at byte 20 must start "${NAME}" or be doubled ("$$")"#,
            ),
        ];
        for (replacement, expected) in cases {
            let text = MINIMAL.replace("walshift:hunter2@", replacement);
            assert_eq!(err_text(parse(&text)), *expected, "{replacement}");
        }
        let text = MINIMAL.replace("\"shadow.a\"", "\"shadow.a\"\nkey = [\"id\", \"${COL}\"]");
        assert_eq!(err_text(parse(&text)), "tables[0].key[1]: environment variable COL is not set");
        let text = format!("{MINIMAL}columns = {{ \"Total $\" = \"${{X}}\" }}\n");
        assert_eq!(
            err_text(parse(&text)),
            r#"tables[0].columns."Total $": environment variable X is not set"#
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let text = format!(
            "{MINIMAL}[target]\nurl = \"host=t password=tgtsecret\"\n[redis]\nurl = \"redis://:redissecret@r:6379\"\n"
        );
        let config = parse(&text).unwrap();
        let raw = format!("{config:?}");
        let cfg = config.validate_with_env(&no_env).unwrap();
        let validated = format!("{cfg:?}");
        for text in [&raw, &validated] {
            for secret in ["hunter2", "tgtsecret", "redissecret"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        assert!(validated.contains("***"));
        assert_eq!(cfg.source.url.password.as_ref().map(Secret::expose), Some("hunter2"));
    }

    #[test]
    fn url_errors_never_show_secrets() {
        for url in [
            "postgres://u:hunter2@h:port/db",
            "postgres://u:hun/ter2@h:5432/db",
            "postgres://u:hunter2@h/db?password",
            "postgres://u:hunter2%zz@h/db",
            "host=h password=hunter2 port=x",
            "password='hunter2",
        ] {
            let mut config = parse(MINIMAL).unwrap();
            config.source.url = Secret::new(url);
            let err = config.validate_with_env(&no_env).unwrap_err();
            let text = chain(&err);
            assert!(text.starts_with("source.url: "), "{text}");
            assert!(!text.contains("hunter2") && !text.contains("ter2"), "{url} -> {text}");
            assert!(!format!("{err:?}").contains("hunter2"), "{url} -> {err:?}");
        }
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é = 1\nx", 3), (1, 3));
        assert_eq!(line_column("abc", 99), (1, 4));
    }
}
