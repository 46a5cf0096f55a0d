"""Quality of GGUF types on Gemma-3-270M, with and without importance: perplexity, mean KL from the float model
and top-1 agreement on held-out text (2,048 tokens, ctx 512), measured in one run against the float baseline.

Calibration and held-out text are disjoint halves of CPython's pydoc topics (shipped with Python; nothing is
downloaded). hfq's bytes equal llama.cpp's for the same weights and importance (tests/algorithms), so these are
also the numbers of llama.cpp files of the same types, up to llama.cpp's own kernels.

    python benchmarks/gguf_quality.py [--types Q4_0 Q3_K_M Q2_K] [--calib-windows 16]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

import hfq
from _gemma_gguf import texts
from hfq.algorithms.calibration import collect_importance, save_importance, token_windows
from hfq.embedded import local_model


def evaluate(model, windows, ref_logp=None):
    nll, n, kl, agree, logps = 0.0, 0, 0.0, 0, []
    with torch.no_grad():
        for i, w in enumerate(windows):
            logp = F.log_softmax(model(input_ids=w).logits[0, :-1].float(), -1)
            tgt = w[0, 1:]
            nll -= logp.gather(1, tgt.unsqueeze(1)).sum().item()
            n += tgt.numel()
            if ref_logp is None:
                logps.append((logp.argmax(-1), logp))
            else:
                ra, rl = ref_logp[i]
                kl += (rl.exp() * (rl - logp)).sum().item()
                agree += (logp.argmax(-1) == ra).sum().item()
    return math.exp(nll / n), kl / n, agree / n, logps


def arguments(extra=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", nargs="+", default=["Q4_0", "Q3_K_M", "Q2_K"])
    ap.add_argument("--calib-windows", type=int, default=16)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--ctx", type=int, default=512)
    if extra:
        extra(ap)
    return ap.parse_args()


def baseline(args):
    """(model folder, held-out windows, calibration windows, float ppl, float reference, importance dict)."""
    path = local_model("gemma-3-270m")
    tok = AutoTokenizer.from_pretrained(path)
    calib, held = texts()
    enc = lambda t: tok(t, return_tensors="pt", add_special_tokens=False)["input_ids"]
    ev = token_windows(enc(held)[:, :args.eval_tokens], args.ctx, tok.bos_token_id)
    cw = token_windows(enc(calib), args.ctx, tok.bos_token_id)[:args.calib_windows]
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ppl, _, _, ref = evaluate(base, ev)
    return path, ev, cw, ppl, ref, collect_importance(base, cw)


def main() -> None:
    args = arguments()
    path, ev, cw, ppl, ref, imp = baseline(args)
    imp_file = save_importance(imp, Path(tempfile.mkdtemp()) / "importance.safetensors")
    print(f"held-out {sum(w.numel() for w in ev)} tokens, calibration {sum(w.numel() for w in cw)} tokens")
    print(f"{'variant':22} {'bpw':>6} {'ppl':>8} {'KL':>7} {'top-1':>6}")
    print(f"{'float32 (baseline)':22} {32:6.2f} {ppl:8.2f} {0:7.3f} {1:6.3f}")
    for qt in args.types:
        for imp in (None, str(imp_file)):
            cfg = hfq.HfqConfig(method="gguf", quant_type=qt, importance=imp)
            m = AutoModelForCausalLM.from_pretrained(path, quantization_config=cfg)
            q_bytes = sum(l.weight.numel() for l in m.modules() if isinstance(l, hfq.nn.HfqLinear))
            q_w = sum(l.in_features * l.out_features for l in m.modules() if isinstance(l, hfq.nn.HfqLinear))
            p, kl, ag, _ = evaluate(m, ev, ref)
            print(f"{cfg.short_name():22} {8 * q_bytes / q_w:6.2f} {p:8.2f} {kl:7.3f} {ag:6.3f}")


if __name__ == "__main__":
    main()
