#!/usr/bin/env bash
# Secured throughput: securechat-server vs seed 1's FastAPI stack, in one run.
#
# Starts (a) securechat-server (release) in --dev mode with a Developer API
# key and (b) seed 1's stack (benches/seed_stack/app.py: FastAPI +
# python-jose HS256 middleware + slowapi + the seed's regex filter, uvicorn
# with TLS, same certificate), with rate limits raised on both so the run
# measures throughput, not 429s. Then loads each with the same Rust load
# generator (benches/loadgen.rs): authenticated GET /v1/models, and an
# unauthenticated baseline (/healthz; the seed's /login) from which the
# latency added by the security layers is computed. Also times the seed's
# regex filter and python-jose verification on the criterion corpus.
#
# Prints a table with ratios and replaces the section between the markers
# in benches/RESULTS.md.
#
#   scripts/bench-server-vs-seed.sh            # 10 s per run
#   DURATION=30 scripts/bench-server-vs-seed.sh
#
# Environment: DURATION (s, 10), WARMUP (s, 2), CONNECTIONS (16),
# THREADS (2), CARGO_TARGET_DIR, SECURECHAT_MODEL (default model path).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-16}"
THREADS="${THREADS:-2}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/securechat"
VENV="$CACHE/venvs/seed-stack"
# Pinned so reruns compare like with like.
SEED_REQUIREMENTS="fastapi==0.115.12 uvicorn==0.34.2 python-jose[cryptography]==3.5.0 slowapi==0.1.10"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench-server-vs-seed: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is required (for the seed stack's venv)"
command -v curl >/dev/null || die "curl is required"

# --- build ------------------------------------------------------------------
log "building securechat-server and the load generator (release)"
cargo build --release -q -p securechat-server --bin securechat-server
cargo build --release -q --example loadgen --example bare_server
SERVER="$TARGET/release/securechat-server"
LOADGEN="$TARGET/release/examples/loadgen"
BARE="$TARGET/release/examples/bare_server"

# --- the seed's venv, created once (idempotent, safe to run concurrently) ----
mkdir -p "$CACHE/venvs"
STAMP="$VENV/.requirements"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$SEED_REQUIREMENTS" ]; then
  exec 9>"$CACHE/venvs/seed-stack.lock"
  flock 9
  if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$SEED_REQUIREMENTS" ]; then
    log "creating $VENV from PyPI ($SEED_REQUIREMENTS)"
    # The stamp is written last: an interrupted install is redone.
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q --disable-pip-version-check $SEED_REQUIREMENTS
    printf '%s' "$SEED_REQUIREMENTS" >"$STAMP"
  fi
  exec 9>&-
fi
PY="$VENV/bin/python"

# --- processes we start, stopped on exit --------------------------------------
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # URL CA
  for _ in $(seq 1 150); do
    if curl -fsS --cacert "$2" -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  die "$1 did not become ready"
}

# --- (a) securechat-server -------------------------------------------------------
DATA="$WORK/securechat"
mkdir -p "$DATA"
# Limits out of the way (the default is the seed's 10/minute); everything
# else is the default configuration, audit log included.
cat >"$DATA/config.yaml" <<'YAML'
rateLimit:
  requestsPerMinute: 2000000000
  burst: 2000000000
limits:
  maxAuthFailuresPerMinute: 2000000000
YAML
KEY="$("$SERVER" keys --data-dir "$DATA" create --name bench --tier Developer | tail -n 1)"
SC_PORT="$(free_port)"
SC_WEB="$(free_port)"
log "starting securechat-server on 127.0.0.1:$SC_PORT"
"$SERVER" serve --dev --data-dir "$DATA" --api-addr "127.0.0.1:$SC_PORT" \
  --web-addr "127.0.0.1:$SC_WEB" >"$WORK/securechat.log" 2>&1 &
PIDS+=($!)
CA="$DATA/tls/ca.crt"
SC="https://localhost:$SC_PORT"
wait_ready "$SC/healthz" "$CA"
JWT="$(curl -fsS --cacert "$CA" -d grant_type=client_credentials \
  --data-urlencode "client_secret=$KEY" "$SC/oauth/token" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
curl -fsS --cacert "$CA" -H "Authorization: Bearer $KEY" -o /dev/null "$SC/v1/models" ||
  die "the API key does not work on securechat-server"

# --- (b) the seed's stack, same certificate ------------------------------------
# The ceiling: the same listener, TLS and certificate with a bare axum
# router that only checks for a Bearer prefix (benches/bare_server.rs).
BARE_PORT="$(free_port)"
log "starting the bare ceiling server on 127.0.0.1:$BARE_PORT"
"$BARE" --addr "127.0.0.1:$BARE_PORT" --cert "$DATA/tls/tls.crt" --key "$DATA/tls/tls.key" \
  >"$WORK/bare.log" 2>&1 &
PIDS+=($!)
BARE_URL="https://localhost:$BARE_PORT"
for _ in $(seq 1 150); do
  if curl -fsS --cacert "$CA" -H "Authorization: Bearer x" -o /dev/null "$BARE_URL/v1/models" 2>/dev/null; then break; fi
  sleep 0.2
done
curl -fsS --cacert "$CA" -H "Authorization: Bearer x" -o /dev/null "$BARE_URL/v1/models" ||
  die "the bare ceiling server did not answer"

SEED_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
SEED_PORT="$(free_port)"
log "starting the seed stack (uvicorn, TLS) on 127.0.0.1:$SEED_PORT"
SEED_SECRET_KEY="$SEED_SECRET" SEED_RATE_LIMIT="2000000000/minute" \
  "$PY" "$ROOT/benches/seed_stack/app.py" --port "$SEED_PORT" \
  --cert "$DATA/tls/tls.crt" --key "$DATA/tls/tls.key" >"$WORK/seed.log" 2>&1 &
PIDS+=($!)
SEED="https://localhost:$SEED_PORT"
wait_ready "$SEED/login" "$CA"
SEED_TOKEN="$(SEED_SECRET_KEY="$SEED_SECRET" "$PY" -c '
import os, time
from jose import jwt
now = int(time.time())
print(jwt.encode({"sub": "bench", "role": "user", "iat": now, "exp": now + 3600},
                 os.environ["SEED_SECRET_KEY"], algorithm="HS256"))')"
curl -fsS --cacert "$CA" -H "Authorization: Bearer $SEED_TOKEN" -o /dev/null "$SEED/v1/models" ||
  die "the token does not work on the seed stack"

# --- load -------------------------------------------------------------------
RESULTS="$WORK/results.jsonl"
load() { # LABEL URL [HEADER]
  local label="$1" url="$2"
  shift 2
  local extra=()
  if [ $# -gt 0 ]; then extra=(--header "$1"); fi
  log "load: $label ($url, ${DURATION}s + ${WARMUP}s warm-up, $CONNECTIONS connections, $THREADS threads)"
  "$LOADGEN" --url "$url" --ca "$CA" --label "$label" --connections "$CONNECTIONS" \
    --threads "$THREADS" --duration "$DURATION" --warmup "$WARMUP" "${extra[@]}" >>"$RESULTS"
}
load securechat_api_key "$SC/v1/models" "Authorization: Bearer $KEY"
load securechat_jwt "$SC/v1/models" "Authorization: Bearer $JWT"
load securechat_baseline "$SC/healthz"
load bare_ceiling "$BARE_URL/v1/models" "Authorization: Bearer $KEY"
load seed_jwt "$SEED/v1/models" "Authorization: Bearer $SEED_TOKEN"
load seed_baseline "$SEED/login"

# --- the seed's filter and JWT verification, for reference --------------------
log "timing the seed's regex filter and python-jose verification"
SEED_MICRO="$(SEED_SECRET_KEY="$SEED_SECRET" SEED_TOKEN="$SEED_TOKEN" \
  PYTHONPATH="$ROOT/benches/seed_stack" "$PY" - "$ROOT/benches/corpus.txt" <<'PY'
import json, os, sys, time
from app import SecurityFilter
from jose import jwt
paragraph = open(sys.argv[1], encoding="utf-8").read()
text = (paragraph * (64 * 1024 // len(paragraph.encode()) + 1)).encode()[: 64 * 1024].decode("utf-8", "ignore")
f = SecurityFilter()
n, start = 0, time.perf_counter()
while time.perf_counter() - start < 3:
    f.filter_input(text); n += 1
mbps = n * len(text.encode()) / (time.perf_counter() - start) / 1e6
token, key = os.environ["SEED_TOKEN"], os.environ["SEED_SECRET_KEY"]
m, start = 0, time.perf_counter()
while time.perf_counter() - start < 3:
    jwt.decode(token, key, algorithms=["HS256"]); m += 1
print(json.dumps({"filter_mb_s": round(mbps, 1), "jose_hs256_verifications_s": round(m / (time.perf_counter() - start))}))
PY
)"

# --- report ---------------------------------------------------------------------
CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)"
CORES="$(nproc)"
DATE="$(date -u +%Y-%m-%dT%H:%MZ)"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 - "$RESULTS" "$ROOT/benches/RESULTS.md" "$SEED_MICRO" "$CPU" "$CORES" "$DATE" "$COMMIT" \
  "$DURATION" "$CONNECTIONS" "$THREADS" <<'PY'
import json, os, sys
results_path, md_path, micro, cpu, cores, date, commit, duration, conns, threads = sys.argv[1:]
runs = {r["label"]: r for r in map(json.loads, open(results_path))}
micro = json.loads(micro)
sc, sc_jwt, sc_base = runs["securechat_api_key"], runs["securechat_jwt"], runs["securechat_baseline"]
seed, seed_base = runs["seed_jwt"], runs["seed_baseline"]
bare = runs["bare_ceiling"]
rows = [
    ("securechat-server, API key, GET /v1/models", sc),
    ("securechat-server, JWT (EdDSA), GET /v1/models", sc_jwt),
    ("securechat-server, no auth, GET /healthz", sc_base),
    ("ceiling: same listener + bare axum, Bearer prefix only, GET /v1/models", bare),
    ("seed stack, JWT (HS256), GET /v1/models", seed),
    ("seed stack, no auth, GET /login", seed_base),
]
lines = [
    "| run | rps | p50 ms | p99 ms | errors |",
    "|---|---:|---:|---:|---:|",
]
for name, r in rows:
    lines.append(f"| {name} | {r['rps']:,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['errors']} |")
ratio = sc["rps"] / seed["rps"] if seed["rps"] else float("inf")
ratio_jwt = sc_jwt["rps"] / seed["rps"] if seed["rps"] else float("inf")
ceiling = sc["rps"] / bare["rps"] if bare["rps"] else 0.0
added = sc["p99_ms"] - sc_base["p99_ms"]
added_jwt = sc_jwt["p99_ms"] - sc_base["p99_ms"]
seed_added = seed["p99_ms"] - seed_base["p99_ms"]
verdict = lambda ok: "met" if ok else "NOT met"
summary = [
    f"- secured throughput ratio (API key): **{ratio:.1f}x** the seed stack's rps "
    f"(JWT: {ratio_jwt:.1f}x); goal >= 20x: {verdict(ratio >= 20)}",
    f"- p99 latency added by the security layers (authenticated /v1/models minus "
    f"/healthz): **{added:.3f} ms** (JWT: {added_jwt:.3f} ms; seed: {seed_added:.3f} ms); "
    f"goal < 1 ms: {verdict(added < 1.0)}",
    f"- secured throughput against the ceiling (the same listener with a bare router that "
    f"only checks a Bearer prefix): **{ceiling:.2f}x** its rps; goal >= 0.7x: {verdict(ceiling >= 0.7)}",
    f"- the seed's regex filter: {micro['filter_mb_s']} MB/s on benches/corpus.txt (64 KiB); "
    f"python-jose HS256: {micro['jose_hs256_verifications_s']:,} verifications/s "
    "(compare `cargo bench --bench filter` / `--bench jwt`)",
]
section = "\n".join([
    "<!-- bench-server-vs-seed:begin (written by scripts/bench-server-vs-seed.sh) -->",
    "## Secured throughput: securechat-server vs the seed's FastAPI stack",
    "",
    f"{date}, commit {commit}; {cores} cores, {cpu}. Load: benches/loadgen.rs, "
    f"{conns} keep-alive connections on {threads} threads, {duration} s per run after a warm-up, "
    "TLS 1.3, same certificate, load generator and servers on the same machine. "
    "Rate limits raised on both sides; securechat runs its default config otherwise "
    "(audit log on); the seed runs one uvicorn process, as in the seed.",
    "",
    *lines,
    "",
    *summary,
    "<!-- bench-server-vs-seed:end -->",
])
print("\n".join(lines + [""] + summary))
summary_rows = os.environ.get("BENCH_SUMMARY")
if summary_rows:
    with open(summary_rows, "a") as out:
        for row in [
            {"figure": "secured rps, API key, GET /v1/models", "ours": sc["rps"], "peer": seed["rps"],
             "peer_name": "seed FastAPI stack (JWT)", "unit": "req/s", "higher_is_better": True, "goal": "≥ 20×"},
            {"figure": "secured rps, JWT, GET /v1/models", "ours": sc_jwt["rps"], "peer": seed["rps"],
             "peer_name": "seed FastAPI stack (JWT)", "unit": "req/s", "higher_is_better": True, "goal": "≥ 20×"},
            {"figure": "secured rps vs bare ceiling, GET /v1/models", "ours": sc["rps"], "peer": bare["rps"],
             "peer_name": "same listener, bare axum router", "unit": "req/s", "higher_is_better": True, "goal": "≥ 0.7×"},
            {"figure": "p99 latency added by auth", "ours": added, "peer": seed_added,
             "peer_name": "seed FastAPI stack", "unit": "ms", "higher_is_better": False, "goal": "< 1 ms"},
            {"figure": "_seed_micro", **micro},
        ]:
            out.write(json.dumps(row) + "\n")
try:
    current = open(md_path, encoding="utf-8").read()
except FileNotFoundError:
    current = "# Benchmark results\n\nFigures recorded by the benchmark scripts and `cargo bench`.\n"
begin = current.find("<!-- bench-server-vs-seed:begin")
end_marker = "<!-- bench-server-vs-seed:end -->"
end = current.find(end_marker)
if begin != -1 and end != -1:
    current = current[:begin] + section + current[end + len(end_marker):]
else:
    current = current.rstrip("\n") + "\n\n" + section + "\n"
open(md_path, "w", encoding="utf-8").write(current)
PY
log "updated benches/RESULTS.md"
