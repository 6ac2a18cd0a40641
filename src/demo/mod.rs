//! `walshift demo`: the whole pipeline on a throwaway cluster, no set-up.
//!
//! 1. start a local PostgreSQL cluster (temp dir, free port, `wal_level=logical`);
//! 2. create the seed billing tables (`sql/demo/seed_billing.sql`) with
//!    their sample data (`sql/demo/seed_billing_data.sql`: these rows exist
//!    before the slot, so only the backfill can bring them) and the example
//!    shadow schema (`sql/billing_new.sql`);
//! 3. `setup`: the mapping is compiled against `billing_new`; publication,
//!    slot, state schema;
//! 4. `run` (in-process): backfill and stream into `billing_new`, while a
//!    write workload (inserts, updates, deletes across the key range) runs,
//!    with a live progress line (backfill percent and rate, lag);
//! 5. once the backfill is complete and the workload has run its time, stop
//!    the workload, wait until every shadow table equals
//!    `transform(source)` row for row (compared by query), stop `run`,
//!    print a summary;
//! 6. remove the cluster — also on Ctrl-C.
//!
//! The cutover controller extends this demo.

pub mod cluster;

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

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::backfill::BackfillBoard;
use crate::commands::backfill::group;
use crate::commands::run::RunOptions;
use crate::commands::{run, setup};
use crate::config::Config;
use crate::error::{Error, ExitCode};
use crate::pg::client::{self, SessionLimits};
use crate::runtime::shutdown::{self, Shutdown};
use crate::runtime::tasks::spawn_named;
use cluster::LocalCluster;

/// Options of the demo.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// How long the write workload runs.
    pub duration: Duration,
}

/// Runs the demo; returns the exit code (130 when interrupted).
pub async fn run(options: DemoOptions, mut interrupt: Shutdown) -> Result<ExitCode, Error> {
    let started = Instant::now();
    eprintln!("walshift demo: starting a throwaway PostgreSQL cluster ...");
    // Missing binaries (or `postgres` user) exit 2; a failed start exits 1.
    let cluster = LocalCluster::start()?;
    eprintln!("  cluster on 127.0.0.1:{} in {}", cluster.port(), cluster.dir().display());
    let result = run_on(&cluster, options, &mut interrupt, started).await;
    cluster.stop();
    eprintln!("  cluster stopped and removed");
    result
}

async fn run_on(
    cluster: &LocalCluster,
    options: DemoOptions,
    interrupt: &mut Shutdown,
    started: Instant,
) -> Result<ExitCode, Error> {
    let url = cluster.url("postgres");
    let toml = format!(
        "[migration]\nname = \"demo\"\n\n[source]\nurl = \"{url}\"\nstatus_interval_ms = 500\n\n{DEMO_TABLES}"
    );
    let cfg =
        Config::from_toml_str(&toml, std::path::Path::new("<demo>"), &|_| None)?.validate()?;
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
    eprintln!(
        "  created the seed billing tables (public.*) with sample data (100 organizations, \
         200,000 usage events, 300 invoices) and the empty shadow schema (billing_new.*)"
    );
    setup::run(&cfg).await?;
    eprintln!(
        "  setup: mapping checked against billing_new, publication, slot and state schema created"
    );

    let (stop_apply_tx, stop_apply) = shutdown::channel();
    let run_cfg = cfg.clone();
    let board = Arc::new(BackfillBoard::default());
    let run_options = RunOptions { board: Arc::clone(&board), ..RunOptions::default() };
    let mut apply_task =
        spawn_named(
            "demo-run",
            async move { run::run_with(&run_cfg, stop_apply, run_options).await },
        );
    eprintln!("  walshift run: backfilling the existing rows and streaming new changes");
    eprintln!(
        "  running a write workload for at least {:?} (until the backfill is complete):",
        options.duration
    );
    let writer = client::connect(&cfg.source.url, "demo-workload", SessionLimits::ADMIN).await?;
    let written = Arc::new(AtomicU64::new(0));
    let stop_workload = Arc::new(AtomicBool::new(false));
    let workload = spawn_named(
        "demo-workload",
        workload(writer, Arc::clone(&written), Arc::clone(&stop_workload)),
    );
    let deadline = tokio::time::Instant::now() + options.duration;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut interrupted = false;
    // `run`'s outcome when it ended by itself before the demo stopped it.
    let mut apply_ended = None;
    let mut backfilled = board.subscribe_done();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline), if *backfilled.borrow() => break,
            _ = backfilled.changed(), if !*backfilled.borrow() => {}
            _ = interrupt.wait() => { interrupted = true; break }
            ended = &mut apply_task => { apply_ended = Some(ended); break }
            _ = tick.tick() => progress(&db, &cfg.source.slot, &written, &board).await,
        }
    }
    stop_workload.store(true, Ordering::Relaxed);
    if let Ok(Err(error)) = workload.await {
        tracing::warn!(error = %error, "demo workload stopped");
    }

    // Wait until every shadow table equals transform(source).
    let mut converged = None;
    if !interrupted && apply_ended.is_none() {
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < until {
            let diffs = differences(&db).await?;
            if diffs.iter().all(|d| d.1 == 0) {
                converged = Some(diffs);
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = interrupt.wait() => { interrupted = true; break }
            }
        }
        progress(&db, &cfg.source.slot, &written, &board).await;
    }
    let lag = slot_lag(&db, &cfg.source.slot).await;
    stop_apply_tx.trigger();
    let summary = match apply_ended {
        // Its own error says why (and keeps its exit code).
        Some(Ok(Err(error))) => return Err(error),
        Some(Ok(Ok(_))) => {
            return Err(Error::Internal("walshift run stopped during the demo".into()));
        }
        Some(Err(join)) => return Err(Error::task_failed("demo run", join)),
        None => match apply_task.await {
            Ok(Ok(summary)) => summary,
            Ok(Err(error)) => return Err(error),
            Err(join) => return Err(Error::task_failed("demo run", join)),
        },
    };
    eprintln!();
    eprintln!("summary:");
    let tables = board.tables();
    let copied: u64 = tables.iter().map(|t| t.rows_copied).sum();
    eprintln!(
        "  rows copied by the backfill: {} ({} tables complete)",
        group(copied),
        tables.iter().filter(|t| t.complete).count()
    );
    eprintln!("  row changes written by the workload: {}", group(written.load(Ordering::Relaxed)));
    eprintln!(
        "  rows streamed by walshift: {} row changes in {} source transactions, {} target commits",
        group(summary.applied.changes),
        group(summary.applied.transactions),
        group(summary.applied.commits)
    );
    eprintln!(
        "  replication lag at the end: {}",
        lag.map_or_else(|| "unknown".to_owned(), |l| format!("{} bytes", group(l.max(0) as u64)))
    );
    eprintln!("  elapsed: {:.1} s", started.elapsed().as_secs_f64());
    if interrupted {
        eprintln!("  interrupted: cleaning up");
        return Ok(ExitCode::Interrupted);
    }
    let Some(tables) = converged else {
        let diffs = differences(&db).await?;
        return Err(Error::Internal(format!(
            "demo check failed: the shadow tables did not converge to transform(source) within 60 s: {diffs:?}"
        )));
    };
    for (table, _, rows) in &tables {
        eprintln!(
            "  billing_new.{table}: {rows} rows, equal to transform(public.{table}) row for row"
        );
    }
    Ok(ExitCode::Success)
}

/// `transform(source)` and the shadow table, verified columns only, per table.
const COMPARE: &[(&str, &str, &str)] = &[
    (
        "organizations",
        "select id, name, lower(email), plan_code, created_at from public.organizations",
        "select id, name, billing_email, plan, created_at from billing_new.organizations",
    ),
    (
        "usage_events",
        "select id, org_id, event_type, quantity::numeric(20,6), (amount_cents / 100.0)::numeric(14,2), \
         occurred_at, 'migrated'::text from public.usage_events",
        "select id, organization_id, event_type, quantity, amount, occurred_at, processing_status \
         from billing_new.usage_events",
    ),
    (
        "invoices",
        "select id, org_id, (total_cents / 100.0)::numeric(14,2), upper(currency)::char(3), issued_at, status \
         from public.invoices",
        "select id, organization_id, total, currency, issued_at, status from billing_new.invoices",
    ),
];

/// Per table: (name, rows that differ in either direction, rows in the source).
async fn differences(db: &Client) -> Result<Vec<(&'static str, i64, i64)>, Error> {
    let mut out = Vec::new();
    for (table, source, target) in COMPARE {
        let sql = format!(
            "select (select count(*) from (({source}) except all ({target})) a) \
                  + (select count(*) from (({target}) except all ({source})) b), \
                    (select count(*) from ({source}) c)"
        );
        let row =
            db.query_one(&sql, &[]).await.map_err(Error::sql("comparing the shadow tables"))?;
        let diff: i64 = row.try_get(0).map_err(Error::sql("comparing the shadow tables"))?;
        let rows: i64 = row.try_get(1).map_err(Error::sql("comparing the shadow tables"))?;
        out.push((*table, diff, rows));
    }
    Ok(out)
}

/// Bytes of WAL between the source's insert position and what the slot
/// confirmed.
async fn slot_lag(db: &Client, slot: &str) -> Option<i64> {
    db.query_opt(
        "select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn)::bigint \
         from pg_replication_slots where slot_name = $1",
        &[&slot],
    )
    .await
    .ok()
    .flatten()
    .and_then(|r| r.try_get(0).ok())
}

async fn progress(db: &Client, slot: &str, written: &AtomicU64, board: &BackfillBoard) {
    let lag = slot_lag(db, slot).await;
    let tables = board.tables();
    let backfill = match tables.iter().find(|t| !t.complete) {
        Some(t) => format!(
            "backfill {} {:.0}% {}/{} rows {} rows/s",
            t.target,
            t.percent(),
            group(t.rows_copied),
            group(t.rows_estimated),
            group(t.rows_per_second.round() as u64)
        ),
        None if tables.is_empty() => "backfill starting".to_owned(),
        None => format!(
            "backfill complete ({} rows)",
            group(tables.iter().map(|t| t.rows_copied).sum())
        ),
    };
    let line = format!(
        "  {backfill} | workload {} changes | lag {} kB",
        group(written.load(Ordering::Relaxed)),
        lag.map_or_else(|| "?".to_owned(), |l| (l / 1024).to_string())
    );
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{line}");
    } else {
        eprintln!("{line}");
    }
    let _ = std::io::stderr().flush();
}

/// A billing-like write mix; counts the rows it changed in published tables.
async fn workload(
    client: Client,
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<(), tokio_postgres::Error> {
    let insert_event = client
        .prepare(
            "insert into usage_events (org_id, event_type, quantity, amount_cents, payload) \
             values ($1, 'api_call', $2::int8::numeric / 7, $2, jsonb_build_object('n', $2))",
        )
        .await?;
    let update_event = client
        .prepare("update usage_events set amount_cents = amount_cents + 1 where id = (select max(id) - $1 from usage_events)")
        .await?;
    let touch_event = client
        .prepare("update usage_events set amount_cents = amount_cents + 1 where id = $1")
        .await?;
    let delete_event = client
        .prepare("delete from usage_events where id = (select min(id) from usage_events)")
        .await?;
    let rename_org =
        client.prepare("update organizations set plan_code = 'enterprise' where id = $1").await?;
    let mut i: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let org = 1 + i % 100;
        let mut changed = client.execute(&insert_event, &[&org, &i]).await?;
        if i % 3 == 0 {
            changed += client.execute(&update_event, &[&(i % 50)]).await?;
        }
        // Rows anywhere in the key range, copied already or not yet.
        changed += client.execute(&touch_event, &[&(1 + i * 7919 % 200_000)]).await?;
        if i % 10 == 0 {
            changed += client.execute(&delete_event, &[]).await?;
        }
        if i % 25 == 0 {
            changed += client.execute(&rename_org, &[&org]).await?;
        }
        written.fetch_add(changed, Ordering::Relaxed);
        if i % 50 == 0 {
            // Leave the single core some room for the stream.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}
