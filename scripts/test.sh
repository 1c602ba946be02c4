#!/usr/bin/env bash
# `make test`: everything, on a fresh machine or a warm one. Installs the
# tools it needs (cached), starts a control plane of its own, runs every
# test against it, and stops it again.
#
# Its own: state in .securechat/test/ (SECURECHAT_STATE_DIR, read by
# tests/cluster/*.sh and the test harness), never the cluster `make demo`
# or `make cluster-up` keeps in .securechat/. A demo left running would
# hold fake GPU nodes a test needs; and a test run leaves the demo alone.
# So `make demo` and `make test` compose in either order.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cache/securechat/bin:$HOME/.cargo/bin:$PATH"
export SECURECHAT_STATE_DIR="$root/.securechat/test"
export KUBECONFIG="$SECURECHAT_STATE_DIR/kubeconfig"
# Build cache shared by every checkout on this machine (CI clones afresh
# each run; rebuilding every dependency on 2 cores takes most of its time).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/securechat/target}"
scripts/prune-build-cache.sh

t0=$SECONDS
step() { echo; echo "== $* ($((SECONDS - t0))s)"; }

step "tools"
tests/cluster/build-tools.sh cluster
# The real node's tools (kubelet, kube-proxy, kube-router, CoreDNS, pause,
# Prometheus, prometheus-adapter (5 min more); ~8-27 min of Go builds on a
# cold cache) are needed only by the
# node group at the end: built in the background meanwhile, niced so the
# cargo build ahead of them keeps the cores.
mkdir -p "$SECURECHAT_STATE_DIR"
node_tools_log="$SECURECHAT_STATE_DIR/node-tools.log"
# Its own session, so an early exit stops the go builds under it too.
setsid nice -n 10 tests/cluster/build-tools.sh node >"$node_tools_log" 2>&1 &
node_tools_pid=$!
stop_node_tools() { [ -z "$node_tools_pid" ] || kill -- -"$node_tools_pid" 2>/dev/null || true; }
trap stop_node_tools EXIT

step "model"
scripts/fetch-model.sh

# rustfmt, the import-cycle check and clippy: before the slow parts, so a
# lint failure costs minutes, not the whole run.
step "lint"
make -s lint

step "CRDs match the Rust types"
cargo run -q -p securechat-crds --bin crdgen -- --check

step "cluster up (its own, in ${SECURECHAT_STATE_DIR#"$root/"})"
trap 'stop_node_tools; tests/cluster/down.sh >/dev/null 2>&1 || true' EXIT
# A test cluster an interrupted run left behind holds that run's objects.
tests/cluster/down.sh >/dev/null
tests/cluster/up.sh

step "web UI test dependencies"
scripts/web-test-deps.sh

step "shared store for the replica tests (redis-server)"
scripts/valkey.sh >/dev/null

step "cargo test"
tests_ok=0
cargo test --workspace --no-fail-fast || tests_ok=$?

# The real node (tests/node/, `make node-up`): its own group, after the
# rest, so a failure here is told apart from one above. It needs root (CI
# runs as root). node-down.sh restores the host and checks that it did.
step "real node: its tools (built in the background since the tools step)"
node_ok=0
if wait "$node_tools_pid"; then
	grep '^built' "$node_tools_log" || echo "(all cached)"
else
	node_ok=$?
	echo "FAILED: building the real node's tools; $node_tools_log:" >&2
	tail -n 40 "$node_tools_log" >&2
fi
node_tools_pid=""

step "real node: images, node-0 up"
[ "$node_ok" != 0 ] || { tests/cluster/node-images.sh && tests/cluster/node-up.sh; } || node_ok=$?
if [ "$node_ok" = 0 ]; then
	step "real node: cargo test --test node"
	cargo test --test node --no-fail-fast || node_ok=$?
fi
step "real node: down, host restored"
tests/cluster/node-down.sh || node_ok=$?

step "done in $((SECONDS - t0))s"
[ "$tests_ok" = 0 ] || echo "FAILED: cargo test --workspace (above)" >&2
[ "$node_ok" = 0 ] || echo "FAILED: the real node's group (tests/node, node-up/down.sh)" >&2
[ "$tests_ok" = 0 ] && [ "$node_ok" = 0 ]
