//! Ordinary SQL connections to the source and target, and everything that
//! assembles SQL text.
//!
//! - [`conninfo`]: libpq-compatible connection strings, parsed once.
//! - [`tls`]: rustls client configuration for every `sslmode`.
//! - [`client`]: tokio-postgres clients with a role-tagged `application_name`.
//! - [`watchdog`]: fails an SQL session whose server stops answering.
//! - [`sql`]: identifier quoting; the only place SQL identifiers are spliced.
//! - [`catalog`]: introspection of the source (tables, keys, slots, publications).
//! - [`migrate`]: re-export of [`crate::state::schema`].

pub mod catalog;
pub mod client;
pub mod conninfo;
pub mod secret;
pub mod sql;
pub mod tls;
pub mod watchdog;

/// walshift's state schema migrations (moved to [`crate::state::schema`]).
pub use crate::state::schema as migrate;
