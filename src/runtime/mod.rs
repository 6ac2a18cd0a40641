//! Runtime plumbing shared by every command: named tasks and shutdown.

pub mod pipeline;
pub mod reload;
pub mod shutdown;
pub mod tasks;
