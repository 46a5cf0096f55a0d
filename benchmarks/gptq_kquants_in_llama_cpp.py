"""GPTQ (and AWQ) into GGUF k-quant types against llama.cpp's importance-weighted files of the same types, both
run in llama.cpp and scored against the F32 file's logits (the issue's k-quant goal).

- llama.cpp: `llama-quantize --imatrix` from the F32 GGUF of Gemma-3-270M. The imatrix is hfq's mean x^2 per input
  column on the same calibration windows GPTQ sees (llama-imatrix's statistic), written as an imatrix GGUF.
- hfq: HfqConfig(method="gptq"|"awq", quant_type=T) at load time on the same windows, then hfq.export_gguf. GPTQ
  and AWQ blocks are written unchanged; the token embedding (not a linear layer) is quantized by hfq's byte-exact
  k-quant encoder without importance, as llama-quantize does for it (the imatrix has no entry for it).
- Both files run in llama-cpp-python (2 threads) on held-out text (second half of CPython's pydoc topics; the
  calibration windows come from the first half), so llama.cpp's own 8-bit activation quantization is in both.

    python benchmarks/gptq_kquants_in_llama_cpp.py --llama-quantize /path/to/llama-quantize [--types Q3_K_M Q4_0 Q2_K]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hfq
from _gemma_gguf import f32_gguf
from hfq.algorithms.calibration import calibration_windows, collect_importance, dataset_texts
from hfq.evaluation import chunks, score, pydoc_halves
from hfq.gguf.names import gguf_name
from hfq.embedded import local_model

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from ggml_oracle import run_llama_quantize_bin, write_imatrix  # noqa: E402



def _gname(module: str) -> str | None:
    return gguf_name(module, "gemma3_text", 18, tied=True)   # Gemma-3-270M: 18 blocks, tied embeddings

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-quantize", required=True, help="llama-quantize binary (for --imatrix)")
    ap.add_argument("--types", nargs="+", default=["Q3_K_M", "Q4_0", "Q2_K"])
    ap.add_argument("--methods", nargs="+", default=["gptq", "awq"])
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-chunks", type=int, default=4)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    work = Path(tempfile.gettempdir()) / "hfq-bench-kq"
    work.mkdir(exist_ok=True)
    path = local_model("gemma-3-270m")
    tok = AutoTokenizer.from_pretrained(path)
    src = f32_gguf(work / "gemma-3-270m-f32.gguf")
    ev = chunks(tok, pydoc_halves()[1], 512, args.eval_chunks)
    items, desc = dataset_texts(None)
    cw = calibration_windows(items, args.n_samples, args.seq_len, 0, tok)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    imp = collect_importance(base, cw)
    del base
    imatrix = write_imatrix(work / "imatrix.gguf", {_gname(k): v.numpy() for k, v in imp.items()
                                                    if (_gname(k) or "").startswith("blk.")})
    print(f"calibration: {desc}, {len(cw)} windows of {args.seq_len}; held-out: {len(ev)} chunks of 512; "
          f"reference: {src.name} in llama.cpp", flush=True)
    print(f"{'file':34} {'ppl':>8} {'KL':>7} {'top-1':>6} {'MB':>6} {'make s':>7}", flush=True)
    rows = {}

    def record(label, f, secs):
        r = score(str(f), ev, base=str(src), threads=2, progress=False)
        r.update(mb=Path(f).stat().st_size / 1e6, seconds=secs)
        rows[label] = r
        print(f"{label:34} {r['ppl']:8.3f} {r['kl']:7.4f} {r['top1']:6.3f} {r['mb']:6.1f} {secs:7.1f}", flush=True)
        return r

    data = [w[0].tolist() for w in cw]
    for qt in args.types:
        for weighted in (False, True):
            dst = work / f"lc-{qt}{'-imat' if weighted else ''}.gguf"
            t0 = time.perf_counter()
            run_llama_quantize_bin(args.llama_quantize, src, dst, qt, imatrix if weighted else None, pure=False)
            record(f"llama.cpp {qt}{' + imatrix' if weighted else ''}", dst, time.perf_counter() - t0)
        ref = rows[f"llama.cpp {qt} + imatrix"]["kl"]
        for method in args.methods:
            t0 = time.perf_counter()
            cfg = hfq.HfqConfig(method=method, quant_type=qt, dataset=data, n_samples=len(data),
                                seq_len=args.seq_len)
            m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, quantization_config=cfg)
            f = hfq.export_gguf(m, tok, work / f"hfq-{method}-{qt}.gguf", progress=False)[0]
            del m
            r = record(f"hfq {method.upper()} {qt}", f, time.perf_counter() - t0)
            print(f"{'':34} KL {100 * (1 - r['kl'] / ref):.0f}% below llama.cpp's imatrix file "
                  f"(goal: at least 20%)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
