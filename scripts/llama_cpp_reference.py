"""Dev-only reference answers from llama.cpp (llama-cpp-python) for the
inference parity test (server/tests/inference_llamacpp.rs).

Reads JSON on stdin: {"model": path, "texts": [str], "prompts": [[token id]],
"steps": int}. Writes JSON on stdout: {"tokens": [[id]] (each text tokenized
without BOS and without parsing special tokens), "greedy": [[id]] (argmax
continuation of each prompt), "logits": [[float]] (first-step logits of each
prompt)}. Runs with 2 threads and a fresh KV cache per prompt.
"""
import json
import sys

import llama_cpp
import numpy as np

req = json.load(sys.stdin)
llm = llama_cpp.Llama(
    model_path=req["model"], n_ctx=2048, n_threads=2, n_batch=512, verbose=False
)
out = {"tokens": [], "greedy": [], "logits": []}
for text in req["texts"]:
    out["tokens"].append(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
for prompt in req["prompts"]:
    llm.reset()
    llm.eval(prompt)
    logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    out["logits"].append(logits.tolist())
    tokens = []
    for _ in range(req["steps"]):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(tok)
        llm.eval([tok])
    out["greedy"].append(tokens)
json.dump(out, sys.stdout)
