#!/usr/bin/env bash
# The checks that need a real NVIDIA GPU, as one script that a GPU machine
# without cargo can run from prebuilt binaries:
#
#   scripts/check-gpu.sh build [DIR]   # here: CUDA build into DIR (no GPU needed)
#   scripts/check-gpu.sh run [DIR]     # on the GPU machine: only DIR is needed
#   scripts/check-gpu.sh [DIR]         # both (make check-gpu)
#
# DIR (default .securechat/gpu-check) receives bin/ (the CUDA server taken
# from the CUDA image of `make images`, built when missing or from another
# commit; the GPU test binaries; the load generator), lib/ (the CUDA
# user-space libraries from that image; the driver's libcuda comes from the
# machine), models/ (the default GGUF) and tests.txt (the test binaries,
# one a line).
# Carry DIR to the GPU machine, then `scripts/check-gpu.sh run DIR`, or run
# DIR/check-gpu.sh (a copy of this script) from inside it.
#
# What `run` checks, failing (never skipping) without a GPU:
#   1. nvidia-smi sees a GPU (its name is recorded with the figures);
#   2. tests/inference_cuda.rs: greedy parity GPU vs the exact CPU model
#      for SmolLM2 (per-step logits within mean |Δ| 1e-2 / max 0.1, the same
#      32 greedy tokens on at least 4 of 5 prompts) and for a tiny random
#      GLM-4 checkpoint (f32 within 1e-3 of the logit scale with the same 16
#      greedy tokens, bf16 within 0.1), batching on the device (SmolLM2
#      through the engine; GLM-4's batched step against its logits alone),
#      speed;
#   3. the CUDA image's server binary on the GPU serves a streamed chat
#      answer over HTTPS (`serve --dev --device cuda`, an Admin key, one
#      streamed request);
#   4. throughput at 1, 8 and 32 concurrent sequences through that server
#      (benches/chatload.rs: aggregate completion tokens/s, TTFT p95),
#      appended to RESULTS (default benches/RESULTS.md, else DIR/RESULTS.md)
#      with the card's name.
#
# Environment: IMAGE_OUT (where `make images` writes, default target/images),
# CONCURRENCY ("1 8 32"), REQUESTS (per client, 2), MAX_TOKENS (64),
# RESULTS (the markdown file to append to), CARGO_TARGET_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'check-gpu: %s\n' "$*" >&2; exit 1; }

# The GPU tests; each must be built with `--features cuda`.
GPU_TESTS=(inference_cuda)

build() { # DIR
  local dir="$1"
  cd "$ROOT"
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v cargo >/dev/null || die "build needs cargo (run 'check-gpu.sh run DIR' on a machine without it)"
  scripts/fetch-model.sh >/dev/null
  # shellcheck source=lib/default-model.sh
  . scripts/lib/default-model.sh
  # shellcheck source=lib/cuda.sh
  . scripts/lib/cuda.sh
  local target="${CARGO_TARGET_DIR:-$ROOT/target}"
  rm -rf "$dir"
  mkdir -p "$dir/bin" "$dir/lib" "$dir/models"

  # The server binary and the CUDA libraries come out of the CUDA image
  # (`make images`), so what runs on the GPU is what a GPU pod runs. An
  # image from another commit is rebuilt.
  local images="${IMAGE_OUT:-$ROOT/target/images}" image head
  image="$images/securechat-server-cuda"
  head="$(git rev-parse HEAD)"
  if [ "$(image_revision "$image" 2>/dev/null)" != "$head" ]; then
    log "building the images for $head (make images; the CUDA server is a release build)"
    scripts/images.sh
  fi
  [ "$(image_revision "$image")" = "$head" ] || die "$image is not from $head after make images"
  log "taking the server and the CUDA libraries from $image"
  python3 - "$image" "$dir" "$CUDA_IMAGE_LIB_DIR" <<'PY'
import json, os, sys, tarfile
layout, out, lib_dir = sys.argv[1], sys.argv[2], sys.argv[3].strip("/")
blob = lambda d: os.path.join(layout, "blobs", *d.split(":"))
index = json.load(open(os.path.join(layout, "index.json")))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
found = {"bin": 0, "lib": 0}
for layer in manifest["layers"]:
    with tarfile.open(blob(layer["digest"]), "r:*") as tar:
        for m in tar:
            name = m.name.lstrip("./")
            if name == "usr/local/bin/securechat-server":
                kind = "bin"
            elif os.path.dirname(name) == lib_dir and (m.isfile() or m.issym()):
                kind = "lib"
            else:
                continue
            dest = os.path.join(out, kind, os.path.basename(name))
            if m.issym():
                os.symlink(m.linkname, dest)
            else:
                with tar.extractfile(m) as src, open(dest, "wb") as dst:
                    dst.write(src.read())
                os.chmod(dest, 0o755 if kind == "bin" else 0o644)
            found[kind] += 1
if not found["bin"] or not found["lib"]:
    sys.exit(f"{layout}: no server binary or no CUDA libraries in its layers ({found})")
PY

  log "building the GPU tests (--no-run, compute_$CUDA_IMAGE_COMPUTE_CAP as the image) and the load generator"
  local args=()
  for t in "${GPU_TESTS[@]}"; do args+=(--test "$t"); done
  (
    eval "$(scripts/cuda-toolkit.sh)"
    CUDA_COMPUTE_CAP=$CUDA_IMAGE_COMPUTE_CAP cargo test -q -p securechat-server --features cuda "${args[@]}" --no-run \
      --message-format=json 2>/dev/null
  ) | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])
' >"$dir/built.txt"
  [ -s "$dir/built.txt" ] || die "no GPU test binary was built"
  : >"$dir/tests.txt"
  while read -r exe; do
    cp "$exe" "$dir/bin/"
    basename "$exe" >>"$dir/tests.txt"
  done <"$dir/built.txt"
  rm "$dir/built.txt"
  cargo build -q --example chatload
  cp "$target/debug/examples/chatload" "$dir/bin/"
  cp "$DEFAULT_MODEL" "$dir/models/"
  # Every library the binaries link must be in lib/ (the image's) or on
  # this host, but the driver's libcuda, which the GPU machine brings.
  local missing
  missing="$(LD_LIBRARY_PATH="$dir/lib" ldd "$dir"/bin/* 2>/dev/null | grep 'not found' | grep -v 'libcuda.so' || true)"
  [ -z "$missing" ] || die "the binaries link libraries the CUDA image lacks: $missing"
  cp "$0" "$dir/check-gpu.sh"
  log "built into $dir ($(du -sh "$dir" | cut -f1)); run: scripts/check-gpu.sh run $dir"
}

# image_revision LAYOUT: the commit an OCI layout of `make images` was built from.
image_revision() {
  python3 - "$1" <<'PY'
import json, os, sys
layout = sys.argv[1]
blob = lambda d: os.path.join(layout, "blobs", *d.split(":"))
index = json.load(open(os.path.join(layout, "index.json")))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
config = json.load(open(blob(manifest["config"]["digest"])))
print(config["config"]["Labels"]["org.opencontainers.image.revision"])
PY
}

run() { # DIR
  local dir
  dir="$(cd "$1" && pwd)"
  [ -s "$dir/tests.txt" ] || die "$dir/tests.txt is missing: run 'scripts/check-gpu.sh build $1' first"
  command -v nvidia-smi >/dev/null || die "no nvidia-smi: this machine has no NVIDIA driver, so no GPU to check"
  local card
  card="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)" ||
    die "nvidia-smi sees no GPU"
  [ -n "$card" ] || die "nvidia-smi lists no GPU"
  log "GPU: $card"
  export LD_LIBRARY_PATH="$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local model
  model="$(ls "$dir"/models/*.gguf | head -n 1)"
  export SECURECHAT_MODEL="$model"
  local work
  work="$(mktemp -d)"
  SERVER_PID=
  trap 'if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi; rm -rf "$work"' EXIT

  # --- the GPU tests -------------------------------------------------------
  while read -r t; do
    log "test $t"
    # One at a time: they share the one GPU.
    "$dir/bin/$t" --test-threads 1 --nocapture 2>&1 | tee "$work/$t.log" ||
      die "$t failed (log above)"
  done <"$dir/tests.txt"

  # --- the server binary on the GPU: a streamed answer -----------------------
  local data="$work/data" server="$dir/bin/securechat-server"
  mkdir -p "$data"
  cat >"$data/config.yaml" <<'YAML'
rateLimit:
  requestsPerMinute: 2000000000
  burst: 2000000000
limits:
  maxAuthFailuresPerMinute: 2000000000
serving:
  maxConcurrentSequences: 32
YAML
  local key port
  key="$("$server" keys --data-dir "$data" create --name gpu-check --tier Admin | tail -n 1)"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  log "starting the CUDA server on 127.0.0.1:$port"
  local web_port
  web_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  # --device cuda, as the operator starts GPU pods: the GPU or an error,
  # never the CPU.
  "$server" serve --dev --device cuda --data-dir "$data" --model "$model" --api-addr "127.0.0.1:$port" \
    --web-addr "127.0.0.1:$web_port" >"$work/server.log" 2>&1 &
  SERVER_PID=$!
  local ca="$data/tls/ca.crt" ready=
  for _ in $(seq 1 600); do
    if curl -fsS --cacert "$ca" -o /dev/null "https://localhost:$port/healthz" 2>/dev/null; then
      ready=1
      break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited: $(tail -n 20 "$work/server.log")"
    sleep 0.2
  done
  [ -n "$ready" ] || die "the server did not become ready: $(tail -n 20 "$work/server.log")"
  curl -fsS -N --cacert "$ca" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":24,"temperature":0,"stream":true}' \
    "https://localhost:$port/v1/chat/completions" >"$work/stream.txt" ||
    die "the streamed chat request failed"
  local pieces
  pieces="$(grep -c '"content"' "$work/stream.txt" || true)"
  grep -q '^data: \[DONE\]' "$work/stream.txt" || die "the stream did not end with [DONE]: $(head -c 2000 "$work/stream.txt")"
  [ "$pieces" -gt 1 ] || die "the stream carried no text: $(head -c 2000 "$work/stream.txt")"
  log "streamed answer: $pieces events"

  # --- throughput at 1, 8 and 32 concurrent sequences ------------------------
  local results="$work/load.jsonl" n first=0
  : >"$results"
  for n in ${CONCURRENCY:-1 8 32}; do
    log "load: $n concurrent sequences"
    "$dir/bin/chatload" --label securechat-cuda --clients "$n" --requests "${REQUESTS:-2}" \
      --max-tokens "${MAX_TOKENS:-64}" --first-prompt "$first" \
      --url "https://localhost:$port" --ca "$ca" --api-key "$key" >>"$results"
    first=$((first + 1000))
  done
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=

  local out="${RESULTS:-}"
  if [ -z "$out" ]; then
    if [ -f "$ROOT/benches/RESULTS.md" ]; then out="$ROOT/benches/RESULTS.md"; else out="$dir/RESULTS.md"; fi
  fi
  CARD="$card" MODEL_FILE="$(basename "$model")" DATE="$(date -u +%Y-%m-%dT%H:%MZ)" \
    python3 - "$results" "$out" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
base = next((r for r in rows if r["clients"] == 1), rows[0])
lines = [
    "",
    f"## GPU throughput (7/9): {os.environ['CARD']}",
    "",
    f"{os.environ['DATE']}; scripts/check-gpu.sh; the CUDA server binary (release), "
    f"{os.environ['MODEL_FILE']}, greedy, {rows[0]['max_tokens']} tokens per answer, "
    "through HTTPS with the default filters and audit on.",
    "",
    "| concurrent sequences | requests | aggregate tokens/s | × one | TTFT p50 (ms) | TTFT p95 (ms) |",
    "|---:|---:|---:|---:|---:|---:|",
]
for r in rows:
    lines.append(
        f"| {r['clients']} | {r['requests']} | {r['tokens_per_s']:.1f} | "
        f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}× | {r['ttft_p50_ms']:.1f} | {r['ttft_p95_ms']:.1f} |"
    )
lines.append("")
lines.append("Goal: ≥ 6× aggregate at 32 concurrent sequences vs 1.")
with open(sys.argv[2], "a") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
  log "figures appended to $out"
}

case "${1:-}" in
  build) build "${2:-$ROOT/.securechat/gpu-check}" ;;
  run) run "${2:-$ROOT/.securechat/gpu-check}" ;;
  *)
    dir="${1:-$ROOT/.securechat/gpu-check}"
    build "$dir"
    run "$dir"
    ;;
esac
