//! `walshift setup`: check the source, then create what is missing.
//!
//! All checks run first and are reported together; if any fails nothing is
//! created. The checks cover the source (version, `wal_level`, replication
//! privilege, keys and replica identity, publication and slot) and the
//! mapping, compiled against the target (see [`crate::transform::plan`]). Then, in this order:
//!
//! 1. walshift's state schema on the target (idempotent migrations);
//! 2. the publication for exactly the configured tables (an existing one
//!    must already cover them and publish every operation);
//! 3. the logical replication slot (`pgoutput`).
//!
//! The publication is created before the slot so that every change the slot
//! will decode is after the publication exists (decoding from a point before
//! it fails with "publication does not exist"). If a step fails, what this
//! run created is dropped again. Running setup twice changes nothing.

use postgres_protocol::escape::escape_identifier;
use tokio_postgres::Client;

use crate::config::ValidatedConfig;
use crate::error::{CheckFailure, CheckFailures, Error};
use crate::pg::catalog::{self, ReplicaIdentity, TableInfo};
use crate::pg::client::{self, SessionLimits};
use crate::pg::migrate;
use crate::replication::slot;
use crate::replication::wire::ReplicationConnection;
use crate::transform::Plan as MappingPlan;

/// Oldest server version supported: the pgoutput `messages` option is 14+.
pub const MIN_SERVER_VERSION_NUM: i32 = 140_000;

/// What setup found or did for one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It already existed and is usable.
    Existed,
    /// This run created it.
    Created,
}

/// The result of a successful setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupReport {
    /// The publication.
    pub publication: Outcome,
    /// The replication slot.
    pub slot: Outcome,
    /// Migrations applied to the state schema by this run.
    pub migrations_applied: usize,
}

/// What the checks decided must be created.
struct Plan {
    create_publication: bool,
    create_slot: bool,
}

/// Runs the checks and creates what is missing.
pub async fn run(cfg: &ValidatedConfig) -> Result<SetupReport, Error> {
    let source = client::connect(&cfg.source.url, "setup", SessionLimits::ADMIN).await?;
    let mut target = client::connect(&cfg.target.url, "setup", SessionLimits::ADMIN).await?;

    let mut failures = Vec::new();
    let plan = check(cfg, &source, &mut failures).await?;
    // The mapping, compiled against the target. A table whose source check
    // already failed is not reported twice.
    let mut mapping_failures = Vec::new();
    MappingPlan::compile_collecting(cfg, &source, &target, &mut mapping_failures).await?;
    let failed_tables: Vec<String> =
        failures.iter().filter_map(|f| table_prefix(&f.subject)).collect();
    failures.extend(mapping_failures.into_iter().filter(|f| {
        table_prefix(&f.subject).is_none_or(|prefix| !failed_tables.contains(&prefix))
    }));
    if !failures.is_empty() {
        return Err(Error::Checks(CheckFailures(failures)));
    }

    let schema_existed = migrate::state_schema_exists(&target)
        .await
        .map_err(Error::sql("checking the state schema on the target"))?;
    let migrations_applied = migrate::migrate(&mut target)
        .await
        .map_err(Error::sql("creating the state schema on the target"))?;
    let mut created = Created { schema: !schema_existed, registration: false, publication: false };

    let result = create(cfg, &source, &target, &plan, &mut created).await;
    if let Err(err) = result {
        created.undo(cfg, &source, &target).await;
        return Err(err);
    }
    Ok(SetupReport {
        publication: if plan.create_publication { Outcome::Created } else { Outcome::Existed },
        slot: if plan.create_slot { Outcome::Created } else { Outcome::Existed },
        migrations_applied,
    })
}

/// `tables[3]` of a subject like `tables[3].columns.amount`.
fn table_prefix(subject: &str) -> Option<String> {
    let end = subject.find(']')?;
    subject.starts_with("tables[").then(|| subject[..=end].to_owned())
}

/// Objects created by this run, dropped again if a later step fails.
struct Created {
    schema: bool,
    registration: bool,
    publication: bool,
}

impl Created {
    async fn undo(&self, cfg: &ValidatedConfig, source: &Client, target: &Client) {
        if self.publication {
            let sql = format!(
                "drop publication if exists {}",
                escape_identifier(&cfg.source.publication)
            );
            if let Err(error) = source.batch_execute(&sql).await {
                tracing::warn!(error = %error, "could not drop the publication created by this run");
            }
        }
        if self.registration && !self.schema {
            let deleted = migrate::forget_migration(target, &cfg.migration_name).await;
            if let Err(error) = deleted {
                tracing::warn!(error = %error, "could not remove the registration made by this run");
            }
        }
        if self.schema {
            let sql = format!(
                "drop schema if exists {} cascade",
                escape_identifier(migrate::STATE_SCHEMA)
            );
            if let Err(error) = target.batch_execute(&sql).await {
                tracing::warn!(error = %error, "could not drop the state schema created by this run");
            }
        }
    }
}

async fn create(
    cfg: &ValidatedConfig,
    source: &Client,
    target: &Client,
    plan: &Plan,
    created: &mut Created,
) -> Result<(), Error> {
    created.registration = migrate::register_migration(
        target,
        &cfg.migration_name,
        &cfg.source.slot,
        &cfg.source.publication,
    )
    .await
    .map_err(Error::sql("registering the migration in the state schema"))?;

    if plan.create_publication {
        let tables: Vec<String> = cfg.tables.iter().map(|t| t.source.to_string()).collect();
        let sql = format!(
            "create publication {} for table {} with (publish = 'insert, update, delete, truncate')",
            escape_identifier(&cfg.source.publication),
            tables.join(", ")
        );
        source.batch_execute(&sql).await.map_err(Error::sql(format!(
            "creating publication {} on the source",
            cfg.source.publication
        )))?;
        created.publication = true;
        tracing::info!(publication = %cfg.source.publication, tables = tables.len(), "created publication");
    }

    if plan.create_slot {
        let mut conn =
            ReplicationConnection::connect(&cfg.source.url.with_application_name("walshift:setup"))
                .await?;
        let slot = slot::create_logical_slot(&mut conn, &cfg.source.slot).await?;
        conn.close().await.ok();
        tracing::info!(slot = %slot.name, consistent_point = %slot.consistent_point, "created replication slot");
    }
    Ok(())
}

/// Checks everything, appending to `failures`; returns what to create.
async fn check(
    cfg: &ValidatedConfig,
    source: &Client,
    failures: &mut Vec<CheckFailure>,
) -> Result<Plan, Error> {
    let mut fail = |subject: &str, problem: String| {
        failures.push(CheckFailure { subject: subject.to_owned(), problem });
    };
    let ctx = "checking the source";

    let version: i32 = catalog::setting(source, "server_version_num")
        .await
        .map_err(Error::sql(ctx))?
        .parse()
        .unwrap_or(0);
    if version < MIN_SERVER_VERSION_NUM {
        fail(
            "source",
            format!("server version {version} is too old: walshift needs PostgreSQL 14 or newer"),
        );
    }
    let wal_level = catalog::setting(source, "wal_level").await.map_err(Error::sql(ctx))?;
    if wal_level != "logical" {
        fail(
            "source",
            format!(
                "wal_level is '{wal_level}', logical replication needs wal_level=logical \
                 (set it in postgresql.conf or with ALTER SYSTEM and restart the server)"
            ),
        );
    }
    let (user, can_replicate): (String, bool) = source
        .query_one(
            "select current_user::text, rolreplication or rolsuper from pg_roles \
             where rolname = current_user",
            &[],
        )
        .await
        .and_then(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .map_err(Error::sql(ctx))?;
    if !can_replicate {
        fail(
            "source.url",
            format!(
                "role {user} may not open replication connections: \
                 ALTER ROLE {user} REPLICATION (or connect as a role that has it)"
            ),
        );
    }
    let dbname: String = source
        .query_one("select current_database()::text", &[])
        .await
        .map_err(Error::sql(ctx))?
        .try_get(0)
        .map_err(Error::sql(ctx))?;

    for (i, table) in cfg.tables.iter().enumerate() {
        let subject = format!("tables[{i}].source");
        let info = catalog::table_info(source, &table.source).await.map_err(Error::sql(ctx))?;
        let Some(info) = info else {
            fail(
                &subject,
                format!("table {} does not exist on the source", table.source.readable()),
            );
            continue;
        };
        for problem in key_problems(&table.source.readable(), &info, table.key.as_deref(), i) {
            fail(&subject, problem);
        }
    }

    let publication = &cfg.source.publication;
    let create_publication =
        match catalog::publication_info(source, publication).await.map_err(Error::sql(ctx))? {
            None => true,
            Some(info) => {
                let missing: Vec<String> = cfg
                    .tables
                    .iter()
                    .filter(|t| !info.covers(&t.source))
                    .map(|t| t.source.readable())
                    .collect();
                if !missing.is_empty() {
                    fail(
                        "source.publication",
                        format!(
                            "publication {publication} exists but does not publish {}: add them \
                         with ALTER PUBLICATION or choose another source.publication",
                            missing.join(", ")
                        ),
                    );
                }
                if info.operations.iter().any(|op| !op) {
                    fail(
                        "source.publication",
                        format!(
                            "publication {publication} does not publish every operation: \
                         set publish = 'insert, update, delete, truncate'"
                        ),
                    );
                }
                false
            }
        };

    let slot_name = &cfg.source.slot;
    let create_slot = match catalog::slot_info(source, slot_name).await.map_err(Error::sql(ctx))? {
        Some(slot) => {
            if slot.plugin.as_deref() != Some("pgoutput") {
                fail(
                    "source.slot",
                    format!(
                        "replication slot {slot_name} exists but is not a logical pgoutput slot \
                         (plugin {}): choose another source.slot or drop it",
                        slot.plugin.as_deref().unwrap_or("none, physical")
                    ),
                );
            } else if slot.database.as_deref() != Some(dbname.as_str()) {
                fail(
                    "source.slot",
                    format!(
                        "replication slot {slot_name} belongs to database {} but source.url \
                         points at {dbname}",
                        slot.database.as_deref().unwrap_or("?")
                    ),
                );
            }
            false
        }
        None => {
            let (used, max) = catalog::slot_capacity(source).await.map_err(Error::sql(ctx))?;
            if used >= max {
                fail(
                    "source.slot",
                    format!(
                        "no free replication slot: {used} of max_replication_slots={max} in use \
                         (drop an unused slot or raise max_replication_slots)"
                    ),
                );
            }
            true
        }
    };
    Ok(Plan { create_publication, create_slot })
}

/// Problems with a table's key and replica identity.
fn key_problems(
    table: &str,
    info: &TableInfo,
    key: Option<&[String]>,
    index: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    if !matches!(info.relkind, 'r' | 'p') {
        problems.push(format!("{table} is not a table (relkind '{}')", info.relkind));
        return problems;
    }
    if let Some(key) = key {
        for column in key {
            if !info.columns.iter().any(|c| &c.name == column) {
                problems.push(format!(
                    "tables[{index}].key: column {column:?} does not exist in {table}"
                ));
            }
        }
    } else if info.primary_key.is_none() {
        problems.push(format!(
            "{table} has no primary key: add one, or set tables[{index}].key to columns that \
             identify a row (with REPLICA IDENTITY FULL or USING INDEX on the source)"
        ));
    }
    match info.replica_identity {
        ReplicaIdentity::Nothing => problems.push(format!(
            "{table} has REPLICA IDENTITY NOTHING, so updates and deletes cannot be replicated: \
             ALTER TABLE {table} REPLICA IDENTITY DEFAULT (with a primary key) or FULL"
        )),
        ReplicaIdentity::Default if info.primary_key.is_none() && key.is_some() => {
            problems.push(format!(
                "{table} has no primary key and REPLICA IDENTITY DEFAULT, so updates and deletes \
                 carry no key: ALTER TABLE {table} REPLICA IDENTITY FULL or USING INDEX"
            ));
        }
        ReplicaIdentity::Default | ReplicaIdentity::Index => {
            if let (Some(key), Some(identity)) = (key, info.identity_columns()) {
                let uncovered: Vec<&String> =
                    key.iter().filter(|k| !identity.contains(k)).collect();
                if !uncovered.is_empty() {
                    problems.push(format!(
                        "tables[{index}].key columns {uncovered:?} are not part of the replica \
                         identity of {table} ({identity:?}), so deletes would not carry them: \
                         use the identity columns as key or ALTER TABLE {table} REPLICA IDENTITY FULL"
                    ));
                }
            }
        }
        ReplicaIdentity::Full => {}
    }
    problems
}
