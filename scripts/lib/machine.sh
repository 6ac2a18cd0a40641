# Shared by scripts/test.sh and scripts/demo.sh (sourced, not run): installs what a
# fresh Debian machine lacks, finds the PostgreSQL server binaries and creates the
# `postgres` OS user. Everything here is prefixed `ws_` so that scripts sourcing it
# (and `.ci/run`, which sources scripts/test.sh) keep their own names.

# ws_die CODE MESSAGE...: prints `error: MESSAGE` to stderr and exits with CODE
# (2: the machine lacks something the operator has to add; 1: a step failed).
ws_die() {
    local code=$1
    shift
    printf 'error: %s\n' "$*" >&2
    exit "$code"
}

# ws_install_missing COMMAND:PACKAGE...: installs, with apt-get, the Debian PACKAGE of
# every COMMAND that is not on the PATH. As root directly, otherwise through `sudo -n`
# when that works without a password; else prints the command to run and exits 2.
#
# Installing a package that contains a server (redis-server, prometheus) may start
# that server, as apt-get does, unless /usr/sbin/policy-rc.d forbids it (as on
# container images, including CI's); the tests never use those system servers.
ws_install_missing() {
    local pair
    local -a missing=() sudo=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    if ((${#missing[@]} == 0)); then
        echo "nothing to install: found ${*%%:*}"
        return 0
    fi
    local apt="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 ||
        ws_die 2 "missing Debian package(s) ${missing[*]} and no apt-get: install them by hand"
    if [[ $(id -u) != 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            ws_die 2 "missing Debian package(s) ${missing[*]}, and this is neither root nor passwordless sudo; install them as root with:
  $apt"
        fi
    fi
    echo "installing ${missing[*]}: ${sudo[*]}${sudo[*]:+ }$apt"
    local started=$SECONDS
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
        ws_die 1 "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        ws_die 1 "apt-get install ${missing[*]} failed"
    echo "installed ${missing[*]} in $((SECONDS - started)) s"
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 ||
            ws_die 1 "package ${pair#*:} is installed but there is still no '${pair%%:*}' command"
    done
}

# ws_pg_bindir: finds the PostgreSQL server binaries the way tests/support/pg.rs does
# (WALSHIFT_TEST_PG_BINDIR, else `pg_config --bindir`, else the newest
# /usr/lib/postgresql/*/bin) and exports WALSHIFT_TEST_PG_BINDIR, so the tests use
# exactly these binaries.
ws_pg_bindir() {
    local bindir=${WALSHIFT_TEST_PG_BINDIR:-} binary
    if [[ -z $bindir ]] && command -v pg_config >/dev/null 2>&1; then
        bindir=$(pg_config --bindir)
        [[ -x $bindir/initdb ]] || bindir=
    fi
    if [[ -z $bindir ]]; then
        bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    fi
    for binary in initdb pg_ctl postgres psql pg_recvlogical; do
        [[ -n $bindir && -x $bindir/$binary ]] ||
            ws_die 2 "PostgreSQL binary '$binary' not found (bindir '${bindir:-?}'); install postgresql-15"
    done
    export WALSHIFT_TEST_PG_BINDIR=$bindir
}

# ws_postgres_user: as root, the test harness and `walshift demo` run PostgreSQL as
# the `postgres` OS user (PostgreSQL refuses to run as root); creates it when missing.
ws_postgres_user() {
    if [[ $(id -u) == 0 ]] && ! id postgres >/dev/null 2>&1; then
        echo "creating the postgres OS user"
        useradd --system --no-create-home --home-dir /var/lib/postgresql \
            --shell /usr/sbin/nologin postgres
    fi
}
