"""End-to-end greedy decode of the embedded Gemma-3-270M: hfq variants against the float model and against
llama.cpp running hfq's own exported Q4_K_M file, all in one process and one run.

Rows: float32, bfloat16, nf4-dq, rtn-int4-g128, gptq-int4-g128, gguf-q4_k_m (hfq, transformers' generate with
its dynamic KV cache), and llama.cpp (llama-cpp-python, extra buffer types off) on the GGUF file that
hfq.export_gguf writes from the gguf-q4_k_m model. Rounds are interleaved (every row once per round); the median
tokens/s is reported. For each hfq row, the share of a token's time spent inside hfq's ops (the rest is
transformers' Python, attention, norms and the embedding/head) is measured with torch.profiler.
--compile adds rows that run generate with a static cache under torch.compile.

    python benchmarks/decode.py [--threads 2] [--tokens 64] [--rounds 3] [--rows ...] [--compile] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import hfq
from hfq.evaluation import _no_extra_buffers

PROMPT = "The capital of France is"
ROWS = ["float32", "bfloat16", "nf4-dq", "rtn-int4-g128", "gptq-int4-g128", "gguf-q4_k_m", "llama.cpp Q4_K_M"]


def load(name: str, base: Path):
    from transformers import AutoModelForCausalLM

    from hfq.publish import variants
    from hfq.evaluation import pydoc_halves

    if name in ("float32", "bfloat16"):
        return AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, name)).eval()
    v = variants.get(name)
    cfg = v.config(pydoc_halves()[0] if v.calibrated else None)
    return AutoModelForCausalLM.from_pretrained(base, quantization_config=cfg, dtype=torch.float32).eval()


def _no_eos(model):
    """Every row decodes exactly `tokens` tokens, as the llama.cpp row does. Not through min_new_tokens: its logits
    processor builds an arange, isin and where over Gemma's 262144-entry vocabulary on every step (7-9 ms of a
    35 ms token at one thread), a cost that generate without it never pays."""
    model.generation_config.eos_token_id = None
    return model


def hf_decode(model, ids, tokens: int, compiled: bool = False) -> float:
    kw = dict(max_new_tokens=tokens, do_sample=False)
    if compiled:
        kw["cache_implementation"] = "static"
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, **kw)
    return tokens / (time.perf_counter() - t0)


def _with_forward(model, forward, call):
    eager = model.forward
    model.forward = forward
    try:
        return call()
    finally:
        model.forward = eager


def op_share(model, ids, tokens: int) -> float:
    """Fraction of decode time spent in hfq::* ops (self time)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model.generate(ids, max_new_tokens=tokens, do_sample=False)
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    hfq_t = sum(e.self_cpu_time_total for e in ev if e.key.startswith("hfq::"))
    return hfq_t / total if total else float("nan")


class LlamaCpp:
    def __init__(self, path: Path, threads: int, tokens: int):
        import llama_cpp

        with _no_extra_buffers(llama_cpp):
            self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=tokens + 32, n_threads=threads, verbose=False)

    def decode(self, tokens: int) -> float:
        self.llm.reset()
        self.llm.eval(self.llm.tokenize(PROMPT.encode()))
        t0 = time.perf_counter()
        for _ in range(tokens):
            self.llm.eval([int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))])
        return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", nargs="+", default=ROWS)
    ap.add_argument("--compile", action="store_true", help="also time static-cache generate under torch.compile")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from hfq.embedded import local_model

    base = local_model("gemma-3-270m")
    tok = AutoTokenizer.from_pretrained(base)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    models, runners = {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="hfq-decode-"))
    for name in args.rows:
        if name.startswith("llama.cpp"):
            q4 = models.get("gguf-q4_k_m") or load("gguf-q4_k_m", base)
            path = hfq.export_gguf(q4, tok, tmp / "hfq-Q4_K_M.gguf", progress=False)[0]
            runners[name] = (lambda lc: lambda: lc.decode(args.tokens))(LlamaCpp(Path(path), args.threads, args.tokens))
            continue
        print(f"loading {name} ...", flush=True)
        models[name] = _no_eos(load(name, base))
        runners[name] = (lambda m: lambda: hf_decode(m, ids, args.tokens))(models[name])
        if args.compile:   # the compiled forward is swapped in for its own row only; the eager row stays eager
            m = models[name]
            runners[name + " compiled"] = (lambda m, f: lambda: _with_forward(m, f, lambda: hf_decode(
                m, ids, args.tokens, compiled=True)))(m, torch.compile(m.forward))
    for r in runners.values():   # warm-up: kernel builds, compilation, first-touch of weights
        r()
    tps = {n: [] for n in runners}
    for _ in range(args.rounds):
        for n, r in runners.items():
            tps[n].append(r())
    med = {n: statistics.median(v) for n, v in tps.items()}
    share = {n: op_share(m, ids, min(args.tokens, 32)) for n, m in models.items()}
    f32 = med.get("float32")
    lc = med.get("llama.cpp Q4_K_M")
    print(f"\n== greedy decode, Gemma-3-270M, {args.threads} threads, {args.tokens} tokens, median of {args.rounds} ==")
    print(f"{'row':26} {'tokens/s':>9} {'x float32':>9} {'x llama.cpp':>11} {'in hfq ops':>10}")
    for n, v in med.items():
        base_n = n.replace(" compiled", "")
        print(f"{n:26} {v:9.2f} {(v / f32 if f32 else float('nan')):9.2f} {(v / lc if lc else float('nan')):11.2f} "
              f"{(100 * share[base_n] if base_n in share else float('nan')):9.0f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"tokens_per_s": med, "hfq_op_share": share, "threads": args.threads,
                                               "tokens": args.tokens}, indent=1))


if __name__ == "__main__":
    main()
