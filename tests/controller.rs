//! The cutover controller, end to end: real Postgres, real redis-server,
//! the real binary. Gates, stage-by-stage shifting, rollback (lag and
//! divergence), reload, Redis outages, leader/standby, kill -9 in each
//! state, history, bad input.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::backfill::WAIT;
use crate::observability::{http_get, instance_addr};
use crate::support::cli::{RunProcess, Walshift, expect_exit_2};
use crate::support::pg::{PgCluster, TestDb};
use crate::support::redis::{RedisServer, Subscriber, key_prefix};
use crate::support::wait::wait_until;

/// Evaluation interval the tests use.
const EVAL_MS: u64 = 200;
/// Failing evaluations before a violation counts.
const THRESHOLD: u32 = 3;

/// A migration of `t(id, v)` (`rows` rows) into `shadow.t`, published to
/// `redis` under a fresh prefix, with fast verification and evaluation.
/// `traffic` and `cutover` are TOML lines for those sections.
async fn migration(
    db: &TestDb<'_>,
    redis: &RedisServer,
    rows: u32,
    traffic: &str,
    cutover: &str,
) -> (Walshift, String) {
    db.execute(&format!(
        "create table t (id bigint primary key, v text);
         insert into t select g, 'v' || g from generate_series(1, {rows}) g;
         create schema shadow; create table shadow.t (id bigint primary key, v text);"
    ))
    .await;
    let prefix = key_prefix();
    let extra = format!(
        "[verify]\ninterval_seconds = 1\nfull_pass_interval_seconds = 1\n\n\
         [redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n\n[traffic]\n{traffic}\n\n\
         [cutover]\nevaluate_interval_ms = {EVAL_MS}\nfailure_threshold = {THRESHOLD}\nlease_ttl_ms = 3000\n{cutover}\n",
        redis.url()
    );
    let ws = Walshift::with_tables(
        db,
        None,
        "heartbeat_interval_ms = 200\n[[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n",
        &extra,
    );
    ws.run_ok(&["setup"]).await;
    (ws, format!("{prefix}traffic"))
}

/// Waits until a published decision satisfies `pred`; returns it.
pub(crate) async fn wait_decision(
    sub: &Subscriber,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> (Instant, serde_json::Value) {
    wait_until(what, timeout, async || sub.decisions().into_iter().find(|(_, d)| pred(d))).await
}

fn read_new(d: &serde_json::Value) -> i64 {
    d["read"]["new"].as_i64().unwrap_or(-1)
}

/// Versions strictly increase across every message.
fn assert_versions_increase(sub: &Subscriber) {
    let versions: Vec<i64> =
        sub.decisions().iter().map(|(_, d)| d["version"].as_i64().unwrap()).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions not strictly increasing: {versions:?}"
    );
}

/// The controller as `/status` shows it.
async fn controller_status(addr: &str) -> serde_json::Value {
    let (code, body) = http_get(addr, "/status").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["controller"].clone()
}

/// Rewrites `[traffic] read_new_percent` in the config file (the running
/// process reloads it).
fn set_read_new_percent(ws: &Walshift, percent: u32) {
    let text = ws.config_text();
    let line = text.lines().find(|l| l.starts_with("read_new_percent")).unwrap().to_owned();
    std::fs::write(ws.config_path(), text.replace(&line, &format!("read_new_percent = {percent}")))
        .unwrap();
}

/// Starts a leader, waits until it publishes 50 % on new, then starts a
/// second `run` and waits until it says it stands by for the leader's lease.
async fn leader_and_standby(ws: &Walshift, sub: &Subscriber) -> (RunProcess, RunProcess) {
    let leader = ws.spawn_run();
    wait_decision(sub, "50 %", WAIT, |d| read_new(d) == 50).await;
    let standby = ws.spawn_run();
    wait_until("the standby line", WAIT, async || {
        let err = standby.stderr();
        (err.contains("standby:") && err.contains("holds the lease")).then_some(())
    })
    .await;
    (leader, standby)
}

/// A row written on the source arrives in the shadow table: whoever leads
/// now streams.
async fn assert_streams(db: &TestDb<'_>, id: i64) {
    let c = db.client().await;
    c.execute("insert into t values ($1, 'after a change of leader')", &[&id]).await.unwrap();
    wait_until("the row to arrive through the new leader", WAIT, async || {
        c.query_opt("select 1 from shadow.t where id = $1", &[&id]).await.unwrap()
    })
    .await;
}

/// Holds an exclusive lock on `shadow.t` (the applier blocks) until dropped
/// with `rollback`.
async fn block_applier(db: &TestDb<'_>) -> Client {
    let c = db.client().await;
    c.batch_execute("begin; lock table shadow.t in access exclusive mode").await.unwrap();
    c
}

// ---------------------------------------------------------------------------

/// With every gate passing, reads go 10 → 50 → 100 % one stage at a time,
/// no faster than the soak; before verification nothing moves; every
/// decision is in `history`; `traffic route` follows the weights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shifts_stage_by_stage_after_the_gates_pass() {
    let db = TestDb::new(PgCluster::shared()).await;
    let redis = RedisServer::shared();
    let (ws, channel) = migration(
        &db,
        redis,
        200,
        "read_new_percent = 100\nstages = [10, 50, 100]",
        "min_soak_seconds = 1.5",
    )
    .await;
    let sub = redis.subscribe(&channel);
    let watch = ws.spawn_json_lines(&["traffic", "watch"]);
    let run = ws.spawn_run();
    let (_, first) = wait_decision(&sub, "a first decision", WAIT, |_| true).await;
    assert_eq!(read_new(&first), 0, "nothing on new before the gates pass: {first}");
    let (_, done) = wait_decision(&sub, "100 % on new", WAIT, |d| read_new(d) == 100).await;
    assert_eq!(done["state"], "shifting");
    assert_eq!(done["read"]["old"], 0);
    assert_eq!(done["write"], "old");
    assert_eq!(done["bucketing"]["hash"], "fnv1a64-fmix64");
    let decisions = sub.decisions();
    // The stages, in order, each after the previous one's soak.
    let moves: Vec<(Instant, i64)> =
        decisions.iter().map(|(at, d)| (*at, read_new(d))).fold(Vec::new(), |mut acc, (at, r)| {
            if acc.last().is_none_or(|(_, last)| *last != r) {
                acc.push((at, r));
            }
            acc
        });
    let percents: Vec<i64> = moves.iter().map(|m| m.1).collect();
    assert_eq!(percents, [0, 10, 50, 100], "{decisions:?}");
    for w in moves.windows(2).skip(1) {
        let gap = w[1].0 - w[0].0;
        assert!(gap >= Duration::from_millis(1400), "moved {} -> {} after {gap:?}", w[0].1, w[1].1);
    }
    // Before the first move the copy was verified.
    let verified =
        decisions.iter().position(|(_, d)| d["state"] == "verified").expect("a verified decision");
    let first_move = decisions.iter().position(|(_, d)| read_new(d) == 10).unwrap();
    assert!(verified < first_move);
    assert_versions_increase(&sub);
    // The key holds the newest decision.
    let stored = redis.command(&["GET", &channel]);
    let crate::support::redis::Reply::Bulk(Some(stored)) = stored else { panic!("{stored:?}") };
    let stored: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(stored["version"], decisions.last().unwrap().1["version"]);

    // `traffic watch` printed the same decisions, in order.
    let (_, watched, _) = watch.stop().await;
    let watched: Vec<i64> = watched.iter().map(read_new).collect();
    let published: Vec<i64> = decisions.iter().map(|(_, d)| read_new(d)).collect();
    assert!(
        watched.ends_with(&[100]) && watched.contains(&10) && watched.contains(&50),
        "{watched:?} vs {published:?}"
    );

    let history = ws.run_ok(&["history"]).await;
    for needle in ["advanced to 10 %", "advanced to 50 %", "advanced to 100 %", "verified"] {
        assert!(history.contains(needle), "history lacks {needle:?}:\n{history}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ws.run_ok(&["history", "--json"]).await).unwrap();
    assert!(
        json.as_array().unwrap().iter().any(|e| e["kind"] == "decision" && e["gates"].is_array())
    );
    let route = ws.run_ok(&["traffic", "route", "user-1"]).await;
    let bucket = walshift::traffic::bucket::bucket("test", "user-1");
    assert!(route.starts_with(&format!("user-1: new (bucket {bucket} of 10000")), "{route}");
    let c = db.client().await;
    let addr = instance_addr(&c).await;
    let status = controller_status(&addr).await;
    assert_eq!(status["role"], "leader");
    assert_eq!(status["read_new"], 100);
    let text = ws.run_ok(&["status"]).await;
    assert!(text.contains("controller: shifting, reads 100 % new / 0 % old"), "{text}");
    run.stop().await;
}

/// Bad `[traffic]` input exits 2 naming the key, before anything is
/// created; `resume` / `rollback` without a running leader exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_traffic_input_exits_2() {
    let db = TestDb::new(PgCluster::shared()).await;
    let redis = RedisServer::shared();
    let (ws, _) = migration(&db, redis, 10, "", "").await;
    let base = ws.config_text();
    let cases: &[(&str, &str, &str)] = &[
        (
            "read_new_percent = 0",
            "read_new_percent = 120",
            "traffic.read_new_percent: must be a percentage from 0 to 100, got 120",
        ),
        (
            "read_new_percent = 0",
            "stages = [50, 10]",
            "traffic.stages: must be strictly increasing, got 10 after 50",
        ),
        ("read_new_percent = 0", "on_violation = \"explode\"", "traffic.on_violation"),
        ("read_new_percent = 0", "stages = [0, 50]", "traffic.stages[0]: must be > 0"),
    ];
    let with_traffic = base.replace("[traffic]\n", "[traffic]\nread_new_percent = 0\n");
    for (from, to, expected) in cases {
        let bad = Walshift::with_config(&with_traffic.replace(from, to));
        let stderr = expect_exit_2(&bad, &["run"], &[expected]).await;
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Traffic on new without Redis.
    let no_redis = with_traffic
        .replace("read_new_percent = 0", "read_new_percent = 10")
        .lines()
        .filter(|l| !l.starts_with("url = \"redis://"))
        .collect::<Vec<_>>()
        .join("\n");
    let bad = Walshift::with_config(&no_redis);
    expect_exit_2(
        &bad,
        &["run"],
        &["traffic.read_new_percent: asks for 10 % of reads on new, but there is no [redis] url"],
    )
    .await;
    // Nothing was created by the refused runs.
    let c = db.client().await;
    let exists: bool = c
        .query_one("select to_regclass('walshift.controller') is not null", &[])
        .await
        .unwrap()
        .get(0);
    if exists {
        let n: i64 =
            c.query_one("select count(*) from walshift.controller", &[]).await.unwrap().get(0);
        assert_eq!(n, 0);
    }
    for cmd in ["resume", "rollback"] {
        expect_exit_2(
            &ws,
            &[cmd],
            &["no running walshift run leads migration test", "nothing was changed"],
        )
        .await;
    }
    let n: i64 = c
        .query_one("select count(*) from walshift.commands", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0);
    assert_eq!(n, 0, "a refused command was queued");
}

/// Lag over its limit while reads are on new rolls back to 0 % within
/// failure_threshold x evaluate_interval + 1 s of becoming observable; the
/// reason names the gate; it stays rolled back while the gates pass again,
/// until `walshift resume`; `walshift rollback` does the same by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_on_lag_stays_until_resumed() {
    let db = TestDb::new(PgCluster::shared()).await;
    let redis = RedisServer::shared();
    let (ws, channel) = migration(
        &db,
        redis,
        100,
        "read_new_percent = 50\nstages = [50]",
        "max_lag_seconds = 1.0\nmin_soak_seconds = 0",
    )
    .await;
    let sub = redis.subscribe(&channel);
    let run = ws.spawn_run();
    wait_decision(&sub, "50 % on new", WAIT, |d| read_new(d) == 50).await;
    // Block the applier while the source keeps writing.
    let blocker = block_applier(&db).await;
    let c = db.client().await;
    let locked = Instant::now();
    let writer = {
        let url = db.url();
        walshift::runtime::tasks::spawn_named("test-writer", async move {
            let c = crate::support::pg::connect(&url).await.unwrap();
            for i in 0..200 {
                c.execute("insert into t values ($1, 'lag')", &[&(10_000 + i as i64)])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let (at, rolled) =
        wait_decision(&sub, "a rollback", WAIT, |d| d["state"] == "rolled_back").await;
    // Observable once the oldest unapplied commit is 1 s old (>= locked + 1 s).
    let bound = Duration::from_millis(EVAL_MS * u64::from(THRESHOLD)) + Duration::from_secs(1);
    let after = at.duration_since(locked);
    assert!(
        after <= Duration::from_secs(1) + bound + Duration::from_millis(500),
        "rollback {after:?} after the lock"
    );
    assert_eq!(read_new(&rolled), 0);
    let reason = rolled["reason"].as_str().unwrap();
    assert!(reason.contains("lag_seconds") && reason.contains("rolled back from 50 %"), "{reason}");
    blocker.batch_execute("rollback").await.unwrap();
    writer.await.unwrap();
    // Caught up and passing again: still rolled back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let latest = sub.decisions().last().unwrap().1.clone();
    assert_eq!(read_new(&latest), 0, "moved without being re-armed: {latest}");
    let addr = instance_addr(&c).await;
    assert_eq!(controller_status(&addr).await["state"], "rolled_back");
    let answer = ws.run_ok(&["resume"]).await;
    assert!(answer.contains("re-armed"), "{answer}");
    wait_decision(&sub, "50 % again after resume", WAIT, |d| {
        read_new(d) == 50 && d["version"].as_i64() > rolled["version"].as_i64()
    })
    .await;
    // By hand.
    let answer = ws.run_ok(&["rollback", "--reason", "maintenance"]).await;
    assert!(answer.contains("rolled back"), "{answer}");
    let (_, manual) = wait_decision(&sub, "the manual rollback", WAIT, |d| {
        d["state"] == "rolled_back" && d["reason"].as_str().unwrap_or("").contains("maintenance")
    })
    .await;
    assert_eq!(read_new(&manual), 0);
    // A second resume while not rolled back/paused is refused (exit 2).
    ws.run_ok(&["resume"]).await;
    expect_exit_2(&ws, &["resume"], &["nothing to resume"]).await;
    assert_versions_increase(&sub);
    let history = ws.run_ok(&["history"]).await;
    assert!(
        history.contains("lag_seconds") && history.contains("re-armed by the operator"),
        "{history}"
    );
    run.stop().await;
}

/// A shadow row corrupted behind walshift's back is found by verification
/// and rolls reads back, with the reason naming the verification gate, even
/// though `[verify] repair = true` repairs the row within a second: the
/// copy was wrong while reads were on new. It stays rolled back until
/// re-armed (here by a new `read_new_percent`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_on_divergence_even_when_repaired() {
    let db = TestDb::new(PgCluster::shared()).await;
    let redis = RedisServer::shared();
    let (ws, channel) =
        migration(&db, redis, 100, "read_new_percent = 10\nstages = [10]", "min_soak_seconds = 0")
            .await;
    // Passes every 3 s: the gate fails from the confirmed difference until
    // the next clean full pass, a window that must hold `failure_threshold`
    // evaluations even on a loaded machine (1 s passes left about 0.8 s).
    let text = ws.config_text().replace("[verify]\n", "[verify]\nrepair = true\n").replace(
        "interval_seconds = 1\nfull_pass_interval_seconds = 1",
        "interval_seconds = 3\nfull_pass_interval_seconds = 3",
    );
    std::fs::write(ws.config_path(), text).unwrap();
    let sub = redis.subscribe(&channel);
    let run = ws.spawn_run();
    wait_decision(&sub, "10 % on new", WAIT, |d| read_new(d) == 10).await;
    let c = db.client().await;
    c.execute("update shadow.t set v = 'corrupt' where id = 7", &[]).await.unwrap();
    let (_, rolled) =
        wait_decision(&sub, "a rollback", WAIT, |d| d["state"] == "rolled_back").await;
    let reason = rolled["reason"].as_str().unwrap();
    assert!(reason.contains("verification") && reason.contains("difference"), "{reason}");
    // Repaired by walshift.
    wait_until("the repair", WAIT, async || {
        c.query_opt("select 1 from shadow.t where id = 7 and v = 'v7'", &[]).await.unwrap()
    })
    .await;
    // Clean again, but still rolled back: it waits to be re-armed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(read_new(&sub.decisions().last().unwrap().1), 0);
    // Re-armed by a new desired percentage in the config file.
    set_read_new_percent(&ws, 20);
    wait_decision(&sub, "10 % after re-arming by config", WAIT, |d| {
        read_new(d) == 10 && d["version"].as_i64() > rolled["version"].as_i64()
    })
    .await;
    wait_decision(&sub, "20 %", WAIT, |d| read_new(d) == 20).await;
    run.stop().await;
}

/// Reload: a file change and SIGHUP take effect; an invalid file and a
/// changed mapping are rejected (logged, metric naming the key), the
/// previous settings stay and the process keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_applies_valid_changes_and_rejects_bad_ones() {
    let db = TestDb::new(PgCluster::shared()).await;
    let redis = RedisServer::shared();
    let (ws, channel) = migration(
        &db,
        redis,
        50,
        "read_new_percent = 0\nstages = [10, 50]",
        "min_soak_seconds = 0",
    )
    .await;
    let sub = redis.subscribe(&channel);
    let mut run = ws.spawn_run();
    wait_decision(&sub, "verified", WAIT, |d| d["state"] == "verified").await;
    let original = ws.config_text();
    // A file change.
    std::fs::write(
        ws.config_path(),
        original.replace("read_new_percent = 0", "read_new_percent = 10"),
    )
    .unwrap();
    wait_decision(&sub, "10 % after the file changed", WAIT, |d| read_new(d) == 10).await;
    let c = db.client().await;
    let addr = instance_addr(&c).await;
    // Invalid: rejected, metric names the key, nothing moves, still running.
    std::fs::write(
        ws.config_path(),
        original.replace("read_new_percent = 0", "read_new_percent = 120"),
    )
    .unwrap();
    let metric = "walshift_config_reload_rejected{key=\"traffic.read_new_percent\"} 1";
    wait_until("the rejection metric", WAIT, async || {
        http_get(&addr, "/metrics").await.1.contains(metric).then_some(())
    })
    .await;
    let status = controller_status(&addr).await;
    assert!(
        status["reload"]["last_error"].as_str().unwrap().contains("traffic.read_new_percent"),
        "{status}"
    );
    assert_eq!(status["desired_read_new"], 10);
    assert!(run.stderr().contains("config reload rejected"), "{}", run.stderr());
    // A changed mapping: rejected, saying to restart.
    let remapped = original
        .replace("read_new_percent = 0", "read_new_percent = 50")
        .replace("target = \"shadow.t\"", "target = \"shadow.other\"");
    std::fs::write(ws.config_path(), remapped).unwrap();
    wait_until("the mapping change to be rejected", WAIT, async || {
        run.stderr().contains("restart walshift run to apply them").then_some(())
    })
    .await;
    assert!(run.stderr().contains("tables changed"), "{}", run.stderr());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(sub.decisions().iter().all(|(_, d)| read_new(d) <= 10), "moved on a rejected file");
    assert!(!run.has_exited());
    // Back to a valid file (clears the rejection), then a change only SIGHUP
    // can see: same size, modification time put back.
    let ten = original.replace("read_new_percent = 0", "read_new_percent = 10");
    std::fs::write(ws.config_path(), &ten).unwrap();
    wait_until("the rejection to clear", WAIT, async || {
        http_get(&addr, "/metrics")
            .await
            .1
            .contains("walshift_config_reload_rejected{key=\"tables\"} 0")
            .then_some(())
    })
    .await;
    let stamp = std::fs::metadata(ws.config_path()).unwrap().modified().unwrap();
    std::fs::write(ws.config_path(), ten.replace("read_new_percent = 10", "read_new_percent = 50"))
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(ws.config_path())
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        sub.decisions().iter().all(|(_, d)| read_new(d) <= 10),
        "the poll saw a same-stamp change"
    );
    let pid = run.pid().unwrap();
    std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    wait_decision(&sub, "50 % after SIGHUP", WAIT, |d| read_new(d) == 50).await;
    assert!(!run.has_exited());
    run.stop().await;
}

/// Redis stopped mid-run: nothing moves toward new and readiness says why;
/// restarted empty, the current decision is republished with a higher
/// version within 5 s, and the shift goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_holds_then_republishes() {
    let db = TestDb::new(PgCluster::shared()).await;
    let mut redis = RedisServer::start();
    let (ws, channel) = migration(
        &db,
        &redis,
        50,
        "read_new_percent = 10\nstages = [10, 50]",
        "min_soak_seconds = 0",
    )
    .await;
    let sub = redis.subscribe(&channel);
    let run = ws.spawn_run();
    let (_, at_ten) = wait_decision(&sub, "10 %", WAIT, |d| read_new(d) == 10).await;
    let before = at_ten["version"].as_i64().unwrap();
    let c = db.client().await;
    let addr = instance_addr(&c).await;
    redis.stop();
    // Ask for more while Redis is down: nothing moves.
    set_read_new_percent(&ws, 50);
    wait_until("readiness to name Redis", WAIT, async || {
        let (code, body) = http_get(&addr, "/readyz").await;
        (code == 503 && body.contains("redis unreachable")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored: i16 =
        c.query_one("select read_new from walshift.controller", &[]).await.unwrap().get(0);
    assert_eq!(stored, 10, "moved toward new while Redis was down");
    let status = controller_status(&addr).await;
    assert_eq!(status["read_new"], 10);
    assert_eq!(status["redis"]["reachable"], false);
    // Back to 10 % desired (so the first publish after the restart is the
    // republished decision, not a new one), then Redis back, empty.
    set_read_new_percent(&ws, 10);
    wait_until("the reload", WAIT, async || {
        (controller_status(&addr).await["desired_read_new"] == 10).then_some(())
    })
    .await;
    redis.restart();
    let restarted = Instant::now();
    let sub = redis.subscribe(&channel);
    let republished =
        wait_until("the decision to be republished", Duration::from_secs(5), async || match redis
            .command(&["GET", &channel])
        {
            crate::support::redis::Reply::Bulk(Some(v)) => {
                Some(serde_json::from_slice::<serde_json::Value>(&v).unwrap())
            }
            _ => None,
        })
        .await;
    assert!(restarted.elapsed() <= Duration::from_secs(5));
    crate::faults::report(
        "Redis unreachable for a while (stopped, restarted empty)",
        "shifting reads",
        "held, then republished",
        Some(restarted.elapsed().as_secs_f64()),
    );
    assert!(republished["version"].as_i64().unwrap() > before, "{republished}");
    assert_eq!(read_new(&republished), 10, "{republished}");
    let history = ws.run_ok(&["history"]).await;
    assert!(history.contains("republished: the key was missing"), "{history}");
    // And the shift goes on.
    set_read_new_percent(&ws, 50);
    wait_decision(&sub, "50 % once Redis is back", WAIT, |d| read_new(d) == 50).await;
    run.stop().await;
}

/// Two instances: one leads, the other waits as a standby saying who holds
/// the lease; kill -9 of the leader → the standby takes over within the
/// lease TTL + a few seconds, resuming the stored decision; versions seen
/// by a subscriber only grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_dies() {
    let db = TestDb::new(PgCluster::shared()).await;
    let redis = RedisServer::shared();
    let (ws, channel) = migration(
        &db,
        redis,
        50,
        "read_new_percent = 50\nstages = [10, 50]",
        "min_soak_seconds = 0",
    )
    .await;
    let sub = redis.subscribe(&channel);
    let (leader, standby) = leader_and_standby(&ws, &sub).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let err = standby.stderr();
    assert!(
        !err.contains("ERROR") && !err.contains("starting the pipeline"),
        "the standby did more than wait:\n{err}"
    );
    let last_before = sub.decisions().last().unwrap().1["version"].as_i64().unwrap();
    let killed = Instant::now();
    leader.kill9().await;
    let (at, taken) = wait_decision(&sub, "the standby's first decision", WAIT, |d| {
        d["version"].as_i64().unwrap() > last_before
    })
    .await;
    let took = at.duration_since(killed);
    assert!(took <= Duration::from_secs(3 + 4), "takeover took {took:?}");
    assert_eq!(read_new(&taken), 50, "the new leader did not resume the decision: {taken}");
    assert_eq!(taken["state"], "shifting");
    assert_streams(&db, 100_001).await;
    assert_versions_increase(&sub);
    standby.stop().await;
}

/// kill -9 in each controller state: the restarted process resumes the same
/// state and weights (no jump toward new, no forgotten rollback or pause).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_in_each_state_resumes_it() {
    let db = TestDb::new(PgCluster::shared()).await;
    let redis = RedisServer::shared();
    let (ws, channel) = migration(
        &db,
        redis,
        50,
        "read_new_percent = 0\nstages = [10, 50, 100]\non_violation = \"hold\"",
        "min_soak_seconds = 30",
    )
    .await;
    let sub = redis.subscribe(&channel);
    let c = db.client().await;
    let stored = async || -> (String, i16) {
        let r = c.query_one("select state, read_new from walshift.controller", &[]).await.unwrap();
        (r.get(0), r.get(1))
    };
    // Restarts after kill -9 and checks the new leader's first decision.
    let restart_and_check = async |run: RunProcess, state: &str, percent: i64| -> RunProcess {
        let last = sub.decisions().last().unwrap().1["version"].as_i64().unwrap();
        run.kill9().await;
        let killed = Instant::now();
        let run = ws.spawn_run();
        let (_, first) = wait_decision(&sub, "the restarted leader's decision", WAIT, |d| {
            d["version"].as_i64().unwrap() > last
        })
        .await;
        crate::faults::report(
            "walshift kill -9",
            &format!("controller {state} at {percent} % new"),
            &format!("resumed {state}"),
            Some(killed.elapsed().as_secs_f64()),
        );
        assert_eq!(
            (first["state"].as_str().unwrap(), read_new(&first)),
            (state, percent),
            "{first}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let newest = sub.decisions().last().unwrap().1.clone();
        assert_eq!(
            (newest["state"].as_str().unwrap(), read_new(&newest)),
            (state, percent),
            "moved after restart: {newest}"
        );
        run
    };
    let run = ws.spawn_run();
    wait_decision(&sub, "verified", WAIT, |d| d["state"] == "verified").await;
    let run = restart_and_check(run, "verified", 0).await;
    // Shifting at 10 % with a long soak ahead: no jump to 50 after restart.
    set_read_new_percent(&ws, 100);
    wait_decision(&sub, "10 %", WAIT, |d| read_new(d) == 10).await;
    let run = restart_and_check(run, "shifting", 10).await;
    assert_eq!(stored().await, ("shifting".into(), 10));
    // Paused (hold) while verification finds a difference (a lock on the
    // shadow table would also block the restarted process's start).
    c.execute("update shadow.t set v = 'corrupt' where id = 7", &[]).await.unwrap();
    wait_decision(&sub, "paused", WAIT, |d| d["state"] == "paused").await;
    let run = restart_and_check(run, "paused", 10).await;
    c.execute("update shadow.t set v = 'v7' where id = 7", &[]).await.unwrap();
    wait_decision(&sub, "shifting again once the gates pass", WAIT, |d| {
        d["state"] == "shifting"
            && d["reason"].as_str().unwrap_or("").contains("gates passing again")
    })
    .await;
    // Rolled back by hand.
    ws.run_ok(&["rollback"]).await;
    wait_decision(&sub, "rolled back", WAIT, |d| d["state"] == "rolled_back").await;
    let run = restart_and_check(run, "rolled_back", 0).await;
    assert_eq!(stored().await, ("rolled_back".into(), 0));
    assert_versions_increase(&sub);
    run.stop().await;
}

/// `walshift.wait_for_lsn` returns true only once the row is visible in the
/// shadow table, false on timeout while the applier is blocked;
/// `walshift.applied_lsn` advances on a quiet system (heartbeats).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_lsn_gives_read_your_writes() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table t (id bigint primary key, v text);
         create schema shadow; create table shadow.t (id bigint primary key, v text);",
    )
    .await;
    let ws = Walshift::with_tables(
        &db,
        None,
        "heartbeat_interval_ms = 200\n[[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n",
        "",
    );
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let c = db.client().await;
    instance_addr(&c).await;
    for id in 1..=5_i64 {
        c.execute("insert into t values ($1, 'w')", &[&id]).await.unwrap();
        let lsn: tokio_postgres::types::PgLsn =
            c.query_one("select pg_current_wal_insert_lsn()", &[]).await.unwrap().get(0);
        let row = c
            .query_one(
                "select walshift.wait_for_lsn('test', $1, 10000), \
                 exists (select 1 from shadow.t where id = $2)",
                &[&lsn, &id],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "wait_for_lsn timed out");
        // The wait returned in its own statement; a new statement sees the row.
        let visible: bool = c
            .query_one("select exists (select 1 from shadow.t where id = $1)", &[&id])
            .await
            .unwrap()
            .get(0);
        assert!(visible, "wait_for_lsn returned true before row {id} was visible");
    }
    // Quiet system: the applied position still passes the current position.
    let lsn: tokio_postgres::types::PgLsn =
        c.query_one("select pg_current_wal_insert_lsn()", &[]).await.unwrap().get(0);
    let ok: bool = c
        .query_one("select walshift.wait_for_lsn('test', $1, 5000)", &[&lsn])
        .await
        .unwrap()
        .get(0);
    assert!(ok, "a quiet system made the wait time out");
    // Blocked applier: false after the timeout, and the row is not there.
    let blocker = block_applier(&db).await;
    c.execute("insert into t values (99, 'blocked')", &[]).await.unwrap();
    let lsn: tokio_postgres::types::PgLsn =
        c.query_one("select pg_current_wal_insert_lsn()", &[]).await.unwrap().get(0);
    let started = Instant::now();
    let ok: bool =
        c.query_one("select walshift.wait_for_lsn('test', $1, 700)", &[&lsn]).await.unwrap().get(0);
    assert!(!ok, "wait_for_lsn returned true while the applier was blocked");
    assert!(started.elapsed() >= Duration::from_millis(650));
    let applied: Option<tokio_postgres::types::PgLsn> =
        c.query_one("select walshift.applied_lsn('test')", &[]).await.unwrap().get(0);
    assert!(applied.is_some_and(|a| a < lsn));
    blocker.batch_execute("rollback").await.unwrap();
    let ok: bool = c
        .query_one("select walshift.wait_for_lsn('test', $1, 10000)", &[&lsn])
        .await
        .unwrap()
        .get(0);
    assert!(ok);
    run.stop().await;
}

/// A leader frozen (SIGSTOP) past its lease: the standby takes over; when
/// the old leader wakes up it can publish nothing (the Lua script checks the
/// lease; its writes to the state schema are conditional on still being
/// the leader), steps down to standby, and releases the slot, so the new
/// leader streams. Every published version still only grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_that_wakes_up_is_fenced_and_steps_down() {
    let db = TestDb::new(PgCluster::shared()).await;
    let redis = RedisServer::shared();
    let (ws, channel) = migration(
        &db,
        redis,
        50,
        "read_new_percent = 50\nstages = [10, 50]",
        "min_soak_seconds = 0",
    )
    .await;
    let sub = redis.subscribe(&channel);
    let (old, new) = leader_and_standby(&ws, &sub).await;
    let old_pid = old.pid().unwrap().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill").args([sig, &old_pid]).status().unwrap();
    };
    let last_before = sub.decisions().last().unwrap().1["version"].as_i64().unwrap();
    signal("-STOP");
    let (_, taken) = wait_decision(&sub, "the standby's first decision", WAIT, |d| {
        d["version"].as_i64().unwrap() > last_before
    })
    .await;
    assert_eq!(read_new(&taken), 50);
    // While the old leader is frozen its walsender holds the slot: the new
    // leader retries. Wake the old one up.
    signal("-CONT");
    wait_until("the old leader to step down", WAIT, async || {
        let err = old.stderr();
        (err.contains("stepping down") || err.contains("stepped down")).then_some(())
    })
    .await;
    wait_until("the old leader to stand by", WAIT, async || {
        old.stderr().contains("standby:").then_some(())
    })
    .await;
    assert_streams(&db, 100_002).await;
    let c = db.client().await;
    let leader: String =
        c.query_one("select leader from walshift.controller", &[]).await.unwrap().get(0);
    assert!(leader.contains(&format!(":{}:", new.pid().unwrap())), "leader {leader}");
    assert_versions_increase(&sub);
    let (code, log) = old.stop().await;
    assert_eq!(code, Some(0), "{log}");
    new.stop().await;
}
