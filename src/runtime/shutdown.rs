//! A cloneable shutdown token over a `watch` channel.
//!
//! Long-running loops `select!` on [`Shutdown::wait`] next to their I/O, so a
//! Ctrl-C or SIGTERM ends them at a point where their progress is consistent.

use tokio::sync::watch;

/// Sends the shutdown signal.
#[derive(Debug)]
pub struct ShutdownSender(watch::Sender<bool>);

/// Observes the shutdown signal; clone one per task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected sender/receiver pair.
pub fn channel() -> (ShutdownSender, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownSender(tx), Shutdown(rx))
}

impl ShutdownSender {
    /// Asks every holder of a [`Shutdown`] to stop.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Whether shutdown was requested.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown is requested (at once if it already was, and
    /// also if the sender is gone). Cancel-safe.
    pub async fn wait(&mut self) {
        // An error means the sender was dropped: treat as shutdown.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Returns a [`Shutdown`] triggered by the first SIGINT or SIGTERM. The
/// handlers are installed before it returns (inside a runtime), so a signal
/// arriving right after cannot take its default action and kill the process
/// mid-way.
pub fn on_signals() -> Shutdown {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = channel();
    let handlers = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
    crate::runtime::tasks::spawn_named("signals", async move {
        match handlers {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("shutdown requested");
        tx.trigger();
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_resolves_after_trigger_and_when_sender_dropped() {
        let (tx, mut rx) = channel();
        assert!(!rx.is_triggered());
        tx.trigger();
        rx.wait().await;
        assert!(rx.is_triggered());

        let (tx, mut rx) = channel();
        drop(tx);
        rx.wait().await;
    }
}
