"""Gemma-3-270M int4 g128 (hfq RTN) exported as standard GPTQ and AWQ checkpoints, loaded back by transformers with
optimum + gptqmodel (no hfq in the loading path), compared with hfq's own model of the same weights: perplexity,
KL and top-1 agreement against hfq, folder size, load time, decode speed (ratio against hfq in the same run).

Needs the gptq-oracle extra: pip install -e ".[test,gptq-oracle]".
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hfq
from hfq.evaluation import chunks, decode_speed, default_text, score
from hfq.embedded import local_model


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sym", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    src = local_model("gemma-3-270m")
    tok = AutoTokenizer.from_pretrained(src)
    windows = chunks(tok, default_text()[0], args.ctx, args.chunks)
    cfg = hfq.HfqConfig(method="rtn", bits=4, group_size=128, sym=args.sym)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=cfg, dtype=torch.float32).eval()
    ref = score(model, windows)
    results = {"hfq": {"ppl": ref["ppl"], "decode_tokens_per_s": decode_speed(model, tok)}}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("gptq", "awq"):
            out = hfq.save_standard(model, Path(tmp) / fmt, fmt)
            t0 = time.perf_counter()
            loaded = AutoModelForCausalLM.from_pretrained(out, device_map="cpu").eval()
            load_s = time.perf_counter() - t0
            r = score(loaded, windows, base=model)
            speed = decode_speed(loaded, tok)
            results[fmt] = {"ppl": r["ppl"], "kl_vs_hfq": r["kl"], "top1_vs_hfq": r["top1"], "bytes": _size(out),
                            "load_s": load_s, "decode_tokens_per_s": speed,
                            "decode_ratio_vs_hfq": speed / results["hfq"]["decode_tokens_per_s"],
                            "kernel": type(loaded.model.layers[0].mlp.up_proj).__name__,
                            "dtype": str(loaded.dtype)}
            del loaded
    results["setup"] = {"model": "gemma-3-270m", "config": cfg.short_name(), "chunks": args.chunks,
                        "ctx": args.ctx, "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
