//! The cutover's drain to a barrier, run by the applier between two of its
//! transactions (a [`BetweenTxns`] worker).
//!
//! The cutover writes a barrier into the source WAL once the fence holds
//! the old tables, and asks for a drain to it. Once the applier's applied
//! position has passed the barrier, this worker records the barrier in the
//! attempt's row with `synchronous_commit = on`, in the applier's own
//! session: that commit flushes the target's WAL past every transaction the
//! applier committed before it, so "drained" means durably applied, not
//! only visible.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::PgLsn;

use crate::apply::between::{BetweenCtx, BetweenTxns, Step, StepFuture, WorkError};
use crate::lsn::Lsn;

/// How often the worker looks again while a drain waits.
const POLL: Duration = Duration::from_millis(5);

/// A request to drain to a barrier.
#[derive(Debug)]
pub struct DrainRequest {
    /// The cutover attempt (its row records the barrier).
    pub attempt: i64,
    /// The barrier's position in the source WAL.
    pub barrier: Lsn,
    /// Answered with the applied position once it is durable past the
    /// barrier, or the error.
    pub done: oneshot::Sender<Result<Lsn, String>>,
}

/// Where drain requests wait; shared by the sessions of one run.
pub type DrainQueue = Arc<Mutex<mpsc::Receiver<DrainRequest>>>;

/// A queue of drain requests and its sender.
pub fn channel() -> (mpsc::Sender<DrainRequest>, DrainQueue) {
    let (tx, rx) = mpsc::channel(1);
    (tx, Arc::new(Mutex::new(rx)))
}

/// The applier-side worker.
#[derive(Debug)]
pub struct DrainHook {
    queue: DrainQueue,
    waiting: Option<DrainRequest>,
}

impl DrainHook {
    /// A worker answering requests from `queue`.
    pub fn new(queue: DrainQueue) -> Self {
        DrainHook { queue, waiting: None }
    }
}

impl BetweenTxns for DrainHook {
    fn step<'a>(&'a mut self, ctx: BetweenCtx<'a>) -> StepFuture<'a> {
        Box::pin(async move {
            if self.waiting.is_none() {
                self.waiting = self.queue.lock().ok().and_then(|mut q| q.try_recv().ok());
            }
            let Some(request) = self.waiting.take() else { return Ok(Step::Idle) };
            if request.done.is_closed() {
                // The cutover gave up waiting.
                return Ok(Step::Idle);
            }
            if ctx.applied <= request.barrier {
                self.waiting = Some(request);
                return Ok(Step::WaitUntil(Instant::now() + POLL));
            }
            let client = ctx.writer.client();
            let barrier = PgLsn::from(request.barrier.0);
            let recorded = async {
                client.batch_execute("begin; set local synchronous_commit = on").await?;
                client
                    .execute(crate::state::cutover::RECORD_DRAINED, &[&request.attempt, &barrier])
                    .await?;
                client.batch_execute("commit").await
            }
            .await;
            match recorded {
                Ok(()) => {
                    let _ = request.done.send(Ok(ctx.applied));
                    Ok(Step::Worked)
                }
                Err(e) => {
                    let _ = client.batch_execute("rollback").await;
                    let text = crate::pg::client::server_message(&e);
                    let _ = request.done.send(Err(text));
                    Err(WorkError::new(true, e))
                }
            }
        })
    }
}
