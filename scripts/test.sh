#!/usr/bin/env bash
# `make test`: everything, on a fresh machine or a warm one. Installs the
# tools it needs (cached), starts the local control plane if none is up,
# runs every test, and stops the control plane again if it started it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cache/securechat/bin:$HOME/.cargo/bin:$PATH"
export KUBECONFIG="$root/.securechat/kubeconfig"
# Build cache shared by every checkout on this machine (CI clones afresh
# each run; rebuilding every dependency on 2 cores takes most of its time).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/securechat/target}"
scripts/prune-build-cache.sh

t0=$SECONDS
step() { echo; echo "== $* ($((SECONDS - t0))s)"; }

step "tools"
tests/cluster/build-tools.sh

step "model"
scripts/fetch-model.sh

# rustfmt, the import-cycle check and clippy: before the slow parts, so a
# lint failure costs minutes, not the whole run.
step "lint"
make -s lint

step "CRDs match the Rust types"
cargo run -q -p securechat-crds --bin crdgen -- --check

started_cluster=0
cleanup() {
	if [ "$started_cluster" = 1 ]; then
		tests/cluster/down.sh >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT
if ! kubectl get --raw /readyz >/dev/null 2>&1; then
	step "cluster up"
	tests/cluster/up.sh
	started_cluster=1
fi

step "web UI test dependencies"
scripts/web-test-deps.sh

step "cargo test"
cargo test --workspace --no-fail-fast

step "done in $((SECONDS - t0))s"
