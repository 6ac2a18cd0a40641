#!/usr/bin/env bash
# Benchmark: `walshift run` on one huge source transaction (ROWS inserted
# rows in a single INSERT ... SELECT, default 5,000,000) written while
# walshift is stopped. Reports the drain time, rows/s and walshift's peak
# RSS (VmHWM: memory must stay bounded by the batch, not the transaction),
# and checks the target holds exactly the source's rows.
#
#   bash benches/apply_big_txn.sh [ROWS]
#
# Two clusters with the lib's settings (source and target). The drain is
# timed from starting `walshift run` until the source slot's
# confirmed_flush_lsn reaches the insert LSN taken after the transaction
# (polled every 100 ms); the time the target showed the applied commit is
# printed too. Environment: STATUS_MS (source.status_interval_ms, 1000),
# WALSHIFT_LOG (log filter, default info), KEEP_LOGS=DIR (keep the logs).

source "$(dirname "$0")/lib/cluster.sh"

ROWS="${1:-5000000}"
STATUS_MS="${STATUS_MS:-1000}"
apply_bench_prologue

start_cluster SRC
start_cluster TGT
echo "clusters: source $SRC_PORT, target $TGT_PORT"

TABLE_DDL="$USAGE_EVENTS_DDL"
psql_at "$SRC_PORT" -d postgres -c "$TABLE_DDL" -c "create publication bench_pub for table usage_events"
psql_at "$TGT_PORT" -d postgres -c "$TABLE_DDL"

CONF="$BENCH_TMP/walshift.toml"
write_walshift_config "$CONF" "$SRC_PORT" "$TGT_PORT" "$STATUS_MS"
"$BIN" --config "$CONF" --log-level warn setup
mark_backfilled "$TGT_PORT"

echo "one source transaction inserting $ROWS rows ..."
t0="$(now_s)"
psql_at "$SRC_PORT" -d postgres <<SQL
insert into usage_events
select i, i % 997, (array['api_call','storage','egress'])[1 + i % 3], (i % 1000) / 7.0,
       i * 13 % 100000, timestamptz '2026-01-01 00:00:00+00' + (i % 86400) * interval '1 second',
       jsonb_build_object('region', 'eu-' || (i % 5), 'sku', i % 37)
from generate_series(1, $ROWS) i;
SQL
END="$(psql_at "$SRC_PORT" -d postgres -Atc 'select pg_current_wal_insert_lsn()')"
flush_wal "$SRC_PORT"
WAL_MB="$(psql_at "$SRC_PORT" -d postgres -Atc "select pg_wal_lsn_diff('$END', confirmed_flush_lsn) / 1048576 from pg_replication_slots where slot_name = 'bench_ws'")"
printf '  written in %.1f s; %.0f MB of WAL behind the slot; end LSN %s\n' "$(calc "$(now_s) - $t0")" "$WAL_MB" "$END"

WS_LOG="$BENCH_TMP/walshift.log"
WS_PID=""
on_exit '[ -n "$WS_PID" ] && kill "$WS_PID" 2>/dev/null'
WS_APPLIED_SQL="select coalesce((select applied_lsn from walshift.progress where migration = 'bench'), '0/0')"

echo "draining with walshift run ..."
t0="$(now_s)"
WALSHIFT_LOG="${WALSHIFT_LOG:-info}" "$BIN" --config "$CONF" run 2>"$WS_LOG" &
WS_PID=$!
# RSS over time, to show where the peak is.
( while [ -r "/proc/$WS_PID/status" ]; do
      printf '%s %s\n' "$(calc "$(now_s) - $t0")" "$(awk '/^VmRSS:/ {print $2}' "/proc/$WS_PID/status" 2>/dev/null)"
      sleep 1
  done ) >"$BENCH_TMP/rss.txt" 2>/dev/null &
RSS_SAMPLER=$!
on_exit 'kill "$RSS_SAMPLER" 2>/dev/null'
read -r CONFIRM_S APPLIED_S FINAL < <(python3 "$WATCH" drain --src "$SRC_PORT" --slot bench_ws \
    --endpos "$END" --t0 "$t0" --target "$TGT_PORT" --applied-sql "$WS_APPLIED_SQL" --pid "$WS_PID")
HWM_KB="$(vm_hwm_kb "$WS_PID")"
CPU_S="$(cpu_s "$WS_PID")"
# The walsender and the target backend started with this run, too.
WSND_CPU_S="$(cpu_s "$(psql_at "$SRC_PORT" -d postgres -Atc "select active_pid from pg_replication_slots where slot_name = 'bench_ws'")")"
TGT_CPU_S="$(cpu_s $(psql_at "$TGT_PORT" -d postgres -Atc "select pid from pg_stat_activity where application_name = 'walshift:apply'"))"
kill -TERM "$WS_PID"
rc=0; wait "$WS_PID" || rc=$?
WS_PID=""
kill "$RSS_SAMPLER" 2>/dev/null || true
[ "$rc" = 0 ] || { echo "error: walshift run exited with $rc" >&2; tail -n 20 "$WS_LOG" >&2; exit 1; }

digest() {
    psql_at "$1" -d postgres -Atc "select count(*) || ' rows, digest ' || coalesce(sum(hashtext(t::text)::bigint), 0) from usage_events t"
}
SRC_DIGEST="$(digest "$SRC_PORT")"
TGT_DIGEST="$(digest "$TGT_PORT")"
TGT_COUNT="${TGT_DIGEST%% *}"
OK=1
if [ "$TGT_COUNT" = "$ROWS" ] && [ "$SRC_DIGEST" = "$TGT_DIGEST" ]; then
    echo "content check: target identical to the source: $TGT_DIGEST"
else
    echo "CONTENT MISMATCH: source $SRC_DIGEST; target $TGT_DIGEST (expected $ROWS rows)"
    OK=0
fi
PROBLEMS="$(grep -cE ' (WARN|ERROR) ' "$WS_LOG" || true)"
echo "walshift log: $PROBLEMS WARN/ERROR lines"
grep -E ' (WARN|ERROR) ' "$WS_LOG" | head -n 5 || true
grep 'run stopped' "$WS_LOG" | sed 's/^/  /' || true
echo "RSS over the drain (s, kB), every 5th sample:"
awk 'NR % 5 == 1 {printf "  %.0f s %d kB\n", $1, $2}' "$BENCH_TMP/rss.txt"

echo
echo "=== summary (one source transaction; clusters fsync=off, synchronous_commit=off; walshift status_interval_ms=$STATUS_MS) ==="
printf 'rows:                     %d in one transaction (%.0f MB of WAL)\n' "$ROWS" "$WAL_MB"
printf 'drain (slot at end LSN):  %.1f s  (%.0f rows/s)\n' "$CONFIRM_S" "$(calc "$ROWS / $CONFIRM_S")"
printf 'target applied commit:    %.1f s  (%.0f rows/s)\n' "$APPLIED_S" "$(calc "$ROWS / $APPLIED_S")"
printf 'CPU over the drain:       walshift %.1f s, source walsender %.1f s, target backend %.1f s (user+sys)\n' "$CPU_S" "$WSND_CPU_S" "$TGT_CPU_S"
printf 'walshift peak RSS:        %.1f MB (target < 200)\n' "$(calc "$HWM_KB / 1024")"
printf 'bench took %.0f s; load average at the end: %s\n' "$(calc "$(now_s) - $SCRIPT_T0")" "$(cut -d' ' -f1-3 /proc/loadavg)"
(( OK ))
