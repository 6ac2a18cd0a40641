//! Deadline-based waiting instead of sleeps.
//!
//! A test never sleeps for "long enough": it polls a condition every [`POLL_INTERVAL`]
//! until it holds or the timeout passes, and a timeout panics with what was awaited,
//! where, and for how long. Deadlines use wall-clock time because the conditions are
//! about real servers; do not use these helpers under `tokio::time::pause()`.

use std::panic::Location;
use std::time::{Duration, Instant};

/// How often conditions are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What a polled condition returns: `bool` (done or not) or `Option<T>` (done with a value).
pub trait Ready {
    /// The value handed back once the condition holds.
    type Output;

    /// `Some` once the condition holds.
    fn ready(self) -> Option<Self::Output>;
}

impl Ready for bool {
    type Output = ();

    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Output = T;

    fn ready(self) -> Option<T> {
        self
    }
}

/// Polls `condition` until it is ready and returns its value; panics after `timeout`.
///
/// The condition runs once immediately and then every [`POLL_INTERVAL`]. It is an async
/// closure, so it can borrow from the test: `wait_until("slot active", T, async || …)`.
/// The panic names `what`, the elapsed time and the caller's location (this is a plain
/// `fn` returning a future so that `#[track_caller]` works).
#[track_caller]
pub fn wait_until<R, F>(
    what: &str,
    timeout: Duration,
    mut condition: F,
) -> impl Future<Output = R::Output> + use<R, F>
where
    R: Ready,
    F: AsyncFnMut() -> R,
{
    let caller = Location::caller();
    let what = what.to_owned();
    async move {
        let started = Instant::now();
        loop {
            if let Some(value) = condition().await.ready() {
                return value;
            }
            let elapsed = started.elapsed();
            if elapsed >= timeout {
                panic!("timed out after {elapsed:?} waiting for {what} (called at {caller})");
            }
            tokio::time::sleep(POLL_INTERVAL.min(timeout - elapsed)).await;
        }
    }
}

/// [`wait_until`] for synchronous conditions, blocking the calling thread between polls.
#[track_caller]
pub fn wait_until_blocking<R: Ready>(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> R,
) -> R::Output {
    let started = Instant::now();
    loop {
        if let Some(value) = condition().ready() {
            return value;
        }
        let elapsed = started.elapsed();
        if elapsed >= timeout {
            panic!(
                "timed out after {elapsed:?} waiting for {what} (called at {})",
                Location::caller()
            );
        }
        std::thread::sleep(POLL_INTERVAL.min(timeout - elapsed));
    }
}
