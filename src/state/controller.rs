//! The cutover controller's stored state: its decision (`walshift.controller`,
//! the authoritative copy of what Redis publishes), the audit trail
//! (`walshift.audit`) and the command queue (`walshift.commands`) through
//! which `walshift resume` / `rollback` reach the running leader.
//!
//! Every write of the decision is conditional on `leader` = the writer's
//! instance id, so a controller that lost its lease to another instance
//! cannot overwrite the newer leader's decision: its write touches no row
//! and it steps down.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// The stored decision of one migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredController {
    /// Controller state (`verified`, `shifting`, ...).
    pub state: String,
    /// Why it is in that state.
    pub reason: String,
    /// When it entered that state.
    pub entered_at: SystemTime,
    /// Published share of reads on new.
    pub read_new: u8,
    /// Published write side (`old`).
    pub write_side: String,
    /// Version of the last decision.
    pub version: i64,
    /// When the soak at the current stage started.
    pub stage_entered_at: SystemTime,
    /// After a rollback: `[traffic] read_new_percent` at that time.
    pub rolled_back_at_percent: Option<u8>,
    /// The decision JSON as published.
    pub decision: String,
    /// Instance id of the leader.
    pub leader: Option<String>,
    /// Seconds since the leader last evaluated.
    pub leader_seen_age_seconds: Option<f64>,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number (absent before it is stored).
    #[serde(default)]
    pub id: i64,
    /// When (RFC 3339, UTC; empty before it is stored).
    #[serde(default)]
    pub at: String,
    /// `decision`, `state`, `command`, `leader`, `config` or `republish`.
    pub kind: String,
    /// State before.
    pub from_state: Option<String>,
    /// State after.
    pub to_state: Option<String>,
    /// Read share on new after the entry.
    pub read_new: Option<u8>,
    /// Published version, for decisions.
    pub version: Option<i64>,
    /// Why.
    pub reason: String,
    /// The gates' values at the time (JSON).
    pub gates: Option<serde_json::Value>,
    /// Who: an instance id, or `user@host` for commands.
    pub actor: Option<String>,
}

/// A command for the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCommand {
    /// Its id.
    pub id: i64,
    /// `resume`, `rollback`, ...
    pub command: String,
    /// Arguments (JSON text).
    pub args: String,
    /// Who asked (`user@host`).
    pub requested_by: String,
}

/// The leader's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandAnswer {
    /// Whether it was carried out.
    pub ok: bool,
    /// Whether it was attempted and failed (not refused).
    pub failed: bool,
    /// What the leader said.
    pub answer: String,
}

const TS: &str = "to_char(%s at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

const COLUMNS: &str = "state, reason, entered_at, read_new, write_side, version, \
     stage_entered_at, rolled_back_at_percent, decision::text, leader, \
     extract(epoch from clock_timestamp() - leader_seen_at)::float8";

fn percent(value: i16) -> u8 {
    u8::try_from(value.clamp(0, 100)).unwrap_or(0)
}

fn from_row(row: &tokio_postgres::Row) -> Result<StoredController, tokio_postgres::Error> {
    Ok(StoredController {
        state: row.try_get(0)?,
        reason: row.try_get(1)?,
        entered_at: row.try_get(2)?,
        read_new: percent(row.try_get(3)?),
        write_side: row.try_get(4)?,
        version: row.try_get(5)?,
        stage_entered_at: row.try_get(6)?,
        rolled_back_at_percent: row.try_get::<_, Option<i16>>(7)?.map(percent),
        decision: row.try_get(8)?,
        leader: row.try_get(9)?,
        leader_seen_age_seconds: row.try_get(10)?,
    })
}

/// Whether the controller tables exist (a state schema older than version 5
/// has none until `run` upgrades it).
pub async fn tables_exist(client: &Client) -> Result<bool, tokio_postgres::Error> {
    client.query_one("select to_regclass('walshift.controller') is not null", &[]).await?.try_get(0)
}

/// The stored decision of `migration`, if the controller ever ran.
pub async fn load(
    client: &Client,
    migration: &str,
) -> Result<Option<StoredController>, tokio_postgres::Error> {
    if !tables_exist(client).await? {
        return Ok(None);
    }
    let sql = format!("select {COLUMNS} from walshift.controller where migration = $1");
    client.query_opt(&sql, &[&migration]).await?.as_ref().map(from_row).transpose()
}

/// Makes `me` the leader of `migration`, creating the row from `initial`
/// the first time; returns the stored decision (the previous leader's, if
/// any: a new leader resumes it).
pub async fn claim(
    client: &Client,
    migration: &str,
    me: &str,
    initial: &StoredController,
) -> Result<StoredController, tokio_postgres::Error> {
    client
        .execute(
            "insert into walshift.controller (migration, state, reason, entered_at, read_new, \
             write_side, version, stage_entered_at, rolled_back_at_percent, decision) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb) \
             on conflict (migration) do nothing",
            &[
                &migration,
                &initial.state,
                &initial.reason,
                &initial.entered_at,
                &i16::from(initial.read_new),
                &initial.write_side,
                &initial.version,
                &initial.stage_entered_at,
                &initial.rolled_back_at_percent.map(i16::from),
                &initial.decision,
            ],
        )
        .await?;
    let sql = format!(
        "update walshift.controller set leader = $2, leader_seen_at = clock_timestamp() \
         where migration = $1 returning {COLUMNS}"
    );
    let row = client.query_one(&sql, &[&migration, &me]).await?;
    from_row(&row)
}

/// Stores a new decision and its audit entry in one transaction, if `me`
/// is still the leader; returns false (nothing written) when it is not.
pub async fn save(
    client: &mut Client,
    migration: &str,
    me: &str,
    stored: &StoredController,
    audit: &AuditEntry,
) -> Result<bool, tokio_postgres::Error> {
    let txn = client.transaction().await?;
    let updated = txn
        .execute(
            "update walshift.controller set state = $3, reason = $4, entered_at = $5, \
             read_new = $6, write_side = $7, version = $8, stage_entered_at = $9, \
             rolled_back_at_percent = $10, decision = $11::text::jsonb, \
             leader_seen_at = clock_timestamp(), updated_at = clock_timestamp() \
             where migration = $1 and leader = $2",
            &[
                &migration,
                &me,
                &stored.state,
                &stored.reason,
                &stored.entered_at,
                &i16::from(stored.read_new),
                &stored.write_side,
                &stored.version,
                &stored.stage_entered_at,
                &stored.rolled_back_at_percent.map(i16::from),
                &stored.decision,
            ],
        )
        .await?;
    if updated == 0 {
        txn.rollback().await?;
        return Ok(false);
    }
    insert_audit(&txn, migration, audit).await?;
    txn.commit().await?;
    Ok(true)
}

/// Records that the leader `me` is alive; false when it is no longer the
/// leader.
pub async fn seen(
    client: &Client,
    migration: &str,
    me: &str,
) -> Result<bool, tokio_postgres::Error> {
    let n = client
        .execute(
            "update walshift.controller set leader_seen_at = clock_timestamp() \
             where migration = $1 and leader = $2",
            &[&migration, &me],
        )
        .await?;
    Ok(n == 1)
}

/// Audit entries of `migration` after `after` of `kind`, oldest first.
pub async fn audit_since(
    client: &Client,
    migration: &str,
    after: i64,
    kind: &str,
) -> Result<Vec<AuditEntry>, tokio_postgres::Error> {
    Ok(history(client, migration, 1000)
        .await?
        .into_iter()
        .filter(|a| a.id > after && a.kind == kind)
        .collect())
}

/// The id of the newest audit entry of `migration` (0 without any).
pub async fn last_audit_id(client: &Client, migration: &str) -> Result<i64, tokio_postgres::Error> {
    if !tables_exist(client).await? {
        return Ok(0);
    }
    client
        .query_one(
            "select coalesce(max(id), 0) from walshift.audit where migration = $1",
            &[&migration],
        )
        .await?
        .try_get(0)
}

/// Appends an audit entry on its own.
pub async fn audit(
    client: &Client,
    migration: &str,
    entry: &AuditEntry,
) -> Result<(), tokio_postgres::Error> {
    insert_audit(client, migration, entry).await
}

async fn insert_audit(
    client: &impl tokio_postgres::GenericClient,
    migration: &str,
    entry: &AuditEntry,
) -> Result<(), tokio_postgres::Error> {
    let gates = entry.gates.as_ref().map(ToString::to_string);
    client
        .execute(
            "insert into walshift.audit (migration, kind, from_state, to_state, read_new, \
             version, reason, gates, actor) values ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9)",
            &[
                &migration,
                &entry.kind,
                &entry.from_state,
                &entry.to_state,
                &entry.read_new.map(i16::from),
                &entry.version,
                &entry.reason,
                &gates,
                &entry.actor,
            ],
        )
        .await?;
    Ok(())
}

/// The audit trail of `migration`, newest last; at most `limit` entries
/// (the newest ones).
pub async fn history(
    client: &Client,
    migration: &str,
    limit: i64,
) -> Result<Vec<AuditEntry>, tokio_postgres::Error> {
    if !tables_exist(client).await? {
        return Ok(Vec::new());
    }
    let sql = format!(
        "select * from (select id, {at}, kind, from_state, to_state, read_new, version, reason, \
         gates::text, actor from walshift.audit where migration = $1 order by id desc limit $2) \
         as newest order by id",
        at = TS.replace("%s", "at")
    );
    let rows = client.query(&sql, &[&migration, &limit]).await?;
    rows.iter()
        .map(|row| {
            let gates: Option<String> = row.try_get(8)?;
            Ok(AuditEntry {
                id: row.try_get(0)?,
                at: row.try_get(1)?,
                kind: row.try_get(2)?,
                from_state: row.try_get(3)?,
                to_state: row.try_get(4)?,
                read_new: row.try_get::<_, Option<i16>>(5)?.map(percent),
                version: row.try_get(6)?,
                reason: row.try_get(7)?,
                gates: gates.and_then(|g| serde_json::from_str(&g).ok()),
                actor: row.try_get(9)?,
            })
        })
        .collect()
}

/// Queues a command for the leader; returns its id.
pub async fn request(
    client: &Client,
    migration: &str,
    command: &str,
    args: &str,
    by: &str,
) -> Result<i64, tokio_postgres::Error> {
    client
        .query_one(
            "insert into walshift.commands (migration, command, args, requested_by) \
             values ($1, $2, $3::text::jsonb, $4) returning id",
            &[&migration, &command, &args, &by],
        )
        .await?
        .try_get(0)
}

/// Commands not answered yet, oldest first.
pub async fn pending(
    client: &Client,
    migration: &str,
) -> Result<Vec<PendingCommand>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select id, command, args::text, requested_by from walshift.commands \
             where migration = $1 and answered_at is null order by id",
            &[&migration],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(PendingCommand {
                id: row.try_get(0)?,
                command: row.try_get(1)?,
                args: row.try_get(2)?,
                requested_by: row.try_get(3)?,
            })
        })
        .collect()
}

/// Answers command `id`.
pub async fn answer(
    client: &Client,
    id: i64,
    ok: bool,
    text: &str,
) -> Result<(), tokio_postgres::Error> {
    answer_with(client, id, ok, false, text).await
}

/// Answers command `id`; `failed`: it was attempted and failed.
pub async fn answer_with(
    client: &Client,
    id: i64,
    ok: bool,
    failed: bool,
    text: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "update walshift.commands set answered_at = clock_timestamp(), ok = $2, answer = $3, \
             failed = $4 where id = $1 and answered_at is null",
            &[&id, &ok, &text, &failed],
        )
        .await?;
    Ok(())
}

/// Answers every `command` of `migration` that a leader started on and
/// never answered (it died meanwhile).
pub async fn answer_picked(
    client: &Client,
    migration: &str,
    command: &str,
    ok: bool,
    failed: bool,
    text: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "update walshift.commands set answered_at = clock_timestamp(), ok = $3, answer = $4, \
             failed = $5 where migration = $1 and command = $2 and picked_at is not null \
             and answered_at is null",
            &[&migration, &command, &ok, &text, &failed],
        )
        .await?;
    Ok(())
}

/// Marks command `id` as started on (it can no longer be withdrawn).
pub async fn pick(client: &Client, id: i64) -> Result<bool, tokio_postgres::Error> {
    let n = client
        .execute(
            "update walshift.commands set picked_at = clock_timestamp() \
             where id = $1 and answered_at is null and picked_at is null",
            &[&id],
        )
        .await?;
    Ok(n == 1)
}

/// The answer to command `id`, once there is one.
pub async fn answer_of(
    client: &Client,
    id: i64,
) -> Result<Option<CommandAnswer>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "select ok, answer, failed from walshift.commands where id = $1 and answered_at is not null",
            &[&id],
        )
        .await?;
    row.map(|row| {
        Ok(CommandAnswer { ok: row.try_get(0)?, answer: row.try_get(1)?, failed: row.try_get(2)? })
    })
    .transpose()
}

/// Withdraws command `id` if it was not answered (the CLI gave up waiting).
pub async fn withdraw(client: &Client, id: i64) -> Result<bool, tokio_postgres::Error> {
    let n = client
        .execute(
            "update walshift.commands set answered_at = clock_timestamp(), ok = false, \
             answer = 'withdrawn: the requester stopped waiting' \
             where id = $1 and answered_at is null and picked_at is null",
            &[&id],
        )
        .await?;
    Ok(n == 1)
}
