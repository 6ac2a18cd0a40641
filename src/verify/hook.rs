//! Verification's part in the applier (a [`BetweenTxns`] worker): it feeds
//! the keys of every applied change into [`DirtyKeys`] (for incremental
//! passes and for confirming differences), and runs the repairs the
//! periodic verification asks for *between* the applier's transactions, at
//! a snapshot checked to contain every transaction applied so far (see
//! [`crate::verify::repair`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use crate::apply::between::{BetweenCtx, BetweenTxns, Step, StepFuture, WorkError};
use crate::change::{Change, Datum, TableIdx};
use crate::lsn::Lsn;
use crate::transform::Plan;
use crate::verify::dirty::DirtyKeys;
use crate::verify::repair::{self, Repaired};

/// Recently applied transaction ids kept for the repair's snapshot check:
/// a transaction applied before these is long visible to new snapshots.
const RECENT_XIDS: usize = 10_000;

/// A request to re-copy keys of a table.
#[derive(Debug)]
pub struct RepairRequest {
    /// The table.
    pub table: TableIdx,
    /// Its keys (source text per key column).
    pub keys: Vec<Vec<String>>,
    /// The outcome.
    pub done: oneshot::Sender<Result<Repaired, String>>,
}

/// Where repair requests wait; shared by the sessions of one run.
pub type RepairQueue = Arc<Mutex<mpsc::Receiver<RepairRequest>>>;

/// The applier-side worker of verification.
pub struct VerifyHook {
    plan: Arc<Plan>,
    dirty: Arc<DirtyKeys>,
    repairs: Option<(RepairQueue, Client)>,
    recent: VecDeque<u32>,
}

impl std::fmt::Debug for VerifyHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyHook").finish_non_exhaustive()
    }
}

fn text(d: Option<&Datum>) -> String {
    match d {
        Some(Datum::Text(b)) | Some(Datum::Binary(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

impl VerifyHook {
    /// Tracks the keys the applier changes into `dirty`.
    pub fn new(plan: Arc<Plan>, dirty: Arc<DirtyKeys>) -> Self {
        VerifyHook { plan, dirty, repairs: None, recent: VecDeque::new() }
    }

    /// Also runs the repairs queued in `queue`, reading the source through
    /// `source` (a dedicated session).
    pub fn with_repairs(mut self, queue: RepairQueue, source: Client) -> Self {
        self.repairs = Some((queue, source));
        self
    }

    fn key_of_row(&self, table: TableIdx, row: &[Datum]) -> Vec<String> {
        self.plan.tables[table].key_inputs.iter().map(|&k| text(row.get(k))).collect()
    }
}

impl BetweenTxns for VerifyHook {
    fn begin(&mut self, xid: u32, _final_lsn: Lsn) {
        if self.repairs.is_some() {
            if self.recent.len() >= RECENT_XIDS {
                self.recent.pop_front();
            }
            self.recent.push_back(xid);
        }
    }

    fn change(&mut self, change: &Change) {
        match change {
            Change::Insert { table, new } => {
                let key = self.key_of_row(*table, new);
                self.dirty.touch(*table, key);
            }
            Change::Update { table, old_key, new } => {
                let old: Vec<String> = old_key.iter().map(|d| text(Some(d))).collect();
                let key = self.key_of_row(*table, new);
                if old != key {
                    self.dirty.touch(*table, old);
                }
                self.dirty.touch(*table, key);
            }
            Change::Delete { table, old_key } => {
                let old: Vec<String> = old_key.iter().map(|d| text(Some(d))).collect();
                self.dirty.touch(*table, old);
            }
        }
    }

    fn truncate(&mut self, tables: &[TableIdx]) {
        for &t in tables {
            self.dirty.touch_all(t);
        }
    }

    fn step<'a>(&'a mut self, ctx: BetweenCtx<'a>) -> StepFuture<'a> {
        Box::pin(async move {
            let Some((queue, source)) = &self.repairs else { return Ok(Step::Idle) };
            let request = queue.lock().ok().and_then(|mut q| q.try_recv().ok());
            let Some(request) = request else { return Ok(Step::Idle) };
            let unproven: Vec<u32> = self.recent.iter().copied().collect();
            let result =
                repair::repair_keys(ctx.writer, source, request.table, &request.keys, &unproven)
                    .await;
            match result {
                Ok(done) => {
                    self.recent.clear();
                    let _ = request.done.send(Ok(done));
                    Ok(Step::Worked)
                }
                Err(e) => {
                    let _ = request.done.send(Err(crate::error::display_chain(&e)));
                    if e.is_transient() {
                        Err(WorkError::new(true, e))
                    } else {
                        tracing::warn!(error = %e, "repair failed");
                        Ok(Step::Worked)
                    }
                }
            }
        })
    }
}
