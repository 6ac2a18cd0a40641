//! `walshift demo`: the whole pipeline and the cutover controller on
//! throwaway servers, no set-up.
//!
//! 1. start a local PostgreSQL cluster (temp dir, free port,
//!    `wal_level=logical`, [`cluster`]) and a `redis-server`
//!    (`redis_server`);
//!    without their binaries the demo exits 2 before starting anything
//!    (`bash scripts/demo.sh` installs them);
//! 2. create the seed billing tables (`sql/demo/seed_billing.sql`) with
//!    their sample data (`sql/demo/seed_billing_data.sql`: these rows exist
//!    before the slot, so only the backfill can bring them) and the example
//!    shadow schema (`sql/billing_new.sql`), whose ids become identities
//!    (`sql/demo/billing_new_ids.sql`: the application inserts into the new
//!    tables after the write cutover);
//! 3. `setup`: the mapping is compiled against `billing_new`; publication,
//!    slot, state schema;
//! 4. `run` (in-process, with `[redis] url` set, so with the controller):
//!    backfill, stream and verify into `billing_new` while a write workload
//!    (`workload`) runs, with a live progress line; the workload routes
//!    each write by the newest published decision (old tables, held while
//!    fenced, new tables);
//! 5. the cutover walk-through (`cutover`): every controller decision
//!    printed as published (with its JSON), reads moved to new in stages,
//!    a shadow row corrupted behind walshift's back, the automatic
//!    rollback, the repair, `walshift resume`, reads at 100 % new, then the
//!    write cutover under the running workload: its steps, the measured
//!    pause, the workload on `billing_new`, a write to an old table
//!    rejected with the fence's message;
//! 6. stop the workload and `run`; check that every write the workload had
//!    acknowledged is in `billing_new` (before the flip as
//!    `transform(source)` makes it, after it as written) and that every
//!    shadow table equals `transform(source)` row for row but for the keys
//!    written on new (compared by query); print a summary;
//! 7. stop and remove Redis and the cluster — also on Ctrl-C (exit 130).
//!
//! A step that does not happen in time, a cutover that aborts and a check
//! that fails end the demo with exit 1, after the same clean-up.
//!
//! The controller's timings are seconds instead of the production minutes
//! (`DEMO_SETTINGS`): the whole demo takes under a minute.

pub mod cluster;
mod console;
mod cutover;
mod redis_server;
mod workload;

/// The demo's table mappings: the same as `config/dev.toml`, into the shadow
/// schema of `sql/billing_new.sql`.
const DEMO_TABLES: &str = r#"
[[tables]]
source = "public.organizations"
target = "billing_new.organizations"
[tables.columns]
id = "id"
name = "name"
billing_email = "lower(email)"
plan = "plan_code"
created_at = "created_at"

[[tables]]
source = "public.usage_events"
target = "billing_new.usage_events"
[tables.columns]
id = "id"
organization_id = "org_id"
event_type = "event_type"
quantity = "quantity::numeric(20,6)"
amount = "amount_cents / 100.0"
occurred_at = "occurred_at"
processing_status = "'migrated'"
processed_at = { expr = "now()", verify = false }

[[tables]]
source = "public.invoices"
target = "billing_new.invoices"
[tables.columns]
id = "id"
organization_id = "org_id"
total = "total_cents / 100.0"
currency = "upper(currency)"
issued_at = "issued_at"
status = "status"
"#;

/// The demo's verification, traffic and cutover settings: seconds instead
/// of minutes, so the walk-through fits in a minute.
const DEMO_SETTINGS: &str = r#"
# A full pass of every table in each round, rounds a second apart: the
# fault is found within a round (a few seconds, most of it hashing
# usage_events). `repair` stays off: see the `cutover` module's doc.
[verify]
interval_seconds = 1
full_pass_interval_seconds = 1

# Nothing on new until the demo raises it (a config reload) once verified.
[traffic]
read_new_percent = 0
stages = [10, 50, 90, 100]

# A generous lag limit: the lag of a busy small machine under the workload
# must not roll back; the fault does. The write cutover drains whatever lag
# the gate let through, so its drain may take as long; its pre-check first
# waits for the verification pass in progress (a full pass of usage_events
# takes seconds on a small, busy machine), within final_check_timeout_ms.
# Both only bound a failure: the fence itself is held well under a second.
[cutover]
evaluate_interval_ms = 250
max_lag_seconds = 10
min_soak_seconds = 2
failure_threshold = 3
drain_timeout_ms = 10000
final_check_timeout_ms = 30000
"#;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::backfill::BackfillBoard;
use crate::commands::backfill::group;
use crate::commands::run::{RunOptions, RunSummary};
use crate::commands::setup;
use crate::config::{Config, ValidatedConfig};
use crate::controller::{self, Board};
use crate::error::{Error, ExitCode};
use crate::pg::client::{self, SessionLimits};
use crate::runtime::shutdown::{self, Shutdown};
use crate::runtime::tasks::spawn_named;
use cluster::LocalCluster;
use console::Console;
use cutover::{Feed, Halt, Parts, Walk};
use redis_server::LocalRedis;
use workload::Tally;

/// Options of the demo.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// The least time the write workload runs before reads start moving to
    /// new (it runs until the walk-through is complete).
    pub duration: Duration,
}

/// Runs the demo; returns the exit code (130 when interrupted).
pub async fn run(options: DemoOptions, mut interrupt: Shutdown) -> Result<ExitCode, Error> {
    let started = Instant::now();
    // Missing binaries (or `postgres` user) exit 2 before anything starts;
    // a failed start exits 1.
    let redis_binary = redis_server::find_binary()
        .ok_or_else(|| Error::Precondition(redis_server::MISSING.to_owned()))?;
    eprintln!("walshift demo: starting a throwaway PostgreSQL cluster and redis-server ...");
    let cluster = LocalCluster::start()?;
    eprintln!("  cluster on 127.0.0.1:{} in {}", cluster.port(), cluster.dir().display());
    // On error the cluster is stopped and removed by its drop.
    let redis = LocalRedis::start(&redis_binary).await?;
    eprintln!(
        "  redis-server on 127.0.0.1:{} (pid {}) in {}",
        redis.port(),
        redis.pid().map_or_else(|| "?".to_owned(), |p| p.to_string()),
        redis.dir().display()
    );
    let result = run_on(&cluster, &redis, options, &mut interrupt, started).await;
    redis.stop();
    eprintln!("  redis-server stopped and removed");
    cluster.stop();
    eprintln!("  cluster stopped and removed");
    result
}

/// The demo's config for the cluster's `postgres` database and `redis_url`.
fn demo_config(pg_url: &str, redis_url: &str) -> Result<ValidatedConfig, Error> {
    let toml = format!(
        "[migration]\nname = \"demo\"\n\n[source]\nurl = \"{pg_url}\"\nstatus_interval_ms = 500\n\n\
         [redis]\nurl = \"{redis_url}\"\n{DEMO_SETTINGS}\n{DEMO_TABLES}"
    );
    Ok(Config::from_toml_str(&toml, std::path::Path::new("<demo>"), &|_| None)?.validate()?)
}

async fn run_on(
    cluster: &LocalCluster,
    redis: &LocalRedis,
    options: DemoOptions,
    interrupt: &mut Shutdown,
    started: Instant,
) -> Result<ExitCode, Error> {
    let cfg = demo_config(&cluster.url("postgres"), &redis.url())?;
    let db = client::connect(&cfg.source.url, "demo", SessionLimits::ADMIN).await?;
    db.batch_execute(include_str!("../../sql/demo/seed_billing.sql"))
        .await
        .map_err(Error::sql("creating the seed billing schema"))?;
    db.batch_execute(include_str!("../../sql/demo/seed_billing_data.sql"))
        .await
        .map_err(Error::sql("loading the sample data"))?;
    db.batch_execute(include_str!("../../sql/billing_new.sql"))
        .await
        .map_err(Error::sql("creating the example shadow schema"))?;
    db.batch_execute(include_str!("../../sql/demo/billing_new_ids.sql"))
        .await
        .map_err(Error::sql("giving the shadow tables their own ids"))?;
    eprintln!(
        "  created the seed billing tables (public.*) with sample data (100 organizations, \
         200,000 usage events, 300 invoices) and the empty shadow schema (billing_new.*)"
    );
    setup::run(&cfg).await?;
    eprintln!(
        "  setup: mapping checked against billing_new, publication, slot and state schema created"
    );
    if interrupt.is_triggered() {
        eprintln!("  interrupted: cleaning up");
        return Ok(ExitCode::Interrupted);
    }

    // Subscribed before the controller starts: no decision is missed.
    let feed = Feed::subscribe(&cfg).await?;
    let walk_db = client::connect(&cfg.source.url, "demo-walk", SessionLimits::ADMIN).await?;
    let writer = client::connect(&cfg.source.url, "demo-workload", SessionLimits::ADMIN).await?;
    let (settings_tx, settings) = watch::channel(Arc::new(cfg.reloadable()));
    let board = Arc::new(Board::new(Arc::default()));
    let backfill = Arc::new(BackfillBoard::default());
    let (stop_run_tx, stop_run) = shutdown::channel();
    let run_task = {
        let (cfg, board) = (cfg.clone(), Arc::clone(&board));
        let options = RunOptions { board: Arc::clone(&backfill), ..RunOptions::default() };
        spawn_named("demo-run", async move {
            controller::leader::run(&cfg, settings, board, options, stop_run).await
        })
    };
    eprintln!(
        "  walshift run: backfilling the existing rows, streaming new changes, verifying; its \
         controller publishes each decision to Redis ({}traffic)",
        cfg.redis.key_prefix
    );
    eprintln!(
        "  running a write workload until the walk-through is complete (at least {:?} before \
         reads move):",
        options.duration
    );
    let tally = Arc::new(Tally::default());
    let stop_workload = Arc::new(AtomicBool::new(false));
    let workload = spawn_named(
        "demo-workload",
        workload::run(writer, Arc::clone(&tally), feed.newest(), Arc::clone(&stop_workload)),
    );
    let parts = Parts {
        cfg: cfg.clone(),
        db: walk_db,
        feed,
        controller: board,
        backfill: Arc::clone(&backfill),
        settings: settings_tx,
        interrupt: interrupt.clone(),
        run: run_task,
        workload: Arc::clone(&tally),
    };
    let mut walk = Walk::new(parts, Console::new(started));
    let walked = cutover::walk_through(&mut walk, options.duration).await;

    stop_workload.store(true, Ordering::Relaxed);
    let worked = workload.await;
    let interrupted = matches!(walked, Err(Halt::Interrupted));
    let lag = workload::slot_lag(&db, &cfg.source.slot).await;
    let decisions = walk.decisions();
    let newest = walk.last().map(|d| (d.version, d.read.new, d.write.clone()));
    let (run_task, mut console) = walk.finish().await;
    stop_run_tx.trigger();
    let ran = match run_task {
        Some(task) => task.await,
        None => Ok(Ok(RunSummary::default())),
    };
    // A write of the workload failed (other than the fence's rejection).
    let workload_failed = match worked {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(Error::Failed(format!(
            "demo check failed: a write of the workload failed: {}",
            client::server_message(&error)
        ))),
        Err(join) => Some(Error::task_failed("demo workload", join)),
    };
    if let (Some(error), Err(_)) = (&workload_failed, &walked) {
        // The walk-through's own error comes first; this may explain it.
        eprintln!("  the workload had stopped: {error}");
    }
    let story = match walked {
        Ok(story) => Some(story),
        Err(Halt::Interrupted) => None,
        Err(Halt::Failed(error)) => return Err(error),
        Err(Halt::RunEnded(ended)) => {
            return Err(match ended {
                // Its own error says why (and keeps its exit code).
                Ok(Err(error)) => error,
                Ok(Ok(_)) => Error::Internal("walshift run stopped during the demo".into()),
                Err(join) => Error::task_failed("demo run", join),
            });
        }
    };
    let summary = match ran {
        Ok(Ok(summary)) => summary,
        Ok(Err(error)) => return Err(error),
        Err(join) => return Err(Error::task_failed("demo run", join)),
    };
    if let Some(error) = workload_failed.filter(|_| !interrupted) {
        return Err(error);
    }
    // The workload and `run` stopped, the old tables are fenced: nothing is
    // in flight. Every write the workload had acknowledged is in
    // billing_new, and billing_new equals transform(source) but for the
    // keys written on new since the cutover.
    let checked = match &story {
        Some(_) => {
            let checks = async {
                let acks = workload::check_acks(&db, &tally).await?;
                console.event(&acks.to_string());
                workload::differences(&db, &tally).await
            };
            Some(checks.await)
        }
        None => None,
    };

    eprintln!();
    eprintln!("summary:");
    let tables = backfill.tables();
    let copied: u64 = tables.iter().map(|t| t.rows_copied).sum();
    eprintln!(
        "  rows copied by the backfill: {} ({} tables complete)",
        group(copied),
        tables.iter().filter(|t| t.complete).count()
    );
    let (on_old, on_new) = tally.writes();
    eprintln!(
        "  row changes written by the workload: {} ({} on the old tables, {} on billing_new after \
         the write cutover)",
        group(tally.written()),
        group(on_old),
        group(on_new)
    );
    eprintln!(
        "  rows streamed by walshift: {} row changes in {} source transactions, {} target commits",
        group(summary.applied.changes),
        group(summary.applied.transactions),
        group(summary.applied.commits)
    );
    match newest {
        Some((version, read_new, write)) => eprintln!(
            "  controller decisions published: {decisions} (newest version {version}); reads on \
             new at the end: {read_new} %, writes: {write}"
        ),
        None => eprintln!("  controller decisions published: none"),
    }
    if let Some(story) = &story {
        eprintln!(
            "  fault to rollback: {:.1} s ({})",
            story.rollback_after.as_secs_f64(),
            story.rollback_reason
        );
        eprintln!(
            "  write cutover: writes paused {:.1} ms (lock on the old tables to write \"new\" \
             published); the workload held its writes {:.1} ms",
            story.pause.as_secs_f64() * 1000.0,
            story.held.as_secs_f64() * 1000.0
        );
    }
    // After the cutover the source's WAL grows with the writes to
    // billing_new (same database), which are not published: the slot stays
    // at the last change walshift applied.
    let after_cutover = if story.is_some() {
        " (WAL written since the cutover: the writes to billing_new are not streamed)"
    } else {
        ""
    };
    eprintln!(
        "  replication lag at the end: {}{after_cutover}",
        lag.map_or_else(|| "unknown".to_owned(), |l| format!("{} bytes", group(l.max(0) as u64)))
    );
    eprintln!("  elapsed: {:.1} s", started.elapsed().as_secs_f64());
    if interrupted {
        eprintln!("  interrupted: cleaning up");
        return Ok(ExitCode::Interrupted);
    }
    let Some(tables) = checked else {
        return Err(Error::Internal("the demo's checks did not run".into()));
    };
    let tables = tables?;
    if tables.iter().any(|t| t.differing != 0) {
        return Err(Error::Failed(format!(
            "demo check failed: billing_new differs from transform(source) outside the keys \
             written on new after the cutover: {tables:?}"
        )));
    }
    for t in &tables {
        let since = match t.left_out {
            0 => String::new(),
            n => format!(" but for the {} keys written on new after the cutover", group(n as u64)),
        };
        eprintln!(
            "  billing_new.{}: {} rows, equal to transform(public.{}) row for row{since}",
            t.table,
            group(t.rows.max(0) as u64),
            t.table
        );
    }
    Ok(ExitCode::Success)
}
