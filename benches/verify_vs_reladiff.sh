#!/usr/bin/env bash
# Benchmark: `walshift verify` against the other ways to compare a table
# across two clusters, in the same run, on the same machine and data.
#
#   bash benches/verify_vs_reladiff.sh [ROWS] [PHASES]
#
# Setup: two clusters with the lib's identical settings (start_cluster
# defaults): source A, target B. ROWS (default 2000000, at least 1000) rows
# of the seed billing `usage_events` shape (sql/demo/seed_billing.sql without
# the foreign key; generated as benches/backfill_vs_copy.sh does, plus its two
# indexes) on A as public.usage_events, copied to B as shadow.usage_events
# (same shape, indexes built before the copy) with a raw binary COPY pipe;
# both tables vacuumed (freeze, analyze), so no method pays for hint bits.
# `walshift setup` (publication and slot on A, state schema on B) runs, the
# table is marked as backfilled (walshift.backfill.completed_at, as the
# lib's mark_backfilled does), and then exactly 10 rows of B differ from A,
# spread over the key space: 4 changed values (amount_cents, quantity by
# 0.000001, payload, occurred_at by 1 microsecond), 3 rows deleted on B
# (missing), 3 rows only on B (extra: keys A's generation skipped, so they
# sit inside the key space, with values made by the same expression).
#
# PHASES is a comma list (default: all; always run in this order:
# walshift,reladiff,fetch,naive,floor,profile,clean,incremental,lag). The five
# comparison methods run REPEAT times (default 3) round-robin (one round runs
# each requested method once, so the machine's background load spreads over
# all of them alike); each run follows a CHECKPOINT of both clusters and a
# sync (see backfill_vs_copy.sh: no method pays for another's writeback);
# the table reports per method the median wall time and walshift's median
# divided by it:
#
#   walshift     `walshift verify --json`, config mapping public.usage_events
#                -> shadow.usage_events (no columns: identity) on B, [verify]
#                defaults (plus VERIFY_TOML); exit 1 (differences) expected.
#                It must report exactly the 10 keys with the right kinds
#                (different/missing/extra), confirmed; else FAIL. Also
#                reported: its rows/chunks/mismatched counters and its peak
#                RSS (/usr/bin/time -v). CHUNK_MAXES="N,M" adds one method
#                per value, `walshift-cmaxN`, with [verify] chunk_rows_max = N.
#   reladiff     reladiff 0.6 (pip "reladiff[postgresql]>=0.6,<0.7" into a venv
#                under the bench's temp dir unless RELADIFF_BIN names one or it
#                is on PATH), cross-database hashdiff with its defaults
#                (plus RELADIFF_ARGS), key id, every column (-c per column);
#                the distinct ids of its +/- rows must be the 10 keys (else
#                FAIL). Also its peak RSS. Skipped with a note if it cannot
#                be installed.
#   fetch        full fetch and diff: `COPY (select * ... order by id) TO
#                STDOUT` from A and B at once (two psql, to files), then
#                `diff` of the two files; the distinct ids of the differing
#                lines must be the 10 keys (else FAIL).
#   naive        count(*) and md5(string_agg(t::text, '' order by id)) on A
#                and B at once (two psql); must differ (else FAIL). Finds no
#                key; string_agg needs the whole table's text below 1 GB.
#   floor        one hashing pass per side at once: select count(*),
#                sum(hashtextextended(t::text, 0)) on A and B (two psql); must
#                differ (else FAIL). The cheapest full comparison there is.
#   profile      one more `walshift verify` of the 10 differences (not in the
#                medians) with log_min_duration_statement = 0 on both
#                servers: server time per kind of statement and side
#                (chunk boundaries, range hashes, narrowing, leaf diffs,
#                confirmation, slot peeks, state writes): where the time goes.
#
# Then `walshift verify --repair` (no run streaming) must repair the 10 keys
# and report clean, and A and B must hash equal (else FAIL); the phases below
# need it and run on the repaired, identical copy.
#
#   clean        REPEAT rounds of `walshift verify` of the identical copy (must
#                exit 0, clean) and the floor again: the cost of a full pass
#                that finds nothing, against the floor.
#   incremental  `walshift run` with [verify] interval_seconds = 1,
#                full_pass_interval_seconds = 86400; its initial full pass
#                must end clean; then 1% of A's rows change (update ... set
#                quantity = quantity + 1 where id % 100 = 0, one transaction);
#                once the slot confirmed the source's WAL position after it,
#                the incremental pass(es) over those keys must end clean;
#                their duration is reported as a percentage of the full
#                pass's. Pass durations, kinds, results and rows are read from
#                the "verification pass" lines walshift logs as each pass ends
#                (elapsed_ms): walshift.verify_tables keeps only the last
#                finished pass, and with interval_seconds shorter than a full
#                pass the next (idle, incremental) pass overwrites it within
#                milliseconds. SIGTERM stops the run.
#   lag          (last; skippable) `walshift run` with [verify]
#                interval_seconds = full_pass_interval_seconds = 1 (every pass
#                full, back to back). After one full pass without load, the
#                next full pass to start is watched (lib/backfill_watch.py
#                lag, over walshift.verify_tables): pgbench writes ~LAG_RATE
#                single-row changes/s on A (60% insert, 30% update, 10%
#                delete, as in backfill_vs_copy.sh) from its start until its
#                end, lag sampled every 150 ms (newest load row on B, applied
#                position, slot). Reported: the stream's p50/p99/max lag
#                during the pass, the pass's duration, and its result: it must
#                be clean with walshift.verify_differences empty, and after
#                the load B must equal A (else FAIL).
#
# Environment: REPEAT (3), VERIFY_TOML (extra lines for walshift's [verify]
# section in every phase, e.g. "chunk_rows_max = 50000"), CHUNK_MAXES
# (extra walshift methods, see above; default none), RELADIFF_BIN (a reladiff
# executable to use), RELADIFF_ARGS (extra reladiff options, e.g. "-j 2"),
# PASS_TIMEOUT (seconds to wait for a pass in the run phases, 900), LAG_RATE
# (5000 changes/s), CLIENTS (pgbench clients, 4), STATUS_MS
# (source.status_interval_ms, 1000), WALSHIFT_LOG (walshift's log filter in
# the run phases, info; must keep walshift's info lines), WALSHIFT_BIN (use
# this binary instead of building the release one), KEEP_LOGS=DIR (keep the
# logs and outputs).
#
# Exit status: 0; 1 if a correctness check failed (a method missed or
# invented a difference, a repair or a pass was not clean, B differs from A
# after the load) or a step failed; 3 if a requested walshift phase could
# not run.

source "$(dirname "$0")/lib/cluster.sh"
# The EXIT trap (cleanup) also on Ctrl-C and SIGTERM.
trap 'exit 130' INT
trap 'exit 143' TERM

ROWS="${1:-2000000}"
ALL_PHASES="walshift,reladiff,fetch,naive,floor,profile,clean,incremental,lag"
PHASES="${2:-$ALL_PHASES}"
REPEAT="${REPEAT:-3}"
VERIFY_TOML="${VERIFY_TOML:-}"
CHUNK_MAXES="${CHUNK_MAXES:-}"
RELADIFF_ARGS="${RELADIFF_ARGS:-}"
PASS_TIMEOUT="${PASS_TIMEOUT:-900}"
LAG_RATE="${LAG_RATE:-5000}"
CLIENTS="${CLIENTS:-4}"
STATUS_MS="${STATUS_MS:-1000}"
LIB="$(cd "$(dirname "$0")/lib" && pwd)"
export PYTHONDONTWRITEBYTECODE=1

for p in ${PHASES//,/ }; do
    [[ ",$ALL_PHASES," == *",$p,"* ]] || { echo "error: unknown phase '$p' (phases: $ALL_PHASES)" >&2; exit 2; }
done
[[ "$ROWS" =~ ^[1-9][0-9]*$ ]] && (( ROWS >= 1000 )) || { echo "error: ROWS must be an integer >= 1000, not '$ROWS'" >&2; exit 2; }
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || { echo "error: REPEAT must be a positive integer, not '$REPEAT'" >&2; exit 2; }
for c in ${CHUNK_MAXES//,/ }; do
    [[ "$c" =~ ^[1-9][0-9]*$ ]] || { echo "error: CHUNK_MAXES must list positive integers, not '$c'" >&2; exit 2; }
done
want() { [[ ",$PHASES," == *",$1,"* ]]; }

SCRIPT_T0="$(now_s)"
FAILED=()    # correctness checks that failed
SKIPPED=()   # requested phases that could not run
fail() { echo "  FAIL: $1"; FAILED+=("$1"); }
# epoch_calc EXPR: like calc, for epoch seconds (calc prints 6 digits).
epoch_calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

# walshift: a private copy of the release binary (a rebuild during the run,
# e.g. by someone else working in the tree, cannot change what is measured).
BIN="$(walshift_bin)"
cp "$BIN" "$BENCH_TMP/walshift" && BIN="$BENCH_TMP/walshift"
echo "walshift $(bench_revision)"
if ! "$BIN" verify --help >/dev/null 2>&1; then
    echo "error: this walshift build has no 'verify' subcommand" >&2
    exit 3
fi
echo "rows: $ROWS; phases: $PHASES; repeat: $REPEAT; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

start_cluster SRC
start_cluster TGT
echo "clusters: source (A) $SRC_PORT, target (B) $TGT_PORT"
SRC_URL="postgres://postgres@127.0.0.1:$SRC_PORT/postgres?sslmode=disable"
TGT_URL="postgres://postgres@127.0.0.1:$TGT_PORT/postgres?sslmode=disable"

# --- data --------------------------------------------------------------------

# The 10 differences, spread over the key space. A's ids run over 1 ..
# ROWS + 3 except the three EXTRA ones (so A has ROWS rows); B gets those.
SPAN=$(( ROWS + 3 ))
at() { echo $(( SPAN * $1 / 100 + 1 )); }
CHANGED=("$(at 10)" "$(at 30)" "$(at 50)" "$(at 70)")
DELETED=("$(at 20)" "$(at 60)" "$(at 90)")
EXTRA=("$(at 40)" "$(at 80)" "$(at 95)")
# "id kind" lines, sorted, as walshift reports them.
EXPECTED="$( { for i in "${CHANGED[@]}"; do echo "$i different"; done
               for i in "${DELETED[@]}"; do echo "$i missing"; done
               for i in "${EXTRA[@]}"; do echo "$i extra"; done; } | sort)"
EXPECTED_IDS="$(echo "$EXPECTED" | cut -d' ' -f1 | sort)"
EXTRA_LIST="$(IFS=,; echo "${EXTRA[*]}")"

table_ddl() {
    usage_events_identity_ddl "$1"
    cat <<SQL
create index usage_events_org_occurred on $1.usage_events (org_id, occurred_at);
create index usage_events_event_type on $1.usage_events (event_type);
SQL
}
# The seed rows for ids g (the generation of backfill_vs_copy.sh).
ROW_SELECT="select g, 1 + g * 7919 % 1000,
       (array['api_call', 'api_call', 'storage_gb_hour', 'egress_gb', 'seat_day', 'build_minute'])[1 + g % 6],
       round((g * 31 % 100000) / 7.0, 6),
       g * 37 % 100000,
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1.5 second',
       case when g % 10 = 0 then null
            else jsonb_build_object('region', 'eu-' || (g % 5), 'sku', 'sku-' || (g % 37),
                                    'units', g % 1000, 'tags', jsonb_build_array('t' || (g % 7), 't' || (g % 11)))
       end
from generate_series(1::bigint, $SPAN) g"
COLS="id, org_id, event_type, quantity, amount_cents, occurred_at, payload"

echo "generating $ROWS rows on the source ..."
t0="$(now_s)"
psql_at "$SRC_PORT" -d postgres <<SQL
$(table_ddl public)
insert into public.usage_events ($COLS)
$ROW_SELECT where g not in ($EXTRA_LIST);
select setval(pg_get_serial_sequence('public.usage_events', 'id'), $SPAN) \g /dev/null
vacuum (freeze, analyze) public.usage_events;
SQL
SRC_SIZE="$(psql_at "$SRC_PORT" -d postgres -Atc "select pg_size_pretty(pg_table_size('public.usage_events')) || ' heap, ' || pg_size_pretty(pg_indexes_size('public.usage_events')) || ' indexes'")"
printf '  done in %.1f s (%s)\n' "$(calc "$(now_s) - $t0")" "$SRC_SIZE"

echo "copying it to B as shadow.usage_events (binary COPY pipe) ..."
t0="$(now_s)"
psql_at "$TGT_PORT" -d postgres -c "create schema shadow" -c "$(table_ddl shadow)"
psql_at "$SRC_PORT" -d postgres -c "copy public.usage_events to stdout (format binary)" |
    psql_at "$TGT_PORT" -d postgres -c "copy shadow.usage_events from stdin (format binary)"
psql_at "$TGT_PORT" -d postgres -c "vacuum (freeze, analyze) shadow.usage_events"
printf '  done in %.1f s\n' "$(calc "$(now_s) - $t0")"

# digest PORT TABLE: "rows hash" (sum of a 64-bit hash of each row's text).
digest() {
    psql_at "$1" -d postgres -Atc "select count(*) || ' ' || coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) from $2 t"
}
[ "$(digest "$SRC_PORT" public.usage_events)" = "$(digest "$TGT_PORT" shadow.usage_events)" ] ||
    { echo "error: the copy on B differs from A" >&2; exit 1; }

# --- walshift ----------------------------------------------------------------

WS_LOG="$BENCH_TMP/walshift.log"
: >"$WS_LOG"
WS_PID=""
on_exit '[ -n "$WS_PID" ] && kill "$WS_PID" 2>/dev/null'
CONF="$BENCH_TMP/walshift.toml"

# write_config FILE [VERIFY_LINE...]: public.usage_events -> shadow.usage_events
# on B, identity mapping, key id (the primary key).
write_config() {
    local file="$1"; shift
    {
        cat <<TOML
[migration]
name = "bench"
[source]
url = "$SRC_URL"
slot = "bench_ws"
publication = "bench_pub"
status_interval_ms = $STATUS_MS
[target]
url = "$TGT_URL"
[[tables]]
source = "public.usage_events"
target = "shadow.usage_events"
[apply]
batch_max_rows = 5000
batch_max_ms = 100
[metrics]
listen = "127.0.0.1:$(free_port)"
[verify]
TOML
        local line
        for line in "$@"; do echo "$line"; done
        echo "$VERIFY_TOML"
    } >"$file"
}
write_config "$CONF"
"$BIN" --config "$CONF" --log-level warn setup >/dev/null
psql_at "$TGT_PORT" -d postgres -c "insert into walshift.backfill \
    (migration, source_table, target_table, started_at, completed_at) \
    values ('bench', 'public.usage_events', 'shadow.usage_events', now(), now())"

echo "making 10 rows of B differ: changed ${CHANGED[*]}; deleted ${DELETED[*]}; extra ${EXTRA[*]} ..."
psql_at "$TGT_PORT" -d postgres <<SQL
update shadow.usage_events set amount_cents = amount_cents + 1 where id = ${CHANGED[0]};
update shadow.usage_events set quantity = quantity + 0.000001 where id = ${CHANGED[1]};
update shadow.usage_events set payload = coalesce(payload, '{}') || '{"edited": true}' where id = ${CHANGED[2]};
update shadow.usage_events set occurred_at = occurred_at + interval '1 microsecond' where id = ${CHANGED[3]};
delete from shadow.usage_events where id in ($(IFS=,; echo "${DELETED[*]}"));
insert into shadow.usage_events ($COLS) $ROW_SELECT where g in ($EXTRA_LIST);
vacuum (analyze) shadow.usage_events;
SQL

# Before every timed run: both clusters checkpointed and the OS's dirty
# pages written out.
checkpoint_all() {
    psql_at "$SRC_PORT" -d postgres -c checkpoint
    psql_at "$TGT_PORT" -d postgres -c checkpoint
    sync
    sleep 1
}

RESULTS="$BENCH_TMP/results.txt"   # method round seconds
: >"$RESULTS"
record() { echo "$*" >>"$RESULTS"; }
INFO="$BENCH_TMP/info.txt"         # method key value (RSS, counters)
: >"$INFO"
info() { echo "$*" >>"$INFO"; }

# check_ids METHOD FILE: FILE's distinct ids (one a line) must be the 10 keys.
check_ids() {
    local got
    got="$(sort -u "$2")"
    if [ "$got" = "$EXPECTED_IDS" ]; then
        echo "  $1: found the 10 keys"
        return 0
    fi
    fail "$1 found $(echo -n "$got" | grep -c . || true) keys, not the 10 expected: $(echo $got | head -c 300)"
    return 1
}

# walshift_verify METHOD ROUND [VERIFY_LINE...]
walshift_verify() {
    local method="$1" round="$2"; shift 2
    local out="$BENCH_TMP/verify_${method}_$round.json" tv="$BENCH_TMP/verify_${method}_$round.time" rc=0 t0 wall got
    write_config "$CONF" "$@"
    checkpoint_all
    t0="$(now_s)"
    /usr/bin/time -v -o "$tv" "$BIN" --config "$CONF" --log-level warn verify --json >"$out" 2>>"$WS_LOG" || rc=$?
    wall="$(calc "$(now_s) - $t0")"
    if [ "$rc" != 1 ]; then
        fail "$method: walshift verify exited with $rc (1 expected: differences); its output and log:"
        head -c 2000 "$out"; tail -n 20 "$WS_LOG"
        return 1
    fi
    got="$(jq -r '.tables[] | .differences[] | "\(.key[0]) \(.kind)\(if .confirmed then "" else " unconfirmed" end)"' "$out" | sort)"
    read -r rows chunks mismatched rechecked ndiff path result complete < <(jq -r \
        '[.tables[0].counters.rows, .tables[0].counters.chunks, .tables[0].counters.mismatched,
          .tables[0].counters.rechecked, .tables[0].counters.differences, .tables[0].path, .result, .complete] | @tsv' "$out")
    local rss
    rss="$(peak_rss_kb "$tv")"
    printf '  %-16s round %s: %7.2f s; %s rows, %s chunks, %s mismatched, %s re-checks, %s differences (%s); peak RSS %s MB\n' \
        "$method" "$round" "$wall" "$rows" "$chunks" "$mismatched" "$rechecked" "$ndiff" "$path" "$(( rss / 1024 ))"
    if [ "$got" != "$EXPECTED" ] || [ "$ndiff" != 10 ] || [ "$result" != differences ] || [ "$complete" != true ]; then
        fail "$method round $round: walshift verify reported result=$result complete=$complete differences=$ndiff: $(echo $got | head -c 400) (expected: $(echo $EXPECTED))"
        return 1
    fi
    record "$method" "$round" "$wall"
    info "$method" rss "$rss"
    info "$method" counters "$rows $chunks $mismatched $rechecked"
}

# --- reladiff ----------------------------------------------------------------

RELADIFF=""
RELADIFF_VERSION=""
if want reladiff; then
    if [ -n "${RELADIFF_BIN:-}" ]; then
        RELADIFF="$RELADIFF_BIN"
    elif command -v reladiff >/dev/null && reladiff --version 2>/dev/null | grep -q 'v0\.6\.'; then
        RELADIFF="$(command -v reladiff)"
    else
        echo "installing reladiff 0.6 into a venv ..."
        if python3 -m venv "$BENCH_TMP/venv" >"$BENCH_TMP/reladiff_install.log" 2>&1 &&
            "$BENCH_TMP/venv/bin/pip" install -q "reladiff[postgresql]>=0.6,<0.7" >>"$BENCH_TMP/reladiff_install.log" 2>&1; then
            RELADIFF="$BENCH_TMP/venv/bin/reladiff"
        fi
    fi
    if [ -n "$RELADIFF" ] && RELADIFF_VERSION="$("$RELADIFF" --version 2>/dev/null)"; then
        echo "reladiff: $RELADIFF_VERSION ($RELADIFF)"
    else
        echo "  NOTE: reladiff could not be installed (pip install \"reladiff[postgresql]>=0.6,<0.7\"): skipped"
        if [ -s "$BENCH_TMP/reladiff_install.log" ]; then tail -n 5 "$BENCH_TMP/reladiff_install.log" | sed 's/^/    /'; fi
        SKIPPED+=("reladiff (not installable)")
        RELADIFF=""
    fi
fi

run_reladiff() {
    local round="$1" out="$BENCH_TMP/reladiff_$1.txt" tv="$BENCH_TMP/reladiff_$1.time" rc=0 t0 wall rss
    local cols=() c
    for c in org_id event_type quantity amount_cents occurred_at payload; do cols+=(-c "$c"); done
    checkpoint_all
    t0="$(now_s)"
    # shellcheck disable=SC2086
    # COLUMNS: its (rich) console would wrap rows at 80 characters.
    COLUMNS=1000000 /usr/bin/time -v -o "$tv" "$RELADIFF" "postgresql://postgres@127.0.0.1:$SRC_PORT/postgres" usage_events \
        "postgresql://postgres@127.0.0.1:$TGT_PORT/postgres" shadow.usage_events \
        -k id "${cols[@]}" $RELADIFF_ARGS >"$out" 2>"$BENCH_TMP/reladiff_$round.log" || rc=$?
    wall="$(calc "$(now_s) - $t0")"
    rss="$(peak_rss_kb "$tv")"
    if [ "$rc" != 0 ]; then
        fail "reladiff round $round exited with $rc; its output:"
        tail -n 15 "$BENCH_TMP/reladiff_$round.log" | sed 's/^/    /'
        return 1
    fi
    # Lines "- id, col, ..." (rows of A not in B) and "+ id, ..." (of B not in A).
    grep -E '^[-+] ' "$out" | sed -E 's/^[-+] ([^,]*),.*/\1/' >"$BENCH_TMP/reladiff_ids_$round.txt" || true
    printf '  %-16s round %s: %7.2f s; %s +/- rows; peak RSS %s MB\n' reladiff "$round" "$wall" \
        "$(grep -cE '^[-+] ' "$out" || true)" "$(( rss / 1024 ))"
    check_ids "reladiff round $round" "$BENCH_TMP/reladiff_ids_$round.txt" || return 1
    record reladiff "$round" "$wall"
    info reladiff rss "$rss"
}

# --- the plain-SQL methods ---------------------------------------------------

# both_at_once OUT_A OUT_B SQL_A SQL_B: one psql per side (-At), started
# together; fails if either fails.
both_at_once() {
    local pa pb rc=0
    psql_at "$SRC_PORT" -d postgres -Atc "$3" >"$1" & pa=$!
    psql_at "$TGT_PORT" -d postgres -Atc "$4" >"$2" & pb=$!
    wait "$pa" || rc=$?
    wait "$pb" || rc=$?
    return "$rc"
}

run_fetch() {
    local round="$1" a="$BENCH_TMP/fetch_a" b="$BENCH_TMP/fetch_b" d="$BENCH_TMP/fetch_diff" t0 wall rc=0
    checkpoint_all
    t0="$(now_s)"
    both_at_once "$a" "$b" "copy (select * from public.usage_events order by id) to stdout" \
        "copy (select * from shadow.usage_events order by id) to stdout"
    diff "$a" "$b" >"$d" || rc=$?
    wall="$(calc "$(now_s) - $t0")"
    [ "$rc" = 1 ] || { fail "fetch round $round: diff exited with $rc (1 expected)"; return 1; }
    grep -E '^[<>] ' "$d" | cut -c3- | cut -f1 >"$BENCH_TMP/fetch_ids_$round.txt"
    printf '  %-16s round %s: %7.2f s; %s differing lines; %s MB fetched\n' fetch "$round" "$wall" \
        "$(grep -cE '^[<>] ' "$d")" "$(( ($(stat -c %s "$a") + $(stat -c %s "$b")) / 1048576 ))"
    rm -f "$a" "$b"
    check_ids "fetch round $round" "$BENCH_TMP/fetch_ids_$round.txt" || return 1
    record fetch "$round" "$wall"
}

# run_whole METHOD ROUND EXPR [same]: EXPR over the table (alias t) on both
# sides at once; the results must differ (with "same": be equal).
run_whole() {
    local method="$1" round="$2" a="$BENCH_TMP/${1}_a" b="$BENCH_TMP/${1}_b" t0 wall
    checkpoint_all
    t0="$(now_s)"
    both_at_once "$a" "$b" "select $3 from public.usage_events t" "select $3 from shadow.usage_events t"
    wall="$(calc "$(now_s) - $t0")"
    printf '  %-22s round %s: %7.2f s; A: %s; B: %s\n' "$method" "$round" "$wall" "$(cat "$a")" "$(cat "$b")"
    if [ "${4:-}" = same ] && [ "$(cat "$a")" != "$(cat "$b")" ]; then
        fail "$method round $round: A and B differ (they are identical)"
        return 1
    elif [ "${4:-}" != same ] && [ "$(cat "$a")" = "$(cat "$b")" ]; then
        fail "$method round $round: A and B hash equal (10 rows differ)"
        return 1
    fi
    record "$method" "$round" "$wall"
}

# --- the comparison rounds ---------------------------------------------------

WS_METHODS=()
want walshift && WS_METHODS+=(walshift)
if want walshift; then for c in ${CHUNK_MAXES//,/ }; do WS_METHODS+=("walshift-cmax$c"); done; fi

if want walshift || want reladiff || want fetch || want naive || want floor; then
    for round in $(seq 1 "$REPEAT"); do
        echo; echo "round $round of $REPEAT (load average $(cut -d' ' -f1-3 /proc/loadavg)) ..."
        for m in ${WS_METHODS[@]+"${WS_METHODS[@]}"}; do
            case "$m" in
                walshift) walshift_verify walshift "$round" || true ;;
                walshift-cmax*) walshift_verify "$m" "$round" "chunk_rows_max = ${m#walshift-cmax}" \
                    "chunk_rows_min = $(( ${m#walshift-cmax} < 1000 ? ${m#walshift-cmax} : 1000 ))" || true ;;
            esac
        done
        if want reladiff && [ -n "$RELADIFF" ]; then run_reladiff "$round" || true; fi
        if want fetch; then run_fetch "$round" || true; fi
        if want naive; then
            run_whole naive "$round" "count(*) || ' ' || md5(string_agg(t::text, '' order by id))" || true
        fi
        if want floor; then
            run_whole floor "$round" "count(*) || ' ' || sum(hashtextextended(t::text, 0))" || true
        fi
    done
fi

# --- profile -----------------------------------------------------------------

# One more `walshift verify` of the 10 differences (not in the medians) with
# every statement logged by both servers (log_min_duration_statement = 0):
# the server time per kind of statement, per side.
PROFILE_OUT=""
if want profile; then
    echo; echo "profile: one more walshift verify with every statement's duration logged by both servers ..."
    for port in "$SRC_PORT" "$TGT_PORT"; do
        psql_at "$port" -d postgres -c "alter system set log_min_duration_statement = 0" -c "select pg_reload_conf()" >/dev/null
    done
    src_off="$(stat -c %s "$SRC_DIR/log")"; tgt_off="$(stat -c %s "$TGT_DIR/log")"
    sleep 0.5
    write_config "$CONF"
    checkpoint_all
    t0="$(now_s)"; rc=0
    "$BIN" --config "$CONF" --log-level warn verify --json >"$BENCH_TMP/verify_profile.json" 2>>"$WS_LOG" || rc=$?
    wall="$(calc "$(now_s) - $t0")"
    for port in "$SRC_PORT" "$TGT_PORT"; do
        psql_at "$port" -d postgres -c "alter system reset log_min_duration_statement" -c "select pg_reload_conf()" >/dev/null
    done
    tail -c +"$(( src_off + 1 ))" "$SRC_DIR/log" >"$BENCH_TMP/profile_src.log"
    tail -c +"$(( tgt_off + 1 ))" "$TGT_DIR/log" >"$BENCH_TMP/profile_tgt.log"
    PROFILE_OUT="$BENCH_TMP/profile.txt"
    python3 - "$BENCH_TMP/profile_src.log" "$BENCH_TMP/profile_tgt.log" "$wall" "$BENCH_TMP/verify_profile.json" \
        "$BENCH_TMP/expr_src.sql" "$BENCH_TMP/expr_tgt.sql" >"$PROFILE_OUT" <<'PY'
import json, re, sys
from collections import defaultdict

def kind(sql):
    s = sql.lower()
    if "pg_logical_slot_peek" in s: return "slot peek (changes waiting?)"
    if "pg_logical_emit_message" in s: return "barrier"
    if "walshift." in s: return "state writes/reads"
    if "sum(hashtextextended" in s and "unnest(" in s: return "hash of a key set"
    if "sum(hashtextextended" in s: return "range hash"
    if " offset $" in s: return "chunk boundary (source)"
    if "unnest(" in s: return "rows of a key set (confirm)"
    if "hashtextextended((" in s: return "rows of a range (leaf diff)"
    if re.search(r"order by .* limit \$\d+$", s.strip()): return "keys to split a range"
    return "other"

line_re = re.compile(r"duration: ([0-9.]+) ms\s+(execute [^:]*|statement): (.*)$")
# Per side, the statements in order: (kind, seconds, sql).
stmts = {}
for side, path in (("A", sys.argv[1]), ("B", sys.argv[2])):
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            m = line_re.search(line)
            if m:
                out.append([kind(m.group(3)), float(m.group(1)) / 1000, m.group(3)])
    stmts[side] = out
# A range hash right after a chunk boundary (on A) hashes a chunk of the
# pass; the others narrow a mismatching chunk down. Both sides hash in
# pairs, so the i-th range hash on B is the i-th on A.
labels, prev = [], None
for k, _, _ in stmts["A"]:
    if k == "range hash":
        labels.append("range hash: chunks of the pass" if prev == "chunk boundary (source)"
                      else "range hash: narrowing")
    prev = k
for side in ("A", "B"):
    i = 0
    for st in stmts[side]:
        if st[0] == "range hash":
            st[0] = labels[i] if i < len(labels) else "range hash: ?"
            i += 1
# The statements each side hashes a range with, without their range: the
# whole table through walshift's hash expression (for the clean phase).
for side, dest in (("A", sys.argv[5]), ("B", sys.argv[6])):
    sql = next((q for k, _, q in stmts[side] if k.startswith("range hash")), "")
    with open(dest, "w") as f:
        f.write(re.sub(r" where .*$", "", sql))
totals = {side: defaultdict(lambda: [0, 0.0]) for side in stmts}
for side, out in stmts.items():
    for k, secs, _ in out:
        totals[side][k][0] += 1
        totals[side][k][1] += secs
wall = float(sys.argv[3])
rep = json.load(open(sys.argv[4]))["tables"][0]
c = rep["counters"]
print(f"  walshift verify wall {wall:.2f} s ({rep['elapsed_seconds']:.2f} s in the pass); {c['rows']} rows, "
      f"{c['chunks']} chunks, {c['mismatched']} mismatched, {c['rechecked']} re-checks")
kinds = sorted(set(totals["A"]) | set(totals["B"]),
               key=lambda k: -(totals["A"][k][1] + totals["B"][k][1]))
print(f"  {'statement kind':<34} {'A: n':>6} {'A: s':>7} {'B: n':>6} {'B: s':>7}")
for k in kinds:
    a, b = totals["A"][k], totals["B"][k]
    print(f"  {k:<34} {a[0]:>6} {a[1]:>7.2f} {b[0]:>6} {b[1]:>7.2f}")
sa = sum(v[1] for v in totals["A"].values()); sb = sum(v[1] for v in totals["B"].values())
print(f"  {'total server time':<34} {'':>6} {sa:>7.2f} {'':>6} {sb:>7.2f}")
PY
    echo "  walshift verify exited with $rc"
    cat "$PROFILE_OUT"
fi

# --- repair ------------------------------------------------------------------

REPAIR_NOTE=""
REPAIRED=0
if want clean || want incremental || want lag; then
    echo; echo "repair: walshift verify --repair (no run streaming) ..."
    rc=0
    "$BIN" --config "$CONF" --log-level warn verify --repair --json >"$BENCH_TMP/repair.json" 2>>"$WS_LOG" || rc=$?
    read -r rresult rewritten deleted rclean < <(jq -r '[.result, ([.repairs[].rewritten] | add),
        ([.repairs[].deleted] | add), ([.repairs[].result] | join(","))] | @tsv' "$BENCH_TMP/repair.json")
    REPAIR_NOTE="verify --repair: exit $rc, $rewritten rows rewritten, $deleted deleted, re-verified: $rclean, result $rresult"
    echo "  $REPAIR_NOTE"
    if [ "$rc" != 0 ] || [ "$rresult" != clean ] || [ "$rclean" != clean ]; then
        fail "walshift verify --repair did not end clean (exit $rc): $(head -c 1500 "$BENCH_TMP/repair.json")"
    elif [ "$(digest "$SRC_PORT" public.usage_events)" != "$(digest "$TGT_PORT" shadow.usage_events)" ]; then
        fail "after walshift verify --repair, B still differs from A"
    else
        echo "  B equals A after the repair"
        REPAIRED=1
    fi
fi

# --- clean -------------------------------------------------------------------

# walshift verify of the repaired (identical) copy (each walshift method of
# the rounds) against the floor and, when the profile phase ran, against
# walshift's own hash statements run over the whole table in one statement
# per side ("expr"): the cost of a full pass that finds nothing, split into
# the hash expression's cost (expr / floor) and the chunking's (walshift /
# expr). REPEAT rounds, round-robin.
if want clean && (( REPAIRED )); then
    echo; echo "clean: walshift verify of the repaired copy, walshift's hash statements over the whole table and the floor, $REPEAT rounds ..."
    CLEAN_METHODS=(walshift)
    for c in ${CHUNK_MAXES//,/ }; do CLEAN_METHODS+=("walshift-cmax$c"); done
    for round in $(seq 1 "$REPEAT"); do
        for m in "${CLEAN_METHODS[@]}"; do
            case "$m" in
                walshift) write_config "$CONF" ;;
                *) write_config "$CONF" "chunk_rows_max = ${m#walshift-cmax}" \
                    "chunk_rows_min = $(( ${m#walshift-cmax} < 1000 ? ${m#walshift-cmax} : 1000 ))" ;;
            esac
            checkpoint_all
            t0="$(now_s)"; rc=0
            out="$BENCH_TMP/verify_${m}_clean_$round.json"
            tv="$BENCH_TMP/verify_${m}_clean_$round.time"
            /usr/bin/time -v -o "$tv" "$BIN" --config "$CONF" --log-level warn verify --json >"$out" 2>>"$WS_LOG" || rc=$?
            wall="$(calc "$(now_s) - $t0")"
            read -r rows chunks result ndiff < <(jq -r '[.tables[0].counters.rows, .tables[0].counters.chunks, .result,
                .tables[0].counters.differences] | @tsv' "$out")
            printf '  %-22s round %s: %7.2f s; %s rows, %s chunks, %s; peak RSS %s MB\n' "$m-clean" "$round" "$wall" \
                "$rows" "$chunks" "$result" "$(( $(peak_rss_kb "$tv") / 1024 ))"
            if [ "$rc" != 0 ] || [ "$result" != clean ]; then
                fail "$m of the identical copy: exit $rc, result $result, $ndiff differences"
            else
                record "$m-clean" "$round" "$wall"
                info "$m-clean" rss "$(peak_rss_kb "$tv")"
                info "$m-clean" counters "$rows $chunks 0 0"
            fi
        done
        if [ -s "$BENCH_TMP/expr_src.sql" ] && [ -s "$BENCH_TMP/expr_tgt.sql" ]; then
            checkpoint_all
            t0="$(now_s)"
            both_at_once "$BENCH_TMP/expr_a" "$BENCH_TMP/expr_b" "$(cat "$BENCH_TMP/expr_src.sql")" "$(cat "$BENCH_TMP/expr_tgt.sql")"
            wall="$(calc "$(now_s) - $t0")"
            printf '  %-22s round %s: %7.2f s; A: %s; B: %s\n' expr-clean "$round" "$wall" \
                "$(tr '|' ' ' <"$BENCH_TMP/expr_a")" "$(tr '|' ' ' <"$BENCH_TMP/expr_b")"
            if [ "$(cat "$BENCH_TMP/expr_a")" = "$(cat "$BENCH_TMP/expr_b")" ]; then
                record expr-clean "$round" "$wall"
            else
                fail "walshift's hash statements over the whole identical tables differ: A $(cat "$BENCH_TMP/expr_a"), B $(cat "$BENCH_TMP/expr_b")"
            fi
        fi
        run_whole floor-clean "$round" "count(*) || ' ' || sum(hashtextextended(t::text, 0))" same || true
    done
fi

# --- the runs ----------------------------------------------------------------

start_run() {
    RUN_LOG="$BENCH_TMP/run_$1.log"; shift
    : >"$RUN_LOG"
    write_config "$CONF" "$@"
    # The pass lines ("verification pass ... elapsed_ms=") are info lines.
    WALSHIFT_LOG="${WALSHIFT_LOG:-info}" "$BIN" --config "$CONF" run 2>>"$RUN_LOG" &
    WS_PID=$!
}
stop_run() {
    local rc=0
    kill -TERM "$WS_PID"
    wait "$WS_PID" || rc=$?
    WS_PID=""
    wait_slot_inactive "$SRC_PORT" bench_ws
    cat "$RUN_LOG" >>"$WS_LOG"
    if [ "$rc" != 0 ]; then
        fail "walshift run exited with $rc after SIGTERM; its log:"
        tail -n 20 "$RUN_LOG"
    fi
}
ws_alive() {
    [ -n "$WS_PID" ] && kill -0 "$WS_PID" 2>/dev/null && return 0
    fail "walshift run exited; its log:"
    tail -n 20 "$RUN_LOG"
    return 1
}
# run_passes FROM_LINE: the run's finished passes logged after line
# FROM_LINE of its log: "line kind result rows chunks seconds mismatched".
# walshift.verify_tables keeps only the last finished pass, and with
# interval_seconds shorter than a full pass the next (incremental) pass
# starts, and ends, right after it: its row is not there long enough to be
# polled, so the passes are read from the log lines walshift writes at the
# end of each pass.
run_passes() {
    awk -v from="$1" 'NR > from && /verification pass / {
        line = NR; kind = ""; result = ""; rows = ""; chunks = ""; ms = ""; mism = ""
        for (i = 1; i <= NF; i++) {
            split($i, kv, "=")
            gsub(/"/, "", kv[2])
            if (kv[1] == "kind") kind = kv[2]
            else if (kv[1] == "result") result = kv[2]
            else if (kv[1] == "rows") rows = kv[2]
            else if (kv[1] == "chunks") chunks = kv[2]
            else if (kv[1] == "elapsed_ms") ms = kv[2]
            else if (kv[1] == "mismatched") mism = kv[2]
        }
        printf "%d %s %s %s %s %.3f %s\n", line, kind, result, rows, chunks, ms / 1000, mism
    }' "$RUN_LOG"
}
log_lines() { wc -l <"$RUN_LOG"; }

# wait_full_pass FROM_LINE: until the run logged a finished full pass after
# line FROM_LINE; sets FULL_PASS to its run_passes line.
FULL_PASS=""
wait_full_pass() {
    local deadline
    deadline="$(epoch_calc "$(now_s) + $PASS_TIMEOUT")"
    while :; do
        FULL_PASS="$(run_passes "$1" | awk '$2 == "full"' | head -n 1)"
        [ -n "$FULL_PASS" ] && return 0
        ws_alive || return 1
        if awk "BEGIN { exit !($(now_s) > $deadline) }"; then
            fail "no full verification pass finished within $PASS_TIMEOUT s"
            return 1
        fi
        sleep 0.1
    done
}

# --- incremental -------------------------------------------------------------

INC_FULL=""; INC_FULL_DB=""; INC_PART=""; INC_NOTE=""; INC_ROWS=""
if want incremental && (( REPAIRED )); then
    echo; echo "incremental: walshift run ([verify] interval_seconds = 1, full_pass_interval_seconds = 86400) ..."
    checkpoint_all
    start_run incremental "interval_seconds = 1" "full_pass_interval_seconds = 86400"
    if wait_full_pass 0; then
        read -r _ _ fresult frows fchunks fsecs _ <<<"$FULL_PASS"
        INC_FULL="$fsecs"
        # The clean full pass as walshift.verify_tables keeps it.
        INC_FULL_DB="$(psql_at "$TGT_PORT" -d postgres -Atc "select extract(epoch from last_clean_full_at)
            from walshift.verify_tables where migration = 'bench' and runner = 'run'")"
        printf '  initial full pass: %s, %s rows, %s chunks, %.2f s\n' "$fresult" "$frows" "$fchunks" "$fsecs"
        [ "$fresult" = clean ] || fail "the run's initial full pass was $fresult, not clean"
        [ -n "$INC_FULL_DB" ] || fail "walshift.verify_tables has no last_clean_full_at after a clean full pass"
        sleep 2   # an idle incremental pass or two
        from="$(log_lines)"
        t_upd="$(now_s)"
        INC_ROWS="$(psql_at "$SRC_PORT" -d postgres -Atc "with u as (update public.usage_events set quantity = quantity + 1
            where id % 100 = 0 returning 1) select count(*) from u")"
        flush_wal "$SRC_PORT"
        END="$(psql_at "$SRC_PORT" -d postgres -Atc 'select pg_current_wal_lsn()')"
        flush_wal "$SRC_PORT"
        read -r applied_s _ _ < <(python3 "$LIB/slot_watch.py" drain --src "$SRC_PORT" --slot bench_ws --endpos "$END" \
            --t0 "$t_upd" --target "$TGT_PORT" \
            --applied-sql "select coalesce((select applied_lsn from walshift.progress where migration = 'bench'), '0/0')" \
            --pid "$WS_PID" --timeout "$PASS_TIMEOUT")
        printf '  updated %s rows on A in one transaction; the slot confirmed it %.2f s after the update started\n' "$INC_ROWS" "$applied_s"
        # The incremental passes after the update, until they covered its
        # rows (normally one pass); passes with no key are idle ones.
        deadline="$(epoch_calc "$(now_s) + $PASS_TIMEOUT")"
        while :; do
            passes="$(run_passes "$from" | awk '$2 == "incremental" && $4 > 0')"
            sum_rows="$(echo "$passes" | awk '{ s += $4 } END { print s + 0 }')"
            (( sum_rows >= INC_ROWS )) && break
            ws_alive || break
            if awk "BEGIN { exit !($(now_s) > $deadline) }"; then
                fail "the incremental passes did not cover the $INC_ROWS updated rows within $PASS_TIMEOUT s ($sum_rows rows)"
                break
            fi
            sleep 0.05
        done
        t_done="$(now_s)"
        if (( sum_rows >= INC_ROWS )); then
            echo "$passes" | while read -r _ kind result rows chunks secs mism; do
                echo "  pass after the update: $kind, $result, $rows rows, $chunks chunks ($mism mismatched at first), $secs s"
            done
            INC_PART="$(echo "$passes" | awk '{ s += $6 } END { printf "%.3f", s }')"
            results="$(echo "$passes" | awk '{ printf " %s", $3 }')"
            INC_NOTE="$(echo "$passes" | wc -l) incremental pass(es), $sum_rows rows, results:$results; seen in the log $(printf '%.2f' "$(calc "$t_done - $t_upd")") s after the update started"
            printf '  incremental: %.3f s = %.2f%% of the full pass (%s)\n' "$INC_PART" "$(calc "100 * $INC_PART / $INC_FULL")" "$INC_NOTE"
            [[ "$results" =~ ^(\ clean)+$ ]] || fail "the incremental pass(es) after the update were not clean:$results"
        fi
    fi
    [ -n "$WS_PID" ] && stop_run
fi

# --- lag under load ----------------------------------------------------------

LAG_RESULT=""; LAG_PASS=""; LAG_IDLE=""; LAG_LOAD_RATE=""; LAG_DIFFS=""; LAG_EQUAL=""
if want lag && (( REPAIRED )); then
    echo; echo "lag: walshift run verifies full passes back to back while pgbench writes ~$LAG_RATE changes/s on A ..."
    psql_at "$SRC_PORT" -d postgres -Atc "select setval(pg_get_serial_sequence('public.usage_events', 'id'), max(id)) from public.usage_events" >/dev/null
    write_usage_events_load "$BENCH_TMP/load.sql" "$SRC_PORT"
    checkpoint_all
    start_run lag "interval_seconds = 1" "full_pass_interval_seconds = 1"
    if wait_full_pass 0; then
        LAG_IDLE="$FULL_PASS"
        read -r _ _ iresult irows _ isecs _ <<<"$LAG_IDLE"
        printf '  full pass without load: %s, %s rows, %.2f s\n' "$iresult" "$irows" "$isecs"
        [ "$iresult" = clean ] || fail "the run's full pass without load was $iresult, not clean"
        # The watched pass: the next full one to start (passes run back to
        # back, each full, so the one in progress in walshift.verify_tables
        # after the idle pass's end); the load runs from its start until its
        # end (the first time last_started_at is past the idle pass's end).
        MARK="$(psql_at "$TGT_PORT" -d postgres -Atc "select extract(epoch from now())")"
        PROGRESS_SQL="select
              coalesce(extract(epoch from case when v.pass_kind = 'full' and v.pass_started_at > to_timestamp($MARK) then v.pass_started_at
                                               when v.last_kind = 'full' and v.last_started_at > to_timestamp($MARK) then v.last_started_at end)::text, ''),
              coalesce(extract(epoch from case when v.last_kind = 'full' and v.last_started_at > to_timestamp($MARK) then v.last_finished_at end)::text, ''),
              coalesce(v.pass_rows, 0) + coalesce(v.pass_chunks, 0), 0, ''
            from (select 1) one left join walshift.verify_tables v
              on v.migration = 'bench' and v.runner = 'run' and v.target_table = 'shadow.usage_events'"
        WS_APPLIED_SQL="select coalesce((select applied_lsn from walshift.progress where migration = 'bench'), '0/0')"
        LOAD_TS_SQL="select coalesce(extract(epoch from max(occurred_at))::text, '') from shadow.usage_events where org_id = 0"
        before="$(tup_counts)"
        from="$(log_lines)"
        LAG_OUT="$BENCH_TMP/lag.txt"
        if python3 "$LIB/backfill_watch.py" lag --src "$SRC_PORT" --target "$TGT_PORT" --slot bench_ws \
            --applied-sql "$WS_APPLIED_SQL" --progress-sql "$PROGRESS_SQL" --load-ts-sql "$LOAD_TS_SQL" \
            --pid "$WS_PID" --stall-timeout "$PASS_TIMEOUT" --out "$BENCH_TMP/pgbench_lag.txt" -- \
            pgbench -n -h 127.0.0.1 -p "$SRC_PORT" -U postgres -c "$CLIENTS" -j "$(( CLIENTS < 2 ? CLIENTS : 2 ))" -R "$LAG_RATE" -T 86400 \
            -f "$BENCH_TMP/load.sql" postgres | tee "$LAG_OUT"; then
            LAG_RESULT="$(awk '$1 == "RESULT"' "$LAG_OUT")"
        fi
        if [ -n "$LAG_RESULT" ]; then
            read -r _ load_start load_end _ <<<"$LAG_RESULT"
            # The watched pass: the full pass whose log line (written as it
            # ends) is closest to its last_finished_at as the watcher saw it.
            read -r _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ wcompleted _ <<<"$LAG_RESULT"
            LAG_PASS="$(python3 - "$RUN_LOG" "$from" "$wcompleted" <<'PY'
import re, sys
from datetime import datetime
path, start, done = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
best = None
for n, line in enumerate(open(path, errors="replace"), 1):
    if n <= start or "verification pass " not in line or 'kind="full"' not in line:
        continue
    ts = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
    f = dict(re.findall(r'(\w+)="?([^" ]*)"?', line))
    cand = (abs(ts - done), f"{n} full {f['result']} {f['rows']} {f['chunks']} {int(f['elapsed_ms']) / 1000:.3f} {f['mismatched']}")
    best = min(best, cand) if best else cand
print(best[1] if best and best[0] < 5 else "")
PY
)"
            LAG_DIFFS="$(psql_at "$TGT_PORT" -d postgres -Atc "select count(*) from walshift.verify_differences where migration = 'bench'")"
            after="$(tup_counts)"
            changes="$(echo "$before $after" | awk '{print $4 - $1 + $5 - $2 + $6 - $3}')"
            LAG_LOAD_RATE="$(calc "$changes / ($load_end - $load_start)" | awk '{printf "%.0f", $1}')"
            read -r _ _ presult prows pchunks psecs pmism <<<"${LAG_PASS:-0 - - - - 0 -}"
            printf '  source load: %s row changes in %.1f s (%s changes/s)\n' "$changes" "$(calc "$load_end - $load_start")" "$LAG_LOAD_RATE"
            printf '  the pass under load: %s, %s rows, %s chunks (%s mismatched at first), %.2f s; walshift.verify_differences rows: %s\n' \
                "$presult" "$prows" "$pchunks" "$pmism" "$psecs" "$LAG_DIFFS"
            [ "$presult" = clean ] && [ "$LAG_DIFFS" = 0 ] ||
                fail "the verification pass under load reported ${presult:-nothing} with $LAG_DIFFS stored differences (none exist)"
            if [ "$LAG_DIFFS" != 0 ]; then
                psql_at "$TGT_PORT" -d postgres -c "select key, kind, confirmed, columns, source_values, target_values
                    from walshift.verify_differences where migration = 'bench' limit 10" | sed 's/^/    /'
            fi
            # Catch up, then B must equal A.
            flush_wal "$SRC_PORT"
            END="$(psql_at "$SRC_PORT" -d postgres -Atc 'select pg_current_wal_lsn()')"
            flush_wal "$SRC_PORT"
            t0="$(now_s)"
            read -r catchup_s _ _ < <(python3 "$LIB/slot_watch.py" drain --src "$SRC_PORT" --slot bench_ws --endpos "$END" \
                --t0 "$t0" --target "$TGT_PORT" --applied-sql "$WS_APPLIED_SQL" --pid "$WS_PID" --timeout "$PASS_TIMEOUT")
            printf '  after the load stopped, the slot confirmed the end %.2f s later\n' "$catchup_s"
        else
            fail "the lag phase's watcher failed (see above)"
        fi
    fi
    [ -n "$WS_PID" ] && stop_run
    if [ -n "$LAG_RESULT" ]; then
        if [ "$(digest "$SRC_PORT" public.usage_events)" = "$(digest "$TGT_PORT" shadow.usage_events)" ]; then
            LAG_EQUAL=PASS
        else
            LAG_EQUAL=FAIL
            fail "after the load, B differs from A"
        fi
        echo "  B equals A after the load: $LAG_EQUAL"
    fi
fi

# --- summary -----------------------------------------------------------------

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
times_of() { awk -v m="$1" '$1 == m { print $3 }' "$RESULTS"; }
med() { times_of "$1" | median; }
info_of() { awk -v m="$1" -v k="$2" '$1 == m && $2 == k { $1 = ""; $2 = ""; sub(/^  /, ""); print }' "$INFO"; }
describe() {
    case "$1" in
        walshift) echo "walshift verify --json ([verify] defaults${VERIFY_TOML:+, $VERIFY_TOML})" ;;
        walshift-cmax*) echo "walshift verify --json, chunk_rows_max = ${1#walshift-cmax}" ;;
        reladiff) echo "reladiff ${RELADIFF_VERSION#v} hashdiff, A -> B${RELADIFF_ARGS:+ ($RELADIFF_ARGS)}" ;;
        fetch) echo "COPY ... order by id from both at once, then diff" ;;
        naive) echo "count(*) + md5(string_agg(t::text order by id)), both at once" ;;
        floor) echo "count(*) + sum(hashtextextended(t::text, 0)), both at once" ;;
    esac
}

echo
echo "=== summary: $ROWS rows of usage_events ($SRC_SIZE on A), 10 rows differ on B ==="
echo "(clusters fsync=off; $(nproc) cores; median of $REPEAT round-robin rounds; wall clock)"
METHODS="$(awk '$1 !~ /-clean$/ { print $1 }' "$RESULTS" | awk '!seen[$1]++')"
if [ -n "$METHODS" ]; then
    printf '%-20s %9s   %-32s   %-40s   %s\n' method 'median s' 'runs (s)' "ratio walshift / method" "what"
    for m in $METHODS; do
        runs="$(times_of "$m" | awk '{ printf("%s%.2f", (NR > 1 ? " " : ""), $1) }')"
        ratios=""
        for w in ${WS_METHODS[@]+"${WS_METHODS[@]}"}; do
            [ "$w" = "$m" ] && continue
            [ -n "$(med "$w")" ] || continue
            ratios="$ratios$(printf '%s %.2fx  ' "$w" "$(calc "$(med "$w") / $(med "$m")")")"
        done
        printf '%-20s %9.2f   %-32s   %-40s   %s\n' "$m" "$(med "$m")" "$runs" "$ratios" "$(describe "$m")"
    done
fi
for w in ${WS_METHODS[@]+"${WS_METHODS[@]}"}; do
    [ -n "$(med "$w")" ] || continue
    rss_max="$(info_of "$w" rss | sort -n | tail -n 1)"
    read -r rows chunks mismatched rechecked <<<"$(info_of "$w" counters | tail -n 1)"
    echo "$w: $rows rows, $chunks chunks, $mismatched mismatched, $rechecked re-checks; peak RSS $(( rss_max / 1024 )) MB (max over runs)"
    # verdict WALSHIFT PEER OP BOUND LABEL: the ratio of the medians; in
    # brackets the ratio in each round (the two ran minutes apart at most).
    verdict() {
        [ -n "$(med "$2")" ] || return 0
        local r per
        r="$(calc "$(med "$1") / $(med "$2")")"
        per="$(awk -v a="$1" -v b="$2" '$1 == a { x[$2] = $3 } $1 == b { y[$2] = $3 }
            END { for (k in x) if (k in y) printf "%s %.2f\n", k, x[k] / y[k] }' "$RESULTS" | sort -n | awk '{ printf("%s%s", (NR > 1 ? " " : ""), $2) }')"
        printf '  target: %-32s %s %-5s  %6.2fx  %-6s  (per round: %s)\n' "$5" "$3" "$4" "$r" \
            "$(awk "BEGIN { exit !($r $3 $4) }" && echo met || echo MISSED)" "$per"
    }
    verdict "$w" floor '<=' 1.3 "walshift / floor"
    verdict "$w" fetch '<' 1.0 "walshift / fetch-and-diff"
    verdict "$w" reladiff '<=' 0.4 "walshift / reladiff (about 0.4)"
    printf '  target: %-32s %s %-5s  %6.0f MB %s\n' "peak RSS" '<' 100 "$(( rss_max / 1024 ))" \
        "$( (( rss_max < 100 * 1024 )) && echo met || echo MISSED)"
done
if [ -n "$(med reladiff)" ]; then
    echo "reladiff: peak RSS $(( $(info_of reladiff rss | sort -n | tail -n 1) / 1024 )) MB (max over runs)"
fi
if [ -n "$PROFILE_OUT" ]; then
    echo "profile of one walshift verify of the 10 differences (server time per statement kind; A source, B target):"
    cat "$PROFILE_OUT"
fi
[ -n "$REPAIR_NOTE" ] && echo "repair: $REPAIR_NOTE"
if [ -n "$(med floor-clean)" ]; then
    echo "clean copy (after the repair), median of $REPEAT rounds (runs), ratio to the floor:"
    for m in $(awk '$1 ~ /-clean$/ { print $1 }' "$RESULTS" | awk '!seen[$1]++'); do
        extra=""
        if [[ "$m" == walshift* ]]; then
            read -r rows chunks _ <<<"$(info_of "$m" counters | tail -n 1)"
            extra="; $chunks chunks, peak RSS $(( $(info_of "$m" rss | sort -n | tail -n 1) / 1024 )) MB"
            [ -n "$(med expr-clean)" ] && extra="$extra; $(printf '%.2fx' "$(calc "$(med "$m") / $(med expr-clean)")") its hash statements over the whole table"
        fi
        case "$m" in
            expr-clean) what="walshift's hash statements without their range, both at once" ;;
            floor-clean) what="the floor" ;;
            walshift-cmax*) c="${m#walshift-cmax}"; what="walshift verify, chunk_rows_max = ${c%-clean}" ;;
            *) what="walshift verify ([verify] defaults${VERIFY_TOML:+, $VERIFY_TOML})" ;;
        esac
        printf '  %-26s %7.2f s (%s)  %5.2fx floor   %s%s\n' "$m" "$(med "$m")" \
            "$(times_of "$m" | awk '{ printf("%s%.2f", (NR > 1 ? " " : ""), $1) }')" \
            "$(calc "$(med "$m") / $(med floor-clean)")" "$what" "$extra"
    done
fi
if [ -n "$INC_PART" ]; then
    pct="$(calc "100 * $INC_PART / $INC_FULL")"
    printf 'incremental: %s changed rows (1%%) verified in %.3f s = %.2f%% of the full pass (%.2f s, walshift run)   target <= 10%%: %s\n' \
        "$INC_ROWS" "$INC_PART" "$pct" "$INC_FULL" "$(awk "BEGIN { exit !($pct <= 10) }" && echo met || echo MISSED)"
    echo "  ($INC_NOTE)"
fi
if [ -n "$LAG_RESULT" ]; then
    read -r _ _ _ n lp50 lp99 lmax ap50 ap99 amax sp50 sp99 smax _ <<<"$LAG_RESULT"
    read -r _ _ presult prows pchunks psecs pmism <<<"${LAG_PASS:-0 - - - - 0 -}"
    read -r _ _ _ _ _ isecs _ <<<"$LAG_IDLE"
    printf 'lag during a full verification pass under load (~%s changes/s achieved, %s samples; the pass %.2f s, %.2f s without load), p50 / p99 / max s:\n' \
        "$LAG_LOAD_RATE" "$n" "$psecs" "$isecs"
    printf '  newest load row on B:     %.2f / %.2f / %.2f\n' "$lp50" "$lp99" "$lmax"
    printf '  applied position:         %.2f / %.2f / %.2f\n' "$ap50" "$ap99" "$amax"
    printf '  slot confirmed_flush_lsn: %.2f / %.2f / %.2f\n' "$sp50" "$sp99" "$smax"
    echo "  the pass under load: $presult, $prows rows, $pchunks chunks ($pmism mismatched at first: changes in flight, narrowed and confirmed); walshift.verify_differences rows: $LAG_DIFFS; B equals A after the load: $LAG_EQUAL"
fi
# Each verify of the 10 differences logs one WARN per difference: expected.
echo "walshift log: $(grep -E ' (WARN|ERROR) ' "$WS_LOG" | grep -cv 'verification found a difference' || true) unexpected WARN/ERROR lines"
grep -E ' (WARN|ERROR) ' "$WS_LOG" | grep -v 'verification found a difference' | head -n 5 || true
for s in ${SKIPPED[@]+"${SKIPPED[@]}"}; do echo "SKIPPED: $s"; done
if (( ${#FAILED[@]} )); then
    echo "correctness: ${#FAILED[@]} check(s) FAILED:"
    for f in "${FAILED[@]}"; do echo "  - $f"; done
else
    echo "correctness: every check passed"
fi
printf 'bench took %.0f s; load average at the end: %s\n' "$(calc "$(now_s) - $SCRIPT_T0")" "$(cut -d' ' -f1-3 /proc/loadavg)"
(( ${#FAILED[@]} == 0 )) || exit 1
