//! Work that runs *between two of the applier's transactions*, at a known
//! applied position: backfill chunks, verification repairs, and (later) the
//! cutover's drain to a barrier.
//!
//! ```text
//!  applier:  … commit (applied X) ──▶ for each worker: step(ctx at X) ──▶ begin …
//!                 ▲ begin(xid) / change(&Change) / truncate: what the stream applies
//! ```
//!
//! The applier knows nothing of what a worker does; a worker sees the stream
//! only through the notifications and [`BetweenCtx`]. Everything a worker
//! writes through [`BetweenCtx::writer`] commits before the applier's next
//! transaction starts, so it is ordered after every source transaction up to
//! `applied` and before every later one: the ordering rule the backfill's
//! convergence argument (`docs/backfill.md`) and the repair's rest on.
//!
//! While the stream has items waiting, the applier gives it a turn after
//! each step that did work, so workers and stream batches alternate.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::apply::writer::Writer;
use crate::change::{Change, StreamItem, TableIdx};
use crate::lsn::Lsn;
use crate::runtime::shutdown::Shutdown;

/// What a worker sees between two transactions.
pub struct BetweenCtx<'a> {
    /// The apply session (no transaction open). A worker that opens one
    /// commits or rolls it back before returning.
    pub writer: &'a mut Writer,
    /// End of the last source transaction committed on the target.
    pub applied: Lsn,
    /// Replication lag as the applier sees it: zero when nothing is queued,
    /// else the age of the last applied commit; `None` when unknown (nothing
    /// applied yet in this session while items are queued).
    pub lag: Option<Duration>,
    /// Shutdown was requested: finish quickly.
    pub shutdown: &'a Shutdown,
    queue: &'a mpsc::Receiver<Vec<StreamItem>>,
}

impl<'a> BetweenCtx<'a> {
    /// A context over the applier's state.
    pub(crate) fn new(
        writer: &'a mut Writer,
        applied: Lsn,
        lag: Option<Duration>,
        shutdown: &'a Shutdown,
        queue: &'a mpsc::Receiver<Vec<StreamItem>>,
    ) -> Self {
        BetweenCtx { writer, applied, lag, shutdown, queue }
    }

    /// Whether stream items are waiting to be applied (checked live).
    pub fn stream_waiting(&self) -> bool {
        !self.queue.is_empty()
    }
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do now.
    Idle,
    /// Nothing now; call again at this instant (a rate cap).
    WaitUntil(Instant),
    /// Did work; call again soon (after the stream's turn, if it waits).
    Worked,
}

/// A worker failed.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct WorkError {
    /// Whether a reconnect and resume may fix it.
    pub transient: bool,
    /// The cause.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl WorkError {
    /// Wraps `source`, transient or not.
    pub fn new(transient: bool, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        WorkError { transient, source: Box::new(source) }
    }
}

/// The future a step returns.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<Step, WorkError>> + Send + 'a>>;

/// Work the applier runs between its transactions.
pub trait BetweenTxns: Send + Sync {
    /// A source transaction with 32-bit id `xid`, committing at
    /// `final_lsn`, is about to be applied.
    fn begin(&mut self, xid: u32, final_lsn: Lsn) {
        let _ = (xid, final_lsn);
    }

    /// A change is about to be applied.
    fn change(&mut self, change: &Change) {
        let _ = change;
    }

    /// A TRUNCATE of these tables is about to be applied.
    fn truncate(&mut self, tables: &[TableIdx]) {
        let _ = tables;
    }

    /// Runs between two transactions.
    fn step<'a>(&'a mut self, ctx: BetweenCtx<'a>) -> StepFuture<'a>;
}
