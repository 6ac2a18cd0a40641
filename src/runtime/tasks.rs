//! Every spawned task goes through [`spawn_named`], so it carries a `task`
//! span in logs (`clippy.toml` forbids a bare `tokio::spawn`).

use std::future::Future;

use tokio::task::JoinHandle;
use tracing::Instrument;

/// Spawns `future` on the current runtime inside a `task = name` span.
#[allow(clippy::disallowed_methods)]
pub fn spawn_named<F>(name: &'static str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.instrument(tracing::info_span!("task", task = name)))
}
