#!/usr/bin/env bash
# Vireo's local Kubernetes control plane for controller tests: etcd + kube-apiserver +
# kube-controller-manager, built from Debian bookworm packages only.
#
#   scripts/k8s-control-plane.sh build            # idempotent; caches into $VIREO_CACHE/k8s
#   scripts/k8s-control-plane.sh start [--crds F] [--dir D] [--port P] [--watch-pid PID]
#                                                  # prints the kubeconfig path on stdout;
#                                                  # --crds applies F before the controller-manager
#                                                  # starts; --watch-pid stops all when PID exits
#   scripts/k8s-control-plane.sh stop  [--dir D] [--remove]
#                                                  # stops only what `start` started (pidfiles);
#                                                  # --remove deletes the run dir afterwards
#   scripts/k8s-control-plane.sh env               # prints BIN dir and paths (for harnesses)
#
# Layout of the cache (outside git; default ~/.cache/vireo/k8s):
#   bin/{kube-apiserver,kube-controller-manager,etcd,kubectl}   the binaries tests use
#   bin/{kubelet,kube-scheduler}                                 for scripts/k8s-node.sh
#   src/                                                         Debian source tree (build only)
#   deb/                                                         extracted kubernetes-client .deb
#
# Why these steps:
# * kube-apiserver / kube-controller-manager come from Debian's `kubernetes` SOURCE package
#   (v1.20.2 with vendor/), compiled with Debian's golang-go 1.19.
# * The vendored modern-go/reflect2 1.0.1 crashes under Go >= 1.18 on the first custom object; it
#   and json-iterator are replaced by Debian's packaged (fixed) sources before building.
# * kubectl comes from Debian's `kubernetes-client` .deb, extracted into the cache rather than
#   installed (another `kubectl` package may own /usr/bin/kubectl on the host).
# * etcd is Debian's `etcd-server` package (/usr/bin/etcd), symlinked into bin/.
# * The apiserver presents the admin client certificate to kubelets (`kubectl logs/exec` on a
#   scripts/k8s-node.sh node): that kubelet trusts this CA and refuses anonymous requests.
# * kubelet and kube-scheduler (for scripts/k8s-node.sh, a real test node) come from the same
#   tree and Go cache, built in a second `make` so an existing control-plane build is reused.
set -euo pipefail

CACHE="${VIREO_CACHE:-$HOME/.cache/vireo}/k8s"
BIN="$CACHE/bin"
APT_PACKAGES=(dpkg-dev golang-go rsync jq etcd-server openssl make ca-certificates
  golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev)
DEB_SRC_LIST=/etc/apt/sources.list.d/vireo-deb-src.sources

log() { echo "k8s-control-plane: $*" >&2; }
die() { log "error: $*"; exit 1; }

have_binaries() {
  [[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" && -x "$BIN/etcd" \
    && -x "$BIN/kubectl" ]]
}

have_node_binaries() {
  [[ -x "$BIN/kubelet" && -x "$BIN/kube-scheduler" ]]
}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

ensure_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  local need_src=0
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ \
    && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    log "enabling deb-src in $DEB_SRC_LIST"
    as_root tee "$DEB_SRC_LIST" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    need_src=1
  fi
  if ((${#missing[@]} || need_src)); then
    as_root apt-get update -q
  fi
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  fi
}

build_kube() { # build_kube TARGET...  (cmd/NAME; installs NAME into $BIN)
  mkdir -p "$CACHE/src" "$BIN"
  local tree
  tree=$(find "$CACHE/src" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
  if [[ -z "$tree" ]]; then
    log "fetching Debian source package kubernetes"
    (cd "$CACHE/src" && apt-get source --download-only kubernetes >&2 \
      && dpkg-source --no-check -x kubernetes_*.dsc >&2)
    tree=$(find "$CACHE/src" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
    [[ -n "$tree" ]] || die "apt-get source kubernetes produced no tree"
  fi
  log "patching vendored reflect2/json-iterator in $tree"
  local gocode=/usr/share/gocode/src/github.com
  for pair in modern-go/reflect2 json-iterator/go; do
    [[ -d "$gocode/$pair" ]] || die "missing $gocode/$pair"
    rm -rf "${tree:?}/vendor/github.com/$pair"
    mkdir -p "$tree/vendor/github.com/$pair"
    # Only Go sources and license files: tests/examples would drag in unvendored imports.
    (cd "$gocode/$pair" && find . -maxdepth 1 -type f \( -name '*.go' -o -name 'LICENSE*' \
      -o -name '*.s' \) ! -name '*_test.go' -exec cp {} "$tree/vendor/github.com/$pair/" \;)
  done
  log "building $* (several minutes on a cold Go cache)"
  (cd "$tree" && GOFLAGS=-mod=vendor GOPROXY=off CGO_ENABLED=0 \
    KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=debian \
    make WHAT="$*" >&2)
  local out="$tree/_output/local/bin/linux/amd64" t
  [[ -x "$out/${1##*/}" ]] || out="$tree/_output/bin"
  for t in "$@"; do install -m 0755 "$out/${t##*/}" "$BIN/"; done
}

fetch_kubectl() {
  mkdir -p "$CACHE/deb" "$BIN"
  (cd "$CACHE/deb" && rm -f kubernetes-client_*.deb && apt-get download kubernetes-client >&2)
  rm -rf "$CACHE/deb/root"
  dpkg-deb -x "$CACHE"/deb/kubernetes-client_*.deb "$CACHE/deb/root"
  install -m 0755 "$CACHE/deb/root/usr/bin/kubectl" "$BIN/kubectl"
}

cmd_build() {
  if have_binaries && have_node_binaries; then
    log "reusing cached binaries in $BIN"
    echo "$BIN"
    return
  fi
  ensure_apt
  [[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" ]] \
    || build_kube cmd/kube-apiserver cmd/kube-controller-manager
  # A separate make: a cache built before the node existed only needs these two (~100 s).
  have_node_binaries || build_kube cmd/kubelet cmd/kube-scheduler
  [[ -x "$BIN/kubectl" ]] || fetch_kubectl
  ln -sf /usr/bin/etcd "$BIN/etcd"
  { have_binaries && have_node_binaries; } || die "build finished but binaries are missing in $BIN"
  log "binaries ready in $BIN"
  echo "$BIN"
}

# --- start / stop -------------------------------------------------------------------------------

wait_for() { # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

gen_pki() {
  local d=$1
  [[ -f "$d/pki/admin.crt" ]] && return
  mkdir -p "$d/pki" && cd "$d/pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=vireo-test-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >san.ext
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout apiserver.key -out apiserver.csr 2>/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile san.ext -out apiserver.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=vireo-admin" \
    -keyout admin.key -out admin.csr 2>/dev/null
  # An extension makes it an X.509 v3 certificate; rustls/webpki refuses v1 client certs.
  printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' >client.ext
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile client.ext -out admin.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

free_port() {
  # A port the kernel hands out now; a race with other users is possible but unlikely.
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

cmd_start() {
  local dir="" crds="" port="" watch_pid=""
  while (($#)); do
    case $1 in
      --dir) dir=$2; shift 2 ;;
      --watch-pid) watch_pid=$2; shift 2 ;;
      --crds) crds=$2; shift 2 ;;
      --port) port=$2; shift 2 ;;
      *) die "start: unknown flag $1" ;;
    esac
  done
  have_binaries || die "control plane binaries missing in $BIN; run: scripts/k8s-control-plane.sh build"
  dir=${dir:-${VIREO_RUN_DIR:-$CACHE/run}}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [[ -f "$dir/apiserver.pid" ]] && kill -0 "$(cat "$dir/apiserver.pid")" 2>/dev/null; then
    die "a control plane already runs from $dir (stop it first)"
  fi
  port=${port:-$(free_port)}
  local etcd_port etcd_peer kcm_port
  etcd_port=$(free_port); etcd_peer=$(free_port); kcm_port=$(free_port)
  gen_pki "$dir"
  local pki="$dir/pki"

  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: vireo-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: vireo-test
  context: {cluster: vireo-test, user: admin, namespace: default}
current-context: vireo-test
EOF

  rm -rf "$dir/etcd-data"
  setsid "$BIN/etcd" --name vireo --data-dir "$dir/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "vireo=http://127.0.0.1:$etcd_peer" \
    --unsafe-no-fsync --quota-backend-bytes 1073741824 \
    >"$dir/etcd.log" 2>&1 </dev/null &
  echo $! >"$dir/etcd.pid"

  setsid "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --secure-port "$port" --advertise-address 127.0.0.1 \
    --insecure-port 0 \
    --cert-dir "$dir/apiserver-certs" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --authorization-mode RBAC \
    --kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --disable-admission-plugins ServiceAccount \
    --allow-privileged=true \
    --watch-cache=true \
    >"$dir/apiserver.log" 2>&1 </dev/null &
  echo $! >"$dir/apiserver.pid"

  # A private discovery cache: it is filled before the CRDs exist, so callers should not share it.
  local kubectl=("$BIN/kubectl" --kubeconfig "$dir/kubeconfig" --cache-dir "$dir/start-cache")
  if ! wait_for 60 "${kubectl[@]}" get --raw /readyz; then
    tail -n 30 "$dir/apiserver.log" >&2
    die "kube-apiserver did not become ready (log: $dir/apiserver.log)"
  fi
  if [[ -n "$crds" ]]; then
    "${kubectl[@]}" apply -f "$crds" >&2
    # Retried: `kubectl wait` fails at once (instead of waiting) while a just-created CRD has
    # no .status.conditions yet.
    if ! wait_for 60 "${kubectl[@]}" wait --for condition=established --timeout=10s crd --all; then
      "${kubectl[@]}" get crd -o wide >&2 || true
      die "CRDs did not become established"
    fi
  fi

  setsid "$BIN/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --port 0 \
    --leader-elect=false \
    --use-service-account-credentials=false \
    --service-account-private-key-file "$pki/sa.key" \
    --root-ca-file "$pki/ca.crt" \
    --controllers '*,-serviceaccount-token' \
    >"$dir/controller-manager.log" 2>&1 </dev/null &
  echo $! >"$dir/controller-manager.pid"
  if [[ -n "$watch_pid" ]]; then
    # Stop everything once the owning process (a test binary) exits, however it exits.
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; exec bash "$2" stop --dir "$3" --remove' \
      _ "$watch_pid" "$(realpath "$0")" "$dir" >"$dir/watchdog.log" 2>&1 </dev/null &
  fi
  echo "$dir/kubeconfig"
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
  dir=${dir:-${VIREO_RUN_DIR:-$CACHE/run}}
  for name in controller-manager apiserver etcd; do
    local pf="$dir/$name.pid"
    [[ -f "$pf" ]] || continue
    local pid; pid=$(cat "$pf")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pf"
  done
  log "stopped control plane in $dir"
  if ((remove)) && [[ -f "$dir/kubeconfig" ]]; then rm -rf "${dir:?}"; fi
}

case ${1:-} in
  build) shift; cmd_build "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  env) echo "BIN=$BIN"; echo "CACHE=$CACHE" ;;
  *)
    echo "usage: $0 build | start [--crds FILE] [--dir DIR] [--port PORT] [--watch-pid PID]" \
      "| stop [--dir DIR] | env" >&2
    exit 2
    ;;
esac
