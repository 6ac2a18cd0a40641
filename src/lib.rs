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
//!                           replication::reader (project through transform::Projection)
//!                                                   │  Vec<change::StreamItem>, bounded
//!                                                   ▼
//!                           apply (coalesce, multi-row statements, checkpoint) ──▶ target
//!                             ▲  between its transactions: backfill chunks  │
//!                             │  (keyset reads at a snapshot ⊇ applied)     │
//!                           backfill ◀── source                             │
//!                                                   │  durable LSN ──▶ flush LSN to the slot
//!                           commands::tail (JSON lines)
//!
//!  verify (periodic passes, repairs through apply::between) ──▶ state::verify
//!  lag (one computation) ─┐
//!  state (backfill, verify)┼─▶ controller::gates ─▶ controller::machine ─▶ state::controller
//!  config reload ─────────┘        (leader only: controller::lease)          │ then
//!                                                                      traffic::redis (Lua CAS)
//! ```
//!
//! Layout: `pg` holds ordinary SQL connections and catalog queries;
//! `replication` the replication-protocol client, the pgoutput decoder and
//! the reader task; `change` the types passed from reader to applier;
//! `transform` the compiled mapping; `apply` the applier and its statements;
//! `backfill` the keyset copy the applier runs between its transactions;
//! `commands` one module per CLI command; `config` the validated
//! configuration every command starts from; `verify` the copy's
//! verification; `controller` the cutover controller (gates, state machine,
//! leader lease) and `traffic` what it publishes (decision JSON, Redis
//! scripts, the bucketing rule); `state` every read and write of the state
//! schema. See `docs/apply.md`, `docs/backfill.md`, `docs/verify.md`,
//! `docs/cutover.md` and `docs/traffic.md`.

pub mod apply;
pub mod backfill;
pub mod change;
pub mod checks;
pub mod cli;
pub mod commands;
pub mod config;
pub mod controller;
pub mod cutover;
pub mod demo;
pub mod error;
pub mod lag;
pub mod lsn;
pub mod pg;
pub mod replication;
pub mod runtime;
pub mod state;
pub mod telemetry;
pub mod traffic;
pub mod transform;
pub mod verify;
