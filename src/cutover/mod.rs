//! The write cutover's mechanisms; the controller runs the steps
//! (`controller::cutover`). The order of the steps and why a crash
//! between any two of them is never half done are in `docs/cutover.md`
//! ("Write cutover"):
//!
//! ```text
//!  check ─▶ precheck ─▶ announce (write "fenced") ─▶ fence (lock old tables)
//!    ─▶ drain (barrier applied, durably) ─▶ final_check ─▶ sequences
//!    ─▶ flip: commit the fence (triggers) ─▶ store cut_over ─▶ publish write "new"
//! ```
//!
//! * [`fence`]: the lock, the triggers, the commit point, recovery probes;
//! * [`drain`]: the applier-side worker that drains to the barrier;
//! * [`sequences`]: target sequences moved past the source's;
//! * this module: the step names, the final check, the test hook.

pub mod drain;
pub mod fence;
pub mod sequences;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::config::ValidatedConfig;
use crate::lag::Lag;
use crate::pg::client::{self, SessionLimits};
use crate::runtime::shutdown::Shutdown;
use crate::state::verify::{PassKind, PassResult, Runner};
use crate::transform::Plan;
use crate::verify::dirty::DirtyKeys;
use crate::verify::position::Applied;
use crate::verify::{Verifier, VerifyError, VerifyOptions};

/// The steps of a write cutover, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutoverStep {
    /// Preconditions: reads 100 % on new, every gate passing.
    Check,
    /// Verify what changed since the last pass, before anything is fenced.
    Precheck,
    /// Publish write "fenced" with the deadline.
    Announce,
    /// Lock the old tables; create the triggers (uncommitted).
    Fence,
    /// Barrier into the WAL; the applier applies past it.
    Drain,
    /// Verify what changed since the pre-check.
    FinalCheck,
    /// Move the target sequences.
    Sequences,
    /// Commit the fence, store `cut_over`, publish write "new".
    Flip,
}

impl CutoverStep {
    /// Every step, in order.
    pub const ALL: [CutoverStep; 8] = [
        CutoverStep::Check,
        CutoverStep::Precheck,
        CutoverStep::Announce,
        CutoverStep::Fence,
        CutoverStep::Drain,
        CutoverStep::FinalCheck,
        CutoverStep::Sequences,
        CutoverStep::Flip,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CutoverStep::Check => "check",
            CutoverStep::Announce => "announce",
            CutoverStep::Precheck => "precheck",
            CutoverStep::Fence => "fence",
            CutoverStep::Drain => "drain",
            CutoverStep::FinalCheck => "final_check",
            CutoverStep::Sequences => "sequences",
            CutoverStep::Flip => "flip",
        }
    }
}

impl std::fmt::Display for CutoverStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Environment variable of the test hook: `STEP:PATH` holds the cutover
/// before `STEP` (a [`CutoverStep`] name, or `committed`: right after the
/// fence committed, before `cut_over` is stored and published) for as long
/// as the file `PATH` exists (tests kill walshift there, stop Redis, block
/// the applier). Unset in production; reading it costs nothing.
pub const TEST_HOLD_ENV: &str = "WALSHIFT_TEST_HOLD_CUTOVER";

/// The test hook (see [`TEST_HOLD_ENV`]).
pub async fn test_hold(step: impl std::fmt::Display) {
    let Ok(spec) = std::env::var(TEST_HOLD_ENV) else { return };
    let Some((at, path)) = spec.split_once(':') else { return };
    if at != step.to_string() || !std::path::Path::new(path).exists() {
        return;
    }
    tracing::warn!(step = %step, "cutover test hook: holding before step {step}");
    while std::path::Path::new(path).exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(step = %step, "cutover test hook: released before step {step}");
}

/// The old tables and their new homes.
pub fn fenced_tables(plan: &Plan) -> Vec<fence::FencedTable> {
    plan.tables
        .iter()
        .map(|t| fence::FencedTable { source: t.source.clone(), target: t.target.clone() })
        .collect()
}

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckResult {
    /// Keys (or rows, for a full pass) compared.
    pub rows: u64,
    /// Tables checked with a full pass (their changed keys were not kept).
    pub full: Vec<String>,
    /// Tables with confirmed (or unconfirmed) differences: (table, count).
    pub differences: Vec<(String, u64)>,
    /// How long it took.
    pub elapsed: Duration,
}

impl CheckResult {
    /// Whether nothing differs.
    pub fn clean(&self) -> bool {
        self.differences.is_empty()
    }
}

/// The cutover's verifier: the pre-check and the final check are
/// incremental passes (the keys the stream changed since the previous
/// pass, [`DirtyKeys`]) recorded like the periodic ones.
pub struct Checker {
    verifier: Verifier,
    plan: Arc<Plan>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker").finish_non_exhaustive()
    }
}

impl Checker {
    /// Opens the sessions (source and target) and compiles the comparison.
    pub async fn open(
        cfg: &ValidatedConfig,
        plan: Arc<Plan>,
        lag: Arc<Lag>,
        dirty: Option<Arc<DirtyKeys>>,
    ) -> Result<Checker, VerifyError> {
        let connect_err = |e: client::ConnectError| VerifyError::Connect(e.to_string());
        let source = client::connect(&cfg.source.url, "cutover", SessionLimits::ADMIN)
            .await
            .map_err(connect_err)?;
        let target = client::connect(&cfg.target.url, "cutover", SessionLimits::ADMIN)
            .await
            .map_err(connect_err)?;
        let tables = crate::verify::compile::compile(&plan, &source, &target).await?;
        let names: Vec<(String, String)> =
            plan.tables.iter().map(|t| (t.source.readable(), t.target.readable())).collect();
        crate::state::verify::init(&target, &cfg.migration_name, Runner::Run, &names)
            .await
            .map_err(|source| VerifyError::Sql {
                context: "recording the tables to verify",
                source,
            })?;
        let mut options = VerifyOptions::from_config(cfg, Runner::Run);
        // Nothing waits for lag here: the cutover checks lag itself, and
        // under the fence nothing is in flight.
        options.max_lag = Duration::MAX;
        options.max_rows_per_second = None;
        let mut verifier =
            Verifier::new(source, target, tables, options, Applied::InProcess(lag)).await?;
        if let Some(dirty) = dirty {
            verifier = verifier.with_dirty(dirty);
        }
        Ok(Checker { verifier, plan })
    }

    /// The source session (barrier, sequences).
    pub fn source(&self) -> &Client {
        self.verifier.source()
    }

    /// The target session.
    pub fn target(&self) -> &Client {
        self.verifier.target()
    }

    /// Verifies what the stream changed in every table since its last pass.
    pub async fn check(&mut self, shutdown: &Shutdown) -> Result<CheckResult, VerifyError> {
        let started = Instant::now();
        let mut result = CheckResult::default();
        for &t in &self.plan.upsert_order {
            let report = self.verifier.pass(t, PassKind::Incremental, shutdown).await?;
            result.rows += report.counters.rows;
            if report.kind == PassKind::Full {
                result.full.push(report.target.clone());
            }
            let differing = report.counters.differences + report.counters.unconfirmed;
            if report.result != PassResult::Clean || !report.complete {
                result.differences.push((report.target.clone(), differing.max(1)));
            }
        }
        result.elapsed = started.elapsed();
        Ok(result)
    }
}
