//! One module per CLI command. Each takes a validated config and returns
//! `Result<_, crate::error::Error>`; `main.rs` maps errors to exit codes.

pub mod backfill;
pub mod control;
pub mod run;
pub mod setup;
pub mod status;
pub mod tail;
pub mod teardown;
pub mod verify;
