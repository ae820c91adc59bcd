#!/usr/bin/env bash
# A real single-node Kubernetes worker for controller tests: containerd + kubelet +
# kube-scheduler on this host, joined to a control plane from scripts/k8s-control-plane.sh.
#
#   scripts/k8s-node.sh start --kubeconfig K --dir D [--images TAR...] [--watch-pid PID]
#       starts the node, imports the docker-save TARs into containerd (namespace k8s.io), waits
#       until the node is Ready and prints the node name on stdout; --watch-pid stops (and
#       removes) everything once PID exits
#   scripts/k8s-node.sh stop --dir D [--remove]
#       stops what `start` started, restores the host state it changed; --remove deletes D
#
# Needs root (containerd, runc, cgroups, iptables). Binaries: kubelet and kube-scheduler from
# `scripts/k8s-control-plane.sh build`; containerd, runc, CNI plugins, iptables from Debian.
#
# Why it looks like this:
# * containerd runs by hand (no systemd) with root, state, sockets and network namespaces under
#   D; only shim sockets (/run/containerd/s) and kubelet's hard-coded paths
#   (/var/lib/kubelet/device-plugins, /var/log/pods, /var/log/containers) are outside, and
#   `stop` removes the ones `start` created.
# * No registry: the pause image is the Kubernetes tree's own build/pause/linux/pause.c linked
#   statically, written as a docker-save tarball (cached) and set as containerd's sandbox_image.
# * containerd `restrict_oom_score_adj = true`: without CAP_SYS_RESOURCE (a VM/container host)
#   raising oom_score_adj fails and every sandbox dies with "can't get final child's PID from
#   pipe: EOF".
# * containerd's base_runtime_spec allows /dev/kvm (c 10:232) and /dev/net/tun (c 10:200) in
#   the devices cgroup, so an unprivileged launcher pod can open a hostPath CharDevice /dev/kvm.
# * kubelet: cgroupDriver cgroupfs (no systemd), failSwapOn false, tiny eviction thresholds (a
#   busy CI disk must not taint the node). No --node-ip: 127.0.0.1 is refused as loopback; the
#   kubelet picks the default-route address and the apiserver reaches it on 10250.
# * kubelet authentication: x509 client certificates signed by the kubeconfig's CA (the
#   control-plane script's apiserver presents its admin certificate via
#   --kubelet-client-certificate), anonymous off, authorization AlwaysAllow: `kubectl logs` and
#   `exec` work, nobody else on the network gets in.
# * One test node per host (fixed ports 10250/10248, shared sysctls, iptables, cgroups): a flock
#   on $LOCK, held by a small `sleep` process until `stop`.
set -euo pipefail

CACHE="${VIREO_CACHE:-$HOME/.cache/vireo}/k8s"
BIN="$CACHE/bin"
LOCK=/run/lock/vireo-k8s-node.lock
APT_PACKAGES=(containerd runc containernetworking-plugins iptables gcc libc6-dev jq)
CNI_BRIDGE=vireo-cni0
CNI_SUBNET=10.88.0.0/16
PAUSE_TAG=vireo/pause:3.4.1
# sysctls the kubelet (and the bridge plugin) set; restored by `stop`.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
  net.ipv4.conf.all.forwarding)
# Host paths the node may create outside D; `stop` deletes the ones that did not exist before.
HOST_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni /run/containerd
  /run/netns /etc/cni /opt/cni)
CGROUP_ROOT=/sys/fs/cgroup

log() { echo "k8s-node: $*" >&2; }
die() { log "error: $*"; exit 1; }

ensure_apt() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]}"
  apt-get update -q >&2
  # policy-rc.d: the containerd package must not start a system-wide daemon of its own.
  local prc=/usr/sbin/policy-rc.d created_prc=0
  if [[ ! -e $prc ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$prc" && chmod 0755 "$prc" && created_prc=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
    || { ((created_prc)) && rm -f "$prc"; die "apt-get install failed"; }
  ((created_prc)) && rm -f "$prc"
  return 0
}

wait_for() { # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

# write_image ROOTFS OUT TAG CMD_JSON: a docker-save tarball with ROOTFS as its only layer
# (same layout as scripts/launcher-image.sh).
write_image() {
  local rootfs=$1 out=$2 tag=$3 cmd=$4 work diff cfg
  work=$(mktemp -d)
  (cd "$rootfs" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort \
    | tar --no-recursion --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
      -cf "$work/layer.tar" -T -)
  diff=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  mkdir "$work/$diff"
  mv "$work/layer.tar" "$work/$diff/layer.tar"
  jq -cn --arg d "sha256:$diff" --argjson cmd "$cmd" '{
      architecture: "amd64", os: "linux", created: "1970-01-01T00:00:00Z",
      config: {Entrypoint: $cmd, WorkingDir: "/"},
      rootfs: {type: "layers", diff_ids: [$d]}}' >"$work/config.json"
  cfg=$(sha256sum "$work/config.json" | cut -d' ' -f1)
  mv "$work/config.json" "$work/$cfg.json"
  jq -cn --arg c "$cfg.json" --arg t "$tag" --arg l "$diff/layer.tar" \
    '[{Config: $c, RepoTags: [$t], Layers: [$l]}]' >"$work/manifest.json"
  tar -C "$work" --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
    -cf "$out.tmp" manifest.json "$cfg.json" "$diff" "$diff/layer.tar"
  mv "$out.tmp" "$out"
  rm -rf "$work"
}

pause_image() { # prints the path of the cached pause image tarball, building it once
  local tar="$CACHE/pause-${PAUSE_TAG##*:}.tar"
  [[ -s "$tar" ]] && { echo "$tar"; return; }
  local src
  src=$(find "$CACHE/src" -maxdepth 5 -path '*/build/pause/linux/pause.c' 2>/dev/null | head -n1)
  [[ -n "$src" ]] || die "no build/pause/linux/pause.c under $CACHE/src (run: scripts/k8s-control-plane.sh build)"
  local root
  root=$(mktemp -d)
  gcc -Os -Wall -static -DVERSION=v3.4.1-vireo -o "$root/pause" "$src" >&2 \
    || die "compiling $src failed"
  strip "$root/pause" 2>/dev/null || true
  write_image "$root" "$tar" "$PAUSE_TAG" '["/pause"]'
  rm -rf "$root"
  log "built pause image $tar"
  echo "$tar"
}

ctr_() { ctr --address "$DIR/containerd.sock" --namespace k8s.io "$@"; }

write_configs() {
  local dir=$1 ca=$2
  mkdir -p "$dir/cni/net.d" "$dir/cni/networks" "$dir/containerd" "$dir/kubelet"
  # host-local keeps its leases under D (default would be /var/lib/cni/networks).
  cat >"$dir/cni/net.d/10-vireo.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "vireo-test",
  "plugins": [
    {
      "type": "bridge", "bridge": "$CNI_BRIDGE", "isGateway": true, "ipMasq": true,
      "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$dir/cni/networks",
               "ranges": [[{"subnet": "$CNI_SUBNET"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # containerd's default spec plus /dev/kvm and /dev/net/tun in the devices cgroup allow list.
  ctr oci spec | jq '.linux.resources.devices += [
      {allow: true, type: "c", major: 10, minor: 232, access: "rwm"},
      {allow: true, type: "c", major: 10, minor: 200, access: "rwm"}]' \
    >"$dir/containerd/base-spec.json"
  cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_TAG"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      base_runtime_spec = "$dir/containerd/base-spec.json"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$dir/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
EOF
  cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$ca"}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%",
  nodefs.inodesFree: "1%"}
nodeStatusReportFrequency: 10s
# Status is computed this often (posted on change): Ready shows up sooner after start.
nodeStatusUpdateFrequency: 2s
EOF
}

# The kubeconfig's CA as a file (certificate-authority or inline certificate-authority-data).
kubeconfig_ca() {
  local kc=$1 out=$2 ca
  ca=$("$BIN/kubectl" --kubeconfig "$kc" config view --raw --minify \
    -o jsonpath='{.clusters[0].cluster.certificate-authority}')
  if [[ -n "$ca" ]]; then
    [[ $ca = /* ]] || ca="$(cd "$(dirname "$kc")" && pwd)/$ca"
    cp "$ca" "$out"
  else
    "$BIN/kubectl" --kubeconfig "$kc" config view --raw --minify \
      -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$out"
  fi
  [[ -s "$out" ]] || die "no cluster CA in $kc"
}

node_ready() {
  [[ $("$BIN/kubectl" --kubeconfig "$1" get node "$2" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

record_host_state() {
  local dir=$1 s p
  : >"$dir/host/sysctls"
  for s in "${SYSCTLS[@]}"; do
    echo "$s=$(sysctl -n "$s")" >>"$dir/host/sysctls"
  done
  : >"$dir/host/created-paths"
  for p in "${HOST_PATHS[@]}"; do
    [[ -e $p ]] || echo "$p" >>"$dir/host/created-paths"
  done
  if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
    # Only this script makes it: a leftover of a node that was never stopped.
    log "removing leftover bridge $CNI_BRIDGE"
    ip link del "$CNI_BRIDGE"
  fi
  local ipt
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    "$ipt-save" 2>/dev/null | sed -n 's/^:\([^ ]*\) .*/\1/p' | sort -u >"$dir/host/$ipt-chains" || true
  done
}

cmd_start() {
  local kubeconfig="" dir="" watch_pid="" images=()
  while (($#)); do
    case $1 in
      --kubeconfig) kubeconfig=$2; shift 2 ;;
      --dir) dir=$2; shift 2 ;;
      --watch-pid) watch_pid=$2; shift 2 ;;
      --images)
        shift
        while (($#)) && [[ $1 != --* ]]; do images+=("$1"); shift; done
        ;;
      *) die "start: unknown flag $1" ;;
    esac
  done
  [[ -n "$kubeconfig" && -n "$dir" ]] || die "start needs --kubeconfig K --dir D"
  [[ $(id -u) -eq 0 ]] || die "must run as root"
  [[ -f "$kubeconfig" ]] || die "no kubeconfig at $kubeconfig"
  kubeconfig=$(realpath "$kubeconfig")
  local img
  for img in "${images[@]}"; do [[ -f "$img" ]] || die "no image tarball at $img"; done
  [[ -x "$BIN/kubelet" && -x "$BIN/kube-scheduler" && -x "$BIN/kubectl" ]] \
    || die "kubelet/kube-scheduler missing in $BIN; run: scripts/k8s-control-plane.sh build"
  ensure_apt

  dir=$(realpath -m "$dir")
  DIR=$dir
  # unix socket paths are limited to 108 bytes
  ((${#dir} < 80)) || die "--dir path too long for containerd's socket: $dir"
  mkdir -p "$(dirname "$LOCK")"
  exec 9>>"$LOCK"
  if ! flock -n 9; then
    die "another test node holds $LOCK (run dir: $(cat "$LOCK" 2>/dev/null || echo unknown)); stop it first: scripts/k8s-node.sh stop --dir DIR"
  fi
  echo "$dir" >"$LOCK"
  mkdir -p "$dir"
  if [[ -d "$dir/host" ]]; then
    # A run that was never stopped (its lock holder died with the host or was killed): undo it
    # first, so its recorded host state (the real originals) is restored, not recorded again.
    log "cleaning up an earlier run in $dir"
    cmd_stop --dir "$dir" 9>&-
    rm -rf "${dir:?}/host"
  fi
  # The lock lives as long as this holder (it inherits fd 9); everything else is started after
  # fd 9 is closed so a leftover process cannot keep the lock.
  setsid sleep infinity </dev/null >/dev/null 2>&1 &
  echo $! >"$dir/lock.pid"
  exec 9>&-
  # From here on a failure undoes what was started (the logs stay in D).
  trap 'rc=$?; if ((rc)); then log "start failed; stopping"; cmd_stop --dir "$DIR" || true; fi' EXIT

  local port
  for port in 10250 10248; do
    # bash's /dev/tcp: a connection means another kubelet (or something else) has the port.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "port $port is in use (another kubelet?)"
    fi
  done
  mkdir -p "$dir/host"
  record_host_state "$dir"
  local ca="$dir/ca.crt"
  kubeconfig_ca "$kubeconfig" "$ca"
  write_configs "$dir" "$ca"
  local pause
  pause=$(pause_image)

  local t0=$SECONDS
  setsid containerd --config "$dir/containerd/config.toml" \
    >"$dir/containerd.log" 2>&1 </dev/null &
  echo $! >"$dir/containerd.pid"
  if ! wait_for 30 ctr_ version; then
    tail -n 30 "$dir/containerd.log" >&2
    die "containerd did not start (log: $dir/containerd.log)"
  fi
  for img in "$pause" "${images[@]}"; do
    ctr_ images import "$img" >&2 || die "importing $img failed"
  done

  setsid "$BIN/kubelet" \
    --kubeconfig "$kubeconfig" \
    --config "$dir/kubelet/config.yaml" \
    --root-dir "$dir/kubelet" \
    --cert-dir "$dir/kubelet/pki" \
    --container-runtime remote \
    --container-runtime-endpoint "unix://$dir/containerd.sock" \
    --runtime-request-timeout 5m \
    >"$dir/kubelet.log" 2>&1 </dev/null &
  echo $! >"$dir/kubelet.pid"

  setsid "$BIN/kube-scheduler" \
    --kubeconfig "$kubeconfig" \
    --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
    --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port "$(free_port)" --port 0 \
    >"$dir/scheduler.log" 2>&1 </dev/null &
  echo $! >"$dir/scheduler.pid"

  if [[ -n "$watch_pid" ]]; then
    # Stop everything once the owning process (a test binary) exits, however it exits.
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; exec bash "$2" stop --dir "$3" --remove' \
      _ "$watch_pid" "$(realpath "$0")" "$dir" >"$dir/watchdog.log" 2>&1 </dev/null &
    echo $! >"$dir/watchdog.pid"
  fi

  local node
  node=$(hostname | tr '[:upper:]' '[:lower:]')
  echo "$node" >"$dir/node-name"
  echo "$kubeconfig" >"$dir/kubeconfig-path"
  local deadline=$((SECONDS + 120)) name
  until node_ready "$kubeconfig" "$node"; do
    for name in containerd kubelet scheduler; do
      if ! alive "$(cat "$dir/$name.pid")"; then
        tail -n 30 "$dir/$name.log" >&2
        die "$name exited (log: $dir/$name.log)"
      fi
    done
    if ((SECONDS >= deadline)); then
      tail -n 30 "$dir/kubelet.log" >&2
      die "node $node did not become Ready within 120 s (log: $dir/kubelet.log)"
    fi
    sleep 0.2
  done
  log "node $node Ready after $((SECONDS - t0)) s (run dir $dir)"
  trap - EXIT
  echo "$node"
}

# --- stop ---------------------------------------------------------------------------------------

alive() { # alive PID: exists and is not a zombie (our daemons are reaped by init, maybe late)
  local stat
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

kill_pidfile() { # kill_pidfile FILE COMM: TERM, wait up to 5 s, KILL (only if named COMM)
  local pf=$1 comm=$2 pid
  [[ -f $pf ]] || return 0
  pid=$(cat "$pf")
  # The comm check keeps a recycled pid (stale run dir after a reboot) from being killed.
  if [[ $pid != "$$" ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -9 "$pid" 2>/dev/null
    for _ in $(seq 20); do alive "$pid" || break; sleep 0.1; done
  fi
  rm -f "$pf"
}

descendants() { # descendants PID...: all descendant pids (not the PIDs themselves)
  local all
  all=$(ps -e -o pid=,ppid=)
  local frontier=("$@") next pid
  while ((${#frontier[@]})); do
    next=()
    for pid in "${frontier[@]}"; do
      while read -r c; do
        [[ -n $c ]] && { echo "$c"; next+=("$c"); }
      done < <(awk -v p="$pid" '$2 == p {print $1}' <<<"$all")
    done
    frontier=("${next[@]}")
  done
}

kubepods_cgroups() { # kubepods cgroup dirs, deepest first
  local c
  for c in "$CGROUP_ROOT"/*/kubepods "$CGROUP_ROOT"/kubepods "$CGROUP_ROOT"/*/kubepods.slice; do
    [[ -d $c ]] && find "$c" -depth -type d
  done
  return 0
}

kill_pods() {
  local dir=$1 shims=() pids=() cg
  # containerd-shim-runc-v2 of this containerd: "-address D/containerd.sock" in its command line.
  mapfile -t shims < <(pgrep -f -- "containerd-shim.* -address $dir/containerd.sock( |\$)" || true)
  if ((${#shims[@]})); then
    mapfile -t pids < <(descendants "${shims[@]}")
  fi
  # Pod processes also sit in the kubepods cgroups (some may have left the shim's tree).
  while read -r cg; do
    [[ -f $cg/cgroup.procs ]] && mapfile -t -O "${#pids[@]}" pids <"$cg/cgroup.procs"
  done < <(kubepods_cgroups)
  ((${#pids[@]} + ${#shims[@]})) || return 0
  # Each cgroup hierarchy lists the same processes.
  mapfile -t pids < <(printf '%s\n' "${pids[@]}" | grep -E '^[0-9]+$' | sort -un || true)
  log "killing ${#shims[@]} shims and ${#pids[@]} pod processes"
  kill -9 "${pids[@]}" "${shims[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    local alive=0 p
    for p in "${pids[@]}" "${shims[@]}"; do alive "$p" && alive=1 && break; done
    ((alive)) || break
    sleep 0.1
  done
}

unmount_under() { # unmount_under DIR...: every mount point at or below each DIR, deepest first
  local d m
  for d in "$@"; do
    [[ -e $d ]] || continue
    d=$(realpath "$d")
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
    done < <(awk '{print $5}' /proc/self/mountinfo | sed 's/\\040/ /g' \
      | awk -v d="$d" '$0 == d || index($0, d "/") == 1' | sort -r)
  done
}

remove_iptables() { # KUBE-* and CNI-* chains that did not exist before `start`
  local dir=$1 ipt t chain rule
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    local before="$dir/host/$ipt-chains"
    for t in filter nat mangle raw; do
      local chains=()
      mapfile -t chains < <("$ipt" -t "$t" -S 2>/dev/null \
        | sed -n 's/^-N \(\(KUBE\|CNI\)-[^ ]*\)$/\1/p' \
        | { if [[ -f $before ]]; then grep -vxF -f "$before"; else cat; fi; } || true)
      ((${#chains[@]})) || continue
      # Rules elsewhere that jump to them first, then flush and delete the chains.
      local pat
      pat=$(printf '%s\n' "${chains[@]}" | sed 's/.*/-j &( |$)/' | paste -sd'|')
      while read -r rule; do
        # shellcheck disable=SC2086 # the rule is re-split into its iptables arguments
        eval "$ipt -t $t ${rule/#-A/-D}" 2>/dev/null || true
      done < <("$ipt" -t "$t" -S | grep -E -- "^-A " | grep -E -- "$pat" || true)
      for chain in "${chains[@]}"; do "$ipt" -t "$t" -F "$chain" 2>/dev/null || true; done
      for chain in "${chains[@]}"; do "$ipt" -t "$t" -X "$chain" 2>/dev/null || true; done
    done
  done
}

restore_sysctls() {
  local f=$1/host/sysctls kv
  [[ -f $f ]] || return 0
  while read -r kv; do
    [[ -n $kv ]] || continue
    sysctl -q -w "$kv" >/dev/null 2>&1 || log "cannot restore $kv"
  done <"$f"
}

cmd_stop() {
  local dir="" remove=0
  while (($#)); do
    case $1 in
      --dir) dir=$2; shift 2 ;;
      --remove) remove=1; shift ;;
      *) die "stop: unknown flag $1" ;;
    esac
  done
  [[ -n "$dir" ]] || die "stop needs --dir D"
  [[ -d "$dir" ]] || { log "no run dir $dir"; return 0; }
  dir=$(cd "$dir" && pwd)
  # Only a directory `start` made (it records host state there).
  [[ -d "$dir/host" || -f "$dir/lock.pid" ]] || die "$dir is not a k8s-node.sh run dir"

  kill_pidfile "$dir/watchdog.pid" bash
  # Deregister the node while its kubelet is still around (best effort: the control plane may be
  # gone already), so a later node on the same control plane starts without stale pods.
  if [[ -f $dir/kubeconfig-path && -f $dir/node-name ]]; then
    "$BIN/kubectl" --kubeconfig "$(cat "$dir/kubeconfig-path")" --request-timeout 3s \
      delete node "$(cat "$dir/node-name")" --wait=false >/dev/null 2>&1 || true
  fi
  kill_pidfile "$dir/scheduler.pid" kube-scheduler
  kill_pidfile "$dir/kubelet.pid" kubelet
  kill_pods "$dir"
  kill_pidfile "$dir/containerd.pid" containerd
  kill_pods "$dir" # shims that were starting while containerd stopped

  # Mounts: overlay rootfs, shm and netns (under containerd's state dir), pod volumes (kubelet).
  unmount_under "$dir" /run/containerd /var/lib/kubelet
  ip link del "$CNI_BRIDGE" 2>/dev/null || true
  remove_iptables "$dir"
  local cg
  while read -r cg; do rmdir "$cg" 2>/dev/null || log "cannot remove cgroup $cg"; done \
    < <(kubepods_cgroups)
  restore_sysctls "$dir"
  if [[ -f $dir/host/created-paths ]]; then
    local p
    while read -r p; do
      [[ -n $p ]] || continue
      unmount_under "$p"
      rm -rf "$p"
    done <"$dir/host/created-paths"
  fi
  # Last: releases the one-node-per-host lock.
  kill_pidfile "$dir/lock.pid" sleep
  log "stopped node in $dir"
  if ((remove)); then rm -rf "${dir:?}"; fi
}

case ${1:-} in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *)
    echo "usage: $0 start --kubeconfig K --dir D [--images TAR...] [--watch-pid PID]" \
      "| stop --dir D [--remove]" >&2
    exit 2
    ;;
esac
