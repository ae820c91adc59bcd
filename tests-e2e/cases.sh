#!/bin/sh
# Issue-3 end-to-end cases: boot Debian's cloud kernel under a VMM and check what the guest says.
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
ALL_CASES="bzimage-1cpu bzimage-2cpu pvh-1cpu pvh-2cpu serial-input poweroff reboot"

if [ "${1:-}" = --exec-vmm ]; then
    # --exec-vmm VMM KERNEL CPUS CMDLINE: replace this shell with the VMM.
    vmm=$2 kernel=$3 cpus=$4 cmdline=$5
    case $vmm in
        vireo)
            exec "${VIREO:-vireo}" run --kernel "$kernel" --initramfs "$INITRD" --cmdline "$cmdline" \
                --cpus "$cpus" --memory 512M --serial stdio ;;
        qemu)
            exec "${QEMU:-qemu-system-x86_64}" -enable-kvm -cpu host -M q35 -smp "$cpus" -m 512 \
                -nodefaults -no-user-config -display none -serial stdio -no-reboot \
                -kernel "$kernel" -initrd "$INITRD" -append "$cmdline" ;;
        *) echo "cases.sh: unknown VMM $vmm" >&2; exit 127 ;;
    esac
    exit 127
fi

self=$0
LOGDIR=${E2E_LOGDIR:-/tmp/e2e-logs}
mkdir -p "$LOGDIR"
CASE_TIMEOUT=${CASE_TIMEOUT:-90}

# boot VMM NAME KERNEL CPUS SCENARIO [--type LINE]...: run once, log to $LOGDIR/VMM-NAME.log
boot() {
    _vmm=$1 _name=$2 _kernel=$3 _cpus=$4 _scen=$5
    shift 5
    _log=$LOGDIR/$_vmm-$_name.log
    : >"$_log"
    l2-watch --timeout "$CASE_TIMEOUT" --log "$_log" "$@" -- \
        sh "$self" --exec-vmm "$_vmm" "$_kernel" "$_cpus" "console=ttyS0 quiet vireo.scenario=$_scen"
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
