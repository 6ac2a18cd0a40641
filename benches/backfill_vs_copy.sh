#!/usr/bin/env bash
# Benchmark: walshift's backfill against the other ways to copy a table, in
# the same run, on the same machine, the same data and the same target shape.
#
#   bash benches/backfill_vs_copy.sh [ROWS] [PHASES]
#
# ROWS (default 2000000) rows of the seed billing `usage_events` shape
# (sql/demo/seed_billing.sql, without the foreign key to organizations, which
# is not copied) are generated on the source with generate_series. PHASES is
# a comma list (default: all, always run in this order):
#
#   walshift  `walshift backfill` cross-cluster (source A, target B), identity
#             mapping into shadow.usage_events, once per PARALLELISMS value;
#             rows/s over the copy phase (walshift.backfill.completed_at -
#             started_at); also printed: started_at until the completion was
#             visible on the target (polled every 20 ms, like native's
#             states; completed_at is the now() of the last chunk's
#             transaction, so it leaves out that chunk's write) and the
#             command's wall time (start-up and exit included)
#   same      the same, target shadow.usage_events in the source database
#   native    CREATE SUBSCRIPTION (copy_data) on B: the table's initial sync,
#             timed from pg_subscription_rel.srsubstate 'd' (data copy) to
#             'r' (ready), polled every 20 ms, so the launcher's start-up
#             does not count
#   raw       psql A COPY TO STDOUT (binary) | psql B COPY FROM STDIN (binary)
#   pgcopydb  `pgcopydb clone` of the table (reference only: it creates the
#             indexes after the copy); installed with apt-get if missing,
#             skipped with a note if that fails
#   offset    the naive batch loop on A: insert into shadow.usage_events
#             select * from public.usage_events order by id limit 10000
#             offset K, one transaction per batch, until done (quadratic)
#   lag       `walshift run` backfills the table cross-cluster
#             (max_lag_seconds = LAG_MAX) while pgbench writes ~LAG_RATE
#             changes/s (60% insert, 30% update, 10% delete; started once
#             the backfill has committed its first chunk) on the source;
#             lag sampled every 150 ms (see lib/backfill_watch.py: the newest
#             load row on the target, and the applied position and the slot
#             as lib/slot_watch.py measures them); at completion the load
#             stops, walshift catches up (slot at the source's end LSN) and
#             the target must equal the source (PASS/FAIL)
#
# Every target has the same shape: primary key on id plus indexes on
# (org_id, occurred_at) and (event_type), created before the copy (the
# source has the same indexes, so pgcopydb builds the same ones after its
# copy). Before each method the target table is created afresh and both
# clusters run CHECKPOINT; after it the target is compared with the source
# (count(*) and the sum of a 64-bit hash of every row): a copy that differs
# fails the run and its figure is marked INVALID. Exit status: 0, 1 if a
# copy differed (or a step failed), 3 if a requested walshift phase could
# not run (a build without the backfill subcommand). Source and target are two
# clusters with the lib's identical settings (start_cluster defaults).
#
# Environment: PARALLELISMS (walshift's backfill.parallelism values, default
# "1,2"), BACKFILL_TOML (extra lines for walshift's [backfill] section, e.g.
# "chunk_rows_max = 100000"), OFFSET_BATCH (10000), LAG_RATE (5000 changes/s),
# LAG_MAX (max_lag_seconds in the lag phase, 5), LAG_PARALLELISM (1),
# CLIENTS (pgbench clients, 4), STATUS_MS (source.status_interval_ms, 1000),
# WALSHIFT_LOG (walshift's log filter, info), WALSHIFT_BIN (use this binary
# instead of building the release one), KEEP_LOGS=DIR (keep the logs).

source "$(dirname "$0")/lib/cluster.sh"

ROWS="${1:-2000000}"
ALL_PHASES="walshift,same,native,raw,pgcopydb,offset,lag"
PHASES="${2:-$ALL_PHASES}"
PARALLELISMS="${PARALLELISMS:-1,2}"
BACKFILL_TOML="${BACKFILL_TOML:-}"
OFFSET_BATCH="${OFFSET_BATCH:-10000}"
LAG_RATE="${LAG_RATE:-5000}"
LAG_MAX="${LAG_MAX:-5}"
LAG_PARALLELISM="${LAG_PARALLELISM:-1}"
CLIENTS="${CLIENTS:-4}"
STATUS_MS="${STATUS_MS:-1000}"
LIB="$(cd "$(dirname "$0")/lib" && pwd)"
export PYTHONDONTWRITEBYTECODE=1

for p in ${PHASES//,/ }; do
    [[ ",$ALL_PHASES," == *",$p,"* ]] || { echo "error: unknown phase '$p' (phases: $ALL_PHASES)" >&2; exit 2; }
done
[[ "$ROWS" =~ ^[1-9][0-9]*$ ]] || { echo "error: ROWS must be a positive integer, not '$ROWS'" >&2; exit 2; }
want() { [[ ",$PHASES," == *",$1,"* ]]; }

SCRIPT_T0="$(now_s)"
SKIPPED=()   # requested phases that could not run (a walshift skip fails the run)

# walshift: a private copy of the release binary (a rebuild during the run
# cannot change what is measured), only when a walshift phase is requested.
BIN=""
if want walshift || want same || want lag; then
    BIN="$(walshift_bin)"
    cp "$BIN" "$BENCH_TMP/walshift" && BIN="$BENCH_TMP/walshift"
    echo "walshift $(bench_revision)"
    if ! "$BIN" backfill --help >/dev/null 2>&1; then
        echo "NOTE: this walshift build has no 'backfill' subcommand: the walshift phases are skipped"
        kept=""
        for p in ${PHASES//,/ }; do
            case "$p" in
                walshift|same|lag) SKIPPED+=("$p (walshift has no backfill subcommand)") ;;
                *) kept="$kept,$p" ;;
            esac
        done
        PHASES="${kept#,}"
    fi
fi
echo "rows: $ROWS; phases: $PHASES; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

start_cluster SRC
start_cluster TGT
echo "clusters: source (A) $SRC_PORT, target (B) $TGT_PORT"
SRC_URL="postgres://postgres@127.0.0.1:$SRC_PORT/postgres?sslmode=disable"
TGT_URL="postgres://postgres@127.0.0.1:$TGT_PORT/postgres?sslmode=disable"

# The target shape's indexes (the table: usage_events_identity_ddl); the
# source carries the same indexes.
index_ddl() {
    cat <<SQL
create index usage_events_org_occurred on $1.usage_events (org_id, occurred_at);
create index usage_events_event_type on $1.usage_events (event_type);
SQL
}

echo "generating $ROWS rows on the source ..."
t0="$(now_s)"
psql_at "$SRC_PORT" -d postgres <<SQL
$(usage_events_identity_ddl public)
insert into public.usage_events (org_id, event_type, quantity, amount_cents, occurred_at, payload)
select 1 + g * 7919 % 1000,
       (array['api_call', 'api_call', 'storage_gb_hour', 'egress_gb', 'seat_day', 'build_minute'])[1 + g % 6],
       round((g * 31 % 100000) / 7.0, 6),
       g * 37 % 100000,
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1.5 second',
       case when g % 10 = 0 then null
            else jsonb_build_object('region', 'eu-' || (g % 5), 'sku', 'sku-' || (g % 37),
                                    'units', g % 1000, 'tags', jsonb_build_array('t' || (g % 7), 't' || (g % 11)))
       end
from generate_series(1::bigint, $ROWS) g;
$(index_ddl public)
-- Hint bits and the visibility map set once, so no method pays for them.
vacuum (freeze, analyze) public.usage_events;
SQL
SRC_SIZE="$(psql_at "$SRC_PORT" -d postgres -Atc "select pg_size_pretty(pg_table_size('public.usage_events')) || ' heap, ' || pg_size_pretty(pg_indexes_size('public.usage_events')) || ' indexes'")"
printf '  done in %.1f s (%s)\n' "$(calc "$(now_s) - $t0")" "$SRC_SIZE"

# digest PORT TABLE: "rows hash" (sum of a 64-bit hash of each row's text).
digest() {
    psql_at "$1" -d postgres -Atc "select count(*) || ' ' || coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) from $2 t"
}
SRC_DIGEST="$(digest "$SRC_PORT" public.usage_events)"

CONTENT_OK=1
# verify LABEL PORT TABLE [EXPECTED]: the target must equal the source.
verify() {
    local got want="${4:-$SRC_DIGEST}"
    got="$(digest "$2" "$3")"
    if [ "$got" = "$want" ]; then
        echo "  content: ${got%% *} rows, identical to the source"
        return 0
    fi
    echo "  CONTENT MISMATCH ($1): source: $want; target: $got"
    CONTENT_OK=0
    INVALID+=("$1")
    return 1
}
INVALID=()

# make_target PORT SCHEMA: a fresh, pre-indexed SCHEMA.usage_events.
make_target() {
    psql_at "$1" -d postgres -c "set client_min_messages = warning" -c "create schema if not exists $2" -c "drop table if exists $2.usage_events" \
        -c "$(usage_events_identity_ddl "$2")" -c "$(index_ddl "$2")"
}
drop_target() { psql_at "$1" -d postgres -c "set client_min_messages = warning" -c "drop table if exists $2.usage_events"; }
# Before every timed phase: both clusters checkpointed and the OS's dirty
# pages written out, so no phase pays for the previous one's writeback.
checkpoint_all() {
    psql_at "$SRC_PORT" -d postgres -c checkpoint
    psql_at "$TGT_PORT" -d postgres -c checkpoint
    sync
    sleep 1
}

RESULTS="$BENCH_TMP/results.txt"   # method seconds wall_seconds [visible_seconds]
: >"$RESULTS"
record() { echo "$*" >>"$RESULTS"; }
rate() { calc "$ROWS / $1" | awk '{printf "%.0f", $1}'; }

# --- walshift ----------------------------------------------------------------

WS_LOG="$BENCH_TMP/walshift.log"
: >"$WS_LOG"
WS_PID=""
on_exit '[ -n "$WS_PID" ] && kill "$WS_PID" 2>/dev/null'
CONF="$BENCH_TMP/walshift.toml"

# write_backfill_config FILE SRC_PORT TGT_PORT PARALLELISM [MAX_LAG_SECONDS]:
# public.usage_events -> shadow.usage_events, every column as is, key id.
write_backfill_config() {
    cat >"$1" <<TOML
[migration]
name = "bench"
[source]
url = "postgres://postgres@127.0.0.1:$2/postgres?sslmode=disable"
slot = "bench_ws"
publication = "bench_pub"
status_interval_ms = $STATUS_MS
[target]
url = "postgres://postgres@127.0.0.1:$3/postgres?sslmode=disable"
[[tables]]
source = "public.usage_events"
target = "shadow.usage_events"
key = ["id"]
[apply]
batch_max_rows = 5000
batch_max_ms = 100
[backfill]
parallelism = $4
$( [ -n "${5:-}" ] && echo "max_lag_seconds = $5" )
$BACKFILL_TOML
[metrics]
listen = "127.0.0.1:$(free_port)"
TOML
}

ws() { WALSHIFT_LOG="${WALSHIFT_LOG:-info}" "$BIN" --config "$CONF" "$@"; }
ws_teardown() {
    wait_slot_inactive "$SRC_PORT" bench_ws
    ws --log-level warn teardown --yes >/dev/null
}

BACKFILL_ROW_SQL="select rows_copied, extract(epoch from completed_at - started_at), extract(epoch from started_at)
    from walshift.backfill where migration = 'bench' and target_table like '%usage_events'"

# walshift_backfill METHOD TGT_PORT PARALLELISM
walshift_backfill() {
    local method="$1" port="$2" par="$3" t0 t1 rc=0 out="$BENCH_TMP/backfill_$1.txt" copied copy_s wall
    local poll_pid visible_at started_at visible_s
    make_target "$port" shadow
    write_backfill_config "$CONF" "$SRC_PORT" "$port" "$par"
    ws --log-level warn setup >/dev/null
    checkpoint_all
    # When the completion becomes visible on the target (polled every 20 ms,
    # as the native sync's states are): completed_at is the target's now()
    # of the last chunk's transaction, i.e. before that chunk is written.
    python3 "$LIB/backfill_watch.py" until --port "$port" --sql "select coalesce((select completed_at is not null
        from walshift.backfill where migration = 'bench' and target_table like '%usage_events'), false)" \
        >"$BENCH_TMP/visible_$method.txt" &
    poll_pid=$!
    t0="$(now_s)"
    ws backfill >"$out" 2>>"$WS_LOG" || rc=$?
    t1="$(now_s)"
    wall="$(calc "$t1 - $t0")"
    if [ "$rc" != 0 ]; then
        kill "$poll_pid" 2>/dev/null || true
        echo "error: walshift backfill exited with $rc; its log:" >&2
        tail -n 20 "$WS_LOG" >&2
        exit 1
    fi
    sed 's/^/  walshift: /' "$out"
    read -r copied copy_s started_at < <(psql_at "$port" -d postgres -Atc "$BACKFILL_ROW_SQL" -F ' ')
    if [ -z "${copy_s:-}" ]; then
        kill "$poll_pid" 2>/dev/null || true
        echo "error: no completed row in walshift.backfill on port $port" >&2
        exit 1
    fi
    wait "$poll_pid"
    visible_at="$(cat "$BENCH_TMP/visible_$method.txt")"
    visible_s="$(calc "$visible_at - $started_at")"
    [ "$copied" = "$ROWS" ] || echo "  NOTE: walshift.backfill.rows_copied = $copied, the source has $ROWS rows"
    printf '  copy phase (completed_at - started_at) %.2f s (%s rows/s); until the completion was visible %.2f s (%s rows/s); command wall time %.2f s (%s rows/s)\n' \
        "$copy_s" "$(rate "$copy_s")" "$visible_s" "$(rate "$visible_s")" "$wall" "$(rate "$wall")"
    verify "$method" "$port" shadow.usage_events || true
    record "$method" "$copy_s" "$wall" "$visible_s"
    ws_teardown
    drop_target "$port" shadow
}

if want walshift; then
    for par in ${PARALLELISMS//,/ }; do
        echo; echo "walshift backfill, cross-cluster (A -> B shadow.usage_events), parallelism $par ..."
        walshift_backfill "walshift-p$par" "$TGT_PORT" "$par"
    done
fi
if want same; then
    for par in ${PARALLELISMS//,/ }; do
        echo; echo "walshift backfill, same database (A public -> A shadow), parallelism $par ..."
        walshift_backfill "same-db-p$par" "$SRC_PORT" "$par"
    done
fi

# --- native initial sync -----------------------------------------------------

if want native; then
    echo; echo "native logical replication initial sync (CREATE SUBSCRIPTION, copy_data) ..."
    make_target "$TGT_PORT" public
    psql_at "$SRC_PORT" -d postgres -c "create publication bench_native_pub for table public.usage_events"
    checkpoint_all
    python3 "$LIB/backfill_watch.py" sync --port "$TGT_PORT" --sub bench_native >"$BENCH_TMP/native_sync.txt" &
    sync_pid=$!
    sleep 0.3
    t0="$(now_s)"
    psql_at "$TGT_PORT" -d postgres -c "set client_min_messages = warning" -c "create subscription bench_native
        connection 'host=127.0.0.1 port=$SRC_PORT dbname=postgres user=postgres application_name=bench_native'
        publication bench_native_pub with (copy_data = true)"
    wait "$sync_pid"
    read -r d_at f_at r_at <"$BENCH_TMP/native_sync.txt"
    copy_s="$(calc "$r_at - $d_at")"
    printf '  d -> r (copy phase) %.2f s (%s rows/s); d -> f (COPY alone) %.2f s; CREATE SUBSCRIPTION -> r %.2f s\n' \
        "$copy_s" "$(rate "$copy_s")" "$(calc "$f_at - $d_at")" "$(calc "$r_at - $t0")"
    verify native "$TGT_PORT" public.usage_events || true
    record native "$copy_s" "$(calc "$r_at - $t0")"
    psql_at "$TGT_PORT" -d postgres -c "set client_min_messages = warning" -c "drop subscription bench_native"
    psql_at "$SRC_PORT" -d postgres -c "drop publication bench_native_pub"
    drop_target "$TGT_PORT" public
fi

# --- raw COPY pipe -----------------------------------------------------------

if want raw; then
    echo; echo "raw pipe: COPY TO STDOUT (binary) | COPY FROM STDIN (binary) ..."
    make_target "$TGT_PORT" shadow
    checkpoint_all
    t0="$(now_s)"
    psql_at "$SRC_PORT" -d postgres -c "copy public.usage_events to stdout (format binary)" |
        psql_at "$TGT_PORT" -d postgres -c "copy shadow.usage_events from stdin (format binary)"
    wall="$(calc "$(now_s) - $t0")"
    printf '  wall time %.2f s (%s rows/s)\n' "$wall" "$(rate "$wall")"
    verify raw "$TGT_PORT" shadow.usage_events || true
    record raw "$wall" "$wall"
    drop_target "$TGT_PORT" shadow
fi

# --- pgcopydb clone ----------------------------------------------------------

if want pgcopydb; then
    echo; echo "pgcopydb clone of public.usage_events (indexes built after the copy; reference only) ..."
    if ! command -v pgcopydb >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "  installing pgcopydb ..."
        { apt-get update -qq && apt-get install -y -qq pgcopydb; } >"$BENCH_TMP/pgcopydb_install.log" 2>&1 || true
    fi
    if ! command -v pgcopydb >/dev/null; then
        echo "  NOTE: pgcopydb is not installed and could not be installed (apt-get install pgcopydb): skipped"
        SKIPPED+=("pgcopydb (not installable)")
    else
        drop_target "$TGT_PORT" public
        # Its schema restore would fail on a schema the target already has
        # (the other phases' shadow schema, empty between phases).
        for port in "$SRC_PORT" "$TGT_PORT"; do
            psql_at "$port" -d postgres -c "set client_min_messages = warning" -c "drop schema if exists shadow cascade"
        done
        printf '[include-only-table]\npublic.usage_events\n' >"$BENCH_TMP/pgcopydb.filters"
        checkpoint_all
        t0="$(now_s)"
        rc=0
        # setsid: on a failure pgcopydb terminates its whole process group.
        setsid --wait pgcopydb clone --source "$SRC_URL" --target "$TGT_URL" --dir "$BENCH_TMP/pgcopydb" \
            --filters "$BENCH_TMP/pgcopydb.filters" --table-jobs 1 --index-jobs "$(nproc)" \
            --no-owner --no-acl --skip-extensions >"$BENCH_TMP/pgcopydb.log" 2>&1 || rc=$?
        wall="$(calc "$(now_s) - $t0")"
        if [ "$rc" != 0 ]; then
            echo "  NOTE: pgcopydb clone failed (exit $rc): skipped; its log:"
            tail -n 15 "$BENCH_TMP/pgcopydb.log" | sed 's/^/    /'
            SKIPPED+=("pgcopydb (clone failed)")
        else
            idx="$(psql_at "$TGT_PORT" -d postgres -Atc "select count(*) from pg_indexes where schemaname = 'public' and tablename = 'usage_events'")"
            printf '  wall time %.2f s (%s rows/s), copy + %s indexes + its vacuum analyze\n' "$wall" "$(rate "$wall")" "$idx"
            # pgcopydb's own summary of where the time went.
            sed -n '/Step .*Connection .*Duration/,$p' "$BENCH_TMP/pgcopydb.log" | sed -E 's/^[0-9:]+ [0-9]+ INFO +//; s/^/    /'
            verify pgcopydb "$TGT_PORT" public.usage_events || true
            record pgcopydb "$wall" "$wall"
        fi
        drop_target "$TGT_PORT" public
    fi
fi

# --- LIMIT/OFFSET loop -------------------------------------------------------

if want offset; then
    echo; echo "LIMIT $OFFSET_BATCH OFFSET K loop on A (public -> shadow), one transaction per batch ..."
    make_target "$SRC_PORT" shadow
    checkpoint_all
    t0="$(now_s)"
    psql_at "$SRC_PORT" -d postgres <<SQL
do \$\$
declare
    k bigint := 0;
    n bigint;
begin
    loop
        insert into shadow.usage_events
        select * from public.usage_events order by id limit $OFFSET_BATCH offset k;
        get diagnostics n = row_count;
        commit;
        exit when n < $OFFSET_BATCH;
        k := k + n;
    end loop;
end
\$\$;
SQL
    wall="$(calc "$(now_s) - $t0")"
    printf '  wall time %.2f s (%s rows/s)\n' "$wall" "$(rate "$wall")"
    verify offset "$SRC_PORT" shadow.usage_events || true
    record offset "$wall" "$wall"
    drop_target "$SRC_PORT" shadow
fi

# --- lag under load ----------------------------------------------------------

LAG_RESULT=""
LAG_PASS=""
if want lag; then
    echo; echo "lag under load: walshift run backfills cross-cluster (max_lag_seconds = $LAG_MAX, parallelism $LAG_PARALLELISM) while pgbench writes ~$LAG_RATE changes/s ..."
    make_target "$TGT_PORT" shadow
    write_backfill_config "$CONF" "$SRC_PORT" "$TGT_PORT" "$LAG_PARALLELISM" "$LAG_MAX"
    ws --log-level warn setup >/dev/null
    # One row change per transaction (60/30/10). Inserted rows carry org_id 0
    # and occurred_at = clock_timestamp(): the newest one on the target (an
    # index scan on (org_id, occurred_at)) gives the lag.
    write_usage_events_load "$BENCH_TMP/load.sql" "$SRC_PORT"
    checkpoint_all
    before="$(tup_counts)"
    # Not through ws(): WS_PID must be walshift itself, not a subshell.
    WALSHIFT_LOG="${WALSHIFT_LOG:-info}" "$BIN" --config "$CONF" run 2>>"$WS_LOG" &
    WS_PID=$!
    PROGRESS_SQL="select coalesce(extract(epoch from b.started_at)::text, ''), coalesce(extract(epoch from b.completed_at)::text, ''),
        coalesce(b.rows_copied, 0), coalesce(b.pauses, 0), coalesce(b.paused_reason, '')
        from (select 1) one left join walshift.backfill b on b.migration = 'bench' and b.target_table like '%usage_events'"
    WS_APPLIED_SQL="select coalesce((select applied_lsn from walshift.progress where migration = 'bench'), '0/0')"
    LOAD_TS_SQL="select coalesce(extract(epoch from max(occurred_at))::text, '') from shadow.usage_events where org_id = 0"
    LAG_OUT="$BENCH_TMP/lag.txt"
    python3 "$LIB/backfill_watch.py" lag --src "$SRC_PORT" --target "$TGT_PORT" --slot bench_ws \
        --applied-sql "$WS_APPLIED_SQL" --progress-sql "$PROGRESS_SQL" --load-ts-sql "$LOAD_TS_SQL" \
        --pid "$WS_PID" --out "$BENCH_TMP/pgbench_lag.txt" -- \
        pgbench -n -h 127.0.0.1 -p "$SRC_PORT" -U postgres -c "$CLIENTS" -j "$(( CLIENTS < 2 ? CLIENTS : 2 ))" -R "$LAG_RATE" -T 86400 \
        -f "$BENCH_TMP/load.sql" postgres | tee "$LAG_OUT"
    LAG_RESULT="$(awk '$1 == "RESULT"' "$LAG_OUT")"
    read -r _ load_start load_end _ _ _ _ _ _ _ _ _ _ _ bf_start bf_end pauses paused_samples <<<"$LAG_RESULT"
    after="$(tup_counts)"
    LAG_CHANGES="$(echo "$before $after" | awk '{print $4 - $1 + $5 - $2 + $6 - $3}')"
    LAG_LOAD_RATE="$(calc "$LAG_CHANGES / ($load_end - $load_start)" | awk '{printf "%.0f", $1}')"
    read -r copied copy_s _ < <(psql_at "$TGT_PORT" -d postgres -Atc "$BACKFILL_ROW_SQL" -F ' ')
    printf '  source load: %s row changes in %.1f s (%s changes/s)\n' "$LAG_CHANGES" "$(calc "$load_end - $load_start")" "$LAG_LOAD_RATE"
    LAG_BF="$(printf '%s rows in %.2f s (%s rows/s), %s pauses for lag' "$copied" "$copy_s" \
        "$(calc "$copied / $copy_s" | awk '{printf "%.0f", $1}')" "$pauses")"
    echo "  backfill under load: $LAG_BF; lag samples taken while paused: $paused_samples"
    # Catch up: the slot must confirm everything the source wrote.
    flush_wal "$SRC_PORT"
    END="$(psql_at "$SRC_PORT" -d postgres -Atc 'select pg_current_wal_insert_lsn()')"
    flush_wal "$SRC_PORT"
    t0="$(now_s)"
    read -r catchup_s _ _ < <(python3 "$LIB/slot_watch.py" drain --src "$SRC_PORT" --slot bench_ws --endpos "$END" \
        --t0 "$t0" --target "$TGT_PORT" --applied-sql "$WS_APPLIED_SQL" --pid "$WS_PID" --timeout 600)
    printf '  after the load stopped, the slot confirmed the end (%s) %.2f s later\n' "$END" "$catchup_s"
    kill -TERM "$WS_PID"
    rc=0; wait "$WS_PID" || rc=$?
    WS_PID=""
    if [ "$rc" != 0 ]; then
        echo "error: walshift run exited with $rc; its log:" >&2
        tail -n 20 "$WS_LOG" >&2
        exit 1
    fi
    if verify lag "$TGT_PORT" shadow.usage_events "$(digest "$SRC_PORT" public.usage_events)"; then
        LAG_PASS=PASS
    else
        LAG_PASS=FAIL
    fi
    echo "  target equals source after the backfill under load: $LAG_PASS"
    ws_teardown
    drop_target "$TGT_PORT" shadow
fi

# --- summary -----------------------------------------------------------------

# field METHOD N: column N of METHOD's result (1 copy seconds, 2 wall seconds).
field() { awk -v m="$1" -v f="$2" '$1 == m {print $(f + 1)}' "$RESULTS"; }
has() { [ -n "$(field "$1" 1)" ]; }

echo
echo "=== summary: $ROWS rows of usage_events ($SRC_SIZE on the source), target pre-indexed (pk + 2) ==="
echo "(clusters fsync=off, synchronous_commit=off; $(nproc) cores; rows/s = rows / seconds)"
[ -s "$RESULTS" ] && printf '%-16s %10s %10s %12s   %s\n' method rows seconds rows/s "what is timed"
ws_times() { printf 'until visible %.2f s, command wall %.2f s' "$(field "$1" 3)" "$(field "$1" 2)"; }
describe() {
    case "$1" in
        walshift-p*) echo "walshift backfill A -> B, parallelism ${1#walshift-p}: completed_at - started_at ($(ws_times "$1"))" ;;
        same-db-p*) echo "walshift backfill in A's database, parallelism ${1#same-db-p}: completed_at - started_at ($(ws_times "$1"))" ;;
        native) echo "CREATE SUBSCRIPTION initial sync, srsubstate d -> r (CREATE -> r $(printf '%.2f' "$(field native 2)") s)" ;;
        raw) echo "psql COPY binary | psql COPY binary, wall" ;;
        pgcopydb) echo "pgcopydb clone, wall (indexes after the copy; reference only)" ;;
        offset) echo "LIMIT $OFFSET_BATCH OFFSET K loop in A's database, wall" ;;
    esac
}
while read -r method secs _; do
    printf '%-16s %10s %10.2f %12s   %s%s\n' "$method" "$ROWS" "$secs" "$(rate "$secs")" "$(describe "$method")" \
        "$([[ " ${INVALID[*]-} " == *" $method "* ]] && echo '  INVALID: content mismatch')"
done <"$RESULTS"

# ratio WALSHIFT PEER TARGET LABEL: rows/s ratio (peer time / walshift
# time), on walshift's copy phase; in brackets on the time until its
# completion was visible and on its command's wall time.
ratio() {
    if has "$1" && has "$2"; then
        local r rv rw verdict=""
        r="$(calc "$(field "$2" 1) / $(field "$1" 1)")"
        rv="$(calc "$(field "$2" 1) / $(field "$1" 3)")"
        rw="$(calc "$(field "$2" 1) / $(field "$1" 2)")"
        if [ "$3" != - ]; then
            verdict="(target >= $3) $(awk "BEGIN { exit !($r >= $3) }" && echo met || echo MISSED)"
        fi
        printf '  %-14s vs %-30s %6.2fx  [visible %.2fx, wall %.2fx]  %s\n' "$1" "$4" "$r" "$rv" "$rw" "$verdict"
    fi
}
if ls_ws="$(awk '$1 ~ /^(walshift|same-db)-p/ {print $1}' "$RESULTS")" && [ -n "$ls_ws" ]; then
    echo "ratios (walshift rows/s / peer rows/s):"
    for m in $ls_ws; do
        ratio "$m" native 1.0 "native initial sync (d -> r)"
        ratio "$m" raw 0.9 "raw COPY pipe"
        ratio "$m" offset 5 "LIMIT/OFFSET loop"
        ratio "$m" pgcopydb - "pgcopydb clone (reference)"
    done
fi
if [ -n "$LAG_RESULT" ]; then
    read -r _ _ _ n lp50 lp99 lmax ap50 ap99 amax sp50 sp99 smax _ <<<"$LAG_RESULT"
    printf 'lag during the backfill under load (~%s changes/s achieved, %s samples), p50 / p99 / max s:\n' "$LAG_LOAD_RATE" "$n"
    printf '  newest load row on the target: %.2f / %.2f / %.2f   p99 < max_lag_seconds (%s): %s\n' \
        "$lp50" "$lp99" "$lmax" "$LAG_MAX" "$(awk "BEGIN { exit !($lp99 < $LAG_MAX) }" && echo yes || echo NO)"
    printf '  applied position:              %.2f / %.2f / %.2f   p99 < max_lag_seconds (%s): %s\n' \
        "$ap50" "$ap99" "$amax" "$LAG_MAX" "$(awk "BEGIN { exit !($ap99 < $LAG_MAX) }" && echo yes || echo NO)"
    printf '  slot confirmed_flush_lsn:      %.2f / %.2f / %.2f\n' "$sp50" "$sp99" "$smax"
    echo "  backfill under load: $LAG_BF"
    echo "  target equals source after the load: $LAG_PASS"
fi
if [ -n "$BIN" ]; then
    echo "walshift log: $(grep -cE ' (WARN|ERROR) ' "$WS_LOG" || true) WARN/ERROR lines"
    grep -E ' (WARN|ERROR) ' "$WS_LOG" | head -n 5 || true
fi
for s in ${SKIPPED[@]+"${SKIPPED[@]}"}; do echo "SKIPPED: $s"; done
if (( CONTENT_OK )); then
    echo "content: every copy identical to the source"
else
    echo "content: MISMATCH in ${INVALID[*]} (see above): those figures are not valid"
fi
printf 'bench took %.0f s; load average at the end: %s\n' "$(calc "$(now_s) - $SCRIPT_T0")" "$(cut -d' ' -f1-3 /proc/loadavg)"
(( CONTENT_OK )) || exit 1
for s in ${SKIPPED[@]+"${SKIPPED[@]}"}; do
    case "$s" in walshift*|same*|lag*) exit 3 ;; esac
done
