//! The controller's lease in Redis: one leader per migration. A standby
//! polls until the lease is free; the leader renews it every third of its
//! TTL and steps down when somebody else holds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::runtime::shutdown::{Shutdown, ShutdownSender};
use crate::traffic::redis::{Acquired, Renewed, TrafficRedis};

/// How often a standby tries to take the lease.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// The leader's view of its lease.
#[derive(Debug, Clone)]
pub struct LeaseView {
    /// The lease's value (`<token>:<instance>`): fences every publish.
    pub value: String,
    /// Last successful renewal.
    pub renewed_at: Instant,
    /// Lease lifetime.
    pub ttl: Duration,
    /// Why the last renewal failed, if it did.
    pub problem: Option<String>,
}

impl LeaseView {
    /// Whether the lease is certainly still ours (renewed within its TTL).
    pub fn held(&self) -> bool {
        self.renewed_at.elapsed() < self.ttl
    }
}

/// What a standby reports while it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Another instance holds the lease (its value).
    HeldBy(String),
    /// Redis did not answer.
    Unreachable(String),
}

/// Waits until this instance (`me`) holds the lease; `None` on shutdown.
/// `report` is called when what it waits for changes.
pub async fn acquire(
    redis: &TrafficRedis,
    me: &str,
    ttl: Duration,
    shutdown: &mut Shutdown,
    mut report: impl FnMut(&Waiting),
) -> Option<String> {
    let mut last: Option<Waiting> = None;
    loop {
        let now = match redis.acquire(me, ttl).await {
            Ok(Acquired::Held(value)) => return Some(value),
            Ok(Acquired::Taken(holder)) => Waiting::HeldBy(holder),
            Err(e) => Waiting::Unreachable(e.to_string()),
        };
        if last.as_ref() != Some(&now) {
            report(&now);
            last = Some(now);
        }
        tokio::select! {
            () = tokio::time::sleep(STANDBY_POLL.min(ttl / 3)) => {}
            () = shutdown.wait() => return None,
        }
    }
}

/// Renews the lease every third of its TTL until `stop`; triggers
/// `step_down` when somebody else holds it.
pub async fn keep(
    redis: TrafficRedis,
    view: watch::Sender<LeaseView>,
    step_down: Arc<ShutdownSender>,
    mut stop: Shutdown,
) {
    let (value, ttl) = {
        let v = view.borrow();
        (v.value.clone(), v.ttl)
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(ttl / 3) => {}
            () = stop.wait() => return,
        }
        match redis.renew(&value, ttl).await {
            Ok(Renewed::Held) => view.send_modify(|v| {
                v.renewed_at = Instant::now();
                v.problem = None;
            }),
            Ok(Renewed::Retaken) => {
                tracing::warn!("the lease had vanished from Redis (restarted empty?); taken again");
                view.send_modify(|v| {
                    v.renewed_at = Instant::now();
                    v.problem = None;
                });
            }
            Ok(Renewed::Lost(holder)) => {
                tracing::warn!(holder = %holder, "lost the controller lease; stepping down to standby");
                view.send_modify(|v| v.problem = Some(format!("lease lost to {holder}")));
                step_down.trigger();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the controller lease");
                view.send_modify(|v| v.problem = Some(e.to_string()));
            }
        }
    }
}
