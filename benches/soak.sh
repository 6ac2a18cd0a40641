#!/usr/bin/env bash
# Soak: walshift under a steady write load for a long time, with periodic
# verification and the controller shifting reads to 100 % new. Does its
# memory stay flat, does lag stay low, is the copy exact at the end, and is
# every decision explained? Not part of CI (30 minutes by default).
#
#   bash benches/soak.sh                      # 30 minutes at 5,000 changes/s
#   SOAK_SECONDS=180 bash benches/soak.sh     # a smoke run
#
# Two clusters with the lib's settings (source A, target B) and one
# redis-server (apt package, loopback, no persistence). On A, two tables:
# public.usage_events (the seed billing shape with an identity key, PREPOP
# rows) and public.documents (identity key, org_id, title, version, a body
# of 8 KB of random hex with STORAGE EXTERNAL, so every body is TOASTed out
# of line, uncompressed; updated_at; PREPOP_DOCS rows). They map to
# shadow.usage_events and shadow.documents on B (same shapes, empty): walshift
# backfills them under the load.
#
# Load: pgbench -R on A for SOAK_SECONDS, CLIENTS clients, transactions of
# CHANGES_PER_TXN row changes each at SOAK_RATE / CHANGES_PER_TXN
# transactions/s, so SOAK_RATE row changes/s asked. Each change is, at
# random: usage_events insert 30 %, update 30 %, delete 15 %; documents
# update leaving the body alone (pgoutput sends it as unchanged TOAST) 18 %,
# insert with a new body 3 %, delete 2 %, body rewrite 2 % (updates and
# deletes take the first existing id at or after a random one, so they
# rarely miss).
# Deadlocks between the random updates are retried (--max-tries). The
# achieved rate counts the rows actually changed (pg_stat_user_tables on A).
#
# walshift: `run` with the controller ([redis] url; [traffic]
# read_new_percent = 100, stages = STAGES, on_violation = ON_VIOLATION;
# [cutover] evaluate_interval_ms 1000, max_lag_seconds = MAX_LAG,
# verify_max_age_seconds = VERIFY_MAX_AGE_S, min_soak_seconds =
# STAGE_SOAK_S) and periodic verification ([verify] interval_seconds =
# VERIFY_INTERVAL_S, full_pass_interval_seconds = VERIFY_FULL_S), heartbeat
# every second. lib/soak_watch.py samples every second: walshift's VmRSS
# (/proc/PID/status), walshift_replication_lag_seconds and _bytes (/metrics),
# the applied and source change counters, the published read share and the
# controller's state.
#
# At the end: the load stops; the bench waits until the slot has confirmed
# the source's WAL end (catch-up); `walshift verify --json` runs (must exit
# 0: no difference); an independent check compares count and
# sum(hashtextextended(row text)) of each table on both sides; `walshift
# history --json` is dumped and every entry must have a reason (decisions
# also the gates' values); walshift stops.
#
# Targets (PASS/MISS each): RSS growth after the warm-up (first WARMUP_S s
# excluded; median of the last WINDOW_S s vs the first WINDOW_S s after it)
# <= RSS_GROWTH_MAX_PCT %; lag p99 after the warm-up <= LAG_P99_MAX s;
# achieved rate >= MIN_RATE_PCT % of SOAK_RATE; zero divergence; reads at
# 100 % new at the end; every decision explained.
#
# Environment: SOAK_SECONDS (1800), SOAK_RATE (5000), CHANGES_PER_TXN (5),
# CLIENTS (8), PREPOP (200000), PREPOP_DOCS (5000), WARMUP_S (120),
# WINDOW_S (300), RSS_GROWTH_MAX_PCT (10), LAG_P99_MAX (1.0), MIN_RATE_PCT
# (95), STAGES ("10, 50, 100"), STAGE_SOAK_S (60), ON_VIOLATION ("hold": a
# gate failing holds the weights and the soak goes on; "rollback" needs a
# `walshift resume`, which the bench does not do), MAX_LAG (5),
# VERIFY_INTERVAL_S (60), VERIFY_FULL_S (600), VERIFY_MAX_AGE_S (900),
# WAIT_MAX (s to wait for other heavy work on the machine to end before the
# load starts, 300), WALSHIFT_BIN, WALSHIFT_LOG (default info),
# KEEP_LOGS=DIR (keep the logs, samples, verify report and history).
#
# Exits non-zero if a target is missed.

source "$(dirname "$0")/lib/cluster.sh"
# Ctrl-C or kill: exit, so the lib's EXIT trap stops everything started.
trap 'exit 130' INT
trap 'exit 143' TERM

SOAK_SECONDS="${SOAK_SECONDS:-1800}"
SOAK_RATE="${SOAK_RATE:-5000}"
CHANGES_PER_TXN="${CHANGES_PER_TXN:-5}"
CLIENTS="${CLIENTS:-8}"
PREPOP="${PREPOP:-200000}"
PREPOP_DOCS="${PREPOP_DOCS:-5000}"
WARMUP_S="${WARMUP_S:-120}"
WINDOW_S="${WINDOW_S:-300}"
RSS_GROWTH_MAX_PCT="${RSS_GROWTH_MAX_PCT:-10}"
LAG_P99_MAX="${LAG_P99_MAX:-1.0}"
MIN_RATE_PCT="${MIN_RATE_PCT:-95}"
STAGES="${STAGES:-10, 50, 100}"
STAGE_SOAK_S="${STAGE_SOAK_S:-60}"
ON_VIOLATION="${ON_VIOLATION:-hold}"
MAX_LAG="${MAX_LAG:-5}"
VERIFY_INTERVAL_S="${VERIFY_INTERVAL_S:-60}"
VERIFY_FULL_S="${VERIFY_FULL_S:-600}"
VERIFY_MAX_AGE_S="${VERIFY_MAX_AGE_S:-900}"
TPS="$(calc "$SOAK_RATE / $CHANGES_PER_TXN")"

apply_bench_prologue
REV="$(bench_revision)"
SW="$(cd "$(dirname "$0")" && pwd)/lib/soak_watch.py"

# Stopped on exit in this order (the load and the sampler before walshift,
# walshift before Redis: it releases its lease).
PGB_PID=""; SAMPLER_PID=""
on_exit '[ -n "$PGB_PID" ] && kill "$PGB_PID" 2>/dev/null && wait "$PGB_PID" 2>/dev/null'
on_exit '[ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null && wait "$SAMPLER_PID" 2>/dev/null'
walshift_process_init
quiet_init
keep_outputs() {
    [ -n "${KEEP_LOGS:-}" ] || return 0
    mkdir -p "$KEEP_LOGS"
    cp "$BENCH_TMP"/*.csv "$BENCH_TMP"/*.json "$BENCH_TMP"/*.toml "$BENCH_TMP"/*.sql "$KEEP_LOGS/" 2>/dev/null || true
}
on_exit keep_outputs

start_cluster SRC
start_cluster TGT
start_redis
echo "clusters: source $SRC_PORT, target $TGT_PORT; redis-server $(redis-server --version | awk '{print $3}') on $REDIS_PORT"

# documents_ddl SCHEMA: the TOASTed table.
documents_ddl() {
    cat <<SQL
create table $1.documents (
    id bigint generated by default as identity primary key,
    org_id bigint not null,
    title text not null,
    version int not null default 1,
    body text not null,
    updated_at timestamptz not null default now()
);
-- Out of line and uncompressed whatever the value: every body is TOASTed.
alter table $1.documents alter column body set storage external;
SQL
}
# 8 KB of random hex: incompressible enough that no setting keeps it inline.
BODY="(select string_agg(md5(random()::text), '') from generate_series(1, 256))"

echo "loading $PREPOP usage_events and $PREPOP_DOCS documents rows ..."
psql_at "$SRC_PORT" -d postgres >/dev/null <<SQL
$(usage_events_identity_ddl public)
$(usage_events_rows_sql "$PREPOP")
$(documents_ddl public)
insert into public.documents (org_id, title, body)
select 1 + g % 1000, 'doc ' || g, $BODY from generate_series(1, $PREPOP_DOCS) g;
vacuum analyze public.usage_events, public.documents;
SQL
psql_at "$TGT_PORT" -d postgres >/dev/null <<SQL
create schema shadow;
$(usage_events_identity_ddl shadow)
$(documents_ddl shadow)
SQL

# The pgbench script: one transaction of CHANGES_PER_TXN random changes.
UE_SEQ="$(psql_at "$SRC_PORT" -d postgres -Atc "select pg_get_serial_sequence('public.usage_events', 'id')")"
DOC_SEQ="$(psql_at "$SRC_PORT" -d postgres -Atc "select pg_get_serial_sequence('public.documents', 'id')")"
# A random existing row: the first id at or after a random point below the
# sequence's last value (deletes leave holes; a miss would change nothing).
UE_ID="(select id from public.usage_events where id >= (select (random() * last_value)::bigint from $UE_SEQ) order by id limit 1)"
DOC_ID="(select id from public.documents where id >= (select (random() * last_value)::bigint from $DOC_SEQ) order by id limit 1)"
LOAD="$BENCH_TMP/load.sql"
{
    echo '\set org random(1, 1000)'
    echo 'begin;'
    for _ in $(seq 1 "$CHANGES_PER_TXN"); do
        cat <<SQL
\\set r random(1, 100)
\\if :r <= 30
insert into public.usage_events (org_id, event_type, quantity, amount_cents, occurred_at, payload) values (:org, 'api_call', round((random() * 1000)::numeric, 6), (random() * 100000)::bigint, clock_timestamp(), jsonb_build_object('region', 'eu-' || (:org % 5), 'sku', 'sku-' || (:org % 37)));
\\elif :r <= 60
update public.usage_events set amount_cents = amount_cents + 1, quantity = quantity + 1 where id = $UE_ID;
\\elif :r <= 75
delete from public.usage_events where id = $UE_ID;
\\elif :r <= 93
update public.documents set version = version + 1, title = 'rev ' || (version + 1), updated_at = clock_timestamp() where id = $DOC_ID;
\\elif :r <= 96
insert into public.documents (org_id, title, body) values (:org, 'new', $BODY);
\\elif :r <= 98
delete from public.documents where id = $DOC_ID;
\\else
update public.documents set body = $BODY, version = version + 1, updated_at = clock_timestamp() where id = $DOC_ID;
\\endif
SQL
    done
    echo 'commit;'
} >"$LOAD"

METRICS_PORT="$(free_port)"
CONF="$BENCH_TMP/soak.toml"
cat >"$CONF" <<TOML
[migration]
name = "soak"
[source]
url = "postgres://postgres@127.0.0.1:$SRC_PORT/postgres?sslmode=disable"
slot = "soak"
publication = "soak"
status_interval_ms = 1000
heartbeat_interval_ms = 1000
[target]
url = "postgres://postgres@127.0.0.1:$TGT_PORT/postgres?sslmode=disable"
[[tables]]
source = "public.usage_events"
target = "shadow.usage_events"
[[tables]]
source = "public.documents"
target = "shadow.documents"
[apply]
batch_max_rows = 5000
batch_max_ms = 100
[metrics]
listen = "127.0.0.1:$METRICS_PORT"
[verify]
interval_seconds = $VERIFY_INTERVAL_S
full_pass_interval_seconds = $VERIFY_FULL_S
repair = false
[redis]
url = "redis://127.0.0.1:$REDIS_PORT"
key_prefix = "soak:"
[traffic]
read_new_percent = 100
stages = [$STAGES]
on_violation = "$ON_VIOLATION"
[cutover]
evaluate_interval_ms = 1000
max_lag_seconds = $MAX_LAG
max_lag_bytes = 268435456
verify_max_age_seconds = $VERIFY_MAX_AGE_S
min_soak_seconds = $STAGE_SOAK_S
TOML
"$BIN" --config "$CONF" --log-level warn setup >/dev/null

FAILED=0
wait_quiet "the soak"
echo "soak: ${SOAK_SECONDS} s at $SOAK_RATE row changes/s asked ($TPS transactions/s of $CHANGES_PER_TXN changes, $CLIENTS clients); reads to 100 % new through stages [$STAGES], ${STAGE_SOAK_S} s each; verification every ${VERIFY_INTERVAL_S} s (full every ${VERIFY_FULL_S} s)"
start_walshift "$CONF"
for _ in $(seq 1 100); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
        "http://127.0.0.1:$METRICS_PORT/metrics" >/dev/null 2>&1 && break
    kill -0 "$WS_PID" 2>/dev/null || { echo "error: walshift run exited; its log:" >&2; tail -n 20 "$WS_LOG" >&2; exit 1; }
    sleep 0.1
done
SAMPLES="$BENCH_TMP/samples.csv"
python3 "$SW" sample --pid "$WS_PID" --metrics-port "$METRICS_PORT" --src "$SRC_PORT" \
    --tables public.usage_events,public.documents --out "$SAMPLES" &
SAMPLER_PID=$!
LOAD_T0="$(now_s)"
pgbench -n -h 127.0.0.1 -p "$SRC_PORT" -U postgres -c "$CLIENTS" -j 2 -R "$TPS" -T "$SOAK_SECONDS" \
    --max-tries 10 -P 60 -f "$LOAD" postgres >"$BENCH_TMP/pgbench.txt" 2>&1 &
PGB_PID=$!
# Progress every minute: walshift alive, the published share, lag and RSS.
NEXT=60
while kill -0 "$PGB_PID" 2>/dev/null; do
    sleep 1
    kill -0 "$WS_PID" 2>/dev/null || { echo "error: walshift run exited during the soak; its log:" >&2; tail -n 20 "$WS_LOG" >&2; exit 1; }
    el="$(calc "$(now_s) - $LOAD_T0" | awk '{printf "%d", $1}')"
    if (( el >= NEXT )); then
        NEXT=$(( NEXT + 60 ))
        tail -n 1 "$SAMPLES" | awk -F, -v el="$el" '{ printf "  %4d s: RSS %.1f MiB, lag %s s, reads %s %% new, %s\n", el, $2 / 1024, $3, $7, $8 }'
    fi
done
PGB_RC=0
wait "$PGB_PID" || PGB_RC=$?
PGB_PID=""
LOAD_T1="$(now_s)"
check_quiet "the soak"
if [ "$PGB_RC" != 0 ]; then
    echo "error: pgbench exited with $PGB_RC:" >&2
    tail -n 20 "$BENCH_TMP/pgbench.txt" >&2
    exit 1
fi
# pgbench's own figures: a growing schedule lag means the source (or the
# machine) could not take the rate asked, whatever walshift does.
PGB_LINE="pgbench: $(grep -E '^(number of transactions actually processed|number of failed transactions|number of transactions retried|rate limit schedule lag|tps)' "$BENCH_TMP/pgbench.txt" | paste -sd ';' | sed 's/;/; /g')"
echo "$PGB_LINE"

# Catch-up: until the slot confirms the source's WAL end at the load's end.
END="$(psql_at "$SRC_PORT" -d postgres -Atc 'select pg_current_wal_insert_lsn()')"
flush_wal "$SRC_PORT"
read -r CATCHUP_S _ _ < <(python3 "$WATCH" drain --src "$SRC_PORT" --slot soak --endpos "$END" --t0 "$LOAD_T1" \
    --target "$TGT_PORT" --applied-sql "select coalesce((select applied_lsn from walshift.progress where migration = 'soak'), '0/0')" \
    --pid "$WS_PID" --timeout 600 || true)
[ -n "${CATCHUP_S:-}" ] || { echo "walshift did not catch up within 600 s"; CATCHUP_S=-1; FAILED=1; }
kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""

# walshift's verdict, then an independent one.
VERIFY_RC=0
"$BIN" --config "$CONF" --log-level warn verify --json >"$BENCH_TMP/verify.json" 2>"$BENCH_TMP/verify_err.txt" || VERIFY_RC=$?
[ "$VERIFY_RC" = 0 ] || { echo "walshift verify exited $VERIFY_RC:"; head -c 2000 "$BENCH_TMP/verify.json"; cat "$BENCH_TMP/verify_err.txt"; }
digest() {
    psql_at "$1" -d postgres -Atc "select count(*) || ' ' || coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) from $2 t"
}
COMPARE=""
for t in usage_events documents; do
    a="$(digest "$SRC_PORT" "public.$t")"; b="$(digest "$TGT_PORT" "shadow.$t")"
    if [ "$a" = "$b" ]; then COMPARE+="$t equal (${a%% *} rows); "; else COMPARE+="$t differ (source $a, target $b); "; fi
done
COMPARE="${COMPARE%; }"
"$BIN" --config "$CONF" --log-level warn history --json --limit 1000000 >"$BENCH_TMP/history.json" 2>"$BENCH_TMP/history_err.txt" || true
stop_walshift_rc soak

echo
walshift_log_problems
echo
echo "=== summary (walshift $REV at start; 2 clusters + redis-server, fsync=off, synchronous_commit=off; $(nproc) cores; ${SOAK_SECONDS} s) ==="
python3 "$SW" report --csv "$SAMPLES" --load-start "$LOAD_T0" --load-end "$LOAD_T1" --warmup "$WARMUP_S" \
    --window "$WINDOW_S" --rate "$SOAK_RATE" --min-rate-pct "$MIN_RATE_PCT" --rss-growth-max "$RSS_GROWTH_MAX_PCT" \
    --lag-p99-max "$LAG_P99_MAX" --history "$BENCH_TMP/history.json" --verify-rc "$VERIFY_RC" \
    --verify-json "$BENCH_TMP/verify.json" --compare "$COMPARE" --catchup-s "$CATCHUP_S" || FAILED=1
echo "$PGB_LINE"
[ "$WS_RC" = 0 ] || { echo "walshift run exited $WS_RC"; FAILED=1; }
bench_footer
