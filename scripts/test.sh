#!/usr/bin/env bash
# The test command: `bash scripts/test.sh [cargo test arguments]`, from anywhere in the
# checkout, on a fresh Debian machine with Rust and the PostgreSQL 15 server binaries.
#
# Installs the tools the tests need that the machine lacks (TEST_TOOLS: redis-server
# and openssl for the harness's Redis servers, promtool and chromium), finds the
# PostgreSQL binaries and exports WALSHIFT_TEST_PG_BINDIR, creates the `postgres` OS
# user when running as root, then runs `cargo test "$@"`. `--no-run` compiles the
# tests without running them. Exits 2 when something is missing that it cannot install
# (not root and no passwordless sudo: it prints the apt-get command to run).
#
# `.ci/run` sources this file (`. scripts/test.sh`) to prepare the machine before its
# other steps, then runs it for the tests; sourced, it stops before `cargo test`.
set -euo pipefail

# What the tests need beyond Rust and PostgreSQL, as `command:Debian package`.
TEST_TOOLS=(
    redis-server:redis-server
    openssl:openssl
    promtool:prometheus
    chromium:chromium
)

# shellcheck source=scripts/lib/machine.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/machine.sh"

ws_install_missing "${TEST_TOOLS[@]}"
ws_pg_bindir
ws_postgres_user

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    echo "cargo test $* (PostgreSQL binaries: $WALSHIFT_TEST_PG_BINDIR)"
    exec cargo test "$@"
fi
