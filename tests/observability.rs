//! Observability: honest lag (heartbeats), the metrics, `/readyz`,
//! `/status`, `walshift status` with and without a running instance, and no
//! secret in any output.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

use crate::backfill::WAIT;
use crate::support::cli::{RunProcess, Walshift};
use crate::support::pg::{Auth, ClusterOptions, PgCluster, TestDb};
use crate::support::shadow::assert_converges;
use crate::support::wait::wait_until;

// ---------------------------------------------------------------------------
// helpers

/// `GET path` from `addr`: status code and body.
pub(crate) async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<Vec<u8>, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .unwrap_or_else(|_| panic!("GET {path} from {addr} timed out"))
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_owned())
}

/// The HTTP address the running instance registered.
pub(crate) async fn instance_addr(target: &Client) -> String {
    wait_until("the run to register its HTTP address", WAIT, async || {
        target
            .query_opt("select http_addr from walshift.instances", &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, String>(0))
    })
    .await
}

/// `/status` as JSON.
async fn status(addr: &str) -> serde_json::Value {
    let (code, body) = http_get(addr, "/status").await;
    assert_eq!(code, 200, "/status: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status: {e}: {body}"))
}

/// The value of the unlabelled series `name` in a Prometheus text body.
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn simple_table(db: &TestDb<'_>, rows: u32, extra: &str) -> Walshift {
    db.execute(&format!(
        "create table t (id bigint primary key, v text);
         insert into t select g, 'v' || g from generate_series(1, {rows}) g;
         create schema shadow; create table shadow.t (id bigint primary key, v text);"
    ))
    .await;
    let ws = Walshift::with_tables(
        db,
        None,
        "[[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n",
        extra,
    );
    ws.run_ok(&["setup"]).await;
    ws
}

/// Waits until `/readyz` answers 200.
async fn wait_ready(addr: &str) {
    wait_until("the run to be ready", WAIT, async || {
        (http_get(addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------
// metrics

/// Under a workload, `/metrics` exposes every required series with
/// plausible values: counters count the changes, the histograms have
/// samples, lag is small, error counters exist at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_every_series_with_plausible_values() {
    let db = TestDb::new(PgCluster::shared()).await;
    let ws = simple_table(&db, 1000, "[verify]\ninterval_seconds = 1\n").await;
    let run = ws.spawn_run();
    let c = db.client().await;
    let addr = instance_addr(&c).await;
    wait_ready(&addr).await;
    for i in 0..50 {
        c.batch_execute(&format!(
            "insert into t select g, 'n' from generate_series({}, {}) g;
             update t set v = 'u' where id = {};
             delete from t where id = {};",
            10_000 + i * 10,
            10_009 + i * 10,
            i + 1,
            i + 500
        ))
        .await
        .unwrap();
    }
    assert_converges(&c, "select * from t", &c, "select * from shadow.t", WAIT).await;
    wait_until("a verification pass", WAIT, async || {
        c.query_opt("select 1 from walshift.verify_tables where last_result = 'clean'", &[])
            .await
            .unwrap()
    })
    .await;
    let (code, body) = http_get(&addr, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "walshift_replication_lag_bytes",
        "walshift_replication_lag_seconds",
        "walshift_heartbeat_last_applied_timestamp_seconds",
        "walshift_slot_retained_wal_bytes",
        "walshift_stream_connected",
        "walshift_apply_changes_total{",
        "walshift_apply_transactions_total",
        "walshift_apply_commits_total",
        "walshift_apply_batch_duration_seconds_bucket{",
        "walshift_apply_batch_rows_bucket{",
        "walshift_errors_total{kind=\"transient\"} 0",
        "walshift_errors_total{kind=\"strict_replay\"} 0",
        "walshift_errors_total{kind=\"fatal\"} 0",
        "walshift_reconnects_total 0",
        "walshift_build_info{version=",
        "walshift_start_time_seconds",
        "walshift_backfill_rows_copied_total{",
        "walshift_verify_rows_total{",
        "walshift_verify_chunks_total{",
        "walshift_verify_mismatched_rows{",
        "walshift_verify_last_clean_timestamp_seconds{",
        "walshift_verify_running",
        "# TYPE walshift_apply_batch_duration_seconds histogram",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}:\n{body}");
    }
    let inserts = body
        .lines()
        .find(|l| l.starts_with("walshift_apply_changes_total{") && l.contains("op=\"insert\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(inserts >= 500.0, "500 inserts streamed, counted {inserts}");
    let lag = metric(&body, "walshift_replication_lag_seconds").unwrap();
    assert!((0.0..5.0).contains(&lag), "lag {lag}");
    assert_eq!(metric(&body, "walshift_stream_connected"), Some(1.0));
    let commits = metric(&body, "walshift_apply_commits_total").unwrap();
    let count = metric(&body, "walshift_apply_batch_duration_seconds_count").unwrap();
    assert!(commits >= 1.0 && count >= commits, "{commits} commits, {count} durations");
    let hb = metric(&body, "walshift_heartbeat_last_applied_timestamp_seconds").unwrap();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - hb).abs() < 10.0, "heartbeat applied at {hb}, now {now}");
    // The scrape check: every name the rules and the dashboard use exists.
    let (code, healthz) = http_get(&addr, "/healthz").await;
    assert_eq!((code, healthz.as_str()), (200, "ok\n"));
    let (code, _) = http_get(&addr, "/nope").await;
    assert_eq!(code, 404);
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

// ---------------------------------------------------------------------------
// lag

/// Lag in seconds rises steadily while the applier is blocked (a session
/// holds a lock on the shadow table while the source keeps writing),
/// `/readyz` turns not ready with the reason, and both recover once the lock
/// is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_rises_while_the_applier_is_blocked_and_readyz_follows() {
    let db = TestDb::new(PgCluster::shared()).await;
    let ws = simple_table(
        &db,
        10,
        "[verify]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\nready_max_lag_seconds = 1\n",
    )
    .await;
    let run = ws.spawn_run();
    let c = db.client().await;
    let addr = instance_addr(&c).await;
    wait_ready(&addr).await;
    let locker = db.client().await;
    locker.batch_execute("begin; lock table shadow.t in access exclusive mode").await.unwrap();
    let writer = db.client().await;
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut not_ready = None;
    let mut id: i64 = 100_000;
    while started.elapsed() < Duration::from_secs(5) {
        id += 1;
        writer.execute("insert into t values ($1, 'x')", &[&id]).await.unwrap();
        let s = status(&addr).await;
        if let Some(l) = s["live"]["lag_seconds"].as_f64() {
            samples.push((started.elapsed().as_secs_f64(), l));
        }
        let (code, body) = http_get(&addr, "/readyz").await;
        if code == 503 {
            not_ready = Some(body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = samples.last().copied().unwrap_or((0.0, 0.0));
    assert!(last.1 >= 3.5, "lag should be near 5 s after 5 s blocked: {samples:?}");
    let rising = samples.windows(2).filter(|w| w[1].1 + 0.3 >= w[0].1).count();
    assert!(rising + 1 >= samples.len(), "lag rose steadily: {samples:?}");
    let not_ready = not_ready.expect("/readyz turned not ready");
    assert!(
        not_ready.contains("replication lag") && not_ready.contains("ready_max_lag_seconds"),
        "{not_ready}"
    );
    locker.batch_execute("commit").await.unwrap();
    wait_until("lag to fall back", WAIT, async || {
        status(&addr).await["live"]["lag_seconds"].as_f64().filter(|l| *l < 1.0)
    })
    .await;
    wait_ready(&addr).await;
    assert_converges(&c, "select * from t", &c, "select * from shadow.t", WAIT).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

/// On an idle source, heartbeats keep lag in seconds below about twice the
/// heartbeat interval; while an unpublished table is written heavily, the
/// slot's confirmed position keeps advancing and the WAL it retains stays
/// bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_lag_is_small_and_unpublished_writes_do_not_pin_wal() {
    let db = TestDb::new(PgCluster::shared()).await;
    let ws = simple_table(&db, 10, "[verify]\nenabled = false\n").await;
    db.execute("create table other (id bigint, pad text)").await;
    let run = ws.spawn_run();
    let c = db.client().await;
    let addr = instance_addr(&c).await;
    wait_ready(&addr).await;
    let mut max = 0.0f64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let (_, body) = http_get(&addr, "/metrics").await;
        let lag = metric(&body, "walshift_replication_lag_seconds").unwrap();
        max = max.max(lag);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(max < 2.0, "idle lag peaked at {max} s (heartbeat every 1 s)");
    let confirmed = async || -> String {
        c.query_one(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
            &[&db.slot_name()],
        )
        .await
        .unwrap()
        .get(0)
    };
    let before = confirmed().await;
    let start: String = c.query_one("select pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    for _ in 0..20 {
        c.batch_execute(
            "insert into other select g, repeat('x', 200) from generate_series(1, 20000) g",
        )
        .await
        .unwrap();
    }
    let (written, wal): (String, i64) = c
        .query_one(
            "select pg_current_wal_lsn()::text, (pg_current_wal_lsn() - $1::text::pg_lsn)::bigint",
            &[&start],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    wait_until("the slot to confirm past the unpublished writes", WAIT, async || {
        c.query_one(
            "select confirmed_flush_lsn >= $1::text::pg_lsn from pg_replication_slots \
             where slot_name = $2",
            &[&written, &db.slot_name()],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
        .then_some(())
    })
    .await;
    assert_ne!(confirmed().await, before);
    // The slot's restart point follows at the next running-transactions
    // record (a checkpoint writes one): the WAL of the unpublished writes is
    // released, not pinned.
    c.batch_execute("checkpoint").await.unwrap();
    wait_until("the slot to release the unpublished table's WAL", WAIT, async || {
        let retained: i64 = c
            .query_one(
                "select (pg_current_wal_lsn() - restart_lsn)::bigint from pg_replication_slots \
                 where slot_name = $1",
                &[&db.slot_name()],
            )
            .await
            .unwrap()
            .get(0);
        (retained < wal / 4).then_some(())
    })
    .await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

// ---------------------------------------------------------------------------
// status

/// `walshift status`, human and JSON: from the running instance (live
/// figures), and from the state schema when none runs or it does not answer
/// (SIGSTOPped: it must not hang), saying so and warning about the WAL a
/// slot nobody consumes retains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_asks_the_instance_and_falls_back_when_it_does_not_answer() {
    let db = TestDb::new(PgCluster::shared()).await;
    let ws = simple_table(&db, 100, "[verify]\nenabled = false\n").await;
    let out = ws.run_ok(&["status"]).await;
    assert!(out.contains("no walshift run has registered"), "{out}");
    assert!(out.contains("warning: no walshift run consumes slot"), "{out}");
    let run = ws.spawn_run();
    let c = db.client().await;
    let addr = instance_addr(&c).await;
    wait_ready(&addr).await;
    let json: serde_json::Value =
        serde_json::from_str(&ws.run_ok(&["status", "--json"]).await).unwrap();
    assert_eq!(json["answered_by"], "instance", "{json}");
    assert!(json["live"]["lag_seconds"].is_number(), "{json}");
    assert_eq!(json["live"]["stream_connected"], true);
    let out = ws.run_ok(&["status"]).await;
    assert!(out.contains("answered by walshift run"), "{out}");
    assert!(out.contains("slot wal_status reserved"), "{out}");
    // Frozen: status falls back within a few seconds and says so, and shows
    // the slot falling behind.
    let pid = run.pid().unwrap().to_string();
    std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    for _ in 0..5 {
        c.batch_execute(
            "insert into t select g, 'x' from generate_series(1000 + 1, 1000 + 100) g \
                         on conflict do nothing",
        )
        .await
        .unwrap();
    }
    let started = Instant::now();
    let out = ws.run(&["status", "--json"]).await;
    let elapsed = started.elapsed();
    assert_eq!(out.status.code(), Some(0));
    assert!(elapsed < Duration::from_secs(15), "status took {elapsed:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["answered_by"], "state schema", "{json}");
    assert!(json["note"].as_str().unwrap().contains("did not answer"), "{json}");
    let retained = json["slot_retained_bytes"].as_i64().unwrap();
    // The slot falls further behind while walshift is frozen.
    c.batch_execute("insert into t select g, repeat('y', 500) from generate_series(5000, 9000) g")
        .await
        .unwrap();
    let out = ws.run(&["status", "--json"]).await;
    std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let later = json["slot_retained_bytes"].as_i64().unwrap();
    assert!(later > retained + 1_000_000, "retained {retained} then {later}");
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    let out = ws.run_ok(&["status"]).await;
    assert!(out.contains("did not answer"), "{out}");
    assert!(out.contains("warning: no walshift run consumes slot"), "{out}");
}

// ---------------------------------------------------------------------------
// secrets

/// A whole run with a password in the URLs (setup, run with backfill and
/// verification, status, the HTTP endpoints and the page, verify, teardown):
/// the password appears in no output, log, page or metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_appears_nowhere() {
    let password = "Sup3r-s3cret-pw";
    let cluster = PgCluster::start(ClusterOptions {
        auth: Auth::Scram { user: "ws_secret".into(), password: password.into() },
        ..ClusterOptions::default()
    });
    let db = TestDb::new(&cluster).await;
    let ws = simple_table(&db, 2000, "[verify]\ninterval_seconds = 1\n").await;
    assert!(ws.config_text().contains(password), "the config carries the password");
    let mut seen = String::new();
    let run = ws.spawn_run();
    let c = db.client().await;
    let addr = instance_addr(&c).await;
    wait_ready(&addr).await;
    wait_until("a verification pass", WAIT, async || {
        c.query_opt("select 1 from walshift.verify_tables where last_result is not null", &[])
            .await
            .unwrap()
    })
    .await;
    for path in ["/", "/status", "/metrics", "/readyz", "/healthz"] {
        seen.push_str(&http_get(&addr, path).await.1);
    }
    for args in [&["status"][..], &["status", "--json"], &["verify"], &["verify", "--json"]] {
        let out = ws.run(args).await;
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
        seen.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let (code, log) = stop(run).await;
    assert_eq!(code, Some(0), "{log}");
    seen.push_str(&log);
    // A failure path too: a wrong table name, and a verify --repair refusal.
    for args in [&["verify", "--table", "nope"][..], &["teardown"], &["teardown", "--yes"]] {
        let out = ws.run(args).await;
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
        seen.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(seen.contains("walshift_replication_lag_seconds"), "collected the outputs");
    assert!(!seen.contains(password), "the password leaked:\n{seen}");
}

async fn stop(run: RunProcess) -> (Option<i32>, String) {
    run.stop().await
}
