#!/usr/bin/env bash
# Runs a real VM under KVM with `vireo` (built on first use).
#
#   scripts/run-vm.sh                 Debian's cloud kernel + a busybox initramfs (fetched and
#                                     built on first use by scripts/guest/build-assets.sh), with a
#                                     shell on the serial console; `poweroff -f` ends it.
#   scripts/run-vm.sh --test-guest    the ring-3 test guest (scenario via --cmdline, e.g. "count 5")
#
# Extra arguments go to `vireo run` (e.g. --cpus 2 --memory 1G).
# Hosts whose /dev/kvm is PVM (/sys/module/kvm_pvm) cannot run a stock kernel at speed: there the
# test guest runs instead, and tests-e2e/run.sh boots Debian's kernel inside a nested L1 VM.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p vireo-launcher -p vireo-testguest

mode=linux
if [ "${1:-}" = --test-guest ]; then mode=test; shift; fi
if [ "$mode" = linux ] && [ -d /sys/module/kvm_pvm ]; then
    echo "run-vm: /dev/kvm here is PVM (no hardware virtualization): booting the ring-3 test guest;" >&2
    echo "run-vm: stock Linux runs under vireo in a nested VM with tests-e2e/run.sh" >&2
    mode=test
fi

if [ "$mode" = test ]; then
    guest=target/release/vireo-testguest.elf
    target/release/vireo-testguest "$guest"
    has_cmdline=no
    for a in "$@"; do [ "$a" = "--cmdline" ] && has_cmdline=yes; done
    if [ "$has_cmdline" = no ]; then set -- --cmdline hello "$@"; fi
    exec target/release/vireo run --kernel "$guest" "$@"
fi

dir=$(scripts/guest/build-assets.sh --print-dir)
exec target/release/vireo run --kernel "$dir/vmlinuz" --initramfs "$dir/initramfs.cpio.gz" \
    --cmdline "console=ttyS0 quiet vireo.scenario=shell" "$@"
