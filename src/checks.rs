//! Preconditions: what every command checks before it changes anything, and
//! the failures it reports (all at once, exit code 2, nothing created).
//!
//! [`CheckFailure`] is plain data, so every layer can produce one without
//! depending on the top-level error. The checks here are the ones several
//! commands share; each names the *root cause* and, when the operator can
//! act, the fix, in SQL that can be pasted (names through
//! [`QualifiedName::readable`], which quotes keywords and special
//! characters):
//!
//! | check | who runs it | root cause it names |
//! |---|---|---|
//! | [`wal_level`] | setup | `wal_level` below `logical` |
//! | [`free_slot`] | setup (creating the slot) | `max_replication_slots` reached, and by which slots |
//! | [`free_wal_sender`] | setup (creating the slot), run, backfill | `max_wal_senders` reached, and by which processes |
//! | [`stream_source`] | run, backfill, verify, tail | `wal_level` lowered (the cause of a missing slot), a slot that is not a pgoutput slot of this database |
//! | [`key_problems`] | setup | no primary key / usable replica identity (suggests the index or the PK to add) |
//! | [`table_access`] | setup, run, backfill, verify (after the mapping compiled) | SELECT on the source, write privileges on the target, row-level security on either side, user triggers on the target |
//!
//! Why triggers on the target matter: walshift applies in the default
//! `session_replication_role` (`origin`), unlike Postgres's own subscriptions
//! (which apply as `replica`). A trigger enabled the default way
//! (`tgenabled = 'O'`) would fire for every row walshift copies or applies —
//! a `BEFORE` trigger can change or drop the row (the copy then differs from
//! `transform(source)`), any trigger can reject it or repeat its side effects
//! on every replay. `ENABLE ALWAYS` is the operator's explicit "fire for
//! replicated rows too" (as for a native subscription) and is accepted;
//! `ENABLE REPLICA` and disabled triggers never fire in walshift's sessions.
//! Internal triggers (foreign keys) are fine.
//!
//! Row-level security: on the source it hides rows from the backfill and
//! verification while the stream carries every change; on the target it
//! makes updates and deletes skip rows silently and inserts fail. Both are
//! checked with `row_security_active()`, which accounts for superusers,
//! `BYPASSRLS`, ownership and `FORCE ROW LEVEL SECURITY`.

use std::fmt;

use tokio_postgres::Client;

use crate::pg::catalog::{ReplicaIdentity, TableInfo};
use crate::pg::sql::{Ident, QualifiedName};
use crate::transform::Plan;

/// Where the runbook for a lost slot is.
const LOST_SLOT_RUNBOOK: &str = "docs/operations.md, \"Recovering from a lost slot\": \
     `walshift teardown --yes`, empty the shadow tables, `walshift setup`, `walshift run`";

/// Longest list of slots or processes a message names.
const MAX_LISTED: usize = 8;

/// One failed precondition: what was checked and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    /// The config key or object concerned, e.g. `tables[0].source` or `source`.
    pub subject: String,
    /// What is wrong and, when the operator can act, how to fix it.
    pub problem: String,
}

impl CheckFailure {
    /// A failure of `subject`.
    pub fn new(subject: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { subject: subject.into(), problem: problem.into() }
    }
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.problem)
    }
}

/// Every failed precondition of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailures(pub Vec<CheckFailure>);

impl fmt::Display for CheckFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} check(s) failed, nothing was created or changed", self.0.len())?;
        for failure in &self.0 {
            write!(f, "\n  - {failure}")?;
        }
        Ok(())
    }
}

type SqlResult<T> = Result<T, tokio_postgres::Error>;

// ---------------------------------------------------------------------------
// The source server: wal_level, slots, wal senders
// ---------------------------------------------------------------------------

/// The source's `wal_level`, when it is not `logical`.
async fn wal_level_below_logical(source: &Client) -> SqlResult<Option<String>> {
    let level = crate::pg::catalog::setting(source, "wal_level").await?;
    Ok((level != "logical").then_some(level))
}

fn wal_level_failure(level: &str) -> CheckFailure {
    CheckFailure::new(
        "source",
        format!(
            "wal_level is '{level}', logical decoding needs wal_level = logical: \
             ALTER SYSTEM SET wal_level = logical (or set it in postgresql.conf) and restart \
             the server"
        ),
    )
}

/// `wal_level` must be `logical` (the slot cannot exist, be created or
/// stream otherwise).
pub async fn wal_level(source: &Client) -> SqlResult<Option<CheckFailure>> {
    Ok(wal_level_below_logical(source).await?.map(|level| wal_level_failure(&level)))
}

/// A free replication slot, for `setup` creating one: names
/// `max_replication_slots`, its value and the slots that use it up.
pub async fn free_slot(source: &Client) -> SqlResult<Option<CheckFailure>> {
    let max: i64 = source
        .query_one("select current_setting('max_replication_slots')::int8", &[])
        .await?
        .try_get(0)?;
    let rows = source
        .query(
            "select s.slot_name::text, s.slot_type::text, s.database::text, s.active_pid, \
                    a.application_name::text \
             from pg_replication_slots s left join pg_stat_activity a on a.pid = s.active_pid \
             order by s.slot_name",
            &[],
        )
        .await?;
    let used = rows.len() as i64;
    if used < max {
        return Ok(None);
    }
    let mut users = Vec::new();
    for row in rows.iter().take(MAX_LISTED) {
        let name: String = row.try_get(0)?;
        let kind: String = row.try_get(1)?;
        let database: Option<String> = row.try_get(2)?;
        let pid: Option<i32> = row.try_get(3)?;
        let app: Option<String> = row.try_get(4)?;
        let on = database.map(|d| format!(" on database {d}")).unwrap_or_default();
        let state = match (pid, app.filter(|a| !a.is_empty())) {
            (Some(pid), Some(app)) => format!("streaming to pid {pid}, {app:?}"),
            (Some(pid), None) => format!("streaming to pid {pid}"),
            (None, _) => "inactive".to_owned(),
        };
        users.push(format!("{name} ({kind}{on}, {state})"));
    }
    if rows.len() > MAX_LISTED {
        users.push(format!("and {} more", rows.len() - MAX_LISTED));
    }
    Ok(Some(CheckFailure::new(
        "source.slot",
        format!(
            "no free replication slot: max_replication_slots = {max} and {used} slot(s) exist: \
             {}; drop a slot nobody needs (select pg_drop_replication_slot('name')) or raise \
             max_replication_slots (needs a restart)",
            users.join(", ")
        ),
    )))
}

/// A free wal sender for a replication connection (`setup` creating the
/// slot, `run` streaming): names `max_wal_senders`, its value and the
/// processes that use them up. A wal sender already serving `own_slot` (a
/// previous instance of this migration, about to be replaced) counts as
/// free.
pub async fn free_wal_sender(source: &Client, own_slot: &str) -> SqlResult<Option<CheckFailure>> {
    let max: i64 = source
        .query_one("select current_setting('max_wal_senders')::int8", &[])
        .await?
        .try_get(0)?;
    let rows = source
        .query(
            "select a.pid, coalesce(a.application_name, '')::text, coalesce(a.usename::text, ''), \
                    coalesce(host(a.client_addr), 'local'), s.slot_name::text \
             from pg_stat_activity a left join pg_replication_slots s on s.active_pid = a.pid \
             where a.backend_type = 'walsender' order by a.backend_start",
            &[],
        )
        .await?;
    let own = rows
        .iter()
        .filter(|r| r.try_get::<_, Option<String>>(4).ok().flatten().as_deref() == Some(own_slot))
        .count() as i64;
    let used = rows.len() as i64;
    if used - own < max {
        return Ok(None);
    }
    let mut users = Vec::new();
    for row in rows.iter().take(MAX_LISTED) {
        let pid: i32 = row.try_get(0)?;
        let app: String = row.try_get(1)?;
        let user: String = row.try_get(2)?;
        let client: String = row.try_get(3)?;
        let slot: Option<String> = row.try_get(4)?;
        let slot = slot.map(|s| format!(", slot {s}")).unwrap_or_else(|| ", no slot".into());
        users.push(format!("pid {pid} ({app:?}, user {user} from {client}{slot})"));
    }
    if rows.len() > MAX_LISTED {
        users.push(format!("and {} more", rows.len() - MAX_LISTED));
    }
    Ok(Some(CheckFailure::new(
        "source",
        format!(
            "no free wal sender for walshift's replication connection: max_wal_senders = {max} \
             and {used} are in use: {}; stop a replication client nobody needs \
             (select pg_terminate_backend(pid)) or raise max_wal_senders (needs a restart)",
            users.join(", ")
        ),
    )))
}

/// The source can stream from `slot`: `wal_level` is logical (named as the
/// root cause of a missing slot: the server refuses to start while a
/// logical slot exists below `logical`, so lowering it means the slot was
/// dropped, its history with it), and an existing slot is a pgoutput slot
/// of the connected database. A slot that is missing or invalidated with
/// `wal_level` intact is `run`'s [`crate::error::Error::HistoryLost`].
pub async fn stream_source(source: &Client, slot: &str) -> SqlResult<Vec<CheckFailure>> {
    let mut failures = Vec::new();
    let row = source
        .query_opt(
            "select s.plugin::text, s.database::text, current_database()::text \
             from pg_replication_slots s where s.slot_name = $1",
            &[&slot],
        )
        .await?;
    if let Some(level) = wal_level_below_logical(source).await? {
        let mut failure = wal_level_failure(&level);
        if row.is_none() {
            failure.problem.push_str(&format!(
                "; replication slot {slot} is gone (the server does not start with a logical \
                 slot below wal_level = logical, so it was dropped) and with it the changes \
                 walshift had not applied: once wal_level is back, start the migration again \
                 ({LOST_SLOT_RUNBOOK})"
            ));
        }
        failures.push(failure);
    }
    let Some(row) = row else { return Ok(failures) };
    let plugin: Option<String> = row.try_get(0)?;
    let database: Option<String> = row.try_get(1)?;
    let dbname: String = row.try_get(2)?;
    if plugin.as_deref() != Some("pgoutput") {
        failures.push(CheckFailure::new(
            "source.slot",
            format!(
                "replication slot {slot} is not a logical pgoutput slot (plugin {}), so it is \
                 not walshift's: choose another source.slot",
                plugin.as_deref().unwrap_or("none, physical")
            ),
        ));
    } else if database.as_deref() != Some(dbname.as_str()) {
        failures.push(CheckFailure::new(
            "source.slot",
            format!(
                "replication slot {slot} belongs to database {} but source.url points at \
                 {dbname}: fix source.url or source.slot",
                database.as_deref().unwrap_or("?")
            ),
        ));
    }
    Ok(failures)
}

// ---------------------------------------------------------------------------
// Keys and replica identity of a source table
// ---------------------------------------------------------------------------

/// A unique index that could serve as the replica identity or become the
/// primary key: valid, immediate, not partial, plain NOT NULL columns only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueIndex {
    /// Index name (in the table's schema).
    pub name: Ident,
    /// Its columns, in index order.
    pub columns: Vec<String>,
}

/// The [`UniqueIndex`]es of a table, fewest columns first.
pub async fn identity_candidates(client: &Client, table_oid: u32) -> SqlResult<Vec<UniqueIndex>> {
    let rows = client
        .query(
            "select ic.relname::text, \
                    array(select a.attname::text \
                          from unnest(i.indkey::int2[]) with ordinality as k(attnum, n) \
                          join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum \
                          order by k.n) \
             from pg_index i join pg_class ic on ic.oid = i.indexrelid \
             where i.indrelid = $1 and i.indisunique and i.indisvalid and i.indimmediate \
               and i.indpred is null and i.indexprs is null and i.indnatts = i.indnkeyatts \
               and not exists (select 1 from pg_attribute a where a.attrelid = i.indrelid \
                               and a.attnum = any (i.indkey::int2[]) and not a.attnotnull) \
             order by i.indnatts, ic.relname",
            &[&table_oid],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(UniqueIndex { name: Ident::new(r.try_get::<_, String>(0)?), columns: r.try_get(1)? })
        })
        .collect()
}

/// Problems with a source table's key and replica identity, each with the
/// fix: the unique index to use (`candidates`) or the primary key to add.
/// `key` is `tables[index].key`.
pub fn key_problems(
    table: &QualifiedName,
    info: &TableInfo,
    key: Option<&[String]>,
    index: usize,
    candidates: &[UniqueIndex],
) -> Vec<String> {
    let name = table.readable();
    let mut problems = Vec::new();
    if !matches!(info.relkind, 'r' | 'p') {
        problems.push(format!("{name} is not a table (relkind '{}')", info.relkind));
        return problems;
    }
    let use_index = |what: &str| match candidates.first() {
        Some(idx) => format!(
            "{what}: ALTER TABLE {name} REPLICA IDENTITY USING INDEX {} (its unique index on \
             {}), or make that index the primary key: ALTER TABLE {name} ADD PRIMARY KEY USING \
             INDEX {}",
            idx.name.readable(),
            idx.columns
                .iter()
                .map(|c| Ident::new(c.as_str()).readable().into_owned())
                .collect::<Vec<_>>()
                .join(", "),
            idx.name.readable(),
        ),
        None => format!(
            "{what}: add a primary key (ALTER TABLE {name} ADD PRIMARY KEY (<columns that \
             identify a row>)), or ALTER TABLE {name} REPLICA IDENTITY FULL and set \
             tables[{index}].key to such columns"
        ),
    };
    if let Some(key) = key {
        for column in key {
            if !info.columns.iter().any(|c| &c.name == column) {
                problems.push(format!(
                    "tables[{index}].key: column {column:?} does not exist in {name}"
                ));
            }
        }
    } else if info.primary_key.is_none() && info.identity_index.is_none() {
        problems.push(use_index(&format!(
            "{name} has no primary key and no replica identity index, so walshift cannot tell \
             its rows apart and its updates and deletes carry no key"
        )));
        return problems;
    }
    match info.replica_identity {
        ReplicaIdentity::Nothing => problems.push(format!(
            "{name} has REPLICA IDENTITY NOTHING, so updates and deletes cannot be replicated: \
             ALTER TABLE {name} REPLICA IDENTITY DEFAULT (with a primary key), USING INDEX or FULL"
        )),
        ReplicaIdentity::Default if info.primary_key.is_none() => {
            problems.push(use_index(&format!(
                "{name} has no primary key and REPLICA IDENTITY DEFAULT, so its updates and \
                 deletes carry no key"
            )));
        }
        ReplicaIdentity::Default | ReplicaIdentity::Index => {
            if let (Some(key), Some(identity)) = (key, info.identity_columns()) {
                let uncovered: Vec<&String> =
                    key.iter().filter(|k| !identity.contains(k)).collect();
                if !uncovered.is_empty() {
                    problems.push(format!(
                        "tables[{index}].key columns {uncovered:?} are not part of the replica \
                         identity of {name} ({identity:?}), so deletes would not carry them: \
                         use the identity columns as key or ALTER TABLE {name} REPLICA \
                         IDENTITY FULL"
                    ));
                }
            }
        }
        ReplicaIdentity::Full => {}
    }
    problems
}

// ---------------------------------------------------------------------------
// Privileges, row-level security and triggers of the mapped tables
// ---------------------------------------------------------------------------

/// What the catalog says about one mapped table for the current role.
struct Access {
    role: String,
    owner: String,
    schema_usage: bool,
    /// Columns (of those asked about) lacking each privilege asked about.
    missing: Vec<(&'static str, Vec<String>)>,
    /// Table-level privileges missing (DELETE, TRUNCATE).
    missing_table: Vec<&'static str>,
    rls_active: bool,
    policies: Vec<String>,
    /// User triggers enabled in `origin` mode: (name, tgtype).
    triggers: Vec<(String, i16)>,
}

/// Reads [`Access`] of `table` for the session's role; `None` when the table
/// does not exist (reported by the mapping checks).
async fn access(
    client: &Client,
    table: &QualifiedName,
    columns: &[String],
    column_privileges: &[&'static str],
    table_privileges: &[&'static str],
) -> SqlResult<Option<Access>> {
    let row = client
        .query_opt(
            "select c.oid, current_user::text, pg_get_userbyid(c.relowner)::text, \
                    has_schema_privilege(n.oid, 'USAGE'), row_security_active(c.oid), \
                    array(select p.polname::text from pg_policy p where p.polrelid = c.oid \
                          order by 1) \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2",
            &[&table.raw_schema(), &table.raw_name()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let oid: u32 = row.try_get(0)?;
    let mut missing = Vec::new();
    for &privilege in column_privileges {
        let lacking: Vec<String> = client
            .query_one(
                "select array(select a.attname::text from pg_attribute a \
                              where a.attrelid = $1::oid and a.attnum > 0 and not a.attisdropped \
                                and a.attname::text = any ($2::text[]) \
                                and not has_column_privilege($1::oid, a.attnum, $3::text) \
                              order by a.attnum)",
                &[&oid, &columns, &privilege],
            )
            .await?
            .try_get(0)?;
        if !lacking.is_empty() {
            missing.push((privilege, lacking));
        }
    }
    let mut missing_table = Vec::new();
    for &privilege in table_privileges {
        let has: bool = client
            .query_one("select has_table_privilege($1::oid, $2::text)", &[&oid, &privilege])
            .await?
            .try_get(0)?;
        if !has {
            missing_table.push(privilege);
        }
    }
    let triggers = client
        .query(
            "select t.tgname::text, t.tgtype from pg_trigger t \
             where t.tgrelid = $1 and not t.tgisinternal and t.tgenabled = 'O' order by 1",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<SqlResult<Vec<(String, i16)>>>()?;
    Ok(Some(Access {
        role: row.try_get(1)?,
        owner: row.try_get(2)?,
        schema_usage: row.try_get(3)?,
        missing,
        missing_table,
        rls_active: row.try_get(4)?,
        policies: row.try_get(5)?,
        triggers,
    }))
}

/// `before insert or update, for each row` from `pg_trigger.tgtype`.
fn trigger_kind(tgtype: i16) -> String {
    let timing = if tgtype & 64 != 0 {
        "instead of"
    } else if tgtype & 2 != 0 {
        "before"
    } else {
        "after"
    };
    let events: Vec<&str> = [(4, "insert"), (16, "update"), (8, "delete"), (32, "truncate")]
        .iter()
        .filter(|(bit, _)| tgtype & bit != 0)
        .map(|(_, e)| *e)
        .collect();
    let level = if tgtype & 1 != 0 { "for each row" } else { "for each statement" };
    format!("{timing} {}, {level}", events.join(" or "))
}

fn policies_text(policies: &[String]) -> String {
    if policies.is_empty() {
        "no policies, so it hides every row".to_owned()
    } else {
        let names: Vec<String> =
            policies.iter().map(|p| Ident::new(p.as_str()).readable().into_owned()).collect();
        format!("policies {}", names.join(", "))
    }
}

fn bypass_hint(name: &str, owner: &str) -> String {
    format!(
        "ALTER TABLE {name} DISABLE ROW LEVEL SECURITY, or connect as a role it does not apply \
         to (the owner {} unless the table has FORCE ROW LEVEL SECURITY, or a role with \
         BYPASSRLS)",
        Ident::new(owner).readable()
    )
}

/// The source role can read every mapped table whole (SELECT on the columns
/// the mapping reads, USAGE on the schema, no row-level security hiding
/// rows); the target role can write every target table (SELECT, INSERT,
/// UPDATE on the mapped columns, DELETE, TRUNCATE when truncates propagate),
/// no row-level security applies to it there, and no user trigger would
/// fire for walshift's writes (see the module doc).
pub async fn table_access(
    source: &Client,
    target: &Client,
    plan: &Plan,
) -> SqlResult<Vec<CheckFailure>> {
    let mut failures = Vec::new();
    for t in &plan.tables {
        let subject = format!("tables[{}].source", t.index);
        let name = t.source.readable();
        let columns: Vec<String> = t.inputs.iter().map(|i| i.name.as_str().to_owned()).collect();
        if let Some(a) = access(source, &t.source, &columns, &["SELECT"], &[]).await? {
            let role = Ident::new(a.role.as_str()).readable().into_owned();
            if !a.schema_usage {
                failures.push(CheckFailure::new(
                    &subject,
                    format!(
                        "role {role} may not use schema {} of {name}: GRANT USAGE ON SCHEMA {} \
                         TO {role}",
                        t.source.schema().readable(),
                        t.source.schema().readable()
                    ),
                ));
            }
            for (_, lacking) in &a.missing {
                failures.push(CheckFailure::new(
                    &subject,
                    format!(
                        "role {role} may not read {name} (no SELECT on {}), which the backfill \
                         and verification read: GRANT SELECT ON {name} TO {role}",
                        column_list(lacking, columns.len())
                    ),
                ));
            }
            if a.rls_active {
                failures.push(CheckFailure::new(
                    &subject,
                    format!(
                        "row-level security on {name} applies to role {role} ({}): the \
                         backfill and verification would not see the rows it hides, while the \
                         stream carries every change, so the copy would differ: {}",
                        policies_text(&a.policies),
                        bypass_hint(&name, &a.owner)
                    ),
                ));
            }
        }

        let subject = format!("tables[{}].target", t.index);
        let name = t.target.readable();
        let columns: Vec<String> = t.outputs.iter().map(|o| o.column.as_str().to_owned()).collect();
        let table_privileges: &[&'static str] =
            if t.truncate { &["DELETE", "TRUNCATE"] } else { &["DELETE"] };
        let Some(a) =
            access(target, &t.target, &columns, &["SELECT", "INSERT", "UPDATE"], table_privileges)
                .await?
        else {
            continue;
        };
        let role = Ident::new(a.role.as_str()).readable().into_owned();
        if !a.schema_usage {
            failures.push(CheckFailure::new(
                &subject,
                format!(
                    "role {role} may not use schema {} of {name}: GRANT USAGE ON SCHEMA {} TO \
                     {role}",
                    t.target.schema().readable(),
                    t.target.schema().readable()
                ),
            ));
        }
        if !a.missing.is_empty() || !a.missing_table.is_empty() {
            let mut lacking: Vec<String> = a
                .missing
                .iter()
                .map(|(p, cols)| format!("{p} on {}", column_list(cols, columns.len())))
                .collect();
            lacking.extend(a.missing_table.iter().map(|p| (*p).to_owned()));
            let all = if t.truncate {
                "SELECT, INSERT, UPDATE, DELETE, TRUNCATE"
            } else {
                "SELECT, INSERT, UPDATE, DELETE"
            };
            failures.push(CheckFailure::new(
                &subject,
                format!(
                    "role {role} may not write {name} (no {}): GRANT {all} ON {name} TO {role}",
                    lacking.join(", no ")
                ),
            ));
        }
        if a.rls_active {
            failures.push(CheckFailure::new(
                &subject,
                format!(
                    "row-level security on {name} applies to role {role} ({}): updates, deletes \
                     and verification would silently skip the rows it hides and inserts it \
                     rejects would fail: {}",
                    policies_text(&a.policies),
                    bypass_hint(&name, &a.owner)
                ),
            ));
        }
        for (trigger, tgtype) in &a.triggers {
            let trigger = Ident::new(trigger.as_str()).readable().into_owned();
            failures.push(CheckFailure::new(
                &subject,
                format!(
                    "{name} has trigger {trigger} ({}) enabled: walshift does not write as a \
                     replica (session_replication_role), so it would fire for every row walshift \
                     copies or applies and could change, reject or repeat what walshift writes: \
                     ALTER TABLE {name} DISABLE TRIGGER {trigger} while walshift writes the table \
                     (enable it again after the write cutover), or ALTER TABLE {name} ENABLE \
                     ALWAYS TRIGGER {trigger} if it must fire for replicated rows too",
                    trigger_kind(*tgtype)
                ),
            ));
        }
    }
    Ok(failures)
}

/// `it` (every column) or `its columns a, b`.
fn column_list(columns: &[String], of: usize) -> String {
    if columns.len() >= of {
        "it".to_owned()
    } else {
        let names: Vec<String> =
            columns.iter().map(|c| Ident::new(c.as_str()).readable().into_owned()).collect();
        format!("its columns {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::catalog::ColumnInfo;

    fn info(pk: Option<&[&str]>, identity: ReplicaIdentity, index: Option<&[&str]>) -> TableInfo {
        let col = |name: &str| ColumnInfo {
            name: name.into(),
            type_name: "integer".into(),
            cast_type: "integer".into(),
            type_oid: 23,
            not_null: true,
            has_default: false,
            generated: false,
        };
        let owned = |cols: &[&str]| cols.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        TableInfo {
            oid: 1,
            relkind: 'r',
            replica_identity: identity,
            primary_key: pk.map(owned),
            identity_index: index.map(owned),
            columns: vec![col("a"), col("user")],
            estimated_rows: 0.0,
        }
    }

    #[test]
    fn keyless_table_suggests_its_unique_index_or_a_primary_key() {
        let table = QualifiedName::new("public", "order");
        let keyless = info(None, ReplicaIdentity::Default, None);
        let candidates =
            [UniqueIndex { name: Ident::new("order_user_key"), columns: vec!["user".into()] }];
        let problems = key_problems(&table, &keyless, None, 2, &candidates);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains(
                r#"ALTER TABLE public."order" REPLICA IDENTITY USING INDEX order_user_key (its unique index on "user")"#
            ),
            "{problems:?}"
        );
        assert!(problems[0].contains("ADD PRIMARY KEY USING INDEX order_user_key"), "{problems:?}");

        let problems = key_problems(&table, &keyless, None, 2, &[]);
        assert!(
            problems[0].contains(r#"ALTER TABLE public."order" ADD PRIMARY KEY ("#),
            "{problems:?}"
        );
        assert!(problems[0].contains("tables[2].key"), "{problems:?}");

        // A replica identity index serves as the key.
        let indexed = info(None, ReplicaIdentity::Index, Some(&["a"]));
        assert!(key_problems(&table, &indexed, None, 0, &[]).is_empty());
        // A primary key is the default.
        let pk = info(Some(&["a"]), ReplicaIdentity::Default, None);
        assert!(key_problems(&table, &pk, None, 0, &[]).is_empty());
        // A configured key on a table without identity.
        let key = ["a".to_owned()];
        let problems = key_problems(&table, &keyless, Some(&key), 0, &candidates);
        assert!(
            problems[0].contains("REPLICA IDENTITY USING INDEX order_user_key"),
            "{problems:?}"
        );
        let full = info(None, ReplicaIdentity::Full, None);
        assert!(key_problems(&table, &full, Some(&key), 0, &[]).is_empty());
        let nothing = info(Some(&["a"]), ReplicaIdentity::Nothing, None);
        let problems = key_problems(&table, &nothing, None, 0, &[]);
        assert!(problems[0].contains("REPLICA IDENTITY NOTHING"), "{problems:?}");
    }

    #[test]
    fn trigger_kinds_read_like_sql() {
        // row | before | insert | update
        assert_eq!(trigger_kind(1 | 2 | 4 | 16), "before insert or update, for each row");
        assert_eq!(trigger_kind(8 | 32), "after delete or truncate, for each statement");
        assert_eq!(trigger_kind(1 | 64 | 4), "instead of insert, for each row");
    }

    #[test]
    fn failures_list_every_problem() {
        let failures = CheckFailures(vec![
            CheckFailure::new("source", "wal_level is 'replica'"),
            CheckFailure::new("tables[0].source", "no SELECT"),
        ]);
        assert_eq!(
            failures.to_string(),
            "2 check(s) failed, nothing was created or changed\n  - source: wal_level is \
             'replica'\n  - tables[0].source: no SELECT"
        );
    }
}
