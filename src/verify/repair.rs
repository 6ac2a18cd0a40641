//! Repair: re-copies keys from the source under the backfill's ordering
//! rule (see `docs/backfill.md` and `docs/verify.md`). The source rows are
//! read at a snapshot that contains every source transaction the target
//! has applied (checked, as a backfill chunk's is), and written at that
//! applied position, i.e. between two of the applier's transactions (or
//! while nothing applies at all): every later change is still in the
//! stream and is applied after the repair, so the target converges.
//!
//! A key the source still has is upserted through the mapping (a row the
//! filter now excludes is deleted); a key the source no longer has is
//! deleted from the target.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_postgres::Client;

use crate::apply::statements;
use crate::apply::writer::{WriteError, Writer};
use crate::backfill::keyset::{SNAPSHOT_QUERY, Snapshot};
use crate::change::{Datum, TableIdx};

/// Longest wait for a snapshot that contains every applied transaction.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

/// Why a repair failed.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// Reading the source failed.
    #[error("repair of {table}: {context}: {}", crate::pg::client::server_message(source))]
    Read {
        /// Target table.
        table: String,
        /// What it was doing.
        context: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Writing the target failed.
    #[error("repair of {table}: {source}")]
    Write {
        /// Target table.
        table: String,
        /// The cause.
        #[source]
        source: WriteError,
    },
    /// Committing failed.
    #[error("repair of {table}: {context}: {}", crate::pg::client::server_message(source))]
    Target {
        /// Target table.
        table: String,
        /// What it was doing.
        context: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// No snapshot contained every applied transaction in time.
    #[error("repair of {table}: source transaction {xid} was applied but is still not visible")]
    SnapshotWait {
        /// Target table.
        table: String,
        /// A transaction still invisible.
        xid: String,
    },
}

impl RepairError {
    /// Whether a retry may fix it.
    pub fn is_transient(&self) -> bool {
        use crate::pg::client::{SqlErrorKind, classify};
        match self {
            RepairError::Read { source, .. } | RepairError::Target { source, .. } => {
                classify(source) == SqlErrorKind::Transient
            }
            RepairError::Write { source, .. } => {
                classify(&source.source) == SqlErrorKind::Transient
            }
            RepairError::SnapshotWait { .. } => true,
        }
    }
}

/// What a repair did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Keys rewritten from the source.
    pub rewritten: u64,
    /// Keys deleted from the target (gone from the source).
    pub deleted: u64,
}

/// Re-copies `keys` (source key text per key column) of table `t` through
/// `writer`, whose session has no transaction open. `unproven` are the
/// 32-bit ids of source transactions applied recently: the read's snapshot
/// must contain them.
pub async fn repair_keys(
    writer: &mut Writer,
    source: &Client,
    t: TableIdx,
    keys: &[Vec<String>],
    unproven: &[u32],
) -> Result<Repaired, RepairError> {
    let tp = writer.plan().tables[t].clone();
    let table = tp.target.readable();
    let read = |context| {
        let table = table.clone();
        move |source| RepairError::Read { table, context, source }
    };
    let statement = source
        .prepare(&statements::fetch_rows(&tp))
        .await
        .map_err(read("preparing the source read"))?;
    let k = tp.key_inputs.len();
    let arrays: Vec<Vec<String>> = (0..k)
        .map(|j| keys.iter().map(|key| key.get(j).cloned().unwrap_or_default()).collect())
        .collect();
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        arrays.iter().map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
    let started = Instant::now();
    let rows = loop {
        let (begun, snapshot, rows, committed) = tokio::join!(
            source.batch_execute("begin isolation level repeatable read, read only"),
            source.query_one(SNAPSHOT_QUERY, &[]),
            source.query(&statement, &params),
            source.batch_execute("commit"),
        );
        begun.map_err(read("starting the source read"))?;
        let snapshot = snapshot.map_err(read("reading the snapshot"))?;
        let rows = rows.map_err(read("reading the rows to repair"))?;
        committed.map_err(read("ending the source read"))?;
        let text: String = snapshot.try_get(0).map_err(read("reading the snapshot"))?;
        let invisible: Vec<String> = snapshot.try_get(1).map_err(read("reading the snapshot"))?;
        let missing = invisible.first().cloned().or_else(|| {
            Snapshot::parse(&text).and_then(|s| {
                unproven.iter().find(|&&x| !s.sees_committed(x)).map(|x| x.to_string())
            })
        });
        match missing {
            None => break rows,
            Some(xid) if started.elapsed() >= SNAPSHOT_WAIT => {
                return Err(RepairError::SnapshotWait { table, xid });
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    };
    let mut found = HashSet::new();
    let mut upserts = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut values = Vec::with_capacity(tp.inputs.len());
        for i in 0..tp.inputs.len() {
            let v: Option<String> = row.try_get(i).map_err(read("reading the rows to repair"))?;
            values.push(match v {
                Some(v) => Datum::Text(Bytes::from(v)),
                None => Datum::Null,
            });
        }
        let key: Vec<String> = tp
            .key_inputs
            .iter()
            .map(|&ki| match &values[ki] {
                Datum::Text(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            })
            .collect();
        found.insert(key);
        upserts.push(values);
    }
    let gone: Vec<Vec<Datum>> = keys
        .iter()
        .filter(|k| !found.contains(*k))
        .map(|k| k.iter().map(|v| Datum::Text(Bytes::from(v.clone()))).collect())
        .collect();
    let target = |context| {
        let table = table.clone();
        move |source| RepairError::Target { table, context, source }
    };
    writer
        .client()
        .batch_execute("begin; set constraints all deferred")
        .await
        .map_err(target("starting the repair transaction"))?;
    if let Err(source) = writer.repair(t, &upserts, &gone).await {
        let _ = writer.client().batch_execute("rollback").await;
        return Err(RepairError::Write { table, source });
    }
    writer.client().batch_execute("commit").await.map_err(target("committing the repair"))?;
    let repaired = Repaired { rewritten: upserts.len() as u64, deleted: gone.len() as u64 };
    tracing::info!(
        table = %tp.target.readable(),
        rewritten = repaired.rewritten,
        deleted = repaired.deleted,
        "repaired rows from the source"
    );
    Ok(repaired)
}
