#!/usr/bin/env bash
# Build Vireo's Linux guest assets from Debian packages only, cached outside git.
#
#   scripts/guest/build-assets.sh              build (or reuse) the assets, print their paths
#   scripts/guest/build-assets.sh --print-dir  print the asset directory and exit
#   scripts/guest/build-assets.sh --refresh    ask apt for the current cloud kernel ABI and rebuild
#                                              if it changed (default: a complete cache is reused
#                                              without querying apt)
#   scripts/guest/build-assets.sh --force      rebuild even if the cache looks complete
#
# Outputs in ${VIREO_CACHE:-$HOME/.cache/vireo}/guest/:
#   vmlinuz             Debian's cloud kernel (bzImage, Linux boot protocol)
#   vmlinux             ELF extracted from the bzImage (LZ4 payload), with a PVH entry note
#   initramfs.cpio.gz   busybox-static + virtio modules (blk, net, input + evdev); /init prints
#                       `VIREO-GUEST-READY scenario=<name> uptime=<guest seconds>` and runs
#                       the scenario named by `vireo.scenario=` on the kernel command line:
#                         shell     interactive busybox sh on the console (the default)
#                         cpus      prints VIREO-CPUS=<n> (from /proc/cpuinfo), then poweroff -f
#                         poweroff  poweroff -f
#                         reboot    reboot -f
#                         virtio    exercises the virtio disks and NIC it finds (vda: ext2 file
#                                   system + fstrim; vdb: qcow2-overlay reads, COW, discard; vdc:
#                                   read-only refusal; eth0: ping + transfers to 10.213.2.1),
#                                   prints VIREO-BLK*/VIREO-NET* lines, VIREO-VIRTIO-DONE, then
#                                   poweroff -f (see /bin/vireo-virtio below)
#                         vnc       for a VNC console (tests-e2e case vnc-console): prints the
#                                   framebuffer/keyboard facts (VIREO-FB-INFO, VIREO-KBD,
#                                   VIREO-INPUT, VIREO-DMESG lines), starts a shell on tty1 (the
#                                   screen and the PS/2 keyboard), clears tty1 and hides its
#                                   cursor, writes the test pattern to /dev/fb0 (VIREO-FB-DRAWN),
#                                   prints VIREO-VNC-READY and runs a shell on ttyS0 (see
#                                   /bin/vireo-vnc below)
#                       The initramfs also holds /pattern-1024x768.raw.xz: the test pattern of
#                       scripts/guest/fb-pattern.py as raw 32-bpp pixels (xz: ~220 KiB).
#   kernel-root/        the unpacked kernel package (modules for the L1 harness)
#   kernel-version      e.g. 6.1.0-56-cloud-amd64
#   assets.env          shell-sourceable paths (VIREO_GUEST_VMLINUZ=... etc.)
#
# Environment:
#   VIREO_CACHE          cache root (default $HOME/.cache/vireo)
#   VIREO_KERNEL_PKG     kernel package to use (default: what linux-image-cloud-amd64 depends on)
#   VIREO_NO_APT_INSTALL=1  never run apt-get install (fail if a tool is missing)
set -euo pipefail

CACHE_ROOT=${VIREO_CACHE:-$HOME/.cache/vireo}
DIR=$CACHE_ROOT/guest
# Bump when the initramfs layout or /init changes, so caches are rebuilt.
ASSET_FORMAT=10

print_dir=0
force=0
refresh=0
for arg in "$@"; do
    case $arg in
        --print-dir) print_dir=1 ;;
        --force) force=1 ;;
        --refresh) refresh=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-assets.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done
if [ "$print_dir" = 1 ]; then
    echo "$DIR"
    exit 0
fi

log() { echo "build-assets: $*" >&2; }
die() { echo "build-assets: error: $*" >&2; exit 1; }

# --- host tools --------------------------------------------------------------------------------
# command -> Debian package
need_tools() {
    local missing=() cmd pkg
    for pair in "$@"; do
        cmd=${pair%%:*}
        pkg=${pair#*:}
        if [ "$cmd" = /bin/busybox ]; then
            # busybox-static provides /bin/busybox; the dynamic "busybox" package is not enough.
            dpkg -s busybox-static >/dev/null 2>&1 || missing+=("$pkg")
        elif ! command -v "$cmd" >/dev/null 2>&1; then
            missing+=("$pkg")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "${VIREO_NO_APT_INSTALL:-0}" = 1 ]; then
        die "missing packages: ${missing[*]} (VIREO_NO_APT_INSTALL=1)"
    fi
    local sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    log "installing: ${missing[*]}"
    if ! $sudo apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        $sudo apt-get update >&2
        $sudo apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
}
need_tools apt-get:apt dpkg-deb:dpkg /bin/busybox:busybox-static cpio:cpio lz4:lz4 \
    readelf:binutils xz:xz-utils gzip:gzip sha256sum:coreutils python3:python3
here=$(cd "$(dirname "$0")" && pwd)

# --- kernel package ----------------------------------------------------------------------------
kernel_pkg=${VIREO_KERNEL_PKG:-}
# Fast path: a complete cache is reused without asking apt (slow) unless --refresh/--force.
if [ "$force" = 0 ] && [ "$refresh" = 0 ] && [ -f "$DIR/stamp" ] && [ -s "$DIR/vmlinuz" ] &&
    [ -s "$DIR/vmlinux" ] && [ -s "$DIR/initramfs.cpio.gz" ] && [ -s "$DIR/kernel-version" ] &&
    grep -q "^format=$ASSET_FORMAT " "$DIR/stamp" &&
    { [ -z "$kernel_pkg" ] || grep -q " pkg=$kernel_pkg " "$DIR/stamp"; }; then
    stamp=$(cat "$DIR/stamp")
    kernel_pkg=$(sed -n 's/.* pkg=\([^ ]*\) .*/\1/p' "$DIR/stamp")
    pkg_version=$(sed -n 's/.* version=\([^ ]*\).*/\1/p' "$DIR/stamp")
fi
if [ -z "$kernel_pkg" ]; then
    kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9].*-cloud-amd64/ {print $2; exit}')
    if [ -z "$kernel_pkg" ]; then
        log "apt-cache knows no linux-image-cloud-amd64; running apt-get update"
        [ "$(id -u)" = 0 ] && apt-get update >&2 || sudo apt-get update >&2
        kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 |
            awk '/Depends: linux-image-[0-9].*-cloud-amd64/ {print $2; exit}')
    fi
    [ -n "$kernel_pkg" ] || die "cannot find the cloud kernel ABI (apt-cache depends linux-image-cloud-amd64)"
fi
kver=${kernel_pkg#linux-image-}
[ -n "${pkg_version:-}" ] || pkg_version=$(apt-cache show --no-all-versions "$kernel_pkg" 2>/dev/null | awk '/^Version:/ {print $2; exit}')
[ -n "${stamp:-}" ] || stamp="format=$ASSET_FORMAT pkg=$kernel_pkg version=${pkg_version:-unknown}"

mkdir -p "$DIR"
if [ "$force" = 0 ] && [ -f "$DIR/stamp" ] && [ "$(cat "$DIR/stamp")" = "$stamp" ] &&
    [ -s "$DIR/vmlinuz" ] && [ -s "$DIR/vmlinux" ] && [ -s "$DIR/initramfs.cpio.gz" ]; then
    log "cache is up to date ($stamp)"
else
    start=$(date +%s.%N)
    rm -f "$DIR/stamp"
    debdir=$DIR/debs
    mkdir -p "$debdir"
    deb=$(ls "$debdir/${kernel_pkg}_"*.deb 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$deb" ] || { [ -n "$pkg_version" ] && [ "$(dpkg-deb -f "$deb" Version)" != "$pkg_version" ]; }; then
        log "downloading $kernel_pkg ${pkg_version}"
        rm -f "$debdir/${kernel_pkg}_"*.deb
        (cd "$debdir" && apt-get -q -o APT::Sandbox::User=root download "$kernel_pkg" >&2)
        deb=$(ls "$debdir/${kernel_pkg}_"*.deb | sort -V | tail -1)
    fi
    log "unpacking $(basename "$deb")"
    rm -rf "$DIR/kernel-root.tmp"
    dpkg-deb -x "$deb" "$DIR/kernel-root.tmp"
    rm -rf "$DIR/kernel-root"
    mv "$DIR/kernel-root.tmp" "$DIR/kernel-root"
    kroot=$DIR/kernel-root
    [ -f "$kroot/boot/vmlinuz-$kver" ] || die "package has no /boot/vmlinuz-$kver"
    cp "$kroot/boot/vmlinuz-$kver" "$DIR/vmlinuz.tmp"
    mv "$DIR/vmlinuz.tmp" "$DIR/vmlinuz"

    # --- vmlinux: find the LZ4 legacy-frame magic (02 21 4c 18) and decompress from there.
    # lz4 exits non-zero because the bzImage has trailing data after the payload; what matters is
    # that a valid ELF comes out. Try every magic occurrence until one decompresses to an ELF.
    log "extracting vmlinux (LZ4 payload)"
    found=0
    for off in $(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$DIR/vmlinuz" | cut -d: -f1); do
        tail -c +$((off + 1)) "$DIR/vmlinuz" | lz4 -dc >"$DIR/vmlinux.tmp" 2>/dev/null || true
        if [ "$(head -c 4 "$DIR/vmlinux.tmp" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] &&
            readelf -h "$DIR/vmlinux.tmp" >/dev/null 2>&1; then
            found=1
            break
        fi
    done
    [ "$found" = 1 ] || die "no LZ4 payload in the bzImage decompressed to an ELF (is the kernel LZ4-compressed? see CONFIG_KERNEL_* in $kroot/boot/config-$kver)"
    mv "$DIR/vmlinux.tmp" "$DIR/vmlinux"

    # --- initramfs
    log "building initramfs"
    ird=$DIR/initramfs.root
    rm -rf "$ird"
    mkdir -p "$ird"/{bin,sbin,etc,proc,sys,dev,tmp,root,run,usr/bin,usr/sbin,lib/modules/$kver}
    cp /bin/busybox "$ird/bin/busybox"
    for applet in $("$ird/bin/busybox" --list); do
        [ -e "$ird/bin/$applet" ] || ln -s busybox "$ird/bin/$applet"
    done
    modules="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk failover net_failover virtio_net virtio_input evdev"
    : >"$ird/etc/modules-load-order"
    for m in $modules; do
        src=$(find "$kroot/lib/modules/$kver/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) | head -1)
        if [ -z "$src" ]; then
            # Built in (or renamed) in this kernel: /init skips it gracefully.
            log "note: module $m not found in $kernel_pkg (built in?)"
            echo "$m" >>"$ird/etc/modules-load-order"
            continue
        fi
        rel=${src#"$kroot/lib/modules/$kver/"}
        mkdir -p "$ird/lib/modules/$kver/$(dirname "$rel")"
        # Decompress at build time: busybox modprobe/insmod then need no xz/zstd support.
        case $src in
            *.ko.xz) xz -dc "$src" >"$ird/lib/modules/$kver/${rel%.xz}" ;;
            *.ko.zst) command -v zstd >/dev/null || need_tools zstd:zstd
                      zstd -qdc "$src" >"$ird/lib/modules/$kver/${rel%.zst}" ;;
            *.ko.gz) gzip -dc "$src" >"$ird/lib/modules/$kver/${rel%.gz}" ;;
            *) cp "$src" "$ird/lib/modules/$kver/$rel" ;;
        esac
        echo "$m" >>"$ird/etc/modules-load-order"
    done
    /bin/busybox depmod -b "$ird" "$kver"
    [ -s "$ird/lib/modules/$kver/modules.dep" ] || die "busybox depmod produced no modules.dep"

    cat >"$ird/init" <<'EOF'
#!/bin/sh
# Vireo test guest /init (scripts/guest/build-assets.sh).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts 2>/dev/null
kver=$(uname -r)
while read -r m; do
    [ -n "$m" ] || continue
    # Built-in modules show up in /sys/module; missing ones are skipped.
    modprobe -q "$m" 2>/dev/null || [ -d "/sys/module/$m" ] || echo "vireo-init: module $m not loaded"
done </etc/modules-load-order

scenario=shell
for arg in $(cat /proc/cmdline); do
    case $arg in
        vireo.scenario=*) scenario=${arg#vireo.scenario=} ;;
    esac
done

# uptime = guest-side boot time (kernel clock), to separate VMM start-up from guest boot.
read -r up _ </proc/uptime
echo "VIREO-GUEST-READY scenario=$scenario uptime=$up"

case $scenario in
    cpus)
        echo "VIREO-CPUS=$(grep -c '^processor' /proc/cpuinfo)"
        poweroff -f
        ;;
    poweroff)
        poweroff -f
        ;;
    reboot)
        reboot -f
        ;;
    virtio)
        vireo-virtio
        poweroff -f
        ;;
    vnc)
        vireo-vnc
        # the serial shell (a typed `poweroff -f` ends the run), on ttyS0 by name: with
        # console=tty0 console=ttyS0, cttyhack might pick tty0
        setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1'
        poweroff -f
        ;;
    shell)
        # setsid + cttyhack give the shell a controlling terminal on the console (ttyS0).
        setsid cttyhack sh
        echo "vireo-init: shell exited; powering off"
        poweroff -f
        ;;
    *)
        echo "vireo-init: unknown scenario '$scenario'; starting a shell"
        setsid cttyhack sh
        poweroff -f
        ;;
esac
# Never let init exit (that panics the kernel).
while :; do sleep 3600; done
EOF
    chmod 755 "$ird/init"

    cat >"$ird/bin/vireo-virtio" <<'EOF'
#!/bin/sh
# Scenario `virtio` of the Vireo test guest (scripts/guest/build-assets.sh). Exercises the
# virtio devices the VMM gave it, in this order, and skips what is absent:
#   vda  writable raw disk (>= 48 MiB): ext2 file system with a known file, then fstrim
#   vdb  writable qcow2 overlay over a raw base whose bytes [1 MiB, 2 MiB) hold a pattern (>= 24 MiB)
#   vdc  read-only disk
#   eth0 NIC on a tap whose host side is 10.213.2.1/24 (guest: 10.213.2.2), with an HTTP server
#        on port 8213 serving /blob and a TCP sink on port 8214
# Every result is one line starting with VIREO-BLK or VIREO-NET; the last is VIREO-VIRTIO-DONE.
# Checksums are sha256 of the bytes named; the host compares them with its side. Each line ends
# with t=<guest uptime>.
MiB=1048576
say() { read -r _up _ </proc/uptime; echo "VIREO-$* t=$_up"; } # t = guest uptime (s)
sum() { sha256sum | cut -c1-64; }
one() { tr '\n' ' ' | tr -s ' ' | sed 's/ $//; s/ /_/g'; } # a message as one token

for b in /sys/block/vd*; do
    [ -d "$b" ] || continue
    q=$b/queue
    say "BLK-DEV dev=${b##*/} bytes=$(( $(cat "$b/size") * 512 )) ro=$(cat "$b/ro")" \
        "discard_max=$(cat "$q/discard_max_bytes") discard_gran=$(cat "$q/discard_granularity")" \
        "lbs=$(cat "$q/logical_block_size") wcache=$(cat "$q/write_cache" 2>/dev/null | tr ' ' _)"
done

if [ -b /dev/vda ]; then
    if out=$(mke2fs -F -L vireo /dev/vda 2>&1) && mkdir -p /mnt/vda &&
        out=$(mount -t ext4 /dev/vda /mnt/vda 2>&1); then
        mkdir -p /mnt/vda/dir
        seq 1 200000 >/mnt/vda/dir/data.txt
        echo "written by the vireo test guest" >/mnt/vda/hello
        sync
        say "BLK-FS dev=vda file=/dir/data.txt bytes=$(wc -c </mnt/vda/dir/data.txt)" \
            "sha256=$(sum </mnt/vda/dir/data.txt)"
        # 24 MiB of data, deleted, then fstrim: the host must find holes where it was.
        out=$(dd if=/dev/urandom of=/mnt/vda/big bs=1M count=24 conv=fsync 2>&1) ||
            say "BLK-TRIM dev=vda error=dd:$(echo "$out" | one)"
        used=$(df -k /mnt/vda | awk 'NR == 2 {print $3}')
        rm /mnt/vda/big
        sync
        if out=$(fstrim -v /mnt/vda 2>&1); then
            trimmed=$(echo "$out" | sed -n 's/.*: \([0-9]*\) bytes trimmed.*/\1/p')
            say "BLK-TRIM dev=vda big_bytes=$((24 * MiB)) used_kib_with_big=$used trimmed=${trimmed:-none}"
        else
            say "BLK-TRIM dev=vda error=fstrim:$(echo "$out" | one)"
        fi
        out=$(umount /mnt/vda 2>&1) || say "BLK-FS dev=vda error=umount:$(echo "$out" | one)"
    else
        say "BLK-FS dev=vda error=$(echo "$out" | one)"
    fi
fi

if [ -b /dev/vdb ]; then
    # [1 MiB, 2 MiB) comes from the backing file.
    say "BLK-QCOW2 dev=vdb base_sha256=$(dd if=/dev/vdb bs=64k skip=16 count=16 iflag=direct 2>/dev/null | sum)"
    # 4 KiB at 1 MiB + 4 KiB: copy-on-write of a cluster that has backing data around the write.
    head -c 4096 /dev/urandom >/tmp/p4k
    out=$(dd if=/tmp/p4k of=/dev/vdb bs=4096 seek=257 conv=fsync 2>&1) ||
        say "BLK-QCOW2 dev=vdb error=cow-write:$(echo "$out" | one)"
    say "BLK-QCOW2 dev=vdb cow_offset=$((MiB + 4096)) cow_sha256=$(sum </tmp/p4k)" \
        "region_sha256=$(dd if=/dev/vdb bs=64k skip=16 count=16 iflag=direct 2>/dev/null | sum)"
    # 2 MiB at 8 MiB (fresh clusters), read back past the guest's page cache.
    head -c $((2 * MiB)) /dev/urandom >/tmp/p2m
    out=$(dd if=/tmp/p2m of=/dev/vdb bs=1M seek=8 conv=fsync 2>&1) ||
        say "BLK-QCOW2 dev=vdb error=write:$(echo "$out" | one)"
    say "BLK-QCOW2 dev=vdb write_offset=$((8 * MiB)) write_sha256=$(sum </tmp/p2m)" \
        "readback_sha256=$(dd if=/dev/vdb bs=1M skip=8 count=2 iflag=direct 2>/dev/null | sum)"
    # 2 MiB at 16 MiB, then discarded: the overlay must not keep those clusters.
    out=$(dd if=/tmp/p2m of=/dev/vdb bs=1M seek=16 conv=fsync 2>&1) ||
        say "BLK-QCOW2-DISCARD dev=vdb error=write:$(echo "$out" | one)"
    if out=$(blkdiscard -o $((16 * MiB)) -l $((2 * MiB)) /dev/vdb 2>&1); then
        say "BLK-QCOW2-DISCARD dev=vdb offset=$((16 * MiB)) bytes=$((2 * MiB)) rc=0"
    else
        say "BLK-QCOW2-DISCARD dev=vdb rc=1 error=$(echo "$out" | one)"
    fi
    sync
fi

if [ -b /dev/vdc ]; then
    r=$(dd if=/dev/vdc bs=64k count=16 iflag=direct 2>/dev/null | sum)
    out=$(dd if=/dev/zero of=/dev/vdc bs=4096 count=1 conv=fsync 2>&1)
    w1=$?
    dd if=/dev/zero of=/dev/vdc bs=4096 count=1 seek=16 oflag=direct 2>/dev/null
    w2=$?
    say "BLK-RO dev=vdc ro=$(cat /sys/block/vdc/ro) read_sha256=$r write_rc=$w1" \
        "direct_write_rc=$w2 write_err=$(echo "$out" | one)"
fi

if [ -d /sys/class/net/eth0 ]; then
    ip link set lo up
    ip link set eth0 up
    ip addr add 10.213.2.2/24 dev eth0
    out=$(ping -c 3 -i 0.2 -W 5 10.213.2.1 2>&1)
    tx=$(echo "$out" | sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p')
    rx=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    say "NET-PING dev=eth0 mac=$(cat /sys/class/net/eth0/address) addr=10.213.2.2" \
        "tx=${tx:-none} rx=${rx:-none}"
    # host -> guest: 4 MiB over HTTP
    if out=$(timeout 60 wget -q -O /tmp/rx http://10.213.2.1:8213/blob 2>&1); then
        say "NET-RX bytes=$(wc -c </tmp/rx) sha256=$(sum </tmp/rx)"
    else
        say "NET-RX error=$(echo "$out" | one)"
    fi
    rm -f /tmp/rx
    # guest -> host: 2 MiB over TCP; nc half-closes at the end of its input, the sink then closes.
    head -c $((2 * MiB)) /dev/urandom >/tmp/tx
    out=$(timeout 60 nc 10.213.2.1 8214 </tmp/tx 2>&1)
    rc=$?
    say "NET-TX rc=$rc bytes=$(wc -c </tmp/tx) sha256=$(sum </tmp/tx)${out:+ out=$(echo "$out" | one)}"
    st=/sys/class/net/eth0/statistics
    say "NET-STATS rx_packets=$(cat $st/rx_packets) rx_bytes=$(cat $st/rx_bytes)" \
        "tx_packets=$(cat $st/tx_packets) tx_bytes=$(cat $st/tx_bytes)" \
        "rx_errors=$(cat $st/rx_errors) tx_errors=$(cat $st/tx_errors) rx_dropped=$(cat $st/rx_dropped)"
fi
say "VIRTIO-DONE"
EOF
    chmod 755 "$ird/bin/vireo-virtio"

    # Scenario `vnc`: the test pattern (xz -9e: ~220 KiB instead of 3 MiB; gzip leaves 1.7 MiB)
    python3 "$here/fb-pattern.py" raw 1024 768 "$ird/pattern-1024x768.raw"
    xz -9e --check=crc32 "$ird/pattern-1024x768.raw"
    cat >"$ird/bin/vireo-vnc" <<'EOF'
#!/bin/sh
# Scenario `vnc` of the Vireo test guest (scripts/guest/build-assets.sh): set up the screen and
# the keyboard for a VNC viewer, then return (/init then runs a shell on ttyS0).
#   1. facts to the serial console: VIREO-FB-INFO (fb0's name, size, stride, bpp),
#      VIREO-KBD=yes|no ("AT Translated Set 2 keyboard" in /proc/bus/input/devices),
#      VIREO-INPUT name=... per input device, VIREO-DMESG lines (efifb, fbcon, i8042, atkbd,
#      serio, input: kernel messages do not reach ttyS0 under `quiet`)
#   2. a shell on tty1 (stdin/stdout/stderr tty1, its controlling terminal), so what is typed on
#      the keyboard reaches it; waited for until it sits in read/poll (banner and prompt drawn)
#   3. tty1 cleared and its cursor hidden (fbcon draws text and the cursor into the
#      framebuffer), then the pattern /pattern-<W>x<H>.raw.xz (scripts/guest/fb-pattern.py)
#      written to /dev/fb0: VIREO-FB-DRAWN rc=<n> (or VIREO-FB-ERROR)
#   4. VIREO-VNC-READY
# Each line ends with t=<guest uptime>. Nothing writes to tty1 after step 3 until keys arrive.
say() { read -r _up _ </proc/uptime; echo "VIREO-$* t=$_up"; }
echo 0 >/sys/class/graphics/fbcon/cursor_blink 2>/dev/null
dmesg -n 1
fb=/sys/class/graphics/fb0
if [ -d $fb ]; then
    say "FB-INFO name=$(tr ' ' _ <$fb/name) size=$(tr , x <$fb/virtual_size)" \
        "stride=$(cat $fb/stride) bpp=$(cat $fb/bits_per_pixel)"
else
    say "FB-INFO none"
fi
if grep -q 'AT Translated Set 2 keyboard' /proc/bus/input/devices; then kbd=yes; else kbd=no; fi
say "KBD=$kbd"
sed -n 's/^N: Name="\(.*\)"$/\1/p' /proc/bus/input/devices | tr ' ' _ | sed 's/^/VIREO-INPUT name=/'
dmesg | grep -iE 'efifb|fbcon|frame ?buffer|Console: switching|i8042|atkbd|serio|input:' |
    sed 's/^/VIREO-DMESG /'

# 2. the tty1 shell; wait until it reads its input
setsid sh -c 'exec sh -i </dev/tty1 >/dev/tty1 2>&1' &
spid=$!
n=0
state=
while [ $n -lt 200 ]; do
    # x86_64 syscall numbers: 0 read, 7 poll, 23 select, 270 pselect6, 271 ppoll
    state=$(cut -d' ' -f1 /proc/$spid/syscall 2>/dev/null)
    case $state in 0|7|23|270|271) break ;; esac
    sleep 0.1
    n=$((n + 1))
done
say "TTY1-SHELL pid=$spid syscall=${state:-none} waited_ds=$n stdin=$(readlink /proc/$spid/fd/0)"
sleep 0.5

# 3. a clear screen without a cursor, then the pattern
printf '\033[H\033[2J\033[?25l' >/dev/tty1
size=$(tr , x 2>/dev/null <$fb/virtual_size)
pat=/pattern-$size.raw.xz
if [ -f "$pat" ]; then
    out=$(unxz -c "$pat" 2>&1 >/dev/fb0)
    say "FB-DRAWN rc=$? pattern=${pat#/}${out:+ out=$(echo "$out" | tr ' \n' __)}"
else
    say "FB-ERROR no-pattern-for-size=${size:-none}"
fi
say "VNC-READY"
EOF
    chmod 755 "$ird/bin/vireo-vnc"
    (cd "$ird" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet) |
        gzip -9 >"$DIR/initramfs.cpio.gz.tmp"
    mv "$DIR/initramfs.cpio.gz.tmp" "$DIR/initramfs.cpio.gz"
    rm -rf "$ird"
    echo "$kver" >"$DIR/kernel-version"
    echo "$stamp" >"$DIR/stamp"
    end=$(date +%s.%N)
    log "built in $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}') s"
fi

# --- checks and report -------------------------------------------------------------------------
pvh=no
if readelf -n "$DIR/vmlinux" 2>/dev/null | grep -E '^ +Xen ' | grep -qE '\(0x00000012\)|PHYS32_ENTRY'; then
    pvh=yes
    pvh_entry=$(readelf -n "$DIR/vmlinux" | grep -E '^ +Xen ' -A1 | grep -E -A1 '\(0x00000012\)|PHYS32_ENTRY' | awk '/description data/ {
        s = ""; for (i = 6; i >= 3; i--) s = s $i; sub(/^0+/, "", s); print "0x" s; exit }')
fi
cat >"$DIR/assets.env" <<EOF
VIREO_GUEST_DIR=$DIR
VIREO_GUEST_VMLINUZ=$DIR/vmlinuz
VIREO_GUEST_VMLINUX=$DIR/vmlinux
VIREO_GUEST_INITRAMFS=$DIR/initramfs.cpio.gz
VIREO_GUEST_KERNEL_ROOT=$DIR/kernel-root
VIREO_GUEST_KVER=$kver
VIREO_GUEST_PVH=$pvh
EOF
echo "kernel:    $kernel_pkg ${pkg_version} (uname -r: $kver)"
echo "vmlinuz:   $DIR/vmlinuz"
echo "vmlinux:   $DIR/vmlinux (PVH note XEN_ELFNOTE_PHYS32_ENTRY: $pvh${pvh_entry:+, entry $pvh_entry})"
echo "initramfs: $DIR/initramfs.cpio.gz"
echo "modules:   $DIR/kernel-root/lib/modules/$kver"
echo "env:       $DIR/assets.env"
