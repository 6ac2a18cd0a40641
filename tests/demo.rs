//! The README's run command: `walshift demo` on its own throwaway cluster.

use crate::support::cli::run_bin;

#[tokio::test]
async fn demo_backfills_and_streams_into_the_shadow_schema_and_cleans_up() {
    let out = run_bin(&["demo", "--duration-secs", "2"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
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
    let dir = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("cluster on ").and_then(|r| r.split(" in ").nth(1)))
        .expect("the demo names its directory");
    assert!(!std::path::Path::new(dir).exists(), "{dir} was removed");
}
