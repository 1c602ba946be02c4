#!/usr/bin/env bash
# What the shared store costs: authenticated GET /v1/models throughput and
# latency of securechat-server with its limits in memory vs in a local
# redis-server (sharedState, loopback), one after the other on the same
# data, with the same load generator (benches/loadgen.rs); then the store's
# own latency for the bucket script (redis-benchmark, EVALSHA). Prints one
# JSON line per run and the ratio. The issue's goals: >= 0.7x throughput,
# < 0.5 ms added at p99.
#
#   scripts/bench-shared-state.sh                 # release, 10 s per run
#   PROFILE=debug DURATION=5 scripts/bench-shared-state.sh
#
# Environment: PROFILE (release), DURATION (s, 10), WARMUP (s, 2),
# CONNECTIONS (16), THREADS (2), CARGO_TARGET_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PROFILE="${PROFILE:-release}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-16}"
THREADS="${THREADS:-2}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench-shared-state: %s\n' "$*" >&2; exit 1; }

REDIS="$(scripts/valkey.sh)"
REDIS_BENCH="$HOME/.cache/securechat/redis/usr/bin/redis-benchmark"
flag=()
[ "$PROFILE" = release ] && flag=(--release)
log "building securechat-server and the load generator ($PROFILE)"
cargo build "${flag[@]}" -q -p securechat-server --bin securechat-server
cargo build "${flag[@]}" -q --example loadgen
SERVER="$TARGET/$PROFILE/securechat-server"
LOADGEN="$TARGET/$PROFILE/examples/loadgen"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_ready() { # URL CA
  for _ in $(seq 1 300); do
    if curl -fsS --cacert "$2" -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  die "$1 did not become ready"
}

STORE_PORT="$(free_port)"
"$REDIS" --port "$STORE_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --loglevel warning >"$WORK/redis.log" 2>&1 &
PIDS+=($!)

DATA="$WORK/data"
mkdir -p "$DATA"
# Limits high enough to measure throughput, not 429s; they are still
# checked (a take per request) in both runs.
LIMITS='rateLimit:
  requestsPerMinute: 2000000000
  burst: 2000000000
limits:
  maxAuthFailuresPerMinute: 2000000000
'
printf '%s' "$LIMITS" >"$DATA/config.yaml"
KEY="$("$SERVER" keys --data-dir "$DATA" create --name bench --tier Developer | tail -n 1)"
CA="$DATA/tls/ca.crt"
RESULTS="$WORK/results.jsonl"

run() { # LABEL
  local port web pid
  port="$(free_port)"
  web="$(free_port)"
  "$SERVER" serve --dev --data-dir "$DATA" --api-addr "127.0.0.1:$port" \
    --web-addr "127.0.0.1:$web" >"$WORK/$1.log" 2>&1 &
  pid=$!
  wait_ready "https://localhost:$port/healthz" "$CA"
  curl -fsS --cacert "$CA" -H "Authorization: Bearer $KEY" -o /dev/null \
    "https://localhost:$port/v1/models" || die "the API key does not work ($1)"
  log "load: $1 (${DURATION}s + ${WARMUP}s warm-up, $CONNECTIONS connections, $THREADS threads)"
  "$LOADGEN" --url "https://localhost:$port/v1/models" --ca "$CA" --label "$1" \
    --connections "$CONNECTIONS" --threads "$THREADS" --duration "$DURATION" \
    --warmup "$WARMUP" --header "Authorization: Bearer $KEY" | tee -a "$RESULTS"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

run in_memory
printf '%ssharedState:\n  address: 127.0.0.1:%s\n  keyPrefix: bench/\n' "$LIMITS" "$STORE_PORT" \
  >"$DATA/config.yaml"
run shared_store

log "the bucket script alone (redis-benchmark EVALSHA, loopback: 1 client for latency, 16 for throughput)"
BIN="$HOME/.cache/securechat/redis/usr/bin"
export LD_LIBRARY_PATH="$HOME/.cache/securechat/redis/usr/lib/$(uname -m)-linux-gnu"
SHA="$("$BIN/redis-cli" -p "$STORE_PORT" SCRIPT LOAD "$(cat server/src/shared/bucket.lua)")"
"$BIN/redis-benchmark" -p "$STORE_PORT" -c 1 -n 20000 \
  EVALSHA "$SHA" 1 bench:k take 1 2000000000 33333333 2>/dev/null |
  tr '\r' '\n' | grep -A2 'latency summary' >&2 || true
"$BIN/redis-benchmark" -p "$STORE_PORT" -c 16 -n 100000 -q \
  EVALSHA "$SHA" 1 bench:k take 1 2000000000 33333333 2>/dev/null | tr '\r' '\n' | tail -n 1 >&2 || true

python3 - "$RESULTS" <<'PY'
import json, sys
runs = {r["label"]: r for r in map(json.loads, open(sys.argv[1]))}
a, b = runs["in_memory"], runs["shared_store"]
print(f"throughput: store {b['rps']:.0f} rps / in memory {a['rps']:.0f} rps = {b['rps'] / a['rps']:.2f}x")
for q in ("p50_ms", "p99_ms"):
    print(f"{q}: store {b[q]:.3f} / in memory {a[q]:.3f} (+{b[q] - a[q]:.3f} ms)")
PY
