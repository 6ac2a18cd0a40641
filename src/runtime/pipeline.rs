//! The long-lived handle of one `walshift run`'s pipeline: what the
//! controller (and the write cutover) reach the stream, the applier and
//! verification through. It outlives sessions (reconnects) and is created
//! before the leader starts the pipeline.
//!
//! * `drain`: requests the applier answers between two transactions
//!   ([`crate::cutover::drain`]);
//! * `verify_lock`: held by the periodic verification for each pass and by
//!   the cutover from its pre-check to its final check, so the final check
//!   sees every key the stream changed since the last pass;
//! * `dirty`: the keys the stream changed (with `[verify] enabled`);
//! * `cut_over_at`: the barrier of the cutover in force; a change to a mapped
//!   table committed after it got past the fence and is reported, not
//!   applied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::cutover::drain::{self, DrainQueue, DrainRequest};
use crate::lsn::Lsn;
use crate::telemetry::metrics as m;
use crate::verify::dirty::DirtyKeys;

/// See the module documentation.
#[derive(Debug)]
pub struct PipelineHandle {
    /// Where drain requests go.
    pub drain_tx: mpsc::Sender<DrainRequest>,
    /// Where the applier takes them from.
    pub drain_queue: DrainQueue,
    /// Wakes the applier's workers (after a drain request is queued).
    pub work_arrived: Arc<tokio::sync::Notify>,
    /// Exclusive use of verification.
    pub verify_lock: Arc<tokio::sync::Mutex<()>>,
    dirty: Mutex<Option<Arc<DirtyKeys>>>,
    cut_over_at: AtomicU64,
    late_changes: AtomicU64,
}

impl Default for PipelineHandle {
    fn default() -> Self {
        let (drain_tx, drain_queue) = drain::channel();
        PipelineHandle {
            drain_tx,
            drain_queue,
            work_arrived: Arc::default(),
            verify_lock: Arc::default(),
            dirty: Mutex::default(),
            cut_over_at: AtomicU64::new(0),
            late_changes: AtomicU64::new(0),
        }
    }
}

impl PipelineHandle {
    /// The dirty keys of the running pipeline (with verification on).
    pub fn dirty(&self) -> Option<Arc<DirtyKeys>> {
        self.dirty.lock().ok().and_then(|d| d.clone())
    }

    /// Sets the dirty keys (at the start of a run).
    pub fn set_dirty(&self, dirty: Option<Arc<DirtyKeys>>) {
        if let Ok(mut d) = self.dirty.lock() {
            *d = dirty;
        }
    }

    /// The barrier of the cutover in force.
    pub fn cut_over_at(&self) -> Option<Lsn> {
        match self.cut_over_at.load(Ordering::Acquire) {
            0 => None,
            lsn => Some(Lsn(lsn)),
        }
    }

    /// Sets (or clears) the barrier of the cutover in force.
    pub fn set_cut_over_at(&self, barrier: Option<Lsn>) {
        self.cut_over_at.store(barrier.map_or(0, |l| l.0), Ordering::Release);
    }

    /// Counts a change to `table` committed at `lsn`, after the cutover:
    /// reported as an error, not applied.
    pub fn late_change(&self, table: &str, lsn: Lsn) {
        let n = self.late_changes.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!(m::CHANGES_AFTER_CUTOVER, m::LABEL_TABLE => table.to_owned())
            .increment(1);
        if n <= 10 || n.is_power_of_two() {
            let text = format!(
                "a change to {table} committed at {lsn}, after the write cutover, got past the \
                 fence (trigger dropped or disabled?): not applied to the new table ({n} so far)"
            );
            tracing::error!(table, %lsn, count = n, "{text}");
            crate::telemetry::recent::record("stream", "after_cutover", text);
        }
    }

    /// Changes reported by [`Self::late_change`].
    pub fn late_changes(&self) -> u64 {
        self.late_changes.load(Ordering::Relaxed)
    }
}

/// A shared handle.
pub type Pipeline = Arc<PipelineHandle>;
