//! The README's run command: `walshift demo` on its own throwaway cluster.

use crate::support::cli::run_bin;

#[tokio::test]
async fn demo_streams_every_change_and_cleans_up() {
    let out = run_bin(&["demo", "--duration-secs", "2"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("every change written was streamed exactly once"), "{stderr}");
    // The first changes are shown as JSON lines.
    let first: serde_json::Value =
        serde_json::from_str(stdout.lines().next().expect("some output")).expect("JSON line");
    assert!(first["table"].as_str().is_some_and(|t| t.starts_with("public.")), "{first}");
    let dir = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("cluster on ").and_then(|r| r.split(" in ").nth(1)))
        .expect("the demo names its directory");
    assert!(!std::path::Path::new(dir).exists(), "{dir} was removed");
}
