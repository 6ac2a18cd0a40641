//! Replication commands on a replication connection: `IDENTIFY_SYSTEM` and
//! `CREATE_REPLICATION_SLOT ... LOGICAL pgoutput`.
//!
//! Slots are created here (not with `pg_create_logical_replication_slot`)
//! because only the replication protocol can export the slot's snapshot,
//! which a backfill can use to read the exact state the stream starts from.

use postgres_protocol::escape::escape_identifier;

use crate::lsn::Lsn;
use crate::replication::wire::{ReplicationConnection, WireError};

/// Errors of replication commands.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The command failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The server's answer lacked a column or had an unparsable value.
    #[error("unexpected answer to {command}: {what}")]
    BadAnswer {
        /// The command sent.
        command: &'static str,
        /// What was wrong.
        what: String,
    },
}

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier.
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlog_pos: Lsn,
    /// Database connected to.
    pub dbname: Option<String>,
}

/// A slot just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Slot name.
    pub name: String,
    /// The position from which changes will be streamed.
    pub consistent_point: Lsn,
    /// Exported snapshot name, if one was requested.
    pub snapshot_name: Option<String>,
}

/// Runs `IDENTIFY_SYSTEM`.
pub async fn identify_system(
    conn: &mut ReplicationConnection,
) -> Result<SystemIdentity, SlotError> {
    const COMMAND: &str = "IDENTIFY_SYSTEM";
    let result = conn.simple_query(COMMAND).await?;
    let missing = |col: &str| SlotError::BadAnswer { command: COMMAND, what: format!("no {col}") };
    let system_id = result.first("systemid").ok_or_else(|| missing("systemid"))?.to_owned();
    let timeline =
        result.first("timeline").ok_or_else(|| missing("timeline"))?.parse().map_err(|e| {
            SlotError::BadAnswer { command: COMMAND, what: format!("timeline: {e}") }
        })?;
    let xlog_pos =
        result.first("xlogpos").ok_or_else(|| missing("xlogpos"))?.parse().map_err(|e| {
            SlotError::BadAnswer { command: COMMAND, what: format!("xlogpos: {e}") }
        })?;
    Ok(SystemIdentity {
        system_id,
        timeline,
        xlog_pos,
        dbname: result.first("dbname").map(str::to_owned),
    })
}

/// Creates a logical slot using `pgoutput`, without exporting a snapshot.
pub async fn create_logical_slot(
    conn: &mut ReplicationConnection,
    name: &str,
) -> Result<CreatedSlot, SlotError> {
    const COMMAND: &str = "CREATE_REPLICATION_SLOT";
    let sql = format!(
        "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
        escape_identifier(name)
    );
    let result = conn.simple_query(&sql).await?;
    let consistent_point = result
        .first("consistent_point")
        .ok_or_else(|| SlotError::BadAnswer {
            command: COMMAND,
            what: "no consistent_point".into(),
        })?
        .parse()
        .map_err(|e| SlotError::BadAnswer {
            command: COMMAND,
            what: format!("consistent_point: {e}"),
        })?;
    Ok(CreatedSlot {
        name: name.to_owned(),
        consistent_point,
        snapshot_name: result.first("snapshot_name").map(str::to_owned),
    })
}
