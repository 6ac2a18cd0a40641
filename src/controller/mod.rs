//! The cutover controller: inside `walshift run` when `[redis] url` is set,
//! it evaluates the gates every `[cutover] evaluate_interval_ms`, moves read
//! traffic toward `[traffic] read_new_percent` one stage at a time, rolls
//! back (or holds) when a gate is violated, answers `walshift resume` /
//! `rollback`, and publishes every decision to Redis after storing it in the
//! state schema. See `docs/cutover.md`.
//!
//! * [`machine`]: the state machine, without I/O;
//! * [`gates`]: the gates' verdicts from their signals;
//! * [`lease`]: one leader per migration;
//! * [`leader`]: standby → leader (pipeline + controller) → standby;
//! * this module: the evaluation loop (persist, publish, republish).

mod cutover;
pub mod gates;
pub mod leader;
pub mod lease;
pub mod machine;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::config::{Reloadable, ValidatedConfig, WriteTarget};
use crate::controller::gates::{RedisHealth, Signals};
use crate::controller::lease::LeaseView;
use crate::controller::machine::{Gate, Machine, Position, State, Step, StepKind, Verdict};
use crate::lag::Lag;
use crate::pg::client::{self, SessionLimits};
use crate::runtime::pipeline::Pipeline;
use crate::runtime::reload::ReloadReport;
use crate::runtime::shutdown::Shutdown;
use crate::state::controller::{self as stored, AuditEntry, StoredController};
use crate::telemetry::metrics as m;
use crate::traffic::decision::{Bucketing, Decision, ReadSplit, rfc3339};
use crate::traffic::redis::{Published, TrafficRedis};

/// What the controller shows in `status`, `/status` and the page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControllerStatus {
    /// `leader`, `standby` or `starting`.
    pub role: String,
    /// This instance's id.
    pub instance: String,
    /// The lease holder seen by a standby.
    pub lease_holder: Option<String>,
    /// Controller state.
    pub state: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// When it entered the state (RFC 3339).
    pub entered_at: Option<String>,
    /// Published read share on new.
    pub read_new: u8,
    /// `[traffic] read_new_percent` in force.
    pub desired_read_new: u8,
    /// `[traffic] stages`.
    pub stages: Vec<u8>,
    /// `[traffic] on_violation`.
    pub on_violation: String,
    /// Published write side (`old`, `fenced`, `new`).
    pub write: String,
    /// `[traffic] write` in force.
    #[serde(default)]
    pub desired_write: String,
    /// A write cutover wanted by the config and what it waits for.
    #[serde(default)]
    pub write_cutover: Option<String>,
    /// Changes to old tables committed after the write cutover (reported,
    /// not applied).
    #[serde(default)]
    pub changes_after_cutover: u64,
    /// The newest write cutover attempt (filled by `status`).
    #[serde(default)]
    pub cutover: Option<crate::state::cutover::Attempt>,
    /// Version of the last decision stored.
    pub version: i64,
    /// Version last accepted by Redis.
    pub published_version: i64,
    /// The gates at the last evaluation.
    pub gates: Vec<Gate>,
    /// Consecutive evaluations with a failing gate.
    pub fail_streak: u32,
    /// `[cutover] failure_threshold`.
    pub failure_threshold: u32,
    /// Redis and the lease.
    pub redis: RedisHealth,
    /// The last config reload.
    pub reload: ReloadReport,
    /// The newest audit entries (filled by `status`).
    #[serde(default)]
    pub recent: Vec<AuditEntry>,
}

/// The controller's live status, shared with `/status`.
#[derive(Debug, Default)]
pub struct Board {
    status: Mutex<ControllerStatus>,
    reload: Arc<Mutex<ReloadReport>>,
}

impl Board {
    /// A board sharing `reload` with the config reloader.
    pub fn new(reload: Arc<Mutex<ReloadReport>>) -> Board {
        Board { status: Mutex::default(), reload }
    }

    /// The current status.
    pub fn snapshot(&self) -> ControllerStatus {
        let mut s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        s.reload = self.reload.lock().map(|r| r.clone()).unwrap_or_default();
        s
    }

    /// Changes the status.
    pub fn update(&self, f: impl FnOnce(&mut ControllerStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// Why `/readyz` should say not ready, if it should.
    pub fn not_ready(&self) -> Option<String> {
        let s = self.snapshot();
        match s.role.as_str() {
            "leader" if !s.redis.reachable => Some(format!(
                "redis unreachable: {}; the controller holds (nothing moves toward new)",
                s.redis.problem.unwrap_or_default()
            )),
            "leader" if !s.redis.lease_held => {
                Some(format!("controller lease not held: {}", s.redis.problem.unwrap_or_default()))
            }
            "standby" => Some(format!(
                "standby: {} holds the controller lease",
                s.lease_holder.unwrap_or_else(|| "another instance".into())
            )),
            _ => None,
        }
    }
}

/// Why the controller loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop.
    Stopped,
    /// Another instance leads now.
    Deposed(String),
}

/// One leader's evaluation loop.
pub struct Controller {
    cfg: ValidatedConfig,
    settings: watch::Receiver<Arc<Reloadable>>,
    lag: Arc<Lag>,
    redis: TrafficRedis,
    lease: watch::Receiver<LeaseView>,
    me: String,
    board: Arc<Board>,
    tables: Vec<String>,
    pipeline: Pipeline,
}

/// The loop's state while connected.
struct Live {
    client: Client,
    machine: Machine,
    version: i64,
    published: i64,
    write_side: String,
    /// While writes are fenced: until when clients should hold them.
    fence_deadline: Option<SystemTime>,
    /// `[traffic] write` at the last evaluation.
    write_wanted: WriteTarget,
    /// `[traffic] write = "new"` appeared and no attempt was made since.
    write_armed: bool,
    redis_ok: bool,
    redis_problem: Option<String>,
}

impl Controller {
    /// A controller for `cfg` led by `me`.
    #[allow(clippy::too_many_arguments)] // each is a separate shared handle
    pub fn new(
        cfg: ValidatedConfig,
        settings: watch::Receiver<Arc<Reloadable>>,
        lag: Arc<Lag>,
        redis: TrafficRedis,
        lease: watch::Receiver<LeaseView>,
        me: String,
        board: Arc<Board>,
        pipeline: Pipeline,
    ) -> Controller {
        let tables = cfg.tables.iter().map(|t| t.target.readable()).collect();
        Controller { cfg, settings, lag, redis, lease, me, board, tables, pipeline }
    }

    /// Runs until `stop` or until deposed. Errors of the target connection
    /// reconnect (with backoff); meanwhile nothing changes.
    pub async fn run(self, mut stop: Shutdown) -> Exit {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.lead(&mut stop).await {
                Ok(exit) => return exit,
                Err(e) => {
                    let text = e.to_string();
                    tracing::warn!(error = %text, retry_in_ms = backoff.as_millis() as u64, "controller lost the target; retrying");
                    crate::telemetry::recent::record("controller", "transient", text);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.wait() => return Exit::Stopped,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn lead(&self, stop: &mut Shutdown) -> Result<Exit, LeadError> {
        let client =
            client::connect(&self.cfg.target.url, "controller", SessionLimits::ADMIN).await?;
        let now = SystemTime::now();
        let initial = Position::initial(now);
        let init_row = self.stored_row(&initial, 0, "old", None, now);
        let row = stored::claim(&client, &self.cfg.migration_name, &self.me, &init_row).await?;
        let position = Position {
            state: State::parse(&row.state).unwrap_or(State::Backfilling),
            reason: row.reason.clone(),
            entered_at: row.entered_at,
            read_new: row.read_new,
            stage_entered_at: row.stage_entered_at,
            rolled_back_at_percent: row.rolled_back_at_percent,
        };
        tracing::info!(
            state = %position.state,
            read_new = position.read_new,
            version = row.version,
            "controller leads; resuming the stored decision"
        );
        let mut live = Live {
            client,
            machine: Machine::new(position),
            version: row.version,
            published: 0,
            write_side: row.write_side.clone(),
            fence_deadline: None,
            write_wanted: WriteTarget::Old,
            write_armed: false,
            redis_ok: false,
            redis_problem: None,
        };
        let mut client_stop = stop.clone();
        stored::audit(
            &live.client,
            &self.cfg.migration_name,
            &AuditEntry {
                kind: "leader".into(),
                from_state: None,
                to_state: Some(row.state.clone()),
                read_new: Some(row.read_new),
                version: Some(row.version),
                reason: format!(
                    "{} leads (resumes {} at {} % new)",
                    self.me, row.state, row.read_new
                ),
                actor: Some(self.me.clone()),
                ..empty_audit()
            },
        )
        .await?;
        // A write cutover that did not end is brought to an end first.
        if let Some(exit) = self.recover_cutover(&mut live).await? {
            return Ok(exit);
        }
        // A new leader republishes the stored decision with a higher version.
        if let Some(exit) = self.republish(&mut live, "new leader").await? {
            return Ok(exit);
        }
        loop {
            let interval = self.settings.borrow().cutover.evaluate_interval;
            if let Some(exit) = self.tick(&mut live, &client_stop).await? {
                return Ok(exit);
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = client_stop.wait() => return Ok(Exit::Stopped),
            }
        }
    }

    /// One evaluation: gates, commands, the state machine, republishing.
    async fn tick(&self, live: &mut Live, stop: &Shutdown) -> Result<Option<Exit>, LeadError> {
        let settings = Arc::clone(&self.settings.borrow());
        let now = SystemTime::now();
        // Redis: read what is published (also the reachability probe).
        let current = self.redis.current().await;
        let redis_version = match &current {
            Ok(text) => {
                live.redis_ok = true;
                live.redis_problem = None;
                Some(text.as_deref().and_then(Decision::parse).map(|d| d.version))
            }
            Err(e) => {
                live.redis_ok = false;
                live.redis_problem = Some(e.to_string());
                None
            }
        };
        metrics::gauge!(m::REDIS_UP).set(if live.redis_ok { 1.0 } else { 0.0 });
        let lease = self.lease.borrow().clone();
        let redis_health = RedisHealth {
            reachable: live.redis_ok,
            lease_held: lease.held(),
            problem: live.redis_problem.clone().or(lease.problem.clone()),
        };
        let signals = Signals {
            lag_seconds: self.lag.seconds(),
            lag_bytes: self.lag.bytes(),
            stream_silence: self
                .lag
                .silent_for()
                .map(|silent| (silent, stream_silence_limit(self.cfg.source.heartbeat_interval))),
            backfill: crate::state::backfill::load(&live.client, &self.cfg.migration_name)
                .await
                .ok(),
            verify: crate::state::verify::load(&live.client, &self.cfg.migration_name, None)
                .await
                .ok(),
            tables: self.tables.clone(),
            redis: redis_health.clone(),
        };
        let gates = gates::evaluate(&signals, &settings.cutover);

        let published_before = live.published;
        // Operator commands first: a rollback must not wait for a gate.
        for cmd in stored::pending(&live.client, &self.cfg.migration_name).await? {
            let args = serde_json::from_str::<serde_json::Value>(&cmd.args).unwrap_or_default();
            let after_cutover = live.machine.position().state == State::CutOver;
            let handled = match cmd.command.as_str() {
                "cutover" => {
                    if !stored::pick(&live.client, cmd.id).await? {
                        continue;
                    }
                    let dry_run = args["dry_run"].as_bool().unwrap_or(false);
                    Some(
                        self.write_cutover(
                            live,
                            &gates,
                            &settings,
                            &cmd.requested_by,
                            dry_run,
                            stop,
                        )
                        .await?,
                    )
                }
                "rollback" if after_cutover => {
                    let abandon = args["abandon_new_writes"].as_bool().unwrap_or(false);
                    Some(
                        self.rollback_after_cutover(live, &settings, &cmd.requested_by, abandon)
                            .await?,
                    )
                }
                _ => None,
            };
            if let Some((answer, exit)) = handled {
                tracing::info!(command = %cmd.command, by = %cmd.requested_by, ok = answer.ok, answer = %answer.message, "operator command");
                stored::answer_with(
                    &live.client,
                    cmd.id,
                    answer.ok,
                    answer.failed,
                    &answer.message,
                )
                .await?;
                if let Some(exit) = exit {
                    return Ok(Some(exit));
                }
                continue;
            }
            let outcome = match cmd.command.as_str() {
                "rollback" => {
                    let reason = serde_json::from_str::<serde_json::Value>(&cmd.args)
                        .ok()
                        .and_then(|a| a["reason"].as_str().map(str::to_owned));
                    let who = match reason {
                        Some(r) => format!("{}: {r}", cmd.requested_by),
                        None => cmd.requested_by.clone(),
                    };
                    live.machine.rollback(&settings.traffic, &who, now)
                }
                "resume" => live.machine.resume(&gates, &cmd.requested_by, now),
                other => machine::CommandOutcome {
                    ok: false,
                    message: format!("unknown command {other:?}"),
                    step: None,
                },
            };
            let mut message = outcome.message.clone();
            if let Some(step) = &outcome.step {
                if let Some(exit) =
                    self.decide(live, step, &gates, Some(&cmd.requested_by), &settings).await?
                {
                    return Ok(Some(exit));
                }
                message = format!("{message} (decision version {})", live.version);
            }
            tracing::info!(command = %cmd.command, by = %cmd.requested_by, ok = outcome.ok, answer = %message, "operator command");
            stored::answer(&live.client, cmd.id, outcome.ok, &message).await?;
        }

        // `[traffic] write = "new"`: one attempt each time it is set.
        if let Some(exit) = self.cutover_from_config(live, &gates, &settings, stop).await? {
            return Ok(Some(exit));
        }

        if let Some(step) = live.machine.evaluate(&gates, &settings.traffic, &settings.cutover, now)
        {
            if let Some(exit) = self.decide(live, &step, &gates, None, &settings).await? {
                return Ok(Some(exit));
            }
        }

        // Republish when Redis lost the decision or holds an older one (as
        // read at the start of this evaluation: not if a decision of this
        // evaluation was published since).
        if live.redis_ok && lease.held() && live.published == published_before {
            if let Some(in_redis) = redis_version {
                let why = match in_redis {
                    None => Some("the key was missing (Redis restarted or the key was deleted)"),
                    Some(v) if v < live.version => Some("Redis held an older version"),
                    _ if live.published < live.version => {
                        Some("the last publish did not reach Redis")
                    }
                    _ => None,
                };
                if let Some(why) = why {
                    if let Some(exit) = self.republish(live, why).await? {
                        return Ok(Some(exit));
                    }
                }
            }
        }

        if !stored::seen(&live.client, &self.cfg.migration_name, &self.me).await? {
            return Ok(Some(Exit::Deposed("another instance claimed the controller".into())));
        }
        self.show(live, &settings, gates, redis_health, now);
        Ok(None)
    }

    /// Stores `step` (with its audit entry) and publishes it.
    async fn decide(
        &self,
        live: &mut Live,
        step: &Step,
        gates: &[Gate],
        actor: Option<&str>,
        settings: &Reloadable,
    ) -> Result<Option<Exit>, LeadError> {
        let mut all_gates = gates.to_vec();
        all_gates.push(live.machine.soak_gate(&settings.cutover, SystemTime::now()));
        let audit = AuditEntry {
            kind: match step.kind {
                StepKind::Decision => "decision".into(),
                StepKind::State => "state".into(),
            },
            from_state: Some(step.from.as_str().into()),
            to_state: Some(step.to.as_str().into()),
            read_new: Some(step.read_new_after),
            reason: step.reason.clone(),
            gates: serde_json::to_value(&all_gates).ok(),
            actor: Some(actor.map_or_else(|| self.me.clone(), str::to_owned)),
            ..empty_audit()
        };
        let exit = self.store_and_publish(live, audit).await?;
        if exit.is_none() && step.to == State::RolledBack && step.read_new_before > 0 {
            metrics::counter!(m::TRAFFIC_ROLLBACKS).increment(1);
        }
        Ok(exit)
    }

    /// Publishes the stored decision again with a higher version.
    async fn republish(&self, live: &mut Live, why: &str) -> Result<Option<Exit>, LeadError> {
        let position = live.machine.position();
        let audit = AuditEntry {
            kind: "republish".into(),
            from_state: Some(position.state.as_str().into()),
            to_state: Some(position.state.as_str().into()),
            read_new: Some(position.read_new),
            reason: format!("republished: {why}"),
            actor: Some(self.me.clone()),
            ..empty_audit()
        };
        self.store_and_publish(live, audit).await
    }

    /// The one way a decision leaves the controller: the machine's position
    /// with the next version is stored together with `audit` (if this
    /// instance still leads), then published.
    async fn store_and_publish(
        &self,
        live: &mut Live,
        mut audit: AuditEntry,
    ) -> Result<Option<Exit>, LeadError> {
        live.version += 1;
        audit.version = Some(live.version);
        let position = live.machine.position().clone();
        let row = self.stored_row(
            &position,
            live.version,
            &live.write_side,
            live.fence_deadline,
            SystemTime::now(),
        );
        if !stored::save(&mut live.client, &self.cfg.migration_name, &self.me, &row, &audit).await?
        {
            return Ok(Some(Exit::Deposed("another instance claimed the controller".into())));
        }
        tracing::info!(
            kind = %audit.kind,
            from = audit.from_state.as_deref().unwrap_or(""),
            to = audit.to_state.as_deref().unwrap_or(""),
            read_new = position.read_new,
            version = live.version,
            decision = %row.decision,
            reason = %audit.reason,
            "controller decision"
        );
        Ok(self.publish(live, &row.decision).await)
    }

    /// Writes `json` (the stored decision, version `live.version`) to Redis.
    async fn publish(&self, live: &mut Live, json: &str) -> Option<Exit> {
        let lease = self.lease.borrow().clone();
        match self.redis.publish(&lease.value, live.version, json).await {
            Ok(Published::Done) => {
                live.published = live.version;
                metrics::counter!(m::TRAFFIC_PUBLISHES, m::LABEL_RESULT => "published")
                    .increment(1);
                metrics::gauge!(m::TRAFFIC_VERSION).set(live.version as f64);
                None
            }
            Ok(Published::NotLeader(holder)) => {
                metrics::counter!(m::TRAFFIC_PUBLISHES, m::LABEL_RESULT => "refused").increment(1);
                if holder.is_empty() {
                    // The lease vanished (Redis restarted empty): the lease
                    // keeper takes it again; the next tick republishes.
                    live.redis_problem = Some("the lease vanished from Redis".into());
                    None
                } else {
                    Some(Exit::Deposed(format!("Redis says {holder} holds the lease")))
                }
            }
            Ok(Published::Stale(v)) => {
                metrics::counter!(m::TRAFFIC_PUBLISHES, m::LABEL_RESULT => "refused").increment(1);
                tracing::warn!(
                    redis_version = v,
                    version = live.version,
                    "Redis holds a newer version; republishing above it"
                );
                live.version = live.version.max(v);
                None
            }
            Err(e) => {
                metrics::counter!(m::TRAFFIC_PUBLISHES, m::LABEL_RESULT => "error").increment(1);
                tracing::warn!(error = %e, "cannot publish the decision; retried when Redis answers");
                live.redis_ok = false;
                live.redis_problem = Some(e.to_string());
                None
            }
        }
    }

    fn stored_row(
        &self,
        p: &Position,
        version: i64,
        write: &str,
        fence_deadline: Option<SystemTime>,
        now: SystemTime,
    ) -> StoredController {
        let settings = self.settings.borrow();
        let decision = Decision {
            version,
            migration: self.cfg.migration_name.clone(),
            read: ReadSplit::new_percent(p.read_new),
            write: write.to_owned(),
            fence_deadline: fence_deadline.map(rfc3339),
            state: p.state.as_str().to_owned(),
            reason: p.reason.clone(),
            updated_at: rfc3339(now),
            bucketing: Bucketing {
                hash: crate::traffic::bucket::HASH_NAME.to_owned(),
                salt: settings.traffic.salt.clone(),
            },
        };
        StoredController {
            state: p.state.as_str().to_owned(),
            reason: p.reason.clone(),
            entered_at: p.entered_at,
            read_new: p.read_new,
            write_side: write.to_owned(),
            version,
            stage_entered_at: p.stage_entered_at,
            rolled_back_at_percent: p.rolled_back_at_percent,
            decision: decision.to_json(),
            leader: Some(self.me.clone()),
            leader_seen_age_seconds: Some(0.0),
        }
    }

    fn show(
        &self,
        live: &Live,
        settings: &Reloadable,
        mut gates: Vec<Gate>,
        redis: RedisHealth,
        now: SystemTime,
    ) {
        let wish = self.write_wish(live, &gates, settings);
        let p = live.machine.position();
        gates.push(live.machine.soak_gate(&settings.cutover, now));
        for state in State::ALL {
            let v = if state == p.state { 1.0 } else { 0.0 };
            metrics::gauge!(m::CONTROLLER_STATE, m::LABEL_STATE => state.as_str()).set(v);
        }
        for g in &gates {
            let v = if g.verdict == Verdict::Pass { 1.0 } else { 0.0 };
            metrics::gauge!(m::GATE_PASSING, m::LABEL_GATE => g.name.as_str()).set(v);
        }
        metrics::gauge!(m::TRAFFIC_READ_NEW_PERCENT).set(f64::from(p.read_new));
        metrics::gauge!(m::TRAFFIC_DESIRED_READ_NEW_PERCENT)
            .set(f64::from(settings.traffic.read_new_percent));
        metrics::gauge!(m::CONTROLLER_LEADER).set(1.0);
        self.board.update(|s| {
            s.role = "leader".into();
            s.instance.clone_from(&self.me);
            s.lease_holder = Some(self.lease.borrow().value.clone());
            s.state = Some(p.state.as_str().into());
            s.reason = Some(p.reason.clone());
            s.entered_at = Some(rfc3339(p.entered_at));
            s.read_new = p.read_new;
            s.desired_read_new = settings.traffic.read_new_percent;
            s.stages.clone_from(&settings.traffic.stages);
            s.on_violation = settings.traffic.on_violation.as_str().into();
            s.write.clone_from(&live.write_side);
            s.version = live.version;
            s.published_version = live.published;
            s.gates = gates;
            s.fail_streak = live.machine.fail_streak();
            s.failure_threshold = settings.cutover.failure_threshold;
            s.redis = redis;
            s.desired_write = settings.traffic.write.as_str().into();
            s.write_cutover = wish;
            s.changes_after_cutover = self.pipeline.late_changes();
        });
    }
}

/// Why the loop lost its connection to the target.
#[derive(Debug, thiserror::Error)]
enum LeadError {
    #[error("{}", client::server_message(.0))]
    Sql(#[from] tokio_postgres::Error),
    #[error("{}", crate::error::display_chain(.0))]
    Connect(#[from] crate::pg::client::ConnectError),
    #[error("{0}")]
    Recover(String),
}

fn empty_audit() -> AuditEntry {
    AuditEntry {
        id: 0,
        at: String::new(),
        kind: String::new(),
        from_state: None,
        to_state: None,
        read_new: None,
        version: None,
        reason: String::new(),
        gates: None,
        actor: None,
    }
}

/// How long the replication stream may be silent before the lag figures
/// count as stale: heartbeats come back through it every
/// `heartbeat_interval`, so two of them missing (plus a second for the
/// round trip) means the stream is not delivering.
pub fn stream_silence_limit(heartbeat_interval: Duration) -> Duration {
    heartbeat_interval * 2 + Duration::from_secs(1)
}
