#!/usr/bin/env bash
# The demo command: `bash scripts/demo.sh [walshift demo arguments]`, from anywhere in
# the checkout, on a fresh Debian machine with Rust and the PostgreSQL 15 server
# binaries.
#
# Installs what the demo needs that the machine lacks (DEMO_TOOLS: redis-server, for
# the throwaway Redis server of the cutover stage), creates the `postgres` OS user when
# running as root (the demo's throwaway cluster runs as that user), then runs
# `walshift demo "$@"` from a release build. Exits 2 when something is missing that it
# cannot install (not root and no passwordless sudo: it prints the apt-get command).
set -euo pipefail

# What the demo needs beyond Rust and PostgreSQL, as `command:Debian package`.
DEMO_TOOLS=(
    redis-server:redis-server
)

# shellcheck source=scripts/lib/machine.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/machine.sh"

ws_install_missing "${DEMO_TOOLS[@]}"
ws_postgres_user

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo run --release -- demo "$@"
