//! `walshift status`: where a migration stands, read from the target's state
//! schema and the source's slot, so it works whether or not `run` is running.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::types::PgLsn;

use crate::commands::backfill::group;
use crate::config::ValidatedConfig;
use crate::controller::machine::Gate;
use crate::controller::{Board, ControllerStatus};
use crate::error::Error;
use crate::pg::client::{self, SessionLimits};
use crate::pg::{catalog, migrate};
use std::sync::Arc;
use std::time::Instant;

use crate::lag::{Lag, LagSample, SlotHealth};
use crate::state::verify::{self as store, Difference, Runner, TableVerifyState};
use crate::telemetry::http::{StatusFuture, StatusSource};
use tokio_postgres::Client;

/// One table's backfill, as `status` reports it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct BackfillStatus {
    /// Source table.
    pub source: String,
    /// Target table.
    pub target: String,
    /// `pending`, `copying`, `paused` or `complete`.
    pub state: String,
    /// Why it is paused, while it is.
    pub paused_reason: Option<String>,
    /// Times it paused for lag.
    pub pauses: u64,
    /// Rows copied.
    pub rows_copied: u64,
    /// Estimated rows of the source table.
    pub rows_estimated: u64,
    /// Percent copied.
    pub percent: f64,
    /// Average copy rate since the start.
    pub rows_per_second: Option<f64>,
    /// Estimated seconds to completion at that rate.
    pub eta_seconds: Option<u64>,
    /// Chunks committed.
    pub chunks: u64,
    /// Key of the last row copied.
    pub last_key: Option<Vec<String>>,
}

/// What `status` reports.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Status {
    /// Migration name.
    pub migration: String,
    /// Applied position on the target, if anything was applied.
    pub applied_lsn: Option<String>,
    /// Seconds since the applied position was last stored.
    pub applied_age_seconds: Option<f64>,
    /// Replication slot name.
    pub slot: String,
    /// Whether a walsender is using the slot (a `run` is streaming).
    pub slot_active: bool,
    /// WAL the slot retains on the source, in bytes.
    pub slot_retained_bytes: Option<i64>,
    /// Backfill per table, in copy order.
    pub backfill: Vec<BackfillStatus>,
    /// Verification per table and runner (`run`: inside `walshift run`;
    /// `cli`: `walshift verify`).
    pub verify: Vec<TableVerifyState>,
    /// Differences stored by the last passes (at most 20 shown).
    pub differences: Vec<Difference>,
    /// Differences stored in all.
    pub differences_total: usize,
    /// Who answered: `instance` (a running `walshift run`, through its
    /// `/status`) or `state schema` (read directly from the target's state
    /// schema and the source catalog).
    pub answered_by: String,
    /// Why the state schema answered, when an instance was expected.
    pub note: Option<String>,
    /// The running instance's live figures (only when it answered).
    pub live: Option<LiveFigures>,
    /// The cutover controller (live from the leader, or as stored).
    #[serde(default)]
    pub controller: Option<ControllerStatus>,
    /// The published traffic decision, summarized (for the page).
    #[serde(default)]
    pub traffic: Option<TrafficSummary>,
    /// The controller's gates at its last evaluation (for the page).
    #[serde(default)]
    pub gates: Option<Vec<Gate>>,
}

/// The traffic split as the controller last decided it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct TrafficSummary {
    /// Controller state.
    pub state: String,
    /// Reads on new, percent.
    pub read_new: u8,
    /// Reads on old, percent.
    pub read_old: u8,
    /// `[traffic] read_new_percent` in force (live only).
    pub desired_read_new: Option<u8>,
    /// Write side.
    pub write: String,
    /// Decision version.
    pub version: i64,
    /// Why.
    pub reason: String,
    /// Leader (`leader` / `standby` role when live).
    pub role: String,
}

impl TrafficSummary {
    fn of(c: &ControllerStatus) -> TrafficSummary {
        TrafficSummary {
            state: c.state.clone().unwrap_or_default(),
            read_new: c.read_new,
            read_old: 100 - c.read_new.min(100),
            desired_read_new: (c.role == "leader").then_some(c.desired_read_new),
            write: c.write.clone(),
            version: c.version,
            reason: c.reason.clone().unwrap_or_default(),
            role: c.role.clone(),
        }
    }
}

/// The controller as stored in the state schema (no running leader asked).
async fn stored_controller(
    cfg: &ValidatedConfig,
    target: &Client,
) -> Result<Option<ControllerStatus>, Error> {
    let row = crate::state::controller::load(target, &cfg.migration_name)
        .await
        .map_err(Error::sql("reading the controller state"))?;
    let Some(row) = row else { return Ok(None) };
    let recent = crate::state::controller::history(target, &cfg.migration_name, RECENT_AUDIT)
        .await
        .map_err(Error::sql("reading the audit trail"))?;
    let cutover = crate::state::cutover::latest(target, &cfg.migration_name)
        .await
        .map_err(Error::sql("reading the write cutover"))?;
    Ok(Some(ControllerStatus {
        role: "stored".into(),
        instance: row.leader.clone().unwrap_or_default(),
        lease_holder: row.leader.clone(),
        state: Some(row.state.clone()),
        reason: Some(row.reason.clone()),
        entered_at: Some(crate::traffic::decision::rfc3339(row.entered_at)),
        read_new: row.read_new,
        desired_read_new: cfg.traffic.read_new_percent,
        stages: cfg.traffic.stages.clone(),
        on_violation: cfg.traffic.on_violation.as_str().into(),
        write: row.write_side.clone(),
        version: row.version,
        published_version: 0,
        gates: Vec::new(),
        fail_streak: 0,
        failure_threshold: cfg.cutover.failure_threshold,
        redis: Default::default(),
        reload: Default::default(),
        recent,
        desired_write: cfg.traffic.write.as_str().into(),
        write_cutover: None,
        changes_after_cutover: 0,
        cutover,
    }))
}

/// Audit entries `status` shows.
const RECENT_AUDIT: i64 = 5;

/// What only a running instance knows.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LiveFigures {
    /// Process id.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_seconds: f64,
    /// Whether the replication stream is connected.
    pub stream_connected: bool,
    /// Lag in seconds (`None`: unknown, e.g. right after a reconnect).
    pub lag_seconds: Option<f64>,
    /// Lag in bytes.
    pub lag_bytes: Option<u64>,
    /// Seconds since the source time of the newest heartbeat applied.
    pub heartbeat_age_seconds: Option<f64>,
    /// The slot as the source last reported it.
    pub slot: SlotHealth,
    /// `[metrics] ready_max_lag_seconds`: the lag `/readyz` tolerates.
    pub ready_max_lag_seconds: f64,
    /// Whether `/readyz` says ready, and why not.
    pub ready: bool,
    /// Why not ready.
    pub not_ready_reason: Option<String>,
    /// The last 15 minutes of lag, one sample per second.
    pub history: Vec<LagSample>,
    /// The last errors of the process (at most 10, oldest first).
    pub errors: Vec<crate::telemetry::recent::RecentError>,
}

/// Differences `status` lists.
const STATUS_DIFFERENCES: usize = 20;

/// Reads the status from the state schema and the source catalog.
pub async fn read(cfg: &ValidatedConfig) -> Result<Status, Error> {
    let target = client::connect(&cfg.target.url, "status", SessionLimits::ADMIN).await?;
    migrate::check(&target).await?;
    let source = client::connect(&cfg.source.url, "status", SessionLimits::ADMIN).await?;
    read_with(cfg, &source, &target).await
}

/// [`read`] over open sessions.
pub async fn read_with(
    cfg: &ValidatedConfig,
    source: &Client,
    target: &Client,
) -> Result<Status, Error> {
    if !migrate::state_schema_exists(target)
        .await
        .map_err(Error::sql("looking up the state schema"))?
    {
        return Err(Error::Precondition(format!(
            "the target has no walshift schema: run `walshift setup` first (migration {})",
            cfg.migration_name
        )));
    }
    let applied = target
        .query_opt(
            "select applied_lsn, extract(epoch from now() - updated_at)::float8 \
             from walshift.progress where migration = $1",
            &[&cfg.migration_name],
        )
        .await
        .map_err(Error::sql("reading the applied position"))?;
    let (applied_lsn, applied_age_seconds) = match applied {
        Some(row) => {
            let lsn: PgLsn = row.try_get(0).map_err(Error::sql("reading the applied position"))?;
            let age: f64 = row.try_get(1).map_err(Error::sql("reading the applied position"))?;
            (Some(lsn.to_string()), Some(age))
        }
        None => (None, None),
    };
    let slot = catalog::slot_info(source, &cfg.source.slot)
        .await
        .map_err(Error::sql("looking up the replication slot"))?;
    let retained: Option<i64> = source
        .query_opt(
            "select (pg_current_wal_lsn() - restart_lsn)::bigint from pg_replication_slots \
             where slot_name = $1",
            &[&cfg.source.slot],
        )
        .await
        .map_err(Error::sql("reading the slot's retained WAL"))?
        .and_then(|r| r.try_get(0).ok());
    let has_backfill = target
        .query_one("select to_regclass('walshift.backfill') is not null", &[])
        .await
        .and_then(|r| r.try_get::<_, bool>(0))
        .map_err(Error::sql("looking up the backfill progress"))?;
    let mut backfill = Vec::new();
    if has_backfill {
        let rows = target
            .query(
                "select source_table, target_table, last_key, rows_copied, chunks, rows_estimated, \
                 completed_at is not null, started_at is not null, paused_reason, pauses, \
                 extract(epoch from updated_at - started_at)::float8 \
                 from walshift.backfill where migration = $1 order by started_at nulls last, target_table",
                &[&cfg.migration_name],
            )
            .await
            .map_err(Error::sql("reading the backfill progress"))?;
        for row in rows {
            let get = |e| Error::sql("reading the backfill progress")(e);
            let count = |i: usize| -> Result<u64, Error> {
                Ok(u64::try_from(row.try_get::<_, i64>(i).map_err(get)?).unwrap_or(0))
            };
            let rows_copied = count(3)?;
            let rows_estimated = count(5)?.max(rows_copied);
            let complete: bool = row.try_get(6).map_err(get)?;
            let started: bool = row.try_get(7).map_err(get)?;
            let paused_reason: Option<String> = row.try_get(8).map_err(get)?;
            let elapsed: Option<f64> = row.try_get(10).map_err(get)?;
            let state = if complete {
                "complete"
            } else if paused_reason.is_some() {
                "paused"
            } else if started {
                "copying"
            } else {
                "pending"
            };
            let rate = elapsed.filter(|e| *e > 0.0).map(|e| rows_copied as f64 / e);
            let percent = if complete {
                100.0
            } else if rows_estimated == 0 {
                0.0
            } else {
                (rows_copied as f64 * 100.0 / rows_estimated as f64).min(99.9)
            };
            let eta_seconds = match rate {
                _ if complete => Some(0),
                Some(r) if r > 0.0 => {
                    Some((rows_estimated.saturating_sub(rows_copied) as f64 / r).round() as u64)
                }
                _ => None,
            };
            backfill.push(BackfillStatus {
                source: row.try_get(0).map_err(get)?,
                target: row.try_get(1).map_err(get)?,
                state: state.into(),
                paused_reason,
                pauses: count(9)?,
                rows_copied,
                rows_estimated,
                percent,
                rows_per_second: rate,
                eta_seconds,
                chunks: count(4)?,
                last_key: row.try_get(2).map_err(get)?,
            });
        }
    }
    let has_verify = target
        .query_one("select to_regclass('walshift.verify_tables') is not null", &[])
        .await
        .and_then(|r| r.try_get::<_, bool>(0))
        .map_err(Error::sql("looking up the verification state"))?;
    let (verify, mut differences) = if has_verify {
        (
            store::load(target, &cfg.migration_name, None)
                .await
                .map_err(Error::sql("reading the verification state"))?,
            store::differences(target, &cfg.migration_name, None)
                .await
                .map_err(Error::sql("reading the verification differences"))?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let differences_total = differences.len();
    differences.truncate(STATUS_DIFFERENCES);
    let controller = stored_controller(cfg, target).await?;
    let traffic = controller.as_ref().map(TrafficSummary::of);
    Ok(Status {
        migration: cfg.migration_name.clone(),
        applied_lsn,
        applied_age_seconds,
        slot: cfg.source.slot.clone(),
        slot_active: slot.as_ref().is_some_and(|s| s.active_pid.is_some()),
        slot_retained_bytes: retained,
        backfill,
        verify,
        differences,
        differences_total,
        answered_by: "state schema".into(),
        note: None,
        live: None,
        controller,
        traffic,
        gates: None,
    })
}

/// How long `walshift status` waits for a running instance's `/status`.
pub const INSTANCE_TIMEOUT: Duration = Duration::from_secs(3);

/// Reads the status from the running instance (its `/status`) when one
/// answers within [`INSTANCE_TIMEOUT`], else from the state schema and the
/// source catalog, saying why.
pub async fn query(cfg: &ValidatedConfig) -> Result<Status, Error> {
    let target = client::connect(&cfg.target.url, "status", SessionLimits::ADMIN).await?;
    // Refuses a newer (or edited) state schema; an older one reads fine.
    migrate::check(&target).await?;
    let instance = crate::state::instance::lookup(&target, &cfg.migration_name)
        .await
        .map_err(Error::sql("looking up the running instance"))?;
    let note = match &instance {
        Some(i) => match fetch_status(&i.http_addr).await {
            Ok(status) => return Ok(status),
            Err(why) => format!(
                "the last walshift run (pid {} on {}, {}) did not answer ({why}); read from the \
                 state schema and the source catalog",
                i.pid, i.host, i.http_addr
            ),
        },
        None => "no walshift run has registered; read from the state schema and the source \
                 catalog"
            .to_owned(),
    };
    let source = client::connect(&cfg.source.url, "status", SessionLimits::ADMIN).await?;
    let mut status = read_with(cfg, &source, &target).await?;
    status.note = Some(note);
    Ok(status)
}

/// `GET /status` from `addr`, within [`INSTANCE_TIMEOUT`].
async fn fetch_status(addr: &str) -> Result<Status, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /status HTTP/1.1\r\nhost: walshift\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(|e| e.to_string())?;
        Ok::<Vec<u8>, String>(response)
    };
    let response = tokio::time::timeout(INSTANCE_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("no answer within {} s", INSTANCE_TIMEOUT.as_secs()))??;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "not an HTTP response".to_owned())?;
    let head = String::from_utf8_lossy(&response[..split]);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or("bad response").to_owned());
    }
    serde_json::from_slice(&response[split + 4..]).map_err(|e| format!("unreadable /status: {e}"))
}

/// Answers `/status` and `/readyz` for a running `walshift run`: the same
/// document as `walshift status --json`, plus the live figures.
pub struct LiveStatus {
    cfg: ValidatedConfig,
    lag: Arc<Lag>,
    started: Instant,
    sessions: tokio::sync::Mutex<Option<(Client, Client)>>,
    board: Option<Arc<Board>>,
}

impl LiveStatus {
    /// The live status of the run configured by `cfg`, whose lag is `lag`.
    pub fn new(cfg: ValidatedConfig, lag: Arc<Lag>) -> Self {
        LiveStatus {
            cfg,
            lag,
            started: Instant::now(),
            sessions: tokio::sync::Mutex::new(None),
            board: None,
        }
    }

    /// Also shows the controller's live status from `board`.
    pub fn with_controller(mut self, board: Arc<Board>) -> Self {
        self.board = Some(board);
        self
    }

    fn figures(&self) -> LiveFigures {
        let ready = self.readiness();
        let heartbeat_age_seconds = self
            .lag
            .heartbeat_applied()
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs_f64());
        LiveFigures {
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            stream_connected: self.lag.is_connected(),
            lag_seconds: self.lag.seconds().map(|d| d.as_secs_f64()),
            lag_bytes: self.lag.bytes(),
            heartbeat_age_seconds,
            slot: self.lag.slot(),
            ready_max_lag_seconds: self.cfg.metrics.ready_max_lag.as_secs_f64(),
            ready: ready.is_ok(),
            not_ready_reason: ready.err(),
            history: self.lag.history(),
            errors: crate::telemetry::recent::list(),
        }
    }

    async fn read(&self) -> Result<Status, String> {
        let mut sessions = self.sessions.lock().await;
        if sessions.is_none() {
            let source = client::connect(&self.cfg.source.url, "status", SessionLimits::ADMIN)
                .await
                .map_err(|e| crate::error::display_chain(&e))?;
            let target = client::connect(&self.cfg.target.url, "status", SessionLimits::ADMIN)
                .await
                .map_err(|e| crate::error::display_chain(&e))?;
            *sessions = Some((source, target));
        }
        let Some((source, target)) = sessions.as_ref() else {
            return Err("no status session".into());
        };
        match read_with(&self.cfg, source, target).await {
            Ok(mut status) => {
                status.answered_by = "instance".into();
                status.live = Some(self.figures());
                if let Some(board) = &self.board {
                    let mut live = board.snapshot();
                    if !live.role.is_empty() {
                        live.recent = status
                            .controller
                            .as_ref()
                            .map(|c| c.recent.clone())
                            .unwrap_or_default();
                        live.cutover = status.controller.as_ref().and_then(|c| c.cutover.clone());
                        if live.role == "standby" {
                            // A standby knows no gates; the stored decision
                            // is the leader's.
                            if let Some(stored) = &mut status.controller {
                                stored.role = "standby".into();
                            }
                        } else {
                            status.gates = Some(live.gates.clone());
                            status.traffic = Some(TrafficSummary::of(&live));
                            status.controller = Some(live);
                        }
                    }
                }
                Ok(status)
            }
            Err(e) => {
                // Reconnect on the next request.
                *sessions = None;
                Err(crate::error::display_chain(&e))
            }
        }
    }
}

impl StatusSource for LiveStatus {
    fn status_json(&self) -> StatusFuture<'_> {
        Box::pin(async move {
            let status = self.read().await?;
            serde_json::to_string(&status).map_err(|e| e.to_string())
        })
    }

    fn readiness(&self) -> Result<(), String> {
        if let Some(why) = self.board.as_ref().and_then(|b| b.not_ready()) {
            return Err(why);
        }
        if !self.lag.is_connected() {
            return Err("the replication stream is not connected".into());
        }
        match self.lag.seconds() {
            None => Err("replication lag is unknown: no heartbeat came back through the stream \
                         since it connected"
                .into()),
            Some(lag) if lag > self.cfg.metrics.ready_max_lag => Err(format!(
                "replication lag {:.1} s is over metrics.ready_max_lag_seconds ({} s)",
                lag.as_secs_f64(),
                self.cfg.metrics.ready_max_lag.as_secs()
            )),
            Some(_) => Ok(()),
        }
    }
}

/// Writes `status` for humans.
pub fn render(status: &Status, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "migration {}", status.migration)?;
    match &status.live {
        Some(live) => {
            writeln!(
                out,
                "  answered by walshift run (pid {}, up {}): stream {}, {}",
                live.pid,
                human(Duration::from_secs_f64(live.uptime_seconds.max(0.0))),
                if live.stream_connected { "connected" } else { "disconnected" },
                if live.ready {
                    "ready".to_owned()
                } else {
                    format!("not ready: {}", live.not_ready_reason.as_deref().unwrap_or("?"))
                }
            )?;
            let seconds =
                live.lag_seconds.map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2} s"));
            let bytes = live
                .lag_bytes
                .map_or_else(|| "unknown".to_owned(), |b| format!("{} bytes", group(b)));
            writeln!(out, "  lag {seconds}, {bytes}")?;
            if let Some(age) = live.heartbeat_age_seconds {
                writeln!(out, "  last heartbeat applied {age:.1} s ago")?;
            }
            if !live.errors.is_empty() {
                writeln!(out, "  last errors:")?;
                for e in &live.errors {
                    writeln!(out, "    [{} {}] {}", e.stage, e.kind, e.message)?;
                }
            }
        }
        None => {
            if let Some(note) = &status.note {
                writeln!(out, "  {note}")?;
            }
        }
    }
    match (&status.applied_lsn, status.applied_age_seconds) {
        (Some(lsn), Some(age)) => {
            writeln!(out, "  applied position {lsn} (stored {age:.1} s ago)")?;
        }
        _ => writeln!(out, "  applied position: nothing applied yet")?,
    }
    let retained = status
        .slot_retained_bytes
        .map_or_else(String::new, |b| format!(", retains {} bytes of WAL", group(b.max(0) as u64)));
    writeln!(
        out,
        "  slot {}: {}{retained}",
        status.slot,
        if status.slot_active { "streaming" } else { "not in use" }
    )?;
    if let Some(slot) = status.live.as_ref().map(|l| &l.slot) {
        if let Some(st) = &slot.wal_status {
            let safe = slot.safe_wal_size.map_or_else(String::new, |b| {
                format!(", {} bytes before it is invalidated", group(b.max(0) as u64))
            });
            writeln!(out, "  slot wal_status {st}{safe}")?;
        }
    }
    if !status.slot_active {
        if let Some(bytes) = status.slot_retained_bytes {
            writeln!(
                out,
                "  warning: no walshift run consumes slot {}: the source keeps its {} bytes of WAL \
                 and more as it writes, until a run catches up (or `walshift teardown` drops the \
                 slot)",
                status.slot,
                group(bytes.max(0) as u64)
            )?;
        }
    }
    if status.backfill.is_empty() {
        writeln!(out, "backfill: not started")?;
    } else {
        render_backfill(status, out)?;
    }
    render_verify(status, out)
}

fn render_verify(status: &Status, out: &mut impl Write) -> std::io::Result<()> {
    if status.verify.iter().all(|v| v.last.is_none() && v.pass.is_none()) {
        return writeln!(out, "verify: no pass yet");
    }
    writeln!(out, "verify")?;
    for v in &status.verify {
        if v.last.is_none() && v.pass.is_none() {
            continue;
        }
        let by = match v.runner {
            Runner::Run => "walshift run",
            Runner::Cli => "walshift verify",
        };
        let mut line = format!("  {} ({by}):", v.target_table);
        if let Some(last) = &v.last {
            line.push_str(&format!(
                " last {} pass {} {} ago: {} rows, {} chunks, {} differences",
                last.kind.as_str(),
                last.result.as_str(),
                human(Duration::from_secs_f64(last.age_seconds.max(0.0))),
                group(last.counters.rows),
                group(last.counters.chunks),
                group(last.counters.differences),
            ));
            if last.counters.unconfirmed > 0 {
                line.push_str(&format!(" ({} unconfirmed)", group(last.counters.unconfirmed)));
            }
        }
        match v.last_clean_age_seconds {
            Some(age) => line.push_str(&format!(
                "; last clean {} ago",
                human(Duration::from_secs_f64(age.max(0.0)))
            )),
            None => line.push_str("; never clean"),
        }
        if let Some(pass) = &v.pass {
            line.push_str(&format!(
                "; {} pass running: {} rows in {} chunks so far",
                pass.kind.as_str(),
                group(pass.counters.rows),
                group(pass.counters.chunks)
            ));
        }
        writeln!(out, "{line}")?;
    }
    if !status.differences.is_empty() {
        writeln!(out, "differences ({} stored)", status.differences_total)?;
        for d in &status.differences {
            writeln!(
                out,
                "  {} key ({}): {}{}",
                d.table,
                d.key.join(", "),
                d.kind.as_str(),
                if d.confirmed { "" } else { " (unconfirmed)" }
            )?;
        }
    }
    if let Some(c) = &status.controller {
        render_controller(c, out)?;
    }
    Ok(())
}

fn render_controller(c: &ControllerStatus, out: &mut impl Write) -> std::io::Result<()> {
    let state = c.state.as_deref().unwrap_or("not started");
    let who = match c.role.as_str() {
        "leader" => format!("leader {}", c.instance),
        "standby" => format!(
            "this instance is a standby; {} leads",
            c.lease_holder.as_deref().unwrap_or("another instance")
        ),
        _ => format!("stored by {}", c.lease_holder.as_deref().unwrap_or("?")),
    };
    writeln!(
        out,
        "controller: {state}, reads {} % new / {} % old, writes {} (version {}; {who})",
        c.read_new,
        100 - c.read_new.min(100),
        c.write,
        c.version
    )?;
    if let Some(reason) = &c.reason {
        writeln!(out, "  reason: {reason}")?;
    }
    if let Some(at) = &c.entered_at {
        writeln!(out, "  since: {at}")?;
    }
    if c.role == "leader" {
        writeln!(
            out,
            "  desired: {} % new, stages {:?}, on_violation {}",
            c.desired_read_new, c.stages, c.on_violation
        )?;
        for g in &c.gates {
            let verdict = match g.verdict {
                crate::controller::machine::Verdict::Pass => "pass",
                crate::controller::machine::Verdict::Hold => "HOLD",
                crate::controller::machine::Verdict::Fail => "FAIL",
            };
            writeln!(
                out,
                "  gate {:<13} {verdict:<4} {} (limit {})",
                g.name.as_str(),
                g.value,
                g.limit
            )?;
        }
        if c.fail_streak > 0 {
            writeln!(
                out,
                "  failing for {} evaluation(s) (a violation at {})",
                c.fail_streak, c.failure_threshold
            )?;
        }
        if let Some(e) = &c.reload.last_error {
            writeln!(out, "  config reload rejected: {e}")?;
        }
        if let Some(wish) = &c.write_cutover {
            writeln!(out, "  write cutover: {wish}")?;
        }
    }
    render_cutover(c, out)?;
    if !c.recent.is_empty() {
        writeln!(out, "  recent decisions (walshift history for all):")?;
        for a in &c.recent {
            writeln!(out, "    {}", crate::commands::control::history_line(a))?;
        }
    }
    Ok(())
}

/// The write cutover: the newest attempt, and what is left once done.
fn render_cutover(c: &ControllerStatus, out: &mut impl Write) -> std::io::Result<()> {
    let Some(a) = &c.cutover else { return Ok(()) };
    let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |s| format!("{:.1} ms", s * 1000.0));
    let f = &a.figures;
    match a.outcome {
        None => writeln!(out, "  write cutover: attempt {} in progress at step {}", a.id, a.step)?,
        Some(o) => writeln!(
            out,
            "  write cutover: attempt {} {} ({}){}",
            a.id,
            o.as_str(),
            a.finished_at.as_deref().unwrap_or("?"),
            a.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
        )?,
    }
    if f.pause_seconds.is_some() || f.drain_seconds.is_some() {
        writeln!(
            out,
            "    write pause {}, lock wait {}, drain {}, final check {}",
            ms(f.pause_seconds),
            ms(f.lock_wait_seconds),
            ms(f.drain_seconds),
            ms(f.check_seconds)
        )?;
    }
    if c.state.as_deref() == Some("cut_over") {
        if c.changes_after_cutover > 0 {
            writeln!(
                out,
                "    {} change(s) to the old tables got past the fence after the cutover and were                  NOT applied (see the log)",
                c.changes_after_cutover
            )?;
        }
        writeln!(out, "    left to do:")?;
        writeln!(
            out,
            "      - keep `walshift run` running until the application writes only to the new              tables (late writes to the old tables show up as errors)"
        )?;
        writeln!(
            out,
            "      - then stop it and run `walshift teardown --yes` (drops the slot, the              publication and walshift's state; add --drop-fence to drop the fence triggers)"
        )?;
        writeln!(
            out,
            "      - the old tables are never dropped by walshift: drop them when you are sure"
        )?;
    }
    Ok(())
}

fn render_backfill(status: &Status, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "backfill")?;
    for b in &status.backfill {
        let mut line = format!(
            "  {} <- {}: {} {}/{} rows ({:.1}%)",
            b.target,
            b.source,
            b.state,
            group(b.rows_copied),
            group(b.rows_estimated),
            b.percent
        );
        if b.state != "complete" {
            if let Some(rate) = b.rows_per_second {
                line.push_str(&format!(", {} rows/s", group(rate.round() as u64)));
            }
            if let Some(eta) = b.eta_seconds {
                line.push_str(&format!(", ETA {}", human(Duration::from_secs(eta))));
            }
        }
        if let Some(reason) = &b.paused_reason {
            line.push_str(&format!(", paused: {reason}"));
        }
        if b.pauses > 0 {
            line.push_str(&format!(", {} pause(s)", b.pauses));
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `1h02m`, `3m05s`, `42s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_for_humans() {
        let status = Status {
            migration: "m".into(),
            applied_lsn: Some("0/16B3748".into()),
            applied_age_seconds: Some(1.25),
            slot: "walshift_m".into(),
            slot_active: true,
            slot_retained_bytes: Some(123_456),
            backfill: vec![BackfillStatus {
                source: "public.t".into(),
                target: "shadow.t".into(),
                state: "paused".into(),
                paused_reason: Some(
                    "replication lag 3.0 s is over backfill.max_lag_seconds (1 s)".into(),
                ),
                pauses: 2,
                rows_copied: 500,
                rows_estimated: 1000,
                percent: 50.0,
                rows_per_second: Some(100.0),
                eta_seconds: Some(5),
                chunks: 3,
                last_key: Some(vec!["500".into()]),
            }],
            verify: vec![],
            differences: vec![],
            differences_total: 0,
            answered_by: "state schema".into(),
            note: None,
            live: None,
            controller: None,
            traffic: None,
            gates: None,
        };
        let mut out = Vec::new();
        render(&status, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("applied position 0/16B3748 (stored 1.2 s ago)"), "{text}");
        assert!(
            text.contains("slot walshift_m: streaming, retains 123,456 bytes of WAL"),
            "{text}"
        );
        assert!(text.contains("shadow.t <- public.t: paused 500/1,000 rows (50.0%), 100 rows/s, ETA 5s, paused: replication lag 3.0 s"), "{text}");
        assert!(text.contains("2 pause(s)"), "{text}");
        assert_eq!(human(Duration::from_secs(3725)), "1h02m");
        assert_eq!(human(Duration::from_secs(185)), "3m05s");
    }
}
