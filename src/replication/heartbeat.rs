//! Heartbeats: every `[source] heartbeat_interval_ms`, a transactional
//! logical message written into the source WAL
//! (`pg_logical_emit_message(true, 'walshift', 'heartbeat')`), read back by
//! the stream like any transaction. It keeps [`Lag`] honest on an idle
//! source (see [`crate::lag`]), moves the slot past WAL that holds nothing
//! for the mapped tables (so it does not pin WAL), and, as a side effect of
//! the same query, reads the source's clock, WAL end and the slot's health.
//! The figures are published as metrics every [`PUBLISH_INTERVAL`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::Client;
use tokio_postgres::types::PgLsn;

use crate::config::ValidatedConfig;
use crate::lag::{Lag, SlotHealth};
use crate::lsn::Lsn;
use crate::pg::client::{self, SessionLimits};
use crate::runtime::shutdown::Shutdown;
use crate::telemetry::metrics as m;

/// How often the lag metrics are refreshed between heartbeats.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// Interval of the lag history samples (the status page's chart).
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Longest back-off between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

const HEARTBEAT: &str = "select pg_logical_emit_message(true, 'walshift', 'heartbeat'), \
     extract(epoch from clock_timestamp())::float8, \
     s.retained, s.wal_status, s.safe_wal_size \
     from (select 1) as one left join (select (pg_current_wal_lsn() - restart_lsn)::bigint \
         as retained, wal_status, safe_wal_size from pg_replication_slots \
         where slot_name = $1) as s on true";

/// Writes heartbeats and publishes the lag metrics until `shutdown`.
pub async fn run(cfg: ValidatedConfig, lag: Arc<Lag>, mut shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let connected = client::connect(&cfg.source.url, "heartbeat", SessionLimits::ADMIN).await;
        match connected {
            Ok(source) => {
                backoff = Duration::from_millis(500);
                match beat(&cfg, &source, &lag, &mut shutdown).await {
                    Ok(()) => return,
                    Err(e) => {
                        let error = crate::pg::client::server_message(&e);
                        tracing::warn!(error = %error, "heartbeat failed; reconnecting");
                        crate::telemetry::recent::record("heartbeat", "transient", error);
                    }
                }
            }
            Err(e) => {
                let error = crate::error::display_chain(&e);
                tracing::warn!(error = %error, "heartbeat cannot connect");
                crate::telemetry::recent::record("heartbeat", "transient", error);
            }
        }
        publish(&lag);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.wait() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn beat(
    cfg: &ValidatedConfig,
    source: &Client,
    lag: &Lag,
    shutdown: &mut Shutdown,
) -> Result<(), tokio_postgres::Error> {
    let statement = source.prepare(HEARTBEAT).await?;
    let mut heartbeat = tokio::time::interval(cfg.source.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut publish_tick = tokio::time::interval(PUBLISH_INTERVAL);
    let mut sample_tick = tokio::time::interval(SAMPLE_INTERVAL);
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                let before = Instant::now();
                let local_before = SystemTime::now();
                let row = source.query_one(&statement, &[&cfg.source.slot]).await?;
                let local = local_before + before.elapsed() / 2;
                let at: PgLsn = row.try_get(0)?;
                let epoch: f64 = row.try_get(1)?;
                let source_time = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(epoch.max(0.0));
                lag.heartbeat_written(Lsn(u64::from(at)), source_time, local);
                lag.set_slot(SlotHealth {
                    retained_bytes: row.try_get(2)?,
                    wal_status: row.try_get(3)?,
                    safe_wal_size: row.try_get(4)?,
                });
            }
            _ = publish_tick.tick() => publish(lag),
            _ = sample_tick.tick() => lag.sample(),
            () = shutdown.wait() => return Ok(()),
        }
    }
}

/// Publishes the lag and slot gauges (also right before each scrape).
pub fn publish(lag: &Lag) {
    match lag.seconds() {
        Some(s) => metrics::gauge!(m::REPLICATION_LAG_SECONDS).set(s.as_secs_f64()),
        // Unknown: NaN, so neither "0" nor a stale figure passes for a reading.
        None => metrics::gauge!(m::REPLICATION_LAG_SECONDS).set(f64::NAN),
    }
    if let Some(b) = lag.bytes() {
        metrics::gauge!(m::REPLICATION_LAG_BYTES).set(b as f64);
    }
    if let Some(t) = lag.heartbeat_applied() {
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(m::HEARTBEAT_LAST_APPLIED).set(secs);
    }
    let slot = lag.slot();
    if let Some(r) = slot.retained_bytes {
        metrics::gauge!(m::SLOT_RETAINED_WAL_BYTES).set(r as f64);
    }
    if let Some(s) = slot.safe_wal_size {
        metrics::gauge!(m::SLOT_SAFE_WAL_SIZE_BYTES).set(s as f64);
    }
}
