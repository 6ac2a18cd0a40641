//! walshift's own state schema on the target, created and upgraded from the
//! append-only SQL files under `sql/` (compiled in with `include_str!`).
//!
//! # Versions
//!
//! File `sql/NNNN_name.sql` is version `NNNN`; [`LATEST_VERSION`] is the
//! newest this walshift knows. `walshift.schema_migrations` records every
//! version applied to the target: its name, when, and (from version 7 on)
//! the SHA-256 of the file's SQL and which walshift applied it. Files are
//! never edited once applied anywhere; a change is a new file, and every
//! change is additive (new tables, new nullable or defaulted columns), so a
//! walshift that is still running from before an upgrade keeps working
//! until it restarts.
//!
//! # Check, then upgrade
//!
//! ```text
//!   every command that uses the state      setup, run (also verify, backfill)
//!   ─────────────────────────────────      ──────────────────────────────────
//!   check(): read schema_migrations        migrate(): advisory lock (one transaction)
//!     recorded > LATEST_VERSION → refuse     check() again, under the lock
//!     checksum or name differs  → refuse     apply each missing file + its row
//!     older → fine (read-only commands        record checksums, applied_by
//!       cope; run upgrades it)                audit entry per registered migration
//!                                          commit: all of it or nothing
//! ```
//!
//! [`check`] runs before a command changes anything, so a refusal (exit 2,
//! [`SchemaError::is_refusal`]) leaves the target as it was. [`migrate`]
//! applies the missing files in order, each with its row in
//! `schema_migrations`, all in one transaction under a transaction-scoped
//! advisory lock: two walshifts starting at once (a leader and a standby,
//! two `setup`s) apply each file once, and a crash leaves the previous
//! version intact. An upgrade of a schema that already held migrations is
//! logged and written to each migration's audit trail (`walshift.audit`,
//! kind `schema`), next to the controller's decisions.
//!
//! # Checksums
//!
//! The checksum is the SHA-256 (hex) of the file with LF line endings, as
//! `sha256sum sql/NNNN_*.sql` prints it in a checkout. It is computed by
//! the target (`sha256()`), so walshift needs no hashing crate. A recorded
//! checksum or name that differs from this walshift's file for the same
//! version is an error, not a warning: the file was edited after it was
//! applied, and the objects on the target may not be what this walshift's
//! queries assume. Failing at start, before anything runs, is cheap; a
//! missing column discovered mid-cutover, or a changed function
//! (`walshift.wait_for_lsn`) applications rely on, is not. The message names
//! the file and both checksums and gives the statement that records this
//! walshift's checksum once the schema has been made to match. Versions
//! applied before checksums were recorded (1-6 on a target set up by an
//! older walshift) have none and are not checked.

use std::borrow::Cow;

use tokio_postgres::{Client, GenericClient};

/// Name of the state schema.
pub const STATE_SCHEMA: &str = "walshift";

/// One file under `sql/`.
#[derive(Debug, Clone, Copy)]
struct Migration {
    version: i32,
    /// Recorded in `schema_migrations.name`.
    name: &'static str,
    /// The file under `sql/`.
    file: &'static str,
    sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $name,
            file: $file,
            sql: include_str!(concat!("../../sql/", $file)),
        }
    };
}

/// The migrations, in order.
const MIGRATIONS: &[Migration] = &[
    migration!(1, "state", "0001_state.sql"),
    migration!(2, "backfill", "0002_backfill.sql"),
    migration!(3, "verify", "0003_verify.sql"),
    migration!(4, "instances", "0004_instances.sql"),
    migration!(5, "controller", "0005_controller.sql"),
    migration!(6, "cutover", "0006_cutover.sql"),
    migration!(7, "schema_checksums", "0007_schema_checksums.sql"),
];

/// The newest state schema version this walshift knows.
pub const LATEST_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Environment variable of a test hook: apply the state schema only up to
/// this version (tests build the schema of an older release with it, then
/// upgrade it with the current walshift). Unset in production.
pub const TEST_SCHEMA_VERSION_ENV: &str = "WALSHIFT_TEST_SCHEMA_VERSION";

/// Advisory lock key serializing migrations ("walshift" in ASCII, truncated).
const MIGRATION_LOCK_KEY: i64 = 0x7761_6C73_6869_6674;

/// Why walshift will not use (or upgrade) the target's state schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A newer walshift has upgraded the schema past what this one knows.
    #[error(
        "walshift's state schema on the target is at version {recorded}, this walshift knows up \
         to {known}: upgrade walshift (or use the walshift that ran setup); nothing was changed"
    )]
    Newer {
        /// The highest version recorded on the target.
        recorded: i32,
        /// [`LATEST_VERSION`].
        known: i32,
    },
    /// A version was applied from SQL other than this walshift's file for
    /// it (the file was edited after it was applied).
    #[error("{}", describe_mismatches(.0))]
    Modified(Vec<Mismatch>),
    /// Reading or upgrading the schema failed.
    #[error("{context}: {source}")]
    Sql {
        /// What walshift was doing.
        context: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl SchemaError {
    /// Whether walshift refused the schema (exit 2, nothing changed), as
    /// opposed to failing to read or upgrade it.
    pub fn is_refusal(&self) -> bool {
        matches!(self, SchemaError::Newer { .. } | SchemaError::Modified(_))
    }
}

/// A recorded version that does not match this walshift's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The version.
    pub version: i32,
    /// The name recorded for it.
    pub recorded_name: String,
    /// The checksum recorded for it (none before version 7).
    pub recorded_checksum: Option<String>,
    /// This walshift's file for the version.
    pub file: &'static str,
    /// This walshift's name for the version.
    pub name: &'static str,
    /// The checksum of this walshift's file.
    pub checksum: String,
}

fn describe_mismatches(mismatches: &[Mismatch]) -> String {
    let each: Vec<String> = mismatches
        .iter()
        .map(|m| {
            let recorded = match &m.recorded_checksum {
                Some(c) => format!("{:?} with checksum {c}", m.recorded_name),
                None => format!("{:?} (no checksum recorded)", m.recorded_name),
            };
            format!(
                "version {} is recorded as {recorded}, but this walshift's sql/{} ({:?}) has \
                 checksum {}",
                m.version, m.file, m.name, m.checksum
            )
        })
        .collect();
    let fixes: Vec<String> = mismatches
        .iter()
        .map(|m| {
            format!(
                "update walshift.schema_migrations set name = '{}', checksum = '{}' where \
                 version = {};",
                m.name, m.checksum, m.version
            )
        })
        .collect();
    format!(
        "walshift's state schema on the target was migrated with different SQL than this \
         walshift has: {}. The file was edited after it was applied, so the schema may not be \
         what this walshift expects; nothing was changed. Use the walshift that applied it \
         (walshift.schema_migrations.applied_by), or make the schema match this walshift's \
         file and then record that it does: {}",
        each.join("; "),
        fixes.join(" ")
    )
}

fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SchemaError {
    let context = context.into();
    move |source| SchemaError::Sql { context, source }
}

/// What the target's state schema records, once [`check`] found it usable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The highest version applied; 0 without a state schema.
    pub version: i32,
    /// Versions applied without a recorded checksum (by a walshift older
    /// than version 7): not checked.
    pub unchecked: Vec<i32>,
}

/// The SQL a checksum covers: the file with LF line endings (a checkout
/// with CRLF line endings compiles in other bytes for the same file).
fn normalized(sql: &str) -> Cow<'_, str> {
    if sql.contains('\r') { Cow::Owned(sql.replace("\r\n", "\n")) } else { Cow::Borrowed(sql) }
}

/// Reads `walshift.schema_migrations` and refuses a schema this walshift
/// must not use: newer than [`LATEST_VERSION`] ([`SchemaError::Newer`]) or
/// with a version whose recorded checksum or name differs from this
/// walshift's file ([`SchemaError::Modified`]). Changes nothing; a target
/// without a state schema is version 0. Every command runs it before it
/// uses the state (and [`migrate`] again under its lock).
pub async fn check(client: &impl GenericClient) -> Result<Recorded, SchemaError> {
    let ctx = "reading the version of walshift's state schema on the target";
    let exists: bool = client
        .query_one("select to_regclass('walshift.schema_migrations') is not null", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(sql(ctx))?;
    if !exists {
        return Ok(Recorded::default());
    }
    let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    let texts: Vec<Cow<'_, str>> = MIGRATIONS.iter().map(|m| normalized(m.sql)).collect();
    let files: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
    // `to_jsonb(m)`: the checksum column exists only from version 7 on.
    let rows = client
        .query(
            "select m.version, m.name, to_jsonb(m) ->> 'checksum', encode(sha256(f.sql), 'hex') \
             from walshift.schema_migrations m \
             left join unnest($1::int4[], $2::bytea[]) as f (version, sql) \
             on f.version = m.version order by m.version",
            &[&versions, &files],
        )
        .await
        .map_err(sql(ctx))?;
    let mut recorded = Recorded::default();
    let mut mismatches = Vec::new();
    for row in rows {
        let version: i32 = row.try_get(0).map_err(sql(ctx))?;
        let recorded_name: String = row.try_get(1).map_err(sql(ctx))?;
        let recorded_checksum: Option<String> = row.try_get(2).map_err(sql(ctx))?;
        let checksum: Option<String> = row.try_get(3).map_err(sql(ctx))?;
        recorded.version = recorded.version.max(version);
        let (Some(m), Some(checksum)) =
            (MIGRATIONS.iter().find(|m| m.version == version), checksum)
        else {
            continue; // newer than this walshift: refused below
        };
        if recorded_checksum.is_none() {
            recorded.unchecked.push(version);
        }
        let differs =
            recorded_name != m.name || recorded_checksum.as_ref().is_some_and(|c| *c != checksum);
        if differs {
            mismatches.push(Mismatch {
                version,
                recorded_name,
                recorded_checksum,
                file: m.file,
                name: m.name,
                checksum,
            });
        }
    }
    if recorded.version > LATEST_VERSION {
        return Err(SchemaError::Newer { recorded: recorded.version, known: LATEST_VERSION });
    }
    if !mismatches.is_empty() {
        return Err(SchemaError::Modified(mismatches));
    }
    Ok(recorded)
}

/// Whether the state schema exists on the target.
pub async fn state_schema_exists(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "select exists (select 1 from pg_namespace where nspname = $1)",
            &[&STATE_SCHEMA],
        )
        .await?;
    row.try_get(0)
}

/// Registers migration `name` (its slot and publication); returns whether
/// this call created the row (false: it existed).
pub async fn register_migration(
    client: &Client,
    name: &str,
    slot: &str,
    publication: &str,
) -> Result<bool, tokio_postgres::Error> {
    let inserted = client
        .execute(
            "insert into walshift.migrations (name, source_slot, source_publication) \
             values ($1, $2, $3) on conflict (name) do nothing",
            &[&name, &slot, &publication],
        )
        .await?;
    Ok(inserted == 1)
}

/// Removes migration `name` and, by cascade, all its state.
pub async fn forget_migration(client: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    client.execute("delete from walshift.migrations where name = $1", &[&name]).await?;
    Ok(())
}

/// Whether migration `name` is registered (false without a state schema).
pub async fn migration_registered(
    client: &Client,
    name: &str,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "select to_regclass('walshift.migrations') is not null \
             and exists (select 1 from walshift.migrations where name = $1)",
            &[&name],
        )
        .await;
    match row {
        Ok(row) => row.try_get(0),
        // The planner resolves the table even behind `and`: no table, no
        // registration.
        Err(e) if e.as_db_error().is_some_and(|db| db.code().code() == "42P01") => Ok(false),
        Err(e) => Err(e),
    }
}

/// How many migrations other than `name` the state schema holds.
pub async fn other_migrations(client: &Client, name: &str) -> Result<i64, tokio_postgres::Error> {
    client
        .query_one("select count(*) from walshift.migrations where name <> $1", &[&name])
        .await?
        .try_get(0)
}

/// What [`migrate_to`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The version before (0: no state schema).
    pub from: i32,
    /// The version after.
    pub to: i32,
    /// The files applied, in order.
    pub applied: Vec<&'static str>,
}

/// Applies every migration not applied yet, after [`check`] (under the
/// lock) found the schema usable; returns how many ran. `setup` creates the
/// schema with it, and `run` (also `verify` and `backfill`, which prepare
/// like it) upgrades an older one in place on start.
pub async fn migrate(client: &mut Client) -> Result<usize, SchemaError> {
    let up_to = test_schema_version().unwrap_or(LATEST_VERSION);
    Ok(migrate_to(client, up_to).await?.applied.len())
}

/// [`migrate`], applying only the versions up to `up_to`: how tests build
/// the schema an older walshift left (through [`TEST_SCHEMA_VERSION_ENV`]
/// in the binary, or directly). Refuses exactly as [`migrate`] does.
pub async fn migrate_to(client: &mut Client, up_to: i32) -> Result<Upgrade, SchemaError> {
    let ctx = "upgrading walshift's state schema on the target";
    let tx = client.transaction().await.map_err(sql(ctx))?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(sql(ctx))?;
    // Under the lock: what another walshift applied meanwhile is seen here.
    let recorded = check(&tx).await?;
    let pending: Vec<&Migration> =
        MIGRATIONS.iter().filter(|m| m.version > recorded.version && m.version <= up_to).collect();
    let Some(last) = pending.last() else {
        return Ok(Upgrade { from: recorded.version, to: recorded.version, applied: Vec::new() });
    };
    // Created only when missing: `create schema if not exists` needs CREATE
    // on the database even when the schema exists, and an administrator
    // may have created it for a target role without that privilege
    // (docs/security.md).
    let exists: bool = tx
        .query_one("select exists (select 1 from pg_namespace where nspname = 'walshift')", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(sql(ctx))?;
    if !exists {
        tx.batch_execute("create schema walshift").await.map_err(sql(ctx))?;
    }
    tx.batch_execute(
        "create table if not exists walshift.schema_migrations ( \
             version int primary key, name text not null, \
             applied_at timestamptz not null default now())",
    )
    .await
    .map_err(sql(ctx))?;
    for m in &pending {
        tx.batch_execute(m.sql).await.map_err(sql(format!("applying sql/{}", m.file)))?;
        tx.execute(
            "insert into walshift.schema_migrations (version, name) values ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(sql(ctx))?;
    }
    let by = applied_by();
    let checksums: bool = tx
        .query_one(
            "select exists (select 1 from pg_attribute where attrelid = \
             'walshift.schema_migrations'::regclass and attname = 'checksum' and not attisdropped)",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(sql(ctx))?;
    if checksums {
        for m in &pending {
            tx.execute(
                "update walshift.schema_migrations set checksum = encode(sha256($2), 'hex'), \
                 applied_by = $3 where version = $1",
                &[&m.version, &normalized(m.sql).as_bytes(), &by],
            )
            .await
            .map_err(sql(ctx))?;
        }
    }
    let applied: Vec<&'static str> = pending.iter().map(|m| m.file).collect();
    let upgrade = Upgrade { from: recorded.version, to: last.version, applied };
    let audit: bool = tx
        .query_one("select to_regclass('walshift.audit') is not null", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(sql(ctx))?;
    if upgrade.from > 0 && audit {
        // In each migration's audit trail, in the same transaction.
        let reason = format!(
            "walshift's state schema upgraded in place from version {} to {} ({}) by {by}",
            upgrade.from,
            upgrade.to,
            upgrade.applied.join(", ")
        );
        tx.execute(
            "insert into walshift.audit (migration, kind, reason, actor) \
             select name, 'schema', $1, $2 from walshift.migrations",
            &[&reason, &by],
        )
        .await
        .map_err(sql(ctx))?;
    }
    tx.commit().await.map_err(sql(ctx))?;
    if upgrade.from == 0 {
        tracing::info!(version = upgrade.to, "created walshift's state schema");
    } else {
        tracing::info!(
            from = upgrade.from,
            to = upgrade.to,
            applied = %upgrade.applied.join(", "),
            "upgraded walshift's state schema in place"
        );
    }
    if !recorded.unchecked.is_empty() {
        tracing::info!(
            versions = ?recorded.unchecked,
            "state schema versions applied before checksums were recorded (version 7) are not checked"
        );
    }
    Ok(upgrade)
}

/// Who applies a version (`schema_migrations.applied_by`, the audit actor).
fn applied_by() -> String {
    format!(
        "walshift {} on {} (pid {})",
        env!("CARGO_PKG_VERSION"),
        crate::state::instance::host_name(),
        std::process::id()
    )
}

/// The test hook's version limit ([`TEST_SCHEMA_VERSION_ENV`]), if set.
fn test_schema_version() -> Option<i32> {
    let version: i32 = std::env::var(TEST_SCHEMA_VERSION_ENV).ok()?.trim().parse().ok()?;
    tracing::warn!(version, "test hook: the state schema is migrated up to version {version} only");
    Some(version.clamp(1, LATEST_VERSION))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_named_after_their_files() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(m.version).unwrap(), i + 1);
            assert_eq!(m.file, format!("{:04}_{}.sql", m.version, m.name));
            assert!(
                m.sql.contains(&format!("walshift state schema, version {}", m.version)),
                "{}: the header names another version",
                m.file
            );
        }
        assert_eq!(LATEST_VERSION, MIGRATIONS.len() as i32);
    }

    #[test]
    fn checksums_cover_lf_line_endings() {
        assert!(matches!(normalized("a\nb\n"), Cow::Borrowed(_)));
        assert_eq!(normalized("a\r\nb\r\n"), "a\nb\n");
    }

    #[test]
    fn refusals_say_what_to_do() {
        let newer = SchemaError::Newer { recorded: 999, known: 7 };
        assert!(newer.is_refusal());
        assert_eq!(
            newer.to_string(),
            "walshift's state schema on the target is at version 999, this walshift knows up to \
             7: upgrade walshift (or use the walshift that ran setup); nothing was changed"
        );
        let modified = SchemaError::Modified(vec![Mismatch {
            version: 6,
            recorded_name: "cutover".into(),
            recorded_checksum: Some("deadbeef".into()),
            file: "0006_cutover.sql",
            name: "cutover",
            checksum: "abc123".into(),
        }]);
        assert!(modified.is_refusal());
        let text = modified.to_string();
        for needle in [
            "version 6 is recorded as \"cutover\" with checksum deadbeef",
            "sql/0006_cutover.sql (\"cutover\") has checksum abc123",
            "nothing was changed",
            "update walshift.schema_migrations set name = 'cutover', checksum = 'abc123' where \
             version = 6;",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
    }
}
