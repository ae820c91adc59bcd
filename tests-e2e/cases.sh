#!/bin/sh
# End-to-end cases (issues 3 and 5): boot Debian's cloud kernel under a VMM and check what the
# guest says and, for virtio disks and NICs, what reached the host side.
# Run by tests-e2e/run.sh, either directly on a host with hardware KVM or inside the L1 VM of
# scripts/nested/run-l1.sh. POSIX sh + busybox; needs l2-watch (scripts/nested/l2-watch) on PATH.
#
# Environment:
#   E2E_VMMS        VMMs to test, space separated: vireo and/or qemu (default: vireo)
#   VIREO           vireo binary (default: vireo on PATH)
#   QEMU            qemu-system-x86_64 binary (default: on PATH)
#   K_BZIMAGE       bzImage (vmlinuz)
#   K_PVH           ELF vmlinux with a PVH note
#   INITRD          scripts/guest initramfs
#   E2E_CASES       cases to run (default: all below)
#   CASE_TIMEOUT    seconds per VMM run (default 90)
#   BENCH_N         if > 0, also boot BENCH_N times per VMM (scenario cpus) and print the median
#                   launch -> marker time (default 0), and the guest's own uptime at the marker
#   BENCH_CPUS      vCPUs for the benchmark boots (default 1)
#   E2E_LOGDIR      where per-case logs go (default /tmp/e2e-logs)
#   VNC_PORT        vnc-console: the port vireo's VNC server listens on (default 5900; on the
#                   nested path run.sh forwards a host port to it)
#   VNC_ADDR        vnc-console: the address it listens on (default 0.0.0.0: in L1 the forwarded
#                   connections arrive on eth0; run.sh's direct path uses 127.0.0.1)
#   VNC_WAIT        vnc-console: seconds to wait for the viewer's typing after
#                   E2E-VNC-WAIT (default 180)
#
# Output: for each case `E2E-RESULT <vmm>/<case> PASS|FAIL [marker_t=<s>] [rc=<n>] [why=...]`,
# for benchmarks `E2E-BENCH vmm=<vmm> cpus=<n> n=<n> times=<a,b,..> median=<s> guest_uptime_median=<s>`.
#
# Cases (name: kernel, vCPUs, scenario, expectation):
#   bzimage-1cpu   vmlinuz 1 cpus       marker, VIREO-CPUS=1, exit 0 (poweroff -f)
#   bzimage-2cpu   vmlinuz 2 cpus       marker, VIREO-CPUS=2, exit 0
#   pvh-1cpu       vmlinux 1 cpus       marker, VIREO-CPUS=1, exit 0
#   pvh-2cpu       vmlinux 2 cpus       marker, VIREO-CPUS=2, exit 0
#   serial-input   vmlinuz 1 shell      `echo TYPED-$((6*7))` typed on the serial console prints
#                                       TYPED-42; then `poweroff -f` typed: exit 0
#   poweroff       vmlinuz 1 poweroff   marker, exit 0
#   reboot         vmlinuz 1 reboot     marker, exit 3 for vireo (default reboot flag: end with
#                                       the reset code); exit 0 for QEMU (-no-reboot)
#   sigterm-timeout vmlinuz 1 shell     SIGTERM 2 s after the marker; the guest's userspace has no
#                                       power-button handler (no acpid), so vireo (run with
#                                       --shutdown-timeout 3) presses the button, waits and stops
#                                       it: exit 8, a forced stop; QEMU ends at once on SIGTERM: 0
# Virtio cases (issue 5): ONE boot per VMM (vmlinuz, 1 vCPU, scenario virtio) serves all of them,
# with vda = 64 MiB sparse raw, vdb = qcow2 overlay over a 32 MiB raw base (pattern at [1, 2) MiB),
# vdc = 16 MiB raw read-only, eth0 on tap vtap0 (host side 10.213.2.1/24, HTTP :8213, TCP sink :8214):
#   blk-fs             guest mke2fs + mount + file on vda; host reads the file back (debugfs) and
#                      its sha256 equals the guest's and `seq 1 200000`'s; e2fsck -fn is clean
#   blk-trim           24 MiB written, deleted, `fstrim` in the guest: vda.raw ends with < 12 MiB
#                      allocated (stat %b), i.e. the discards reached the file as holes
#   blk-qcow2          guest reads the base pattern through the overlay; a 4 KiB COW write inside a
#                      backed cluster and a 2 MiB write read back (O_DIRECT) with the guest's sums;
#                      host: qemu-img check clean, converted overlay matches the guest's sums and
#                      the base byte-for-byte around the COW write, base.raw unchanged
#   blk-qcow2-discard  2 MiB written at 16 MiB then blkdiscard: no depth-0 data left there
#                      (qemu-img map) and it reads as zeros
#   blk-readonly       vdc: /sys/block/vdc/ro = 1, buffered and O_DIRECT writes fail, guest's read
#                      sum equals the host's, image unchanged
#   net-ping           eth0 has the given MAC, takes 10.213.2.2/24, 3 of 3 pings to 10.213.2.1
#   net-data           4 MiB host -> guest (HTTP) and 2 MiB guest -> host (TCP): sums match
# Host tools for these: qemu-img, debugfs, e2fsck, ip (iproute2 or busybox) + tunctl (busybox)
# or `ip tuntap`, nc and httpd (busybox), the tun module; root (for the tap).
# Snapshot case (vireo only; for QEMU it reports `SKIP why=not-applicable`):
#   snapshot-restore   vmlinuz, 1 vCPU, scenario shell, --api-socket, a 32 MiB sparse raw disk and
#                      eth0 on tap vtap0. One typed line: mke2fs + mount vda, eth0 10.213.2.2/24 up
#                      (1 ping), a random token written to the disk, the guest's clock printed
#                      (date +%s, /proc/uptime). Then `vireo remote snapshot DIR`, kill -9 vireo,
#                      `vireo restore --source DIR --api-socket S2` and one typed line (no boot
#                      marker: l2-watch --type-now): `echo RESTORED-$((6*7))` prints RESTORED-42,
#                      the clock again is >= the saved one (both), the token reads back from the
#                      disk after drop_caches, a new file is written + synced, 3 of 3 pings to
#                      10.213.2.1 answered, `poweroff -f`: exit 0. Facts: E2E-SNAP-FACT lines.
# Migration case (vireo only; for QEMU it reports `SKIP why=not-applicable`):
#   live-migrate       vmlinuz, 1 vCPU, scenario shell, --api-socket, a 32 MiB sparse raw disk. One
#                      typed line: mke2fs + mount vda, one checked write round, and a background
#                      writer that keeps rewriting 8 MiB of /tmp (the initramfs: memory) and 4 MiB
#                      of a file on vda, then sync, counting rounds in /mnt/d/count. After a few rounds, a `vireo receive --listen unix:…`
#                      target starts under l2-watch and `vireo remote … send-migration` moves the
#                      running guest to it: the send answers `completed`, the source vireo exits
#                      10 (migrated). On the target, one typed line: `echo MIGRATED-$((6*7))`, the
#                      writer's round count must grow there (it goes on across the move), then the
#                      writer is stopped, vda unmounted, `poweroff -f`: exit 0. Then e2fsck -fn on the disk image is
#                      clean. Facts: E2E-MIG-FACT lines (downtime, total, passes, rounds).
# VNC case (vireo only; for QEMU it reports `SKIP why=not-applicable`). The viewer is run.sh's,
# outside: on the nested path it reaches VNC_PORT through run-l1.sh --hostfwd.
#   vnc-console        vmlinuz, 1 vCPU, scenario vnc, `--vnc $VNC_ADDR:$VNC_PORT --vnc-size
#                      1024x768`, cmdline `console=tty0 consoleblank=0 console=ttyS0 ...`. Once
#                      the guest prints VIREO-VNC-READY (test pattern on /dev/fb0, shell on tty1)
#                      this prints `E2E-VNC-WAIT ready=yes port=P size=WxH` (ready=no if it never
#                      does) and waits up to VNC_WAIT s for TYPED-42 on the serial console: the
#                      viewer types `echo TYPED-$((6*7)) >/dev/ttyS0` + Enter on the keyboard
#                      (tty1). 10 s later `poweroff -f` goes to the serial shell. PASS: pattern
#                      drawn, `efifb: framebuffer at 0xd0000000` and i8042 lines in the guest's
#                      dmesg, an "AT Translated Set 2 keyboard" and the "Vireo Tablet" (virtio-
#                      input) among the input devices, TYPED-42, exit 0.
#                      Also `vnc-shift-keys`: PASS if SHIFTED-48 arrived too (the viewer's second
#                      line, typed with Shift pressed around shifted keysyms, as most viewers do).
#                      Facts (E2E-VNC-FACT): ready_s, typed_s, total_s, fb_info, fb_drawn,
#                      tty1_shell, inputs, and the guest's efifb/i8042/atkbd/serio dmesg lines.
BASIC_CASES="bzimage-1cpu bzimage-2cpu pvh-1cpu pvh-2cpu serial-input poweroff reboot sigterm-timeout"
VIRTIO_CASES="blk-fs blk-trim blk-qcow2 blk-qcow2-discard blk-readonly net-ping net-data"
SNAPSHOT_CASES="snapshot-restore live-migrate"
VNC_CASES="vnc-console"
ALL_CASES="$BASIC_CASES $VIRTIO_CASES $SNAPSHOT_CASES $VNC_CASES"

if [ "${1:-}" = --exec-vmm ]; then
    # --exec-vmm VMM KERNEL CPUS CMDLINE [DEVICE...]: replace this shell with the VMM.
    # DEVICE is disk:SPEC or net:SPEC, SPEC in vireo's syntax (path=P[,format=F][,readonly=on],
    # tap=NAME[,mac=MAC]); for QEMU it becomes -drive/-netdev + virtio-*-pci, in the same order.
    vmm=$2 kernel=$3 cpus=$4 cmdline=$5
    shift 5
    n=$# i=0
    while [ $i -lt $n ]; do # rotate the DEVICE arguments into VMM arguments
        dev=$1
        shift
        i=$((i + 1))
        if [ "$vmm" = vireo ]; then
            case $dev in
                disk:*) set -- "$@" --disk "${dev#disk:}" ;;
                net:*) set -- "$@" --net "${dev#net:}" ;;
            esac
            continue
        fi
        path='' fmt='' ro='' tap='' mac=''
        oldifs=$IFS IFS=,
        for kv in ${dev#*:}; do
            case $kv in
                path=*) path=${kv#path=} ;; format=*) fmt=${kv#format=} ;;
                readonly=on) ro=,readonly=on ;; tap=*) tap=${kv#tap=} ;; mac=*) mac=,mac=${kv#mac=} ;;
            esac
        done
        IFS=$oldifs
        case $dev in
            disk:*)
                if [ -z "$fmt" ]; then # probe like vireo: qcow2 magic, else raw
                    fmt=raw
                    [ "$(od -An -tx1 -N4 "$path" | tr -d ' ')" = 514649fb ] && fmt=qcow2
                fi
                set -- "$@" -drive "file=$path,if=none,id=d$i,format=$fmt,discard=unmap$ro" \
                    -device "virtio-blk-pci,drive=d$i" ;;
            net:*)
                set -- "$@" -netdev "tap,id=n$i,ifname=$tap,script=no,downscript=no" \
                    -device "virtio-net-pci,netdev=n$i$mac,romfile=" ;;
        esac
    done
    # The pid of the VMM (this shell execs it), for cases that kill it.
    [ -z "${VMM_PIDFILE:-}" ] || echo $$ >"$VMM_PIDFILE"
    case $vmm in
        vireo)
            # shellcheck disable=SC2086 # VIREO_EXTRA_ARGS is a word list
            exec "${VIREO:-vireo}" run --kernel "$kernel" --initramfs "$INITRD" --cmdline "$cmdline" \
                --cpus "$cpus" --memory 512M --serial stdio ${VIREO_EXTRA_ARGS:-} "$@" ;;
        qemu)
            # QEMU_ACCEL=tcg QEMU_CPU=max runs the cases without KVM (slow; for harness work).
            exec "${QEMU:-qemu-system-x86_64}" -accel "${QEMU_ACCEL:-kvm}" -cpu "${QEMU_CPU:-host}" \
                -M q35 -smp "$cpus" -m 512 \
                -nodefaults -no-user-config -display none -serial stdio -no-reboot \
                -kernel "$kernel" -initrd "$INITRD" -append "$cmdline" "$@" ;;
        *) echo "cases.sh: unknown VMM $vmm" >&2; exit 127 ;;
    esac
    exit 127
fi

self=$0
LOGDIR=${E2E_LOGDIR:-/tmp/e2e-logs}
mkdir -p "$LOGDIR"
CASE_TIMEOUT=${CASE_TIMEOUT:-90}

# boot VMM NAME KERNEL CPUS SCENARIO [--type LINE]...: run once, log to $LOGDIR/VMM-NAME.log.
# $BOOT_DEVS (DEVICE words for --exec-vmm), $BOOT_TIMEOUT (default $CASE_TIMEOUT) and
# $BOOT_CMDLINE (words put before the command line's console=ttyS0) apply.
boot() {
    _vmm=$1 _name=$2 _kernel=$3 _cpus=$4 _scen=$5
    shift 5
    _log=$LOGDIR/$_vmm-$_name.log
    : >"$_log"
    # shellcheck disable=SC2086 # BOOT_DEVS is a word list
    l2-watch --timeout "${BOOT_TIMEOUT:-$CASE_TIMEOUT}" --log "$_log" "$@" -- \
        sh "$self" --exec-vmm "$_vmm" "$_kernel" "$_cpus" \
        "${BOOT_CMDLINE:+$BOOT_CMDLINE }console=ttyS0 quiet vireo.scenario=$_scen" \
        ${BOOT_DEVS:-}
}

# check VMM NAME WANT_RC [PATTERN]...: judge $LOGDIR/VMM-NAME.log
check() {
    _vmm=$1 _name=$2 _want=$3
    shift 3
    _log=$LOGDIR/$_vmm-$_name.log
    _why=
    _t=$(sed -n 's/^L2-MARKER t=\([0-9.]*\).*/\1/p' "$_log" | head -1)
    _rc=$(sed -n 's/^L2-EXIT rc=\([0-9]*\).*/\1/p' "$_log" | tail -1)
    [ -n "$_t" ] || _why="${_why}no-marker,"
    for _p in "$@"; do
        grep -q "$_p" "$_log" || _why="${_why}missing:$_p,"
    done
    case $_rc in
        "$_want") ;;
        124|143) _why="${_why}timeout," ;;
        *) _why="${_why}rc=$_rc(want:$_want)," ;;
    esac
    if [ -z "$_why" ]; then
        echo "E2E-RESULT $_vmm/$_name PASS marker_t=$_t rc=$_rc"
    else
        echo "E2E-RESULT $_vmm/$_name FAIL marker_t=${_t:-none} rc=${_rc:-none} why=${_why%,}"
    fi
}

# --- virtio cases: one boot per VMM, host-side facts, then one verdict per case ------------------
TAP=vtap0
TAP_HOST=10.213.2.1
GUEST_MAC=52:54:00:00:00:02
MiB=1048576

rsha() { # rsha FILE OFFSET LEN: sha256 of LEN bytes at OFFSET (4 KiB multiples)
    dd if="$1" bs=4096 skip=$(($2 / 4096)) count=$(($3 / 4096)) 2>/dev/null | sha256sum | cut -c1-64
}
zsha() { # zsha LEN: sha256 of LEN zero bytes
    head -c "$1" /dev/zero | sha256sum | cut -c1-64
}
one() { tr '\n' ' ' | tr -s ' ' | sed 's/ $//; s/ /_/g'; }

# tap_setup: create $TAP with $TAP_HOST/24 unless it exists; on failure sets NET_ERR.
tap_setup() {
    NET_ERR=
    if [ ! -d "/sys/class/net/$TAP" ]; then
        modprobe tun 2>/dev/null
        if [ ! -c /dev/net/tun ]; then
            mkdir -p /dev/net && mknod /dev/net/tun c 10 200 2>/dev/null
        fi
        # iproute2 knows `ip tuntap`; busybox's ip does not, its tunctl does.
        ip tuntap add dev "$TAP" mode tap 2>/dev/null || busybox tunctl -t "$TAP" >/dev/null 2>&1 ||
            { NET_ERR='no-tap'; return 1; }
        TAP_CREATED=1
    fi
    ip addr flush dev "$TAP" 2>/dev/null
    ip addr add "$TAP_HOST/24" dev "$TAP" && ip link set "$TAP" up || { NET_ERR='tap-config'; return 1; }
}
tap_teardown() {
    [ -n "${TAP_CREATED:-}" ] || return 0
    ip link del "$TAP" 2>/dev/null || busybox tunctl -d "$TAP" >/dev/null 2>&1
    TAP_CREATED=
}

# map_data JSON LO HI: bytes of [LO, HI) that `qemu-img map --output=json` shows as depth-0 data
map_data() {
    sed 's/[][{}:,"]/ /g' "$1" | awk -v lo="$2" -v hi="$3" '{
        s = l = d = -1; data = ""
        for (i = 1; i < NF; i++) {
            if ($i == "start") s = $(i + 1); if ($i == "length") l = $(i + 1)
            if ($i == "depth") d = $(i + 1); if ($i == "data") data = $(i + 1)
        }
        if (s < 0 || d != 0 || data != "true") next
        a = s > lo ? s : lo; b = s + l < hi ? s + l : hi
        if (b > a) n += b - a
    } END { print n + 0 }'
}

# virtio_boot VMM: prepare images + tap, boot once (scenario virtio), collect host-side facts
# into $LOGDIR/VMM-virtio.facts (key=value lines). Later calls for the same VMM do nothing.
virtio_boot() {
    vv=$1
    F=$LOGDIR/$vv-virtio.facts
    [ -f "$F" ] && return 0
    W=$LOGDIR/$vv-virtio.d
    rm -rf "$W"
    mkdir -p "$W/www"
    : >"$F.tmp"
    fact() { echo "$1=$2" >>"$F.tmp"; }
    t0=$(date +%s)
    for t in qemu-img debugfs e2fsck busybox; do
        command -v "$t" >/dev/null || fact error "missing-host-tool:$t"
    done
    # images
    truncate -s $((64 * MiB)) "$W/vda.raw"
    truncate -s $((32 * MiB)) "$W/base.raw"
    head -c "$MiB" /dev/urandom | dd of="$W/base.raw" bs=4096 seek=256 conv=notrunc 2>/dev/null
    (cd "$W" && qemu-img create -q -f qcow2 -F raw -b base.raw vdb.qcow2) ||
        fact error "qemu-img-create"
    truncate -s $((16 * MiB)) "$W/vdc.raw"
    head -c "$MiB" /dev/urandom | dd of="$W/vdc.raw" conv=notrunc 2>/dev/null
    fact base_region_sha "$(rsha "$W/base.raw" "$MiB" "$MiB")"
    fact base_sha_before "$(sha256sum <"$W/base.raw" | cut -c1-64)"
    fact vdc_sha_before "$(sha256sum <"$W/vdc.raw" | cut -c1-64)"
    fact vdc_head_sha "$(rsha "$W/vdc.raw" 0 "$MiB")"
    # network: tap, HTTP server with a 4 MiB blob, TCP sink (its stdin never ends, so it closes
    # only after the guest half-closes)
    devs="disk:path=$W/vda.raw disk:path=$W/vdb.qcow2 disk:path=$W/vdc.raw,readonly=on"
    hpid='' npid=''
    if tap_setup; then
        devs="$devs net:tap=$TAP,mac=$GUEST_MAC"
        head -c $((4 * MiB)) /dev/urandom >"$W/www/blob"
        fact blob_sha "$(sha256sum <"$W/www/blob" | cut -c1-64)"
        busybox httpd -f -p "$TAP_HOST:8213" -h "$W/www" &
        hpid=$!
        mkfifo "$W/sink.in"
        exec 7<>"$W/sink.in"
        busybox nc -l -p 8214 <"$W/sink.in" >"$W/net-tx.bin" &
        npid=$!
    else
        fact net_error "$NET_ERR"
    fi
    fact prep_s $(($(date +%s) - t0))

    BOOT_DEVS=$devs BOOT_TIMEOUT=$((CASE_TIMEOUT * 3)) boot "$vv" virtio "$K_BZIMAGE" 1 virtio

    t0=$(date +%s)
    if [ -n "$hpid" ]; then
        # packets the host side of the tap received from / sent to the guest (/proc/net/dev is
        # per network namespace, unlike /sys/class/net)
        fact tap_packets "$(sed 's/:/ /' /proc/net/dev | awk -v t="$TAP" '$1 == t {
            printf "rx=%d(%dB)_tx=%d(%dB)\n", $3, $3 ? $2 / $3 : 0, $11, $11 ? $10 / $11 : 0 }')"
        kill "$hpid" 2>/dev/null
        kill "$npid" 2>/dev/null
        wait "$hpid" 2>/dev/null
        wait "$npid" 2>/dev/null
        exec 7>&-
        fact nettx_bytes "$(wc -c <"$W/net-tx.bin")"
        fact nettx_sha "$(sha256sum <"$W/net-tx.bin" | cut -c1-64)"
    fi
    tap_teardown
    # vda: file system written by the guest
    fact vda_file_sha "$(debugfs -R 'cat /dir/data.txt' "$W/vda.raw" 2>/dev/null | sha256sum | cut -c1-64)"
    fact vda_hello "$(debugfs -R 'cat /hello' "$W/vda.raw" 2>/dev/null | one)"
    fact seq_sha "$(seq 1 200000 | sha256sum | cut -c1-64)"
    e2fsck -fn "$W/vda.raw" >"$W/fsck.out" 2>&1
    fact vda_fsck_rc $?
    fact vda_fsck "$(tail -1 "$W/fsck.out" | one)"
    fact vda_alloc $(($(stat -c '%b * %B' "$W/vda.raw")))
    # vdb: qcow2 overlay
    qemu-img check "$W/vdb.qcow2" >"$W/check.out" 2>&1
    fact qcow2_check_rc $?
    fact qcow2_check "$(one <"$W/check.out")"
    qemu-img map --output=json "$W/vdb.qcow2" >"$W/map.json" 2>&1
    fact map_cow_data "$(map_data "$W/map.json" "$MiB" $((2 * MiB)))"
    fact map_write_data "$(map_data "$W/map.json" $((8 * MiB)) $((10 * MiB)))"
    fact map_discard_data "$(map_data "$W/map.json" $((16 * MiB)) $((18 * MiB)))"
    if qemu-img convert -O raw "$W/vdb.qcow2" "$W/vdb.out" 2>"$W/convert.err"; then
        fact vdb_region_sha "$(rsha "$W/vdb.out" "$MiB" "$MiB")"
        fact vdb_cow_sha "$(rsha "$W/vdb.out" $((MiB + 4096)) 4096)"
        fact vdb_cow_pre "$(rsha "$W/vdb.out" "$MiB" 4096)"
        fact vdb_cow_post "$(rsha "$W/vdb.out" $((MiB + 8192)) $((MiB - 8192)))"
        fact base_cow_pre "$(rsha "$W/base.raw" "$MiB" 4096)"
        fact base_cow_post "$(rsha "$W/base.raw" $((MiB + 8192)) $((MiB - 8192)))"
        fact vdb_write_sha "$(rsha "$W/vdb.out" $((8 * MiB)) $((2 * MiB)))"
        fact vdb_discard_sha "$(rsha "$W/vdb.out" $((16 * MiB)) $((2 * MiB)))"
        fact zero2m_sha "$(zsha $((2 * MiB)))"
        rm -f "$W/vdb.out"
    else
        fact error "qemu-img-convert:$(one <"$W/convert.err")"
    fi
    fact base_sha_after "$(sha256sum <"$W/base.raw" | cut -c1-64)"
    fact vdc_sha_after "$(sha256sum <"$W/vdc.raw" | cut -c1-64)"
    fact post_s $(($(date +%s) - t0))
    sed 's/^/E2E-VIRTIO-FACT '"$vv"' /' "$F.tmp"
    mv "$F.tmp" "$F"
    rm -f "$W"/*.raw "$W"/*.qcow2 "$W/www/blob" "$W/net-tx.bin"
}

# virtio_check VMM CASE: judge one virtio case from the shared boot's log and facts
virtio_check() {
    vv=$1 vc=$2
    _log=$LOGDIR/$vv-virtio.log
    F=$LOGDIR/$vv-virtio.facts
    f() { sed -n "s/^$1=//p" "$F" | tail -1; }
    # g TAG KEY: KEY's value on the guest's first `VIREO-TAG ...` line that has KEY
    g() { sed -n "s/^VIREO-$1 .* $2=\([^ ]*\).*/\1/p; s/^VIREO-$1 $2=\([^ ]*\).*/\1/p" "$_log" | head -1; }
    why=
    bad() { why="$why$1,"; }
    eq() { # eq WHAT A B: A and B non-empty and equal
        [ -n "$2" ] && [ "$2" = "$3" ] || bad "$1(${2:-none}!=${3:-none})"
    }
    _t=$(sed -n 's/^L2-MARKER t=\([0-9.]*\).*/\1/p' "$_log" | head -1)
    _rc=$(sed -n 's/^L2-EXIT rc=\([0-9]*\).*/\1/p' "$_log" | tail -1)
    [ -n "$_t" ] || bad "no-marker(last:$(grep -v '^L2-' "$_log" | tail -1 | cut -c1-160 | one))"
    grep -q '^VIREO-VIRTIO-DONE' "$_log" || bad no-done-line
    case $_rc in 0) ;; 124|143) bad timeout ;; *) bad "rc=$_rc(want:0)" ;; esac
    [ -z "$(f error)" ] || bad "host:$(f error)"
    extra=
    case $vc in
        blk-fs)
            [ -z "$(g BLK-FS error)" ] || bad "guest:$(g BLK-FS error)"
            eq guest-vs-seq "$(g BLK-FS sha256)" "$(f seq_sha)"
            eq host-vs-guest "$(f vda_file_sha)" "$(g BLK-FS sha256)"
            [ "$(f vda_hello)" = "written_by_the_vireo_test_guest" ] || bad "hello=$(f vda_hello)"
            [ "$(f vda_fsck_rc)" = 0 ] || bad "e2fsck-rc=$(f vda_fsck_rc):$(f vda_fsck)"
            extra="bytes=$(g BLK-FS bytes)" ;;
        blk-trim)
            [ -z "$(g BLK-TRIM error)" ] || bad "guest:$(g BLK-TRIM error)"
            tr_=$(g BLK-TRIM trimmed)
            case $tr_ in ''|none|0|*[!0-9]*) bad "trimmed=${tr_:-none}" ;; esac
            al=$(f vda_alloc)
            [ -n "$al" ] && [ "$al" -lt $((12 * MiB)) ] || bad "allocated=${al:-none}(want<12MiB)"
            extra="trimmed=$tr_ allocated=$al" ;;
        blk-qcow2)
            eq base-read "$(g BLK-QCOW2 base_sha256)" "$(f base_region_sha)"
            [ -z "$(g BLK-QCOW2 error)" ] || bad "guest:$(g BLK-QCOW2 error)"
            eq cow-write "$(f vdb_cow_sha)" "$(g BLK-QCOW2 cow_sha256)"
            eq cow-region "$(f vdb_region_sha)" "$(g BLK-QCOW2 region_sha256)"
            eq cow-before "$(f vdb_cow_pre)" "$(f base_cow_pre)"
            eq cow-after "$(f vdb_cow_post)" "$(f base_cow_post)"
            eq write "$(f vdb_write_sha)" "$(g BLK-QCOW2 write_sha256)"
            eq readback "$(g BLK-QCOW2 readback_sha256)" "$(g BLK-QCOW2 write_sha256)"
            [ "$(f qcow2_check_rc)" = 0 ] || bad "qemu-img-check-rc=$(f qcow2_check_rc):$(f qcow2_check)"
            [ "$(f map_write_data)" = $((2 * MiB)) ] || bad "map-write-data=$(f map_write_data)"
            [ "$(f map_cow_data)" -gt 0 ] 2>/dev/null || bad "map-cow-data=$(f map_cow_data)"
            eq base-unchanged "$(f base_sha_after)" "$(f base_sha_before)" ;;
        blk-qcow2-discard)
            # The clusters must have been written first, or discarding them proves nothing.
            [ -z "$(g BLK-QCOW2-DISCARD error)" ] || bad "guest:$(g BLK-QCOW2-DISCARD error)"
            [ "$(g BLK-QCOW2-DISCARD rc)" = 0 ] || bad "blkdiscard-rc=$(g BLK-QCOW2-DISCARD rc)"
            [ "$(f map_discard_data)" = 0 ] || bad "depth0-data-left=$(f map_discard_data)"
            eq zeros "$(f vdb_discard_sha)" "$(f zero2m_sha)"
            [ "$(f qcow2_check_rc)" = 0 ] || bad "qemu-img-check-rc=$(f qcow2_check_rc)" ;;
        blk-readonly)
            [ "$(g BLK-RO ro)" = 1 ] || bad "sysfs-ro=$(g BLK-RO ro)"
            case $(g BLK-RO write_rc) in ''|0) bad "write-accepted(rc=$(g BLK-RO write_rc))" ;; esac
            case $(g BLK-RO direct_write_rc) in ''|0) bad "direct-write-accepted(rc=$(g BLK-RO direct_write_rc))" ;; esac
            eq read "$(g BLK-RO read_sha256)" "$(f vdc_head_sha)"
            eq unchanged "$(f vdc_sha_after)" "$(f vdc_sha_before)"
            extra="err=$(g BLK-RO write_err)" ;;
        net-ping)
            [ -z "$(f net_error)" ] || bad "host:$(f net_error)"
            eq mac "$(g NET-PING mac)" "$GUEST_MAC"
            [ "$(g NET-PING tx)" = 3 ] && [ "$(g NET-PING rx)" = 3 ] ||
                bad "ping=$(g NET-PING rx)/$(g NET-PING tx)"
            extra="host_tap:$(f tap_packets)" ;;
        net-data)
            [ -z "$(f net_error)" ] || bad "host:$(f net_error)"
            [ -z "$(g NET-RX error)" ] || bad "rx:$(g NET-RX error)"
            eq rx "$(g NET-RX sha256)" "$(f blob_sha)"
            eq tx "$(f nettx_sha)" "$(g NET-TX sha256)"
            [ "$(g NET-TX rc)" = 0 ] || bad "nc-rc=$(g NET-TX rc)"
            extra="rx_bytes=$(g NET-RX bytes) tx_bytes=$(f nettx_bytes)" ;;
    esac
    if [ -z "$why" ]; then
        echo "E2E-RESULT $vv/$vc PASS marker_t=$_t rc=$_rc $extra"
    else
        echo "E2E-RESULT $vv/$vc FAIL marker_t=${_t:-none} rc=${_rc:-none} why=${why%,}"
    fi
}

# --- snapshot-restore (vireo only) ---------------------------------------------------------------
# The typed lines print their results in forms their own echo (the tty echoes typed input) cannot
# match: `ok$((1))` prints ok1, `$(date +%s)` prints digits. One line per phase: typeahead would
# be echoed into the output of the commands still running.
# shellcheck disable=SC2016 # expanded by the guest's shell
SNAP_PRE_LINE='mke2fs -F /dev/vda >/dev/null 2>&1; mkdir -p /mnt/d; mount -t ext4 /dev/vda /mnt/d && echo SNAP-DISK=ok$((1)); ip link set lo up; ip link set eth0 up; ip addr add 10.213.2.2/24 dev eth0; ping -c 1 -W 5 10.213.2.1 >/dev/null 2>&1 && echo SNAP-NET=ok$((1)); head -c 12 /dev/urandom | od -An -tx1 | tr -d " \n" >/mnt/d/token; sync; echo SNAP-FILE=$(cat /mnt/d/token); echo SNAP-CLOCK date=$(date +%s) up=$(cut -d" " -f1 /proc/uptime)'
# shellcheck disable=SC2016 # expanded by the guest's shell
SNAP_POST_LINE='echo RESTORED-$((6*7)); echo POST-CLOCK date=$(date +%s) up=$(cut -d" " -f1 /proc/uptime); sync; echo 3 >/proc/sys/vm/drop_caches; echo POST-FILE=$(cat /mnt/d/token); echo written-after-restore >/mnt/d/after && sync && echo POST-WRITE=ok$((1)); ping -c 3 -W 5 10.213.2.1; echo POST-DONE=$((2*3)); poweroff -f'

# snapshot_restore VMM: boot (shell) -> typed setup -> snapshot -> kill -9 -> restore -> typed checks
snapshot_restore() {
    sv=$1 sc=snapshot-restore
    if [ "$sv" != vireo ]; then
        echo "E2E-RESULT $sv/$sc SKIP why=not-applicable(vireo-only:snapshot/restore)"
        return 0
    fi
    W=$LOGDIR/$sv-snap.d
    rm -rf "$W"
    mkdir -p "$W"
    log1=$LOGDIR/$sv-$sc.log
    log2=$LOGDIR/$sv-$sc-restored.log
    : >"$log1"
    : >"$log2"
    why='' _t='' _rc='' boot_t='' pre_date='' pre_up='' post_date='' post_up='' prx='' ptx=''
    bad() { why="$why$1,"; }
    sfact() { echo "E2E-SNAP-FACT $sv $1=$2"; }
    # v1 PATTERN LOG: first match of sed PATTERN (with one group) in LOG
    v1() { sed -n "s/$1/\1/p" "$2" | head -1; }
    truncate -s $((32 * MiB)) "$W/disk.raw"
    devs="disk:path=$W/disk.raw"
    if tap_setup; then
        devs="$devs net:tap=$TAP,mac=$GUEST_MAC"
    else
        bad "host:$NET_ERR"
    fi
    # 1. boot at the shell and set it up (in the background: the host snapshots it meanwhile)
    t0=$(date +%s)
    (
        export VMM_PIDFILE="$W/pid" VIREO_EXTRA_ARGS="--api-socket $W/api1.sock"
        BOOT_DEVS=$devs BOOT_TIMEOUT=$((CASE_TIMEOUT * 3)) boot "$sv" "$sc" "$K_BZIMAGE" 1 shell \
            --type "$SNAP_PRE_LINE"
    ) &
    bpid=$!
    n=0
    while ! grep -q 'SNAP-CLOCK date=[0-9]' "$log1" && [ $n -lt $((CASE_TIMEOUT * 3)) ] &&
        kill -0 "$bpid" 2>/dev/null; do
        sleep 1
        n=$((n + 1))
    done
    boot_t=$(v1 '^L2-MARKER t=\([0-9.]*\).*' "$log1")
    pre_date=$(v1 '.*SNAP-CLOCK date=\([0-9][0-9]*\) .*' "$log1")
    pre_up=$(v1 '.*SNAP-CLOCK date=[0-9]* up=\([0-9.]*\).*' "$log1")
    token=$(v1 '.*SNAP-FILE=\([0-9a-f][0-9a-f]*\).*' "$log1")
    grep -q 'SNAP-DISK=ok1' "$log1" || bad "pre:disk-setup-failed"
    grep -q 'SNAP-NET=ok1' "$log1" || bad "pre:ping-failed"
    [ -n "$token" ] || bad "pre:no-token"
    sfact boot_marker_t "${boot_t:-none}"
    sfact setup_s $(($(date +%s) - t0))
    sfact pre_clock "date=${pre_date:-none}_uptime=${pre_up:-none}"
    sfact token "${token:-none}"
    snap_ok=0
    if [ -z "$pre_date" ]; then
        bad "pre:no-clock-line(last:$(grep -v '^L2-' "$log1" | tail -1 | cut -c1-120 | one))"
    else
        # 2. snapshot, then kill the VMM hard
        s0=$(cut -d' ' -f1 /proc/uptime)
        "${VIREO:-vireo}" remote --api-socket "$W/api1.sock" snapshot "$W/snap" >"$W/snap.out" 2>&1
        src=$?
        s1=$(cut -d' ' -f1 /proc/uptime)
        sfact snapshot_rc "$src"
        sfact snapshot_s "$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.2f", b - a }')"
        sfact snapshot_out "$(one <"$W/snap.out" | cut -c1-300)"
        sfact snapshot_files "$(cd "$W/snap" 2>/dev/null && for f in *; do
            printf '%s:%s/%sKiB ' "$f" "$(stat -c %s "$f")" "$(du -k "$f" | cut -f1)"; done | one)"
        if [ "$src" = 0 ] && [ -s "$W/snap/state.bin" ] && [ -f "$W/snap/memory.bin" ]; then
            snap_ok=1
        else
            bad "snapshot-failed(rc=$src)"
        fi
        # the snapshot must have left the VMM running (it pauses, saves, resumes)
        vpid=$(cat "$W/pid" 2>/dev/null)
        if [ -n "$vpid" ] && kill -0 "$vpid" 2>/dev/null; then
            kill -9 "$vpid"
            sfact killed "pid=$vpid"
        else
            bad "vmm-gone-before-kill"
        fi
    fi
    # no clock line (setup failed or timed out): do not wait for the boot's own timeout
    [ -z "$(cat "$W/pid" 2>/dev/null)" ] || kill -9 "$(cat "$W/pid")" 2>/dev/null
    wait "$bpid"
    sfact first_exit "$(v1 '^L2-EXIT rc=\([0-9]*\).*' "$log1")"
    # 3. restore under l2-watch and type at once (the restored guest prints nothing by itself)
    if [ "$snap_ok" = 1 ]; then
        l2-watch --type-now --type-delay 2 --marker RESTORED-42 --timeout $((CASE_TIMEOUT * 2)) \
            --log "$log2" --type "$SNAP_POST_LINE" -- \
            "${VIREO:-vireo}" restore --source "$W/snap" --api-socket "$W/api2.sock"
        _t=$(v1 '^L2-MARKER t=\([0-9.]*\).*' "$log2")
        _rc=$(sed -n 's/^L2-EXIT rc=\([0-9]*\).*/\1/p' "$log2" | tail -1)
        post_date=$(v1 '.*POST-CLOCK date=\([0-9][0-9]*\) .*' "$log2")
        post_up=$(v1 '.*POST-CLOCK date=[0-9]* up=\([0-9.]*\).*' "$log2")
        post_token=$(v1 '.*POST-FILE=\([0-9a-f][0-9a-f]*\).*' "$log2")
        ptx=$(v1 '^\([0-9][0-9]*\) packets transmitted.*' "$log2")
        prx=$(v1 '.* \([0-9][0-9]*\) packets received.*' "$log2")
        sfact restore_marker_t "${_t:-none}"
        sfact restore_exit "${_rc:-none}"
        sfact post_clock "date=${post_date:-none}_uptime=${post_up:-none}"
        sfact post_token "${post_token:-none}"
        sfact ping "${prx:-none}/${ptx:-none}"
        [ -n "$_t" ] || bad "no-answer-to-typed-command(last:$(grep -v '^L2-' "$log2" | tail -1 | cut -c1-120 | one))"
        if [ -z "$post_date" ]; then
            bad no-post-clock
        else
            [ "$post_date" -ge "$pre_date" ] || bad "date-went-back($pre_date->$post_date)"
            awk -v a="$pre_up" -v b="$post_up" 'BEGIN { exit !(b + 0 >= a + 0) }' ||
                bad "uptime-went-back($pre_up->$post_up)"
        fi
        [ -n "$token" ] && [ "$post_token" = "$token" ] || bad "file(${token:-none}!=${post_token:-none})"
        grep -q 'POST-WRITE=ok1' "$log2" || bad write-after-restore-failed
        [ "$ptx" = 3 ] && [ "$prx" = 3 ] || bad "ping=${prx:-none}/${ptx:-none}"
        grep -q 'POST-DONE=6' "$log2" || bad no-done-line
        case $_rc in 0) ;; 124|143) bad timeout ;; *) bad "rc=$_rc(want:0)" ;; esac
    fi
    tap_teardown
    sfact total_s $(($(date +%s) - t0))
    rm -rf "$W/snap" "$W/disk.raw"
    if [ -z "$why" ]; then
        echo "E2E-RESULT $sv/$sc PASS marker_t=$_t rc=$_rc boot_t=$boot_t" \
            "clock=$pre_date->$post_date uptime=$pre_up->$post_up ping=$prx/$ptx"
    else
        echo "E2E-RESULT $sv/$sc FAIL marker_t=${_t:-none} rc=${_rc:-none} why=${why%,}"
    fi
}

# --- live-migrate (vireo only) -------------------------------------------------------------------
# shellcheck disable=SC2016 # expanded by the guest's shell
MIG_PRE_LINE='mke2fs -F /dev/vda >/dev/null 2>&1; mkdir -p /mnt/d; mount -t ext4 /dev/vda /mnt/d && echo MIG-DISK=ok$((1)); head -c 8388608 /dev/urandom >/tmp/mem && dd if=/tmp/mem of=/mnt/d/data bs=1048576 count=4 2>/dev/null && sync && echo MIG-ROUND1=ok$((1)); (i=0; while :; do i=$((i+1)); head -c 8388608 /dev/urandom >/tmp/mem; dd if=/tmp/mem of=/mnt/d/data bs=1048576 count=4 2>/dev/null; sync; echo $i >/mnt/d/count; done) >/dev/null 2>&1 & echo $! >/tmp/writer; echo MIG-WRITER=$((40+2))'
# shellcheck disable=SC2016 # expanded by the guest's shell
MIG_POST_LINE='echo MIGRATED-$((6*7)); c=$(cat /mnt/d/count); n=0; while [ "$(cat /mnt/d/count)" = "$c" ] && [ $n -lt 60 ]; do sleep 1; n=$((n+1)); done; echo MIG-ROUNDS-ON-ARRIVAL=$c; echo MIG-ROUNDS-LATER=$(cat /mnt/d/count); kill $(cat /tmp/writer); sleep 2; sync; umount /mnt/d && echo MIG-UMOUNT=ok$((1)); poweroff -f'

# live_migrate VMM: boot (shell) -> typed writer -> send-migration to vireo receive -> typed checks
live_migrate() {
    mv=$1 mc=live-migrate
    if [ "$mv" != vireo ]; then
        echo "E2E-RESULT $mv/$mc SKIP why=not-applicable(vireo-only:live-migration)"
        return 0
    fi
    W=$LOGDIR/$mv-mig.d
    rm -rf "$W"
    mkdir -p "$W"
    log1=$LOGDIR/$mv-$mc.log
    log2=$LOGDIR/$mv-$mc-target.log
    : >"$log1"
    : >"$log2"
    why='' _t='' _rc='' src_rc=''
    bad() { why="$why$1,"; }
    mfact() { echo "E2E-MIG-FACT $mv $1=$2"; }
    v1() { sed -n "s/$1/\1/p" "$2" | head -1; }
    truncate -s $((32 * MiB)) "$W/disk.raw"
    t0=$(date +%s)
    # 1. boot at the shell and start the writer (in the background: the host migrates it)
    (
        export VIREO_EXTRA_ARGS="--api-socket $W/api1.sock"
        BOOT_DEVS="disk:path=$W/disk.raw" BOOT_TIMEOUT=$((CASE_TIMEOUT * 4)) \
            boot "$mv" "$mc" "$K_BZIMAGE" 1 shell --type "$MIG_PRE_LINE"
    ) &
    bpid=$!
    n=0
    while ! grep -q 'MIG-WRITER=42' "$log1" && [ $n -lt $((CASE_TIMEOUT * 3)) ] &&
        kill -0 "$bpid" 2>/dev/null; do
        sleep 1
        n=$((n + 1))
    done
    grep -q 'MIG-DISK=ok1' "$log1" || bad "pre:disk-setup-failed"
    grep -q 'MIG-ROUND1=ok1' "$log1" || bad "pre:first-write-round-failed"
    sent=0
    if grep -q 'MIG-WRITER=42' "$log1"; then
        sleep 5 # a few rounds of writing, then move it while it writes
        # 2. the target: types its line once it runs the guest (the marker is its own log line)
        l2-watch --marker 'the guest runs here' --type-delay 2 --timeout $((CASE_TIMEOUT * 3)) \
            --log "$log2" --type "$MIG_POST_LINE" -- \
            "${VIREO:-vireo}" receive --listen "unix:$W/mig.sock" --api-socket "$W/api2.sock" &
        tpid=$!
        n=0
        while [ ! -S "$W/mig.sock" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
        m0=$(cut -d' ' -f1 /proc/uptime)
        "${VIREO:-vireo}" remote --api-socket "$W/api1.sock" send-migration "unix:$W/mig.sock" \
            >"$W/send.out" 2>&1
        mrc=$?
        m1=$(cut -d' ' -f1 /proc/uptime)
        mfact send_rc "$mrc"
        mfact send_s "$(awk -v a="$m0" -v b="$m1" 'BEGIN { printf "%.2f", b - a }')"
        mfact answer "$(one <"$W/send.out" | cut -c1-400)"
        if [ "$mrc" = 0 ] && grep -q '"phase":"completed"' "$W/send.out"; then
            sent=1
            mfact downtime_ms "$(sed -n 's/.*"downtime_ms":\([0-9.]*\).*/\1/p' "$W/send.out")"
            mfact total_ms "$(sed -n 's/.*"total_ms":\([0-9.]*\).*/\1/p' "$W/send.out")"
            mfact passes "$(sed -n 's/.*"pass":\([0-9]*\).*/\1/p' "$W/send.out")"
        else
            bad "send-migration-failed(rc=$mrc)"
            kill "$tpid" 2>/dev/null
        fi
        wait "$tpid"
    else
        bad "pre:no-writer(last:$(grep -v '^L2-' "$log1" | tail -1 | cut -c1-120 | one))"
    fi
    wait "$bpid"
    src_rc=$(sed -n 's/^L2-EXIT rc=\([0-9]*\).*/\1/p' "$log1" | tail -1)
    mfact source_exit "${src_rc:-none}"
    if [ "$sent" = 1 ]; then
        [ "$src_rc" = 10 ] || bad "source-rc=${src_rc:-none}(want:10)"
        _t=$(v1 '^L2-MARKER t=\([0-9.]*\).*' "$log2")
        _rc=$(sed -n 's/^L2-EXIT rc=\([0-9]*\).*/\1/p' "$log2" | tail -1)
        arrival=$(v1 '.*MIG-ROUNDS-ON-ARRIVAL=\([0-9][0-9]*\).*' "$log2")
        later=$(v1 '.*MIG-ROUNDS-LATER=\([0-9][0-9]*\).*' "$log2")
        mfact rounds "${arrival:-none}->${later:-none}"
        grep -q 'MIGRATED-42' "$log2" || bad "no-answer-on-target(last:$(grep -v '^L2-' "$log2" | tail -1 | cut -c1-120 | one))"
        # the writer started at the source goes on at the target
        [ -n "$arrival" ] && [ -n "$later" ] && [ "$later" -gt "$arrival" ] ||
            bad "writer-stopped(${arrival:-none}->${later:-none})"
        grep -q 'MIG-UMOUNT=ok1' "$log2" || bad umount-failed
        case $_rc in 0) ;; 124|143) bad target-timeout ;; *) bad "target-rc=$_rc(want:0)" ;; esac
        if fsck=$(e2fsck -fn "$W/disk.raw" 2>&1); then
            mfact e2fsck clean
        else
            bad "e2fsck($(echo "$fsck" | tail -2 | one | cut -c1-160))"
        fi
    fi
    mfact total_s $(($(date +%s) - t0))
    rm -rf "$W/disk.raw"
    if [ -z "$why" ]; then
        echo "E2E-RESULT $mv/$mc PASS marker_t=$_t rc=$_rc source_rc=$src_rc"
    else
        echo "E2E-RESULT $mv/$mc FAIL marker_t=${_t:-none} rc=${_rc:-none} why=${why%,}"
    fi
}

# --- vnc-console (vireo only) --------------------------------------------------------------------
# The viewer is outside (run.sh, on the host): this side boots the guest with a VNC console,
# announces `E2E-VNC-WAIT ready=yes port=P size=WxH` once the pattern is on the screen, then
# waits for what the viewer types on the guest's keyboard to show up on the serial console.
vnc_console() {
    nv=$1 nc=vnc-console
    if [ "$nv" != vireo ]; then
        echo "E2E-RESULT $nv/$nc SKIP why=not-applicable(vireo-only:vnc-console)"
        return 0
    fi
    W=$LOGDIR/$nv-vnc.d
    rm -rf "$W"
    mkdir -p "$W"
    log=$LOGDIR/$nv-$nc.log
    : >"$log"
    why='' _rc=''
    bad() { why="$why$1,"; }
    nfact() { echo "E2E-VNC-FACT $1=$2"; }
    up() { cut -d' ' -f1 /proc/uptime; }
    since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.1f", b - a }'; }
    u0=$(up)
    # l2-watch: the marker is the viewer's typed line; 10 s later (time for the second typed
    # line) `poweroff -f` goes to the serial shell
    (
        export VMM_PIDFILE="$W/pid"
        export VIREO_EXTRA_ARGS="--vnc ${VNC_ADDR:-0.0.0.0}:${VNC_PORT:-5900} --vnc-size 1024x768"
        BOOT_CMDLINE="console=tty0 consoleblank=0" \
            BOOT_TIMEOUT=$((CASE_TIMEOUT * 2 + ${VNC_WAIT:-180} + 20)) \
            boot "$nv" "$nc" "$K_BZIMAGE" 1 vnc --marker TYPED-42 --type-delay 10 --type 'poweroff -f'
    ) &
    bpid=$!
    n=0
    while ! grep -q 'VIREO-VNC-READY' "$log" && [ $n -lt $((CASE_TIMEOUT * 2)) ] &&
        kill -0 "$bpid" 2>/dev/null; do
        sleep 1
        n=$((n + 1))
    done
    size=$(sed -n 's/^VIREO-FB-INFO .* size=\([0-9]*x[0-9]*\) .*/\1/p' "$log" | head -1)
    if grep -q 'VIREO-VNC-READY' "$log"; then
        nfact ready_s "$(since "$u0")"
        echo "E2E-VNC-WAIT ready=yes port=${VNC_PORT:-5900} size=${size:-none}"
        n=0
        while ! grep -q 'TYPED-42' "$log" && [ $n -lt "${VNC_WAIT:-180}" ] &&
            kill -0 "$bpid" 2>/dev/null; do
            sleep 1
            n=$((n + 1))
        done
        if grep -q 'TYPED-42' "$log"; then
            nfact typed_s "$(since "$u0")"
        else
            bad "no-TYPED-42-on-serial(viewer-typing-did-not-arrive)"
        fi
    else
        echo "E2E-VNC-WAIT ready=no"
        bad "no-VIREO-VNC-READY(last:$(grep -v '^L2-' "$log" | tail -1 | cut -c1-120 | one))"
    fi
    if ! grep -q 'TYPED-42' "$log"; then # nothing will power it off
        [ -z "$(cat "$W/pid" 2>/dev/null)" ] || kill -9 "$(cat "$W/pid")" 2>/dev/null
    fi
    wait "$bpid"
    _rc=$(sed -n 's/^L2-EXIT rc=\([0-9]*\).*/\1/p' "$log" | tail -1)
    nfact total_s "$(since "$u0")"
    nfact fb_info "$(sed -n 's/^VIREO-FB-INFO \(.*\) t=.*/\1/p' "$log" | head -1 | tr ' ' ,)"
    nfact fb_drawn "$(sed -n 's/^VIREO-FB-DRAWN \(.*\) t=.*/\1/p; s/^VIREO-FB-ERROR \(.*\) t=.*/error:\1/p' "$log" | head -1 | tr ' ' ,)"
    nfact tty1_shell "$(sed -n 's/^VIREO-TTY1-SHELL \(.*\) t=.*/\1/p' "$log" | head -1 | tr ' ' ,)"
    nfact inputs "$(sed -n 's/^VIREO-INPUT name=//p' "$log" | tr '\n' ',' | sed 's/,$//')"
    grep '^VIREO-DMESG ' "$log" | grep -iE 'efifb|i8042|atkbd|Console: switching|serio' |
        sed 's/^VIREO-DMESG /E2E-VNC-FACT dmesg: /'
    grep -q 'VIREO-FB-DRAWN rc=0 ' "$log" || bad "pattern-not-drawn"
    grep -q 'efifb: framebuffer at 0xd0000000' "$log" || bad "no-efifb-at-0xd0000000"
    grep -qi 'i8042' "$log" || bad "no-i8042-lines"
    grep -q 'VIREO-KBD=yes' "$log" || bad "no-AT-keyboard"
    grep -q 'VIREO-INPUT name=Vireo_Tablet' "$log" || bad "no-Vireo-Tablet-input-device"
    case $_rc in 0) ;; 124|143) bad timeout ;; *) bad "rc=${_rc:-none}(want:0)" ;; esac
    if [ -z "$why" ]; then
        echo "E2E-RESULT $nv/$nc PASS rc=$_rc size=$size"
    else
        echo "E2E-RESULT $nv/$nc FAIL rc=${_rc:-none} why=${why%,}"
    fi
    # the viewer's second line, typed with Shift pressed around shifted keysyms
    if grep -q 'SHIFTED-48' "$log"; then
        echo "E2E-RESULT $nv/vnc-shift-keys PASS typed=SHIFTED-48"
    else
        echo "E2E-RESULT $nv/vnc-shift-keys FAIL why=no-SHIFTED-48-on-serial"
    fi
    rm -rf "$W"
}

run_case() { # run_case VMM CASE
    v=$1 c=$2
    echo "E2E-CASE-BEGIN $v/$c"
    reboot_rc=3
    [ "$v" = qemu ] && reboot_rc=0
    case $c in
        bzimage-1cpu) boot "$v" "$c" "$K_BZIMAGE" 1 cpus; check "$v" "$c" 0 'VIREO-CPUS=1$' ;;
        bzimage-2cpu) boot "$v" "$c" "$K_BZIMAGE" 2 cpus; check "$v" "$c" 0 'VIREO-CPUS=2$' ;;
        pvh-1cpu)     boot "$v" "$c" "$K_PVH" 1 cpus; check "$v" "$c" 0 'VIREO-CPUS=1$' ;;
        pvh-2cpu)     boot "$v" "$c" "$K_PVH" 2 cpus; check "$v" "$c" 0 'VIREO-CPUS=2$' ;;
        serial-input)
            boot "$v" "$c" "$K_BZIMAGE" 1 shell --type 'echo TYPED-$((6*7))' --type 'poweroff -f'
            check "$v" "$c" 0 'TYPED-42' ;;
        poweroff)     boot "$v" "$c" "$K_BZIMAGE" 1 poweroff; check "$v" "$c" 0 ;;
        reboot)       boot "$v" "$c" "$K_BZIMAGE" 1 reboot; check "$v" "$c" "$reboot_rc" ;;
        sigterm-timeout)
            export VIREO_EXTRA_ARGS="--shutdown-timeout 3"
            boot "$v" "$c" "$K_BZIMAGE" 1 shell --signal-after TERM:2
            unset VIREO_EXTRA_ARGS
            if [ "$v" = vireo ]; then
                check "$v" "$c" 8 'L2-SIGNAL sig=TERM' 'asked the guest to power off' \
                    'did not power off in time'
            else
                check "$v" "$c" 0 'L2-SIGNAL sig=TERM'
            fi ;;
        blk-*|net-*)  virtio_boot "$v"; virtio_check "$v" "$c" ;;
        snapshot-restore) snapshot_restore "$v" ;;
        live-migrate) live_migrate "$v" ;;
        vnc-console) vnc_console "$v" ;;
        *) echo "E2E-RESULT $v/$c FAIL why=unknown-case" ;;
    esac
    echo "E2E-CASE-END $v/$c"
}

[ -c /dev/kvm ] || echo "cases.sh: warning: no /dev/kvm"
for v in ${E2E_VMMS:-vireo}; do
    for c in ${E2E_CASES-$ALL_CASES}; do
        run_case "$v" "$c"
    done
done

median() { # median of the numeric arguments ("none" ignored)
    for x in "$@"; do [ "$x" = none ] || echo "$x"; done | sort -n | awk '{ a[NR] = $1 } END {
        if (NR == 0) print "none"; else if (NR % 2) print a[(NR + 1) / 2];
        else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
n=${BENCH_N:-0}
if [ "$n" -gt 0 ]; then
    bcpus=${BENCH_CPUS:-1}
    for v in ${E2E_VMMS:-vireo}; do
        times=
        ups=
        i=1
        while [ $i -le "$n" ]; do
            echo "E2E-BENCH-RUN vmm=$v run=$i"
            boot "$v" "bench-$i" "$K_BZIMAGE" "$bcpus" cpus
            t=$(sed -n 's/^L2-MARKER t=\([0-9.]*\).*/\1/p' "$LOGDIR/$v-bench-$i.log" | head -1)
            times="$times ${t:-none}"
            u=$(sed -n 's/^VIREO-GUEST-READY.* uptime=\([0-9.]*\).*/\1/p' "$LOGDIR/$v-bench-$i.log" | head -1)
            ups="$ups ${u:-none}"
            i=$((i + 1))
        done
        cnt=$(for t in $times; do [ "$t" = none ] || echo "$t"; done | grep -c .)
        echo "E2E-BENCH vmm=$v kernel=bzImage cpus=$bcpus n=$n ok=$cnt times=$(echo $times | tr ' ' ,)" \
            "median=$(median $times) guest_uptime_median=$(median $ups)"
    done
fi
exit 0
