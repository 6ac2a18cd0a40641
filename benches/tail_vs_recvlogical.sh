#!/usr/bin/env bash
# Benchmark: drain a backlog of row changes from a logical slot with
# `walshift tail --no-ack` vs `pg_recvlogical` (pgoutput, same options,
# --endpos), in the same run, on the same cluster and WAL. Prints changes/s,
# the time ratio, and walshift's peak RSS.
#
#   bash benches/tail_vs_recvlogical.sh [ROWS] [REPS]
#
# Fairness: both read the same backlog (their slots are created before the
# workload), with the same publication and options, output to /dev/null,
# alternating order over REPS rounds after one warm-up round each; the
# median is reported. pg_recvlogical acknowledges what it wrote, so each of
# its rounds gets its own slot; walshift runs with --no-ack on one slot.

source "$(dirname "$0")/lib/cluster.sh"

ROWS="${1:-1000000}"
REPS="${2:-3}"
BIN="$(walshift_bin)"

start_cluster SRC
PORT="$SRC_PORT"
echo "cluster on port $PORT; generating $ROWS row changes ..."

psql_at "$PORT" -d postgres <<SQL
$USAGE_EVENTS_DDL
create publication bench_pub for table usage_events;
select pg_create_logical_replication_slot('bench_walshift', 'pgoutput');
select pg_create_logical_replication_slot('bench_recv_' || i, 'pgoutput') from generate_series(0, $REPS) i;
SQL

# 1,000-row transactions: 80% inserts, then 20% updates of those rows.
INSERTS=$(( ROWS * 8 / 10 ))
UPDATES=$(( ROWS - INSERTS ))
psql_at "$PORT" -d postgres <<SQL
do \$\$
declare b bigint;
begin
  for b in 0 .. ($INSERTS - 1) / 1000 loop
    insert into usage_events
    select i, i % 997, (array['api_call','storage','egress'])[1 + i % 3], (i % 1000) / 7.0,
           i * 13 % 100000, now() - (i % 86400) * interval '1 second',
           jsonb_build_object('region', 'eu-' || (i % 5), 'sku', i % 37)
    from generate_series(b * 1000 + 1, least((b + 1) * 1000, $INSERTS)) i;
    commit;
  end loop;
  for b in 0 .. ($UPDATES - 1) / 1000 loop
    update usage_events set amount_cents = amount_cents + 1
    where id between b * 1000 + 1 and least((b + 1) * 1000, $UPDATES);
    commit;
  end loop;
end \$\$;
SQL
ENDPOS="$(psql_at "$PORT" -d postgres -Atc 'select pg_current_wal_insert_lsn()')"
echo "backlog ready: endpos $ENDPOS"

CONF="$BENCH_TMP/walshift.toml"
cat >"$CONF" <<TOML
[migration]
name = "bench"
[source]
url = "postgres://postgres@127.0.0.1:$PORT/postgres?sslmode=disable"
slot = "bench_walshift"
publication = "bench_pub"
[[tables]]
source = "public.usage_events"
target = "shadow.usage_events"
TOML

run_walshift() {
    "$BIN" --config "$CONF" --log-level warn tail --no-ack --endpos "$ENDPOS" >/dev/null
}
run_recv() {
    pg_recvlogical -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -S "bench_recv_$1" --start \
        -o proto_version=1 -o publication_names=bench_pub -o messages=true \
        --endpos "$ENDPOS" --no-loop -f - >/dev/null
}
timed() { local t0; t0="$(now_s)"; "$@"; calc "$(now_s) - $t0"; }

# Warm-up round (page cache, catalog caches), not counted.
run_walshift; run_recv 0

ws_times=(); recv_times=()
for r in $(seq 1 "$REPS"); do
    if (( r % 2 )); then
        ws_times+=("$(timed run_walshift)"); recv_times+=("$(timed run_recv "$r")")
    else
        recv_times+=("$(timed run_recv "$r")"); ws_times+=("$(timed run_walshift)")
    fi
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
WS="$(median "${ws_times[@]}")"
RECV="$(median "${recv_times[@]}")"

# Peak RSS of one more walshift run.
/usr/bin/time -v "$BIN" --config "$CONF" --log-level warn tail --no-ack --endpos "$ENDPOS" \
    >/dev/null 2>"$BENCH_TMP/time.txt"
RSS_KB="$(peak_rss_kb "$BENCH_TMP/time.txt")"
CPU_S="$(awk -F: '/User time|System time/ {s += $2} END {print s}' "$BENCH_TMP/time.txt")"
WALL_S="$(awk '/Elapsed \(wall clock\)/ {n = split($NF, p, ":"); t = 0; for (i = 1; i <= n; i++) t = t * 60 + p[i]; print t}' "$BENCH_TMP/time.txt")"

printf '\nrow changes:            %d\n' "$ROWS"
printf 'walshift tail:          %.2f s  (%.0f changes/s)  runs: %s\n' "$WS" "$(calc "$ROWS / $WS")" "${ws_times[*]}"
printf 'pg_recvlogical:         %.2f s  (%.0f changes/s)  runs: %s\n' "$RECV" "$(calc "$ROWS / $RECV")" "${recv_times[*]}"
printf 'time ratio walshift/pg_recvlogical: %.3f  (target <= 1.10)\n' "$(calc "$WS / $RECV")"
printf 'walshift peak RSS:      %.1f MB  (target < 50 MB)\n' "$(calc "$RSS_KB / 1024")"
printf 'walshift CPU:           %.2f s user+sys over %.2f s wall (%.0f%% of one core)\n' "$CPU_S" "$WALL_S" "$(calc "100 * $CPU_S / $WALL_S")"
