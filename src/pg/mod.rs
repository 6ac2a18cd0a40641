//! Ordinary SQL connections to the source and target, and everything that
//! assembles SQL text.
//!
//! - [`conninfo`]: libpq-compatible connection strings, parsed once.
//! - [`tls`]: rustls client configuration for every `sslmode`.
//! - [`client`]: tokio-postgres clients with a role-tagged `application_name`.
//! - [`sql`]: identifier quoting; the only place SQL identifiers are spliced.
//! - [`catalog`]: introspection of the source (tables, keys, slots, publications).
//! - [`migrate`]: walshift's own state schema on the target.

pub mod catalog;
pub mod client;
pub mod conninfo;
pub mod migrate;
pub mod secret;
pub mod sql;
pub mod tls;
