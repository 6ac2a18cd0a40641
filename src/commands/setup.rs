//! `walshift setup`: check the source, then create what is missing.
//!
//! All checks run first and are reported together; if any fails nothing is
//! created. The checks cover the source (version, `wal_level`, replication
//! privilege, keys and replica identity, publication, a free slot and wal
//! sender), the mapping, compiled against the target (see
//! [`crate::transform::plan`]), and access to the mapped tables (privileges,
//! row-level security, triggers on the target: [`crate::checks`]). Then, in this order:
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

use std::io::Write;

use postgres_protocol::escape::escape_identifier;
use tokio_postgres::Client;

use crate::checks;
use crate::config::ValidatedConfig;
use crate::cutover::fence::{self, FenceMode, FencedTable};
use crate::error::{CheckFailure, CheckFailures, Error};
use crate::pg::catalog;
use crate::pg::client::{self, SessionLimits};
use crate::pg::migrate;
use crate::pg::sql::{Ident, QualifiedName};
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
    // A state schema newer than this walshift, or migrated from other SQL,
    // is refused before any check or change (exit 2).
    migrate::check(&target).await?;

    let mut failures = Vec::new();
    let plan = check(cfg, &source, &mut failures).await?;
    // A registered migration whose slot is gone must not get a new one: the
    // stored position would resume past changes the new slot never saw.
    // Only once the checks pass: a failed one (a lowered wal_level) is the
    // root cause to report first.
    if failures.is_empty()
        && plan.create_slot
        && migrate::migration_registered(&target, &cfg.migration_name)
            .await
            .map_err(Error::sql("looking up the migration"))?
    {
        let applied = crate::state::progress::load(&target, &cfg.migration_name)
            .await
            .unwrap_or(crate::lsn::Lsn::ZERO);
        return Err(Error::HistoryLost {
            slot: cfg.source.slot.clone(),
            what: "no longer exists on the source".to_owned(),
            applied,
        });
    }
    // The mapping, compiled against the target. A table whose source check
    // already failed is not reported twice.
    let mut mapping_failures = Vec::new();
    let mapping =
        MappingPlan::compile_collecting(cfg, &source, &target, &mut mapping_failures).await?;
    // Privileges, row-level security and triggers of the compiled tables.
    mapping_failures.extend(
        checks::table_access(&source, &target, &mapping)
            .await
            .map_err(Error::sql("checking access to the mapped tables"))?,
    );
    let failed_tables: Vec<String> =
        failures.iter().filter_map(|f| table_prefix(&f.subject)).collect();
    failures.extend(mapping_failures.into_iter().filter(|f| {
        table_prefix(&f.subject).is_none_or(|prefix| !failed_tables.contains(&prefix))
    }));
    failures.extend(
        state_schema_check(&target)
            .await
            .map_err(Error::sql("checking the state schema on the target"))?,
    );
    if !failures.is_empty() {
        return Err(Error::Checks(CheckFailures(failures)));
    }

    let schema_existed = migrate::state_schema_exists(&target)
        .await
        .map_err(Error::sql("checking the state schema on the target"))?;
    let migrations_applied = migrate::migrate(&mut target).await?;
    let mut created = Created { schema: !schema_existed, registration: false, publication: false };

    let result = create(cfg, &source, &target, &plan, &mut created).await;
    if let Err(err) = result {
        created.undo(cfg, &source, &target).await;
        return Err(err);
    }
    warn_unless_fence_possible(cfg, &source).await;
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
        let tables = cfg.tables.len();
        let sql = create_publication_sql(cfg);
        source.batch_execute(&sql).await.map_err(Error::sql(format!(
            "creating publication {} on the source",
            cfg.source.publication
        )))?;
        created.publication = true;
        tracing::info!(publication = %cfg.source.publication, tables, "created publication");
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
    if let Some(failure) = checks::wal_level(source).await.map_err(Error::sql(ctx))? {
        fail(&failure.subject, failure.problem);
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
        let candidates =
            checks::identity_candidates(source, info.oid).await.map_err(Error::sql(ctx))?;
        for problem in
            checks::key_problems(&table.source, &info, table.key.as_deref(), i, &candidates)
        {
            fail(&subject, problem);
        }
    }

    let (create_publication, publication_failures) =
        publication_check(cfg, source, &user).await.map_err(Error::sql(ctx))?;
    for failure in publication_failures {
        fail(&failure.subject, failure.problem);
    }

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
            // Creating the slot takes a slot and, while it runs, a wal sender.
            for failure in [
                checks::free_slot(source).await.map_err(Error::sql(ctx))?,
                checks::free_wal_sender(source, slot_name).await.map_err(Error::sql(ctx))?,
            ]
            .into_iter()
            .flatten()
            {
                fail(&failure.subject, failure.problem);
            }
            true
        }
    };
    Ok(Plan { create_publication, create_slot })
}

/// The SQL of a publication for exactly the configured tables. A
/// partitioned table's changes are published as its own (through the root),
/// not as its partitions', which no mapping names; for other tables the
/// option changes nothing.
fn create_publication_sql(cfg: &ValidatedConfig) -> String {
    let tables: Vec<String> = cfg.tables.iter().map(|t| t.source.to_string()).collect();
    format!(
        "create publication {} for table {} with (publish = '{PUBLISH}', \
         publish_via_partition_root = true)",
        escape_identifier(&cfg.source.publication),
        tables.join(", ")
    )
}

/// What the publication publishes: every operation.
const PUBLISH: &str = "insert, update, delete, truncate";

/// The publication. An existing one (walshift's, or created by the tables'
/// owner: docs/security.md) must publish exactly the configured tables,
/// every operation, without a row filter or column list; a missing one is
/// created by setup, which needs CREATE on the database and ownership of
/// every table. Returns whether setup creates it, and what is wrong, with
/// the statements that fix it (for the publication's owner when that is
/// not walshift's role).
async fn publication_check(
    cfg: &ValidatedConfig,
    source: &Client,
    user: &str,
) -> Result<(bool, Vec<CheckFailure>), tokio_postgres::Error> {
    let name = &cfg.source.publication;
    let quoted = escape_identifier(name);
    let subject = "source.publication";
    let configured: Vec<&QualifiedName> = cfg.tables.iter().map(|t| &t.source).collect();
    let Some(info) = catalog::publication_info(source, name).await? else {
        let role = catalog::role_info(source).await?;
        let owners = catalog::table_owners(source, &configured).await?;
        let mut why = Vec::new();
        if !role.create_on_database {
            why.push(format!("no CREATE on database {}", role.database));
        }
        let foreign: Vec<String> = owners
            .iter()
            .filter(|o| !o.owned)
            .map(|o| format!("{} (owner {})", o.table.readable(), o.owner))
            .collect();
        if !foreign.is_empty() {
            why.push(format!("it does not own {}", foreign.join(", ")));
        }
        if why.is_empty() {
            return Ok((true, Vec::new()));
        }
        let problem = format!(
            "publication {name} does not exist and role {user} may not create it ({}): have \
             the tables' owner create it ({}), or print every statement the owner runs with \
             `walshift setup --print-owner-sql` (docs/security.md); then run setup again",
            why.join("; "),
            create_publication_sql(cfg)
        );
        return Ok((true, vec![CheckFailure { subject: subject.to_owned(), problem }]));
    };

    let mut problems = Vec::new();
    let missing: Vec<String> =
        configured.iter().filter(|t| !info.covers(t)).map(|t| t.readable()).collect();
    if !missing.is_empty() {
        problems.push(format!("does not publish {}", missing.join(", ")));
    }
    let extra: Vec<String> = info
        .tables
        .iter()
        .filter(|(s, t)| !configured.iter().any(|c| c.raw_schema() == s && c.raw_name() == t))
        .map(|(s, t)| QualifiedName::new(s.as_str(), t.as_str()).readable())
        .collect();
    if info.all_tables {
        problems.push("publishes every table (FOR ALL TABLES), not exactly the mapped ones".into());
    } else if !extra.is_empty() {
        problems
            .push(format!("also publishes {}, which no [[tables]] entry maps", extra.join(", ")));
    }
    for (schema, table, what) in &info.filtered {
        problems.push(format!(
            "publishes {} with {what}, so some changes would never reach walshift",
            QualifiedName::new(schema.as_str(), table.as_str()).readable()
        ));
    }
    let partitioned = if info.via_root {
        Vec::new()
    } else {
        catalog::partitioned_tables(source, &configured).await?
    };
    if !partitioned.is_empty() {
        problems.push(format!(
            "publishes the partitioned tables {} as their partitions \
             (publish_via_partition_root = false), which the mapping does not name",
            partitioned.iter().map(|t| t.readable()).collect::<Vec<_>>().join(", ")
        ));
    }
    let names = ["insert", "update", "delete", "truncate"];
    let unpublished: Vec<&str> =
        names.iter().zip(info.operations).filter(|(_, on)| !on).map(|(n, _)| *n).collect();
    if !unpublished.is_empty() {
        problems.push(format!("does not publish {}", unpublished.join(", ")));
    }
    if problems.is_empty() {
        return Ok((false, Vec::new()));
    }
    let tables = configured.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
    let mut fixes = Vec::new();
    if info.all_tables {
        fixes.push(format!("drop publication {quoted}"));
        fixes.push(create_publication_sql(cfg));
    } else {
        if !missing.is_empty() || !extra.is_empty() || !info.filtered.is_empty() {
            fixes.push(format!("alter publication {quoted} set table {tables}"));
        }
        if !unpublished.is_empty() {
            fixes.push(format!("alter publication {quoted} set (publish = '{PUBLISH}')"));
        }
        if !partitioned.is_empty() {
            fixes.push(format!(
                "alter publication {quoted} set (publish_via_partition_root = true)"
            ));
        }
    }
    let fixes = fixes.join("; ");
    let who = if info.owned {
        format!("run: {fixes}")
    } else {
        format!(
            "it belongs to role {owner}, so walshift (role {user}) cannot change it: {owner} \
             must run: {fixes}",
            owner = info.owner
        )
    };
    let problem = format!(
        "publication {name} exists but {}: {who}; or choose another source.publication",
        problems.join("; ")
    );
    Ok((false, vec![CheckFailure { subject: subject.to_owned(), problem }]))
}

/// walshift's state schema on the target: setup creates it (CREATE on the
/// database) or uses one an administrator created for the target role
/// (`create schema walshift authorization <role>`: then no CREATE on the
/// database is needed).
async fn state_schema_check(target: &Client) -> Result<Vec<CheckFailure>, tokio_postgres::Error> {
    let schema = migrate::STATE_SCHEMA;
    let access = catalog::schema_access(target, schema).await?;
    let role = catalog::role_info(target).await?;
    let user = Ident::new(role.user.as_str()).readable().into_owned();
    let problem = match &access.owner {
        None if role.create_on_database => return Ok(Vec::new()),
        None => format!(
            "role {user} may not create walshift's state schema {schema} (no CREATE on database \
             {}): have an administrator run: create schema {schema} authorization {user} (or \
             grant create on database {} to {user})",
            role.database, role.database
        ),
        Some(_) if access.can_create_in => return Ok(Vec::new()),
        Some(owner) => format!(
            "walshift's state schema {schema} belongs to role {owner}, and role {user} may not \
             create tables in it: alter schema {schema} owner to {user} (or connect target.url \
             as {owner})"
        ),
    };
    Ok(vec![CheckFailure { subject: "target.url".to_owned(), problem }])
}

/// Logs a warning when walshift's role could not fence the old tables at
/// the write cutover (it neither owns them nor may execute the owner's
/// fence functions): setup succeeds, since reads can move without it.
async fn warn_unless_fence_possible(cfg: &ValidatedConfig, source: &Client) {
    let tables: Vec<FencedTable> = cfg
        .tables
        .iter()
        .map(|t| FencedTable { source: t.source.clone(), target: t.target.clone() })
        .collect();
    match fence::mode(source, &cfg.migration_name, &tables).await {
        Ok(FenceMode::Direct) => {
            tracing::info!(
                "write cutover: walshift's role owns the old tables and fences them itself"
            );
        }
        Ok(FenceMode::OwnerFunctions(functions)) => tracing::info!(
            functions = %functions.join(", "),
            "write cutover: the old tables are fenced through their owner's functions"
        ),
        Err(e) => tracing::warn!("the write cutover will not be possible yet: {e}"),
    }
}

/// `walshift setup --print-owner-sql`: the statements the owner of the old
/// tables runs once so that walshift's source role needs neither their
/// ownership nor CREATE on the database (docs/security.md): the
/// publication (unless a usable one exists), `SELECT` on the tables and on
/// the sequences that feed them, and the write cutover's fence functions.
pub async fn print_owner_sql(cfg: &ValidatedConfig, out: &mut dyn Write) -> Result<(), Error> {
    let ctx = "reading the source catalog for --print-owner-sql";
    let source = client::connect(&cfg.source.url, "setup", SessionLimits::ADMIN).await?;
    let role = catalog::role_info(&source).await.map_err(Error::sql(ctx))?;
    let configured: Vec<&QualifiedName> = cfg.tables.iter().map(|t| &t.source).collect();
    let owners = catalog::table_owners(&source, &configured).await.map_err(Error::sql(ctx))?;
    let mut missing = Vec::new();
    for t in &configured {
        if !owners.iter().any(|o| &o.table == *t) {
            missing.push(t.readable());
        }
    }
    if !missing.is_empty() {
        return Err(Error::Precondition(format!(
            "table(s) {} do not exist on the source; nothing was printed",
            missing.join(", ")
        )));
    }
    let user = Ident::new(role.user.as_str());
    let mut owner_names: Vec<&str> = owners.iter().map(|o| o.owner.as_str()).collect();
    owner_names.sort_unstable();
    owner_names.dedup();
    let (_, publication_failures) =
        publication_check(cfg, &source, &role.user).await.map_err(Error::sql(ctx))?;
    let exists = catalog::publication_info(&source, &cfg.source.publication)
        .await
        .map_err(Error::sql(ctx))?
        .is_some();
    let mut sql = String::new();
    let w = &mut sql;
    let line = |w: &mut String, text: &str| {
        w.push_str(text);
        w.push('\n');
    };
    line(
        w,
        &format!(
            "-- walshift migration {}: statements for the owner of the old tables ({}), so that \
         walshift's source role {} needs neither their ownership nor CREATE on database {} \
         (docs/security.md).",
            cfg.migration_name,
            owner_names.join(", "),
            user.readable(),
            role.database
        ),
    );
    line(
        w,
        "-- Run them as that owner (a role that owns every table below), e.g. psql -v ON_ERROR_STOP=1 -f owner.sql",
    );
    line(
        w,
        &format!(
            "-- The role also needs LOGIN and REPLICATION, which only a superuser grants: alter role {user} login replication;"
        ),
    );
    line(w, "begin;");
    line(
        w,
        "-- 1. The publication walshift streams (setup accepts it: exactly these tables, every operation).",
    );
    if !exists {
        line(w, &format!("{};", create_publication_sql(cfg)));
    } else if publication_failures.is_empty() {
        line(
            w,
            &format!("-- publication {} exists and is usable as it is.", cfg.source.publication),
        );
    } else {
        for f in &publication_failures {
            line(w, &format!("-- {}", f.problem));
        }
    }
    line(
        w,
        "-- 2. Reading the old tables (backfill, verification) and the sequences that feed them (the write cutover moves the new tables' sequences past them).",
    );
    let mut schemas: Vec<&Ident> = configured.iter().map(|t| t.schema()).collect();
    schemas.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    schemas.dedup_by(|a, b| a.as_str() == b.as_str());
    for schema in &schemas {
        line(w, &format!("grant usage on schema {schema} to {user};"));
    }
    for t in &configured {
        line(w, &format!("grant select on table {t} to {user};"));
        for seq in catalog::serial_sequences(&source, t).await.map_err(Error::sql(ctx))? {
            line(w, &format!("grant select on sequence {seq} to {user};"));
        }
    }
    line(
        w,
        "-- 3. The write cutover's fence: per schema, the trigger function and a SECURITY DEFINER function that locks these tables, installs the fence triggers and drops them again, and nothing else; only walshift's role may execute it.",
    );
    let tables: Vec<FencedTable> = cfg
        .tables
        .iter()
        .map(|t| FencedTable { source: t.source.clone(), target: t.target.clone() })
        .collect();
    w.push_str(&fence::owner_function_sql(&cfg.migration_name, &tables, &user));
    line(w, "commit;");
    line(w, "-- To undo after the migration (walshift teardown leaves what the owner created):");
    line(w, &format!("--   drop publication {};", escape_identifier(&cfg.source.publication)));
    for schema in &schemas {
        line(
            w,
            &format!(
                "--   drop function {}(text, bigint);",
                fence::owner_function(schema, &cfg.migration_name)
            ),
        );
    }
    out.write_all(sql.as_bytes()).map_err(Error::Output)
}
