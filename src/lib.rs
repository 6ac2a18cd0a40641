//! walshift: zero-downtime Postgres table migrations.
//!
//! A logical-replication consumer that keeps a transformed copy of live tables
//! (the *shadow schema*) in sync with the source, backfills pre-existing rows,
//! verifies the copy and moves traffic in gated steps.
//!
//! ```text
//!  source ──WAL──▶ slot ──▶ replication::wire ──▶ replication::protocol (XLogData, keepalive)
//!                                                   │
//!                                                   ▼
//!                           replication::pgoutput (decode) ──▶ relation_cache
//!                                                   │
//!                                                   ▼
//!                           commands::tail (JSON lines)   [apply, backfill: later]
//! ```
//!
//! Layout: `pg` holds ordinary SQL connections and everything that assembles
//! SQL; `replication` the replication-protocol client and the pgoutput
//! decoder; `commands` one module per CLI command; `config` the validated
//! configuration every command starts from.

pub mod apply;
pub mod change;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod error;
pub mod lsn;
pub mod pg;
pub mod replication;
pub mod runtime;
pub mod telemetry;
pub mod transform;
