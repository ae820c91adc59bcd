#!/usr/bin/env bash
# Builds the launcher container image as a `docker save` tarball, without docker or a registry:
#
#   scripts/launcher-image.sh OUT.tar [--vireo PATH] [--tag TAG] [--bin PATH]... [--add SRC:DST]...
#       PATH defaults to target/release/vireo, TAG to vireo/launcher:dev;
#       --bin adds another binary to /usr/bin with its libraries (the controller image:
#       --bin target/release/vireo-controller --tag vireo/controller:dev);
#       --add copies a file into the image (the test node's image carries the test guest:
#       --add testguest:/usr/share/vireo/testguest)
#
# Import it with `ctr -n k8s.io images import OUT.tar` (scripts/k8s-node.sh start --images does).
#
# Why it looks like this:
# * One layer: /usr/bin/vireo, the shared libraries `ldd` lists (copied from the host at the
#   same paths, so the dynamic loader finds them exactly where the binary was linked to look),
#   /bin/busybox from Debian's busybox-static with sh/cp/cat/... links (the controller's
#   container-disk init container runs `cp`), and /etc/passwd + /etc/group with root only.
# * Entrypoint is empty and Cmd is ["vireo"]: pods set `command`/`args` themselves.
# * Deterministic: entries sorted, mtimes 0, owners 0:0, so the same binary gives the same image
#   id (containerd then skips re-unpacking an unchanged image).
# * The docker-save layout is written by hand: manifest.json (Config, RepoTags, Layers), the
#   config JSON named by its sha256, and <diff-id>/layer.tar.
set -euo pipefail

log() { echo "launcher-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

ensure_apt() { # ensure_apt PACKAGE...
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]}"
  as_root apt-get update -q >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${missing[@]}" >&2
}

# write_image ROOTFS OUT TAG CMD_JSON: a docker-save tarball with ROOTFS as its only layer.
write_image() {
  local rootfs=$1 out=$2 tag=$3 cmd=$4 work diff cfg
  work=$(mktemp -d)
  # GNU tar, sorted, fixed mtime and owners; entry names without a leading "./".
  (cd "$rootfs" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort \
    | tar --no-recursion --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
      -cf "$work/layer.tar" -T -)
  diff=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  mkdir "$work/$diff"
  mv "$work/layer.tar" "$work/$diff/layer.tar"
  jq -cn --arg d "sha256:$diff" --argjson cmd "$cmd" '{
      architecture: "amd64", os: "linux", created: "1970-01-01T00:00:00Z",
      config: {Env: ["PATH=/usr/bin:/bin:/usr/sbin:/sbin"], Entrypoint: null, Cmd: $cmd,
               WorkingDir: "/"},
      rootfs: {type: "layers", diff_ids: [$d]},
      history: [{created: "1970-01-01T00:00:00Z", created_by: "scripts/launcher-image.sh"}]
    }' >"$work/config.json"
  cfg=$(sha256sum "$work/config.json" | cut -d' ' -f1)
  mv "$work/config.json" "$work/$cfg.json"
  jq -cn --arg c "$cfg.json" --arg t "$tag" --arg l "$diff/layer.tar" \
    '[{Config: $c, RepoTags: [$t], Layers: [$l]}]' >"$work/manifest.json"
  tar -C "$work" --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
    -cf "$out.tmp" manifest.json "$cfg.json" "$diff" "$diff/layer.tar"
  mv "$out.tmp" "$out"
  rm -rf "$work"
  echo "sha256:$cfg"
}

main() {
  local out="" vireo="" tag="vireo/launcher:dev"
  local bins=() adds=()
  while (($#)); do
    case $1 in
      --vireo) vireo=$2; shift 2 ;;
      --tag) tag=$2; shift 2 ;;
      --bin) bins+=("$2"); shift 2 ;;
      --add) [[ $2 == *:/* ]] || die "--add wants SRC:/ABSOLUTE/DST, got $2"; adds+=("$2"); shift 2 ;;
      -h | --help)
        echo "usage: $0 OUT.tar [--vireo PATH] [--tag TAG]" >&2; exit 0 ;;
      -*) die "unknown flag $1" ;;
      *) [[ -z "$out" ]] || die "one output path only"; out=$1; shift ;;
    esac
  done
  [[ -n "$out" ]] || die "usage: $0 OUT.tar [--vireo PATH] [--tag TAG]"
  if [[ -z "$vireo" ]]; then
    vireo="$(cd "$(dirname "$0")/.." && pwd)/target/release/vireo"
    [[ -z "${CARGO_TARGET_DIR:-}" || -x "$vireo" ]] || vireo="$CARGO_TARGET_DIR/release/vireo"
  fi
  [[ -x "$vireo" ]] || die "no vireo binary at $vireo (cargo build --release -p vireo-launcher)"
  ensure_apt busybox-static jq
  local busybox=/bin/busybox
  # Debian's `busybox` (dynamic) and `busybox-static` both ship /bin/busybox; only a static one
  # works in an image without its libraries.
  ldd "$busybox" >/dev/null 2>&1 && die "$busybox is dynamically linked (install busybox-static)"

  # Global (not local): the EXIT trap runs after main returns.
  ROOTFS=$(mktemp -d)
  trap 'rm -rf "$ROOTFS"' EXIT
  local root=$ROOTFS
  mkdir -p "$root"/{usr/bin,bin,etc,tmp,root,proc,sys,dev,run,var/tmp}
  chmod 1777 "$root/tmp" "$root/var/tmp"
  chmod 0700 "$root/root"
  install -m 0755 "$vireo" "$root/usr/bin/vireo"
  local bin
  for bin in ${bins[@]+"${bins[@]}"}; do
    [[ -x "$bin" ]] || die "--bin $bin is not an executable"
    install -m 0755 "$bin" "$root/usr/bin/$(basename "$bin")"
  done
  # `ldd` lines: "libx.so => /path/libx.so (0x..)" or "/lib64/ld-linux-x86-64.so.2 (0x..)";
  # vdso entries have no path. Copied dereferenced to the path the binary asks for.
  local lib
  while read -r lib; do
    [[ -n "$lib" ]] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
    chmod 0755 "$root$lib"
  done < <(for bin in "$vireo" ${bins[@]+"${bins[@]}"}; do ldd "$bin"; done \
    | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
  local add
  for add in ${adds[@]+"${adds[@]}"}; do
    [[ -f "${add%%:/*}" ]] || die "--add ${add%%:/*}: no such file"
    mkdir -p "$root$(dirname "/${add#*:/}")"
    install -m 0755 "${add%%:/*}" "$root/${add#*:/}"
  done
  install -m 0755 "$busybox" "$root/bin/busybox"
  local applet
  for applet in sh cp cat ls mkdir mv rm ln echo sleep env test true false chmod id; do
    ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
  chmod 0644 "$root/etc/passwd" "$root/etc/group"

  mkdir -p "$(dirname "$out")"
  local id
  id=$(write_image "$root" "$out" "$tag" '["vireo"]')
  log "wrote $out ($tag, image id $id, $(du -h "$out" | cut -f1))"
}

main "$@"
