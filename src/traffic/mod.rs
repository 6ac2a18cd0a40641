//! Read-traffic decisions: how requests are split between the old and the
//! new tables (`bucket`).

pub mod bucket;
pub mod decision;
pub mod redis;
