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

# The Go tools (tests/cluster/build-tools.sh): the control plane's, then the
# real node's (kubelet, kube-proxy, kube-router, CoreDNS, pause, Prometheus,
# prometheus-adapter). On a cold cache they are most of an hour of Go builds;
# here they run in the background, niced, while cargo lints and builds the
# tests, so the two fill each other's idle cores. The cluster waits for the
# control plane's; only the node group waits for the rest.
step "tools: built in the background (${SECURECHAT_STATE_DIR#"$root/"}/*-tools.log)"
mkdir -p "$SECURECHAT_STATE_DIR"
cluster_tools_log="$SECURECHAT_STATE_DIR/cluster-tools.log"
cluster_tools_rc="$SECURECHAT_STATE_DIR/cluster-tools.rc"
node_tools_log="$SECURECHAT_STATE_DIR/node-tools.log"
rm -f "$cluster_tools_rc"
# Its own session, so an early exit stops the go builds under it too.
setsid nice -n 10 bash -c '
	tests/cluster/build-tools.sh cluster >"$1" 2>&1
	echo $? >"$2"
	exec tests/cluster/build-tools.sh node >"$3" 2>&1' \
	_ "$cluster_tools_log" "$cluster_tools_rc" "$node_tools_log" &
tools_pid=$!
stop_tools() { [ -z "$tools_pid" ] || kill -- -"$tools_pid" 2>/dev/null || true; }
trap stop_tools EXIT

step "model"
scripts/fetch-model.sh

# rustfmt, the import-cycle check and clippy: before the slow parts, so a
# lint failure costs minutes, not the whole run.
step "lint"
make -s lint

step "CRDs match the Rust types"
cargo run -q -p securechat-crds --bin crdgen -- --check

# Every test binary, while the Go tools may still be building.
step "cargo test --no-run (the test build)"
tests_ok=0
cargo test --workspace --no-run || tests_ok=$?

step "tools: the control plane's"
while [ ! -f "$cluster_tools_rc" ] && kill -0 "$tools_pid" 2>/dev/null; do sleep 2; done
if [ "$(cat "$cluster_tools_rc" 2>/dev/null)" != 0 ]; then
	echo "FAILED: building the control plane's tools; $cluster_tools_log:" >&2
	tail -n 40 "$cluster_tools_log" >&2
	exit 1
fi
grep '^built' "$cluster_tools_log" || echo "(all cached)"

step "cluster up (its own, in ${SECURECHAT_STATE_DIR#"$root/"})"
trap 'stop_tools; tests/cluster/down.sh >/dev/null 2>&1 || true' EXIT
# A test cluster an interrupted run left behind holds that run's objects.
tests/cluster/down.sh >/dev/null
tests/cluster/up.sh

step "web UI test dependencies"
scripts/web-test-deps.sh

step "shared store for the replica tests (redis-server)"
scripts/valkey.sh >/dev/null

step "cargo test"
[ "$tests_ok" != 0 ] || cargo test --workspace --no-fail-fast || tests_ok=$?

# The real node (tests/node/, `make node-up`): its own group, after the
# rest, so a failure here is told apart from one above. It needs root (CI
# runs as root). node-down.sh restores the host and checks that it did.
step "real node: its tools (built in the background since the tools step)"
node_ok=0
if wait "$tools_pid"; then
	grep '^built' "$node_tools_log" || echo "(all cached)"
else
	node_ok=$?
	echo "FAILED: building the real node's tools; $node_tools_log:" >&2
	tail -n 40 "$node_tools_log" >&2
fi
tools_pid=""

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
