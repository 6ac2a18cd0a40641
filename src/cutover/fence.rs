//! The fence: one source transaction that holds `EXCLUSIVE` locks on the
//! old tables (writers wait, plain reads go on) and, once committed, leaves
//! a statement-level trigger on each that rejects every write with a message
//! naming the table's new home.
//!
//! * The lock is taken with a short `lock_timeout` and retried with backoff
//!   until `[cutover] fence_timeout_ms`: a waiting `LOCK TABLE` queues every
//!   later writer behind it, so it must never wait long; a transaction of
//!   the application that holds a conflicting lock makes the fence give up
//!   (nothing changed) and name the holder.
//! * The triggers are created in the same transaction right after the lock
//!   is granted, `ENABLE ALWAYS` (so `session_replication_role = replica`
//!   does not skip them). Until the commit nobody sees them; the commit
//!   installs them and releases the locks at the same instant, so a writer
//!   that waited on the lock runs into the trigger. The commit is the commit
//!   point of the write cutover (`docs/cutover.md`).
//! * The session runs with `synchronous_commit = on` (the commit is durable
//!   before walshift publishes write "new", whatever the server's default)
//!   and `idle_in_transaction_session_timeout`, so a fence
//!   whose walshift died without closing the socket (host gone) releases
//!   the tables by itself; a restarted walshift also terminates it.
//!
//! # Who may fence: two modes ([`FenceMode`])
//!
//! `LOCK TABLE ... IN EXCLUSIVE MODE` needs `UPDATE`, `DELETE` or `TRUNCATE`
//! on the table, and `ALTER TABLE ... ENABLE ALWAYS TRIGGER` needs its
//! ownership. walshift therefore fences either
//!
//! * **directly**, when its source role owns the old tables (or is a member
//!   of their owner): the statements above, plus the trigger function
//!   created in each table's schema; or
//! * **through the owner's function**, when the owner ran the SQL that
//!   `walshift setup --print-owner-sql` prints ([`owner_function_sql`]):
//!   per schema, `<schema>.walshift_fence_<migration>(action, attempt)`, a
//!   `SECURITY DEFINER` function owned by the tables' owner, with the table
//!   names and messages baked in, that does exactly three things: `lock`
//!   the migration's tables in that schema, `install` the triggers, `drop`
//!   them. Its `EXECUTE` is granted to walshift's role alone, which then
//!   needs no ownership and no write privilege on the old tables. The lock
//!   it takes belongs to the caller's transaction, so the commit point and
//!   the recovery probe ([`installed`]) are the same in both modes.
//!
//! The owner's function is preferred when it exists and walshift may
//! execute it; otherwise walshift must own the tables, or the fence fails
//! before anything is locked, naming the owner and the fix.

use std::time::{Duration, Instant};

use postgres_protocol::escape::escape_literal;
use tokio_postgres::Client;

use crate::pg::client::{self, SessionLimits};
use crate::pg::conninfo::ConnInfo;
use crate::pg::sql::{Ident, QualifiedName};

/// Name of the fence trigger on each old table.
pub const TRIGGER: &str = "walshift_fence";

/// Name of the trigger function, one per schema of old tables.
pub const FUNCTION: &str = "walshift_fence_reject";

/// SQLSTATE of a write the fence rejects: `read_only_sql_transaction`.
pub const REJECT_SQLSTATE: &str = "25006";

/// First pause between two locking attempts; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// SQLSTATE `lock_not_available` (a `lock_timeout` expired).
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// How the fence is installed (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceMode {
    /// walshift's role owns the old tables and runs the DDL itself.
    Direct,
    /// The owner's `SECURITY DEFINER` functions, one per schema of the old
    /// tables (`<schema>.walshift_fence_<migration>(text, bigint)`).
    OwnerFunctions(Vec<String>),
}

/// The owner's fence function of `migration` in `schema`, as SQL
/// (`"public"."walshift_fence_billing_v2"`).
pub fn owner_function(schema: &Ident, migration: &str) -> String {
    format!("{schema}.{}", Ident::new(format!("walshift_fence_{migration}")))
}

/// An old table and its new home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedTable {
    /// The old (source) table.
    pub source: QualifiedName,
    /// Where it moved.
    pub target: QualifiedName,
}

/// What the fence needs to know.
#[derive(Debug, Clone)]
pub struct FenceSpec {
    /// Migration name (in messages and the session's `application_name`).
    pub migration: String,
    /// The tables.
    pub tables: Vec<FencedTable>,
    /// Give up locking after this long.
    pub timeout: Duration,
    /// `lock_timeout` of one attempt.
    pub lock_timeout: Duration,
    /// `idle_in_transaction_session_timeout` of the fence session.
    pub idle_timeout: Duration,
    /// Attempt id (in the triggers' comments).
    pub attempt: i64,
}

/// The message a fenced table's writers get.
pub fn reject_message(table: &FencedTable, migration: &str) -> String {
    format!(
        "{} moved to {} by walshift migration {migration}",
        table.source.readable(),
        table.target.readable()
    )
}

/// Why the fence could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The locks were not granted in time.
    #[error(
        "could not lock the old tables within {timeout_ms} ms ({attempts} attempts of \
         lock_timeout {lock_timeout_ms} ms){holders}; nothing was changed"
    )]
    Timeout {
        /// `fence_timeout_ms`.
        timeout_ms: u128,
        /// Attempts made.
        attempts: u32,
        /// `fence_lock_timeout_ms`.
        lock_timeout_ms: u128,
        /// `": held by ..."` or empty.
        holders: String,
    },
    /// A statement failed.
    #[error("fence: {context}: {}", client::server_message(source))]
    Sql {
        /// What it was doing.
        context: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// No session.
    #[error("fence: {0}")]
    Connect(String),
    /// Stopped while waiting.
    #[error("fence: walshift is stopping; nothing was changed")]
    Stopped,
    /// walshift's role may not fence the old tables.
    #[error(
        "fence: role {role} may not fence {tables}: it does not own them and there is no fence \
         function of the owner it may execute ({missing}); have the owner run the statements \
         `walshift setup --print-owner-sql` prints (docs/security.md), or connect source.url as \
         the owner; nothing was changed"
    )]
    NotPermitted {
        /// walshift's source role.
        role: String,
        /// The tables it does not own, with their owners.
        tables: String,
        /// The owner functions that are missing or not executable.
        missing: String,
    },
}

fn sql(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> FenceError {
    move |source| FenceError::Sql { context, source }
}

/// The application name of the fence session of `migration`.
pub fn session_role(migration: &str) -> String {
    format!("fence:{migration}")
}

/// A held fence: the open source transaction.
pub struct Fence {
    client: Client,
    /// When the locks were granted.
    pub granted_at: Instant,
    /// Attempts it took.
    pub attempts: u32,
    /// From the first attempt to the grant.
    pub waited: Duration,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence").field("attempts", &self.attempts).finish_non_exhaustive()
    }
}

/// Takes the fence: locks every table, creates the triggers (uncommitted).
pub async fn take(
    url: &ConnInfo,
    spec: &FenceSpec,
    stop: &crate::runtime::shutdown::Shutdown,
) -> Result<Fence, FenceError> {
    let limits =
        SessionLimits { statement_timeout: Duration::from_secs(30), ..SessionLimits::ADMIN };
    let client = client::connect(url, &session_role(&spec.migration), limits)
        .await
        .map_err(|e| FenceError::Connect(crate::error::display_chain(&e)))?;
    let mode = mode(&client, &spec.migration, &spec.tables).await?;
    client
        .batch_execute(&format!(
            // The commit is the cutover's commit point: flushed before it
            // returns, whatever the server's default.
            "set idle_in_transaction_session_timeout = {}; set synchronous_commit = on",
            spec.idle_timeout.as_millis().max(1)
        ))
        .await
        .map_err(sql("configuring the fence session"))?;
    let lock_timeout = spec.lock_timeout.as_millis().max(1);
    let lock = match &mode {
        FenceMode::Direct => {
            let list =
                spec.tables.iter().map(|t| t.source.to_string()).collect::<Vec<_>>().join(", ");
            format!(
                "begin; set local lock_timeout = {lock_timeout}; lock table {list} in exclusive mode"
            )
        }
        FenceMode::OwnerFunctions(functions) => {
            let calls: String = functions
                .iter()
                .map(|f| format!("; select {f}('lock', {})", spec.attempt))
                .collect();
            format!("begin; set local lock_timeout = {lock_timeout}{calls}")
        }
    };
    let started = Instant::now();
    let mut attempts = 0u32;
    let mut backoff = FIRST_BACKOFF;
    loop {
        attempts += 1;
        match client.batch_execute(&lock).await {
            Ok(()) => break,
            Err(e) if e.code().is_some_and(|c| c.code() == LOCK_NOT_AVAILABLE) => {
                client.batch_execute("rollback").await.map_err(sql("rolling back an attempt"))?;
                let elapsed = started.elapsed();
                if elapsed + spec.lock_timeout > spec.timeout {
                    let holders = holders(&client, &spec.tables).await;
                    return Err(FenceError::Timeout {
                        timeout_ms: spec.timeout.as_millis(),
                        attempts,
                        lock_timeout_ms: spec.lock_timeout.as_millis(),
                        holders,
                    });
                }
                tracing::debug!(attempts, "fence: lock not granted; retrying");
                let pause = backoff.min(spec.timeout.saturating_sub(elapsed));
                tokio::time::sleep(pause).await;
                if stop.is_triggered() {
                    return Err(FenceError::Stopped);
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                let _ = client.batch_execute("rollback").await;
                return Err(FenceError::Sql { context: "locking the old tables", source: e });
            }
        }
    }
    let granted_at = Instant::now();
    let waited = granted_at - started;
    let install = match &mode {
        FenceMode::Direct => install_sql(spec),
        FenceMode::OwnerFunctions(functions) => functions
            .iter()
            .map(|f| format!("select {f}('install', {});\n", spec.attempt))
            .collect(),
    };
    client.batch_execute(&install).await.map_err(sql("creating the fence triggers"))?;
    Ok(Fence { client, granted_at, attempts, waited })
}

/// How the connected role fences `tables` (see the module doc): through
/// the owner's functions when each schema has one it may execute, directly
/// when it owns every table, else [`FenceError::NotPermitted`].
pub async fn mode(
    client: &Client,
    migration: &str,
    tables: &[FencedTable],
) -> Result<FenceMode, FenceError> {
    let mut functions = Vec::new();
    let mut missing = Vec::new();
    for schema in schemas(tables) {
        let function = owner_function(schema, migration);
        let signature = format!("{function}(text, bigint)");
        let usable: bool = client
            .query_one(
                "select coalesce(has_function_privilege(to_regprocedure($1), 'execute'), false)",
                &[&signature],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(sql("looking up the owner's fence function"))?;
        if usable {
            functions.push(function);
        } else {
            missing.push(signature);
        }
    }
    if missing.is_empty() {
        return Ok(FenceMode::OwnerFunctions(functions));
    }
    let names: Vec<String> = tables.iter().map(|t| t.source.to_string()).collect();
    let rows = client
        .query(
            "select u.i::int8, pg_get_userbyid(c.relowner)::text, \
                    pg_has_role(c.relowner, 'USAGE'), current_user::text \
             from unnest($1::text[]) with ordinality as u(n, i) \
             join pg_class c on c.oid = u.n::regclass order by u.i",
            &[&names],
        )
        .await
        .map_err(sql("looking up the owners of the old tables"))?;
    let mut role = String::new();
    let mut foreign = Vec::new();
    for row in &rows {
        let get = |e| sql("looking up the owners of the old tables")(e);
        let index: i64 = row.try_get(0).map_err(get)?;
        let owner: String = row.try_get(1).map_err(get)?;
        let owned: bool = row.try_get(2).map_err(get)?;
        role = row.try_get(3).map_err(get)?;
        let table = usize::try_from(index - 1)
            .ok()
            .and_then(|i| tables.get(i))
            .map_or_else(String::new, |t| t.source.readable());
        if !owned {
            foreign.push(format!("{table} (owner {owner})"));
        }
    }
    if foreign.is_empty() {
        return Ok(FenceMode::Direct);
    }
    Err(FenceError::NotPermitted { role, tables: foreign.join(", "), missing: missing.join(", ") })
}

/// The distinct schemas of `tables`, sorted.
fn schemas(tables: &[FencedTable]) -> Vec<&Ident> {
    let mut schemas: Vec<&Ident> = tables.iter().map(|t| t.source.schema()).collect();
    schemas.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    schemas.dedup_by(|a, b| a.as_str() == b.as_str());
    schemas
}

/// A dollar-quote tag that does not occur in `body`.
fn dollar_tag(body: &str) -> String {
    let mut tag = "$walshift$".to_owned();
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$walshift{n}$");
    }
    tag
}

/// The trigger function that rejects writes (one per schema).
fn reject_function_sql(schema: &Ident) -> String {
    format!(
        "create or replace function {schema}.{function}() returns trigger \
         language plpgsql as $walshift$ begin \
         raise exception using errcode = '{REJECT_SQLSTATE}', message = tg_argv[0], \
         hint = tg_argv[1]; end $walshift$;\n",
        function = Ident::new(FUNCTION),
    )
}

/// The statements that create and enable the trigger on `t` (the comment
/// comes separately: it names the attempt).
fn trigger_sql(t: &FencedTable, migration: &str) -> String {
    let message = reject_message(t, migration);
    let hint = format!(
        "write to {} instead; the old table is read-only since walshift's write cutover",
        t.target.readable()
    );
    format!(
        "drop trigger if exists {trigger} on {table};\n\
         create trigger {trigger} before insert or update or delete or truncate on {table} \
         for each statement execute function {schema}.{function}({message}, {hint});\n\
         alter table {table} enable always trigger {trigger};\n",
        trigger = Ident::new(TRIGGER),
        table = t.source,
        schema = t.source.schema(),
        function = Ident::new(FUNCTION),
        message = escape_literal(&message),
        hint = escape_literal(&hint),
    )
}

/// The SQL the owner of the old tables runs so that `role` can fence them
/// without owning them: per schema, the trigger function and the
/// `SECURITY DEFINER` fence function of `migration` (lock, install, drop
/// for exactly these tables), executable by `role` only.
pub fn owner_function_sql(migration: &str, tables: &[FencedTable], role: &Ident) -> String {
    let mut out = String::new();
    for schema in schemas(tables) {
        let mine: Vec<&FencedTable> =
            tables.iter().filter(|t| t.source.schema().as_str() == schema.as_str()).collect();
        let lock = format!(
            "lock table {} in exclusive mode;",
            mine.iter().map(|t| t.source.to_string()).collect::<Vec<_>>().join(", ")
        );
        let mut install = String::new();
        let mut drop = String::new();
        for t in &mine {
            install.push_str(&trigger_sql(t, migration));
            install.push_str(&format!(
                "execute format('comment on trigger %I on %s is %L', {trigger}, {table}, {prefix} \
                 || attempt);\n",
                trigger = escape_literal(TRIGGER),
                table = escape_literal(&t.source.to_string()),
                prefix = escape_literal(&format!(
                    "walshift migration {migration} write cutover attempt "
                )),
            ));
            drop.push_str(&format!(
                "drop trigger if exists {} on {};\n",
                Ident::new(TRIGGER),
                t.source
            ));
        }
        let body = format!(
            "\nbegin\n\
             if action = 'lock' then\n{lock}\n\
             elsif action = 'install' then\n{install}\
             elsif action = 'drop' then\n{drop}\
             else\nraise exception 'unknown action %', action;\nend if;\nend\n"
        );
        let tag = dollar_tag(&body);
        let function = owner_function(schema, migration);
        out.push_str(&reject_function_sql(schema));
        out.push_str(&format!(
            "create or replace function {function}(action text, attempt bigint) returns void \
             language plpgsql security definer set search_path = pg_catalog, pg_temp \
             as {tag}{body}{tag};\n\
             revoke all on function {function}(text, bigint) from public;\n\
             grant execute on function {function}(text, bigint) to {role};\n"
        ));
    }
    out
}

/// The statements that install the triggers (inside the fence transaction).
fn install_sql(spec: &FenceSpec) -> String {
    let mut out = String::new();
    for schema in schemas(&spec.tables) {
        out.push_str(&reject_function_sql(schema));
    }
    let trigger = Ident::new(TRIGGER);
    for t in &spec.tables {
        let comment =
            format!("walshift migration {} write cutover attempt {}", spec.migration, spec.attempt);
        out.push_str(&trigger_sql(t, &spec.migration));
        out.push_str(&format!(
            "comment on trigger {trigger} on {table} is {comment};\n",
            table = t.source,
            comment = escape_literal(&comment),
        ));
    }
    out
}

impl Fence {
    /// Commits: the triggers are installed and the locks released at once.
    pub async fn commit(self) -> Result<(), FenceError> {
        self.client.batch_execute("commit").await.map_err(sql("committing the fence"))
    }

    /// Rolls back: locks released, no trigger. Closing the session does the
    /// same if this fails.
    pub async fn abort(self) {
        if let Err(e) = self.client.batch_execute("rollback").await {
            tracing::warn!(error = %client::server_message(&e), "fence: rollback failed; closing the session rolls it back");
        }
    }

    /// Whether the fence transaction is still open (its session alive).
    pub async fn alive(&self) -> bool {
        self.client.simple_query("select 1").await.is_ok()
    }
}

/// Who holds locks on `tables` that conflict with the fence, readable.
async fn holders(client: &Client, tables: &[FencedTable]) -> String {
    let names: Vec<String> = tables.iter().map(|t| t.source.to_string()).collect();
    let rows = client
        .query(
            "select l.pid, l.mode, coalesce(a.application_name, ''), coalesce(a.state, ''), \
             extract(epoch from clock_timestamp() - a.xact_start)::float8, l.relation::regclass::text \
             from pg_locks l left join pg_stat_activity a using (pid) \
             where l.granted and l.pid <> pg_backend_pid() and l.locktype = 'relation' \
             and l.mode in ('RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareLock', \
                 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock') \
             and l.relation = any (select n::regclass from unnest($1::text[]) as n) \
             order by a.xact_start limit 5",
            &[&names],
        )
        .await;
    let Ok(rows) = rows else { return String::new() };
    let parts: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let pid: i32 = r.try_get(0).ok()?;
            let mode: String = r.try_get(1).ok()?;
            let app: String = r.try_get(2).ok()?;
            let state: String = r.try_get(3).ok()?;
            let age: Option<f64> = r.try_get(4).ok()?;
            let table: String = r.try_get(5).ok()?;
            Some(format!(
                "pid {pid} ({mode} on {table}, application_name {app:?}, {state}, transaction \
                 open {:.1} s)",
                age.unwrap_or(0.0)
            ))
        })
        .collect();
    if parts.is_empty() { String::new() } else { format!(": held by {}", parts.join("; ")) }
}

/// How many of `tables` carry the fence trigger (committed).
pub async fn installed(
    client: &Client,
    tables: &[FencedTable],
) -> Result<usize, tokio_postgres::Error> {
    let names: Vec<String> = tables.iter().map(|t| t.source.to_string()).collect();
    let n: i64 = client
        .query_one(
            "select count(*) from pg_trigger t where t.tgname = $2 and t.tgrelid = any \
             (select to_regclass(n) from unnest($1::text[]) as n)",
            &[&names, &TRIGGER],
        )
        .await?
        .try_get(0)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Writes the cutover's barrier into the source WAL, committed with
/// `synchronous_commit = on`: the walsender sends only flushed WAL, so an
/// asynchronous commit would wait for the WAL writer (up to
/// `wal_writer_delay`, 200 ms by default) before the stream could see it.
pub async fn write_barrier(client: &Client) -> Result<crate::lsn::Lsn, tokio_postgres::Error> {
    client.batch_execute("begin; set local synchronous_commit = on").await?;
    let row = client
        .query_one("select pg_logical_emit_message(true, 'walshift', 'cutover barrier')", &[])
        .await;
    let row = match row {
        Ok(row) => row,
        Err(e) => {
            let _ = client.batch_execute("rollback").await;
            return Err(e);
        }
    };
    client.batch_execute("commit").await?;
    let lsn: tokio_postgres::types::PgLsn = row.try_get(0)?;
    Ok(crate::lsn::Lsn(u64::from(lsn)))
}

/// Terminates fence sessions of `migration` left by a walshift that is
/// gone, and waits until they are (so their transactions can no longer
/// commit); returns how many there were.
pub async fn terminate_orphans(
    client: &Client,
    migration: &str,
) -> Result<usize, tokio_postgres::Error> {
    let name = format!("walshift:{}", session_role(migration));
    let name = crate::pg::conninfo::clamp_application_name(&name).to_owned();
    let rows = client
        .query(
            "select pg_terminate_backend(pid) from pg_stat_activity \
             where application_name = $1 and pid <> pg_backend_pid()",
            &[&name],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = client
            .query_one(
                "select count(*) from pg_stat_activity where application_name = $1 \
                 and pid <> pg_backend_pid()",
                &[&name],
            )
            .await?
            .try_get(0)?;
        if left == 0 || Instant::now() >= deadline {
            return Ok(rows.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Drops the fence triggers (and the trigger functions no other trigger
/// uses) from `tables` of `migration`; returns the tables that had one.
/// Through the owner's functions when they exist (the functions are the
/// owner's and stay: `walshift setup --print-owner-sql` says how to drop
/// them).
pub async fn drop_fence(
    client: &Client,
    migration: &str,
    tables: &[FencedTable],
) -> Result<Vec<String>, FenceError> {
    let mut present = Vec::new();
    for t in tables {
        let exists: bool = client
            .query_one(
                "select exists (select 1 from pg_trigger where tgname = $2 and tgrelid = to_regclass($1))",
                &[&t.source.to_string(), &TRIGGER],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(sql("looking up the fence triggers"))?;
        if exists {
            present.push(t);
        }
    }
    let dropped: Vec<String> = present.iter().map(|t| t.source.readable()).collect();
    if present.is_empty() {
        return Ok(dropped);
    }
    if let FenceMode::OwnerFunctions(functions) = mode(client, migration, tables).await? {
        for f in functions {
            client
                .batch_execute(&format!("select {f}('drop', 0)"))
                .await
                .map_err(sql("dropping the fence triggers through the owner's function"))?;
        }
        return Ok(dropped);
    }
    let trigger = Ident::new(TRIGGER);
    for t in &present {
        client
            .batch_execute(&format!("drop trigger if exists {trigger} on {}", t.source))
            .await
            .map_err(sql("dropping the fence triggers"))?;
    }
    for schema in schemas(tables) {
        // Kept while another table (another migration) still uses it.
        let in_use: bool = client
            .query_one(
                "select exists (select 1 from pg_trigger t join pg_proc p on p.oid = t.tgfoid \
                 join pg_namespace n on n.oid = p.pronamespace where p.proname = $1 and n.nspname = $2)",
                &[&FUNCTION, &schema.as_str()],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(sql("looking up the fence trigger function"))?;
        if !in_use {
            client
                .batch_execute(&format!(
                    "drop function if exists {schema}.{}()",
                    Ident::new(FUNCTION)
                ))
                .await
                .map_err(sql("dropping the fence trigger function"))?;
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_sql_quotes_names_and_escapes_messages() {
        let spec = FenceSpec {
            migration: "m'1".into(),
            tables: vec![FencedTable {
                source: QualifiedName::new("public", "Usage Events"),
                target: QualifiedName::new("billing_new", "usage_events"),
            }],
            timeout: Duration::from_secs(1),
            lock_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(60),
            attempt: 7,
        };
        let sql = install_sql(&spec);
        assert!(sql.contains("on \"public\".\"Usage Events\""), "{sql}");
        assert!(sql.contains("'public.\"Usage Events\" moved to billing_new.usage_events by walshift migration m''1'"), "{sql}");
        assert!(sql.contains("enable always trigger \"walshift_fence\""), "{sql}");
        assert!(sql.contains("attempt 7"), "{sql}");
    }

    #[test]
    fn owner_function_sql_bakes_in_the_tables_and_grants_only_walshift() {
        let tables = vec![
            FencedTable {
                source: QualifiedName::new("public", "Usage Events"),
                target: QualifiedName::new("billing_new", "usage_events"),
            },
            FencedTable {
                source: QualifiedName::new("billing", "invoices"),
                target: QualifiedName::new("billing_new", "invoices"),
            },
        ];
        let sql = owner_function_sql("m1", &tables, &Ident::new("walshift"));
        // One function per schema, each locking only its own tables.
        for (schema, table) in [("public", "\"Usage Events\""), ("billing", "\"invoices\"")] {
            let function = format!("\"{schema}\".\"walshift_fence_m1\"");
            assert!(sql.contains(&format!("create or replace function {function}(action text, attempt bigint) returns void language plpgsql security definer set search_path = pg_catalog, pg_temp")), "{sql}");
            assert!(
                sql.contains(&format!("lock table \"{schema}\".{table} in exclusive mode;")),
                "{sql}"
            );
            assert!(
                sql.contains(&format!(
                    "revoke all on function {function}(text, bigint) from public;"
                )),
                "{sql}"
            );
            assert!(
                sql.contains(&format!(
                    "grant execute on function {function}(text, bigint) to \"walshift\";"
                )),
                "{sql}"
            );
            assert!(
                sql.contains(&format!(
                    "create or replace function \"{schema}\".\"walshift_fence_reject\"()"
                )),
                "{sql}"
            );
        }
        assert!(!sql.contains("lock table \"public\".\"Usage Events\", \"billing\""), "{sql}");
        assert!(sql.contains("enable always trigger \"walshift_fence\""), "{sql}");
        assert!(sql.contains("raise exception 'unknown action %', action;"), "{sql}");
    }

    #[test]
    fn dollar_tags_avoid_the_body() {
        assert_eq!(dollar_tag("select 1"), "$walshift$");
        assert_eq!(dollar_tag("a $walshift$ b"), "$walshift1$");
        assert_eq!(dollar_tag("$walshift$ $walshift1$"), "$walshift2$");
    }

    #[test]
    fn owner_functions_are_named_per_migration_and_schema() {
        assert_eq!(
            owner_function(&Ident::new("Billing"), "billing_v2"),
            "\"Billing\".\"walshift_fence_billing_v2\""
        );
    }
}
