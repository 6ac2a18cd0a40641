#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a fixed time each:
#
#   bash scripts/fuzz.sh [seconds_per_target] [target...]
#
# Defaults: 60 s, every target (pgoutput, replication_frame, conninfo, config).
# Needs the nightly toolchain (rustup); installs cargo-fuzz from crates.io if
# it is missing. Each target runs alone (-jobs=1: one core, the machine has
# other work), with its committed seeds (fuzz/seeds/<target>/) copied into
# its working corpus (fuzz/corpus/<target>/, not committed) first, and with
# libFuzzer's memory limits, so an allocation sized from an untrusted length
# field is a finding rather than a slow machine:
#   -rss_limit_mb=2048    the process's resident size
#   -malloc_limit_mb=512  any single allocation
#
# Prints a table per target (seconds, executions, exec/s, corpus units/size
# at the end, files in the corpus directory, peak RSS). Exits 1 if any
# target found a crash (panic, overflow, over-limit allocation, timeout) and
# prints where libFuzzer wrote the input; replay one with
# `cargo +nightly fuzz run <target> <artifact>`.
#
# Not part of CI: .ci/run and the root build stay on stable. See
# docs/fuzzing.md.
set -euo pipefail

ALL_TARGETS=(pgoutput replication_frame conninfo config)

cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds == 0)); then
    echo "usage: $0 [seconds_per_target] [target...]" >&2
    exit 2
fi
shift || true
targets=("$@")
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")
for target in "${targets[@]}"; do
    if [[ ! -f fuzz/fuzz_targets/$target.rs ]]; then
        echo "unknown target $target (have: ${ALL_TARGETS[*]})" >&2
        exit 2
    fi
done

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "the nightly toolchain is missing: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

# Build against exactly the dependency versions the root crate pins; cargo
# adds libfuzzer-sys on top. (fuzz/Cargo.lock is therefore not committed.)
cp Cargo.lock fuzz/Cargo.lock

logs=fuzz/target/logs
mkdir -p "$logs"

# Release build with debug assertions and overflow checks (cargo-fuzz's
# default without -O), AddressSanitizer on.
for target in "${targets[@]}"; do
    if ! cargo +nightly fuzz build "$target" >"$logs/build.log" 2>&1; then
        cat "$logs/build.log" >&2
        echo "build of fuzz target $target failed" >&2
        exit 2
    fi
done

failed=()
summary=()
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    artifacts=fuzz/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    cp -n fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
    marker=$(mktemp)
    log=$logs/$target.log
    echo "fuzzing $target for ${seconds}s (corpus $corpus, log $log)"
    status=0
    # -jobs=1 runs one worker that writes fuzz-0.log into the working
    # directory (the driver prints it when the job ends): run from the log
    # directory so that file does not land in the checkout.
    (
        cd "$logs"
        cargo +nightly fuzz run --fuzz-dir ../.. "$target" "../../corpus/$target" -- \
            -jobs=1 -workers=1 \
            -max_total_time="$seconds" -timeout=10 \
            -rss_limit_mb=2048 -malloc_limit_mb=512 \
            -print_final_stats=1
    ) >"$log" 2>&1 || status=$?
    rm -f "$logs/fuzz-0.log"

    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
    execs=$(stat number_of_executed_units)
    rate=$(stat average_exec_per_sec)
    rss=$(stat peak_rss_mb)
    # libFuzzer's working set at the end ("corp: units/size"), and what the
    # corpus directory holds (it only grows; `cargo fuzz cmin` shrinks it).
    units=$(grep -oE 'corp: [0-9]+/[0-9.]+[a-zA-Z]*' "$log" | tail -1 | cut -d' ' -f2)
    files=$(find "$corpus" -type f | wc -l)
    new_artifacts=$(find "$artifacts" -type f -newer "$marker" | sort)
    rm -f "$marker"
    if ((status != 0)) || [[ -n $new_artifacts ]]; then
        failed+=("$target")
        echo "FAILED: $target (exit $status); log: $log" >&2
        grep -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY|Test unit written' "$log" >&2 || true
        for artifact in $new_artifacts; do
            echo "  artifact: $artifact (replay: cargo +nightly fuzz run $target $artifact)" >&2
        done
    fi
    summary+=("$(printf '%-18s %4ss %12s %9s %14s %12s %6s MB' \
        "$target" "$seconds" "${execs:-?}" "${rate:-?}" "${units:-?}" "$files" "${rss:-?}")")
done

echo
printf '%-18s %5s %12s %9s %14s %12s %9s\n' target time execs exec/s corpus_units corpus_files peak_rss
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "no crashes"
