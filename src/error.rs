//! The top-level error and the process exit codes.
//!
//! Each layer has its own error type; this one wraps them and decides the
//! exit code: `2` for anything the operator must fix in the input or the
//! environment before retrying (bad config, failed set-up checks, missing
//! slot), `1` for runtime failures (including internal ones: a panicked
//! task), `130` when interrupted.

use crate::config::ConfigError;
use crate::pg::client::ConnectError;
use crate::replication::slot::SlotError;
use crate::replication::stream::StreamError;
use crate::replication::wire::WireError;

/// Process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything went fine.
    Success = 0,
    /// A runtime failure.
    Failure = 1,
    /// Bad input or a failed precondition: nothing was changed.
    BadInput = 2,
    /// Stopped by SIGINT/SIGTERM.
    Interrupted = 130,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

pub use crate::checks::{CheckFailure, CheckFailures};

/// The top-level error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A mapping could not be compiled.
    #[error(transparent)]
    Plan(#[from] crate::transform::plan::PlanError),
    /// Set-up checks failed.
    #[error("{0}")]
    Checks(CheckFailures),
    /// A precondition for the command is not met (e.g. the slot is missing).
    #[error("{0}")]
    Precondition(String),
    /// The replication slot of a migration in progress was dropped or
    /// invalidated behind walshift's back: the source no longer keeps the
    /// changes walshift has yet to apply, so the shadow tables cannot catch
    /// up from it. Never answered by making a new slot (that would skip
    /// changes silently).
    #[error(
        "replication slot {slot} {what}; walshift had applied the source's changes through \
         {applied}, and the source no longer keeps what came after, so the shadow tables \
         cannot be brought up to date from it (nothing was changed). Start the migration \
         over, which copies every row again (re-backfill): `walshift teardown --yes`, empty \
         the shadow tables, then `walshift setup` and `walshift run` (docs/operations.md, \
         \"Recovering from a lost slot\")"
    )]
    HistoryLost {
        /// The slot.
        slot: String,
        /// What happened to it ("no longer exists", "was invalidated: …").
        what: String,
        /// The migration's applied position.
        applied: crate::lsn::Lsn,
    },
    /// walshift's state schema on the target is newer than this walshift or
    /// was migrated from other SQL (a refusal, exit 2), or could not be read
    /// or upgraded.
    #[error(transparent)]
    StateSchema(#[from] crate::state::schema::SchemaError),
    /// The server sent something that breaks the replication protocol's
    /// rules (a change outside a transaction, an unknown relation, ...).
    #[error("replication protocol violation: {0}")]
    Protocol(String),
    /// `teardown` was run without `--yes`.
    #[error("nothing dropped: re-run with --yes to drop the objects listed above")]
    ConfirmationRequired,
    /// A SQL connection could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A SQL statement failed.
    #[error("{context}: {source}")]
    Sql {
        /// What walshift was doing.
        context: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The replication connection failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A replication command failed.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The replication stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Applying changes to the target failed.
    #[error(transparent)]
    Apply(#[from] crate::apply::ApplyError),
    /// Reading the change stream failed (drift, protocol).
    #[error(transparent)]
    Reader(#[from] crate::replication::reader::ReaderError),
    /// Writing output failed.
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The demo's throwaway cluster could not start.
    #[error(transparent)]
    DemoCluster(#[from] crate::demo::cluster::ClusterError),
    /// A command was carried out and failed (exit 1), e.g. a write cutover
    /// that aborted.
    #[error("{0}")]
    Failed(String),
    /// An internal failure: a bug in walshift, not in its input (e.g. a task
    /// panicked).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Wraps a SQL error with what walshift was doing.
    pub fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let context = context.into();
        move |source| Error::Sql { context, source }
    }

    /// An [`Error::Internal`] for a task that did not return: its panic
    /// message, or that it was cancelled.
    pub fn task_failed(what: &str, join: tokio::task::JoinError) -> Error {
        let how = if join.is_cancelled() {
            "was cancelled".to_owned()
        } else {
            match join.try_into_panic() {
                Ok(payload) => {
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a non-string payload".to_owned());
                    format!("panicked: {message}")
                }
                Err(join) => format!("failed: {join}"),
            }
        };
        Error::Internal(format!("the {what} task {how} (a bug: please report it)"))
    }

    /// The exit code this error maps to.
    pub fn exit_code(&self) -> ExitCode {
        use crate::demo::cluster::ClusterError;
        match self {
            Error::Plan(crate::transform::plan::PlanError::Checks(_)) => ExitCode::BadInput,
            Error::StateSchema(e) if e.is_refusal() => ExitCode::BadInput,
            Error::Config(_)
            | Error::Checks(_)
            | Error::Precondition(_)
            | Error::ConfirmationRequired
            | Error::DemoCluster(ClusterError::NoBinaries | ClusterError::NoPostgresUser) => {
                ExitCode::BadInput
            }
            _ => ExitCode::Failure,
        }
    }
}

/// Renders `err` and its whole cause chain on one line, skipping causes
/// whose text the parent already includes.
pub fn display_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_are_failures() {
        let err = Error::Internal("the reader task panicked: boom".into());
        assert_eq!(err.exit_code(), ExitCode::Failure);
        assert_eq!(err.to_string(), "internal error: the reader task panicked: boom");
    }

    #[test]
    fn demo_cluster_errors_are_bad_input_only_without_binaries_or_user() {
        use crate::demo::cluster::ClusterError;
        assert_eq!(Error::from(ClusterError::NoBinaries).exit_code(), ExitCode::BadInput);
        assert_eq!(Error::from(ClusterError::NoPostgresUser).exit_code(), ExitCode::BadInput);
        let step = ClusterError::Step { step: "initdb", detail: "no space left on device".into() };
        assert_eq!(Error::from(step).exit_code(), ExitCode::Failure);
    }

    #[tokio::test]
    async fn task_failed_carries_the_panic_message() {
        let panicked = crate::runtime::tasks::spawn_named("test-panic", async {
            panic!("boom {}", 42);
        });
        let err = Error::task_failed("applier", panicked.await.unwrap_err());
        assert_eq!(err.exit_code(), ExitCode::Failure);
        let text = err.to_string();
        assert!(text.contains("the applier task panicked: boom 42"), "{text}");

        let literal = crate::runtime::tasks::spawn_named("test-panic", async {
            panic!("literal");
        });
        let text = Error::task_failed("reader", literal.await.unwrap_err()).to_string();
        assert!(text.contains("the reader task panicked: literal"), "{text}");

        let pending =
            crate::runtime::tasks::spawn_named("test-pending", std::future::pending::<()>());
        pending.abort();
        let text = Error::task_failed("reader", pending.await.unwrap_err()).to_string();
        assert!(text.contains("the reader task was cancelled"), "{text}");
    }
}
