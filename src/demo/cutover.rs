//! The demo's cutover walk-through, in the order a reader sees it:
//!
//! ```text
//!  backfill ─▶ catching_up / in_sync ─▶ verified (0 % new)
//!    ─▶ operator: read_new_percent = 50 (an in-process config reload)
//!    ─▶ shifting 10 ─▶ 50 % ─▶ fault: a shadow row changed behind walshift's back
//!    ─▶ verification finds it ─▶ rolled_back (0 % new, reason names the gate)
//!    ─▶ operator repairs the row ─▶ clean full pass ─▶ `walshift resume`
//!    ─▶ operator: read_new_percent = 100 ─▶ shifting 10 ─▶ 50 ─▶ 90 ─▶ 100 %
//!    ─▶ every gate passes (soaked at 100 %) ─▶ operator: `walshift cutover`
//!    ─▶ fenced (write "fenced", the workload holds its writes)
//!    ─▶ fence, drain, final check, sequences (one line per step, as recorded)
//!    ─▶ cut_over (write "new", the workload writes to billing_new)
//!    ─▶ the measured pause ─▶ a write to an old table fails with the fence's message
//! ```
//!
//! Every decision is printed as the controller publishes it: the [`Feed`]
//! subscribes to the decision channel in Redis before the controller
//! starts, so none is missed, and versions only grow, so none is printed
//! twice. The walk-through waits on published decisions (what a client
//! sees), and on the controller's live status only for the verification
//! gate before re-arming and for every gate before the write cutover, like
//! an operator reading `walshift status`. The [`Feed`] also keeps the newest
//! decision in a watch channel: the workload routes each write by it
//! ([`super::workload`]), on its own, while the walk-through prints.
//!
//! The write cutover is asked of the in-process leader the way `walshift
//! cutover` asks it ([`control::ask_leader_with`]); the leader's step lines
//! and the published decisions are printed while the answer is awaited. A
//! cutover that aborts (or is still refused after a few tries) fails the
//! demo. The pause printed is the one the leader measured and recorded in
//! `walshift.cutover_attempts` (from the lock on the old tables to write
//! "new" published), next to how long the workload actually held writes.
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
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle};
use tokio_postgres::Client;

use super::cluster::ClusterError;
use super::console::Console;
use super::workload::{self, Tally};
use crate::backfill::BackfillBoard;
use crate::commands::backfill::group;
use crate::commands::control;
use crate::commands::run::RunSummary;
use crate::config::{Reloadable, ValidatedConfig};
use crate::controller::Board;
use crate::controller::machine::{GateName, Verdict};
use crate::cutover::fence;
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

/// How often the operator asks for the write cutover when the leader
/// refuses (a gate stopped passing between the status read and the
/// request).
const CUTOVER_TRIES: u32 = 5;
/// How long a step line of the leader or a decision waits before it is
/// printed during the write cutover, so both come out in the leader's time
/// order: more than the poll interval of the audit trail (100 ms).
const ORDER_WINDOW: Duration = Duration::from_millis(300);
/// How often what waited long enough is printed.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// How long the workload writes to the new tables before the walk-through
/// checks the old ones and ends.
const ON_NEW_FOR: Duration = Duration::from_secs(1);
/// The write to an old table after the cutover (the fence rejects it).
const LATE_WRITE: &str = "insert into public.usage_events \
     (org_id, event_type, quantity, amount_cents) values (1, 'api_call', 1, 100)";

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
    /// The write pause the leader measured (lock granted to write "new"
    /// published).
    pub pause: Duration,
    /// The longest time the workload held a write (from seeing "fenced" to
    /// seeing "new").
    pub held: Duration,
}

/// Published decisions, as the subscriber received them: every message in
/// order (for printing), and the newest decision (for the workload).
#[derive(Debug)]
pub struct Feed {
    messages: mpsc::Receiver<String>,
    newest: watch::Receiver<Option<Decision>>,
    stop: ShutdownSender,
    task: JoinHandle<()>,
}

impl Feed {
    /// Subscribes to the channel `cfg`'s controller publishes its
    /// decisions on; returns once subscribed.
    pub async fn subscribe(cfg: &ValidatedConfig) -> Result<Feed, Error> {
        if cfg.redis.url.is_none() {
            return Err(Error::Internal("the demo's config has no [redis] url".into()));
        }
        let failed = |detail: String| {
            Error::DemoCluster(ClusterError::Step {
                step: "subscribing to the controller's decisions",
                detail,
            })
        };
        let channel = TrafficRedis::new(&cfg.redis)
            .map_err(|e| failed(e.to_string()))?
            .traffic_key()
            .to_owned();
        let client =
            crate::traffic::redis::client(&cfg.redis).map_err(|e| failed(e.to_string()))?;
        let mut pubsub = client.get_async_pubsub().await.map_err(|e| failed(e.to_string()))?;
        pubsub.subscribe(&channel).await.map_err(|e| failed(e.to_string()))?;
        let (tx, messages) = mpsc::channel(FEED_CAPACITY);
        let (newest_tx, newest) = watch::channel(None::<Decision>);
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
                // Before the printing queue: the workload never waits on
                // the console.
                if let Some(d) = Decision::parse(&text) {
                    newest_tx.send_if_modified(|newest| {
                        let newer = newest.as_ref().is_none_or(|n| d.version > n.version);
                        if newer {
                            *newest = Some(d);
                        }
                        newer
                    });
                }
                if tx.send(text).await.is_err() {
                    return;
                }
            }
        });
        Ok(Feed { messages, newest, stop, task })
    }

    /// The newest decision published (`None` before the first).
    pub fn newest(&self) -> watch::Receiver<Option<Decision>> {
        self.newest.clone()
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
    workload: Arc<Tally>,
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
    /// What the workload wrote.
    pub workload: Arc<Tally>,
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
            workload: parts.workload,
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
    /// already ended (a [`Halt::RunEnded`] carried its outcome), and the
    /// console.
    pub async fn finish(self) -> (Option<JoinHandle<Result<RunSummary, Error>>>, Console) {
        self.feed.close().await;
        (self.run, self.console)
    }

    fn state(&self) -> Option<&str> {
        self.last.as_ref().map(|d| d.state.as_str())
    }

    fn read_new(&self) -> u8 {
        self.last.as_ref().map_or(0, |d| d.read.new)
    }

    fn write(&self) -> &str {
        self.last.as_ref().map_or("old", |d| d.write.as_str())
    }

    /// Reads at 100 % on new and every gate (soak included) passing, as
    /// `walshift status` shows it.
    fn ready_for_cutover(&self) -> bool {
        let status = self.controller.snapshot();
        status.state.as_deref() == Some("shifting")
            && status.read_new == 100
            && !status.gates.is_empty()
            && status.gates.iter().all(|g| g.verdict == Verdict::Pass)
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
            let writes = match (d.write.as_str(), &d.fence_deadline) {
                ("old", _) => String::new(),
                ("fenced", Some(until)) => format!(", writes fenced (held until {until})"),
                (write, _) => format!(", writes {write}"),
            };
            self.console.event(&format!(
                "decision v{}: {}, reads {} % new / {} % old{writes}: {}",
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
            group(self.workload.written()),
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

    /// `walshift cutover`, as the command asks the leader: prints each step
    /// line the leader records and each decision it publishes (the
    /// workload follows them on its own) while waiting for the answer.
    async fn cutover(&mut self) -> Result<String, Halt> {
        self.console.event(
            "operator: walshift cutover (fence the old tables, drain, check, move the sequences, \
             flip writes to new)",
        );
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        let cfg = self.cfg.clone();
        let args = serde_json::json!({ "dry_run": false });
        let asked = control::ask_leader_with(&cfg, "cutover", &args, move |line| {
            let _ = lines_tx.send(line);
            Ok(())
        });
        tokio::pin!(asked);
        let mut pending = InOrder::default();
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        let answer = loop {
            tokio::select! {
                answer = &mut asked => break answer,
                Some(line) = lines.recv() => pending.line(line),
                msg = self.feed.messages.recv() => match msg {
                    Some(text) => pending.decision(text),
                    None => return Err(Halt::Failed(Error::Internal(
                        "the demo lost its subscription to the controller's decisions".into(),
                    ))),
                },
                _ = flush.tick() => self.show_in_order(&mut pending, false),
                _ = self.tick.tick() => self.progress().await,
                () = self.interrupt.wait() => return Err(Halt::Interrupted),
                ended = join(&mut self.run) => {
                    self.run = None;
                    return Err(Halt::RunEnded(ended));
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Halt::Failed(Error::Failed(format!(
                        "walshift cutover did not answer within {} s",
                        STEP_TIMEOUT.as_secs()
                    ))));
                }
            }
        };
        // The leader publishes before it answers: what it published and
        // recorded is in (or on its way to) the channels.
        tokio::time::sleep(ORDER_WINDOW).await;
        while let Ok(line) = lines.try_recv() {
            pending.line(line);
        }
        while let Ok(text) = self.feed.messages.try_recv() {
            pending.decision(text);
        }
        self.show_in_order(&mut pending, true);
        match answer {
            Ok(answer) => {
                self.console.event(&format!("operator: walshift cutover -> {answer}"));
                Ok(answer)
            }
            Err(error) => {
                self.console.event(&format!("operator: walshift cutover -> {error}"));
                Err(Halt::Failed(error))
            }
        }
    }

    /// Prints what `pending` holds in the leader's time order: everything
    /// when `all`, else what arrived at least [`ORDER_WINDOW`] ago (a step
    /// line reaches the demo up to a poll of the audit trail after the
    /// decision that follows it).
    fn show_in_order(&mut self, pending: &mut InOrder, all: bool) {
        for item in pending.ready(all) {
            match item {
                Item::Decision(text) => self.show_decision(&text),
                // A decision's own audit entry: printed with the decision.
                Item::Line(text) if self.last.as_ref().is_some_and(|d| d.reason == text) => {}
                Item::Line(text) => self.console.event(&format!("  leader: {text}")),
            }
        }
    }

    /// The pause of the newest cutover attempt, as the leader recorded it;
    /// prints it with what the workload saw.
    async fn show_pause(&mut self) -> Result<Duration, Error> {
        let attempt = crate::state::cutover::latest(&self.db, &self.cfg.migration_name)
            .await
            .map_err(Error::sql("reading the write cutover attempt"))?;
        let pause = attempt.and_then(|a| a.figures.pause_seconds).map(Duration::from_secs_f64);
        let Some(pause) = pause else {
            return Err(Error::Failed(
                "demo check failed: walshift.cutover_attempts has no measured pause".into(),
            ));
        };
        let (held, rejected, rejection) = self.workload.holds();
        let rejected = match rejection {
            Some(message) if rejected > 0 => format!(
                "; {rejected} write(s) it sent just before it saw \"fenced\" were rejected by \
                 the fence, not acknowledged: {message}"
            ),
            _ => String::new(),
        };
        self.console.event(&format!(
            "measured write pause: {:.1} ms, from the lock on the old tables to write \"new\" \
             published (walshift.cutover_attempts); the workload held its writes {:.1} ms, from \
             seeing write \"fenced\" to seeing write \"new\"{rejected}",
            pause.as_secs_f64() * 1000.0,
            held.as_secs_f64() * 1000.0
        ));
        Ok(pause)
    }

    /// Writes to an old table: the fence must reject it with its message.
    async fn write_to_old_table(&mut self) -> Result<(), Error> {
        let want = format!(
            "public.usage_events moved to billing_new.usage_events by walshift migration {}",
            self.cfg.migration_name
        );
        let Err(error) = self.db.execute(LATE_WRITE, &[]).await else {
            return Err(Error::Failed(
                "demo check failed: a write to public.usage_events succeeded after the write \
                 cutover"
                    .into(),
            ));
        };
        let rejected = error
            .as_db_error()
            .map(|e| (e.code().code().to_owned(), e.message().to_owned()))
            .filter(|(code, message)| code == fence::REJECT_SQLSTATE && *message == want);
        let Some((code, message)) = rejected else {
            return Err(Error::Failed(format!(
                "demo check failed: a write to public.usage_events after the write cutover failed \
                 with {} instead of the fence's {} {want:?}",
                crate::pg::client::server_message(&error),
                fence::REJECT_SQLSTATE
            )));
        };
        self.console.event(&format!(
            "a write to an old table now fails: insert into public.usage_events -> ERROR {code}: \
             {message}"
        ));
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
    walk.console.event("every read on new; the write cutover waits for every gate (soak included)");

    // The write cutover, under the running workload.
    walk.until("every gate passing at 100 % new", STEP_TIMEOUT, Walk::ready_for_cutover).await?;
    let mut tries = 0;
    loop {
        tries += 1;
        match walk.cutover().await {
            Ok(_) => break,
            // Refused: a gate stopped passing since the status was read.
            Err(Halt::Failed(Error::Precondition(_))) if tries < CUTOVER_TRIES => {
                walk.console.event("operator: asking again once every gate passes");
                let refused_at = Instant::now();
                walk.until("every gate passing at 100 % new", STEP_TIMEOUT, |w| {
                    refused_at.elapsed() >= TICK && w.ready_for_cutover()
                })
                .await?;
            }
            Err(Halt::Failed(error @ (Error::Precondition(_) | Error::Failed(_)))) => {
                return Err(Halt::Failed(Error::Failed(format!(
                    "demo check failed: the write cutover did not happen: {error}"
                ))));
            }
            Err(halt) => return Err(halt),
        }
    }
    walk.until("write \"new\" published", STEP_TIMEOUT, |w| {
        w.write() == "new" && w.state() == Some("cut_over")
    })
    .await?;
    let pause = walk.show_pause().await?;
    walk.until("writes on billing_new", STEP_TIMEOUT, |w| {
        w.workload.on_new_for().is_some_and(|d| d >= ON_NEW_FOR)
    })
    .await?;
    let (_, on_new) = walk.workload.writes();
    walk.console.event(&format!(
        "the workload writes to billing_new ({} row changes acknowledged so far; new ids from \
         its own sequences)",
        group(on_new)
    ));
    walk.write_to_old_table().await?;
    walk.console.event("writes and reads on new: the walk-through is complete");
    let (held, _, _) = walk.workload.holds();
    Ok(Story { rollback_after, rollback_reason, pause, held })
}

/// A step line of the leader (its text) or a decision (its JSON).
#[derive(Debug)]
enum Item {
    Line(String),
    Decision(String),
}

/// Step lines and decisions waiting to be printed in the leader's time
/// order: a line by its audit entry's time, a decision by its `updated_at`,
/// both to the millisecond (RFC 3339, UTC: text order is time order).
#[derive(Debug, Default)]
struct InOrder {
    items: Vec<(String, u64, Instant, Item)>,
    received: u64,
}

impl InOrder {
    fn push(&mut self, at: &str, item: Item) {
        let at: String = at.chars().take("YYYY-MM-DDTHH:MM:SS.mmm".len()).collect();
        self.received += 1;
        self.items.push((at, self.received, Instant::now(), item));
    }

    /// `<at> <text>`, as [`control::ask_leader_with`] hands it over.
    fn line(&mut self, line: String) {
        match line.split_once(' ') {
            Some((at, text)) => self.push(at, Item::Line(text.to_owned())),
            None => self.push("", Item::Line(line)),
        }
    }

    fn decision(&mut self, text: String) {
        let at = Decision::parse(&text).map(|d| d.updated_at).unwrap_or_default();
        self.push(&at, Item::Decision(text));
    }

    /// In time order, from the first: everything when `all`, else while
    /// the first arrived at least [`ORDER_WINDOW`] ago.
    fn ready(&mut self, all: bool) -> Vec<Item> {
        self.items.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let n = if all {
            self.items.len()
        } else {
            self.items.iter().take_while(|i| i.2.elapsed() >= ORDER_WINDOW).count()
        };
        self.items.drain(..n).map(|i| i.3).collect()
    }
}

/// Awaits `task` if there is one (forever otherwise).
async fn join<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}
