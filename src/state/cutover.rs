//! The write cutover's record (`walshift.cutover_attempts`): one row per
//! attempt, written before the fence is taken and at every step after, so a
//! restarted walshift finds an attempt that did not end and finishes it
//! (see `docs/cutover.md`). The commit point of an attempt is the fence
//! transaction on the source, not this row.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_postgres::types::PgLsn;

use crate::lsn::Lsn;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Writes are on new.
    CutOver,
    /// Stopped before the flip; everything as it was.
    Aborted,
    /// A crash after the fence committed; a restart finished it.
    RecoveredForward,
    /// A crash before the fence committed; a restart went back to old.
    RecoveredBack,
    /// Undone after the flip (`walshift rollback --abandon-new-writes`).
    Undone,
}

impl Outcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::CutOver => "cut_over",
            Outcome::Aborted => "aborted",
            Outcome::RecoveredForward => "recovered_forward",
            Outcome::RecoveredBack => "recovered_back",
            Outcome::Undone => "undone",
        }
    }

    /// Whether writes ended on new.
    pub fn is_cut_over(self) -> bool {
        matches!(self, Outcome::CutOver | Outcome::RecoveredForward)
    }

    fn parse(text: &str) -> Option<Outcome> {
        [
            Outcome::CutOver,
            Outcome::Aborted,
            Outcome::RecoveredForward,
            Outcome::RecoveredBack,
            Outcome::Undone,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}

/// One sequence moved by the cutover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedSequence {
    /// The target's sequence.
    pub sequence: String,
    /// The source sequence it follows.
    pub source: String,
    /// Its value before.
    pub from: i64,
    /// Its value after (`setval`, called).
    pub to: i64,
}

/// Figures of an attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Locking attempts until the fence was held (or given up).
    pub lock_attempts: Option<i32>,
    /// From the first locking attempt to the lock granted.
    pub lock_wait_seconds: Option<f64>,
    /// From the barrier written to the applier past it (durably).
    pub drain_seconds: Option<f64>,
    /// The final check.
    pub check_seconds: Option<f64>,
    /// From the lock granted to write `new` published.
    pub pause_seconds: Option<f64>,
}

/// One attempt as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Its id.
    pub id: i64,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Who asked (`user@host`, or `config` for `[traffic] write = "new"`).
    pub requested_by: String,
    /// The last step reached.
    pub step: String,
    /// How it ended; `None` while in progress.
    pub outcome: Option<Outcome>,
    /// Why it ended so.
    pub reason: Option<String>,
    /// The barrier written under the fence.
    pub barrier_lsn: Option<Lsn>,
    /// Measured figures.
    pub figures: Figures,
    /// Sequences moved.
    pub sequences: Vec<MovedSequence>,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
}

const TS: &str = "to_char(%s at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

fn columns() -> String {
    format!(
        "id, {started}, requested_by, step, outcome, reason, barrier_lsn, lock_attempts, \
         lock_wait_seconds, drain_seconds, check_seconds, pause_seconds, sequences::text, {finished}",
        started = TS.replace("%s", "started_at"),
        finished = TS.replace("%s", "finished_at"),
    )
}

fn from_row(row: &tokio_postgres::Row) -> Result<Attempt, tokio_postgres::Error> {
    let outcome: Option<String> = row.try_get(4)?;
    let barrier: Option<PgLsn> = row.try_get(6)?;
    let sequences: Option<String> = row.try_get(12)?;
    Ok(Attempt {
        id: row.try_get(0)?,
        started_at: row.try_get(1)?,
        requested_by: row.try_get(2)?,
        step: row.try_get(3)?,
        outcome: outcome.as_deref().and_then(Outcome::parse),
        reason: row.try_get(5)?,
        barrier_lsn: barrier.map(|l| Lsn(u64::from(l))),
        figures: Figures {
            lock_attempts: row.try_get(7)?,
            lock_wait_seconds: row.try_get(8)?,
            drain_seconds: row.try_get(9)?,
            check_seconds: row.try_get(10)?,
            pause_seconds: row.try_get(11)?,
        },
        sequences: sequences.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default(),
        finished_at: row.try_get(13)?,
    })
}

/// Whether the table exists (a state schema older than version 6 has none
/// until `run` upgrades it).
pub async fn table_exists(client: &Client) -> Result<bool, tokio_postgres::Error> {
    client
        .query_one("select to_regclass('walshift.cutover_attempts') is not null", &[])
        .await?
        .try_get(0)
}

/// Starts an attempt; returns its id.
pub async fn begin(
    client: &Client,
    migration: &str,
    requested_by: &str,
) -> Result<i64, tokio_postgres::Error> {
    client
        .query_one(
            "insert into walshift.cutover_attempts (migration, requested_by, step) \
             values ($1, $2, 'check') returning id",
            &[&migration, &requested_by],
        )
        .await?
        .try_get(0)
}

/// Records that attempt `id` reached `step`.
pub async fn step(client: &Client, id: i64, step: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute("update walshift.cutover_attempts set step = $2 where id = $1", &[&id, &step])
        .await?;
    Ok(())
}

/// Records the figures (and sequences) measured so far.
pub async fn record(
    client: &Client,
    id: i64,
    figures: &Figures,
    sequences: &[MovedSequence],
) -> Result<(), tokio_postgres::Error> {
    let sequences = serde_json::to_string(sequences).unwrap_or_else(|_| "[]".into());
    client
        .execute(
            "update walshift.cutover_attempts set lock_attempts = $2, lock_wait_seconds = $3, \
             drain_seconds = $4, check_seconds = $5, pause_seconds = $6, \
             sequences = $7::text::jsonb where id = $1",
            &[
                &id,
                &figures.lock_attempts,
                &figures.lock_wait_seconds,
                &figures.drain_seconds,
                &figures.check_seconds,
                &figures.pause_seconds,
                &sequences,
            ],
        )
        .await?;
    Ok(())
}

/// The statement the applier's session runs (with `synchronous_commit =
/// on`) once it has applied past the barrier: the barrier position is
/// stored, and the commit flushes every applied transaction before it.
pub const RECORD_DRAINED: &str =
    "update walshift.cutover_attempts set barrier_lsn = $2, step = 'drain' where id = $1";

/// Ends attempt `id`.
pub async fn finish(
    client: &Client,
    id: i64,
    outcome: Outcome,
    reason: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "update walshift.cutover_attempts set outcome = $2, reason = $3, \
             finished_at = clock_timestamp() where id = $1",
            &[&id, &outcome.as_str(), &reason],
        )
        .await?;
    Ok(())
}

/// The attempt of `migration` that did not end, if any.
pub async fn open(
    client: &Client,
    migration: &str,
) -> Result<Option<Attempt>, tokio_postgres::Error> {
    newest(client, migration, "and outcome is null").await
}

/// The newest attempt of `migration`.
pub async fn latest(
    client: &Client,
    migration: &str,
) -> Result<Option<Attempt>, tokio_postgres::Error> {
    newest(client, migration, "").await
}

/// The newest attempt of `migration` matching `and_where` (SQL, fixed text).
async fn newest(
    client: &Client,
    migration: &str,
    and_where: &'static str,
) -> Result<Option<Attempt>, tokio_postgres::Error> {
    if !table_exists(client).await? {
        return Ok(None);
    }
    let sql = format!(
        "select {} from walshift.cutover_attempts where migration = $1 {and_where} \
         order by id desc limit 1",
        columns()
    );
    client.query_opt(&sql, &[&migration]).await?.as_ref().map(from_row).transpose()
}

/// The barrier of the cutover in force (the newest attempt, if it ended
/// with writes on new): changes to mapped tables committed after it got
/// past the fence.
pub async fn cut_over_barrier(
    client: &Client,
    migration: &str,
) -> Result<Option<Lsn>, tokio_postgres::Error> {
    Ok(latest(client, migration)
        .await?
        .filter(|a| a.outcome.is_some_and(Outcome::is_cut_over))
        .and_then(|a| a.barrier_lsn))
}
