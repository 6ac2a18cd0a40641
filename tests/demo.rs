//! The README's run command: `walshift demo` on its own throwaway PostgreSQL
//! cluster and `redis-server`: backfill, stream, the cutover walk-through
//! (stages, a fault, the rollback, the repair, `resume`, 100 %), the write
//! cutover under the running workload (the pause, an old table rejecting a
//! write, every acknowledged write in `billing_new`), and nothing left
//! behind — also when interrupted.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::cli::bin;

/// Longest a whole demo may take here (about a minute alone on two cores).
const DEMO_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest the demo may take to clean up once interrupted.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(90);

/// `walshift demo` with `args`; `env` overrides. Logs at `warn`, as
/// `scripts/demo.sh` runs it.
fn spawn_demo(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(bin());
    cmd.arg("demo")
        .args(args)
        .env_remove("WALSHIFT_CONFIG")
        .env("WALSHIFT_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn().expect("start walshift demo")
}

/// Reads the demo's stderr lines until one satisfies `stop` (then sends
/// SIGINT) or the stream ends; then waits for the exit. A demo still
/// running after `timeout` is interrupted too (so it cleans up), and the
/// test fails.
async fn watch(
    mut child: Child,
    timeout: Duration,
    stop: impl Fn(&str) -> bool,
) -> (Option<i32>, String) {
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut text = String::new();
    let mut interrupted = false;
    let mut timed_out = false;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line.expect("read the demo's stderr"),
            () = tokio::time::sleep_until(deadline), if !timed_out => {
                timed_out = true;
                interrupt(&child);
                continue;
            }
        };
        let Some(line) = line else { break };
        text.push_str(&line);
        text.push('\n');
        if !interrupted && stop(&line) {
            interrupted = true;
            interrupt(&child);
        }
    }
    let status = tokio::time::timeout(CLEANUP_TIMEOUT, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the demo did not exit:\n{text}"))
        .expect("wait for the demo");
    assert!(!timed_out, "the demo did not finish within {} s:\n{text}", timeout.as_secs());
    (status.code(), text)
}

fn interrupt(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill").arg("-INT").arg(pid.to_string()).status();
    }
}

/// The published decisions the demo printed, in order.
fn decisions(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("{\"version\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn read_new(d: &serde_json::Value) -> i64 {
    d["read"]["new"].as_i64().unwrap_or(-1)
}

/// The number (thousands grouped with commas) right after `prefix` in the
/// first line holding it.
fn number_after(stderr: &str, prefix: &str) -> f64 {
    stderr
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
        .map(|n| n.trim_end_matches(',').replace(',', ""))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {prefix:?} in:\n{stderr}"))
}

/// Read shares on new of the `shifting` decisions, in order.
fn shifting_stages(ds: &[serde_json::Value]) -> Vec<i64> {
    ds.iter().filter(|d| d["state"] == "shifting").map(read_new).collect()
}

/// The demo's directories and its Redis server are gone.
fn assert_nothing_left(stderr: &str) {
    let cluster_dir = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("cluster on ").and_then(|r| r.split(" in ").nth(1)))
        .expect("the demo names its cluster directory");
    assert!(!std::path::Path::new(cluster_dir).exists(), "{cluster_dir} was not removed");
    let redis = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis-server on "))
        .expect("the demo names its redis-server");
    // `127.0.0.1:<port> (pid <pid>) in <dir>`
    let (addr, rest) = redis.split_once(" (pid ").expect("redis address and pid");
    let (pid, dir) = rest.split_once(") in ").expect("redis pid and directory");
    assert!(!std::path::Path::new(dir).exists(), "{dir} was not removed");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert!(!comm.starts_with("redis-server"), "redis-server (pid {pid}) still runs");
    assert!(std::net::TcpStream::connect(addr).is_err(), "something still listens on {addr}");
}

#[tokio::test]
async fn demo_walks_through_a_fault_and_a_rollback_to_the_write_cutover_and_cleans_up() {
    let (code, stderr) =
        watch(spawn_demo(&["--duration-secs", "2"], &[]), DEMO_TIMEOUT, |_| false).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");

    // Backfill and stream: the shadow tables equal transform(source) (but
    // for the keys the workload wrote on new after the cutover).
    for table in ["organizations", "usage_events", "invoices"] {
        let line = format!("equal to transform(public.{table}) row for row");
        assert!(stderr.contains(&line), "missing {line:?} in:\n{stderr}");
    }
    assert!(stderr.contains("rows streamed by walshift: "), "{stderr}");
    // The sample data exists before the slot: only the backfill brings it.
    let copied = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("rows copied by the backfill: "))
        .and_then(|r| r.split_whitespace().next())
        .map(|n| n.replace(',', "").parse::<u64>().expect("a row count"))
        .expect("the summary names the rows copied");
    assert!(copied >= 200_400, "copied {copied} rows:\n{stderr}");

    // Every decision printed with its JSON, versions only growing.
    let ds = decisions(&stderr);
    let versions: Vec<i64> = ds.iter().map(|d| d["version"].as_i64().unwrap()).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions {versions:?}:\n{stderr}");
    let states: Vec<&str> = ds.iter().map(|d| d["state"].as_str().unwrap()).collect();
    let at = |state: &str| states.iter().position(|s| *s == state);
    let verified = at("verified").unwrap_or_else(|| panic!("no verified decision:\n{stderr}"));
    let rolled = at("rolled_back").unwrap_or_else(|| panic!("no rollback:\n{stderr}"));
    assert!(verified < rolled, "{states:?}");
    assert!(ds[..verified].iter().all(|d| read_new(d) == 0), "reads moved before verified");

    // First the operator asks for 50 %: 10 then 50, where the fault hits.
    assert_eq!(shifting_stages(&ds[..rolled]), [10, 50], "{stderr}");
    let fault = stderr.find("fault: billing_new.invoices id ").expect("the fault is shown");
    let rollback_json = stderr.find("\"state\":\"rolled_back\"").expect("the rollback's JSON");
    assert!(fault < rollback_json, "the rollback comes after the fault:\n{stderr}");
    let reason = ds[rolled]["reason"].as_str().unwrap();
    assert!(
        reason.contains("rolled back from 50 % new")
            && reason.contains("gate verification")
            && reason.contains("difference"),
        "{reason}"
    );
    assert_eq!(read_new(&ds[rolled]), 0);

    // Repaired, re-armed with `walshift resume`, then 10 / 50 / 90 / 100 %.
    let resume = stderr.find("operator: walshift resume -> re-armed").expect("the resume answer");
    assert!(rollback_json < resume, "{stderr}");
    assert_eq!(shifting_stages(&ds[rolled..]), [10, 50, 90, 100], "{stderr}");
    assert!(stderr.contains("fault to rollback: "), "{stderr}");

    // Then the write cutover: writes old until 100 % new, fenced (with a
    // deadline), then new; the last two decisions.
    let fenced = at("fenced").unwrap_or_else(|| panic!("no fenced decision:\n{stderr}"));
    assert_eq!(states[fenced..], ["fenced", "cut_over"], "{stderr}");
    assert_eq!(read_new(&ds[fenced - 1]), 100, "fenced before 100 % new:\n{stderr}");
    assert!(ds[..fenced].iter().all(|d| d["write"] == "old"), "{stderr}");
    assert_eq!(ds[fenced]["write"], "fenced");
    assert!(ds[fenced]["fence_deadline"].as_str().is_some_and(|t| t.ends_with('Z')), "{stderr}");
    let last = ds.last().unwrap();
    assert_eq!((last["write"].as_str(), read_new(last)), (Some("new"), 100), "{stderr}");
    assert!(last.get("fence_deadline").is_none(), "{last}");
    let asked = stderr.find("operator: walshift cutover (").expect("the cutover is asked for");
    let fenced_json = stderr.find("\"state\":\"fenced\"").expect("the fenced decision's JSON");
    assert!(asked < fenced_json, "{stderr}");
    for step in ["leader: fence held: ", "leader: drained: ", "leader: final check clean: "] {
        assert!(stderr.contains(step), "missing {step:?} in:\n{stderr}");
    }
    assert!(stderr.contains("operator: walshift cutover -> cut over: "), "{stderr}");
    // The measured pause.
    let pause = number_after(&stderr, "measured write pause: ");
    assert!(pause > 0.0 && pause < 10_000.0, "pause {pause} ms:\n{stderr}");
    assert!(stderr.contains("write cutover: writes paused "), "{stderr}");
    // An old table rejects a write, naming the new one.
    let rejected = stderr
        .find(
            "a write to an old table now fails: insert into public.usage_events -> ERROR 25006: \
             public.usage_events moved to billing_new.usage_events by walshift migration demo",
        )
        .unwrap_or_else(|| panic!("no rejected write:\n{stderr}"));
    let cut_over_json = stderr.find("\"state\":\"cut_over\"").expect("the cut_over JSON");
    assert!(cut_over_json < rejected, "{stderr}");
    // Every acknowledged write, on either side of the flip, is in billing_new.
    let before = number_after(&stderr, "every acknowledged write is in billing_new: ");
    let old_keys = number_after(&stderr, "before the flip (on the old tables; ");
    let after = number_after(&stderr, "keys equal to transform(source)), ");
    assert!(before > 0.0 && old_keys > 0.0 && after > 0.0, "{stderr}");
    assert!(stderr.contains(" after it (on billing_new; "), "{stderr}");
    assert!(stderr.contains("reads on new at the end: 100 %, writes: new"), "{stderr}");

    assert_nothing_left(&stderr);
}

#[tokio::test]
async fn demo_interrupted_stops_and_removes_its_servers() {
    // Interrupted once the controller published its first decision: the
    // cluster, Redis, `run` and the workload all run then.
    let (code, stderr) =
        watch(spawn_demo(&[], &[]), DEMO_TIMEOUT, |l| l.contains("decision v1:")).await;
    assert_eq!(code, Some(130), "stderr: {stderr}");
    assert!(stderr.contains("interrupted: cleaning up"), "{stderr}");
    assert!(stderr.contains("redis-server stopped and removed"), "{stderr}");
    assert!(stderr.contains("cluster stopped and removed"), "{stderr}");
    assert_nothing_left(&stderr);
}

#[tokio::test]
async fn demo_without_redis_server_exits_2_before_starting_anything() {
    let empty = std::env::temp_dir().join(format!("walshift-demo-no-path-{}", std::process::id()));
    let path = empty.display().to_string();
    let (code, stderr) = watch(spawn_demo(&[], &[("PATH", &path)]), DEMO_TIMEOUT, |_| false).await;
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("needs redis-server") && stderr.contains("bash scripts/demo.sh"),
        "{stderr}"
    );
    assert!(!stderr.contains("cluster on "), "nothing starts without redis-server:\n{stderr}");
}
