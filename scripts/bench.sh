#!/usr/bin/env bash
# `make bench`: every benchmark of the project in one run, then a summary
# table at the top of benches/RESULTS.md (each figure, the peer's figure
# from the same run, the ratio, the machine and the date). Each benchmark
# also rewrites its own detailed section of that file.
#
#   1. criterion: sensitive-data filter MB/s, JWT verifications/s, the
#      auth.policy decision latency (release)
#   2. securechat-server vs the seed's FastAPI stack (throughput, added
#      latency; also times the seed's filter and JWT library for 1.)
#   3. our inference engine vs llama.cpp on the same GGUF, same 2 threads
#   4. concurrent streaming chat: securechat-server vs llama.cpp's
#      llama-server (aggregate tokens/s, TTFT, inter-token latency, the
#      prefix cache, multi-turn)
#   5. operator convergence and memory against the local control plane
#      (started here if it is not running, and stopped again after)
#   6. limits in the shared store (a local redis-server) vs in memory:
#      throughput and added p99 of authenticated GET /v1/models
#
# Ratios, not absolute times, are what compare across runs: these machines
# are shared. Run it on a quiet machine.
#
# Environment: BENCH_SKIP (space-separated: criterion server inference
# concurrency converge shared), plus each script's own variables.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cache/securechat/bin:$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/securechat/target}"
skip=" ${BENCH_SKIP:-} "
log() { printf '==> %s\n' "$*" >&2; }

summary=$(mktemp)
started_cluster=
cleanup() {
	rm -f "$summary"
	if [ -n "$started_cluster" ]; then tests/cluster/down.sh >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
export BENCH_SUMMARY="$summary"

scripts/fetch-model.sh >/dev/null

if [[ $skip != *" criterion "* ]]; then
	log "criterion: filter, JWT and auth.policy (release)"
	cargo bench -q --bench filter --bench jwt -- --noplot
	cargo bench -q -p securechat-crds --bench policy -- --noplot
fi
if [[ $skip != *" server "* ]]; then
	log "securechat-server vs the seed stack"
	scripts/bench-server-vs-seed.sh
fi
if [[ $skip != *" inference "* ]]; then
	log "inference vs llama.cpp"
	scripts/bench-inference-vs-llamacpp.sh
fi
if [[ $skip != *" concurrency "* ]]; then
	log "concurrent streaming chat vs llama-server"
	scripts/bench-concurrency.sh
fi
if [[ $skip != *" converge "* ]]; then
	export KUBECONFIG="${KUBECONFIG:-$root/.securechat/kubeconfig}"
	if ! kubectl get --raw /readyz >/dev/null 2>&1; then
		log "starting the local control plane for the convergence benchmark"
		tests/cluster/build-tools.sh >/dev/null
		tests/cluster/up.sh >/dev/null
		started_cluster=1
	fi
	log "operator convergence and memory"
	cargo bench -q --profile dev -p securechat-operator --bench converge
fi

if [[ $skip != *" shared "* ]]; then
	log "limits in the shared store vs in memory"
	scripts/bench-shared-state.sh
fi

python3 scripts/bench_summary.py "$summary" "$CARGO_TARGET_DIR/criterion" benches/RESULTS.md
