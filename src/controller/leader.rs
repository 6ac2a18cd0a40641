//! One `walshift run` per migration leads; others wait as standbys.
//!
//! With `[redis] url` set, `run` first takes the controller lease. A
//! standby does nothing but poll the lease (it does not touch the slot,
//! which Postgres would refuse anyway) and says who holds it. The leader
//! runs the pipeline (stream, apply, backfill, verification) and the
//! controller; when it loses the lease (another instance took it after it
//! could not renew) or finds another leader recorded in the state schema,
//! it stops the pipeline and goes back to standby. On shutdown it releases
//! the lease so a standby takes over at once.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use crate::commands::run::{RunOptions, RunSummary, run_with};
use crate::config::{Reloadable, ValidatedConfig};
use crate::controller::lease::{self, LeaseView, Waiting};
use crate::controller::{Board, Controller, Exit};
use crate::error::Error;
use crate::runtime::shutdown::{self, Shutdown};
use crate::runtime::tasks::spawn_named;
use crate::telemetry::metrics as m;
use crate::traffic::redis::TrafficRedis;

/// This process's id in the lease and the state schema:
/// `host:pid:start-millis`.
pub fn instance_id() -> String {
    let host = crate::state::instance::host_name();
    let started =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("{host}:{}:{started}", std::process::id())
}

/// Runs `walshift run` with the controller: standby until the lease is
/// ours, then pipeline + controller until shutdown, a fatal error, or the
/// lease is lost (then standby again).
pub async fn run(
    cfg: &ValidatedConfig,
    settings: watch::Receiver<Arc<Reloadable>>,
    board: Arc<Board>,
    options: RunOptions,
    mut outer: Shutdown,
) -> Result<RunSummary, Error> {
    if cfg.redis.url.is_none() {
        return run_with(cfg, outer, options).await;
    }
    let redis = TrafficRedis::new(&cfg.redis).map_err(|e| Error::Precondition(e.to_string()))?;
    // Bad input (mapping, slot, setup) exits 2 before waiting for a lease.
    crate::commands::run::prepare(cfg).await?;
    let me = instance_id();
    let ttl = settings.borrow().cutover.lease_ttl;
    let mut summary = RunSummary::default();
    loop {
        metrics::gauge!(m::CONTROLLER_LEADER).set(0.0);
        board.update(|s| {
            s.role = "standby".into();
            s.instance.clone_from(&me);
        });
        let acquired = lease::acquire(&redis, &me, ttl, &mut outer, |waiting| match waiting {
            Waiting::HeldBy(holder) => {
                tracing::info!(holder = %holder, "standby: {holder} holds the lease");
                board.update(|s| {
                    s.lease_holder = Some(holder.clone());
                    s.redis.reachable = true;
                    s.redis.problem = None;
                });
            }
            Waiting::Unreachable(e) => {
                tracing::warn!(error = %e, "standby: Redis unreachable; waiting to take the controller lease");
                board.update(|s| {
                    s.redis.reachable = false;
                    s.redis.problem = Some(e.clone());
                });
            }
        })
        .await;
        let Some(value) = acquired else { return Ok(summary) };
        tracing::info!(lease = %value, "leader: took the controller lease; starting the pipeline");
        board.update(|s| s.role = "leader".into());
        metrics::gauge!(m::CONTROLLER_LEADER).set(1.0);

        let (step_down_tx, stop) = shutdown::channel();
        let step_down = Arc::new(step_down_tx);
        let (view_tx, view_rx) = watch::channel(LeaseView {
            value: value.clone(),
            renewed_at: Instant::now(),
            ttl,
            problem: None,
        });
        let forward = {
            let step_down = Arc::clone(&step_down);
            let mut outer = outer.clone();
            let mut stop = stop.clone();
            spawn_named("leader-stop", async move {
                tokio::select! {
                    () = outer.wait() => step_down.trigger(),
                    () = stop.wait() => {}
                }
            })
        };
        let keeper = spawn_named(
            "lease",
            lease::keep(redis.clone(), view_tx, Arc::clone(&step_down), stop.clone()),
        );
        let controller = Controller::new(
            cfg.clone(),
            settings.clone(),
            Arc::clone(&options.lag),
            redis.clone(),
            view_rx,
            me.clone(),
            Arc::clone(&board),
            Arc::clone(&options.pipeline),
        );
        let controller_task = {
            let step_down = Arc::clone(&step_down);
            let stop = stop.clone();
            spawn_named("controller", async move {
                let exit = controller.run(stop).await;
                if let Exit::Deposed(why) = &exit {
                    tracing::warn!(why = %why, "controller deposed; stepping down to standby");
                    step_down.trigger();
                }
                exit
            })
        };
        let result = run_with(cfg, stop.clone(), options.clone()).await;
        step_down.trigger();
        let _ = controller_task.await;
        let _ = keeper.await;
        let _ = forward.await;
        let outer_stop = outer.is_triggered();
        // Released whatever the reason (compare-and-delete: a no-op when
        // another instance holds it now), so a standby (or this process,
        // standing by) takes it at once rather than after the TTL.
        if let Err(e) = redis.release(&value).await {
            tracing::warn!(error = %e, "cannot release the controller lease; it expires by itself");
        }
        let run = result?;
        summary.applied.transactions += run.applied.transactions;
        summary.applied.changes += run.applied.changes;
        summary.applied.commits += run.applied.commits;
        summary.reconnects += run.reconnects;
        summary.strict_replays += run.strict_replays;
        summary.backfilled = run.backfilled;
        if outer_stop {
            return Ok(summary);
        }
        tracing::warn!("stepped down: standing by for the controller lease");
    }
}
