//! walshift's state schema on the target (`walshift.*`): every read and
//! write of it goes through this module, so what is stored, and in which
//! transaction, can be checked in one place.
//!
//! | table | written | by |
//! |---|---|---|
//! | `schema_migrations` | `setup`; `run` (also `verify`, `backfill`) upgrading an older schema in place | [`schema`] |
//! | `migrations` | `setup` | [`schema`] |
//! | `progress` | every apply commit, same transaction as its rows | [`progress`] |
//! | `backfill` | every backfill chunk, same transaction as its rows | [`backfill`] |
//! | `verify_tables`, `verify_differences` | each verification chunk and pass | [`verify`] |
//! | `instances` | each start of `walshift run` (where its `/status` answers) | [`instance`] |
//! | `cutover_attempts` | each step of a write cutover | [`cutover`] |
//! | `controller`, `audit`, `commands` | the cutover controller's decisions, its audit trail, operator commands | [`controller`] |
//!
//! The schema itself is created and upgraded by [`schema`] from the
//! append-only files under `sql/`; every command first checks its recorded
//! version and checksums ([`schema::check`]).

pub mod backfill;
pub mod controller;
pub mod cutover;
pub mod instance;
pub mod progress;
pub mod schema;
pub mod verify;
