"""The summary table at the top of benches/RESULTS.md (scripts/bench.sh).

Reads the rows the benchmark scripts appended to a JSON-lines file
(BENCH_SUMMARY) and criterion's estimates, and replaces the section between
the summary markers. A row: {"figure", "ours", "peer", "peer_name", "unit",
"higher_is_better", "goal"}; "peer" may be null (no peer for that figure).

    python3 scripts/bench_summary.py ROWS.jsonl CRITERION_DIR RESULTS.md
"""

import datetime
import json
import os
import re
import sys

BEGIN = "<!-- bench-summary:begin (written by scripts/bench.sh) -->"
END = "<!-- bench-summary:end -->"


def criterion_rate(criterion_dir, *parts):
    """Throughput per second of one criterion benchmark (mean estimate)."""
    base = os.path.join(criterion_dir, *parts, "new")
    try:
        estimates = json.load(open(os.path.join(base, "estimates.json")))
        bench = json.load(open(os.path.join(base, "benchmark.json")))
    except FileNotFoundError:
        return None
    seconds = estimates["mean"]["point_estimate"] / 1e9
    throughput = bench.get("throughput") or {}
    if "Bytes" in throughput:
        return throughput["Bytes"] / seconds / 1e6
    if "Elements" in throughput:
        return throughput["Elements"] / seconds
    return 1 / seconds


def machine():
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}"


def main():
    rows_path, criterion_dir, results = sys.argv[1:4]
    rows = [json.loads(line) for line in open(rows_path) if line.strip()]
    peers = {r["figure"]: r for r in rows}
    seed = peers.pop("_seed_micro", None) or {}

    # Criterion figures, with the seed's own filter and JWT library (timed
    # by bench-server-vs-seed.sh in this run) as their peers.
    front = []
    for size, label in [("65536", "one-shot"), ("65536", "streaming")]:
        kind = "one_shot" if label == "one-shot" else "streaming"
        rate = criterion_rate(criterion_dir, "filter", kind, size)
        if rate is not None:
            front.append({
                "figure": f"sensitive-data filter, {label}, 64 KiB",
                "ours": rate, "unit": "MB/s", "higher_is_better": True,
                "peer": seed.get("filter_mb_s"), "peer_name": "seed regex filter",
                "goal": "",
            })
    for alg in ["EdDSA", "ES256", "RS256"]:
        rate = criterion_rate(criterion_dir, "jwt_verify", alg)
        if rate is not None:
            front.append({
                "figure": f"JWT verifications/s, {alg}",
                "ours": rate, "unit": "/s", "higher_is_better": True,
                "peer": seed.get("jose_hs256_verifications_s"),
                "peer_name": "python-jose HS256",
                "goal": "",
            })
    rate = criterion_rate(criterion_dir, "jwt_verify_remembered", "EdDSA")
    if rate is not None:
        front.append({
            "figure": "JWT checks/s of a token verified before (signature remembered), EdDSA",
            "ours": rate, "unit": "/s", "higher_is_better": True,
            "peer": seed.get("jose_hs256_verifications_s"),
            "peer_name": "python-jose HS256",
            "goal": "",
        })
    rows = front + [r for r in rows if r["figure"] != "_seed_micro"]

    def fmt(v):
        if v is None:
            return "—"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"

    lines = [
        "| figure | securechat | peer | peer's figure | ratio | goal |",
        "| --- | ---: | --- | ---: | ---: | --- |",
    ]
    for r in rows:
        ours, peer = r["ours"], r.get("peer")
        ratio = "—"
        if peer:
            x = ours / peer if r.get("higher_is_better", True) else peer / ours
            ratio = f"{x:.2f}×"
        lines.append(
            f"| {r['figure']} ({r['unit']}) | {fmt(ours)} | {r.get('peer_name') or '—'} | "
            f"{fmt(peer)} | {ratio} | {r.get('goal', '')} |"
        )
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join([
        BEGIN,
        "## Summary (`make bench`)",
        "",
        f"{date}; {machine()}. Ratios are ours over the peer's for rates and the "
        "peer's over ours for times and sizes, so above 1× is better for us. "
        "Every peer figure is from the same run. Details in the sections below.",
        "",
        *lines,
        END,
    ])
    print(section)
    text = open(results).read() if os.path.exists(results) else "# Benchmark results\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        head, sep, rest = text.partition("\n## ")
        text = head.rstrip("\n") + "\n\n" + section + "\n" + (sep + rest if sep else "")
    open(results, "w").write(text)


if __name__ == "__main__":
    main()
