//! `walshift verify`: a full verification pass in the foreground (see
//! `docs/verify.md`), read-only on both sides, so it also runs while
//! `walshift run` streams; `--repair` re-copies the differing keys when no
//! `run` streams (a running instance repairs by itself with
//! `[verify] repair = true`, so two writers never race).

use std::io::Write;

use serde::Serialize;

use crate::apply::writer::Writer;
use crate::commands::run;
use crate::config::ValidatedConfig;
use crate::error::{CheckFailure, CheckFailures, Error};
use crate::pg::catalog;
use crate::pg::client::{self, SessionLimits};
use crate::runtime::shutdown::Shutdown;
use crate::state::verify::{self as store, DiffKind, Difference, PassKind, PassResult, Runner};
use crate::verify::position::Applied;
use crate::verify::repair;
use crate::verify::{TableReport, Verifier, VerifyOptions, compile};

/// What a repair did to one table.
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    /// Target table.
    pub table: String,
    /// Keys rewritten from the source.
    pub rewritten: u64,
    /// Keys deleted from the target.
    pub deleted: u64,
    /// The re-verification of those keys afterwards.
    pub result: PassResult,
}

/// The whole outcome (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct VerifyOutcome {
    /// Migration name.
    pub migration: String,
    /// `clean`, `differences` or `unconfirmed`, over every table.
    pub result: PassResult,
    /// Whether every pass ran to its end (false: interrupted).
    pub complete: bool,
    /// How differences were confirmed: `running` (a `walshift run` applies
    /// the stream; barriers waited for it) or `stopped` (nothing applies;
    /// the slot was checked for changes waiting).
    pub stream: &'static str,
    /// Per table.
    pub tables: Vec<TableReport>,
    /// Repairs (with `--repair`).
    pub repairs: Vec<RepairReport>,
}

fn sql(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    Error::sql(context)
}

/// Runs a full pass of the tables in scope (and repairs with `repair`).
pub async fn run(
    cfg: &ValidatedConfig,
    tables: &[String],
    repair: bool,
    shutdown: Shutdown,
) -> Result<VerifyOutcome, Error> {
    let plan = run::prepare(cfg).await?;
    let scope = if tables.is_empty() {
        plan.upsert_order.clone()
    } else {
        run::resolve_tables(&plan, tables)?
    };
    let source = client::connect(&cfg.source.url, "verify", SessionLimits::ADMIN).await?;
    let target = client::connect(&cfg.target.url, "verify", SessionLimits::ADMIN).await?;
    // Verifying a table whose backfill is incomplete would only report the
    // rows not copied yet.
    let progress = crate::state::backfill::load(&target, &cfg.migration_name)
        .await
        .map_err(sql("reading the backfill progress"))?;
    let mut failures = Vec::new();
    for &t in &scope {
        let tp = &plan.tables[t];
        let name = tp.target.readable();
        match progress.iter().find(|p| p.target_table == name) {
            Some(p) if p.complete => {}
            Some(p) => failures.push(CheckFailure {
                subject: name.clone(),
                problem: format!(
                    "its backfill is not complete ({} of about {} rows copied): let `walshift run` \
                     (or `walshift backfill`) finish it, then verify",
                    p.rows_copied, p.rows_estimated
                ),
            }),
            None => failures.push(CheckFailure {
                subject: name.clone(),
                problem: "its backfill has not started: run `walshift run` (or `walshift \
                          backfill`) until it completes, then verify"
                    .into(),
            }),
        }
    }
    if !failures.is_empty() {
        return Err(Error::Checks(CheckFailures(failures)));
    }
    let slot = catalog::slot_info(&source, &cfg.source.slot)
        .await
        .map_err(sql("looking up the replication slot"))?;
    let active = slot.as_ref().and_then(|s| s.active_pid);
    if repair {
        if let Some(pid) = active {
            return Err(Error::Precondition(format!(
                "walshift run is streaming from slot {} (walsender pid {pid}): a repair from \
                 here would race its writes. Set [verify] repair = true and restart it (it \
                 repairs between its own transactions), or stop it and run verify --repair \
                 again; nothing was changed",
                cfg.source.slot
            )));
        }
    }
    let applied = match active {
        Some(_) => Applied::Stored { migration: cfg.migration_name.clone() },
        None => Applied::Stopped {
            slot: cfg.source.slot.clone(),
            publication: cfg.source.publication.clone(),
        },
    };
    let stream = if active.is_some() { "running" } else { "stopped" };
    let compiled = compile::compile(&plan, &source, &target)
        .await
        .map_err(|e| Error::Precondition(crate::error::display_chain(&e)))?;
    let names: Vec<(String, String)> =
        plan.tables.iter().map(|t| (t.source.readable(), t.target.readable())).collect();
    store::init(&target, &cfg.migration_name, Runner::Cli, &names)
        .await
        .map_err(sql("recording the tables to verify"))?;
    let options = VerifyOptions::from_config(cfg, Runner::Cli);
    let mut verifier = Verifier::new(source, target, compiled, options, applied)
        .await
        .map_err(|e| Error::Internal(crate::error::display_chain(&e)))?;
    let verify_err =
        |e: crate::verify::VerifyError| Error::Internal(crate::error::display_chain(&e));
    let mut reports = Vec::new();
    for &t in &scope {
        let report = verifier.pass(t, PassKind::Full, &shutdown).await.map_err(verify_err)?;
        let stop = !report.complete;
        reports.push(report);
        if stop {
            break;
        }
    }
    let mut repairs = Vec::new();
    if repair && !shutdown.is_triggered() {
        let repair_target =
            client::connect(&cfg.target.url, "repair", SessionLimits::APPLY).await?;
        let repair_source =
            client::connect(&cfg.source.url, "repair", SessionLimits::APPLY).await?;
        let fetch_source = client::connect(&cfg.source.url, "fetch", SessionLimits::APPLY).await?;
        let mut writer =
            Writer::new(repair_target, fetch_source, std::sync::Arc::new(plan.clone()));
        for report in &reports {
            let keys: Vec<Vec<String>> =
                report.differences.iter().filter(|d| d.confirmed).map(|d| d.key.clone()).collect();
            if keys.is_empty() {
                continue;
            }
            let Some(t) = plan.tables.iter().position(|tp| tp.target.readable() == report.target)
            else {
                continue;
            };
            let done = repair::repair_keys(&mut writer, &repair_source, t, &keys, &[])
                .await
                .map_err(|e| Error::Internal(crate::error::display_chain(&e)))?;
            let again = verifier.pass_keys(t, keys, &shutdown).await.map_err(verify_err)?;
            repairs.push(RepairReport {
                table: report.target.clone(),
                rewritten: done.rewritten,
                deleted: done.deleted,
                result: again.result,
            });
        }
    }
    let complete = reports.iter().all(|r| r.complete) && reports.len() == scope.len();
    let mut result = PassResult::Clean;
    for r in &reports {
        let repaired_clean =
            repairs.iter().any(|rep| rep.table == r.target && rep.result == PassResult::Clean)
                && r.counters.unconfirmed == 0;
        let effective = if repaired_clean { PassResult::Clean } else { r.result };
        result = match (result, effective) {
            (_, PassResult::Differences) | (PassResult::Differences, _) => PassResult::Differences,
            (_, PassResult::Unconfirmed) | (PassResult::Unconfirmed, _) => PassResult::Unconfirmed,
            _ => PassResult::Clean,
        };
    }
    Ok(VerifyOutcome {
        migration: cfg.migration_name.clone(),
        result,
        complete,
        stream,
        tables: reports,
        repairs,
    })
}

fn describe_kind(d: &Difference) -> String {
    match d.kind {
        DiffKind::Missing => "missing in target".into(),
        DiffKind::Extra => "extra in target".into(),
        DiffKind::Different => {
            let cols: Vec<String> = d
                .columns
                .iter()
                .map(|c| {
                    let v = |x: &Option<String>| {
                        x.as_ref().map_or_else(|| "NULL".to_owned(), |s| format!("{s:?}"))
                    };
                    format!("{}: source {} target {}", c.column, v(&c.source), v(&c.target))
                })
                .collect();
            format!("different ({})", cols.join("; "))
        }
    }
}

/// Renders the outcome for humans.
pub fn render(outcome: &VerifyOutcome, out: &mut impl Write) -> std::io::Result<()> {
    for t in &outcome.tables {
        let path =
            if t.path == "ship" { "rows shipped to the target" } else { "hashed on each server" };
        writeln!(
            out,
            "{} -> {} ({path}): {} rows, {} chunks ({} mismatched at first, {} re-checks), \
             {} differences{}, {:.1} s{}",
            t.source,
            t.target,
            t.counters.rows,
            t.counters.chunks,
            t.counters.mismatched,
            t.counters.rechecked,
            t.counters.differences,
            if t.counters.unconfirmed > 0 {
                format!(", {} unconfirmed", t.counters.unconfirmed)
            } else {
                String::new()
            },
            t.elapsed_seconds,
            if t.complete { "" } else { " (interrupted; the next verify resumes here)" }
        )?;
    }
    let all: Vec<&Difference> = outcome.tables.iter().flat_map(|t| &t.differences).collect();
    if !all.is_empty() {
        writeln!(out, "differences:")?;
        for d in &all {
            writeln!(
                out,
                "  {} key ({}): {}{}",
                d.table,
                d.key.join(", "),
                describe_kind(d),
                if d.confirmed { "" } else { " [unconfirmed]" }
            )?;
        }
        if all.iter().any(|d| !d.confirmed) {
            writeln!(
                out,
                "unconfirmed: changes waiting in the slot (no walshift run applies them) could \
                 explain these; start `walshift run` and verify again"
            )?;
        }
    }
    for r in &outcome.repairs {
        writeln!(
            out,
            "repaired {}: {} rows rewritten, {} deleted; verified again: {}",
            r.table,
            r.rewritten,
            r.deleted,
            r.result.as_str()
        )?;
    }
    writeln!(
        out,
        "{}",
        match outcome.result {
            PassResult::Clean if outcome.complete =>
                "verification clean: target = transform(source)",
            PassResult::Clean => "verification interrupted; no difference so far",
            PassResult::Differences => "verification found differences",
            PassResult::Unconfirmed => "verification found only unconfirmed differences",
        }
    )
}
