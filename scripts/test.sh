#!/usr/bin/env bash
# Runs the whole test suite on this machine: prepares what the tests need
# (cached outside git), then runs every test with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo nextest run --workspace --no-fail-fast "$@"
