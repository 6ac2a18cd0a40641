//! Verification: is the target equal to `transform(source)`, row for row,
//! while writes continue? The algorithm and why it never reports a change in
//! flight are in `docs/verify.md`; in short:
//!
//! ```text
//!  full pass: key ranges of the source, cut by an index-only boundary read
//!    source: count(*), sum(hash(row(canon(expr::type), …)))  over (lo, hi]  ┐ at the
//!    target: count(*), sum(hash(row(canon(col), …)))         over (lo, hi]  ┘ same time
//!    equal ─▶ next range            differ ─▶ split into 16 by keys, re-hash,
//!                                             … ≤ 512 rows: fetch both, diff by key
//!  each difference: barrier into the source WAL ─▶ wait until applied past it
//!    ─▶ read the key on both sides again: the same difference, neither side
//!       changed, the stream did not touch the key ─▶ confirmed; gone ─▶ was in flight
//!  incremental pass: the keys the applier changed since the last pass, in
//!    batches of 1,000 keys, hashed the same way
//! ```
//!
//! Rows never cross the network for a matching chunk: each server hashes its
//! own rows. Tables whose mapping calls functions the source lacks are
//! verified by *shipping* the source rows' inputs to the target (the same
//! row source apply evaluates the mapping over).
//!
//! Module layout: [`compile`] builds each table's comparison
//! ([`crate::transform::compare`] holds its SQL), [`engine`] runs passes,
//! [`diff`] pairs rows by key, [`position`] writes barriers and waits for the
//! stream, [`dirty`] tracks the keys the stream changed, [`hook`] feeds it
//! from the applier and runs repairs between the applier's transactions,
//! [`repair`] re-copies keys at a checked snapshot, [`periodic`] is the loop
//! inside `walshift run`.

pub mod compile;
pub mod diff;
pub mod dirty;
pub mod engine;
pub mod hook;
pub mod periodic;
pub mod position;
pub mod repair;

pub use engine::{TableReport, Verifier, VerifyOptions};

/// Errors of verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A statement failed.
    #[error("verification: {context}: {}", crate::pg::client::server_message(source))]
    Sql {
        /// What it was doing.
        context: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A table's comparison cannot be built.
    #[error(transparent)]
    Compile(#[from] compile::CompileError),
    /// A repair failed.
    #[error(transparent)]
    Repair(#[from] repair::RepairError),
    /// A connection could not be opened.
    #[error("verification: {0}")]
    Connect(String),
}

impl VerifyError {
    /// Whether a reconnect and retry may fix it.
    pub fn is_transient(&self) -> bool {
        match self {
            VerifyError::Sql { source, .. } => {
                crate::pg::client::classify(source) == crate::pg::client::SqlErrorKind::Transient
            }
            VerifyError::Compile(_) => false,
            VerifyError::Connect(_) => true,
            VerifyError::Repair(e) => e.is_transient(),
        }
    }
}
