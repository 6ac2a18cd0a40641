#!/usr/bin/env bash
# Benchmark: `walshift run` against native logical replication (CREATE
# SUBSCRIPTION) in the same run, same workload, same machine state.
#
#   bash benches/apply_vs_subscription.sh [SINGLE_CHANGES] [BATCH_CHANGES] [REPS] [LAG_SECONDS]
#
# Defaults: 600000 changes in single-row transactions, 1500000 changes in
# 100-row transactions, 1 round, a 20 s live-lag load. Environment: PREPOP
# (rows present before the slots, default 200000), STATUS_MS (walshift's
# source.status_interval_ms, default 1000), CLIENTS (pgbench clients, 4),
# WALSHIFT_LOG (walshift's log filter, default info), KEEP_LOGS=DIR (keep
# the server, walshift and pgbench logs).
#
# Three clusters with the lib's identical settings: SRC, TGT_WS (walshift's
# target) and TGT_NATIVE (the subscription's). usage_events is pre-populated
# on the source and copied to both targets before the slots exist; both
# slots (bench_ws from `walshift setup`, bench_native pre-created, its
# subscription created disabled) exist before any workload.
#
# (a) Apply capacity: with both consumers stopped, pgbench writes a backlog
#     (60% single-row inserts, 30% updates and 10% deletes of random existing
#     rows); the change count is the source's n_tup_ins/upd/del delta. Then
#     each consumer in turn (order alternates) is started and timed until
#     its slot's confirmed_flush_lsn reaches the insert LSN taken after the
#     workload (polled every 100 ms). The time the target first showed the
#     final applied position (walshift.progress / the subscription's
#     replication origin) is printed too: the slot figure also includes how
#     often each consumer reports (walshift: every STATUS_MS).
# (b) Live lag: both consumers running, pgbench at full rate for
#     LAG_SECONDS; every 0.5 s each consumer's lag (slot and applied) in
#     bytes and in seconds (see lib/slot_watch.py).
# After every phase the source and both targets are compared
# (count(*), sum(hashtext(row::text))); a mismatch fails the run.

source "$(dirname "$0")/lib/cluster.sh"

SINGLE_CHANGES="${1:-600000}"
BATCH_CHANGES="${2:-1500000}"
REPS="${3:-1}"
LAG_SECONDS="${4:-20}"
PREPOP="${PREPOP:-200000}"
STATUS_MS="${STATUS_MS:-1000}"
CLIENTS="${CLIENTS:-4}"
apply_bench_prologue

start_cluster SRC
start_cluster TGT_WS
start_cluster TGT_NATIVE
echo "clusters: source $SRC_PORT, walshift target $TGT_WS_PORT, native target $TGT_NATIVE_PORT"

TABLE_DDL="$USAGE_EVENTS_DDL"
# The columns of row i (a bigint named i).
ROW_OF_I="i, i % 997, (array['api_call','storage','egress'])[1 + i % 3], (i % 1000) / 7.0,
    i * 13 % 100000, timestamptz '2026-01-01 00:00:00+00' + (i % 86400) * interval '1 second',
    jsonb_build_object('region', 'eu-' || (i % 5), 'sku', i % 37)"
# A random id between 1 and the last one handed out (rows may be deleted).
RANDOM_ID="select 1 + (random() * (last_value - 1))::bigint from ue_id_seq"

echo "pre-populating $PREPOP rows on the source and copying them to both targets ..."
psql_at "$SRC_PORT" -d postgres <<SQL
$TABLE_DDL
create sequence ue_id_seq start $(( PREPOP + 1 ));
insert into usage_events select $ROW_OF_I from generate_series(1, $PREPOP) i;
analyze usage_events;
SQL
for port in "$TGT_WS_PORT" "$TGT_NATIVE_PORT"; do
    psql_at "$port" -d postgres -c "$TABLE_DDL"
    psql_at "$SRC_PORT" -d postgres -c "copy usage_events to stdout" |
        psql_at "$port" -d postgres -c "copy usage_events from stdin"
    psql_at "$port" -d postgres -c "analyze usage_events"
done

# Publication, then both slots, before any change is made.
psql_at "$SRC_PORT" -d postgres -c "create publication bench_pub for table usage_events"
CONF="$BENCH_TMP/walshift.toml"
write_walshift_config "$CONF" "$SRC_PORT" "$TGT_WS_PORT" "$STATUS_MS"
"$BIN" --config "$CONF" --log-level warn setup
mark_backfilled "$TGT_WS_PORT"
psql_at "$SRC_PORT" -d postgres -Atc "select 'replication slot bench_native: ' || slot_name || ' created' from pg_create_logical_replication_slot('bench_native', 'pgoutput')"
psql_at "$TGT_NATIVE_PORT" -d postgres -c "create subscription bench_native
    connection 'host=127.0.0.1 port=$SRC_PORT dbname=postgres user=postgres application_name=bench_native'
    publication bench_pub
    with (create_slot = false, slot_name = 'bench_native', copy_data = false, enabled = false)"

WS_APPLIED_SQL="select coalesce((select applied_lsn from walshift.progress where migration = 'bench'), '0/0')"
NATIVE_APPLIED_SQL="select coalesce((select remote_lsn from pg_replication_origin_status
    where external_id = (select 'pg_' || oid from pg_subscription where subname = 'bench_native')), '0/0')"

# pgbench scripts: one row change per transaction, or 100 (60/30/10).
cat >"$BENCH_TMP/single.sql" <<SQL
\set r random(1, 100)
\if :r <= 60
insert into usage_events select $ROW_OF_I from (select nextval('ue_id_seq') as i) s;
\elif :r <= 90
update usage_events set amount_cents = amount_cents + 1, occurred_at = occurred_at + interval '1 second'
    where id = ($RANDOM_ID);
\else
delete from usage_events where id = ($RANDOM_ID);
\endif
SQL
cat >"$BENCH_TMP/batch.sql" <<SQL
begin;
insert into usage_events select $ROW_OF_I from (select nextval('ue_id_seq') as i from generate_series(1, 60)) s;
update usage_events set amount_cents = amount_cents + 1, occurred_at = occurred_at + interval '1 second'
    where id in ($RANDOM_ID, generate_series(1, 30));
delete from usage_events where id in ($RANDOM_ID, generate_series(1, 10));
commit;
SQL
PGBENCH=(pgbench -n -h 127.0.0.1 -p "$SRC_PORT" -U postgres -c "$CLIENTS" -j 2)

# --- helpers -----------------------------------------------------------------

walshift_process_init
native() { psql_at "$TGT_NATIVE_PORT" -d postgres -c "alter subscription bench_native $1"; }
# PG15's launcher starts apply workers at most once per
# wal_retrieve_retry_interval (5 s): wait that out before enabling again, so
# the native timing does not include the launcher's throttle.
NATIVE_LAST_START=0
RETRY_S="$(psql_at "$TGT_NATIVE_PORT" -d postgres -Atc "select setting::float / 1000 from pg_settings where name = 'wal_retrieve_retry_interval'")"
native_wait_launcher() {
    local wait
    wait="$(calc "$NATIVE_LAST_START + $RETRY_S + 0.2 - $(now_s)")"
    if awk "BEGIN { exit !($wait > 0) }"; then sleep "$wait"; fi
}
native_enable() { NATIVE_LAST_START="$(now_s)"; native enable; }

src_lsn() { psql_at "$SRC_PORT" -d postgres -Atc 'select pg_current_wal_insert_lsn()'; }

# run_load NAME PGBENCH-ARGS...: pgbench on the source; sets CHANGES (row
# changes it made) and MIX; fails if any transaction failed.
run_load() {
    local name="$1"; shift
    local before after out="$BENCH_TMP/pgbench_$name.txt"
    before="$(tup_counts)"
    "${PGBENCH[@]}" "$@" postgres >"$out" 2>&1 || { cat "$out" >&2; exit 1; }
    if ! grep -q 'number of failed transactions: 0 ' "$out"; then
        echo "error: pgbench transactions failed, the change count would be wrong:" >&2
        cat "$out" >&2
        exit 1
    fi
    after="$(tup_counts)"
    read -r CHANGES MIX < <(echo "$before $after" | awk '{
        i = $4 - $1; u = $5 - $2; d = $6 - $3; n = i + u + d
        printf "%d %.0f%%/%.0f%%/%.0f%%\n", n, 100 * i / n, 100 * u / n, 100 * d / n }')
    LOAD_TPS="$(awk '/^tps = / {printf "%.0f", $3}' "$out")"
}

digest() {
    psql_at "$1" -d postgres -Atc "select count(*) || ' rows, digest ' || coalesce(sum(hashtext(t::text)::bigint), 0) from usage_events t"
}
CONTENT_OK=1
check_content() {
    local s w n
    s="$(digest "$SRC_PORT")"; w="$(digest "$TGT_WS_PORT")"; n="$(digest "$TGT_NATIVE_PORT")"
    if [ "$s" = "$w" ] && [ "$s" = "$n" ]; then
        echo "  content check ($1): source, walshift target and native target identical: $s"
    else
        echo "  CONTENT MISMATCH ($1): source: $s; walshift target: $w; native target: $n"
        CONTENT_OK=0
    fi
}

RESULTS="$BENCH_TMP/results.txt"   # variant consumer changes confirm_s applied_s final_lsn round
: >"$RESULTS"
PEAK_RSS_KB=0

# drain_walshift VARIANT: start `walshift run` on the backlog, time it to END.
drain_walshift() {
    local t0 out hwm cpu
    t0="$(now_s)"
    start_walshift "$CONF"
    out="$(python3 "$WATCH" drain --src "$SRC_PORT" --slot bench_ws --endpos "$END" --t0 "$t0" \
        --target "$TGT_WS_PORT" --applied-sql "$WS_APPLIED_SQL" --pid "$WS_PID")"
    hwm="$(vm_hwm_kb "$WS_PID")"
    cpu="$(drain_cpu bench_ws "$TGT_WS_PORT" "select pid from pg_stat_activity where application_name = 'walshift:apply'" "$WS_PID")"
    stop_walshift bench_ws
    if (( hwm > PEAK_RSS_KB )); then PEAK_RSS_KB="$hwm"; fi
    report_drain "$1" walshift "$out" "peak RSS $(calc "$hwm / 1024" | awk "{printf \"%.1f\", \$1}") MB" "$cpu"
}

# drain_native VARIANT: enable the subscription, time it to END, disable it.
drain_native() {
    local t0 out cpu
    native_wait_launcher
    t0="$(now_s)"
    native_enable
    out="$(python3 "$WATCH" drain --src "$SRC_PORT" --slot bench_native --endpos "$END" --t0 "$t0" \
        --target "$TGT_NATIVE_PORT" --applied-sql "$NATIVE_APPLIED_SQL")"
    cpu="$(drain_cpu bench_native "$TGT_NATIVE_PORT" "select pid from pg_stat_subscription where subname = 'bench_native' and relid is null")"
    native disable
    wait_slot_inactive "$SRC_PORT" bench_native
    report_drain "$1" native "$out" "" "$cpu"
}

# drain_cpu SLOT TARGET_PORT TARGET_PIDS_SQL [PID]: CPU seconds used so far
# (the consumer's processes all started with the drain) by the source
# walsender, the target-side processes and PID: "walsender target process".
drain_cpu() {
    local wsnd tgt
    wsnd="$(psql_at "$SRC_PORT" -d postgres -Atc "select active_pid from pg_replication_slots where slot_name = '$1'")"
    tgt="$(psql_at "$2" -d postgres -Atc "$3" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    echo "$(cpu_s "$wsnd") $(cpu_s $tgt) $( [ -n "${4:-}" ] && cpu_s "$4" || echo 0)"
}

report_drain() {
    local confirm applied final wsnd tgt proc
    read -r confirm applied final <<<"$3"
    read -r wsnd tgt proc <<<"$5"
    echo "$1 $2 $CHANGES $confirm $applied $final $ROUND" >>"$RESULTS"
    printf '  %-9s slot at end after %6.2f s (%6.0f rows/s); target applied the last commit (%s) after %6.2f s (%6.0f rows/s)\n' \
        "$2" "$confirm" "$(calc "$CHANGES / $confirm")" "$final" "$applied" "$(calc "$CHANGES / $applied")"
    if [ "$2" = walshift ]; then
        printf '  %-9s CPU s: source walsender %s, walshift %s, target backend %s = %.0f%% of %d cores over the drain; %s\n' \
            "" "$wsnd" "$proc" "$tgt" "$(calc "100 * ($wsnd + $tgt + $proc) / $confirm / $(nproc)")" "$(nproc)" "$4"
    else
        printf '  %-9s CPU s: source walsender %s, apply worker %s = %.0f%% of %d cores over the drain\n' \
            "" "$wsnd" "$tgt" "$(calc "100 * ($wsnd + $tgt) / $confirm / $(nproc)")" "$(nproc)"
    fi
}

# --- (a) apply capacity ------------------------------------------------------

for r in $(seq 1 "$REPS"); do
    ROUND="$r"
    for v in 0 1; do
        if (( v == 0 )); then
            variant=single
            echo; echo "round $r: backlog of ~$SINGLE_CHANGES changes in single-row transactions ..."
            run_load "single_$r" -t $(( SINGLE_CHANGES / CLIENTS )) -f "$BENCH_TMP/single.sql"
        else
            variant=batch
            echo; echo "round $r: backlog of ~$BATCH_CHANGES changes in 100-row transactions ..."
            run_load "batch_$r" -t $(( BATCH_CHANGES / 100 / CLIENTS )) -f "$BENCH_TMP/batch.sql"
        fi
        END="$(src_lsn)"
        flush_wal "$SRC_PORT"
        echo "  $CHANGES row changes (insert/update/delete $MIX) at $LOAD_TPS txn/s; end LSN $END"
        # Alternate who goes first, between variants and between rounds.
        if (( (r + v) % 2 )); then
            drain_walshift "$variant"; drain_native "$variant"
        else
            drain_native "$variant"; drain_walshift "$variant"
        fi
        ws_final="$(awk -v v="$variant" '$1 == v && $2 == "walshift" {f = $6} END {print f}' "$RESULTS")"
        na_final="$(awk -v v="$variant" '$1 == v && $2 == "native" {f = $6} END {print f}' "$RESULTS")"
        [ "$ws_final" = "$na_final" ] || echo "  NOTE: last applied commit differs: walshift $ws_final, native $na_final"
        check_content "after $variant round $r"
    done
done

# --- (b) live lag ------------------------------------------------------------

echo; echo "live lag: both consumers running, pgbench -c $CLIENTS -T $LAG_SECONDS (single-row mix, full rate) ..."
start_walshift "$CONF"
native_wait_launcher
native_enable
flush_wal "$SRC_PORT"
python3 "$WATCH" drain --src "$SRC_PORT" --slot bench_ws --endpos "$(src_lsn)" --t0 "$(now_s)" \
    --target "$TGT_WS_PORT" --applied-sql "$WS_APPLIED_SQL" --pid "$WS_PID" --timeout 60 >/dev/null
python3 "$WATCH" drain --src "$SRC_PORT" --slot bench_native --endpos "$(src_lsn)" --t0 "$(now_s)" \
    --target "$TGT_NATIVE_PORT" --applied-sql "$NATIVE_APPLIED_SQL" --timeout 60 >/dev/null
before="$(tup_counts)"
LAG_OUT="$BENCH_TMP/lag.txt"
python3 "$WATCH" lag --src "$SRC_PORT" \
    --consumer walshift bench_ws "$TGT_WS_PORT" "$WS_APPLIED_SQL" \
    --consumer native bench_native "$TGT_NATIVE_PORT" "$NATIVE_APPLIED_SQL" \
    --out "$BENCH_TMP/pgbench_lag.txt" -- \
    "${PGBENCH[@]}" -T "$LAG_SECONDS" -f "$BENCH_TMP/single.sql" postgres | tee "$LAG_OUT"
grep -q 'number of failed transactions: 0 ' "$BENCH_TMP/pgbench_lag.txt" ||
    { echo "error: pgbench transactions failed during the lag run" >&2; exit 1; }
after="$(tup_counts)"
LAG_CHANGES="$(echo "$before $after" | awk '{print $4 - $1 + $5 - $2 + $6 - $3}')"
LAG_TPS="$(awk '/^tps = / {printf "%.0f", $3}' "$BENCH_TMP/pgbench_lag.txt")"
echo "  source load: $LAG_TPS txn/s, $LAG_CHANGES row changes ($(calc "$LAG_CHANGES / $LAG_SECONDS" | awk '{printf "%.0f", $1}') rows/s)"
stop_walshift bench_ws
native disable
wait_slot_inactive "$SRC_PORT" bench_native
check_content "after the live-lag run"

# --- problems seen -----------------------------------------------------------

echo
WS_PROBLEMS="$(grep -cE ' (WARN|ERROR) ' "$WS_LOG" || true)"
echo "walshift log: $WS_PROBLEMS WARN/ERROR lines ($(grep -c 'run stopped' "$WS_LOG") runs)"
grep -E ' (WARN|ERROR) ' "$WS_LOG" | head -n 5 || true
WS_APPLIED_CHANGES="$(grep 'run stopped' "$WS_LOG" | sed -E 's/.*changes=([0-9]+).*/\1/' | awk '{s += $1} END {print s}')"
SRC_CHANGES="$(awk -v lag="$LAG_CHANGES" '$2 == "walshift" {s += $3} END {print s + lag}' "$RESULTS")"
echo "walshift's own count of changes applied over all runs: $WS_APPLIED_CHANGES; the source made $SRC_CHANGES$( [ "$WS_APPLIED_CHANGES" = "$SRC_CHANGES" ] && echo ' (equal)' || echo ' (DIFFERENT)')"
NATIVE_ERRORS="$(grep -cE 'ERROR|FATAL' "$TGT_NATIVE_DIR/log" || true)"
echo "native target log: $NATIVE_ERRORS ERROR/FATAL lines"
grep -E 'ERROR|FATAL' "$TGT_NATIVE_DIR/log" | head -n 5 || true

# --- summary -----------------------------------------------------------------

median() { sort -g | awk '{a[NR] = $1} END {printf "%.6g", (a[int((NR + 1) / 2)] + a[int(NR / 2) + 1]) / 2}'; }
# median_rate KIND VARIANT CONSUMER: median over rounds of changes / seconds
# (KIND slot: until the slot reached the end; applied: until the target
# showed the last commit).
median_rate() {
    awk -v v="$2" -v c="$3" -v k="$1" '$1 == v && $2 == c {print $3 / (k == "slot" ? $4 : $5)}' "$RESULTS" | median
}
# median_ratio KIND VARIANT: median over rounds of native time / walshift time.
median_ratio() {
    awk -v v="$2" -v k="$1" '$1 == v {t[$7, $2] = (k == "slot" ? $4 : $5)}
        END {for (key in t) {split(key, p, SUBSEP); if (p[2] == "walshift") print t[p[1], "native"] / t[key]}}' "$RESULTS" | median
}
capacity_line() {
    printf 'apply capacity, %-17s walshift %6.0f rows/s  native %6.0f rows/s  ratio %.2f (target >= %s)   [until the target applied the last commit: %.0f vs %.0f, ratio %.2f]\n' \
        "$2:" "$(median_rate slot "$1" walshift)" "$(median_rate slot "$1" native)" "$(median_ratio slot "$1")" "$3" \
        "$(median_rate applied "$1" walshift)" "$(median_rate applied "$1" native)" "$(median_ratio applied "$1")"
}
lag_field() { awk -v c="$1" -v f="$2" '$1 == "RESULT" && $2 == c {printf "%.2f", $(f + 2)}' "$LAG_OUT"; }
lag_bytes() { awk -v c="$1" -v f="$2" '$1 == "RESULT" && $2 == c {printf "%.0f", $(f + 2) / 1024}' "$LAG_OUT"; }

echo
echo "=== summary (medians of $REPS round(s); clusters fsync=off, synchronous_commit=off; walshift status_interval_ms=$STATUS_MS) ==="
echo "(rates: row changes / seconds until the slot's confirmed_flush_lsn reached the end; ratio: median of per-round time ratios)"
capacity_line single "single-row txns" 1.5
capacity_line batch "100-row txns" 1.2
printf 'live lag p50/p99/max (s), from slot:    walshift %s/%s/%s  native %s/%s/%s  (target p99 <= 0.25)\n' \
    "$(lag_field walshift 1)" "$(lag_field walshift 2)" "$(lag_field walshift 3)" \
    "$(lag_field native 1)" "$(lag_field native 2)" "$(lag_field native 3)"
printf 'live lag p50/p99/max (s), target-applied: walshift %s/%s/%s  native %s/%s/%s\n' \
    "$(lag_field walshift 7)" "$(lag_field walshift 8)" "$(lag_field walshift 9)" \
    "$(lag_field native 7)" "$(lag_field native 8)" "$(lag_field native 9)"
printf 'live lag p50/p99/max (KB behind, slot): walshift %s/%s/%s  native %s/%s/%s  (source load %s txn/s)\n' \
    "$(lag_bytes walshift 4)" "$(lag_bytes walshift 5)" "$(lag_bytes walshift 6)" \
    "$(lag_bytes native 4)" "$(lag_bytes native 5)" "$(lag_bytes native 6)" "$LAG_TPS"
printf 'walshift peak RSS during drain: %.1f MB (target < 100)\n' "$(calc "$PEAK_RSS_KB / 1024")"
if (( CONTENT_OK )); then
    echo "content: source and both targets identical after every phase"
else
    echo "content: MISMATCH (see above): the comparison is not valid"
fi
printf 'bench took %.0f s; load average at the end: %s\n' "$(calc "$(now_s) - $SCRIPT_T0")" "$(cut -d' ' -f1-3 /proc/loadavg)"
(( CONTENT_OK ))
