//! Where the stream stands, as verification needs it: a *barrier* written
//! into the source WAL, and a wait until the target has applied past it.
//!
//! A barrier is a transactional logical message
//! (`pg_logical_emit_message(true, 'walshift', …)`); pgoutput sends it as a
//! transaction of its own (the stream is started with `messages 'true'`),
//! which the applier commits like any other, storing its end as the applied
//! position. Once the applied position passes the barrier, every source
//! transaction that committed before the barrier was written is applied.
//!
//! Who applies decides how to wait:
//! * [`Applied::InProcess`]: the applier of this process (`walshift run`):
//!   its durable position, pushed through a `watch` channel;
//! * [`Applied::Stored`]: another process streams: poll
//!   `walshift.progress.applied_lsn` on the target;
//! * [`Applied::Stopped`]: nothing streams: changes may be waiting in the
//!   slot, which [`pending_changes`] peeks at.

use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio_postgres::Client;
use tokio_postgres::types::PgLsn;

use crate::lag::Lag;
use crate::lsn::Lsn;

/// Longest wait for the stream to apply past a barrier.
pub const BARRIER_WAIT: Duration = Duration::from_secs(30);

/// Poll interval of this process's applied position.
const IN_PROCESS_POLL: Duration = Duration::from_millis(2);

/// Poll interval of the stored applied position.
const POLL: Duration = Duration::from_millis(20);

/// Who applies the stream.
#[derive(Debug, Clone)]
pub enum Applied {
    /// The applier in this process: its last committed position.
    InProcess(Arc<Lag>),
    /// Another process: `walshift.progress` of this migration.
    Stored {
        /// Migration name.
        migration: String,
    },
    /// Nothing applies now.
    Stopped {
        /// The slot changes wait in.
        slot: String,
        /// The publication.
        publication: String,
    },
}

/// Result of a barrier wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passed {
    /// The stream applied past the barrier.
    Yes,
    /// It did not within [`BARRIER_WAIT`].
    TimedOut,
    /// Nothing applies: the barrier stays in the slot.
    NotStreaming,
}

/// Writes a barrier into the source WAL; returns its position.
pub async fn write_barrier(source: &Client) -> Result<Lsn, tokio_postgres::Error> {
    let row = source
        .query_one("select pg_logical_emit_message(true, 'walshift', 'verify barrier')", &[])
        .await?;
    let lsn: PgLsn = row.try_get(0)?;
    Ok(Lsn(u64::from(lsn)))
}

/// Writes a barrier and waits until the stream has applied past it.
pub async fn barrier(
    applied: &mut Applied,
    source: &Client,
    target: &Client,
) -> Result<Passed, tokio_postgres::Error> {
    if matches!(applied, Applied::Stopped { .. }) {
        return Ok(Passed::NotStreaming);
    }
    let at = write_barrier(source).await?;
    let deadline = Instant::now() + BARRIER_WAIT;
    match applied {
        Applied::InProcess(lag) => loop {
            if lag.applied_lsn() > at {
                return Ok(Passed::Yes);
            }
            if Instant::now() >= deadline {
                return Ok(Passed::TimedOut);
            }
            tokio::time::sleep(IN_PROCESS_POLL).await;
        },
        Applied::Stored { migration } => loop {
            let lsn = crate::state::progress::load(target, migration).await?;
            if lsn > at {
                return Ok(Passed::Yes);
            }
            if Instant::now() >= deadline {
                return Ok(Passed::TimedOut);
            }
            tokio::time::sleep(POLL).await;
        },
        Applied::Stopped { .. } => Ok(Passed::NotStreaming),
    }
}

/// Whether the slot holds changes of the publication's tables that no one
/// applied yet (peeked, not consumed; the slot must not be in use).
pub async fn pending_changes(
    source: &Client,
    slot: &str,
    publication: &str,
) -> Result<bool, tokio_postgres::Error> {
    let row = source
        .query_one(
            "select exists (select 1 from pg_logical_slot_peek_binary_changes($1, null, null, \
             'proto_version', '1', 'publication_names', $2))",
            &[&slot, &publication],
        )
        .await?;
    row.try_get(0)
}
