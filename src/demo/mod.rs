//! `walshift demo`: the whole pipeline on a throwaway cluster, no set-up.
//!
//! 1. start a local PostgreSQL cluster (temp dir, free port, `wal_level=logical`);
//! 2. load the seed billing schema (`sql/demo/seed_billing.sql`) with sample data;
//! 3. `setup`: publication, slot, state schema;
//! 4. run a write workload (inserts, updates, deletes over the three tables)
//!    while `tail` streams the changes, showing the first few and a progress line;
//! 5. stop the workload, wait until the stream has confirmed everything written,
//!    and check that every row change written was streamed exactly once;
//! 6. remove the cluster — also on Ctrl-C.
//!
//! Later stages (apply, backfill, cutover) extend this demo.

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

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::cli::TailArgs;
use crate::commands::{setup, tail};
use crate::config::Config;
use crate::error::{Error, ExitCode};
use crate::pg::client::{self, SessionLimits};
use crate::runtime::shutdown::{self, Shutdown};
use crate::runtime::tasks::spawn_named;
use cluster::LocalCluster;

/// Lines of the stream shown in full before switching to a counter.
const SHOWN_LINES: u64 = 5;

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
    let cluster = LocalCluster::start().map_err(|e| Error::Precondition(e.to_string()))?;
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
        .map_err(Error::sql("loading the seed billing schema"))?;
    db.batch_execute(include_str!("../../sql/billing_new.sql"))
        .await
        .map_err(Error::sql("creating the example shadow schema"))?;
    eprintln!(
        "  loaded the seed billing schema: 100 organizations, 10000 usage events, 300 invoices"
    );
    setup::run(&cfg).await?;
    eprintln!("  setup: publication, replication slot and state schema created");

    // The stream, printing into a sink that shows a few lines and counts the rest.
    let streamed = Arc::new(AtomicU64::new(0));
    let (stop_tail_tx, stop_tail) = shutdown::channel();
    let tail_args = TailArgs { all: false, no_ack: false, endpos: None, start_lsn: None };
    let sink_count = Arc::clone(&streamed);
    let tail_cfg = cfg.clone();
    let tail_task = spawn_named("demo-tail", async move {
        let mut sink = DemoSink { lines: sink_count };
        tail::run(&tail_cfg, &tail_args, stop_tail, &mut sink).await
    });

    // The workload.
    eprintln!(
        "  running a write workload for {:?} while tail streams the changes:",
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
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = interrupt.wait() => { interrupted = true; break }
            _ = tick.tick() => progress(&written, &streamed),
        }
    }
    stop_workload.store(true, Ordering::Relaxed);
    let workload_result = workload.await;
    if let Ok(Err(error)) = &workload_result {
        tracing::warn!(error = %error, "demo workload stopped");
    }

    // Wait until the slot has confirmed everything written.
    let end: String = db
        .query_one("select pg_current_wal_insert_lsn()::text", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(Error::sql("reading the WAL position"))?;
    let caught_up_by = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut caught_up = false;
    while !interrupted && tokio::time::Instant::now() < caught_up_by {
        let row = db
            .query_one(
                "select confirmed_flush_lsn >= $1::text::pg_lsn from pg_replication_slots where slot_name = $2",
                &[&end, &cfg.source.slot],
            )
            .await
            .map_err(Error::sql("reading the slot position"))?;
        if row.try_get::<_, bool>(0).unwrap_or(false) {
            caught_up = true;
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = interrupt.wait() => interrupted = true,
        }
    }
    stop_tail_tx.trigger();
    let tail_outcome = tail_task.await;
    progress(&written, &streamed);
    eprintln!();
    let summary = match tail_outcome {
        Ok(Ok((_, summary))) => summary,
        Ok(Err(error)) => return Err(error),
        Err(join) => return Err(Error::Precondition(format!("demo tail task failed: {join}"))),
    };
    let written = written.load(Ordering::Relaxed);
    eprintln!("summary:");
    eprintln!("  row changes written by the workload: {written}");
    eprintln!(
        "  row changes streamed by walshift:    {} in {} transactions",
        summary.rows, summary.transactions
    );
    eprintln!("  elapsed: {:.1} s", started.elapsed().as_secs_f64());
    if interrupted {
        eprintln!("  interrupted: cleaning up");
        return Ok(ExitCode::Interrupted);
    }
    if !caught_up || summary.rows != written {
        return Err(Error::Precondition(format!(
            "demo check failed: wrote {written} row changes but streamed {} (caught up: {caught_up})",
            summary.rows
        )));
    }
    eprintln!("  every change written was streamed exactly once");
    Ok(ExitCode::Success)
}

fn progress(written: &AtomicU64, streamed: &AtomicU64) {
    eprint!(
        "\r  written {:>7} row changes, streamed {:>7}",
        written.load(Ordering::Relaxed),
        streamed.load(Ordering::Relaxed)
    );
    let _ = std::io::stderr().flush();
}

/// Shows the first lines of the stream, then only counts.
struct DemoSink {
    lines: Arc<AtomicU64>,
}

impl Write for DemoSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let n = self.lines.fetch_add(1, Ordering::Relaxed);
            if n < SHOWN_LINES {
                let mut stdout = std::io::stdout();
                stdout.write_all(b"\r")?;
                stdout.write_all(line)?;
                stdout.write_all(b"\n")?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
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
