"""Quantization throughput: hfq's GGML encoders against llama.cpp's llama_model_quantize, same machine, same run.

Both quantize the same tensors of Gemma-3-270M (the transformer blocks' 2-D weights, 100M values) from float32.
llama.cpp quantizes the whole file, so its time is scaled to those tensors by their share of the bytes it
converts. Also checks that hfq's bytes equal llama.cpp's for every block tensor.

    python benchmarks/gguf_quantize_speed.py [--types Q4_K_M Q6_K] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
import torch

from _gemma_gguf import f32_gguf, llama_quantize
from hfq.algorithms.ggml_quant import quantize_rows
from hfq.formats.ggml_types import TYPES


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", nargs="+", default=["Q4_K_M", "Q6_K"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.gettempdir()) / "hfq-bench"
    work.mkdir(exist_ok=True)
    src = f32_gguf(work / "gemma-3-270m-f32.gguf")
    f32 = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(src)).tensors}
    print(f"{'type':8} {'MB float':>9} {'hfq s':>7} {'hfq MB/s':>9} {'llama.cpp s (all)':>18} "
          f"{'llama.cpp MB/s':>15} {'ratio':>6}  bytes equal")
    for ft in args.types:
        dst = work / f"gemma-{ft}.gguf"
        t0 = time.perf_counter()
        llama_quantize(src, dst, ft, args.threads)
        t_llama = time.perf_counter() - t0
        out = gguf.GGUFReader(str(dst))
        quant = [t for t in out.tensors if t.tensor_type.name in TYPES and TYPES[t.tensor_type.name].block > 1]
        all_mb = sum(f32[t.name].nbytes for t in quant) / 1e6
        blocks = [t for t in quant if t.name.startswith("blk.")]
        mb = sum(f32[t.name].nbytes for t in blocks) / 1e6
        bad = 0
        t_hfq = 0.0
        for t in blocks:
            w = torch.from_numpy(f32[t.name])
            t0 = time.perf_counter()
            ours = quantize_rows(w, t.tensor_type.name)
            t_hfq += time.perf_counter() - t0
            bad += int((ours.numpy().reshape(-1) != np.array(t.data).reshape(-1)).sum())
        llama_mbs = all_mb / t_llama
        print(f"{ft:8} {mb:9.1f} {t_hfq:7.2f} {mb / t_hfq:9.1f} {t_llama:18.2f} {llama_mbs:15.1f} "
              f"{(mb / t_hfq) / llama_mbs:6.2f}  {'yes' if bad == 0 else f'NO ({bad} bytes differ)'}")


if __name__ == "__main__":
    main()
