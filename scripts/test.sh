#!/usr/bin/env bash
# Runs every test on this machine:
#  1. prepares what the tests need, cached outside git: the Kubernetes control plane built from
#     Debian's source package, and the Debian guest kernel + initramfs;
#  2. the Rust suite (unit, integration under real KVM, controller against the real apiserver)
#     with cargo-nextest;
#  3. the stock-Linux end-to-end tests (tests-e2e/): Debian's kernel booted by `vireo`, directly on
#     hardware KVM or inside a nested L1 VM where /dev/kvm cannot run it (the path is printed).
# Exits non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/k8s-control-plane.sh build
scripts/guest/build-assets.sh >/dev/null
cargo build --release --quiet -p vireo-launcher

set +e
cargo nextest run --workspace --no-fail-fast "$@"
suite=$?
echo "rust suite exit status: $suite"
tests-e2e/run.sh --vireo target/release/vireo
e2e=$?
set -e
[ "$suite" -eq 0 ] && [ "$e2e" -eq 0 ]
