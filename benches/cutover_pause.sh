#!/usr/bin/env bash
# Benchmark: the write cutover under load. How long does the application's
# write traffic stall while `walshift cutover` fences the old table, drains,
# checks and flips writes to the new one, is anything lost, and how does it
# compare with pg_easy_replicate's switchover fence (role read-only +
# terminated sessions)?
#
#   bash benches/cutover_pause.sh
#
# Two clusters with the lib's settings (source A, target B) and one
# redis-server (apt package, loopback, no persistence). Every repetition
# starts from the same data: public.usage_events on A is dropped and made
# again (the seed billing shape with an identity key, PREPOP rows, as
# benches/controller_gates.sh makes it), shadow.usage_events on B is made
# empty (same shape), and a migration of its own (name, slot, publication
# and Redis key prefix cut_K or anc_K) is set up: `walshift run` with the
# controller ([traffic] read_new_percent = 100, stages = [100], on_violation
# = "hold"; [cutover] evaluate_interval_ms = EVALUATE_MS, max_lag_seconds =
# MAX_LAG, max_lag_bytes 1 GiB, verify_max_age_seconds 600,
# min_soak_seconds 0, fence_timeout_ms = FENCE_TIMEOUT_MS,
# fence_lock_timeout_ms = FENCE_LOCK_TIMEOUT_MS, drain_timeout_ms =
# DRAIN_TIMEOUT_MS, final_check_timeout_ms = FINAL_CHECK_TIMEOUT_MS,
# sequence_margin = SEQUENCE_MARGIN; [verify] interval_seconds =
# VERIFY_INTERVAL_S, full_pass_interval_seconds = VERIFY_FULL_S, repair =
# false; [source] heartbeat_interval_ms = HEARTBEAT_MS) backfills, verifies
# and publishes reads at 100 % new (the bench waits for that on the key
# cut_K:traffic, with no load). Then lib/cutover_workload.py runs the load
# (see its header): WORKERS processes, each with a connection to A and one
# to B as the login role bench_app, issue single-row INSERT transactions
# (autocommit) at RATE writes/s in all, on an open-loop schedule (a write's
# *wait* = its acknowledgement minus its due time, so being held, blocked,
# failed and retried, or queued behind earlier writes all count).
#
#   walshift  (REPS repetitions, cut_K) The workload follows the decision
#             in Redis like a well-behaved application: `write` "old" ->
#             old table on A; "fenced" -> hold new writes (until
#             `fence_deadline`); "new" -> shadow.usage_events on B. After
#             WARMUP s it runs `walshift --config F cutover` (exit 2,
#             refused, is retried up to 5 times, 2 s apart); AFTER s after
#             it saw write "new" the load stops. Per repetition:
#               - walshift's figures from walshift.cutover_attempts (lock
#                 wait, pause = lock granted -> write "new" published,
#                 drain, final check) and its `write pause` output line,
#                 and the walshift_cutover_write_pause_seconds metric;
#               - the workload's: longest wait of any write (whole run),
#                 p99 of the writes due in the fence window (from the
#                 `fenced` decision's updated_at, or its receipt if
#                 earlier, to the receipt of write "new"), failed
#                 transactions (a write that got an error at least once;
#                 SQLSTATE 25006 from the fence trigger is retried on new);
#               - content: every acknowledged write is in
#                 shadow.usage_events with the id it got and exactly the
#                 values it wrote (old and new side), every row of the old
#                 table (now frozen) is in the target with equal values, no
#                 write's row is there twice; and the old table rejects a
#                 write of bench_app with SQLSTATE 25006 naming the new
#                 table.
#             Checks: every `walshift cutover` exits 0; longest wait and
#             fence-window p99 <= STALL_MAX s in every repetition; nothing
#             lost or doubled; the workload reached MIN_RATE_PCT % of RATE
#             before the fence (otherwise the load line is a MISS: the
#             bench did not measure at the rate asked for).
#   anchor    (ANCHOR_REPS repetitions, anc_K, interleaved with the
#             walshift ones: W1 A1 W2 A2 ...) Same data, set-up, readiness
#             (reads 100 % new) and load, but the workload ignores Redis;
#             after WARMUP s it applies pg_easy_replicate's switchover
#             fence itself: ALTER ROLE bench_app SET
#             default_transaction_read_only = on and pg_terminate_backend()
#             of bench_app's sessions on A; waits until walshift has
#             applied a barrier transaction committed after that (what
#             pg_easy_replicate's "wait for lag 0" does); moves B's
#             sequence to A's + SEQUENCE_MARGIN; then switches the
#             workload's writes to B. Its pause is fence -> switch (no final
#             data check inside it: pg_easy_replicate has none). Meanwhile
#             the workload's writes fail (terminated sessions, then
#             read-only sessions: 25006) and are retried on B after the
#             switch, with the same failure policy as in the walshift
#             repetitions. Reported, not checked: the pause, the failed
#             transactions, the waits, and the same content check.
#
# The comparison: failed transactions and waits of the same workload under
# both fences, and each fence's pause (walshift: lock granted -> write
# "new"; anchor: fence -> switch).
#
# Environment: REPS (10), ANCHOR_REPS (5), RATE (5000), WORKERS (8),
# PREPOP (20000), WARMUP (5), AFTER (3), STALL_MAX (1.0), MIN_RATE_PCT (95),
# EVALUATE_MS (250), MAX_LAG (5), HEARTBEAT_MS (100), VERIFY_INTERVAL_S (2;
# the final check covers what changed since the last clean pass, so this
# trades verification load for pause), VERIFY_FULL_S (30),
# FENCE_TIMEOUT_MS (5000), FENCE_LOCK_TIMEOUT_MS (100), DRAIN_TIMEOUT_MS
# (5000), FINAL_CHECK_TIMEOUT_MS (10000), SEQUENCE_MARGIN (1000),
# READY_TIMEOUT (s to wait for reads at 100 %, 300), WAIT_MAX (s to wait for
# other heavy work on the machine to end before each repetition, 300),
# WALSHIFT_BIN, WALSHIFT_LOG (default info), KEEP_LOGS=DIR (keep the logs,
# each repetition's results JSON, decisions and cutover output).
#
# Exits non-zero if a check is missed.

source "$(dirname "$0")/lib/cluster.sh"
# Ctrl-C or kill: exit, so the lib's EXIT trap stops everything started.
trap 'exit 130' INT
trap 'exit 143' TERM

REPS="${REPS:-10}"
ANCHOR_REPS="${ANCHOR_REPS:-5}"
RATE="${RATE:-5000}"
WORKERS="${WORKERS:-8}"
PREPOP="${PREPOP:-20000}"
WARMUP="${WARMUP:-5}"
AFTER="${AFTER:-3}"
STALL_MAX="${STALL_MAX:-1.0}"
MIN_RATE_PCT="${MIN_RATE_PCT:-95}"
EVALUATE_MS="${EVALUATE_MS:-250}"
MAX_LAG="${MAX_LAG:-5}"
HEARTBEAT_MS="${HEARTBEAT_MS:-100}"
VERIFY_INTERVAL_S="${VERIFY_INTERVAL_S:-2}"
VERIFY_FULL_S="${VERIFY_FULL_S:-30}"
FENCE_TIMEOUT_MS="${FENCE_TIMEOUT_MS:-5000}"
FENCE_LOCK_TIMEOUT_MS="${FENCE_LOCK_TIMEOUT_MS:-100}"
DRAIN_TIMEOUT_MS="${DRAIN_TIMEOUT_MS:-5000}"
FINAL_CHECK_TIMEOUT_MS="${FINAL_CHECK_TIMEOUT_MS:-10000}"
SEQUENCE_MARGIN="${SEQUENCE_MARGIN:-1000}"
READY_TIMEOUT="${READY_TIMEOUT:-300}"
APP_ROLE=bench_app

apply_bench_prologue
REV="$(bench_revision)"
LIB="$(cd "$(dirname "$0")" && pwd)/lib"
CWL="$LIB/cutover_workload.py"
# The row a workload write (w, n, t) inserts, as SQL over alias a: the
# workload's own definition, so the check cannot drift from it.
EXPECTED="$(cd "$LIB" && python3 -c 'from cutover_workload import expected_sql; print(expected_sql("a"))')"

# Stopped on exit in this order (walshift releases its lease in Redis).
WL_PID=""
on_exit '[ -n "$WL_PID" ] && kill "$WL_PID" 2>/dev/null && wait "$WL_PID" 2>/dev/null'
walshift_process_init
quiet_init
# KEEP_LOGS: also each repetition's results, config, decisions and cutover output.
keep_outputs() {
    local d
    [ -n "${KEEP_LOGS:-}" ] || return 0
    mkdir -p "$KEEP_LOGS"
    cp "$BENCH_TMP"/*.json "$BENCH_TMP"/*.toml "$KEEP_LOGS/" 2>/dev/null || true
    for d in "$BENCH_TMP"/cut_* "$BENCH_TMP"/anc_*; do
        [ -d "$d" ] || continue
        mkdir -p "$KEEP_LOGS/$(basename "$d")"
        cp "$d"/*.txt "$KEEP_LOGS/$(basename "$d")/" 2>/dev/null || true
    done
}
on_exit keep_outputs

start_cluster SRC
start_cluster TGT
start_redis
echo "clusters: source $SRC_PORT, target $TGT_PORT; redis-server $(redis-server --version | awk '{print $3}') on $REDIS_PORT"
for port in "$SRC_PORT" "$TGT_PORT"; do
    psql_at "$port" -d postgres -c "create role $APP_ROLE login"
done

# prepare_tables: the same starting data for every repetition.
prepare_tables() {
    psql_at "$SRC_PORT" -d postgres >/dev/null <<SQL
set client_min_messages = warning;
drop table if exists public.usage_events;
$(usage_events_identity_ddl public)
$(usage_events_rows_sql "$PREPOP")
grant select, insert on public.usage_events to $APP_ROLE;
alter role $APP_ROLE reset default_transaction_read_only;
vacuum analyze public.usage_events;
SQL
    psql_at "$TGT_PORT" -d postgres >/dev/null <<SQL
set client_min_messages = warning;
drop schema if exists shadow cascade;
create schema shadow;
$(usage_events_identity_ddl shadow)
grant usage on schema shadow to $APP_ROLE;
grant select, insert on shadow.usage_events to $APP_ROLE;
SQL
}

# write_config FILE NAME METRICS_PORT: migration NAME (slot, publication,
# Redis key prefix NAME:), reads to 100 % new as soon as the gates pass.
write_config() {
    cat >"$1" <<TOML
[migration]
name = "$2"
[source]
url = "postgres://postgres@127.0.0.1:$SRC_PORT/postgres?sslmode=disable"
slot = "$2"
publication = "$2"
status_interval_ms = 1000
heartbeat_interval_ms = $HEARTBEAT_MS
[target]
url = "postgres://postgres@127.0.0.1:$TGT_PORT/postgres?sslmode=disable"
[[tables]]
source = "public.usage_events"
target = "shadow.usage_events"
[apply]
batch_max_rows = 5000
batch_max_ms = 100
[metrics]
listen = "127.0.0.1:$3"
[verify]
interval_seconds = $VERIFY_INTERVAL_S
full_pass_interval_seconds = $VERIFY_FULL_S
repair = false
[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
key_prefix = "$2:"
[traffic]
read_new_percent = 100
stages = [100]
on_violation = "hold"
[cutover]
evaluate_interval_ms = $EVALUATE_MS
max_lag_seconds = $MAX_LAG
max_lag_bytes = 1073741824
verify_max_age_seconds = 600
min_soak_seconds = 0
lease_ttl_ms = 15000
fence_timeout_ms = $FENCE_TIMEOUT_MS
fence_lock_timeout_ms = $FENCE_LOCK_TIMEOUT_MS
drain_timeout_ms = $DRAIN_TIMEOUT_MS
final_check_timeout_ms = $FINAL_CHECK_TIMEOUT_MS
sequence_margin = $SEQUENCE_MARGIN
TOML
}

# decision KEY: "read_new write state version" of the decision stored at KEY.
decision() {
    redis-cli -p "$REDIS_PORT" --raw get "$1" | python3 -c '
import json, sys
try:
    d = json.loads(sys.stdin.read())
    print(d["read"]["new"], d.get("write", "-"), d.get("state", "-"), d.get("version", "-"))
except (ValueError, KeyError, TypeError):
    print("- - - -")'
}

# wait_ready KEY: until reads are 100 % new with writes on old (no load).
wait_ready() {
    local t0 d
    t0="$(now_s)"
    while true; do
        d="$(decision "$1")"
        read -r rn wr _ _ <<<"$d"
        [ "$rn" = 100 ] && [ "$wr" = old ] && break
        kill -0 "$WS_PID" 2>/dev/null || { echo "error: walshift run exited; its log:" >&2; tail -n 20 "$WS_LOG" >&2; exit 1; }
        if awk "BEGIN { exit !($(now_s) - $t0 > $READY_TIMEOUT) }"; then
            echo "error: reads not at 100 % new within $READY_TIMEOUT s (decision: $d); walshift's log:" >&2
            tail -n 20 "$WS_LOG" >&2
            exit 1
        fi
        sleep 0.5
    done
    printf '  reads at 100 %% new %.1f s after `run` started (decision: %s)\n' "$(calc "$(now_s) - $RUN_T0")" "$d"
}

# metric PORT NAME: the sample of NAME on walshift's /metrics (a histogram's
# _sum/_count), or "-".
metric() {
    python3 - "$1" "$2" <<'PY'
import sys, urllib.request
port, name = sys.argv[1], sys.argv[2]
try:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
except Exception:
    print("-"); sys.exit(0)
vals = {}
for line in text.splitlines():
    if line.startswith("#") or not line.startswith(name):
        continue
    key = line.split("{")[0].split(" ")[0]
    vals.setdefault(key, line.rsplit(" ", 1)[1])
if name in vals:
    print(vals[name])
elif name + "_sum" in vals:
    print(f"{vals[name + '_sum']}/{vals.get(name + '_count', '?')}")
else:
    print("-")
PY
}

# content_check NAME ACKS: "lost_old lost_new old_not_in_source
# source_rows_missing duplicated unacknowledged acks target_rows
# source_rows" for the workload's acknowledged writes in ACKS (CSV
# side,id,w,n,t) against shadow.usage_events on B and the (frozen) old table.
content_check() {
    psql_at "$TGT_PORT" -d postgres >/dev/null <<SQL
set client_min_messages = warning;
drop schema if exists bench_check cascade;
create schema bench_check;
create table bench_check.acks (side text, id bigint, w int, n bigint, t text);
create table bench_check.src (id bigint, org_id bigint, event_type text, quantity numeric(20, 6),
                              amount_cents bigint, occurred_at timestamptz, payload jsonb);
SQL
    psql_at "$TGT_PORT" -d postgres -c "copy bench_check.acks from stdin with (format csv)" <"$2"
    psql_at "$SRC_PORT" -d postgres -c "copy public.usage_events (id, org_id, event_type, quantity, amount_cents, occurred_at, payload) to stdout" |
        psql_at "$TGT_PORT" -d postgres -c "copy bench_check.src from stdin"
    psql_at "$TGT_PORT" -d postgres -Atq -F ' ' <<SQL
create index on bench_check.acks (w, n);
create index on bench_check.src (id);
analyze bench_check.acks;
analyze bench_check.src;
select
  (select count(*) from bench_check.acks a where a.side = 'old' and not exists (
      select 1 from shadow.usage_events t where t.id = a.id
      and (t.org_id, t.event_type, t.quantity, t.amount_cents, t.occurred_at, t.payload) = $EXPECTED)),
  (select count(*) from bench_check.acks a where a.side = 'new' and not exists (
      select 1 from shadow.usage_events t where t.id = a.id
      and (t.org_id, t.event_type, t.quantity, t.amount_cents, t.occurred_at, t.payload) = $EXPECTED)),
  (select count(*) from bench_check.acks a where a.side = 'old' and not exists (
      select 1 from bench_check.src t where t.id = a.id
      and (t.org_id, t.event_type, t.quantity, t.amount_cents, t.occurred_at, t.payload) = $EXPECTED)),
  (select count(*) from bench_check.src s where not exists (
      select 1 from shadow.usage_events t where t.id = s.id
      and (t.org_id, t.event_type, t.quantity, t.amount_cents, t.occurred_at, t.payload)
          is not distinct from (s.org_id, s.event_type, s.quantity, s.amount_cents, s.occurred_at, s.payload))),
  (select count(*) from (select 1 from shadow.usage_events where payload ? 'w'
                         group by payload having count(*) > 1) d),
  (select count(*) from shadow.usage_events t where t.payload ? 'w' and not exists (
      select 1 from bench_check.acks a where a.w = (t.payload->>'w')::int and a.n = (t.payload->>'n')::bigint)),
  (select count(*) from bench_check.acks),
  (select count(*) from shadow.usage_events),
  (select count(*) from bench_check.src);
SQL
    psql_at "$TGT_PORT" -d postgres -c "set client_min_messages = warning" -c "drop schema bench_check cascade" >/dev/null
}

# old_rejects: whether a write of the application's role on the old table
# now fails with SQLSTATE 25006 and a message naming the new table (rolled
# back should it succeed).
old_rejects() {
    local out
    out="$(psql -X -h 127.0.0.1 -p "$SRC_PORT" -U "$APP_ROLE" -d postgres -v VERBOSITY=verbose -c begin -c \
        "insert into public.usage_events (org_id, event_type, quantity, amount_cents) values (0, 'probe', 0, 0)" \
        -c rollback 2>&1)" || true
    echo "$out" >>"$BENCH_TMP/old_rejects.txt"
    if grep -q '25006' <<<"$out" && grep -q 'shadow.usage_events' <<<"$out"; then echo yes; else echo no; fi
}

# finish_migration NAME: stop walshift, drop the slot and publication.
finish_migration() {
    stop_walshift_rc "$1"
    psql_at "$SRC_PORT" -d postgres -Atc "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = '$1'" >/dev/null
    psql_at "$SRC_PORT" -d postgres -c "drop publication if exists $1" >/dev/null
}

# start_migration NAME: fresh tables, config, setup, `run`, reads at 100 %.
start_migration() {
    prepare_tables
    CONF="$BENCH_TMP/$1.toml"
    METRICS_PORT="$(free_port)"
    write_config "$CONF" "$1" "$METRICS_PORT"
    "$BIN" --config "$CONF" --log-level warn setup >/dev/null
    echo "=== $1: $(date -u +%H:%M:%S) ===" >>"$WS_LOG"
    RUN_T0="$(now_s)"
    start_walshift "$CONF"
    wait_ready "$1:traffic"
}

# run_workload NAME MODE [ARGS...]: lib/cutover_workload.py in the
# background (so the exit hook can stop it), waited for.
run_workload() {
    local name=$1 mode=$2 rc=0
    shift 2
    python3 "$CWL" run --mode "$mode" --src "$SRC_PORT" --tgt "$TGT_PORT" --role "$APP_ROLE" \
        --rate "$RATE" --workers "$WORKERS" --warmup "$WARMUP" --after "$AFTER" \
        --workdir "$BENCH_TMP/$name" --results "$BENCH_TMP/$name.json" --acks "$BENCH_TMP/$name.acks" "$@" &
    WL_PID=$!
    wait "$WL_PID" || rc=$?
    WL_PID=""
    if [ "$rc" != 0 ]; then
        echo "error: cutover_workload.py exited with $rc; walshift's log:" >&2
        tail -n 20 "$WS_LOG" >&2
        exit 1
    fi
}

get() { python3 "$CWL" get "$@"; }
# ms S: seconds as whole milliseconds; int X: rounded; both pass "-" (no value).
ms() { awk -v x="$1" 'BEGIN { if (x == "-") print "-"; else printf "%.0f", x * 1000 }'; }
int() { awk -v x="$1" 'BEGIN { if (x == "-") print "-"; else printf "%.0f", x }'; }
# num X: X for a verdict, "-" (no value) as a value that fails every bound.
num() { if [ "$1" = - ]; then echo 1e18; else echo "$1"; fi; }

FAILED=0
SUMMARY="$BENCH_TMP/summary.txt"
: >"$SUMMARY"
verdict() { awk "BEGIN { exit !($1) }" && echo PASS || echo MISS; }
WS_ROWS="$BENCH_TMP/walshift_reps.txt"   # one line per walshift repetition (see the header below)
AN_ROWS="$BENCH_TMP/anchor_reps.txt"
: >"$WS_ROWS"
: >"$AN_ROWS"

walshift_rep() {
    local k=$1 name="cut_$1" res row att out_pause metric_pause rejects content
    echo; echo "walshift $k/$REPS ($name): $RATE writes/s, cutover after ${WARMUP} s"
    start_migration "$name"
    wait_quiet "$name"
    run_workload "$name" walshift --redis-port "$REDIS_PORT" --channel "$name:traffic" \
        -- "$BIN" --config "$CONF" --log-level warn cutover
    check_quiet "$name"
    res="$BENCH_TMP/$name.json"
    sed 's/^[0-9.]* /    | /' "$BENCH_TMP/$name/cutover_out.txt" | grep -v '^    | #' || true
    # walshift's own figures: the attempt's row, its output line, the metric.
    att="$(psql_at "$TGT_PORT" -d postgres -Atc "select coalesce(outcome, 'open') || ' ' ||
        coalesce(lock_attempts::text, '-') || ' ' || coalesce(lock_wait_seconds::text, '-') || ' ' ||
        coalesce(pause_seconds::text, '-') || ' ' || coalesce(drain_seconds::text, '-') || ' ' ||
        coalesce(check_seconds::text, '-')
        from walshift.cutover_attempts where migration = '$name' order by id desc limit 1" 2>/dev/null || true)"
    [ -n "$att" ] || att="none - - - - -"
    # The first "<number> ms" (or "<number> s") after "write pause", in ms.
    out_pause="$(sed -nE 's/.*write pause[^0-9]*([0-9]+([.][0-9]+)?) *(ms|s)([^a-z].*)?$/\1 \3/Ip' "$BENCH_TMP/$name/cutover_out.txt" |
        head -n 1 | awk '{ printf "%.1f", ($2 == "s" || $2 == "S") ? $1 * 1000 : $1 }')"
    metric_pause="$(metric "$METRICS_PORT" walshift_cutover_write_pause_seconds)"
    "$BIN" --config "$CONF" --log-level warn history --json >"$BENCH_TMP/$name.history.json" 2>&1 || true
    rc="$(get "$res" cutover_rc)"
    if [ "$rc" != 0 ]; then
        # Not cut over: let the applier catch up before the content check,
        # so that the check reports losses, not writes still in flight.
        END="$(psql_at "$SRC_PORT" -d postgres -Atc 'select pg_current_wal_insert_lsn()')"
        flush_wal "$SRC_PORT"
        python3 "$WATCH" drain --src "$SRC_PORT" --slot "$name" --endpos "$END" --t0 "$(now_s)" --target "$TGT_PORT" \
            --applied-sql "select coalesce((select applied_lsn from walshift.progress where migration = '$name'), '0/0')" \
            --pid "$WS_PID" --timeout 120 >/dev/null || echo "  (the applier did not catch up)"
    fi
    finish_migration "$name"
    content="$(content_check "$name" "$BENCH_TMP/$name.acks")"
    rejects="$(old_rejects)"
    # k rc attempts | outcome lock_attempts lock_wait pause drain check | output_pause_ms metric |
    # client_pause wait_max fence_p99 fence_writes failed_writes failed_attempts rate_before given_up |
    # lost_old lost_new old_not_in_source source_missing dups unacked acks target_rows source_rows | rejects ws_rc
    row="$k $rc $(get "$res" cutover_runs | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') $att ${out_pause:--} $metric_pause"
    row="$row $(get "$res" client_pause wait_max fence_wait_p99 fence_writes failed_writes failed_attempts rate_before_fence given_up)"
    row="$row $content $rejects $WS_RC"
    echo "$row" >>"$WS_ROWS"
    read -r _ _ _ outcome _ lw pause drain check _ _ cp wmax fp99 fw fwr fat rate gu lo ln ons sm dup una acks trows srows _ _ <<<"$row"
    printf '  walshift: exit %s, outcome %s; lock wait %s ms, pause (lock -> write "new") %s ms, drain %s ms, final check %s ms; output: write pause %s ms; metric: %s\n' \
        "$rc" "$outcome" "$(ms "$lw")" "$(ms "$pause")" "$(ms "$drain")" "$(ms "$check")" "${out_pause:--}" "$metric_pause"
    printf '  workload: "fenced" -> "new" seen %s ms apart; longest wait %s ms; fence window: %s writes, p99 wait %s ms; failed transactions %s (%s attempts: %s); %s writes/s before the fence; given up %s\n' \
        "$(ms "$cp")" "$(ms "$wmax")" "$fw" "$(ms "$fp99")" "$fwr" "$fat" "$(get "$res" failed_by_sqlstate)" "$(int "$rate")" "$gu"
    printf '  content: %s acknowledged writes; lost: %s old-side, %s new-side (%s not on the source); source rows missing or different on the target %s of %s; doubled %s; rows of unacknowledged writes %s; old table rejects writes: %s; walshift run exit %s\n' \
        "$acks" "$lo" "$ln" "$ons" "$sm" "$srows" "$dup" "$una" "$rejects" "$WS_RC"
}

anchor_rep() {
    local k=$1 name="anc_$1" res row content
    echo; echo "anchor $k/$ANCHOR_REPS ($name): $RATE writes/s, pg_easy_replicate fence after ${WARMUP} s"
    start_migration "$name"
    wait_quiet "$name"
    run_workload "$name" anchor --migration "$name" --sequence-margin "$SEQUENCE_MARGIN"
    check_quiet "$name"
    res="$BENCH_TMP/$name.json"
    psql_at "$SRC_PORT" -d postgres -c "alter role $APP_ROLE reset default_transaction_read_only" >/dev/null
    finish_migration "$name"
    content="$(content_check "$name" "$BENCH_TMP/$name.acks")"
    # k pause drain terminated | wait_max fence_p99 fence_writes failed_writes failed_attempts rate_before given_up | content | ws_rc
    row="$k $(get "$res" anchor_pause anchor_drain terminated_sessions wait_max fence_wait_p99 fence_writes failed_writes failed_attempts rate_before_fence given_up) $content $WS_RC"
    echo "$row" >>"$AN_ROWS"
    read -r _ pause drain term wmax fp99 fw fwr fat rate gu lo ln ons sm dup una acks _ srows _ <<<"$row"
    printf '  anchor: writes switched %s ms after the fence (drain %s ms, %s sessions terminated); longest wait %s ms; fence window: %s writes, p99 wait %s ms; failed transactions %s (%s attempts: %s); %s writes/s before the fence\n' \
        "$(ms "$pause")" "$(ms "$drain")" "$term" "$(ms "$wmax")" "$fw" "$(ms "$fp99")" "$fwr" "$fat" "$(get "$res" failed_by_sqlstate)" "$(int "$rate")"
    printf '  content: %s acknowledged writes; lost: %s old-side, %s new-side; source rows missing or different on the target %s of %s; doubled %s; rows of unacknowledged writes %s; given up %s\n' \
        "$acks" "$lo" "$ln" "$sm" "$srows" "$dup" "$una" "$gu"
}

echo "load: $RATE single-row INSERT transactions/s from $WORKERS workers as $APP_ROLE; $REPS walshift and $ANCHOR_REPS anchor repetitions, interleaved"
for i in $(seq 1 $(( REPS > ANCHOR_REPS ? REPS : ANCHOR_REPS ))); do
    if (( i <= REPS )); then walshift_rep "$i"; fi
    if (( i <= ANCHOR_REPS )); then anchor_rep "$i"; fi
done

# --- summary -----------------------------------------------------------------

# colstat FILE COLUMN: "median max min n" of a column, skipping "-".
colstat() {
    awk -v c="$2" '$c != "-" {print $c}' "$1" | sort -g |
        awk '{a[NR] = $1} END { if (NR == 0) { print "- - - 0"; exit }
             printf "%.6g %.6g %.6g %d\n", (a[int((NR + 1) / 2)] + a[int(NR / 2) + 1]) / 2, a[NR], a[1], NR }'
}

{
    echo "walshift, per repetition (times in ms; wait = acknowledgement - due time of a workload write):"
    printf '  %-4s %-5s %-8s %6s %8s %7s %7s %9s %9s %9s %8s %7s %7s %8s %s\n' \
        rep exit outcome lock_wait pause drain check client_fence wait_max fence_p99 failed_txn rate lost doubled "content"
    while read -r k rc tries outcome la lw pause drain check op mp cp wmax fp99 fw fwr fat rate gu lo ln ons sm dup una acks trows srows rej wsrc; do
        printf '  %-4s %-5s %-8s %6s %8s %7s %7s %9s %9s %9s %8s %7s %7s %8s %s\n' \
            "$k" "$rc" "$outcome" "$(ms "$lw")" "$(ms "$pause")" "$(ms "$drain")" "$(ms "$check")" "$(ms "$cp")" \
            "$(ms "$wmax")" "$(ms "$fp99")" "$fwr" "$(int "$rate")" \
            "$(( lo + ln + gu ))" "$dup" "$( (( sm == 0 )) && echo ok || echo "$sm source rows off")"
    done <"$WS_ROWS"
    if [ -s "$AN_ROWS" ]; then
        echo "anchor (pg_easy_replicate fence), per repetition:"
        printf '  %-4s %9s %7s %9s %9s %10s %10s %7s %7s %s\n' rep pause drain wait_max fence_p99 failed_txn failed_att rate lost "content"
        while read -r k pause drain term wmax fp99 fw fwr fat rate gu lo ln ons sm dup una acks trows srows wsrc; do
            printf '  %-4s %9s %7s %9s %9s %10s %10s %7s %7s %s\n' "$k" "$(ms "$pause")" "$(ms "$drain")" "$(ms "$wmax")" \
                "$(ms "$fp99")" "$fwr" "$fat" "$(int "$rate")" \
                "$(( lo + ln + gu ))" "$( (( sm == 0 )) && echo ok || echo "$sm source rows off")"
        done <"$AN_ROWS"
    fi
} >"$BENCH_TMP/tables.txt"

# Columns of WS_ROWS (1-based): 2 rc, 4 outcome, 6 lock_wait, 7 pause,
# 8 drain, 9 check, 10 output ms, 12 client_pause, 13 wait_max, 14 fence_p99,
# 16 failed_writes, 17 failed_attempts, 18 rate, 19 given_up, 20 lost_old,
# 21 lost_new, 22 old_not_in_source, 23 source_missing, 24 dups, 25 unacked,
# 29 rejects.
N_OK="$(awk '$2 == 0' "$WS_ROWS" | wc -l)"
ok="$(verdict "$N_OK == $REPS && $REPS >= 10")"
[ "$ok" = PASS ] || FAILED=1
echo "cutover: $N_OK of $REPS \`walshift cutover\` runs exited 0 (outcomes: $(awk '{print $4}' "$WS_ROWS" | sort | uniq -c | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')); target all, >= 10 repetitions  $ok" >>"$SUMMARY"
read -r p50 pmax pmin pn <<<"$(colstat "$WS_ROWS" 7)"
read -r lw50 lwmax _ _ <<<"$(colstat "$WS_ROWS" 6)"
read -r d50 dmax _ _ <<<"$(colstat "$WS_ROWS" 8)"
read -r c50 cmax _ _ <<<"$(colstat "$WS_ROWS" 9)"
read -r o50 omax _ _ <<<"$(colstat "$WS_ROWS" 10)"
printf 'walshift pause (lock granted -> write "new" published, walshift.cutover_attempts): median %s  max %s  min %s ms over %s; lock wait median %s max %s ms; drain median %s max %s ms; final check median %s max %s ms; `write pause` output line median %s max %s ms\n' \
    "$(ms "$p50")" "$(ms "$pmax")" "$(ms "$pmin")" "$pn" "$(ms "$lw50")" "$(ms "$lwmax")" "$(ms "$d50")" "$(ms "$dmax")" \
    "$(ms "$c50")" "$(ms "$cmax")" "$o50" "$omax" >>"$SUMMARY"
read -r w50 wmax _ wn <<<"$(colstat "$WS_ROWS" 13)"
read -r f50 fmax _ _ <<<"$(colstat "$WS_ROWS" 14)"
read -r cp50 cpmax _ _ <<<"$(colstat "$WS_ROWS" 12)"
ok="$(verdict "$wn == $REPS && $(num "$wmax") <= $STALL_MAX && $(num "$fmax") <= $STALL_MAX")"
[ "$ok" = PASS ] || FAILED=1
printf 'write stall (workload): longest wait of any write median %s  max %s ms; p99 of writes due in the fence window median %s  max %s ms (window: "fenced" -> "new" seen by the workload, median %s max %s ms); target every repetition <= %s s  %s\n' \
    "$(ms "$w50")" "$(ms "$wmax")" "$(ms "$f50")" "$(ms "$fmax")" "$(ms "$cp50")" "$(ms "$cpmax")" "$STALL_MAX" "$ok" >>"$SUMMARY"
LOST="$(awk '{s += $19 + $20 + $21 + $22 + $23} END {print s + 0}' "$WS_ROWS")"
DUPS="$(awk '{s += $24} END {print s + 0}' "$WS_ROWS")"
UNACK="$(awk '{s += $25} END {print s + 0}' "$WS_ROWS")"
ACKS="$(awk '{s += $26} END {print s + 0}' "$WS_ROWS")"
REJ="$(awk '$29 == "yes"' "$WS_ROWS" | wc -l)"
ok="$(verdict "$LOST == 0 && $DUPS == 0 && $REJ == $REPS")"
[ "$ok" = PASS ] || FAILED=1
echo "nothing lost: $ACKS acknowledged writes over $REPS repetitions; lost or different (incl. given up, and source rows not on the target) $LOST, doubled $DUPS, rows of unacknowledged writes $UNACK; the old table rejected bench_app's write with 25006 naming the new table after $REJ of $REPS  $ok" >>"$SUMMARY"
read -r fw50 fwmax fwmin _ <<<"$(colstat "$WS_ROWS" 16)"
FAT="$(awk '{s += $17} END {print s + 0}' "$WS_ROWS")"
read -r r50 rmax rmin _ <<<"$(colstat "$WS_ROWS" 18)"
ok="$(verdict "$(num "$rmin") < 1e18 && $(num "$rmin") >= $RATE * $MIN_RATE_PCT / 100")"
[ "$ok" = PASS ] || FAILED=1
printf 'load: %s writes/s before the fence (median; min %s, max %s) for a target of %s (%s workers); target >= %s %% of it in every repetition  %s\n' \
    "$(int "$r50")" "$(int "$rmin")" "$(int "$rmax")" "$RATE" "$WORKERS" "$MIN_RATE_PCT" "$ok" >>"$SUMMARY"
printf 'failed transactions with walshift'"'"'s fence: median %s  max %s per repetition (%s failed attempts in all)\n' \
    "$fw50" "$fwmax" "$FAT" >>"$SUMMARY"
if [ -s "$AN_ROWS" ]; then
    # AN_ROWS columns: 2 pause, 3 drain, 5 wait_max, 6 fence_p99, 8 failed_writes,
    # 9 failed_attempts, 10 rate, 11 given_up, 12-16 lost.., 17 unacked.
    read -r ap50 apmax apmin an <<<"$(colstat "$AN_ROWS" 2)"
    read -r ad50 admax _ _ <<<"$(colstat "$AN_ROWS" 3)"
    read -r aw50 awmax _ _ <<<"$(colstat "$AN_ROWS" 5)"
    read -r af50 afmax _ _ <<<"$(colstat "$AN_ROWS" 6)"
    read -r afw50 afwmax afwmin _ <<<"$(colstat "$AN_ROWS" 8)"
    read -r afa50 _ _ _ <<<"$(colstat "$AN_ROWS" 9)"
    read -r ar50 _ _ _ <<<"$(colstat "$AN_ROWS" 10)"
    ALOST="$(awk '{s += $11 + $12 + $13 + $14 + $15 + $16} END {print s + 0}' "$AN_ROWS")"
    printf 'anchor (pg_easy_replicate: role read-only + terminate, wait for lag 0 polled every 2 ms, sequences, switch; no final check) over %s: pause (fence -> writes switched) median %s  max %s  min %s ms (drain median %s max %s ms); failed transactions median %s  max %s  min %s (attempts median %s); longest wait median %s  max %s ms; fence-window p99 median %s  max %s ms; %s writes/s before the fence (median); lost or different %s (not checked)\n' \
        "$an" "$(ms "$ap50")" "$(ms "$apmax")" "$(ms "$apmin")" "$(ms "$ad50")" "$(ms "$admax")" "$afw50" "$afwmax" "$afwmin" "$afa50" \
        "$(ms "$aw50")" "$(ms "$awmax")" "$(ms "$af50")" "$(ms "$afmax")" "$(int "$ar50")" "$ALOST" >>"$SUMMARY"
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "n/a"; else printf "%.2fx", a / b }'; }
    printf 'compared (medians): failed transactions walshift %s vs anchor %s; pause walshift %s ms vs anchor %s ms (anchor/walshift %s); longest wait walshift %s ms vs anchor %s ms (%s); fence-window p99 walshift %s ms vs anchor %s ms\n' \
        "$fw50" "$afw50" "$(ms "$p50")" "$(ms "$ap50")" "$(ratio "$ap50" "$p50")" "$(ms "$w50")" "$(ms "$aw50")" \
        "$(ratio "$aw50" "$w50")" "$(ms "$f50")" "$(ms "$af50")" >>"$SUMMARY"
fi

echo
walshift_log_problems
echo
echo "=== summary (walshift $REV at start; 2 clusters + redis-server, fsync=off, synchronous_commit=off; $(nproc) cores) ==="
cat "$BENCH_TMP/tables.txt"
cat "$SUMMARY"
bench_footer
