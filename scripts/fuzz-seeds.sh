#!/usr/bin/env bash
# Generates the seed corpora of the fuzz targets in fuzz/fuzz_targets, from real inputs:
#
#   qcow2_open            images made by qemu-img / qemu-io: compat 0.10 and 1.1, clusters of
#                         512 B to 2 MiB, data, zero clusters, discards, lazy refcounts, every
#                         refcount width, preallocation, internal snapshots, compressed clusters,
#                         backing files, bitmaps, resized and amended images, and the header
#                         features Vireo refuses (extended L2, zstd, external data file)
#   qcow2_open-large      the images above that exceed the fuzzing max_len (64 KiB clusters and
#                         up): not for mutation, run once each as regression inputs
#   kernel_image          synthetic bzImage / ELF vmlinux (PVH and 64-bit entry) / user-mode
#                         ELF (fuzz/seedgen), and the real test guest ELF (vireo-testguest),
#                         stripped of its symbols
#   kernel_image-large    the test guest ELF as built (regression input)
#   virtio_blk_request,   well-formed descriptor chains and register sequences in each
#   virtio_net_chain,     target's input format (fuzz/seedgen)
#   virtio_pci_registers
#   rfb_client            VNC viewer byte streams (vncdotool-like, QEMU-aware, 3.3/3.7/3.8,
#                         VNC auth, refused ones) in the target's input format (fuzz/seedgen)
#   api_request           control API requests as curl and `vireo remote` send them, each
#                         endpoint, with bodies, and a few refused ones
#   launch_spec           launch specs as `vireo run` builds them, the controller renders them and
#                         the README documents them: every serial mode, disks, NICs, limits
#   snapshot_state        state files `vireo` itself wrote: the test guest churning on a
#                         virtio-blk disk (1 and 2 vCPUs), snapshotted through the control API
#                         (needs /dev/kvm; builds vireo in release if target/release/vireo is
#                         missing)
#   migration_receive     live-migration streams as a real source sends them, recorded by a
#                         proxy (scripts/record-migration.py) between `vireo run` and `vireo
#                         receive`: the test guest counting (dirty ring, 1 vCPU; bitmap, 2
#                         vCPUs) and churning pages (bitmap, 1 vCPU), 64 MiB; cut at frame
#                         boundaries: Hello, + Config, + one page, no pages, one page per
#                         Memory frame, a local-handover Config, an Abandon (needs /dev/kvm)
#   migration_receive-large  the whole recorded streams (regression inputs)
#
# Usage: scripts/fuzz-seeds.sh [OUT_DIR]   (default fuzz/seeds; replaced entirely)
# Needs: cargo, qemu-img and qemu-io (Debian: qemu-utils), python3 (stdlib), /dev/kvm. Takes
# under a minute once fuzz/seedgen and vireo are built. The qcow2 images are deterministic for
# a given qemu-img version (snapshot dates are zeroed); the state files and migration streams
# depend on where the guest was when they were taken. Environment: QCOW2_MAX_LEN (default
# 65552 = 64 KiB + the 16-byte script) is the size limit for the qcow2_open fuzzing seeds;
# pass the same value to libFuzzer's -max_len.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:-fuzz/seeds}
case $out in /*) ;; *) out=$root/$out ;; esac
max_len=${QCOW2_MAX_LEN:-65552}

for tool in qemu-img qemu-io; do
    command -v "$tool" >/dev/null || { echo "fuzz-seeds: $tool not found (apt-get install qemu-utils)" >&2; exit 1; }
done

echo "== fuzz seeds: building fuzz/seedgen"
cargo build --quiet --release --manifest-path fuzz/seedgen/Cargo.toml --target-dir fuzz/target/seedgen
seedgen=$root/fuzz/target/seedgen/release/vireo-fuzz-seedgen

rm -rf "$out"
mkdir -p "$out"
"$seedgen" virtio "$out"
"$seedgen" kernel "$out/kernel_image"
"$seedgen" rfb "$out/rfb_client"

# Launch specs: the README's example, what the controller renders for a VMI (disks of every
# volume kind, NICs with and without a MAC, the pod's sockets), each serial mode, the bounds.
mkdir -p "$out/launch_spec"
spec() { printf '%s\n' "$2" >"$out/launch_spec/$1.json"; }
spec readme '{ "version": 1, "vcpus": 2, "memory_mib": 512,
  "payload": { "kernel": "/path/kernel", "initramfs": null, "cmdline": "console=ttyS0" },
  "serial": { "mode": "unix", "path": "/run/vireo/serial.sock" },
  "disks": [ { "path": "/var/lib/vm/root.qcow2", "format": "qcow2", "readonly": false } ],
  "nets": [ { "tap": "vtap0", "mac": "52:54:00:12:34:56" } ] }'
spec controller '{"version":1,"vcpus":2,"memory_mib":1024,"payload":{"kernel":"/boot/vmlinuz","initramfs":"/boot/initrd","cmdline":"console=ttyS0"},"serial":{"mode":"unix","path":"/var/run/vireo/serial.sock"},"disks":[{"path":"/var/run/vireo/disks/root/disk.img","format":"qcow2","readonly":false},{"path":"/var/run/vireo/disks/data/disk.img","format":"raw","readonly":true},{"path":"/images/host.img","format":"qcow2","readonly":false}],"nets":[{"tap":"tap0","mac":"52:54:00:12:34:56"},{"tap":"tap1","mac":null}],"api_socket":"/var/run/vireo/api.sock"}'
spec minimal '{"vcpus":1,"memory_mib":8,"payload":{"kernel":"/k"}}'
spec stdio '{"vcpus":254,"memory_mib":65536,"payload":{"kernel":"k","cmdline":""},"serial":{"mode":"stdio"}}'
spec off '{"version":1,"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"serial":{"mode":"off"},"disks":[{"path":"/d"}]}'
spec file '{"vcpus":1,"memory_mib":64,"payload":{"kernel":"/k"},"serial":{"mode":"file","path":"/tmp/serial.log"},"nets":[{"tap":"vt0"}]}'
spec refused '{"version":2,"vcpus":0,"memory_mib":7,"payload":{"kernel":""},"disks":[{"path":"/a"},{"path":"/a"}],"nets":[{"tap":"a/b","mac":"01:00:5e:00:00:01"}]}'
echo "$out/launch_spec: $(ls "$out/launch_spec" | wc -l) specs"

# Control API requests: what curl and `vireo remote` send to each endpoint, a body, a query,
# and refused ones (wrong method, unknown path, bad body, chunked, malformed).
mkdir -p "$out/api_request"
req() { printf '%b' "$2" >"$out/api_request/$1"; }
req ping 'GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n'
req info 'GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n'
req counters 'GET /api/v1/vm.counters?pretty=1 HTTP/1.1\r\nHost: localhost\r\n\r\n'
req pause 'PUT /api/v1/vm.pause HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}'
req resume 'PUT /api/v1/vm.resume HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n'
req power-button 'PUT /api/v1/vm.power-button HTTP/1.0\r\n\r\n'
req shutdown 'PUT /api/v1/vm.shutdown HTTP/1.1\r\nHost: localhost\r\n\r\n'
req shutdown-vmm 'PUT /api/v1/vmm.shutdown HTTP/1.1\r\nHost: localhost\r\n\r\n'
req wrong-method 'GET /api/v1/vm.pause HTTP/1.1\r\n\r\n'
req unknown 'GET /api/v1/vm.snapshot HTTP/1.1\r\n\r\n'
req bad-body 'PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 5\r\n\r\npause'
req chunked 'PUT /api/v1/vm.pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'
req garbage 'GARBAGE\r\n\r\n'
req snapshot 'PUT /api/v1/vm.snapshot HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 43\r\n\r\n{"destination_url":"file:///tmp/snapshot1"}'
# A JSON key with an escaped CR: its error reason must stay one line (a fuzz finding).
req escaped-cr 'PUT /api/v1/vm.restore HTTP/1.1\r\nContent-Length: 12\r\n\r\n{"a\\rb": 1}'
req restore 'PUT /api/v1/vm.restore HTTP/1.1\r\nHost: localhost\r\nContent-Length: 61\r\n\r\n{"source_url":"file:///tmp/s","prefault":true,"resume":false}'
echo "$out/api_request: $(ls "$out/api_request" | wc -l) requests"

# Snapshot state files, written by vireo: the test guest churning on a virtio-blk disk, so the
# transport's queues and MSI-X table hold real values.
mkdir -p "$out/snapshot_state"
[ -x target/release/vireo ] || cargo build --quiet --release -p vireo-launcher
snapdir=$(mktemp -d)
cargo run --quiet --release -p vireo-testguest --bin vireo-testguest "$snapdir/guest.elf"
for cpus in 1 2; do
    truncate -s 1M "$snapdir/disk.raw"
    target/release/vireo run --kernel "$snapdir/guest.elf" --cmdline "churn 64 64" --cpus $cpus \
        --memory 16M --serial off --disk "path=$snapdir/disk.raw" --api-socket "$snapdir/api" \
        2>"$snapdir/log" &
    pid=$!
    for _ in $(seq 100); do [ -S "$snapdir/api" ] && break; sleep 0.05; done
    sleep 0.2
    target/release/vireo remote --api-socket "$snapdir/api" snapshot "$snapdir/snap" >/dev/null
    target/release/vireo remote --api-socket "$snapdir/api" shutdown-vmm || true
    wait $pid || true
    cp "$snapdir/snap/state.bin" "$out/snapshot_state/churn-blk-${cpus}cpu"
done
rm -rf "$snapdir"
echo "$out/snapshot_state: $(ls "$out/snapshot_state" | wc -l) state files"

# Live-migration streams as a real source sends them, recorded by a proxy between the source
# (`vireo run`, 64 MiB, the test guest counting or churning pages) and the target (`vireo
# receive`), over unix sockets: what comes before the first page, passes of pages, the state,
# Complete. Whole streams (100 KiB to a few MiB) are regression inputs; their cuts at frame
# boundaries (scripts/record-migration.py cut) are the fuzzing corpus.
mkdir -p "$out/migration_receive" "$out/migration_receive-large"
migdir=$(mktemp -d)
cargo run --quiet --release -p vireo-testguest --bin vireo-testguest "$migdir/guest.elf"
wait_socket() { # wait_socket PATH: up to 10 s for a unix socket to appear
    for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done
    echo "fuzz-seeds: $1 did not appear" >&2
    return 1
}
record() { # record NAME DIRTY_LOG CPUS CMDLINE: one migration, recorded
    local name=$1 t=$migdir/$1 src dst rec rc status=0
    mkdir -p "$t"
    target/release/vireo receive --listen "unix:$t/target.sock" --serial off \
        --api-socket "$t/target.api" 2>"$t/target.log" &
    dst=$!
    target/release/vireo run --kernel "$migdir/guest.elf" --cmdline "$4" --cpus "$3" \
        --memory 64M --serial off --dirty-log "$2" --api-socket "$t/source.api" \
        2>"$t/source.log" &
    src=$!
    python3 scripts/record-migration.py proxy "$t/proxy.sock" "$t/target.sock" "$t/stream" &
    rec=$!
    wait_socket "$t/target.sock" && wait_socket "$t/source.api" && wait_socket "$t/proxy.sock" &&
        sleep 0.2 &&
        target/release/vireo remote --api-socket "$t/source.api" send-migration \
            "unix:$t/proxy.sock" >/dev/null || status=$?
    if [ $status -ne 0 ]; then
        kill $src $rec $dst 2>/dev/null || true
        wait $src $rec $dst || true
        echo "fuzz-seeds: migration $name failed; logs:" >&2
        cat "$t/source.log" "$t/target.log" >&2
        return 1
    fi
    # The source exits 10 once the target runs the guest (migrated); the target runs it
    # until told to stop.
    wait $rec || status=$?
    rc=0
    wait $src || rc=$?
    if [ $status -eq 0 ] && [ $rc -ne 10 ]; then
        echo "fuzz-seeds: the source of $name exited $rc, not 10 (migrated)" >&2
        status=1
    fi
    if [ $status -eq 0 ] && wait_socket "$t/target.api"; then
        target/release/vireo remote --api-socket "$t/target.api" shutdown-vmm || true
    else
        kill $dst 2>/dev/null || true
    fi
    wait $dst || true
    if [ $status -ne 0 ]; then
        echo "fuzz-seeds: migration $name failed; logs:" >&2
        cat "$t/source.log" "$t/target.log" >&2
        return 1
    fi
    cp "$t/stream" "$out/migration_receive-large/$name"
    python3 scripts/record-migration.py cut "$t/stream" "$out/migration_receive" "$name"
}
record count-ring-1cpu ring 1 "count 100000000 1000000"
record count-bitmap-2cpu bitmap 2 "count 100000000 1000000"
record churn-bitmap-1cpu bitmap 1 "churn 256"
rm -rf "$migdir"
echo "$out/migration_receive: $(ls "$out/migration_receive" | wc -l) cut streams;" \
    "$out/migration_receive-large: $(ls "$out/migration_receive-large" | wc -l) whole streams"

# The test guest: a real user-mode ELF kernel (one rustc call, no dependencies; a failure here
# costs one seed, not the corpus). As built (660 KiB, mostly symbols) it is a regression input;
# stripped to its segments (about 57 KiB) it joins the fuzzing corpus.
mkdir -p "$out/kernel_image-large"
if cargo run --quiet -p vireo-testguest -- "$out/kernel_image-large/testguest.elf"; then
    "$seedgen" strip-elf "$out/kernel_image-large/testguest.elf" "$out/kernel_image/testguest-stripped.elf"
    echo "$out/kernel_image: + testguest-stripped.elf; $out/kernel_image-large: testguest.elf"
else
    echo "fuzz-seeds: warning: could not build the test guest ELF; kernel_image seeds lack it" >&2
fi

# qcow2 images, made in a scratch directory (backing files resolve relative to it).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

mk() { # mk NAME SIZE OPTIONS: an empty qcow2 image NAME.qcow2
    qemu-img create -q -f qcow2 -o "$3" "$1.qcow2" "$2"
}
io() { # io NAME COMMAND...: run qemu-io commands on NAME.qcow2
    local name=$1 args=()
    shift
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f qcow2 "${args[@]}" "$name.qcow2" >/dev/null
}
# Data at the start, in the middle and at the end, a zero range, a discard (compat 1.1 turns
# the zero range into zero clusters and the discard into unallocated or zero clusters).
fill() {
    io "$1" 'write -P 0x11 0 12k' 'write -P 0x22 300k 8k' 'write -P 0x33 1008k 16k' \
        'write -z 320k 8k' 'discard 4k 4k'
}

for compat in 0.10 1.1; do
    v=v3
    [ "$compat" = 0.10 ] && v=v2
    for cs in 512 1K 2K 4K 8K 16K 64K 2M; do
        case $cs in
            512 | 1K | 2K | 4K | 8K) mk "empty-$v-c$cs" 1M "compat=$compat,cluster_size=$cs" ;;
        esac
        mk "data-$v-c$cs" 1M "compat=$compat,cluster_size=$cs"
        fill "data-$v-c$cs"
    done
    # Internal snapshots: data shared with a snapshot (refcount 2), copied on write after it.
    mk "snapshots-$v" 1M "compat=$compat,cluster_size=1K"
    io "snapshots-$v" 'write -P 0x41 0 8k' 'write -P 0x42 512k 4k'
    qemu-img snapshot -c first "snapshots-$v.qcow2"
    io "snapshots-$v" 'write -P 0x43 4k 8k' 'write -z 512k 2k'
    qemu-img snapshot -c second "snapshots-$v.qcow2"
    io "snapshots-$v" 'write -P 0x44 0 1k' 'discard 100k 4k'
    # Compressed clusters (qemu-img convert -c) and a write over some of them.
    qemu-img create -q -f raw "compressible-$v.raw" 256K
    qemu-io -f raw -c 'write -P 0x61 0 64k' -c 'write -P 0x62 128k 32k' "compressible-$v.raw" >/dev/null
    qemu-img convert -c -O qcow2 -o "compat=$compat,cluster_size=2K" "compressible-$v.raw" "compressed-$v.qcow2"
    cp "compressed-$v.qcow2" "compressed-rewritten-$v.qcow2"
    io "compressed-rewritten-$v" 'write -P 0x63 2k 1k' 'write -z 8k 4k'
    # Backing files. At fuzz time the image is alone in its directory: a relative name is
    # missing, "image.qcow2" is the image itself (a loop), /proc/self/exe is a raw file that
    # always exists (the fuzzer binary), so reads and copy-on-write fall through to it.
    mk "base-$v" 1M "compat=$compat,cluster_size=1K"
    io "base-$v" 'write -P 0x71 0 32k'
    qemu-img create -q -f qcow2 -b "base-$v.qcow2" -F qcow2 -o "compat=$compat,cluster_size=1K" "overlay-$v.qcow2" 1M
    io "overlay-$v" 'write -P 0x72 16k 4k' 'write -P 0x73 62k 4k'
    cp "base-$v.qcow2" image.qcow2
    qemu-img create -q -f qcow2 -b image.qcow2 -F qcow2 -o "compat=$compat,cluster_size=1K" "backing-loop-$v.qcow2" 1M
    rm image.qcow2
    qemu-img create -q -f qcow2 -b /proc/self/exe -F raw -o "compat=$compat,cluster_size=1K" "backing-raw-$v.qcow2" 1M
    io "backing-raw-$v" 'write -P 0x74 1k 1k' 'write -P 0x75 33k 3k'
done

# compat 1.1 features.
mk lazy-refcounts 1M cluster_size=1K,lazy_refcounts=on
fill lazy-refcounts
for bits in 1 2 4 8 32 64; do
    mk "refcount-bits-$bits" 1M "cluster_size=1K,refcount_bits=$bits"
    fill "refcount-bits-$bits"
done
for mode in metadata falloc full; do
    mk "prealloc-$mode" 32K "cluster_size=512,preallocation=$mode"
    io "prealloc-$mode" 'write -P 0x81 1k 2k'
done
mk bitmaps 1M cluster_size=1K
qemu-img bitmap --add bitmaps.qcow2 b0
qemu-img bitmap --add --disable -g 64K bitmaps.qcow2 b1
io bitmaps 'write -P 0x91 0 4k'
mk grown 1M cluster_size=512
fill grown
qemu-img resize -q grown.qcow2 3M
mk shrunk 1M cluster_size=1K
io shrunk 'write -P 0x92 0 4k' 'write -P 0x93 900k 4k'
qemu-img resize -q --shrink shrunk.qcow2 512K
mk amended-v2 1M cluster_size=1K
fill amended-v2
qemu-img amend -o compat=0.10 amended-v2.qcow2
mk amended-refcount-bits 1M cluster_size=1K
fill amended-refcount-bits
qemu-img amend -o refcount_bits=4 amended-refcount-bits.qcow2
mk virtual-64m 64M cluster_size=4K
io virtual-64m 'write -P 0xa1 0 4k' 'write -P 0xa2 63M 8k'
mk zero-size 0 cluster_size=1K
mk odd-size 1000000 cluster_size=1K
io odd-size 'write -P 0xa3 999424 512'
# Refused by Vireo's header check: one input each keeps those paths covered.
mk extended-l2 1M cluster_size=16K,extended_l2=on
mk zstd 1M cluster_size=1K,compression_type=zstd
mk external-data-file 1M cluster_size=1K,data_file=external.raw

mkdir -p "$out/qcow2_open" "$out/qcow2_open-large"
"$seedgen" qcow2 "$max_len" "$out/qcow2_open" "$out/qcow2_open-large" ./*.qcow2
echo "== fuzz seeds in $out: $(du -sh "$out" | cut -f1)"
