//! walshift integration tests, compiled into one binary (`autotests = false`).
//!
//! They run against real PostgreSQL and Redis servers that [`support`] starts on
//! loopback ports and always removes again; see its module doc.

mod alerts;
mod apply;
mod apply_crash;
mod apply_edge;
mod backfill;
mod backfill_crash;
mod connect;
mod controller;
mod cutover;
mod demo;
mod faults;
mod harness;
mod identifiers;
mod large_data;
mod observability;
mod page;
mod preconditions;
mod security;
mod setup;
mod state_schema;
mod support;
mod tail;
mod verify;
