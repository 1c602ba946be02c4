"""Dev-only reference answers and timings from llama.cpp (llama-cpp-python).

Reads JSON on stdin and writes JSON on stdout. Two modes:

Parity (server/tests/inference_llamacpp.rs): {"model": path, "texts": [str],
"prompts": [[token id]], "steps": int} -> {"tokens": [[id]] (each text
tokenized without BOS and without parsing special tokens), "greedy": [[id]]
(argmax continuation of each prompt), "logits": [[float]] (first-step logits
of each prompt), "step_sha256": [[hex]] (per prompt, the SHA-256 of the
little-endian f32 logits after the prompt and after each greedy step: a
bit-for-bit comparison of every step without shipping every vector)}.

Speed (scripts/bench-inference-vs-llamacpp.sh): {"model": path, "bench":
{"prompts": [[token id]], "decode": int, "threads": int}} -> {"prefill_s":
[seconds per prompt], "decode_s": [seconds for `decode` greedy steps after
each prompt], "prompt_tokens": int, "rss_after_load_mib": float,
"rss_after_run_mib": float}. The same prompt ids as our engine, so both
engines do the same work.

Runs with 2 threads (or the bench's count) and a fresh KV cache per prompt.
"""
import hashlib
import json
import sys
import time

import llama_cpp
import numpy as np


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def digest(logits):
    return hashlib.sha256(np.asarray(logits, dtype="<f4").tobytes()).hexdigest()


def parity(req):
    # logits_all: without it llama-cpp-python leaves `scores` at zero.
    llm = llama_cpp.Llama(
        model_path=req["model"],
        n_ctx=2048,
        n_threads=2,
        n_batch=512,
        logits_all=True,
        verbose=False,
    )
    out = {"tokens": [], "greedy": [], "logits": [], "step_sha256": []}
    for text in req["texts"]:
        out["tokens"].append(
            llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        )
    for prompt in req["prompts"]:
        llm.reset()
        llm.eval(prompt)
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        out["logits"].append(logits.tolist())
        tokens = []
        digests = [digest(logits)]
        for _ in range(req["steps"]):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            tokens.append(tok)
            llm.eval([tok])
            digests.append(digest(llm.scores[llm.n_tokens - 1]))
        out["greedy"].append(tokens)
        out["step_sha256"].append(digests)
    return out


def bench(req):
    b = req["bench"]
    threads = b["threads"]
    llm = llama_cpp.Llama(
        model_path=req["model"],
        n_ctx=2048,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        verbose=False,
    )
    out = {"prefill_s": [], "decode_s": [], "rss_after_load_mib": rss_mib()}
    for prompt in b["prompts"]:
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        out["prefill_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(b["decode"]):
            # Greedy, end-of-sequence ignored: the same work as our side.
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([tok])
        out["decode_s"].append(time.perf_counter() - t)
    out["prompt_tokens"] = len(b["prompts"][-1])
    out["rss_after_run_mib"] = rss_mib()
    return out


req = json.load(sys.stdin)
json.dump(bench(req) if "bench" in req else parity(req), sys.stdout)
