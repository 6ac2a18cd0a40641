//! The alert rules and the dashboard: `promtool` checks the rules and runs
//! their unit tests (`config/alerts.test.yml`, every alert firing and not
//! firing), and every metric name the rules, their tests and the Grafana
//! dashboard use is one walshift exports (`telemetry::metrics::ALL`).

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path).to_string_lossy().into_owned()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}): run `bash scripts/test.sh`, which installs it")
    });
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_checks_and_unit_tests() {
    let checked = run("promtool", &["check", "rules", &repo("config/alerts.yml")]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run("promtool", &["test", "rules", &repo("config/alerts.test.yml")]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn rules_and_dashboard_use_only_exported_metric_names() {
    // The script reads the exported names from src/telemetry/metrics.rs
    // (`ALL`) and exits 1 naming any unknown one.
    let out = run("python3", &[&repo("scripts/check_metric_names.py")]);
    assert!(out.contains("ok"), "{out}");
}
