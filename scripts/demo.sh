#!/usr/bin/env bash
# The demo command: `bash scripts/demo.sh [walshift demo arguments]`, from anywhere in
# the checkout, on a fresh Debian machine with Rust and the PostgreSQL 15 server
# binaries.
#
# Installs what the demo needs that the machine lacks (DEMO_TOOLS: redis-server, for
# the throwaway Redis server the cutover controller publishes to), creates the
# `postgres` OS user when running as root (the demo's throwaway cluster runs as that
# user), then runs `walshift demo "$@"` from a release build. The demo narrates on
# stderr; walshift's own log stays at `warn` so it does not drown the narration (set
# WALSHIFT_LOG=info to see it all). Exits 2 when something is missing that it cannot
# install (not root and no passwordless sudo: it prints the apt-get command).
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
export WALSHIFT_LOG="${WALSHIFT_LOG:-warn}"
exec cargo run --release -- demo "$@"
