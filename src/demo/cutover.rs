//! The demo's cutover walk-through, in the order a reader sees it:
//!
//! ```text
//!  backfill ─▶ catching_up / in_sync ─▶ verified (0 % new)
//!    ─▶ operator: read_new_percent = 50 (an in-process config reload)
//!    ─▶ shifting 10 ─▶ 50 % ─▶ fault: a shadow row changed behind walshift's back
//!    ─▶ verification finds it ─▶ rolled_back (0 % new, reason names the gate)
//!    ─▶ operator repairs the row ─▶ clean full pass ─▶ `walshift resume`
//!    ─▶ operator: read_new_percent = 100 ─▶ shifting 10 ─▶ 50 ─▶ 90 ─▶ 100 %
//! ```
//!
//! Every decision is printed as the controller publishes it: the [`Feed`]
//! subscribes to the decision channel in Redis before the controller
//! starts, so none is missed, and versions only grow, so none is printed
//! twice. The walk-through waits on published decisions (what a client
//! sees), and on the controller's live status only for the verification
//! gate before re-arming, like an operator reading `walshift status`.
//!
//! Why the operator repairs, not `[verify] repair = true`: a run that
//! repairs by itself re-copies a confirmed difference within about a
//! second, and the re-check of the repaired keys turns the verification
//! gate from failing to holding (no clean full pass yet). A rollback needs
//! the gate to fail `failure_threshold` evaluations in a row, so with
//! automatic repair whether the demo shows a rollback would be a race.
//! Without it the difference stays until someone fixes it, every full pass
//! confirms it again, and the rollback is certain.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle};
use tokio_postgres::Client;

use super::cluster::ClusterError;
use super::console::Console;
use super::workload;
use crate::backfill::BackfillBoard;
use crate::commands::backfill::group;
use crate::commands::control;
use crate::commands::run::RunSummary;
use crate::config::{Reloadable, ValidatedConfig};
use crate::controller::Board;
use crate::controller::machine::{GateName, Verdict};
use crate::error::Error;
use crate::runtime::shutdown::{self, Shutdown, ShutdownSender};
use crate::runtime::tasks::spawn_named;
use crate::traffic::decision::Decision;
use crate::traffic::redis::TrafficRedis;

/// Decisions waiting to be printed. The controller publishes at most one
/// per evaluation (250 ms in the demo) and the demo prints them as they
/// come, so this is over a minute of backlog; a full channel only delays
/// the subscriber, never the controller.
const FEED_CAPACITY: usize = 256;
/// How often the status line is refreshed and the waits re-checked.
const TICK: Duration = Duration::from_millis(500);
/// Longest wait for the backfill of the sample data.
const BACKFILL_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest wait for any other step of the walk-through.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The read share on new the operator asks for first, and at which the
/// fault is injected.
const FAULT_AT_PERCENT: u8 = 50;

/// The shadow row the fault changes: the first invoice (the workload never
/// writes invoices, so only the fault and the repair touch it).
const CORRUPT: &str = "update billing_new.invoices set total = total + 1 \
     where id = (select min(id) from billing_new.invoices) \
     returning id, (total - 1)::text, total::text";
/// The operator's repair: the row again as the mapping makes it from the
/// source.
const REPAIR: &str = "update billing_new.invoices n set total = s.total_cents / 100.0 \
     from public.invoices s where s.id = n.id and n.id = $1 returning n.total::text";

/// Why the walk-through stopped before its end.
#[derive(Debug)]
pub enum Halt {
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// `walshift run` ended by itself (its outcome).
    RunEnded(Result<Result<RunSummary, Error>, JoinError>),
    /// A step failed or did not happen in time.
    Failed(Error),
}

impl From<Error> for Halt {
    fn from(error: Error) -> Self {
        Halt::Failed(error)
    }
}

/// What the summary tells about the walk-through.
#[derive(Debug, Clone)]
pub struct Story {
    /// From the fault to the published rollback.
    pub rollback_after: Duration,
    /// The rollback's reason.
    pub rollback_reason: String,
}

/// Published decisions, as the subscriber received them.
#[derive(Debug)]
pub struct Feed {
    messages: mpsc::Receiver<String>,
    stop: ShutdownSender,
    task: JoinHandle<()>,
}

impl Feed {
    /// Subscribes to the channel `cfg`'s controller publishes its
    /// decisions on; returns once subscribed.
    pub async fn subscribe(cfg: &ValidatedConfig) -> Result<Feed, Error> {
        let Some(url) = &cfg.redis.url else {
            return Err(Error::Internal("the demo's config has no [redis] url".into()));
        };
        let failed = |detail: String| {
            Error::DemoCluster(ClusterError::Step {
                step: "subscribing to the controller's decisions",
                detail,
            })
        };
        let channel = TrafficRedis::new(url, &cfg.redis.key_prefix)
            .map_err(|e| failed(e.to_string()))?
            .traffic_key()
            .to_owned();
        let client = crate::traffic::redis::client(url).map_err(|e| failed(e.to_string()))?;
        let mut pubsub = client.get_async_pubsub().await.map_err(|e| failed(e.to_string()))?;
        pubsub.subscribe(&channel).await.map_err(|e| failed(e.to_string()))?;
        let (tx, messages) = mpsc::channel(FEED_CAPACITY);
        let (stop, mut stopped) = shutdown::channel();
        let task = spawn_named("demo-decisions", async move {
            let mut stream = pubsub.into_on_message();
            loop {
                let msg = tokio::select! {
                    msg = stream.next() => msg,
                    () = stopped.wait() => return,
                };
                let Some(msg) = msg else { return };
                let text: String = msg.get_payload().unwrap_or_default();
                if tx.send(text).await.is_err() {
                    return;
                }
            }
        });
        Ok(Feed { messages, stop, task })
    }

    /// Unsubscribes.
    pub async fn close(self) {
        self.stop.trigger();
        let _ = self.task.await;
    }
}

/// The walk-through's view of the demo, and its single place of waiting.
pub struct Walk {
    /// Output.
    console: Console,
    cfg: ValidatedConfig,
    db: Client,
    feed: Feed,
    controller: Arc<Board>,
    backfill: Arc<BackfillBoard>,
    backfilled: watch::Receiver<bool>,
    settings: watch::Sender<Arc<Reloadable>>,
    interrupt: Shutdown,
    run: Option<JoinHandle<Result<RunSummary, Error>>>,
    written: Arc<AtomicU64>,
    workload_started: Instant,
    tick: tokio::time::Interval,
    /// The newest decision published.
    last: Option<Decision>,
    /// Decisions printed.
    decisions: u64,
}

/// What a [`Walk`] watches.
pub struct Parts {
    /// The demo's config.
    pub cfg: ValidatedConfig,
    /// A session on the (source = target) database.
    pub db: Client,
    /// The decision feed.
    pub feed: Feed,
    /// The controller's live status.
    pub controller: Arc<Board>,
    /// Backfill progress.
    pub backfill: Arc<BackfillBoard>,
    /// Where config reloads are sent.
    pub settings: watch::Sender<Arc<Reloadable>>,
    /// Ctrl-C.
    pub interrupt: Shutdown,
    /// `walshift run` (with the controller).
    pub run: JoinHandle<Result<RunSummary, Error>>,
    /// Row changes written by the workload.
    pub written: Arc<AtomicU64>,
}

impl Walk {
    /// Starts watching.
    pub fn new(parts: Parts, console: Console) -> Walk {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Walk {
            console,
            backfilled: parts.backfill.subscribe_done(),
            cfg: parts.cfg,
            db: parts.db,
            feed: parts.feed,
            controller: parts.controller,
            backfill: parts.backfill,
            settings: parts.settings,
            interrupt: parts.interrupt,
            run: Some(parts.run),
            written: parts.written,
            workload_started: Instant::now(),
            tick,
            last: None,
            decisions: 0,
        }
    }

    /// Decisions printed so far.
    pub fn decisions(&self) -> u64 {
        self.decisions
    }

    /// The newest decision published.
    pub fn last(&self) -> Option<&Decision> {
        self.last.as_ref()
    }

    /// Ends the walk: unsubscribes, and hands back `walshift run` unless it
    /// already ended (a [`Halt::RunEnded`] carried its outcome).
    pub async fn finish(self) -> Option<JoinHandle<Result<RunSummary, Error>>> {
        self.feed.close().await;
        self.run
    }

    fn state(&self) -> Option<&str> {
        self.last.as_ref().map(|d| d.state.as_str())
    }

    fn read_new(&self) -> u8 {
        self.last.as_ref().map_or(0, |d| d.read.new)
    }

    fn verification(&self) -> Option<(Verdict, String)> {
        let status = self.controller.snapshot();
        let gate = status.gates.into_iter().find(|g| g.name == GateName::Verification)?;
        Some((gate.verdict, gate.value))
    }

    /// Prints decisions and the status line until `done` holds, Ctrl-C, the
    /// end of `walshift run`, or `timeout` (waiting for `what`).
    async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Walk) -> bool,
    ) -> Result<(), Halt> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(self) {
                return Ok(());
            }
            tokio::select! {
                msg = self.feed.messages.recv() => match msg {
                    Some(text) => self.show_decision(&text),
                    None => return Err(Halt::Failed(Error::Internal(
                        "the demo lost its subscription to the controller's decisions".into(),
                    ))),
                },
                _ = self.tick.tick() => self.progress().await,
                () = self.interrupt.wait() => return Err(Halt::Interrupted),
                ended = join(&mut self.run) => {
                    self.run = None;
                    return Err(Halt::RunEnded(ended));
                }
                () = tokio::time::sleep_until(deadline) => {
                    let status = self.controller.snapshot();
                    let gates: Vec<String> = status
                        .gates
                        .iter()
                        .map(|g| format!("{} {:?} {}", g.name.as_str(), g.verdict, g.value))
                        .collect();
                    return Err(Halt::Failed(Error::Internal(format!(
                        "demo check failed: no {what} within {} s (controller {}, {} % new; gates: {})",
                        timeout.as_secs(),
                        self.state().unwrap_or("not started"),
                        self.read_new(),
                        gates.join(", ")
                    ))));
                }
            }
        }
    }

    fn show_decision(&mut self, text: &str) {
        let Some(d) = Decision::parse(text) else {
            self.console.event(&format!("not a decision on the decision channel: {text}"));
            return;
        };
        let republished = match &self.last {
            Some(last) if d.version <= last.version => return,
            Some(last) => {
                (&last.state, last.read, &last.write, &last.reason)
                    == (&d.state, d.read, &d.write, &d.reason)
            }
            None => false,
        };
        if republished {
            self.console.event(&format!("v{}: the same decision published again", d.version));
        } else {
            self.console.event(&format!(
                "decision v{}: {}, reads {} % new / {} % old: {}",
                d.version, d.state, d.read.new, d.read.old, d.reason
            ));
            self.console.detail(text);
            self.decisions += 1;
        }
        self.last = Some(d);
    }

    async fn progress(&mut self) {
        let lag = workload::slot_lag(&self.db, &self.cfg.source.slot).await;
        let tail = format!(
            "workload {} changes | lag {} kB",
            group(self.written.load(Ordering::Relaxed)),
            lag.map_or_else(|| "?".to_owned(), |l| (l / 1024).to_string())
        );
        if !*self.backfilled.borrow() {
            let tables = self.backfill.tables();
            let backfill = match tables.iter().find(|t| !t.complete) {
                Some(t) => format!(
                    "backfill {} {:.0}% {}/{} rows {} rows/s",
                    t.target,
                    t.percent(),
                    group(t.rows_copied),
                    group(t.rows_estimated),
                    group(t.rows_per_second.round() as u64)
                ),
                None => "backfill starting".to_owned(),
            };
            self.console.status(&format!("{backfill} | {tail}"), true);
            return;
        }
        let status = self.controller.snapshot();
        let waiting: Vec<String> = status
            .gates
            .iter()
            .filter(|g| g.verdict != Verdict::Pass)
            .map(|g| format!("{} {}", g.name.as_str(), g.value))
            .collect();
        let gates = if status.gates.is_empty() {
            "gates not evaluated yet".to_owned()
        } else if waiting.is_empty() {
            "every gate passes".to_owned()
        } else {
            format!("not passing: {}", waiting.join(", "))
        };
        let state = status.state.as_deref().unwrap_or("starting");
        self.console.status(
            &format!("controller {state}, {} % new | {gates} | {tail}", status.read_new),
            false,
        );
    }

    /// What a config reload does: a new `[traffic] read_new_percent`.
    fn set_read_new_percent(&mut self, percent: u8) {
        let mut next = Reloadable::clone(&self.settings.borrow());
        next.traffic.read_new_percent = percent;
        self.settings.send_replace(Arc::new(next));
        self.console.event(&format!(
            "operator: [traffic] read_new_percent = {percent} (a config reload); the controller \
             moves reads there one stage at a time, through the gates"
        ));
    }

    /// Changes a shadow row behind walshift's back; returns its key.
    async fn corrupt(&mut self) -> Result<i64, Error> {
        let row = self
            .db
            .query_one(CORRUPT, &[])
            .await
            .map_err(Error::sql("changing a shadow row (the demo's fault)"))?;
        let (id, before, after): (i64, String, String) = (
            row.try_get(0).map_err(Error::sql("reading the changed row"))?,
            row.try_get(1).map_err(Error::sql("reading the changed row"))?,
            row.try_get(2).map_err(Error::sql("reading the changed row"))?,
        );
        self.console.event(&format!(
            "fault: billing_new.invoices id {id}: total {before} -> {after}, written behind \
             walshift's back while {} % of reads are on new",
            self.read_new()
        ));
        Ok(id)
    }

    /// The operator's repair of the row [`Walk::corrupt`] changed.
    async fn repair(&mut self, id: i64) -> Result<(), Error> {
        let row = self
            .db
            .query_one(REPAIR, &[&id])
            .await
            .map_err(Error::sql("repairing the shadow row"))?;
        let total: String = row.try_get(0).map_err(Error::sql("reading the repaired row"))?;
        self.console.event(&format!(
            "operator: repaired billing_new.invoices id {id} from transform(public.invoices) \
             (total {total}); waiting for a clean verification pass"
        ));
        Ok(())
    }

    /// `walshift resume`, as the command asks the leader.
    async fn resume(&mut self) -> Result<(), Halt> {
        let no_args = serde_json::json!({});
        let asked = control::ask_leader(&self.cfg, "resume", &no_args);
        let answer = tokio::select! {
            answer = asked => answer?,
            () = self.interrupt.wait() => return Err(Halt::Interrupted),
        };
        self.console.event(&format!("operator: walshift resume -> {answer}"));
        Ok(())
    }
}

/// The walk-through; `workload_for` is the least time the workload runs
/// before reads start moving.
pub async fn walk_through(walk: &mut Walk, workload_for: Duration) -> Result<Story, Halt> {
    walk.until("complete backfill", BACKFILL_TIMEOUT, |w| *w.backfilled.borrow()).await?;
    walk.console.event("backfill complete; the controller checks lag and verification");
    walk.until("verified state", STEP_TIMEOUT + workload_for, |w| {
        w.state() == Some("verified") && w.workload_started.elapsed() >= workload_for
    })
    .await?;
    // Half the reads first: the controller stops at 50 % and stays there
    // while the fault is found.
    walk.set_read_new_percent(FAULT_AT_PERCENT);
    walk.until("shift to 50 % new", STEP_TIMEOUT, |w| w.read_new() == FAULT_AT_PERCENT).await?;
    let id = walk.corrupt().await?;
    let fault_at = Instant::now();
    walk.until("rollback", STEP_TIMEOUT, |w| w.state() == Some("rolled_back")).await?;
    let rollback_after = fault_at.elapsed();
    let rollback_reason = walk.last().map(|d| d.reason.clone()).unwrap_or_default();
    walk.console.event(&format!(
        "rolled back {:.1} s after the fault: every read on old again",
        rollback_after.as_secs_f64()
    ));

    walk.repair(id).await?;
    walk.until("clean verification", STEP_TIMEOUT, |w| {
        w.verification().is_some_and(|(v, _)| v == Verdict::Pass)
    })
    .await?;
    let gate = walk.verification().map(|(_, value)| value).unwrap_or_default();
    walk.console.event(&format!("verification gate passes again ({gate})"));
    walk.resume().await?;
    walk.set_read_new_percent(100);
    walk.until("shift to 100 % new", STEP_TIMEOUT, |w| {
        w.read_new() == 100 && w.state() == Some("shifting")
    })
    .await?;
    walk.console.event("every read on new: the walk-through is complete");
    Ok(Story { rollback_after, rollback_reason })
}

/// Awaits `task` if there is one (forever otherwise).
async fn join<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}
