"""hfq's GGUF types against llama.cpp's own files of the same types, on the same held-out tokens.

For each type, with and without importance:
- llama.cpp: llama_model_quantize (or the llama-quantize binary with --imatrix) on the F32 GGUF of Gemma-3-270M,
  then llama-cpp-python evaluates the file;
- hfq: HfqConfig(method="gguf") in transformers with the same importance vectors;
and both are scored against the float model in transformers (ppl, mean KL, top-1). The block tensors of the
two are also compared byte for byte. The importance vectors are hfq's, written as an imatrix file for
llama-quantize, so both sides quantize with identical vectors.

    python benchmarks/gguf_quality_vs_llama_cpp.py --llama-quantize /path/to/llama-quantize
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import numpy as np
from transformers import AutoModelForCausalLM

import hfq
from _gemma_gguf import f32_gguf
from gguf_quality import arguments, baseline, evaluate
from hfq.algorithms.calibration import save_importance
from hfq.evaluation import GGUFModel
from hfq.gguf.names import gguf_name

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from ggml_oracle import read_gguf, run_llama_model_quantize, run_llama_quantize_bin, write_imatrix  # noqa: E402



def _gname(module: str) -> str | None:
    return gguf_name(module, "gemma3_text", 18, tied=True)   # Gemma-3-270M: 18 blocks, tied embeddings

def llama_cpp_scores(path: Path, windows, ref):
    """ppl, KL and top-1 of a GGUF file in llama.cpp over every position but the last, as evaluate() scores."""
    model = GGUFModel(path, windows[0].shape[1], threads=2)
    nll, n, kl, agree = 0.0, 0, 0.0, 0
    for i, w in enumerate(windows):
        logp = model.logprobs(w)[: w.shape[1] - 1]
        tgt = w[0, 1:]
        nll -= logp.gather(1, tgt.unsqueeze(1)).sum().item()
        n += tgt.numel()
        ra, rl = ref[i]
        kl += (rl.exp() * (rl - logp)).sum().item()
        agree += (logp.argmax(-1) == ra).sum().item()
    return math.exp(nll / n), kl / n, agree / n


def main() -> None:
    args = arguments(lambda ap: ap.add_argument(
        "--llama-quantize", help="llama-quantize binary, for the importance-weighted llama.cpp files"))
    work = Path(tempfile.gettempdir()) / "hfq-bench"
    work.mkdir(exist_ok=True)
    src = f32_gguf(work / "gemma-3-270m-f32.gguf")
    path, ev, cw, _, ref, imp = baseline(args)
    imp_file = save_importance(imp, work / "importance.safetensors")
    imatrix = write_imatrix(work / "imatrix.gguf", {_gname(k): v.numpy() for k, v in imp.items()
                                                    if (_gname(k) or "").startswith("blk.")})
    print(f"llama.cpp F32 file vs transformers float: ppl/KL/top-1 = "
          f"{'/'.join(f'{v:.3f}' for v in llama_cpp_scores(src, ev, ref))}")
    print(f"{'variant':22} {'hfq ppl':>8} {'KL':>7} {'top-1':>6} | {'llama.cpp ppl':>13} {'KL':>7} {'top-1':>6} | "
          "block tensors byte-equal")
    for qt in args.types:
        for weighted in (False, True):
            if weighted and not args.llama_quantize:
                continue
            dst = work / f"lc-{qt}{'-imat' if weighted else ''}.gguf"
            if weighted:
                theirs = run_llama_quantize_bin(args.llama_quantize, src, dst, qt, imatrix, pure=False)
            else:
                run_llama_model_quantize(src, dst, qt)
                theirs = read_gguf(dst)
            cfg = hfq.HfqConfig(method="gguf", quant_type=qt, importance=str(imp_file) if weighted else None)
            m = AutoModelForCausalLM.from_pretrained(path, quantization_config=cfg)
            same = total = 0
            for name, layer in m.named_modules():
                if isinstance(layer, hfq.nn.HfqLinear):
                    tname, data = theirs[_gname(name)]
                    total += 1
                    same += int(tname == layer.ggml_type and np.array_equal(data.reshape(-1),
                                                                           layer.weight.numpy().reshape(-1)))
            hp, hk, ha, _ = evaluate(m, ev, ref)
            del m
            lp, lk, la = llama_cpp_scores(dst, ev, ref)
            print(f"{cfg.short_name():22} {hp:8.2f} {hk:7.3f} {ha:6.3f} | {lp:13.2f} {lk:7.3f} {la:6.3f} | "
                  f"{same}/{total}")


if __name__ == "__main__":
    main()
