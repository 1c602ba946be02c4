#!/usr/bin/env bash
# Our inference engine against llama.cpp (llama-cpp-python) on the same GGUF
# with the same threads, in one run: prefill tokens/s on a ~200-token prompt,
# decode tokens/s over 128 greedy steps (best of 3 runs each), and RSS after
# load. Both engines get the very same prompt ids. Prints a table with
# ratios and rewrites the "Inference vs llama.cpp" section of
# benches/RESULTS.md.
#
#   scripts/bench-inference-vs-llamacpp.sh            # 2 threads, Q4_1 weights as stored
#   THREADS=1 VARIANT=as-stored scripts/bench-inference-vs-llamacpp.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"

threads="${THREADS:-2}"
variant="${VARIANT:-as-stored}"
py=$(scripts/llama-cpp-venv.sh)
scripts/fetch-model.sh >/dev/null
# shellcheck source=lib/default-model.sh
. scripts/lib/default-model.sh
model="$DEFAULT_MODEL"

cargo build --release -q -p securechat-server --example decode_speed
bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/decode_speed"

# Both engines on the same cores, one after the other.
pin=()
if command -v taskset >/dev/null; then
	pin=(taskset -c "0-$((threads - 1))")
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "securechat ($variant, $threads threads)..." >&2
RAYON_NUM_THREADS="$threads" SECURECHAT_THREADS="$threads" "${pin[@]}" "$bin" "$variant" --json >"$tmp/ours.json"

echo "llama.cpp ($threads threads)..." >&2
python3 - "$model" "$threads" "$tmp/ours.json" >"$tmp/request.json" <<'PY'
import json, sys
model, threads, ours = sys.argv[1], int(sys.argv[2]), json.load(open(sys.argv[3]))
json.dump({"model": model, "bench": {"prompts": ours["prompts"],
           "decode": ours["decode_tokens"], "threads": threads}}, sys.stdout)
PY
"${pin[@]}" "$py" scripts/llama_cpp_reference.py <"$tmp/request.json" >"$tmp/theirs.json"

python3 - "$tmp/ours.json" "$tmp/theirs.json" "$model" "$threads" "$variant" benches/RESULTS.md <<'PY'
import datetime, json, os, platform, re, sys

ours, theirs = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
model, threads, variant, results = sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
n_prompt, n_decode = ours["prompt_tokens"], ours["decode_tokens"]
gguf = ours["gguf_mib"]

def rate(tokens, seconds):
    return tokens / min(seconds)

rows = [
    ("prefill tok/s (%d-token prompt)" % n_prompt,
     rate(n_prompt, ours["prefill_s"]), rate(n_prompt, theirs["prefill_s"]), "≥ 0.5×"),
    ("decode tok/s (%d tokens)" % n_decode,
     rate(n_decode, ours["decode_s"]), rate(n_decode, theirs["decode_s"]), "≥ 1.0×"),
    ("RSS after load, MiB", ours["rss_after_load_mib"], theirs["rss_after_load_mib"], ""),
    ("RSS after the runs, MiB", ours["rss_after_run_mib"], theirs["rss_after_run_mib"], ""),
]
cpu = "unknown"
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
lines = [
    f"Date: {date}. CPU: {cpu}, {os.cpu_count()} cores; {threads} threads for both engines.",
    f"Model: `{os.path.basename(model)}` ({gguf:.0f} MiB); ours with `{variant}` weights, "
    f"llama.cpp via llama-cpp-python on the same file. Best of {len(ours['prefill_s'])} runs; "
    "the same prompt ids for both.",
    "",
    "| measure | securechat | llama.cpp | ratio | goal |",
    "| --- | ---: | ---: | ---: | --- |",
]
for name, a, b, goal in rows:
    lines.append(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}× | {goal} |")
lines.append(
    f"| our RSS after load / GGUF size | {ours['rss_after_load_mib'] / gguf:.2f}× | "
    f"{theirs['rss_after_load_mib'] / gguf:.2f}× | | ≤ 1.3× |")
table = "\n".join(lines)
print(table)
summary_rows = os.environ.get("BENCH_SUMMARY")
if summary_rows:
    with open(summary_rows, "a") as out:
        for name, a, b, goal in rows[:2]:
            out.write(json.dumps({"figure": f"inference {name}", "ours": a, "peer": b,
                                  "peer_name": "llama.cpp", "unit": "tok/s",
                                  "higher_is_better": True, "goal": goal}) + "\n")
        out.write(json.dumps({"figure": "inference RSS after load", "ours": ours["rss_after_load_mib"],
                              "peer": theirs["rss_after_load_mib"], "peer_name": "llama.cpp",
                              "unit": "MiB", "higher_is_better": False,
                              "goal": f"≤ 1.3× GGUF ({1.3 * gguf:.0f} MiB)"}) + "\n")

start, end = "<!-- inference-vs-llamacpp:start -->", "<!-- inference-vs-llamacpp:end -->"
section = f"{start}\n## Inference vs llama.cpp\n\nWritten by `scripts/bench-inference-vs-llamacpp.sh`.\n\n{table}\n{end}"
text = open(results).read() if os.path.exists(results) else "# Benchmark results\n"
if start in text and end in text:
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
os.makedirs(os.path.dirname(results), exist_ok=True)
open(results, "w").write(text)
print(f"\nwrote {results}", file=sys.stderr)
PY
