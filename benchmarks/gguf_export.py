"""GGUF export of Gemma-3-270M: export time against llama.cpp's own requantize, and decode speed of the exported
file in llama.cpp next to the file llama.cpp made itself. Same machine, same run.

- hfq: `hfq.export_gguf(float_model, tok, path, quant_type=T)` (the model already loaded; encoding and writing).
- llama.cpp: llama_model_quantize from the F32 GGUF of the same weights to T (reading, encoding, writing). The F32
  file is hfq's own F32 export, which equals convert_hf_to_gguf.py's output (tests/gguf/test_export_converter.py).
- Decode: llama-cpp-python, greedy, one token per eval after a short prompt, 2 threads, repeated and alternated
  between the two files; the median tokens/s is reported. The bytes of both files are compared too.

    python benchmarks/gguf_export.py [--types Q4_K_M Q8_0] [--threads 2] [--tokens 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import hfq
from hfq.evaluation import _no_extra_buffers, chunks, score, pydoc_halves

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from ggml_oracle import read_gguf, run_llama_model_quantize  # noqa: E402


def decode_tps(path: Path, threads: int, tokens: int) -> float:
    import llama_cpp

    with _no_extra_buffers(llama_cpp):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=tokens + 16, n_threads=threads, verbose=False)
    llm.eval(llm.tokenize(b"The capital of France is"))
    t0 = time.perf_counter()
    for _ in range(tokens):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([tok])
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", nargs="+", default=["Q4_K_M", "Q8_0"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=8, help="512-token chunks for the KL rows (half of each is scored)")
    ap.add_argument("--llama-cpp-src", help="llama.cpp source tree: also time convert_hf_to_gguf.py (F32) from the "
                    "HF folder, i.e. llama.cpp's whole route from a transformers checkpoint")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfq.embedded import local_model
    src = local_model("gemma-3-270m")
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        f32 = hfq.export_gguf(model, tok, d / "f32.gguf", quant_type="F32", progress=False)[0]
        t_convert = None
        if args.llama_cpp_src:
            import subprocess
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(Path(__file__).parents[1] / "tests" / "convert_runner.py"), str(src),
                            str(d / "conv.gguf"), "f32", "", args.llama_cpp_src], check=True, capture_output=True)
            t_convert = time.perf_counter() - t0
            (d / "conv.gguf").unlink()
            print(f"llama.cpp convert_hf_to_gguf.py to F32: {t_convert:.2f} s")
        for qt in args.types:
            t0 = time.perf_counter()
            ours = hfq.export_gguf(model, tok, d / f"hfq-{qt}.gguf", quant_type=qt, progress=False)[0]
            t_hfq = time.perf_counter() - t0
            t0 = time.perf_counter()
            run_llama_model_quantize(f32, d / f"lc-{qt}.gguf", qt, nthread=args.threads)
            t_lc = time.perf_counter() - t0
            a, b = read_gguf(ours), read_gguf(d / f"lc-{qt}.gguf")
            same = sum(a[n][0] == b[n][0] and np.array_equal(a[n][1], b[n][1]) for n in b)
            tps = {"hfq": [], "llama.cpp": []}
            for _ in range(args.repeats):
                tps["hfq"].append(decode_tps(ours, args.threads, args.tokens))
                tps["llama.cpp"].append(decode_tps(d / f"lc-{qt}.gguf", args.threads, args.tokens))
            row = {"type": qt, "export_s_hfq": t_hfq, "requantize_s_llama_cpp": t_lc, "time_ratio": t_hfq / t_lc,
                   "convert_plus_requantize_s_llama_cpp": t_convert and t_convert + t_lc,
                   "tensors_equal": f"{same}/{len(b)}", "decode_tps_hfq": statistics.median(tps["hfq"]),
                   "decode_tps_llama_cpp": statistics.median(tps["llama.cpp"])}
            row["decode_ratio"] = row["decode_tps_hfq"] / row["decode_tps_llama_cpp"]
            # the two engines on the same weights: llama.cpp on hfq's file against hfq's transformers model
            hq = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, quantization_config=hfq.HfqConfig(
                method="gguf", quant_type=qt)).eval()
            windows = chunks(tok, pydoc_halves()[1], 512)[:args.chunks]
            same_file = score(ours, windows, base=d / f"lc-{qt}.gguf", threads=args.threads, progress=False)
            engines = score(ours, windows, base=hq, threads=args.threads, progress=False)
            del hq
            row.update({"kl_vs_llama_cpp_file": same_file["kl"], "top1_vs_llama_cpp_file": same_file["top1"],
                        "kl_vs_hfq_transformers": engines["kl"], "top1_vs_hfq_transformers": engines["top1"],
                        "eval_tokens": engines["scored_tokens"]})
            rows.append(row)
            print(f"{qt}: export hfq {t_hfq:.2f} s vs llama.cpp requantize {t_lc:.2f} s ({row['time_ratio']:.2f}x); "
                  f"tensors equal {row['tensors_equal']}; decode {row['decode_tps_hfq']:.1f} vs "
                  f"{row['decode_tps_llama_cpp']:.1f} tokens/s ({row['decode_ratio']:.2f}x); KL vs llama.cpp's file "
                  f"{row['kl_vs_llama_cpp_file']:.2e} (top-1 {row['top1_vs_llama_cpp_file']:.4f}); llama.cpp vs "
                  f"transformers on these weights: KL {row['kl_vs_hfq_transformers']:.4f}, top-1 "
                  f"{row['top1_vs_hfq_transformers']:.3f} over {row['eval_tokens']} tokens")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
