# Shared helpers for the bench scripts: throwaway PostgreSQL clusters.
# Source this file; it defines start_cluster/stop_clusters and cleans up on exit.
# Clusters run as the `postgres` OS user when the script runs as root.

set -euo pipefail

PG_BIN="$(pg_config --bindir)"
BENCH_TMP="$(mktemp -d /tmp/walshift-bench.XXXXXX)"
chmod 755 "$BENCH_TMP"
CLUSTER_DIRS=()

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_cluster NAME [extra postgres -c settings...]; sets ${NAME}_PORT and ${NAME}_DIR
start_cluster() {
    local name="$1"; shift
    local dir="$BENCH_TMP/$name" port
    port="$(free_port)"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 -N >/dev/null
    cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
max_worker_processes = 16
max_logical_replication_workers = 8
wal_sender_timeout = 60s
shared_buffers = 512MB
max_wal_size = 8GB
fsync = off
full_page_writes = off
synchronous_commit = off
autovacuum = off
CONF
    for setting in "$@"; do echo "$setting" >>"$dir/data/postgresql.conf"; done
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null
    CLUSTER_DIRS+=("$dir")
    printf -v "${name}_PORT" '%s' "$port"
    printf -v "${name}_DIR" '%s' "$dir"
}

# on_exit CMD: run CMD (e.g. stop a background process) on exit, before the
# clusters stop; hooks run in registration order and may fail.
EXIT_HOOKS=()
on_exit() { EXIT_HOOKS+=("$1"); }

stop_clusters() {
    local hook
    for hook in ${EXIT_HOOKS[@]+"${EXIT_HOOKS[@]}"}; do eval "$hook" || true; done
    for dir in "${CLUSTER_DIRS[@]}"; do
        as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    done
    # KEEP_LOGS=DIR keeps the server logs and the scripts' logs and outputs.
    if [ -n "${KEEP_LOGS:-}" ]; then
        mkdir -p "$KEEP_LOGS"
        for dir in "${CLUSTER_DIRS[@]}"; do cp "$dir/log" "$KEEP_LOGS/$(basename "$dir").log" 2>/dev/null || true; done
        cp "$BENCH_TMP"/*.log "$BENCH_TMP"/*.txt "$KEEP_LOGS/" 2>/dev/null || true
        echo "logs kept in $KEEP_LOGS" >&2
    fi
    rm -rf "$BENCH_TMP"
}
trap stop_clusters EXIT

# psql_at PORT [psql args...]
psql_at() {
    local port="$1"; shift
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"
}

# peak_rss_kb FILE: parse `/usr/bin/time -v` output
peak_rss_kb() {
    awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$1"
}

# calc EXPR: floating-point arithmetic (awk; no bc on a fresh machine)
calc() { awk "BEGIN { print $1 }"; }

# /usr/bin/time -v measures peak RSS; Debian's `time` package is not on a fresh machine.
if [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing GNU time (for peak RSS) ..."
        apt-get update -qq >/dev/null && apt-get install -y -qq time >/dev/null
    else
        echo "error: /usr/bin/time is missing: apt-get install time" >&2
        exit 1
    fi
fi

# now_s: wall clock with sub-second precision
now_s() { date +%s.%N; }

# walshift_bin: $WALSHIFT_BIN if set, else the release binary, built (or
# rebuilt if the sources changed: a stale binary would bench old code) first.
walshift_bin() {
    if [ -n "${WALSHIFT_BIN:-}" ]; then echo "$WALSHIFT_BIN"; return; fi
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    (cd "$root" && cargo build --release --quiet) >&2
    echo "$root/target/release/walshift"
}

# bench_revision: the commit the binary was built from, and whether src/ had
# uncommitted changes.
bench_revision() {
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    if git -C "$root" rev-parse --short HEAD >/dev/null 2>&1; then
        printf '%s%s' "$(git -C "$root" rev-parse --short HEAD)" \
            "$(git -C "$root" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' + uncommitted changes')"
    else
        printf 'unknown revision'
    fi
}

# flush_wal PORT: make the server flush all its WAL now. With
# synchronous_commit = off the WAL writer flushes only up to the last
# asynchronous commit, so WAL written after it (e.g. pruning records) can
# wait for the next running-xacts record (up to 15 s) before a walsender may
# send it. A transaction with an xid and synchronous_commit = on flushes
# everything up to its commit record.
flush_wal() {
    psql_at "$1" -d postgres -c "set synchronous_commit = on" -c "select txid_current()" >/dev/null
}

# wait_slot_inactive PORT SLOT: until no process streams from SLOT.
wait_slot_inactive() {
    local i
    for i in $(seq 1 300); do
        [ "$(psql_at "$1" -d postgres -Atc "select active from pg_replication_slots where slot_name = '$2'")" = f ] && return 0
        sleep 0.1
    done
    echo "error: slot $2 still active after 30 s" >&2
    return 1
}

# cpu_s PID...: user+system CPU seconds the processes have used so far.
cpu_s() {
    local pid hz
    hz="$(getconf CLK_TCK)"
    for pid in "$@"; do cat "/proc/$pid/stat"; done |
        awk -v hz="$hz" '{ sub(/^.*\) /, ""); s += $12 + $13 } END { printf "%.2f", s / hz }'
}

# vm_hwm_kb PID: peak resident set size of a running process, in kB.
vm_hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# The seed billing `usage_events` shape every bench uses (primary key only).
USAGE_EVENTS_DDL="create table usage_events (
    id bigint primary key,
    org_id bigint not null,
    event_type text not null,
    quantity numeric(20,6) not null,
    amount_cents bigint not null,
    occurred_at timestamptz not null,
    payload jsonb
);"

# usage_events_identity_ddl SCHEMA: the seed shape with an identity key (the
# load's inserts take ids from it; no foreign key: organizations is not
# copied), in SCHEMA. Indexes are each bench's own.
usage_events_identity_ddl() {
    cat <<SQL
create table $1.usage_events (
    id bigint generated by default as identity primary key,
    org_id bigint not null,
    event_type text not null,
    quantity numeric(20, 6) not null,
    amount_cents bigint not null,
    occurred_at timestamptz not null default now(),
    payload jsonb
);
SQL
}

# usage_events_rows_sql N: inserts N rows of the seed billing shape into
# public.usage_events (deterministic: every run gets the same data).
usage_events_rows_sql() {
    cat <<SQL
insert into public.usage_events (org_id, event_type, quantity, amount_cents, occurred_at, payload)
select 1 + g * 7919 % 1000,
       (array['api_call', 'api_call', 'storage_gb_hour', 'egress_gb', 'seat_day', 'build_minute'])[1 + g % 6],
       round((g * 31 % 100000) / 7.0, 6),
       g * 37 % 100000,
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1.5 second',
       case when g % 10 = 0 then null
            else jsonb_build_object('region', 'eu-' || (g % 5), 'sku', 'sku-' || (g % 37))
       end
from generate_series(1::bigint, $1) g;
SQL
}

# walshift_process_init: WS_PID and WS_LOG ($BENCH_TMP/walshift.log) for
# start_walshift / stop_walshift; a running walshift is killed on exit.
walshift_process_init() {
    WS_PID=""
    WS_LOG="$BENCH_TMP/walshift.log"
    : >"$WS_LOG"
    on_exit '[ -n "$WS_PID" ] && kill "$WS_PID" 2>/dev/null && wait "$WS_PID" 2>/dev/null'
}

# start_walshift CONFIG: `$BIN --config CONFIG run` in the background (log
# appended to WS_LOG, WALSHIFT_LOG default info); sets WS_PID.
start_walshift() {
    WALSHIFT_LOG="${WALSHIFT_LOG:-info}" "$BIN" --config "$1" run 2>>"$WS_LOG" &
    WS_PID=$!
}

# stop_walshift SLOT: SIGTERM, wait, then until SLOT on $SRC_PORT is
# inactive; exits the bench with the log's tail if walshift failed.
stop_walshift() {
    local rc=0
    kill -TERM "$WS_PID"
    wait "$WS_PID" || rc=$?
    WS_PID=""
    wait_slot_inactive "$SRC_PORT" "$1"
    if [ "$rc" != 0 ]; then
        echo "error: walshift run exited with $rc; its log:" >&2
        tail -n 20 "$WS_LOG" >&2
        exit 1
    fi
}

# write_walshift_config FILE SRC_PORT TGT_PORT STATUS_MS: a walshift config
# applying public.usage_events (same-named columns) from SRC to TGT through
# slot bench_ws and publication bench_pub, with the default [apply] batching,
# plus the TOML in WALSHIFT_EXTRA_TOML (e.g. "[verify]\nenabled = false").
write_walshift_config() {
    cat >"$1" <<TOML
[migration]
name = "bench"
[source]
url = "postgres://postgres@127.0.0.1:$2/postgres?sslmode=disable"
slot = "bench_ws"
publication = "bench_pub"
status_interval_ms = $4
[target]
url = "postgres://postgres@127.0.0.1:$3/postgres?sslmode=disable"
[[tables]]
source = "public.usage_events"
target = "public.usage_events"
[apply]
batch_max_rows = 5000
batch_max_ms = 100
$(printf '%b' "${WALSHIFT_EXTRA_TOML:-}")
TOML
}

# tup_counts: "inserted updated deleted" of public.usage_events on the
# source ($SRC_PORT), once pgbench's backends are gone and their statistics
# flushed (two equal reads).
tup_counts() {
    local q="select n_tup_ins || ' ' || n_tup_upd || ' ' || n_tup_del from pg_stat_user_tables where relid = 'public.usage_events'::regclass"
    local a b
    while [ "$(psql_at "$SRC_PORT" -d postgres -Atc "select count(*) from pg_stat_activity where application_name = 'pgbench'")" != 0 ]; do
        sleep 0.1
    done
    a="$(psql_at "$SRC_PORT" -d postgres -Atc "$q")"
    while sleep 0.3; b="$(psql_at "$SRC_PORT" -d postgres -Atc "$q")"; [ "$a" != "$b" ]; do a="$b"; done
    echo "$b"
}

# mark_backfilled TGT_PORT: records public.usage_events as already copied in
# walshift's state schema, for the apply benches, which load the targets
# themselves (otherwise `run` would first backfill the table again).
mark_backfilled() {
    psql_at "$1" -d postgres -c "insert into walshift.backfill \
        (migration, source_table, target_table, started_at, completed_at) \
        values ('bench', 'public.usage_events', 'public.usage_events', now(), now()) \
        on conflict (migration, source_table, target_table) do update set completed_at = now()"
}

# apply_bench_prologue: the shared start of the apply benches. Sets WATCH
# (the slot watcher), BIN (a private copy of the release binary, so a
# rebuild during the run cannot change what is measured) and SCRIPT_T0.
apply_bench_prologue() {
    WATCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/slot_watch.py"
    BIN="$(walshift_bin)"
    cp "$BIN" "$BENCH_TMP/walshift" && BIN="$BENCH_TMP/walshift"
    SCRIPT_T0="$(now_s)"
    echo "walshift $(bench_revision); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# write_usage_events_load FILE PORT: a pgbench script of one row change per
# transaction on usage_events at PORT (60% inserts with org_id 0 and
# occurred_at = clock_timestamp(), so the newest such row on a target gives
# the lag; 30% updates and 10% deletes of random existing ids).
write_usage_events_load() {
    local file=$1 port=$2 seq random_id
    seq="$(psql_at "$port" -d postgres -Atc "select pg_get_serial_sequence('public.usage_events', 'id')")"
    random_id="select 1 + (random() * (last_value - 1))::bigint from $seq"
    cat >"$file" <<SQL
\set r random(1, 100)
\set q random(1, 100000)
\set a random(1, 100000)
\set region random(0, 4)
\set sku random(0, 36)
\if :r <= 60
insert into public.usage_events (org_id, event_type, quantity, amount_cents, occurred_at, payload)
    values (0, 'api_call', round(:q / 7.0, 6), :a, clock_timestamp(),
            jsonb_build_object('region', 'eu-' || :region, 'sku', 'sku-' || :sku));
\elif :r <= 90
update public.usage_events set amount_cents = amount_cents + 1, quantity = quantity + 1
    where id = ($random_id);
\else
delete from public.usage_events where id = ($random_id);
\endif
SQL
}

# --- helpers of benches/cutover_pause.sh ------------------------------------

# start_redis: a redis-server (apt package) on a free loopback port, no
# persistence, logging to $BENCH_TMP/redis.log; sets REDIS_PORT and
# REDIS_PID and stops it on exit. Call it after walshift_process_init, so
# that walshift stops (and releases its lease) before Redis does.
start_redis() {
    local i
    REDIS_PORT="$(free_port)"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$BENCH_TMP" --logfile "$BENCH_TMP/redis.log" --daemonize no &
    REDIS_PID=$!
    on_exit '[ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null'
    for i in $(seq 1 100); do
        [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && return 0
        kill -0 "$REDIS_PID" || { echo "error: redis-server died" >&2; cat "$BENCH_TMP/redis.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "error: redis-server did not answer within 10 s" >&2
    exit 1
}

# stop_walshift_rc SLOT: like stop_walshift (SIGTERM, wait, until SLOT on
# $SRC_PORT is inactive), but for a walshift that may have exited by itself:
# sets WS_RC to walshift's exit status instead of ending the bench (and
# prints the log's tail when it is not 0).
stop_walshift_rc() {
    WS_RC=0
    kill -TERM "$WS_PID" 2>/dev/null || true
    wait "$WS_PID" || WS_RC=$?
    WS_PID=""
    wait_slot_inactive "$SRC_PORT" "$1" || true
    if [ "$WS_RC" != 0 ]; then
        echo "walshift run exited with $WS_RC; its log:" >&2
        tail -n 20 "$WS_LOG" >&2
    fi
}

# quiet_init, then wait_quiet WHAT / check_quiet WHAT around a timed
# measurement: other heavy work on the machine (cargo builds and tests,
# test binaries, other benches) skews timings, so wait_quiet waits for it
# to end (at most WAIT_MAX s, default 300) and check_quiet notes if any ran
# during the measurement (in NOT_QUIET). The bench's own process group
# (e.g. walshift_bin's build) does not count.
quiet_init() {
    BUSY_RE='cargo (build|test|check|clippy|nextest|bench)|clippy-driver|/rustc |target/(debug|release)/deps/|benches/[a-z_]+[.]sh'
    MY_PGID="$(ps -o pgid= $$ | tr -d ' ')"
    NOT_QUIET=()
    BUSY_LOG="$BENCH_TMP/busy.txt"
    QW_PID=""
    WAIT_MAX="${WAIT_MAX:-300}"
    on_exit '[ -n "$QW_PID" ] && kill "$QW_PID" 2>/dev/null'
}
busy() {
    local pid pg
    for pid in $(pgrep -f -- "$BUSY_RE"); do
        pg="$(ps -o pgid= "$pid" 2>/dev/null | tr -d ' ')" || continue
        [ -z "$pg" ] || [ "$pg" = "$MY_PGID" ] && continue
        ps -o args= "$pid" 2>/dev/null | cut -c1-80
        return 0
    done
    return 1
}
wait_quiet() {
    local t0 what
    t0="$(now_s)"
    if what="$(busy)"; then
        echo "  (waiting for other work to end before: $1; e.g. $what)"
        while busy >/dev/null; do
            if awk "BEGIN { exit !($(now_s) - $t0 > $WAIT_MAX) }"; then
                echo "  WARNING: other work still runs after ${WAIT_MAX} s; measuring anyway ($1)"
                NOT_QUIET+=("$1")
                break
            fi
            sleep 2
        done
        busy >/dev/null || echo "  (waited $(calc "$(now_s) - $t0" | awk '{printf "%.0f", $1}') s)"
    fi
    : >"$BUSY_LOG"
    ( while sleep 2; do busy >>"$BUSY_LOG" || true; done ) &
    QW_PID=$!
}
check_quiet() {
    kill "$QW_PID" 2>/dev/null || true
    QW_PID=""
    busy >>"$BUSY_LOG" || true
    if [ -s "$BUSY_LOG" ]; then
        echo "  WARNING: other work ran during: $1 ($(head -n 1 "$BUSY_LOG"))"
        NOT_QUIET+=("$1")
    fi
}

# walshift_log_problems: counts the WARN/ERROR lines of $WS_LOG and shows
# the first five.
walshift_log_problems() {
    WS_PROBLEMS="$(grep -cE ' (WARN|ERROR) ' "$WS_LOG" || true)"
    echo "walshift log: $WS_PROBLEMS WARN/ERROR lines"
    grep -E ' (WARN|ERROR) ' "$WS_LOG" | head -n 5 || true
}

# bench_footer: the end of a summary: the measurements other work ran
# during (NOT_QUIET), the bench's duration (from SCRIPT_T0) and the result
# (FAILED); returns non-zero when a check was missed.
bench_footer() {
    if (( ${#NOT_QUIET[@]} )); then
        echo "NOTE: other heavy work (builds, tests, benches) ran during: $(printf '%s\n' "${NOT_QUIET[@]}" | awk '!seen[$0]++' | paste -sd ';' | sed 's/;/; /g') (figures may be skewed)"
    fi
    printf 'bench took %.0f s; load average at the end: %s\n' "$(calc "$(now_s) - $SCRIPT_T0")" "$(cut -d' ' -f1-3 /proc/loadavg)"
    (( FAILED == 0 )) && echo "result: PASS" || echo "result: FAIL"
    (( FAILED == 0 ))
}
