#!/usr/bin/env bash
# Runs a real VM under KVM: builds `vireo` and the ring-3 test guest (first use
# only), then boots the guest. Extra arguments go to `vireo run`, e.g.
#   scripts/run-vm.sh --cmdline "count 10" --cpus 2
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p vireo-launcher -p vireo-testguest
guest=target/release/vireo-testguest.elf
target/release/vireo-testguest "$guest"
has_cmdline=no
for a in "$@"; do [ "$a" = "--cmdline" ] && has_cmdline=yes; done
if [ "$has_cmdline" = no ]; then set -- --cmdline hello "$@"; fi
exec target/release/vireo run --kernel "$guest" "$@"
