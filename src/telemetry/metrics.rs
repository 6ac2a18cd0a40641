//! Every Prometheus metric walshift exports: names (with units), labels and
//! help texts in one place, and the exporter.
//!
//! Metrics are recorded through the `metrics` facade wherever the work
//! happens; they cost nothing until [`install`] sets up the exporter (the
//! `run` and `backfill` commands do, on `[metrics] listen`).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

/// Bytes of WAL between the server's WAL end (as the stream last reported
/// it) and the position durably applied to the target.
pub const REPLICATION_LAG_BYTES: &str = "walshift_replication_lag_bytes";
/// Seconds between the source's clock now and the source commit time of the
/// newest applied transaction (heartbeats keep it honest when idle).
pub const REPLICATION_LAG_SECONDS: &str = "walshift_replication_lag_seconds";
/// Source commit time (Unix seconds) of the newest heartbeat applied.
pub const HEARTBEAT_LAST_APPLIED: &str = "walshift_heartbeat_last_applied_timestamp_seconds";
/// WAL the slot retains on the source (`pg_current_wal_lsn() - restart_lsn`).
pub const SLOT_RETAINED_WAL_BYTES: &str = "walshift_slot_retained_wal_bytes";
/// `pg_replication_slots.safe_wal_size` (only when `max_slot_wal_keep_size` is set).
pub const SLOT_SAFE_WAL_SIZE_BYTES: &str = "walshift_slot_safe_wal_size_bytes";
/// 1 while the replication stream is connected.
pub const STREAM_CONNECTED: &str = "walshift_stream_connected";
/// Row changes applied, by table and op (`insert`, `update`, `delete`).
pub const APPLY_CHANGES: &str = "walshift_apply_changes_total";
/// Source transactions applied.
pub const APPLY_TRANSACTIONS: &str = "walshift_apply_transactions_total";
/// Target transactions committed.
pub const APPLY_COMMITS: &str = "walshift_apply_commits_total";
/// Duration of one target transaction (histogram).
pub const APPLY_BATCH_DURATION: &str = "walshift_apply_batch_duration_seconds";
/// Row changes in one target transaction (histogram).
pub const APPLY_BATCH_ROWS: &str = "walshift_apply_batch_rows";
/// Errors, by kind (`transient`, `strict_replay`, `fatal`).
pub const ERRORS: &str = "walshift_errors_total";
/// Sessions restarted after a transient error.
pub const RECONNECTS: &str = "walshift_reconnects_total";
/// Published share of reads on the new tables, percent.
pub const TRAFFIC_READ_NEW_PERCENT: &str = "walshift_traffic_read_new_percent";
/// `[traffic] read_new_percent` in force.
pub const TRAFFIC_DESIRED_READ_NEW_PERCENT: &str = "walshift_traffic_desired_read_new_percent";
/// Version of the last decision published to Redis.
pub const TRAFFIC_VERSION: &str = "walshift_traffic_version";
/// Decisions written to Redis, by `result` (`published`, `refused`, `error`).
pub const TRAFFIC_PUBLISHES: &str = "walshift_traffic_publishes_total";
/// Automatic and manual rollbacks to 0 % new.
pub const TRAFFIC_ROLLBACKS: &str = "walshift_traffic_rollbacks_total";
/// 1 for the controller's current `state`, 0 for the others.
pub const CONTROLLER_STATE: &str = "walshift_controller_state";
/// 1 while this instance leads (holds the lease), 0 as a standby.
pub const CONTROLLER_LEADER: &str = "walshift_controller_leader";
/// Per `gate`: 1 passing, 0 holding or failing.
pub const GATE_PASSING: &str = "walshift_gate_passing";
/// 1 while Redis answers the controller.
pub const REDIS_UP: &str = "walshift_redis_up";
/// Config reloads, by `result` (`applied`, `rejected`, `unchanged`).
pub const CONFIG_RELOADS: &str = "walshift_config_reloads_total";
/// 1 while the last reload was rejected, labelled with the offending `key`.
pub const CONFIG_RELOAD_REJECTED: &str = "walshift_config_reload_rejected";
/// Write cutover: from the lock on the old tables granted to write `new`
/// published, of the last completed cutover.
pub const CUTOVER_WRITE_PAUSE: &str = "walshift_cutover_write_pause_seconds";
/// Write cutover: from the barrier written to the applier durably past it.
pub const CUTOVER_DRAIN: &str = "walshift_cutover_drain_seconds";
/// Write cutover: the final check's duration.
pub const CUTOVER_CHECK: &str = "walshift_cutover_check_seconds";
/// Write cutover attempts, by `result` (`cut_over`, `aborted`, `refused`,
/// `recovered_forward`, `recovered_back`).
pub const CUTOVER_ATTEMPTS: &str = "walshift_cutover_attempts_total";
/// 1 once writes are on the new tables.
pub const CUTOVER_DONE: &str = "walshift_cutover_done";
/// Changes to old tables committed after the write cutover (they got past
/// the fence): reported, not applied.
pub const CHANGES_AFTER_CUTOVER: &str = "walshift_changes_after_cutover_total";
/// 1, labelled with the version.
pub const BUILD_INFO: &str = "walshift_build_info";
/// Unix time the process started.
pub const START_TIME: &str = "walshift_start_time_seconds";

/// Every metric name walshift exports (alert rules and dashboards may only
/// use these; a test checks them).
pub const ALL: &[&str] = &[
    BACKFILL_ROWS_COPIED,
    BACKFILL_CHUNKS,
    BACKFILL_ROWS_ESTIMATED,
    BACKFILL_ROWS_PER_SECOND,
    BACKFILL_ETA_SECONDS,
    BACKFILL_COMPLETE,
    BACKFILL_PAUSED,
    BACKFILL_PAUSES,
    BACKFILL_CHUNK_ROWS,
    BACKFILL_CHUNK_RETRIES,
    VERIFY_ROWS,
    VERIFY_CHUNKS,
    VERIFY_MISMATCHED_ROWS,
    VERIFY_LAST_CLEAN,
    VERIFY_RUNNING,
    REPLICATION_LAG_BYTES,
    REPLICATION_LAG_SECONDS,
    HEARTBEAT_LAST_APPLIED,
    SLOT_RETAINED_WAL_BYTES,
    SLOT_SAFE_WAL_SIZE_BYTES,
    STREAM_CONNECTED,
    APPLY_CHANGES,
    APPLY_TRANSACTIONS,
    APPLY_COMMITS,
    APPLY_BATCH_DURATION,
    APPLY_BATCH_ROWS,
    ERRORS,
    RECONNECTS,
    TRAFFIC_READ_NEW_PERCENT,
    TRAFFIC_DESIRED_READ_NEW_PERCENT,
    TRAFFIC_VERSION,
    TRAFFIC_PUBLISHES,
    TRAFFIC_ROLLBACKS,
    CONTROLLER_STATE,
    CONTROLLER_LEADER,
    GATE_PASSING,
    REDIS_UP,
    CONFIG_RELOADS,
    CONFIG_RELOAD_REJECTED,
    CUTOVER_WRITE_PAUSE,
    CUTOVER_DRAIN,
    CUTOVER_CHECK,
    CUTOVER_ATTEMPTS,
    CUTOVER_DONE,
    CHANGES_AFTER_CUTOVER,
    BUILD_INFO,
    START_TIME,
];

/// Label holding the target table (`schema.table`).
pub const LABEL_TABLE: &str = "table";
/// Label holding a row change's kind (`insert`, `update`, `delete`).
pub const LABEL_OP: &str = "op";
/// Label holding an error's kind (`transient`, `strict_replay`, `fatal`).
pub const LABEL_KIND: &str = "kind";
/// Label holding the version (`walshift_build_info`).
pub const LABEL_VERSION: &str = "version";
/// Label holding a chunk's verification result (`match`, `mismatch`), a
/// publish's or a reload's result.
pub const LABEL_RESULT: &str = "result";
/// Label holding the controller's state.
pub const LABEL_STATE: &str = "state";
/// Label holding a gate's name.
pub const LABEL_GATE: &str = "gate";
/// Label holding a config key.
pub const LABEL_KEY: &str = "key";

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
    describe_pipeline();
}

/// Registers the lag, slot, apply, error and process metrics' help texts.
fn describe_pipeline() {
    describe_gauge!(
        REPLICATION_LAG_BYTES,
        Unit::Bytes,
        "Server WAL end minus the position durably applied to the target."
    );
    describe_gauge!(
        REPLICATION_LAG_SECONDS,
        Unit::Seconds,
        "Age on the source's clock of the oldest source commit not applied yet (heartbeats keep it honest when idle)."
    );
    describe_gauge!(
        HEARTBEAT_LAST_APPLIED,
        Unit::Seconds,
        "Source time (Unix seconds) of the newest heartbeat applied to the target."
    );
    describe_gauge!(
        SLOT_RETAINED_WAL_BYTES,
        Unit::Bytes,
        "WAL the replication slot retains on the source (pg_current_wal_lsn() - restart_lsn)."
    );
    describe_gauge!(
        SLOT_SAFE_WAL_SIZE_BYTES,
        Unit::Bytes,
        "WAL that can be written before the slot is invalidated (max_slot_wal_keep_size)."
    );
    describe_gauge!(STREAM_CONNECTED, "1 while the replication stream is connected.");
    describe_counter!(APPLY_CHANGES, Unit::Count, "Row changes applied, by table and op.");
    describe_counter!(APPLY_TRANSACTIONS, Unit::Count, "Source transactions applied.");
    describe_counter!(APPLY_COMMITS, Unit::Count, "Target transactions committed.");
    describe_histogram!(
        APPLY_BATCH_DURATION,
        Unit::Seconds,
        "Duration of one target transaction, from its first change to its commit."
    );
    describe_histogram!(APPLY_BATCH_ROWS, Unit::Count, "Row changes in one target transaction.");
    describe_counter!(
        ERRORS,
        Unit::Count,
        "Errors by kind: transient (reconnect), strict_replay (batch replayed row by row), fatal."
    );
    describe_counter!(RECONNECTS, Unit::Count, "Sessions restarted after an error.");
    describe_controller();
    describe_gauge!(BUILD_INFO, "1, labelled with walshift's version.");
    describe_gauge!(START_TIME, Unit::Seconds, "Unix time the process started.");
}

/// Registers the controller's metrics' help texts.
fn describe_controller() {
    describe_gauge!(
        TRAFFIC_READ_NEW_PERCENT,
        "Published share of reads on the new tables, percent."
    );
    describe_gauge!(TRAFFIC_DESIRED_READ_NEW_PERCENT, "[traffic] read_new_percent in force.");
    describe_gauge!(TRAFFIC_VERSION, "Version of the last traffic decision published to Redis.");
    describe_counter!(
        TRAFFIC_PUBLISHES,
        Unit::Count,
        "Traffic decisions written to Redis, by result."
    );
    describe_counter!(TRAFFIC_ROLLBACKS, Unit::Count, "Rollbacks of read traffic to 0 % new.");
    describe_gauge!(
        CONTROLLER_STATE,
        "1 for the cutover controller's current state, 0 for the others."
    );
    describe_gauge!(CONTROLLER_LEADER, "1 while this instance holds the controller lease.");
    describe_gauge!(GATE_PASSING, "Per gate: 1 passing, 0 holding or failing.");
    describe_gauge!(REDIS_UP, "1 while Redis answers the controller.");
    describe_counter!(CONFIG_RELOADS, Unit::Count, "Config reloads, by result.");
    describe_gauge!(
        CUTOVER_WRITE_PAUSE,
        Unit::Seconds,
        "Write cutover: lock on the old tables granted to write new published (last cutover)."
    );
    describe_gauge!(
        CUTOVER_DRAIN,
        Unit::Seconds,
        "Write cutover: barrier written to the applier durably past it (last attempt)."
    );
    describe_gauge!(CUTOVER_CHECK, Unit::Seconds, "Write cutover: final check (last attempt).");
    describe_counter!(CUTOVER_ATTEMPTS, Unit::Count, "Write cutover attempts, by result.");
    describe_gauge!(CUTOVER_DONE, "1 once writes are on the new tables.");
    describe_counter!(
        CHANGES_AFTER_CUTOVER,
        Unit::Count,
        "Changes to old tables committed after the write cutover: reported, not applied."
    );
    describe_gauge!(
        CONFIG_RELOAD_REJECTED,
        "1 while the last config reload was rejected, by offending key."
    );
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

/// Buckets of [`APPLY_BATCH_DURATION`]: a target transaction takes from
/// a millisecond (a single-row commit) to seconds (a large source
/// transaction flushed in pieces, or a backfill round next to it).
const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Buckets of [`APPLY_BATCH_ROWS`]: from one row to `batch_max_rows`
/// (default 5,000) and beyond for flushed large transactions.
const ROWS_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0];

/// Installs the Prometheus recorder (histograms with the buckets above),
/// registers help texts, and exports the series that must exist from the
/// start (error counters at 0, so a `rate()` alert works before the first
/// error; build info; start time). Returns the handle `/metrics` renders.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(APPLY_BATCH_DURATION.to_owned()), DURATION_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(APPLY_BATCH_ROWS.to_owned()), ROWS_BUCKETS)
        })
        .map_err(|e| format!("cannot configure metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    for kind in ["transient", "strict_replay", "fatal"] {
        metrics::counter!(ERRORS, LABEL_KIND => kind).absolute(0);
    }
    metrics::counter!(RECONNECTS).absolute(0);
    metrics::counter!(APPLY_TRANSACTIONS).absolute(0);
    metrics::counter!(APPLY_COMMITS).absolute(0);
    metrics::gauge!(STREAM_CONNECTED).set(0.0);
    metrics::gauge!(VERIFY_RUNNING).set(0.0);
    metrics::gauge!(BUILD_INFO, LABEL_VERSION => env!("CARGO_PKG_VERSION")).set(1.0);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(START_TIME).set(started);
    Ok(handle)
}
