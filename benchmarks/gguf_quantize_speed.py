"""Quantization throughput: hfq's GGML encoders against llama.cpp, same machine, same run.

Two baselines, both from llama-cpp-python's own libraries:
- ggml_quantize_chunk (libggml-base), called on exactly the tensors hfq quantizes (Gemma-3-270M's transformer
  blocks, 100M values, float32), single-threaded, against hfq with torch.set_num_threads(1): the like-for-like
  ratio.
- llama_model_quantize on the whole F32 file with --threads, against hfq quantizing every tensor llama.cpp
  quantized (the block tensors and the 168M-value embedding) with the same thread count: the end-to-end ratio.
Also checks that hfq's bytes equal llama.cpp's for every block tensor.

    python benchmarks/gguf_quantize_speed.py [--types Q4_K_M Q6_K] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
import torch

from _gemma_gguf import f32_gguf
from hfq.algorithms.ggml_quant import quantize_rows
from hfq.formats.ggml_types import TYPES

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from ggml_oracle import run_llama_model_quantize  # noqa: E402


def ggml_chunk_seconds(arrays, type_id: int) -> float:
    """Single-threaded ggml_quantize_chunk over these float32 [rows, cols] arrays (reference path, no imatrix)."""
    import ctypes
    from pathlib import Path as P

    import llama_cpp

    lib = ctypes.CDLL(str(P(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_init(type_id)
    total = 0.0
    for a in arrays:
        a = np.ascontiguousarray(a, dtype=np.float32)
        dst = np.empty(a.nbytes, np.uint8)
        t0 = time.perf_counter()
        lib.ggml_quantize_chunk(type_id, a.ctypes.data, dst.ctypes.data, 0, a.shape[0], a.shape[1], None)
        total += time.perf_counter() - t0
    return total


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
    rows = []
    for ft in args.types:
        dst = work / f"gemma-{ft}.gguf"
        t0 = time.perf_counter()
        run_llama_model_quantize(src, dst, ft, nthread=args.threads)
        t_llama = time.perf_counter() - t0
        out = gguf.GGUFReader(str(dst))
        quant = [t for t in out.tensors if t.tensor_type.name in TYPES and TYPES[t.tensor_type.name].block > 1]
        all_mb = sum(f32[t.name].nbytes for t in quant) / 1e6
        blocks = [t for t in quant if t.name.startswith("blk.")]
        mb = sum(f32[t.name].nbytes for t in blocks) / 1e6
        bad = 0
        quantize_rows(torch.zeros(1, 256), "Q4_K")   # build/load the native kernel outside the timing
        t_hfq = {1: 0.0, args.threads: 0.0}
        for threads in t_hfq:
            torch.set_num_threads(threads)
            for t in blocks:
                w = torch.from_numpy(f32[t.name])
                t0 = time.perf_counter()
                ours = quantize_rows(w, t.tensor_type.name)
                t_hfq[threads] += time.perf_counter() - t0
                bad += int((ours.numpy().reshape(-1) != np.array(t.data).reshape(-1)).sum())
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        for t in quant:
            ours = quantize_rows(torch.from_numpy(f32[t.name]), t.tensor_type.name)
        t_all = time.perf_counter() - t0
        bad += int((ours.numpy().reshape(-1) != np.array(quant[-1].data).reshape(-1)).sum())
        t_ggml = 0.0
        for tname in sorted({t.tensor_type.name for t in blocks}):
            t_ggml += ggml_chunk_seconds([f32[t.name] for t in blocks if t.tensor_type.name == tname],
                                         TYPES[tname].type_id)
        rows.append((ft, mb, t_hfq[1], t_ggml, all_mb, t_all, t_llama, bad))
    print(f"{'file type':9} | blocks {'MB':>5}, 1 thread: {'hfq MB/s':>8} {'ggml MB/s':>9} {'ratio':>5} | "
          f"all quantized tensors {'MB':>6}, {args.threads} threads: {'hfq s':>6} {'llama.cpp s':>11} {'ratio':>5} | "
          "bytes equal")
    for ft, mb, h1, g1, all_mb, ta, tl, bad in rows:
        print(f"{ft:9} | {'':7}{mb:5.0f}{'':11}{mb / h1:8.1f} {mb / g1:9.1f} {g1 / h1:5.2f} | {'':22}{all_mb:6.0f}"
              f"{'':12}{ta:6.2f} {tl:11.2f} {tl / ta:5.2f} | {'yes' if bad == 0 else f'NO ({bad} bytes differ)'}")


if __name__ == "__main__":
    main()
