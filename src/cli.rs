//! The command line: `walshift [--config FILE] <command>`.
//!
//! Each doc comment here is the `--help` text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::lsn::Lsn;

/// Zero-downtime Postgres table migrations through logical replication.
#[derive(Debug, Parser)]
#[command(name = "walshift", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(short, long, global = true, env = "WALSHIFT_CONFIG", default_value = "walshift.toml")]
    pub config: PathBuf,

    /// Log filter, e.g. `info` or `walshift=debug` (overrides `[log] level`).
    #[arg(long, global = true, env = "WALSHIFT_LOG")]
    pub log_level: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The operations.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the source and create the publication, the replication slot and
    /// walshift's state schema on the target. Idempotent; creates nothing if
    /// a check fails.
    Setup(SetupArgs),
    /// Drop the replication slot, the publication and the state schema.
    /// Without --yes, only lists what would be dropped.
    Teardown(TeardownArgs),
    /// Stream changes from the slot into the shadow tables until stopped
    /// (SIGINT/SIGTERM), backfilling every table not yet copied. Resumes
    /// from the positions stored in the target.
    Run,
    /// Copy the rows that existed before the slot (while streaming, as
    /// `run` does) in the foreground, with a progress bar on a terminal;
    /// exits once the tables are copied.
    Backfill(BackfillArgs),
    /// Compare transform(source) with the target, row for row, in a full
    /// pass (read-only; works while `run` streams). Exits 0 when everything
    /// matches, 1 when differences remain.
    Verify(VerifyArgs),
    /// Show where the migration stands: applied position, slot, backfill
    /// progress and the last verification per table.
    Status(StatusArgs),
    /// Print decoded changes from the slot as JSON lines.
    Tail(TailArgs),
    /// Re-arm the cutover controller after a rollback, or resume a paused
    /// shift. Asks the running `walshift run` leader and prints its answer;
    /// refused (exit 2) when none runs.
    Resume,
    /// Move all read traffic back to the old tables at once and keep it
    /// there until `resume` (or a new `[traffic] read_new_percent`). Asks
    /// the running leader and prints its answer.
    Rollback(RollbackArgs),
    /// Move writes to the new tables (the write cutover): announce, fence
    /// the old tables, drain to a barrier, check, move sequences, flip.
    /// Asks the running leader and prints each step as it happens; allowed
    /// once reads are 100 % on new and every gate passes (refused, exit 2,
    /// otherwise); exit 1 when the attempt aborted (everything as before).
    Cutover(CutoverArgs),
    /// Print the controller's audit trail: every decision and state change
    /// with its reason.
    History(HistoryArgs),
    /// Inspect the published traffic split.
    #[command(subcommand)]
    Traffic(TrafficCommand),
    /// Run the pipeline on a throwaway local PostgreSQL cluster with a write
    /// workload, then remove it. Needs no config file.
    Demo(DemoArgs),
}

/// Arguments of `demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// The least time, in seconds, the write workload runs before reads
    /// start moving to the new tables (it runs until the walk-through ends).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration_secs: u64,
}

/// Arguments of `setup`.
#[derive(Debug, Clone, clap::Args)]
pub struct SetupArgs {
    /// Print, instead of setting up, the SQL the owner of the old tables
    /// runs so that walshift's source role needs no ownership: the
    /// publication, SELECT grants and the write cutover's fence functions
    /// (docs/security.md). Creates nothing.
    #[arg(long)]
    pub print_owner_sql: bool,
}

/// Arguments of `backfill`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackfillArgs {
    /// Only this table (source or target name; repeatable). Default: every
    /// mapped table not yet copied.
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,

    /// Copy the --table again from its first key, overwriting the rows the
    /// target has. `walshift run` must be stopped.
    #[arg(long, requires = "tables")]
    pub restart: bool,
}

/// Arguments of `verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Only this table (source or target name; repeatable). Default: every
    /// mapped table.
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,

    /// Print one JSON document (see docs/verify.md) instead of text.
    #[arg(long)]
    pub json: bool,

    /// Re-copy the differing keys from the source, then verify them again.
    /// Refused while `walshift run` streams (it repairs by itself with
    /// `[verify] repair = true`).
    #[arg(long)]
    pub repair: bool,
}

/// Arguments of `status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// Refresh every 2 s (in place on a terminal) until interrupted.
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
}

/// Arguments of `rollback`.
#[derive(Debug, Clone, clap::Args)]
pub struct RollbackArgs {
    /// Why (recorded in the audit trail).
    #[arg(long)]
    pub reason: Option<String>,

    /// After the write cutover only: roll back anyway, although writes made
    /// to the new tables since the cutover are not in the old tables (the
    /// old side never sees them). Drops the fence triggers.
    #[arg(long)]
    pub abandon_new_writes: bool,
}

/// Arguments of `cutover`.
#[derive(Debug, Clone, clap::Args)]
pub struct CutoverArgs {
    /// Print every step with the current gate values, the tables it would
    /// lock and the sequences it would move; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `history`.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// Only the newest N entries.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub limit: i64,
}

/// `traffic` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum TrafficCommand {
    /// Print the side (old or new) a routing key goes to under the
    /// published weights, with its bucket (see docs/traffic.md).
    Route {
        /// The routing key (a user or account id).
        key: String,
    },
    /// Print every published decision as it arrives (JSON lines), starting
    /// with the current one, until interrupted.
    Watch,
}

/// Arguments of `teardown`.
#[derive(Debug, clap::Args)]
pub struct TeardownArgs {
    /// Really drop (otherwise list what would be dropped and exit non-zero).
    #[arg(long)]
    pub yes: bool,

    /// Also drop the write cutover's fence triggers from the old tables
    /// (they then accept writes again). The old tables themselves are
    /// never dropped.
    #[arg(long)]
    pub drop_fence: bool,
}

/// Arguments of `tail`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Also print begin, commit, relation, truncate and logical-message events.
    #[arg(long)]
    pub all: bool,

    /// Do not acknowledge anything: the slot does not advance, so the same
    /// changes can be read again.
    #[arg(long)]
    pub no_ack: bool,

    /// Stop once this WAL position is reached (like `pg_recvlogical --endpos`):
    /// transactions whose commit starts at or after it are not printed.
    #[arg(long, value_name = "LSN")]
    pub endpos: Option<Lsn>,

    /// Start from this position instead of the slot's confirmed position
    /// (the server never goes back before the confirmed position).
    #[arg(long, value_name = "LSN")]
    pub start_lsn: Option<Lsn>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn restart_needs_a_table() {
        assert!(Cli::try_parse_from(["walshift", "backfill", "--restart"]).is_err());
        let cli = Cli::try_parse_from([
            "walshift",
            "backfill",
            "--table",
            "public.a",
            "--table",
            "b",
            "--restart",
        ])
        .unwrap();
        let Command::Backfill(args) = cli.command else { panic!("expected backfill") };
        assert_eq!(args.tables, ["public.a", "b"]);
        assert!(args.restart);
    }

    #[test]
    fn parses_tail_flags() {
        let cli = Cli::try_parse_from([
            "walshift",
            "-c",
            "x.toml",
            "tail",
            "--all",
            "--no-ack",
            "--endpos",
            "0/16B3748",
        ])
        .unwrap();
        let Command::Tail(args) = cli.command else { panic!("expected tail") };
        assert!(args.all && args.no_ack);
        assert_eq!(args.endpos, Some("0/16B3748".parse().unwrap()));
        assert!(Cli::try_parse_from(["walshift", "tail", "--endpos", "nope"]).is_err());
    }
}
