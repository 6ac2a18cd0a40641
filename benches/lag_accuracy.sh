#!/usr/bin/env bash
# Benchmark: does walshift's reported lag (walshift_replication_lag_seconds
# on /metrics) track the true lag, and what do the observability features
# (heartbeats, /metrics, the status page) cost the applier?
#
#   bash benches/lag_accuracy.sh [PHASES]
#
# PHASES is a comma list (default lag,overhead; always run in this order):
#
#   lag       Two clusters (source A, target B). public.events(id bigserial,
#             written_at timestamptz default clock_timestamp(), payload) on
#             A is applied by `walshift run` into shadow.events on B
#             ([source] heartbeat_interval_ms = HEARTBEAT_MS, [verify]
#             disabled, [metrics] listen on a free loopback port). pgbench
#             writes single-row insert transactions at RATE txn/s (-R, 2
#             clients) and lib/lag_watch.py samples every 100 ms the
#             reported lag and the true lag (now minus the newest written_at
#             applied on B: the oldest source commit not applied yet is the
#             next write after it, at most 1/RATE s later) in three
#             sub-phases: steady (STEADY_S), blocked (a psql session on B
#             holds `lock table shadow.events in access exclusive mode` for
#             BLOCKED_S while pgbench keeps writing), recover (RECOVER_S
#             after the release). Check: every sample within
#             +-(HEARTBEAT_MS/1000 + 0.2) s of the true lag, none unknown.
#             Then idle: pgbench stops, after 5 s the reported lag is
#             sampled every 100 ms for IDLE_S. Check: max <= 2 x heartbeat
#             interval. The check is on every raw sample; the summary also
#             gives the max error against the true lag of the same or the
#             previous sample, since walshift refreshes the gauge every
#             100 ms (a 5 s -> 0 drop on release can fall between). Note:
#             with synchronous_commit = off (the lib's clusters) the
#             walsender sends WAL only once the WAL writer flushed it (every
#             200 ms), so the newest commits are invisible to walshift until
#             then (only heartbeats cover them): expect reported lag below
#             the true lag by up to ~0.2 s.
#   overhead  Apply drain rate with and without the observability load, same
#             run, same backlog. Before the backlog, one walshift migration
#             per drain (own slot ovh_K, shared publication ovh_pub, table
#             public.ovh_events -> shadow.ovh_events, status_interval_ms
#             100) is set up, so every drain replays the same WAL; then
#             pgbench writes BACKLOG single-row insert transactions with
#             walshift stopped. Each drain truncates the target table,
#             starts `walshift run` and is timed until the slot's
#             confirmed_flush_lsn reaches the source's end LSN (and, also
#             printed, until walshift.progress shows the last commit;
#             lib/slot_watch.py drain). Variants, alternating first in each
#             pair: (a) "obs": heartbeats every HEARTBEAT_MS, /metrics
#             scraped every 100 ms, / and /status every 2 s (one python
#             urllib process, lag_watch.py scrape); (b) "bare":
#             heartbeat_interval_ms = 3600000 (one heartbeat at start) and
#             nothing scraped. PAIRS pairs; overhead = (bare - obs) / bare
#             of the median rates. Check: <= 2%.
#
# Environment: RATE (2000), HEARTBEAT_MS (1000), STEADY_S (10), BLOCKED_S
# (5), RECOVER_S (15), IDLE_S (10), BACKLOG (300000), PAIRS (3), WAIT_MAX
# (seconds to wait for benches/verify_vs_reladiff.sh to finish before each
# timed measurement, 1800; the bench then goes on and says so), WALSHIFT_BIN,
# WALSHIFT_LOG (default info), KEEP_LOGS=DIR (keep logs and samples).
#
# Exits non-zero if a check fails (or the target content differs).

source "$(dirname "$0")/lib/cluster.sh"

PHASES="${1:-lag,overhead}"
RATE="${RATE:-2000}"
HEARTBEAT_MS="${HEARTBEAT_MS:-1000}"
STEADY_S="${STEADY_S:-10}"
BLOCKED_S="${BLOCKED_S:-5}"
RECOVER_S="${RECOVER_S:-15}"
IDLE_S="${IDLE_S:-10}"
BACKLOG="${BACKLOG:-300000}"
PAIRS="${PAIRS:-3}"
WAIT_MAX="${WAIT_MAX:-1800}"
has_phase() { [[ ",$PHASES," == *",$1,"* ]]; }

apply_bench_prologue
REV="$(bench_revision)"
LAGW="$(cd "$(dirname "$0")" && pwd)/lib/lag_watch.py"

# wait_quiet WHAT: before a timed measurement, wait until the other bench
# (verify_vs_reladiff.sh) is not running, so the two do not skew each other.
OTHER_BENCH='benches/verify_vs_''reladiff.sh'
NOT_QUIET=()
wait_quiet() {
    local t0 waited=0
    t0="$(now_s)"
    while pgrep -f "$OTHER_BENCH" >/dev/null; do
        if (( waited == 0 )); then echo "  (waiting for $OTHER_BENCH to finish before: $1)"; waited=1; fi
        if awk "BEGIN { exit !($(now_s) - $t0 > $WAIT_MAX) }"; then
            echo "  WARNING: $OTHER_BENCH still runs after ${WAIT_MAX} s; measuring anyway ($1)"
            NOT_QUIET+=("$1")
            return
        fi
        sleep 2
    done
    (( waited == 0 )) || echo "  (waited $(calc "$(now_s) - $t0" | awk '{printf "%.0f", $1}') s)"
}
# check_quiet WHAT: after a measurement, note whether the other bench started during it.
check_quiet() {
    if pgrep -f "$OTHER_BENCH" >/dev/null; then
        echo "  WARNING: $OTHER_BENCH was running at the end of: $1"
        NOT_QUIET+=("$1")
    fi
}

start_cluster SRC
start_cluster TGT
echo "clusters: source $SRC_PORT, target $TGT_PORT"

# write_config FILE MIGRATION SLOT PUBLICATION TABLE HEARTBEAT_MS METRICS_PORT STATUS_MS
write_config() {
    cat >"$1" <<TOML
[migration]
name = "$2"
[source]
url = "postgres://postgres@127.0.0.1:$SRC_PORT/postgres?sslmode=disable"
slot = "$3"
publication = "$4"
status_interval_ms = $8
heartbeat_interval_ms = $6
[target]
url = "postgres://postgres@127.0.0.1:$TGT_PORT/postgres?sslmode=disable"
[[tables]]
source = "public.$5"
target = "shadow.$5"
[apply]
batch_max_rows = 5000
batch_max_ms = 100
[verify]
enabled = false
[metrics]
listen = "127.0.0.1:$7"
TOML
}
# mark_copied MIGRATION TABLE: the table was empty when the slot was made:
# record it as backfilled so `run` goes straight to applying.
mark_copied() {
    psql_at "$TGT_PORT" -d postgres -c "insert into walshift.backfill \
        (migration, source_table, target_table, started_at, completed_at) \
        values ('$1', 'public.$2', 'shadow.$2', now(), now()) \
        on conflict (migration, source_table, target_table) do update set completed_at = now()" >/dev/null
}

walshift_process_init
SCRAPE_PID=""
on_exit '[ -n "$SCRAPE_PID" ] && kill "$SCRAPE_PID" 2>/dev/null'
src_lsn() { psql_at "$SRC_PORT" -d postgres -Atc 'select pg_current_wal_insert_lsn()'; }

FAILED=0
SUMMARY="$BENCH_TMP/summary.txt"
: >"$SUMMARY"
TOL="$(calc "$HEARTBEAT_MS / 1000 + 0.2")"
IDLE_MAX="$(calc "2 * $HEARTBEAT_MS / 1000")"

# --- lag accuracy ------------------------------------------------------------

if has_phase lag; then
    echo; echo "lag accuracy: $RATE txn/s, heartbeat ${HEARTBEAT_MS} ms, steady ${STEADY_S} s, blocked ${BLOCKED_S} s, recover ${RECOVER_S} s, idle ${IDLE_S} s"
    psql_at "$SRC_PORT" -d postgres -c "create table events (id bigserial primary key,
        written_at timestamptz not null default clock_timestamp(), payload text)"
    psql_at "$TGT_PORT" -d postgres -c "create schema shadow" -c "create table shadow.events (
        id bigint primary key, written_at timestamptz not null, payload text)"
    MPORT="$(free_port)"
    LAG_CONF="$BENCH_TMP/lag.toml"
    write_config "$LAG_CONF" lag lag_ws lag_pub events "$HEARTBEAT_MS" "$MPORT" 1000
    "$BIN" --config "$LAG_CONF" --log-level warn setup >/dev/null
    mark_copied lag events
    start_walshift "$LAG_CONF"
    # Until walshift reports a known lag (a heartbeat came back).
    for i in $(seq 1 300); do
        v="$(curl -s "http://127.0.0.1:$MPORT/metrics" | awk '$1 == "walshift_replication_lag_seconds" {print $2}')"
        [ -n "$v" ] && [ "$v" != NaN ] && break
        kill -0 "$WS_PID" || { echo "error: walshift run died" >&2; tail -n 20 "$WS_LOG" >&2; exit 1; }
        sleep 0.1
    done
    echo "  walshift up, reported lag $v s"
    cat >"$BENCH_TMP/ins.sql" <<'SQL'
insert into events (payload) values ('0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef');
SQL
    LOADED_S="$(calc "3 + $STEADY_S + $BLOCKED_S + $RECOVER_S + 60")"
    wait_quiet "lag accuracy"
    ACC_OUT="$BENCH_TMP/accuracy.txt"
    python3 "$LAGW" accuracy --src "$SRC_PORT" --tgt "$TGT_PORT" \
        --metrics "http://127.0.0.1:$MPORT/metrics" --table shadow.events \
        --steady "$STEADY_S" --blocked "$BLOCKED_S" --recover "$RECOVER_S" --idle-wait 5 --idle "$IDLE_S" \
        --load-out "$BENCH_TMP/pgbench_lag.log" --samples "$BENCH_TMP/lag_samples.txt" -- \
        pgbench -n -h 127.0.0.1 -p "$SRC_PORT" -U postgres -c 2 -j 2 -R "$RATE" -T "${LOADED_S%.*}" \
        -f "$BENCH_TMP/ins.sql" postgres | tee "$ACC_OUT"
    check_quiet "lag accuracy"
    # The rate the load really ran at (its own timestamps).
    ACHIEVED="$(psql_at "$SRC_PORT" -d postgres -Atc "select round(count(*) / extract(epoch from max(written_at) - min(written_at)))
        from events")"
    echo "  load: $ACHIEVED txn/s achieved (written_at span)"
    stop_walshift lag_ws
    s="$(psql_at "$SRC_PORT" -d postgres -Atc "select count(*) || ' ' || coalesce(sum(hashtext(e::text)::bigint), 0) from events e")"
    t="$(psql_at "$TGT_PORT" -d postgres -Atc "select count(*) || ' ' || coalesce(sum(hashtext(e::text)::bigint), 0) from shadow.events e")"
    if [ "$s" = "$t" ]; then echo "  content: target equals source ($s)"; else
        echo "  CONTENT MISMATCH: source $s, target $t"; FAILED=1; fi
    for ph in steady blocked recover; do
        read -r n nan tmax p50 p99 mx emin emax slack < <(awk -v p="$ph" '$1 == "RESULT" && $2 == p {print $3, $4, $5, $6, $7, $8, $9, $10, $11}' "$ACC_OUT")
        ok="$(awk -v m="$mx" -v t="$TOL" -v nan="$nan" 'BEGIN { print (m <= t && nan == 0 && m == m) ? "PASS" : "FAIL" }')"
        [ "$ok" = PASS ] || FAILED=1
        printf 'lag %-8s %4s samples (%s unknown), true lag max %6.2f s: |error| p50 %.3f  p99 %.3f  max %.3f s (signed %+.3f..%+.3f); target max <= %s  %s  [max vs this or previous sample'"'"'s true lag: %.3f]\n' \
            "$ph:" "$n" "$nan" "$tmax" "$p50" "$p99" "$mx" "$emin" "$emax" "$TOL" "$ok" "$slack" >>"$SUMMARY"
    done
    read -r n nan p50 p99 mx < <(awk '$1 == "RESULT" && $2 == "idle" {print $3, $4, $5, $6, $7}' "$ACC_OUT")
    ok="$(awk -v m="$mx" -v t="$IDLE_MAX" -v nan="$nan" 'BEGIN { print (m <= t && nan == 0 && m == m) ? "PASS" : "FAIL" }')"
    [ "$ok" = PASS ] || FAILED=1
    printf 'lag idle:    %4s samples (%s unknown), reported p50 %.3f  p99 %.3f  max %.3f s; target max <= %s  %s\n' \
        "$n" "$nan" "$p50" "$p99" "$mx" "$IDLE_MAX" "$ok" >>"$SUMMARY"
    echo "load: $ACHIEVED txn/s achieved (target $RATE)" >>"$SUMMARY"
fi

# --- overhead ----------------------------------------------------------------

if has_phase overhead; then
    RUNS=$(( 2 * PAIRS ))
    echo; echo "overhead: $PAIRS pair(s) of drains of a $BACKLOG-transaction backlog, obs vs bare"
    psql_at "$SRC_PORT" -d postgres -c "create table ovh_events (id bigserial primary key,
        written_at timestamptz not null default clock_timestamp(), payload text)"
    psql_at "$TGT_PORT" -d postgres -c "create schema if not exists shadow" -c "create table shadow.ovh_events (
        id bigint primary key, written_at timestamptz not null, payload text)"
    for k in $(seq 1 "$RUNS"); do
        # Pair p = ceil(k/2); odd pairs run obs first, even pairs bare first.
        p=$(( (k + 1) / 2 ))
        if (( (k + p) % 2 == 0 )); then v=obs; hb="$HEARTBEAT_MS"; else v=bare; hb=3600000; fi
        write_config "$BENCH_TMP/ovh_$k.toml" "ovh_$k" "ovh_$k" ovh_pub ovh_events "$hb" "$(free_port)" 100
        echo "$v" >"$BENCH_TMP/ovh_$k.variant"
        "$BIN" --config "$BENCH_TMP/ovh_$k.toml" --log-level warn setup >/dev/null
        mark_copied "ovh_$k" ovh_events
    done
    cat >"$BENCH_TMP/ovh.sql" <<'SQL'
insert into ovh_events (payload) values ('0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef');
SQL
    wait_quiet "backlog load"
    pgbench -n -h 127.0.0.1 -p "$SRC_PORT" -U postgres -c 2 -j 2 -t $(( BACKLOG / 2 )) \
        -f "$BENCH_TMP/ovh.sql" postgres >"$BENCH_TMP/pgbench_backlog.log" 2>&1 ||
        { cat "$BENCH_TMP/pgbench_backlog.log" >&2; exit 1; }
    END="$(src_lsn)"
    flush_wal "$SRC_PORT"
    SRC_DIGEST="$(psql_at "$SRC_PORT" -d postgres -Atc "select count(*) || ' ' || sum(hashtext(e::text)::bigint) from ovh_events e")"
    ROWS="${SRC_DIGEST%% *}"
    echo "  backlog: $ROWS rows at $(awk '/^tps = / {printf "%.0f", $3}' "$BENCH_TMP/pgbench_backlog.log") txn/s; end LSN $END"
    OVH="$BENCH_TMP/overhead.txt"   # variant pair confirm_s applied_s
    : >"$OVH"
    for k in $(seq 1 "$RUNS"); do
        v="$(cat "$BENCH_TMP/ovh_$k.variant")"; p=$(( (k + 1) / 2 ))
        psql_at "$TGT_PORT" -d postgres -c "truncate shadow.ovh_events" >/dev/null
        psql_at "$TGT_PORT" -d postgres -c "checkpoint" >/dev/null
        wait_quiet "drain $k ($v)"
        t0="$(now_s)"
        start_walshift "$BENCH_TMP/ovh_$k.toml"
        if [ "$v" = obs ]; then
            mp="$(awk -F'[:"]' '/^listen/ {print $(NF-1)}' "$BENCH_TMP/ovh_$k.toml")"
            python3 "$LAGW" scrape --base "http://127.0.0.1:$mp" --every 0.1 --page-every 2 &
            SCRAPE_PID=$!
        fi
        out="$(python3 "$(dirname "$LAGW")/slot_watch.py" drain --src "$SRC_PORT" --slot "ovh_$k" --endpos "$END" \
            --t0 "$t0" --target "$TGT_PORT" \
            --applied-sql "select coalesce((select applied_lsn from walshift.progress where migration = 'ovh_$k'), '0/0')" \
            --pid "$WS_PID" --timeout 900)"
        if [ -n "$SCRAPE_PID" ]; then kill "$SCRAPE_PID"; wait "$SCRAPE_PID" 2>/dev/null || true; SCRAPE_PID=""; fi
        check_quiet "drain $k ($v)"
        stop_walshift "ovh_$k"
        read -r confirm applied _ <<<"$out"
        echo "$v $p $confirm $applied" >>"$OVH"
        d="$(psql_at "$TGT_PORT" -d postgres -Atc "select count(*) || ' ' || sum(hashtext(e::text)::bigint) from shadow.ovh_events e")"
        [ "$d" = "$SRC_DIGEST" ] || { echo "  CONTENT MISMATCH after drain $k: source $SRC_DIGEST, target $d"; FAILED=1; }
        printf '  pair %d %-4s slot at end after %6.2f s (%6.0f txn/s); progress showed the last commit after %6.2f s (%6.0f txn/s)\n' \
            "$p" "$v" "$confirm" "$(calc "$ROWS / $confirm")" "$applied" "$(calc "$ROWS / $applied")"
    done
    median() { sort -g | awk '{a[NR] = $1} END {printf "%.6g", (a[int((NR + 1) / 2)] + a[int(NR / 2) + 1]) / 2}'; }
    rate() { awk -v v="$1" -v f="$2" -v n="$ROWS" '$1 == v {print n / $f}' "$OVH" | median; }
    OBS="$(rate obs 3)"; BARE="$(rate bare 3)"
    OBS_A="$(rate obs 4)"; BARE_A="$(rate bare 4)"
    PCT="$(calc "100 * ($BARE - $OBS) / $BARE")"
    PCT_A="$(calc "100 * ($BARE_A - $OBS_A) / $BARE_A")"
    PAIRWISE="$(awk '{t[$2, $1] = $3} END {for (k in t) {split(k, q, SUBSEP); if (q[2] == "obs") printf "%.1f%% ", 100 * (t[k] - t[q[1], "bare"]) / t[k]}}' "$OVH")"
    ok="$(awk -v p="$PCT" 'BEGIN { print (p <= 2) ? "PASS" : "FAIL" }')"
    [ "$ok" = PASS ] || FAILED=1
    printf 'overhead: drain (slot at end) obs %.0f txn/s, bare %.0f txn/s: %.1f%% (per pair: %s); target <= 2%%  %s\n' \
        "$OBS" "$BARE" "$PCT" "$PAIRWISE" "$ok" >>"$SUMMARY"
    printf 'overhead: drain (progress showed last commit) obs %.0f txn/s, bare %.0f txn/s: %.1f%%\n' \
        "$OBS_A" "$BARE_A" "$PCT_A" >>"$SUMMARY"
fi

# --- summary -----------------------------------------------------------------

echo
WS_PROBLEMS="$(grep -cE ' (WARN|ERROR) ' "$WS_LOG" || true)"
echo "walshift log: $WS_PROBLEMS WARN/ERROR lines"
grep -E ' (WARN|ERROR) ' "$WS_LOG" | head -n 5 || true
echo
echo "=== summary (walshift $REV at start; 2 clusters, fsync=off, synchronous_commit=off; $(nproc) cores) ==="
cat "$SUMMARY"
if (( ${#NOT_QUIET[@]} )); then
    echo "NOTE: verify_vs_reladiff.sh ran during: ${NOT_QUIET[*]} (figures may be skewed)"
fi
printf 'bench took %.0f s; load average at the end: %s\n' "$(calc "$(now_s) - $SCRIPT_T0")" "$(cut -d' ' -f1-3 /proc/loadavg)"
(( FAILED == 0 )) && echo "result: PASS" || echo "result: FAIL"
(( FAILED == 0 ))
