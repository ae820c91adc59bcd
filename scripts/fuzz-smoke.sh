#!/usr/bin/env bash
# Fuzz smoke test, for CI: every fuzz target must build, and each must survive a short run
# from its seed corpus.
#
#   1. installs what is missing: the nightly toolchain (rustup) and cargo-fuzz (crates.io)
#   2. checks formatting of fuzz/ (its own workspaces, outside `cargo fmt --all`)
#   3. `cargo +nightly fuzz build`: fails if any target does not compile
#   4. scripts/fuzz-seeds.sh: regenerates the seed corpora into fuzz/seeds (needs qemu-utils)
#   5. per target: runs it FUZZ_SMOKE_SECONDS (default 20) from fuzz/seeds/<target> into a
#      scratch corpus, then once over each input of fuzz/seeds/<target>-large if present;
#      a target without seeds is an error (add them to fuzz/seedgen or scripts/fuzz-seeds.sh)
#
# Fails on any crash, leak, timeout (FUZZ_SMOKE_TIMEOUT seconds for one input, default 25) or
# out-of-memory; crash inputs are kept in fuzz/artifacts/<target>/. Prints each target's final
# coverage ("cov:" edges, corpus size) and the wall time.
#
# Usage: scripts/fuzz-smoke.sh [TARGET...]   (default: all targets of `cargo fuzz list`)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
seconds=${FUZZ_SMOKE_SECONDS:-20}
timeout=${FUZZ_SMOKE_TIMEOUT:-25}
# qcow2_open inputs are a 16-byte request script plus an image; seeds up to 64 KiB of image
# (clusters up to 8 KiB, most up to 4 KiB) are mutated, larger ones run as regression inputs.
export QCOW2_MAX_LEN=65552

echo "== fuzz smoke: tools"
if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal --component rustfmt
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cargo +nightly --version
cargo fuzz --version

echo "== fuzz smoke: fmt"
cargo +nightly fmt --manifest-path fuzz/Cargo.toml -- --check
cargo +nightly fmt --manifest-path fuzz/seedgen/Cargo.toml -- --check

echo "== fuzz smoke: build"
build_start=$(date +%s)
cargo +nightly fuzz build
echo "built in $(($(date +%s) - build_start)) s"

echo "== fuzz smoke: seeds"
scripts/fuzz-seeds.sh fuzz/seeds

# Targets leave /dev/shm/vireo-fuzz-[<tag>-]<pid> behind (their image or raw disk); remove those
# whose process is gone, never a live one.
clean_shm() {
    local dir pid
    for dir in /dev/shm/vireo-fuzz-*; do
        [ -d "$dir" ] || continue
        pid=${dir##*-}
        case $pid in '' | *[!0-9]*) continue ;; esac
        [ -e "/proc/$pid" ] || rm -rf "$dir"
    done
}

# The end of a failed run's log: the input (for file runs), the panic or sanitizer report and
# its stack, and where libFuzzer saved the input.
report() {
    mkdir -p fuzz/artifacts
    cp "$1" fuzz/artifacts/
    echo "---- failure (full log: fuzz/artifacts/$(basename "$1"))"
    grep -E '^Running: ' "$1" | tail -n 1 || true
    grep -E -m 1 -A 2 'panicked at|^==[0-9]+==ERROR|^ERROR: libFuzzer' "$1" || true
    tail -n 80 "$1"
    echo "----"
}

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"; clean_shm' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
    echo "== fuzz smoke: $t"
    seeds=fuzz/seeds/$t
    if [ -z "$(ls -A "$seeds" 2>/dev/null)" ]; then
        echo "fuzz-smoke: no seeds for $t in $seeds (add them to fuzz/seedgen or scripts/fuzz-seeds.sh)" >&2
        failed+=("$t (no seeds)")
        continue
    fi
    opts=(-max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1)
    [ "$t" = qcow2_open ] && opts+=(-max_len="$QCOW2_MAX_LEN")
    mkdir -p "$scratch/$t"
    log=$scratch/$t.log
    if ! cargo +nightly fuzz run "$t" "$scratch/$t" "$seeds" -- "${opts[@]}" >"$log" 2>&1; then
        report "$log"
        failed+=("$t")
    fi
    # libFuzzer's last status line: "#runs DONE cov: N ft: N corp: N/size ...".
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    grep -E '^INFO: seed corpus|INITED' "$log" | head -n 2 || true
    echo "$last"
    summary+=("$(printf '%-22s %s' "$t" "$last")")
    if [ -d "$seeds-large" ]; then
        large=("$seeds-large"/*)
        echo "-- $t: ${#large[@]} regression inputs from $seeds-large"
        log=$scratch/$t-regression.log
        if ! cargo +nightly fuzz run "$t" "${large[@]}" -- -timeout="$timeout" >"$log" 2>&1; then
            report "$log"
            failed+=("$t (regression input $(grep '^Running: ' "$log" | tail -n 1 | cut -d' ' -f2-))")
        fi
    fi
    clean_shm
done

echo "== fuzz smoke: summary"
printf '%s\n' "${summary[@]}"
echo "== fuzz smoke took $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz-smoke: FAILED: ${failed[*]} (crash inputs in fuzz/artifacts/)" >&2
    exit 1
fi
