//! Every Prometheus metric walshift exports: names (with units), labels and
//! help texts in one place, and the exporter.
//!
//! Metrics are recorded through the `metrics` facade wherever the work
//! happens; they cost nothing until [`install`] sets up the exporter (the
//! `run` and `backfill` commands do, on `[metrics] listen`).

use std::net::SocketAddr;

use metrics::{Unit, describe_counter, describe_gauge};

/// Rows the backfill copied, per target table.
pub const BACKFILL_ROWS_COPIED: &str = "walshift_backfill_rows_copied_total";
/// Chunks the backfill committed, per target table.
pub const BACKFILL_CHUNKS: &str = "walshift_backfill_chunks_total";
/// Estimated rows of the source table (`pg_class.reltuples`), per target table.
pub const BACKFILL_ROWS_ESTIMATED: &str = "walshift_backfill_rows_estimated";
/// Copy rate over the last chunks, rows per second, per target table.
pub const BACKFILL_ROWS_PER_SECOND: &str = "walshift_backfill_rows_per_second";
/// Estimated seconds until the table's backfill completes.
pub const BACKFILL_ETA_SECONDS: &str = "walshift_backfill_eta_seconds";
/// 1 once the table's backfill is complete.
pub const BACKFILL_COMPLETE: &str = "walshift_backfill_complete";
/// 1 while the backfill waits for the stream (lag over the threshold).
pub const BACKFILL_PAUSED: &str = "walshift_backfill_paused";
/// Times the backfill paused for lag, per target table.
pub const BACKFILL_PAUSES: &str = "walshift_backfill_pauses_total";
/// Rows in the last chunk (adapts toward `backfill.target_chunk_ms`).
pub const BACKFILL_CHUNK_ROWS: &str = "walshift_backfill_chunk_rows";
/// Chunks that were read again after a foreign-key check found a parent
/// row the stream had not applied yet.
pub const BACKFILL_CHUNK_RETRIES: &str = "walshift_backfill_chunk_retries_total";

/// Source rows compared by verification.
pub const VERIFY_ROWS: &str = "walshift_verify_rows_total";
/// Verification chunks checked, by `result` (`match`, `mismatch`).
pub const VERIFY_CHUNKS: &str = "walshift_verify_chunks_total";
/// Confirmed differing rows found by the last finished pass.
pub const VERIFY_MISMATCHED_ROWS: &str = "walshift_verify_mismatched_rows";
/// Unix time the last clean verification of the table started.
pub const VERIFY_LAST_CLEAN: &str = "walshift_verify_last_clean_timestamp_seconds";
/// 1 while a verification pass runs.
pub const VERIFY_RUNNING: &str = "walshift_verify_running";

/// Label holding the target table (`schema.table`).
pub const LABEL_TABLE: &str = "table";
/// Label holding a chunk's verification result (`match`, `mismatch`).
pub const LABEL_RESULT: &str = "result";

/// Registers help texts and units.
pub fn describe() {
    describe_counter!(BACKFILL_ROWS_COPIED, Unit::Count, "Rows copied by the backfill.");
    describe_counter!(BACKFILL_CHUNKS, Unit::Count, "Backfill chunks committed.");
    describe_gauge!(
        BACKFILL_ROWS_ESTIMATED,
        Unit::Count,
        "Estimated rows of the source table (pg_class.reltuples at the start of its backfill)."
    );
    describe_gauge!(BACKFILL_ROWS_PER_SECOND, "Backfill copy rate over the last chunks.");
    describe_gauge!(
        BACKFILL_ETA_SECONDS,
        Unit::Seconds,
        "Estimated time until the backfill of the table completes."
    );
    describe_gauge!(BACKFILL_COMPLETE, "1 once the backfill of the table is complete.");
    describe_gauge!(
        BACKFILL_PAUSED,
        "1 while the backfill waits because replication lag exceeds backfill.max_lag_seconds."
    );
    describe_counter!(
        BACKFILL_PAUSES,
        Unit::Count,
        "Times the backfill paused for replication lag."
    );
    describe_gauge!(BACKFILL_CHUNK_ROWS, Unit::Count, "Rows in the last backfill chunk.");
    describe_counter!(
        BACKFILL_CHUNK_RETRIES,
        Unit::Count,
        "Backfill chunks read again because a parent row was not applied yet."
    );
    describe_verify();
}

/// Registers the verification metrics' help texts.
fn describe_verify() {
    describe_counter!(VERIFY_ROWS, Unit::Count, "Source rows compared by verification.");
    describe_counter!(
        VERIFY_CHUNKS,
        Unit::Count,
        "Verification chunks (key ranges or key batches) checked, by first result."
    );
    describe_gauge!(
        VERIFY_MISMATCHED_ROWS,
        Unit::Count,
        "Confirmed differing rows found by the table's last finished verification pass."
    );
    describe_gauge!(
        VERIFY_LAST_CLEAN,
        Unit::Seconds,
        "Unix time at which the table's last clean verification pass started."
    );
    describe_gauge!(VERIFY_RUNNING, "1 while a verification pass runs.");
}

/// Serves `/metrics` on `listen` (Prometheus text format).
pub fn install(listen: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()
        .map_err(|e| format!("cannot serve metrics on {listen}: {e}"))?;
    describe();
    Ok(())
}
