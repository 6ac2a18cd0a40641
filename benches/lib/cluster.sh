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

stop_clusters() {
    for dir in "${CLUSTER_DIRS[@]}"; do
        as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    done
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

walshift_bin() {
    local bin="${WALSHIFT_BIN:-target/release/walshift}"
    if [ ! -x "$bin" ]; then
        cargo build --release --quiet
    fi
    echo "$bin"
}
