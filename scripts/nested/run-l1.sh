#!/usr/bin/env bash
# Run a command inside an L1 VM that has /dev/kvm (nested SVM emulated by QEMU TCG).
#
# For hosts whose /dev/kvm cannot run a stock Linux kernel at speed (this workplace: kvm_pvm).
# L1 = Debian's cloud kernel (from scripts/guest/build-assets.sh) under
#   qemu-system-x86_64 -accel tcg -cpu max,-xsave -smp 1 -m 2048
# with an initramfs of busybox + kvm/kvm_amd + tun + virtio_net + the binaries you pass (plus the glibc libraries
# `ldd` lists) + the L2 kernel/initramfs. L1's /init loads kvm_amd (nested=1), checks /dev/kvm,
# runs your command, prints `NESTED-RESULT rc=<exit status>` and powers off. L1's serial console
# is streamed to stdout.
#
# Usage:
#   scripts/nested/run-l1.sh [options] -- COMMAND [ARGS...]
#   scripts/nested/run-l1.sh [options] --script FILE
# Options:
#   --vmm PATH              put the binary at /usr/bin/<basename> in L1 (+ its ldd libraries)
#   --bin PATH[:DEST]       same, any binary, optional destination path (repeatable)
#   --l2-kernel PATH        put at /l2/<basename>; $L2_KERNEL in L1 points to it
#   --l2-initramfs PATH     put at /l2/<basename>; $L2_INITRAMFS in L1 points to it
#   --file SRC:DEST         copy a file or directory into L1 (repeatable)
#   --with-qemu             put Debian's qemu-system-x86_64 and the firmware it needs into L1
#   --script FILE           run FILE with busybox sh inside L1 (instead of COMMAND)
#   --timeout SECS          kill L1 after SECS (default 600)
#   --l1-mem MB             L1 memory (default 2048)
#   --log FILE              also write the console log to FILE
#   --interactive           connect this terminal's stdin to L1's console (default: /dev/null)
#   --hostfwd HPORT:LPORT   give L1 a NIC (QEMU user networking, restrict=on: no traffic leaves
#                           QEMU except the forwarded ports) and forward TCP 127.0.0.1:HPORT on
#                           the host to L1's port LPORT (repeatable). L1's /init loads
#                           virtio_pci + virtio_net and configures eth0 as 10.0.2.15/24 (QEMU's
#                           user-network default); it prints `L1-NET eth0=<addr> ...`. Used by
#                           tests-e2e's vnc-console case: a VNC viewer on the host reaches an
#                           L2 VMM's VNC server (listening on 0.0.0.0:LPORT in L1).
#   -q, --quiet             do not stream L1's console; print only the NESTED-* lines
#
# Inside L1: PATH includes /usr/bin, /usr/local/bin; env L2_KERNEL, L2_INITRAMFS, L2_DIR=/l2;
# helper `l2-watch` (scripts/nested/l2-watch) runs an L2 VMM, echoes its output, prints `L2-MARKER t=<s>` when
# the guest marker arrives (seconds since launch, L1 clock) and can type lines into its stdin.
#
# Result lines (stdout):
#   NESTED-TIMING l1_boot=<s>   host wall time from QEMU start to L1's /init (L1 boot)
#   NESTED-TIMING l1_kvm=<s>    host wall time from QEMU start to /dev/kvm ready
#   NESTED-RESULT rc=<n>        exit status of COMMAND inside L1 (also this script's exit status)
# Exit status: COMMAND's status; 124 on timeout; 125 on harness failure (no result line).
#
# Environment: VIREO_CACHE (default $HOME/.cache/vireo), QEMU (default qemu-system-x86_64),
#   VIREO_NO_APT_INSTALL=1 (never apt-get install).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
CACHE_ROOT=${VIREO_CACHE:-$HOME/.cache/vireo}
NDIR=$CACHE_ROOT/nested
QEMU=${QEMU:-qemu-system-x86_64}
L1_FORMAT=1

log() { echo "run-l1: $*" >&2; }
die() { echo "run-l1: error: $*" >&2; echo "NESTED-RESULT rc=125 error=harness"; exit 125; }

bins=()
files=()
l2_kernel=
l2_initramfs=
with_qemu=0
script=
timeout_s=600
l1_mem=2048
logfile=
interactive=0
quiet=0
hostfwds=()
while [ $# -gt 0 ]; do
    case $1 in
        --vmm) bins+=("$2:/usr/bin/$(basename "$2")"); shift 2 ;;
        --bin) if [[ $2 == *:* ]]; then bins+=("$2"); else bins+=("$2:/usr/bin/$(basename "$2")"); fi; shift 2 ;;
        --l2-kernel) l2_kernel=$2; shift 2 ;;
        --l2-initramfs) l2_initramfs=$2; shift 2 ;;
        --file) files+=("$2"); shift 2 ;;
        --with-qemu) with_qemu=1; shift ;;
        --script) script=$2; shift 2 ;;
        --timeout) timeout_s=$2; shift 2 ;;
        --l1-mem) l1_mem=$2; shift 2 ;;
        --log) logfile=$2; shift 2 ;;
        --interactive) interactive=1; shift ;;
        --hostfwd) [[ $2 =~ ^[0-9]+:[0-9]+$ ]] || die "--hostfwd wants HOSTPORT:L1PORT, not $2"
                   hostfwds+=("$2"); shift 2 ;;
        -q|--quiet) quiet=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; break ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
cmd=("$@")
[ ${#cmd[@]} -gt 0 ] || [ -n "$script" ] || die "no command given (use -- COMMAND ... or --script FILE)"

# --- host tools --------------------------------------------------------------------------------
missing=()
command -v "$QEMU" >/dev/null || missing+=(qemu-system-x86)
command -v cpio >/dev/null || missing+=(cpio)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
    [ "${VIREO_NO_APT_INSTALL:-0}" != 1 ] || die "missing packages: ${missing[*]}"
    sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    log "installing: ${missing[*]}"
    $sudo apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
        { $sudo apt-get update >&2 && $sudo apt-get install -y --no-install-recommends "${missing[@]}" >&2; } ||
        die "apt-get install ${missing[*]} failed"
fi

# --- guest assets (L1 kernel + modules) ----------------------------------------------------------
"$repo/scripts/guest/build-assets.sh" >/dev/null || die "scripts/guest/build-assets.sh failed"
# shellcheck disable=SC1091
. "$CACHE_ROOT/guest/assets.env"
kver=$VIREO_GUEST_KVER
kroot=$VIREO_GUEST_KERNEL_ROOT
mkdir -p "$NDIR"

cpio_dir() { # cpio_dir DIR OUT: newc archive of DIR's contents, owned by root
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet) >"$2"
}

# --- base archive: busybox, kvm modules, /init, l2-watch (cached per kernel) ---------------------
# Keyed by the content of this script and l2-watch (modification times differ between clones).
inputs=$(cat "$0" "$here/l2-watch" | sha256sum | cut -c1-12)
base=$NDIR/l1-base-$kver-f$L1_FORMAT-$inputs.cpio
if [ ! -s "$base" ]; then
    log "building L1 base initramfs ($kver)"
    st=$(mktemp -d "$NDIR/stage.XXXXXX")
    mkdir -p "$st"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,l1,l2,usr/bin,usr/sbin,usr/local/bin,lib/modules/$kver}
    cp /bin/busybox "$st/bin/busybox"
    for a in $("$st/bin/busybox" --list); do [ -e "$st/bin/$a" ] || ln -s busybox "$st/bin/$a"; done
    # kvm_amd and everything it depends on (modinfo -F depends, recursively), plus kvm_intel's
    # absence is fine: L1 is an emulated AMD CPU.
    declare -A seen=()
    add_mod() {
        local name=$1 f dep
        [ -z "${seen[$name]:-}" ] || return 0
        seen[$name]=1
        f=$(find "$kroot/lib/modules/$kver/kernel" \( -name "$name.ko*" -o -name "${name//_/-}.ko*" \) | head -1)
        [ -n "$f" ] || { log "note: module $name not found (built in?)"; return 0; }
        local rel=${f#"$kroot/lib/modules/$kver/"}
        mkdir -p "$st/lib/modules/$kver/$(dirname "$rel")"
        rel=${rel%.xz}; rel=${rel%.zst}; rel=${rel%.gz}
        case $f in
            *.ko.xz) xz -dc "$f" >"$st/lib/modules/$kver/$rel" ;;
            *.ko.zst) zstd -qdc "$f" >"$st/lib/modules/$kver/$rel" ;;
            *.ko.gz) gzip -dc "$f" >"$st/lib/modules/$kver/$rel" ;;
            *) cp "$f" "$st/lib/modules/$kver/$rel" ;;
        esac
        # dependencies from the module's .modinfo section ("depends=a,b")
        for dep in $(tr '\0' '\n' <"$st/lib/modules/$kver/$rel" | sed -n 's/^depends=//p' | head -1 | tr ',' ' '); do
            add_mod "$dep"
        done
    }
    add_mod kvm_amd
    add_mod tun # taps for L2 NICs (tests-e2e virtio cases)
    add_mod virtio_pci # L1's own NIC (--hostfwd)
    add_mod virtio_net
    /bin/busybox depmod -b "$st" "$kver"
    cat >"$st/init" <<'EOF'
#!/bin/sh
# L1 /init (scripts/nested/run-l1.sh)
export PATH=/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp 2>/dev/null
read up _ </proc/uptime
echo "L1-INIT-START uptime=$up"
finish() {
    echo "NESTED-RESULT rc=$1${2:+ error=$2}"
    sync
    poweroff -f
    while :; do sleep 60; done
}
grep -qw svm /proc/cpuinfo || echo "L1: warning: no svm flag in /proc/cpuinfo"
modprobe kvm_amd nested=1 || echo "L1: modprobe kvm_amd failed"
[ -c /dev/kvm ] || finish 125 no-dev-kvm
read up _ </proc/uptime
echo "L1-KVM-READY uptime=$up nested=$(cat /sys/module/kvm_amd/parameters/nested 2>/dev/null)"
if [ -f /l1/net ]; then
    # --hostfwd: QEMU user networking; the guest address QEMU forwards to is 10.0.2.15
    modprobe virtio_pci; modprobe virtio_net
    ip link set lo up
    n=0
    while [ ! -d /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
    echo "L1-NET eth0=$(ip -o -4 addr show dev eth0 2>/dev/null | awk '{print $4}') mac=$(cat /sys/class/net/eth0/address 2>/dev/null)"
fi
export L2_DIR=/l2
[ -f /l1/env ] && . /l1/env
cd /tmp
if [ -f /l1/interactive ]; then
    sh /l1/cmd.sh
else
    sh /l1/cmd.sh </dev/null
fi
finish $?
EOF
    chmod 755 "$st/init"
    cp "$here/l2-watch" "$st/usr/bin/l2-watch"
    chmod 755 "$st/usr/bin/l2-watch"
    cpio_dir "$st" "$base.tmp"
    rm -f "$NDIR/l1-base-$kver-f$L1_FORMAT"*.cpio
    mv "$base.tmp" "$base"
    rm -rf "$st"
fi

# --- payload archive: binaries + libs, qemu, L2 assets, files (cached by content key) -----------
entries=() # "SRC:DEST"
add_bin_libs() { # add_bin_libs SRC DEST
    entries+=("$1:$2")
    local lib
    for lib in $(ldd "$1" 2>/dev/null | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(/ {print $1}'); do
        entries+=("$(readlink -f "$lib"):$lib")
    done
}
for b in "${bins[@]+"${bins[@]}"}"; do
    src=${b%%:*}; dest=${b#*:}
    [ -f "$src" ] || die "binary not found: $src"
    add_bin_libs "$(readlink -f "$src")" "$dest"
done
if [ "$with_qemu" = 1 ]; then
    qbin=$(command -v "$QEMU")
    add_bin_libs "$(readlink -f "$qbin")" /usr/bin/qemu-system-x86_64
    for f in /usr/share/qemu/{linuxboot_dma.bin,linuxboot.bin,kvmvapic.bin,pvh.bin,multiboot_dma.bin,qboot.rom,bios-microvm.bin} \
        /usr/share/seabios/{bios-256k.bin,bios.bin,bios-microvm.bin}; do
        [ -e "$f" ] && entries+=("$(readlink -f "$f"):$f")
    done
fi
env_lines=()
if [ -n "$l2_kernel" ]; then
    [ -f "$l2_kernel" ] || die "L2 kernel not found: $l2_kernel"
    entries+=("$(readlink -f "$l2_kernel"):/l2/$(basename "$l2_kernel")")
    env_lines+=("export L2_KERNEL=/l2/$(basename "$l2_kernel")")
fi
if [ -n "$l2_initramfs" ]; then
    [ -f "$l2_initramfs" ] || die "L2 initramfs not found: $l2_initramfs"
    entries+=("$(readlink -f "$l2_initramfs"):/l2/$(basename "$l2_initramfs")")
    env_lines+=("export L2_INITRAMFS=/l2/$(basename "$l2_initramfs")")
fi
for f in "${files[@]+"${files[@]}"}"; do
    src=${f%%:*}; dest=${f#*:}
    [ "$src" != "$f" ] || dest=/l2/$(basename "$src")
    [ -e "$src" ] || die "file not found: $src"
    entries+=("$(readlink -f "$src"):$dest")
done

payload=
if [ ${#entries[@]} -gt 0 ]; then
    key=$(for e in "${entries[@]}"; do
        src=${e%%:*}
        echo "$e $(stat -c '%s %Y' "$src")"
        if [ -d "$src" ]; then find "$src" -type f -printf '%P %s %T@\n' | LC_ALL=C sort; fi
    done | sha256sum | cut -c1-16)
    payload=$NDIR/l1-payload-$key.cpio
    if [ ! -s "$payload" ]; then
        log "building L1 payload archive ($key)"
        st=$(mktemp -d "$NDIR/stage.XXXXXX")
        for e in "${entries[@]}"; do
            src=${e%%:*}; dest=${e#*:}
            mkdir -p "$st$(dirname "$dest")"
            cp -a "$src" "$st$dest" 2>/dev/null || cp -rL "$src" "$st$dest"
        done
        # Uncompressed: L1 unpacks it much faster than a gzip under TCG.
        cpio_dir "$st" "$payload.tmp" && mv "$payload.tmp" "$payload"
        rm -rf "$st"
        # keep the cache bounded: the 4 newest payloads
        ls -t "$NDIR"/l1-payload-*.cpio 2>/dev/null | tail -n +5 | xargs -r rm -f
    fi
fi

# --- per-run archive: the command --------------------------------------------------------------
run=$(mktemp -d "${TMPDIR:-/tmp}/vireo-l1.XXXXXX")
trap 'rm -rf "$run"' EXIT
mkdir -p "$run/root/l1"
sq() { local s=$1; printf "'%s'" "${s//\'/\'\\\'\'}"; }
if [ -n "$script" ]; then
    cp "$script" "$run/root/l1/cmd.sh"
else
    { for a in "${cmd[@]}"; do printf '%s ' "$(sq "$a")"; done; echo; } >"$run/root/l1/cmd.sh"
fi
printf '%s\n' "${env_lines[@]+"${env_lines[@]}"}" >"$run/root/l1/env"
[ "$interactive" = 0 ] || : >"$run/root/l1/interactive"
[ ${#hostfwds[@]} = 0 ] || : >"$run/root/l1/net"
cpio_dir "$run/root" "$run/run.cpio"
initrd=$run/initrd.cpio
cat "$base" ${payload:+"$payload"} "$run/run.cpio" >"$initrd"

# --- run L1 ------------------------------------------------------------------------------------
l1_append="console=ttyS0 quiet panic=-1 rdinit=/init"
# shellcheck disable=SC2054 # commas are QEMU option syntax
qemu_cmd=(timeout -k 10 "$timeout_s" "$QEMU" -accel tcg -cpu max,-xsave -smp 1 -m "$l1_mem"
    -M q35 -nodefaults -no-user-config -display none
    -chardev stdio,id=con,signal=off -serial chardev:con
    -kernel "$VIREO_GUEST_VMLINUZ" -initrd "$initrd" -append "$l1_append" -no-reboot)
if [ ${#hostfwds[@]} -gt 0 ]; then
    netdev=user,id=n0,restrict=on
    for f in "${hostfwds[@]}"; do netdev+=",hostfwd=tcp:127.0.0.1:${f%%:*}-:${f#*:}"; done
    qemu_cmd+=(-netdev "$netdev" -device virtio-net-pci,netdev=n0,romfile=)
    log "L1 NIC: ${hostfwds[*]} (host 127.0.0.1:PORT -> L1:PORT)"
fi
log "starting L1 (timeout ${timeout_s}s, initrd $(( $(stat -c %s "$initrd") / 1048576 )) MiB)"
[ -z "$logfile" ] || : >"$logfile"
t0=$(date +%s.%N)
set +e
if [ "$interactive" = 1 ]; then
    "${qemu_cmd[@]}"
else
    "${qemu_cmd[@]}" </dev/null
fi 2>&1 | {
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%$'\r'}
        [ -z "$logfile" ] || printf '%s\n' "$line" >>"$logfile"
        case $line in
            L1-INIT-START*|L1-KVM-READY*)
                now=$(date +%s.%N)
                what=l1_boot; [[ $line == L1-KVM* ]] && what=l1_kvm
                printf '%s\n' "$line"
                echo "NESTED-TIMING $what=$(awk -v a="$t0" -v b="$now" 'BEGIN {printf "%.2f", b - a}')"
                continue ;;
        esac
        if [[ $line == NESTED-RESULT* ]]; then
            r=${line#*rc=}; echo "${r%% *}" >"$run/rc"
        fi
        if [ "$quiet" = 0 ] || [[ $line == NESTED-* || $line == L2-* ]]; then
            printf '%s\n' "$line"
        fi
    done
}
qemu_rc=${PIPESTATUS[0]}
set -e
t1=$(date +%s.%N)
echo "NESTED-TIMING l1_total=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')"
if [ -s "$run/rc" ]; then
    exit "$(cat "$run/rc")"
fi
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    echo "NESTED-RESULT rc=124 error=timeout"
    exit 124
fi
echo "NESTED-RESULT rc=125 error=no-result qemu_rc=$qemu_rc"
exit 125
