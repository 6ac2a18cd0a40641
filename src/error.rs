//! The top-level error and the process exit codes.
//!
//! Each layer has its own error type; this one wraps them and decides the
//! exit code: `2` for anything the operator must fix in the input or the
//! environment before retrying (bad config, failed set-up checks, missing
//! slot), `1` for runtime failures, `130` when interrupted.

use std::fmt;

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

/// One failed precondition: what was checked and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    /// The config key or object concerned, e.g. `tables[0].source` or `source`.
    pub subject: String,
    /// What is wrong and, when the operator can act, how to fix it.
    pub problem: String,
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.problem)
    }
}

/// Every failed precondition of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailures(pub Vec<CheckFailure>);

impl fmt::Display for CheckFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} check(s) failed, nothing was created or changed", self.0.len())?;
        for failure in &self.0 {
            write!(f, "\n  - {failure}")?;
        }
        Ok(())
    }
}

/// The top-level error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Set-up checks failed.
    #[error("{0}")]
    Checks(CheckFailures),
    /// A precondition for the command is not met (e.g. the slot is missing).
    #[error("{0}")]
    Precondition(String),
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
}

impl Error {
    /// Wraps a SQL error with what walshift was doing.
    pub fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let context = context.into();
        move |source| Error::Sql { context, source }
    }

    /// The exit code this error maps to.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config(_)
            | Error::Checks(_)
            | Error::Precondition(_)
            | Error::ConfirmationRequired => ExitCode::BadInput,
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
