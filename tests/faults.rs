//! The fault matrix: each fault injected while a write workload runs, in
//! each phase where it applies (backfill, streaming with periodic
//! verification, shifting reads, the write cutover), against real servers
//! (two private Postgres clusters, a private redis-server, TCP proxies) and
//! the real binary. walshift must recover by itself; at the end the target
//! equals transform(source) row for row, and while the fault lasted no
//! published weight moved toward `new`.
//!
//! Every injection prints one line
//! `fault-matrix | <fault> | <phase> | <outcome> | <seconds to recover>`;
//! with `WALSHIFT_FAULT_MATRIX=<file>` the lines are also appended to that
//! file, from which `scripts/reliability_matrix.sh` writes the table in
//! docs/reliability.md.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::backfill::WAIT;
use crate::support::cli::{RunProcess, Walshift};
use crate::support::pg::{ClusterOptions, PgCluster, TestDb};
use crate::support::proxy::Proxy;
use crate::support::redis::{RedisServer, Subscriber, key_prefix};
use crate::support::shadow::assert_converges;
use crate::support::wait::wait_until;
use walshift::runtime::tasks::spawn_named;

/// The hook variable (`walshift::cutover::TEST_HOLD_ENV`).
const HOLD_ENV: &str = "WALSHIFT_TEST_HOLD_CUTOVER";
/// Rows present before `run` starts (the backfill's work).
const INITIAL_ROWS: i64 = 6000;
/// `[source|target] receive_timeout_ms` in these tests.
const RECEIVE_TIMEOUT_MS: u64 = 2000;
/// How long recovery may take before the test fails.
const RECOVER_WITHIN: Duration = Duration::from_secs(60);

/// A fault the matrix injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    SourceRestartFast,
    SourceRestartImmediate,
    TargetRestartFast,
    TargetRestartImmediate,
    WalsenderKilled,
    TargetConnectionsKilled,
    SourceNetworkStalled,
    TargetNetworkStalled,
    RedisRestarted,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::SourceRestartFast => "source restarted (pg_ctl restart -m fast)",
            Fault::SourceRestartImmediate => "source restarted (pg_ctl restart -m immediate)",
            Fault::TargetRestartFast => "target restarted (pg_ctl restart -m fast)",
            Fault::TargetRestartImmediate => "target restarted (pg_ctl restart -m immediate)",
            Fault::WalsenderKilled => "walsender killed (pg_terminate_backend)",
            Fault::TargetConnectionsKilled => "target connections killed (pg_terminate_backend)",
            Fault::SourceNetworkStalled => "source network stalled (half-open TCP)",
            Fault::TargetNetworkStalled => "target network stalled (half-open TCP)",
            Fault::RedisRestarted => "Redis restarted",
        }
    }
}

/// Prints (and appends to `$WALSHIFT_FAULT_MATRIX`) one matrix line.
pub(crate) fn report(fault: &str, phase: &str, outcome: &str, seconds: Option<f64>) {
    let time = seconds.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"));
    let line = format!("fault-matrix | {fault} | {phase} | {outcome} | {time}");
    eprintln!("{line}");
    if let Ok(path) = std::env::var("WALSHIFT_FAULT_MATRIX") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// A write workload on the source that reconnects through every fault:
/// small transactions of inserts, updates (some with ~10 kB TOASTed text)
/// and deletes. Writes rejected by the cutover's fence are expected.
struct Workload {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Workload {
    fn start(url: String) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let (s, c) = (Arc::clone(&stop), Arc::clone(&commits));
        let task = spawn_named("fault-workload", async move {
            let mut next_id = 1_000_000i64;
            while !s.load(Ordering::SeqCst) {
                let Ok(client) = crate::support::pg::connect(&url).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                while !s.load(Ordering::SeqCst) {
                    let mut sql = String::from("begin;");
                    for _ in 0..fastrand::usize(1..4) {
                        let id = fastrand::i64(1..=INITIAL_ROWS);
                        match fastrand::u8(0..10) {
                            0..=3 => {
                                next_id += 1;
                                sql.push_str(&format!(
                                    "insert into t values ({next_id}, {id}, 'new');"
                                ));
                            }
                            4..=6 => {
                                sql.push_str(&format!("update t set v = v + 1 where id = {id};"));
                            }
                            7 => sql.push_str(&format!(
                                "update t set pad = (select string_agg(md5(random()::text), '') \
                                 from generate_series(1, 300)) where id = {id};"
                            )),
                            _ => sql.push_str(&format!("delete from t where id = {id};")),
                        }
                    }
                    sql.push_str("commit;");
                    match client.batch_execute(&sql).await {
                        Ok(()) => {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.is_closed() || e.as_db_error().is_none() => break,
                        Err(_) => {
                            // Fenced (25006), a restart in progress: roll back, go on.
                            let _ = client.batch_execute("rollback").await;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(8)).await;
                }
            }
        });
        Workload { stop, commits, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        self.commits.load(Ordering::SeqCst)
    }
}

/// Everything one fault scenario runs against.
struct World<'c> {
    source: &'c PgCluster,
    target: &'c PgCluster,
    sdb: TestDb<'c>,
    tdb: TestDb<'c>,
    redis: RedisServer,
    source_proxy: Proxy,
    target_proxy: Proxy,
    markers: i64,
}

impl World<'_> {
    /// Injects `fault` and returns when it has been done (a restart has
    /// finished, a proxy stalled, backends terminated).
    async fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::SourceRestartFast => {
                tokio::task::block_in_place(|| self.source.restart_with("fast"));
            }
            Fault::SourceRestartImmediate => {
                tokio::task::block_in_place(|| self.source.restart_with("immediate"));
            }
            Fault::TargetRestartFast => {
                tokio::task::block_in_place(|| self.target.restart_with("fast"));
            }
            Fault::TargetRestartImmediate => {
                tokio::task::block_in_place(|| self.target.restart_with("immediate"));
            }
            Fault::WalsenderKilled => {
                let c = self.source.admin_client().await;
                let killed = wait_until("an active walsender to kill", WAIT, async || {
                    let n: i64 = c
                        .query_one(
                            "select count(pg_terminate_backend(active_pid)) \
                             from pg_replication_slots where slot_name = $1 and active_pid is not null",
                            &[&self.sdb.slot_name()],
                        )
                        .await
                        .ok()?
                        .get(0);
                    (n > 0).then_some(n)
                })
                .await;
                assert_eq!(killed, 1);
            }
            Fault::TargetConnectionsKilled => {
                let c = self.target.admin_client().await;
                let n: i64 = c
                    .query_one(
                        "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                         where datname = $1 and application_name like 'walshift:%'",
                        &[&self.tdb.name()],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert!(n > 0, "no walshift session on the target to kill");
            }
            Fault::SourceNetworkStalled => self.source_proxy.stall_existing(),
            Fault::TargetNetworkStalled => self.target_proxy.stall_existing(),
            Fault::RedisRestarted => tokio::task::block_in_place(|| self.redis.restart()),
        }
    }

    /// Writes a marker row on the source (retrying while it restarts) and
    /// waits until it is in the target: the pipeline works again.
    async fn wait_recovered(&mut self, what: &str) {
        self.markers += 1;
        let id = -self.markers;
        let (surl, turl) = (self.sdb.url(), self.tdb.url());
        wait_until(&format!("{what}: the marker row to be written"), RECOVER_WITHIN, async || {
            let c = crate::support::pg::connect(&surl).await.ok()?;
            c.execute("insert into t values ($1, 0, 'marker')", &[&id]).await.ok().map(|_| ())
        })
        .await;
        wait_until(&format!("{what}: the marker row to arrive"), RECOVER_WITHIN, async || {
            let c = crate::support::pg::connect(&turl).await.ok()?;
            c.query_opt("select 1 from shadow.t where id = $1", &[&id]).await.ok()?.map(|_| ())
        })
        .await;
    }
}

/// Prints the run's log when the test fails while it is alive.
struct LogOnPanic<'r>(&'r RunProcess);

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- walshift run log ---\n{}", self.0.stderr());
        }
    }
}

fn read_new(d: &serde_json::Value) -> i64 {
    d["read"]["new"].as_i64().unwrap_or(-1)
}

/// Decisions published after `from` must not raise the read weight above
/// what was published before it.
fn assert_no_move_toward_new(
    decisions: &[(Instant, serde_json::Value)],
    from: Instant,
    until: Instant,
    what: &str,
    log: &dyn Fn() -> String,
) {
    let before = decisions.iter().filter(|(t, _)| *t < from).map(|(_, d)| read_new(d)).max();
    let Some(before) = before else { return };
    for (t, d) in decisions {
        if *t >= from && *t <= until {
            assert!(
                read_new(d) <= before,
                "{what}: read weight moved toward new ({before} → {}) while the fault lasted \
                 ({:?} after the fault, {:?} before recovery): {d}\n{}",
                read_new(d),
                t.duration_since(from),
                until.duration_since(*t),
                log()
            );
        }
    }
}

async fn backfill_in_progress(target: &Client) -> bool {
    target
        .query_one(
            "select coalesce(bool_and(completed_at is null) and sum(rows_copied) > 0, false) \
             from walshift.backfill",
            &[],
        )
        .await
        .is_ok_and(|r| r.get(0))
}

async fn backfill_done(target: &Client) -> bool {
    target
        .query_one(
            "select coalesce(bool_and(completed_at is not null), false) from walshift.backfill",
            &[],
        )
        .await
        .is_ok_and(|r| r.get(0))
}

/// One scenario: `fault` in the backfill, streaming, shifting and cutover
/// phases of one migration, then the row-by-row comparison.
async fn scenario(fault: Fault) {
    let source = PgCluster::start(ClusterOptions::default());
    let target = PgCluster::start(ClusterOptions::default());
    let sdb = TestDb::new(&source).await;
    let tdb = TestDb::new(&target).await;
    sdb.execute(&format!(
        "create table t (id bigint primary key, v bigint not null, pad text);
         insert into t select g, g, 'p' || g from generate_series(1, {INITIAL_ROWS}) g;"
    ))
    .await;
    tdb.execute("create schema shadow; create table shadow.t (id bigint primary key, v bigint not null, pad text);")
        .await;
    let redis = RedisServer::start();
    let source_proxy = Proxy::start(source.host_port());
    let target_proxy = Proxy::start(target.host_port());
    let mut world = World {
        source: &source,
        target: &target,
        sdb,
        tdb,
        redis,
        source_proxy,
        target_proxy,
        markers: 0,
    };
    let via = |url: String, cluster: &PgCluster, proxy: &Proxy| {
        url.replace(cluster.host_port(), &proxy.addr())
    };
    let source_url = via(world.sdb.url(), &source, &world.source_proxy);
    let target_url = via(world.tdb.url(), &target, &world.target_proxy);
    let prefix = key_prefix();
    let channel = format!("{prefix}traffic");
    let toml = format!(
        "[migration]\nname = \"test\"\n\n[source]\nurl = \"{source_url}\"\nslot = \"{}\"\n\
         publication = \"{}\"\nstatus_interval_ms = 100\nreconnect_max_backoff_ms = 1000\n\
         connect_timeout_ms = 2000\nreceive_timeout_ms = {RECEIVE_TIMEOUT_MS}\nheartbeat_interval_ms = 200\n\n\
         [target]\nurl = \"{target_url}\"\nconnect_timeout_ms = 2000\nreceive_timeout_ms = {RECEIVE_TIMEOUT_MS}\n\n\
         [[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n\n\
         [backfill]\nchunk_rows_min = 100\nchunk_rows_max = 200\nmax_rows_per_second = 1500\n\n\
         [verify]\ninterval_seconds = 1\nfull_pass_interval_seconds = 2\n\n\
         [redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n\n\
         [traffic]\nread_new_percent = 0\nstages = [25, 50, 100]\n\n\
         [cutover]\nevaluate_interval_ms = 250\nfailure_threshold = 3\nlease_ttl_ms = 3000\n\
         min_soak_seconds = 1\nsequence_margin = 100\n",
        world.sdb.slot_name(),
        world.sdb.publication_name(),
        world.redis.url(),
    );
    let ws = Walshift::with_config(&toml);
    ws.run_ok(&["setup"]).await;
    // One subscriber per Redis server life: a restart ends a subscription.
    let mut subs: Vec<Subscriber> = vec![world.redis.subscribe(&channel)];
    let decisions = |subs: &[Subscriber]| {
        let mut all: Vec<(Instant, serde_json::Value)> =
            subs.iter().flat_map(Subscriber::decisions).collect();
        all.sort_by_key(|(t, _)| *t);
        all
    };
    let hold = std::env::temp_dir().join(format!(
        "walshift-fault-hold-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&hold, b"hold").unwrap();
    let run = ws.spawn_with_env(&["run"], &[(HOLD_ENV, &format!("drain:{}", hold.display()))]);
    let log_guard = LogOnPanic(&run);
    let workload = Workload::start(world.sdb.url());
    let target_client = crate::support::pg::connect(&world.tdb.url()).await.unwrap();
    let name = fault.name();

    // Backfill.
    if fault != Fault::RedisRestarted {
        wait_until("the backfill to be under way", WAIT, async || {
            backfill_in_progress(&target_client).await.then_some(())
        })
        .await;
        let at = Instant::now();
        world.inject(fault).await;
        world.wait_recovered("backfill").await;
        report(name, "backfill", "recovered", Some(at.elapsed().as_secs_f64()));
    }

    // Streaming, with periodic verification passes every second.
    wait_until("the backfill to finish", Duration::from_secs(120), async || {
        let c = crate::support::pg::connect(&world.tdb.url()).await.ok()?;
        backfill_done(&c).await.then_some(())
    })
    .await;
    let at = Instant::now();
    world.inject(fault).await;
    if fault == Fault::RedisRestarted {
        subs.push(world.redis.subscribe(&channel));
    }
    world.wait_recovered("streaming").await;
    report(name, "streaming + verification", "recovered", Some(at.elapsed().as_secs_f64()));

    // Shifting reads: nothing moves toward new while the fault lasts.
    let text = ws.config_text().replace("read_new_percent = 0", "read_new_percent = 100");
    std::fs::write(ws.config_path(), text).unwrap();
    wait_until("the first stage", Duration::from_secs(60), async || {
        decisions(&subs).iter().any(|(_, d)| read_new(d) >= 25).then_some(())
    })
    .await;
    let at = Instant::now();
    world.inject(fault).await;
    if fault == Fault::RedisRestarted {
        subs.push(world.redis.subscribe(&channel));
    }
    let injected = Instant::now();
    world.wait_recovered("shifting").await;
    let recovered = Instant::now();
    report(name, "shifting reads", "recovered", Some(at.elapsed().as_secs_f64()));
    if fault != Fault::RedisRestarted {
        // A fault takes the lag gates' signals away; until they count as
        // stale (two heartbeats, 200 ms each, plus 1 s: 1.4 s) and one
        // evaluation (250 ms) later, the last figures still stand.
        // The marker is polled every 100 ms or so: recovery came a little
        // before the test saw it.
        assert_no_move_toward_new(
            &decisions(&subs),
            injected + Duration::from_millis(1900),
            recovered - Duration::from_millis(300),
            name,
            &|| run.stderr(),
        );
    }
    wait_until("every precondition of the cutover", Duration::from_secs(120), async || {
        let out = ws.run(&["cutover", "--dry-run"]).await;
        (out.status.code() == Some(0)).then_some(())
    })
    .await;

    // The write cutover, held before its drain step: the fence is taken
    // and the barrier written when the fault hits.
    let cutover = ws.spawn(&["cutover"]);
    wait_until("the cutover to hold before drain", WAIT, async || {
        run.stderr().contains("holding before step drain").then_some(())
    })
    .await;
    let at = Instant::now();
    world.inject(fault).await;
    if fault == Fault::RedisRestarted {
        subs.push(world.redis.subscribe(&channel));
    }
    std::fs::remove_file(&hold).unwrap();
    let (code, out) = cutover.wait(Duration::from_secs(90)).await;
    let outcome = match code {
        Some(0) => "cut over",
        Some(1) => {
            // Aborted cleanly (write "old"): after recovery, a new attempt
            // goes through.
            world.wait_recovered("cutover").await;
            let again =
                wait_until("a cutover retry to succeed", Duration::from_secs(90), async || {
                    let out = ws.run(&["cutover"]).await;
                    (out.status.code() == Some(0)).then_some(())
                });
            again.await;
            "aborted, retried: cut over"
        }
        other => panic!("walshift cutover exited {other:?}:\n{out}"),
    };
    report(name, "write cutover", outcome, Some(at.elapsed().as_secs_f64()));
    wait_until("write new published", WAIT, async || {
        decisions(&subs).iter().any(|(_, d)| d["write"] == "new").then_some(())
    })
    .await;

    // Nothing lost or duplicated.
    let commits = workload.stop().await;
    assert!(commits > 100, "the workload committed only {commits} transactions");
    let s = crate::support::pg::connect(&world.sdb.url()).await.unwrap();
    let t = crate::support::pg::connect(&world.tdb.url()).await.unwrap();
    assert_converges(&s, "select * from t", &t, "select * from shadow.t", WAIT).await;
    drop(log_guard);
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    drop(world);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_restart_fast() {
    scenario(Fault::SourceRestartFast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_restart_immediate() {
    scenario(Fault::SourceRestartImmediate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_restart_fast() {
    scenario(Fault::TargetRestartFast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_restart_immediate() {
    scenario(Fault::TargetRestartImmediate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walsender_killed() {
    scenario(Fault::WalsenderKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_connections_killed() {
    scenario(Fault::TargetConnectionsKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_network_stalled() {
    scenario(Fault::SourceNetworkStalled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_network_stalled() {
    scenario(Fault::TargetNetworkStalled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted() {
    scenario(Fault::RedisRestarted).await;
}

/// A run that was stopped with SIGTERM right after a 300,000-row
/// transaction was applied reported that position to the slot before it
/// exited: the next start does not decode the transaction again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_the_final_position_to_the_slot() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table t (id bigint primary key, v bigint not null, pad text);
         create schema shadow; create table shadow.t (id bigint primary key, v bigint not null, pad text);",
    )
    .await;
    let ws = Walshift::with_tables(
        &db,
        None,
        "heartbeat_interval_ms = 60000\n[[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n",
        "",
    );
    // No periodic status update moves the slot during the test: only the
    // stop's own report can.
    let text = ws.config_text().replace("status_interval_ms = 100", "status_interval_ms = 600000");
    std::fs::write(ws.config_path(), text).unwrap();
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let c = db.client().await;
    c.batch_execute("insert into t select g, g, 'x' from generate_series(1, 300000) g")
        .await
        .unwrap();
    let end: String =
        c.query_one("select pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    wait_until("the transaction to be applied", Duration::from_secs(120), async || {
        let n: i64 = c.query_one("select count(*) from shadow.t", &[]).await.ok()?.get(0);
        (n == 300_000).then_some(())
    })
    .await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    let behind: i64 = c
        .query_one(
            "select pg_wal_lsn_diff($2::text::pg_lsn, confirmed_flush_lsn)::int8 \
             from pg_replication_slots where slot_name = $1",
            &[&db.slot_name(), &end],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        behind <= 0,
        "the slot's confirmed_flush_lsn is {behind} bytes behind the end of the applied \
         transaction ({end}) after a clean stop:\n{log}"
    );
    let last = log.lines().rev().find(|l| l.contains("final durable position")).unwrap_or_default();
    assert!(!last.is_empty(), "the stop does not report its final position:\n{log}");
}

/// The slot dropped behind walshift's back (between two connections) or
/// invalidated by `max_slot_wal_keep_size`: a fatal error that says the
/// history is gone and to start over; never a new slot that skips changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_fatal_and_says_to_start_over() {
    let source = PgCluster::start(ClusterOptions {
        settings: vec![("max_slot_wal_keep_size".into(), "1MB".into())],
        ..ClusterOptions::default()
    });
    for how in ["dropped", "invalidated"] {
        let db = TestDb::new(&source).await;
        db.execute(
            "create table t (id bigint primary key, v text);
             insert into t select g, 'v' from generate_series(1, 100) g;
             create schema shadow; create table shadow.t (id bigint primary key, v text);",
        )
        .await;
        let ws = Walshift::with_tables(
            &db,
            None,
            "[[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n",
            "",
        );
        ws.run_ok(&["setup"]).await;
        let run = ws.spawn_run();
        let c = db.client().await;
        wait_until("the backfill", WAIT, async || {
            let n: i64 = c.query_one("select count(*) from shadow.t", &[]).await.ok()?.get(0);
            (n == 100).then_some(())
        })
        .await;
        let admin = source.admin_client().await;
        let at = Instant::now();
        let run = if how == "dropped" {
            // Kill the walsender and drop the slot before walshift reconnects.
            wait_until("the slot to be dropped", WAIT, async || {
                admin
                    .execute(
                        "select pg_terminate_backend(active_pid) from pg_replication_slots \
                         where slot_name = $1 and active_pid is not null",
                        &[&db.slot_name()],
                    )
                    .await
                    .ok()?;
                admin
                    .execute("select pg_drop_replication_slot($1)", &[&db.slot_name()])
                    .await
                    .ok()
                    .map(|_| ())
            })
            .await;
            run
        } else {
            // Stopped; meanwhile the source writes more WAL than the slot
            // may keep, and a checkpoint removes it.
            let (code, log) = run.stop().await;
            assert_eq!(code, Some(0), "{log}");
            c.batch_execute(
                "create table filler (x text);
                 insert into filler select repeat(md5(g::text), 40) from generate_series(1, 40000) g;
                 select pg_switch_wal(); checkpoint;
                 insert into filler select repeat(md5(g::text), 40) from generate_series(1, 40000) g;
                 select pg_switch_wal(); checkpoint;",
            )
            .await
            .unwrap();
            let status: String = admin
                .query_one(
                    "select wal_status from pg_replication_slots where slot_name = $1",
                    &[&db.slot_name()],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(status, "lost", "the slot was not invalidated");
            ws.spawn_run()
        };
        c.execute("insert into t values (1000, 'after')", &[]).await.unwrap();
        let (code, log) = run.wait(Duration::from_secs(60)).await;
        assert_eq!(code, Some(1), "{how}: run should stop with a failure:\n{log}");
        for needle in
            ["replication slot", "re-backfill", "walshift teardown --yes", "nothing was changed"]
        {
            assert!(log.contains(needle), "{how}: expected {needle:?} in:\n{log}");
        }
        report(
            "replication slot lost",
            how,
            "fatal: says the history is gone, start over",
            Some(at.elapsed().as_secs_f64()),
        );
        // No new slot was made behind the operator's back, and setup refuses
        // to make one for a migration in progress.
        let slots: i64 = admin
            .query_one(
                "select count(*) from pg_replication_slots where slot_name = $1 and wal_status <> 'lost'",
                &[&db.slot_name()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(slots, 0, "{how}: a usable slot appeared");
        if how == "dropped" {
            let out = ws.run(&["setup"]).await;
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(err.contains("re-backfill"), "{err}");
            let slots: i64 = admin
                .query_one(
                    "select count(*) from pg_replication_slots where slot_name = $1",
                    &[&db.slot_name()],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(slots, 0, "setup made a new slot for a migration in progress");
        }
    }
}

/// A mapped column dropped from the shadow table mid-run: the run stops
/// naming the table and column; the source transaction that hit it is not
/// half applied (its other table's row is not there either) and the applied
/// position stays before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatibly_altered_shadow_table_stops_the_run() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table a (id bigint primary key, v text);
         create table b (id bigint primary key, w text);
         create schema shadow;
         create table shadow.a (id bigint primary key, v text);
         create table shadow.b (id bigint primary key, w text);",
    )
    .await;
    let ws = Walshift::with_tables(
        &db,
        None,
        "[[tables]]\nsource = \"public.a\"\ntarget = \"shadow.a\"\n\
         [[tables]]\nsource = \"public.b\"\ntarget = \"shadow.b\"\n",
        "",
    );
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let c = db.client().await;
    c.batch_execute("insert into a values (1, 'one'); insert into b values (1, 'one')")
        .await
        .unwrap();
    wait_until("the first rows", WAIT, async || {
        c.query_opt("select 1 from shadow.b where id = 1", &[]).await.ok()?.map(|_| ())
    })
    .await;
    c.batch_execute("alter table shadow.b drop column w").await.unwrap();
    c.batch_execute(
        "begin; insert into a values (2, 'two'); insert into b values (2, 'two'); commit;",
    )
    .await
    .unwrap();
    let (code, log) = run.wait(Duration::from_secs(60)).await;
    assert_eq!(code, Some(1), "{log}");
    for needle in ["shadow.b", "\"w\""] {
        assert!(log.contains(needle), "expected {needle:?} in:\n{log}");
    }
    let half: Option<tokio_postgres::Row> =
        c.query_opt("select 1 from shadow.a where id = 2", &[]).await.unwrap();
    assert!(half.is_none(), "half of the failed source transaction was applied:\n{log}");
    report("shadow table altered (mapped column dropped)", "streaming", "stops naming it", None);
}
