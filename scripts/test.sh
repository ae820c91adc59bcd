#!/usr/bin/env bash
# Runs every test on this machine:
#  1. prepares what the tests need, cached outside git: the Kubernetes control plane and node
#     binaries built from Debian's source package, and the Debian guest kernel + initramfs;
#  2. stands up the real test node (control plane + containerd + kubelet + kube-scheduler, with
#     the launcher image built from this tree and the test guest in it) for the controller's node
#     tests, and tears it down afterwards (host state restored);
#  3. the Rust suite (unit, integration under real KVM, controller against the real apiserver and
#     the real node) with cargo-nextest;
#  4. the stock-Linux end-to-end tests (tests-e2e/): Debian's kernel booted by `vireo`, directly on
#     hardware KVM or inside a nested L1 VM where /dev/kvm cannot run it (the path is printed).
# Exits non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/k8s-control-plane.sh build
scripts/guest/build-assets.sh >/dev/null
cargo build --release --quiet -p vireo-launcher -p vireo-controller

# The test node (controller/tests/node.rs reads VIREO_TEST_NODE_KUBECONFIG).
node_root=$(mktemp -d /tmp/vireo-test-node.XXXXXX)
stop_node() {
  bash scripts/k8s-node.sh stop --dir "$node_root/node" --remove >&2 || true
  bash scripts/k8s-control-plane.sh stop --dir "$node_root/cp" --remove >&2 || true
  rm -rf "$node_root"
}
trap stop_node EXIT
cargo run --release --quiet -p vireo-testguest --example write-elf -- "$node_root/testguest"
bash scripts/launcher-image.sh "$node_root/launcher.tar" --vireo target/release/vireo \
  --tag vireo/launcher:test --add "$node_root/testguest:/usr/share/vireo/testguest"
target/release/vireo-controller crd >"$node_root/crds.yaml"
kubeconfig=$(bash scripts/k8s-control-plane.sh start --dir "$node_root/cp" \
  --crds "$node_root/crds.yaml" --watch-pid $$)
bash scripts/k8s-node.sh start --kubeconfig "$kubeconfig" --dir "$node_root/node" \
  --images "$node_root/launcher.tar" --watch-pid $$ >/dev/null
export VIREO_TEST_NODE_KUBECONFIG=$kubeconfig

set +e
# The node tests run after the rest, alone: they time pause requests under 20 spinning VMs on
# this host's cores, which the rest of the suite would otherwise share.
node_tests='package(vireo-controller) & (binary(node) | binary(node_cluster))'
cargo nextest run --workspace --no-fail-fast --no-tests=pass -E "not ($node_tests)" "$@"
suite=$?
cargo nextest run --workspace --no-fail-fast --no-tests=pass -E "$node_tests" "$@"
node=$?
[ "$suite" -eq 0 ] && suite=$node
echo "rust suite exit status: $suite"
stop_node
trap - EXIT
tests-e2e/run.sh --vireo target/release/vireo
e2e=$?
set -e
[ "$suite" -eq 0 ] && [ "$e2e" -eq 0 ]
