//! The `walshift` binary: parse the command line, load the config, run the
//! command, map the outcome to an exit code. Synchronous set-up (config,
//! logging) happens before the async runtime is built.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use clap::Parser;

use walshift::cli::{Cli, Command, TrafficCommand};
use walshift::commands::run::RunOptions;
use walshift::commands::status::LiveStatus;
use walshift::commands::{self, setup::Outcome};
use walshift::config::{Config, LogFormat, ValidatedConfig};
use walshift::controller::Board;
use walshift::demo::{self, DemoOptions};
use walshift::error::{self, Error};
use walshift::lag::Lag;
use walshift::runtime::reload::{ReloadReport, Reloader};
use walshift::runtime::shutdown::{self, Shutdown};
use walshift::telemetry::http::{self, Endpoints, StatusSource};

/// Refresh interval of `status --watch`.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(code) => code.into(),
        Err(err) => {
            eprintln!("error: {}", error::display_chain(&err));
            err.exit_code().into()
        }
    }
}

fn load_config(cli: &Cli) -> Result<ValidatedConfig, Error> {
    Ok(Config::load(&cli.config)?.validate()?)
}

/// Installs the metrics recorder and serves the HTTP endpoints on
/// `[metrics] listen` (`status`: what `/status` and `/readyz` answer).
/// Returns the bound address.
async fn serve_http(
    cfg: &ValidatedConfig,
    status: Option<Arc<dyn StatusSource>>,
    lag: Option<Arc<Lag>>,
    shutdown: Shutdown,
) -> Result<SocketAddr, Error> {
    let metrics = walshift::telemetry::metrics::install().map_err(Error::Internal)?;
    let (listener, addr) = http::bind(cfg.metrics.listen).await.map_err(|e| {
        Error::Precondition(format!(
            "metrics.listen: cannot listen on {}: {e}; set [metrics] listen to a free address",
            cfg.metrics.listen
        ))
    })?;
    let before_scrape = lag.map(|lag| {
        Box::new(move || walshift::replication::heartbeat::publish(&lag))
            as Box<dyn Fn() + Send + Sync>
    });
    let endpoints = Arc::new(Endpoints { metrics, status, before_scrape });
    let _server =
        walshift::runtime::tasks::spawn_named("http", http::serve(listener, endpoints, shutdown));
    Ok(addr)
}

fn try_main(cli: Cli) -> Result<error::ExitCode, Error> {
    let runtime = match cli.command {
        // The reader decodes while the applier waits on the target: two
        // workers let both use a core.
        Command::Run | Command::Backfill(_) | Command::Demo(_) => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
        }
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    }
    .map_err(Error::Runtime)?;
    if let Command::Demo(args) = &cli.command {
        // The demo narrates; its log shows warnings unless asked for more.
        walshift::telemetry::init(
            Some(cli.log_level.as_deref().unwrap_or("warn")),
            LogFormat::Human,
        );
        let options = DemoOptions { duration: Duration::from_secs(args.duration_secs) };
        return runtime.block_on(async { demo::run(options, shutdown::on_signals()).await });
    }
    let cfg = load_config(&cli)?;
    let filter = cli.log_level.as_deref().unwrap_or(&cfg.log.level);
    walshift::telemetry::init(Some(filter), cfg.log.format);
    runtime.block_on(async move {
        match &cli.command {
            Command::Setup(args) if args.print_owner_sql => {
                commands::setup::print_owner_sql(&cfg, &mut std::io::stdout().lock()).await?;
                Ok(error::ExitCode::Success)
            }
            Command::Setup(_) => {
                let report = commands::setup::run(&cfg).await?;
                let word = |o: Outcome| match o {
                    Outcome::Created => "created",
                    Outcome::Existed => "exists",
                };
                println!("publication {}: {}", cfg.source.publication, word(report.publication));
                println!("replication slot {}: {}", cfg.source.slot, word(report.slot));
                println!(
                    "state schema {}: {}",
                    walshift::pg::migrate::STATE_SCHEMA,
                    if report.migrations_applied > 0 { "migrated" } else { "up to date" }
                );
                println!("setup complete for migration {}", cfg.migration_name);
                Ok(error::ExitCode::Success)
            }
            Command::Run => {
                let shutdown = shutdown::on_signals();
                // SIGHUP and file changes reload [traffic] and [cutover].
                let text = std::fs::read_to_string(&cli.config).unwrap_or_default();
                let (settings_tx, settings) =
                    tokio::sync::watch::channel(Arc::new(cfg.reloadable()));
                let report = Arc::new(std::sync::Mutex::new(ReloadReport::default()));
                let reloader =
                    Reloader::new(cli.config.clone(), text, settings_tx, Arc::clone(&report));
                let _reload =
                    walshift::runtime::tasks::spawn_named("reload", reloader.run(shutdown.clone()));
                let board = Arc::new(Board::new(report));
                let lag = Arc::new(Lag::default());
                let mut live = LiveStatus::new(cfg.clone(), Arc::clone(&lag));
                if cfg.redis.url.is_some() {
                    live = live.with_controller(Arc::clone(&board));
                }
                let addr = serve_http(
                    &cfg,
                    Some(Arc::new(live)),
                    Some(Arc::clone(&lag)),
                    shutdown.clone(),
                )
                .await?;
                let options = RunOptions { lag, http_addr: Some(addr), ..RunOptions::default() };
                let summary =
                    walshift::controller::leader::run(&cfg, settings, board, options, shutdown)
                        .await?;
                tracing::info!(
                    transactions = summary.applied.transactions,
                    changes = summary.applied.changes,
                    commits = summary.applied.commits,
                    reconnects = summary.reconnects,
                    strict_replays = summary.strict_replays,
                    "run stopped"
                );
                Ok(error::ExitCode::Success)
            }
            Command::Backfill(args) => {
                let shutdown = shutdown::on_signals();
                serve_http(&cfg, None, None, shutdown.clone()).await?;
                let (summary, tables) =
                    commands::backfill::run(&cfg, args.tables.clone(), args.restart, shutdown)
                        .await?;
                for t in &tables {
                    match t.elapsed {
                        Some(e) if t.complete => {
                            let secs = e.as_secs_f64();
                            println!(
                                "backfilled {} from {}: {} rows in {secs:.1} s ({:.0} rows/s)",
                                t.target,
                                t.source,
                                t.rows,
                                t.rows as f64 / secs.max(1e-3)
                            );
                        }
                        _ if t.complete => {
                            println!("backfilled {} from {}: {} rows", t.target, t.source, t.rows);
                        }
                        _ => println!(
                            "not complete: {} from {}: {} rows so far",
                            t.target, t.source, t.rows
                        ),
                    }
                }
                tracing::info!(
                    transactions = summary.applied.transactions,
                    changes = summary.applied.changes,
                    "streamed while backfilling"
                );
                if summary.backfilled {
                    Ok(error::ExitCode::Success)
                } else {
                    Ok(error::ExitCode::Interrupted)
                }
            }
            Command::Verify(args) => {
                let shutdown = shutdown::on_signals();
                let outcome =
                    commands::verify::run(&cfg, &args.tables, args.repair, shutdown).await?;
                let mut stdout = std::io::stdout();
                if args.json {
                    let text = serde_json::to_string_pretty(&outcome)
                        .map_err(|e| Error::Internal(format!("cannot render the report: {e}")))?;
                    println!("{text}");
                } else {
                    commands::verify::render(&outcome, &mut stdout).map_err(Error::Output)?;
                }
                Ok(match outcome.result {
                    _ if !outcome.complete => error::ExitCode::Interrupted,
                    walshift::state::verify::PassResult::Clean => error::ExitCode::Success,
                    _ => error::ExitCode::Failure,
                })
            }
            Command::Status(args) if args.watch => {
                let mut shutdown = shutdown::on_signals();
                let tty = std::io::stdout().is_terminal();
                loop {
                    let status = commands::status::query(&cfg).await?;
                    let mut frame = Vec::new();
                    commands::status::render(&status, &mut frame).map_err(Error::Output)?;
                    let mut stdout = std::io::stdout();
                    if tty {
                        // Clear the screen and draw at the top: refreshes in place.
                        stdout.write_all(b"\x1b[2J\x1b[H").map_err(Error::Output)?;
                    }
                    stdout.write_all(&frame).map_err(Error::Output)?;
                    stdout.flush().map_err(Error::Output)?;
                    tokio::select! {
                        () = tokio::time::sleep(WATCH_INTERVAL) => {}
                        () = shutdown.wait() => return Ok(error::ExitCode::Success),
                    }
                }
            }
            Command::Status(args) => {
                let status = commands::status::query(&cfg).await?;
                let mut stdout = std::io::stdout();
                if args.json {
                    let text = serde_json::to_string(&status)
                        .map_err(|e| Error::Precondition(format!("cannot render status: {e}")))?;
                    println!("{text}");
                } else {
                    commands::status::render(&status, &mut stdout).map_err(Error::Output)?;
                }
                Ok(error::ExitCode::Success)
            }
            Command::Teardown(args) => {
                let mut stdout = std::io::stdout();
                commands::teardown::run(&cfg, args.yes, args.drop_fence, &mut stdout).await?;
                Ok(error::ExitCode::Success)
            }
            Command::Tail(args) => {
                let shutdown = shutdown::on_signals();
                let mut stdout = std::io::stdout();
                let (end, summary) = commands::tail::run(&cfg, args, shutdown, &mut stdout).await?;
                tracing::info!(
                    rows = summary.rows,
                    transactions = summary.transactions,
                    reconnects = summary.reconnects,
                    "tail stopped"
                );
                // Like pg_recvlogical, a signal is the normal way to stop tail.
                tracing::debug!(?end, "tail ended");
                Ok(error::ExitCode::Success)
            }
            Command::Resume => {
                let answer =
                    commands::control::ask_leader(&cfg, "resume", &serde_json::json!({})).await?;
                println!("{answer}");
                Ok(error::ExitCode::Success)
            }
            Command::Rollback(args) => {
                let answer = commands::control::ask_leader(
                    &cfg,
                    "rollback",
                    &serde_json::json!({
                        "reason": args.reason,
                        "abandon_new_writes": args.abandon_new_writes,
                    }),
                )
                .await?;
                println!("{answer}");
                Ok(error::ExitCode::Success)
            }
            Command::Cutover(args) => {
                let mut stdout = std::io::stdout();
                commands::control::cutover(&cfg, args.dry_run, &mut stdout).await?;
                Ok(error::ExitCode::Success)
            }
            Command::History(args) => {
                let mut stdout = std::io::stdout();
                commands::control::history(&cfg, args.limit, args.json, &mut stdout).await?;
                Ok(error::ExitCode::Success)
            }
            Command::Traffic(TrafficCommand::Route { key }) => {
                let mut stdout = std::io::stdout();
                commands::control::route(&cfg, key, &mut stdout).await?;
                Ok(error::ExitCode::Success)
            }
            Command::Traffic(TrafficCommand::Watch) => {
                let shutdown = shutdown::on_signals();
                let mut stdout = std::io::stdout();
                commands::control::watch(&cfg, shutdown, &mut stdout).await?;
                Ok(error::ExitCode::Success)
            }
            Command::Demo(_) => Ok(error::ExitCode::Success),
        }
    })
}
