#!/usr/bin/env bash
# End-to-end tests for issues 3 and 5: boot Debian's cloud kernel under `vireo run` (bzImage and
# PVH vmlinux, 1 and 2 vCPUs, serial input, poweroff, reboot; virtio disks: raw, qcow2 overlay,
# fstrim, read-only; virtio-net on a tap). See tests-e2e/cases.sh for the cases.
#
# Usage:
#   tests-e2e/run.sh [--vireo PATH] [--vmm vireo|qemu|both] [--cases "a b ..."] [--bench N]
#                    [--bench-cpus N] [--case-timeout S] [--nested|--direct] [--log FILE]
#
#   --vireo PATH      vireo binary (default: $VIREO, else target/release/vireo, else target/debug/vireo)
#   --vmm KIND        vireo (default), qemu (Debian's qemu-system-x86_64 with KVM: validates the
#                     harness and the guest assets), or both (side by side in the same L1 boot)
#   --cases LIST      subset of: bzimage-1cpu bzimage-2cpu pvh-1cpu pvh-2cpu serial-input poweroff reboot
#                     sigterm-timeout
#                     blk-fs blk-trim blk-qcow2 blk-qcow2-discard blk-readonly net-ping net-data
#                     snapshot-restore live-migrate vnc-console
#                     (the blk-*/net-* cases share one guest boot per VMM; they need qemu-img,
#                     debugfs and e2fsck on the host, and root for the tap; snapshot-restore needs
#                     root for the tap and is vireo only: for QEMU it is reported as SKIP, as is
#                     live-migrate, which needs e2fsck on the host; vnc-console is vireo only
#                     too and needs vncdo on the host: pip install vncdotool)
#   --bench N         also boot N times per VMM (scenario cpus, bzImage) and print the median
#                     launch -> marker time (the issue's comparison figure; use --vmm both)
#   --bench-cpus N    vCPUs for the benchmark boots (default 1)
#   --case-timeout S  per-boot timeout in seconds (default 60)
#   --nested/--direct force the path (default: direct if /dev/kvm is hardware KVM, i.e. it exists
#                     and /sys/module/kvm_pvm does not; otherwise nested, inside an L1 VM under
#                     QEMU TCG with emulated SVM: scripts/nested/run-l1.sh)
#   --log FILE        keep the full console log (default: a temp file, path printed at the end)
#
# vnc-console: the guest (scenario vnc) shows a test pattern on vireo's VNC console and has a
# shell on tty1. This script is the viewer, a real VNC client (vncdotool's `vncdo`) on the host:
# on the nested path it gives L1 a NIC with a forwarded port (run-l1.sh --hostfwd FREEPORT:5900;
# vireo listens on 0.0.0.0:5900 in L1), on the direct path vireo listens on 127.0.0.1:FREEPORT.
# When the log shows `E2E-VNC-WAIT ready=yes`, it takes two captures at once (two clients) and
# compares both with the pattern pixel for pixel (scripts/guest/fb-pattern.py check; once more
# after 3 s if that fails): result vireo/vnc-capture. Then one vncdo run types
#   `echo TYPED-$((6*7)) >/dev/ttyS0` + Enter with `vncdo type`, which sends each character's
#       keysym alone (no Shift: 'T' is 0x54, '$' 0x24, '(' 0x28, '*' 0x2a, '>' 0x3e), and
#   `echo SHIFTED-$((6*8)) >/dev/ttyS0` + Enter as `key shift-X` for the shifted characters
#       (Shift_L 0xffe1 down, the shifted keysym, both up: what --force-caps and most viewers do)
# and cases.sh judges what reached the serial console: vireo/vnc-console (TYPED-42 + the guest's
# framebuffer and keyboard facts) and vireo/vnc-shift-keys (SHIFTED-48). Captures are kept as
# LOG-vnc-a.png and LOG-vnc-b.png next to the log, with LOG-vnc-typed.png (taken after the typing,
# not judged).
#
# The last line is `N passed, N failed` (`, N skipped` added when a case does not apply to a VMM,
# e.g. qemu/snapshot-restore); exit status 0 iff nothing failed (a case with no result,
# e.g. because L1 timed out, counts as failed).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

vireo=${VIREO:-}
vmm=vireo
cases="bzimage-1cpu bzimage-2cpu pvh-1cpu pvh-2cpu serial-input poweroff reboot sigterm-timeout"
cases+=" blk-fs blk-trim blk-qcow2 blk-qcow2-discard blk-readonly net-ping net-data"
cases+=" snapshot-restore live-migrate vnc-console"
bench=0
bench_cpus=1
case_timeout=60
path=
logfile=
while [ $# -gt 0 ]; do
    case $1 in
        --vireo) vireo=$2; shift 2 ;;
        --vmm) vmm=$2; shift 2 ;;
        --cases) cases=$2; shift 2 ;;
        --bench) bench=$2; shift 2 ;;
        --bench-cpus) bench_cpus=$2; shift 2 ;;
        --case-timeout) case_timeout=$2; shift 2 ;;
        --nested) path=nested; shift ;;
        --direct) path=direct; shift ;;
        --log) logfile=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $vmm in
    vireo) vmms=vireo ;;
    qemu) vmms=qemu ;;
    both) vmms="vireo qemu" ;;
    *) echo "run.sh: --vmm must be vireo, qemu or both" >&2; exit 2 ;;
esac

fail_all() { # nothing could run: report every case as failed
    echo "e2e: error: $*"
    local n=0
    for v in $vmms; do for c in $cases; do echo "FAIL $v/$c ($*)"; n=$((n + 1)); done; done
    echo "0 passed, $n failed"
    exit 1
}

if [[ " $vmms " == *" vireo "* ]]; then
    if [ -z "$vireo" ]; then
        for cand in "$repo/target/release/vireo" "$repo/target/debug/vireo"; do
            if [ -x "$cand" ]; then vireo=$cand; break; fi
        done
    fi
    [ -n "$vireo" ] && [ -x "$vireo" ] || fail_all "no vireo binary (build it: cargo build --release -p vireo-launcher, or pass --vireo PATH)"
    vireo=$(readlink -f "$vireo")
fi

# --- path selection (never silent) ---------------------------------------------------------------
if [ -z "$path" ]; then
    if [ -c /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ]; then
        path=direct
    else
        path=nested
    fi
fi
if [ "$path" = direct ]; then
    echo "e2e: path: DIRECT (hardware KVM at /dev/kvm)"
else
    why="no /dev/kvm"
    [ -e /sys/module/kvm_pvm ] && why="/dev/kvm is kvm_pvm (cannot run a stock kernel at speed)"
    echo "e2e: path: NESTED ($why): VMMs run inside an L1 VM under QEMU TCG with emulated AMD SVM"
fi
bench_desc=
[ "$bench" = 0 ] || bench_desc="; bench: $bench boots x $bench_cpus vCPU"
echo "e2e: VMMs: $vmms${vireo:+ (vireo = $vireo)}; cases: $cases$bench_desc"

# --- assets -------------------------------------------------------------------------------------
"$repo/scripts/guest/build-assets.sh" >/dev/null || fail_all "scripts/guest/build-assets.sh failed"
# shellcheck disable=SC1091
. "${VIREO_CACHE:-$HOME/.cache/vireo}/guest/assets.env"

work=$(mktemp -d "${TMPDIR:-/tmp}/vireo-e2e.XXXXXX")
trap 'rm -rf "$work"' EXIT
[ -n "$logfile" ] || logfile=$(mktemp "${TMPDIR:-/tmp}/vireo-e2e-log.XXXXXX")
: >"$logfile"
ncases=$(( $(wc -w <<<"$cases") * $(wc -w <<<"$vmms") + bench * $(wc -w <<<"$vmms") ))
# snapshot-restore boots twice (up to 3 + 2 case timeouts): count it as 4 more cases
[[ " $cases " != *" snapshot-restore "* ]] || ncases=$((ncases + 4))
# live-migrate runs two VMMs, up to 4 + 3 case timeouts: count it as 6 more cases
[[ " $cases " != *" live-migrate "* ]] || ncases=$((ncases + 6))
# vnc-console: boot (2 case timeouts) + up to 180 s for the viewer: count it as 4 more cases
vnc=0
if [[ " $cases " == *" vnc-console "* ]] && [[ " $vmms " == *" vireo "* ]]; then
    vnc=1
    ncases=$((ncases + 4))
    # a free TCP port on the host (the nested path forwards it to L1's 5900)
    vnc_host_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
        fail_all "python3 could not pick a free port"
    vnc_l2_port=5900
    [ "$path" = nested ] || vnc_l2_port=$vnc_host_port
fi

# vnc_viewer: the VNC client side of vnc-console (see the header); result lines go to
# $work/host.log (merged into the log at the end) and stdout.
vnc_viewer() {
    local port=$vnc_host_port hl=$work/host.log line size w h a b i out ok=0 try t0 t1 rc
    local pat=$repo/scripts/guest/fb-pattern.py shots=${logfile}-vnc
    vres() { echo "E2E-RESULT vireo/vnc-capture $*" | tee -a "$hl"; }
    vfact() { echo "E2E-VNC-HOST-FACT $*" | tee -a "$hl"; }
    while ! grep -q '^E2E-VNC-WAIT' "$logfile" 2>/dev/null; do
        kill -0 "$run_pid" 2>/dev/null || { vres "FAIL why=run-ended-before-E2E-VNC-WAIT"; return; }
        sleep 0.5
    done
    line=$(grep -m1 '^E2E-VNC-WAIT' "$logfile")
    if [[ $line != *ready=yes* ]]; then
        vres "FAIL why=guest-not-ready($line)"
        return
    fi
    command -v vncdo >/dev/null || { vres "FAIL why=no-vncdo(pip-install-vncdotool)"; return; }
    size=$(sed -n 's/.* size=\([0-9]*x[0-9]*\).*/\1/p' <<<"$line")
    w=${size%x*} h=${size#*x}
    [ -n "$size" ] || { w=1024 h=768; }
    a=$shots-a.png b=$shots-b.png
    for try in 1 2; do
        rm -f "$a" "$b"
        t0=$(date +%s.%N)
        # two viewers at once
        timeout 120 vncdo --nocursor -t 100 -s "127.0.0.1::$port" capture "$a" >"$work/vnc-a.out" 2>&1 &
        i=$!
        timeout 120 vncdo --nocursor -t 100 -s "127.0.0.1::$port" capture "$b" >"$work/vnc-b.out" 2>&1
        rc=$?
        wait "$i"
        rc="$?,$rc"
        t1=$(date +%s.%N)
        out=$(python3 "$pat" check "$w" "$h" "$a" "$b" 2>&1) && ok=1
        vfact "capture try=$try vncdo_rc=$rc secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')" \
            "check=$(tr '\n' ';' <<<"$out" | sed "s|$shots-||g")"
        [ "$ok" = 0 ] || break
        sleep 3
    done
    if [ "$ok" = 1 ]; then
        vres "PASS size=${w}x$h clients=2 try=$try"
    else
        vres "FAIL size=${w}x$h why=$(tr '\n' ';' <<<"$out" | sed "s|$shots-||g; s/ /_/g")"
    fi
    # typing: the plain line (keysyms alone), then the one with Shift pressed by the viewer
    # shellcheck disable=SC2016 # the guest's shell expands it
    local plain='echo TYPED-$((6*7)) >/dev/ttyS0' shifted='echo SHIFTED-$((6*8)) >/dev/ttyS0' c
    local keys=()
    for ((i = 0; i < ${#shifted}; i++)); do
        c=${shifted:i:1}
        case $c in
            [[:upper:]] | [\~\!@\#\$%^\&\*\(\)_+{}\|:\"\<\>?]) keys+=(key "shift-$c") ;;
            -) keys+=(key minus) ;; # a bare `-` would split vncdo's key name
            *) keys+=(key "$c") ;;
        esac
    done
    t0=$(date +%s.%N)
    timeout 150 vncdo --delay 50 -t 140 -s "127.0.0.1::$port" type "$plain" key enter \
        "${keys[@]}" key enter >"$work/vnc-type.out" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    vfact "type rc=$rc secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')" \
        "out=$(tr '\n' ' ' <"$work/vnc-type.out" | cut -c1-200 | tr ' ' _)"
    # for the record (not judged): the screen with the typed lines, before the guest powers off
    timeout 40 vncdo --nocursor -t 30 -s "127.0.0.1::$port" pause 1 capture "$shots-typed.png" \
        >/dev/null 2>&1
    vfact "typed_capture rc=$? file=$(basename "$shots")-typed.png"
}

start=$(date +%s)
set +e
run_tests() {
if [ "$path" = direct ]; then
    command -v qemu-system-x86_64 >/dev/null || [[ " $vmms " != *" qemu "* ]] ||
        fail_all "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
    (
        export PATH="$repo/scripts/nested:$PATH:/usr/sbin:/sbin"
        export E2E_VMMS="$vmms" E2E_CASES="$cases" CASE_TIMEOUT="$case_timeout"
        export BENCH_N="$bench" BENCH_CPUS="$bench_cpus" E2E_LOGDIR="$work/logs"
        export VIREO="$vireo" QEMU=qemu-system-x86_64 VNC_PORT="${vnc_l2_port:-5900}" VNC_ADDR=127.0.0.1
        export K_BZIMAGE="$VIREO_GUEST_VMLINUZ" K_PVH="$VIREO_GUEST_VMLINUX" INITRD="$VIREO_GUEST_INITRAMFS"
        sh "$here/cases.sh"
    ) 2>&1 | tee "$logfile"
else
    cat >"$work/l1.sh" <<EOF
export E2E_VMMS="$vmms" E2E_CASES="$cases" CASE_TIMEOUT="$case_timeout"
export BENCH_N="$bench" BENCH_CPUS="$bench_cpus" E2E_LOGDIR=/tmp/e2e-logs
export VIREO=/usr/bin/vireo QEMU=/usr/bin/qemu-system-x86_64 VNC_PORT=${vnc_l2_port:-5900}
export K_BZIMAGE=/l2/vmlinuz K_PVH=/l2/vmlinux INITRD=/l2/initramfs.cpio.gz
sh /l2/cases.sh
EOF
    args=(--l2-kernel "$VIREO_GUEST_VMLINUZ" --l2-initramfs "$VIREO_GUEST_INITRAMFS"
        --file "$VIREO_GUEST_VMLINUX:/l2/vmlinux" --file "$here/cases.sh:/l2/cases.sh"
        --timeout $((120 + ncases * (case_timeout + 15))) --script "$work/l1.sh")
    [[ " $vmms " != *" vireo "* ]] || args+=(--bin "$vireo:/usr/bin/vireo")
    if [[ " $cases " =~ \ (blk|net)- ]] || [[ " $cases " == *" live-migrate "* ]]; then
        # host-side tools of the virtio cases, inside L1 (where the images are)
        for t in qemu-img debugfs e2fsck; do
            tp=$(PATH="$PATH:/usr/sbin:/sbin" command -v "$t") || fail_all "$t not installed (apt-get install qemu-utils e2fsprogs)"
            args+=(--bin "$tp:/usr/bin/$t")
        done
    fi
    [[ " $vmms " != *" qemu "* ]] || args+=(--with-qemu)
    [ "$vnc" = 0 ] || args+=(--hostfwd "$vnc_host_port:$vnc_l2_port")
    "$repo/scripts/nested/run-l1.sh" "${args[@]}" 2>&1 | tee "$logfile"
fi
}
if [ "$vnc" = 1 ]; then
    run_tests &
    run_pid=$!
    vnc_viewer
    wait "$run_pid"
    cat "$work/host.log" >>"$logfile" 2>/dev/null
else
    run_tests
fi
set -e
elapsed=$(( $(date +%s) - start ))

# --- summary ------------------------------------------------------------------------------------
echo
echo "e2e: summary ($path path, ${elapsed}s, log: $logfile)"
grep -E '^NESTED-TIMING|^E2E-BENCH ' "$logfile" | sed 's/^/  /' || true
pass=0
fail=0
skip=0
for v in $vmms; do
    vcases=$cases
    # vnc-console's other results: the host's capture check, the typing with Shift
    [ "$v" != vireo ] || [ "$vnc" = 0 ] || vcases="$cases vnc-capture vnc-shift-keys"
    for c in $vcases; do
        line=$(grep -E "^E2E-RESULT $v/$c " "$logfile" | tail -1 || true)
        if [ -z "$line" ]; then
            echo "FAIL $v/$c (no result: VMM run or L1 did not finish)"
            fail=$((fail + 1))
        elif [[ $line == *" PASS"* ]]; then
            echo "PASS $v/$c ${line#* PASS }"
            pass=$((pass + 1))
        elif [[ $line == *" SKIP"* ]]; then
            echo "SKIP $v/$c ${line#* SKIP }"
            skip=$((skip + 1))
        else
            echo "FAIL $v/$c ${line#* FAIL }"
            fail=$((fail + 1))
        fi
    done
done
skipped=
[ "$skip" = 0 ] || skipped=", $skip skipped"
echo "$pass passed, $fail failed$skipped"
[ "$fail" = 0 ]
