//! `walshift backfill [--table T] [--restart]`: the same pipeline as `run`
//! (the backfill needs the stream: chunks are written between the applier's
//! transactions, see `docs/backfill.md`), in the foreground, stopping once
//! the tables in scope are copied. Shows a progress bar on a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::backfill::{BackfillBoard, TableStatus};
use crate::commands::run::{self, RunOptions, RunSummary};
use crate::config::ValidatedConfig;
use crate::error::Error;
use crate::pg::client::{self, SessionLimits};
use crate::runtime::shutdown::Shutdown;
use crate::runtime::tasks::spawn_named;
use crate::state::backfill as progress;

/// Redraw interval of the progress bar.
const BAR_INTERVAL: Duration = Duration::from_millis(250);

/// Width of the bar itself, in characters.
const BAR_WIDTH: usize = 24;

/// One table's result, read back from the state schema.
#[derive(Debug, Clone, PartialEq)]
pub struct TableResult {
    /// Source table.
    pub source: String,
    /// Target table.
    pub target: String,
    /// Rows copied.
    pub rows: u64,
    /// From the first chunk's read to the last chunk's commit.
    pub elapsed: Option<Duration>,
    /// Whether it is complete.
    pub complete: bool,
}

/// Runs the backfill in the foreground; returns the run's summary and each
/// table's result.
pub async fn run(
    cfg: &ValidatedConfig,
    tables: Vec<String>,
    restart: bool,
    shutdown: Shutdown,
) -> Result<(RunSummary, Vec<TableResult>), Error> {
    let board = Arc::new(BackfillBoard::default());
    let bar = std::io::stderr().is_terminal().then(|| {
        let board = Arc::clone(&board);
        spawn_named("progress-bar", async move {
            loop {
                tokio::time::sleep(BAR_INTERVAL).await;
                let line = render_bar(&board.tables());
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
            }
        })
    });
    let options = RunOptions {
        tables,
        restart,
        until_backfilled: true,
        board: Arc::clone(&board),
        ..RunOptions::default()
    };
    let summary = run::run_with(cfg, shutdown, options).await;
    if let Some(bar) = bar {
        bar.abort();
        eprintln!("\r\x1b[2K{}", render_bar(&board.tables()));
    }
    let summary = summary?;
    let results = results(cfg).await?;
    Ok((summary, results))
}

async fn results(cfg: &ValidatedConfig) -> Result<Vec<TableResult>, Error> {
    let target = client::connect(&cfg.target.url, "backfill", SessionLimits::ADMIN).await?;
    let stored = progress::load(&target, &cfg.migration_name)
        .await
        .map_err(Error::sql("reading the backfill progress"))?;
    let rows = target
        .query(
            "select source_table, target_table, completed_at from walshift.backfill \
             where migration = $1",
            &[&cfg.migration_name],
        )
        .await
        .map_err(Error::sql("reading the backfill progress"))?;
    let mut out = Vec::new();
    for p in stored {
        let completed: Option<SystemTime> = rows
            .iter()
            .find(|r| {
                r.try_get::<_, String>(0).ok().as_deref() == Some(p.source_table.as_str())
                    && r.try_get::<_, String>(1).ok().as_deref() == Some(p.target_table.as_str())
            })
            .and_then(|r| r.try_get(2).ok());
        let elapsed = match (p.started_at, completed) {
            (Some(s), Some(c)) => c.duration_since(s).ok(),
            _ => None,
        };
        out.push(TableResult {
            source: p.source_table,
            target: p.target_table,
            rows: p.rows_copied,
            elapsed,
            complete: p.complete,
        });
    }
    Ok(out)
}

/// `[#######>.........]  42.0% billing_new.usage_events 840,000/2,000,000 rows
/// 190,000 rows/s ETA 6s` for the first incomplete table (or "complete").
pub fn render_bar(tables: &[TableStatus]) -> String {
    let done = tables.iter().filter(|t| t.complete).count();
    let Some(t) = tables.iter().find(|t| !t.complete) else {
        return format!("backfill complete: {done} table(s)");
    };
    let filled = ((t.percent() / 100.0) * BAR_WIDTH as f64) as usize;
    let bar: String = (0..BAR_WIDTH)
        .map(|i| match i.cmp(&filled) {
            std::cmp::Ordering::Less => '#',
            std::cmp::Ordering::Equal => '>',
            std::cmp::Ordering::Greater => '.',
        })
        .collect();
    let eta = t.eta().map_or_else(|| "?".to_owned(), |d| format!("{}s", d.as_secs()));
    let state = match &t.paused {
        Some(reason) => format!(" PAUSED: {reason}"),
        None => String::new(),
    };
    format!(
        "[{bar}] {:5.1}% {} {}/{} rows {} rows/s ETA {eta} (table {}/{}){state}",
        t.percent(),
        t.target,
        group(t.rows_copied),
        group(t.rows_estimated),
        group(t.rows_per_second.round() as u64),
        done + 1,
        tables.len(),
    )
}

/// `1234567` → `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(2_000_000), "2,000,000");
    }

    #[test]
    fn bar_shows_the_first_incomplete_table() {
        let t = |target: &str, copied, complete, paused: Option<&str>| TableStatus {
            source: "public.x".into(),
            target: target.into(),
            rows_copied: copied,
            rows_estimated: 1000,
            complete,
            paused: paused.map(str::to_owned),
            rows_per_second: 100.0,
        };
        let line = render_bar(&[t("s.a", 1000, true, None), t("s.b", 500, false, None)]);
        assert!(
            line.starts_with(
                "[############>...........]  50.0% s.b 500/1,000 rows 100 rows/s ETA 5s (table 2/2)"
            ),
            "{line}"
        );
        let paused = render_bar(&[t("s.b", 0, false, Some("lag"))]);
        assert!(paused.ends_with("PAUSED: lag"), "{paused}");
        assert_eq!(render_bar(&[t("s.a", 1000, true, None)]), "backfill complete: 1 table(s)");
    }
}
