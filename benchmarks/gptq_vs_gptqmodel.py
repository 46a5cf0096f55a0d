"""hfq's GPTQ against gptqmodel's (transformers' GPTQConfig path, optimum + gptqmodel) on Gemma-3-270M, with the
same calibration windows and the same held-out scoring as benchmarks/gptq_awq_quality.py: perplexity, mean KL
from float, top-1, and quantization wall time, both measured in this run.

gptqmodel upgrades torch, so run this in its own venv (see /work/shared/notes/gptqmodel.md):

    PYTHONPATH=$PWD /path/to/venv-with-gptqmodel/bin/python benchmarks/gptq_vs_gptqmodel.py [--n-samples 16]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTQConfig

import hfq
from hfq.algorithms.calibration import calibration_windows, dataset_texts
from hfq.evaluation import chunks, score, pydoc_halves
from hfq.embedded import local_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-chunks", type=int, default=4)
    ap.add_argument("--desc-act", action="store_true")
    ap.add_argument("--threads", type=int, help="torch CPU threads for both (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = local_model("gemma-3-270m")
    tok = AutoTokenizer.from_pretrained(path)
    ev = chunks(tok, pydoc_halves()[1], 512, args.eval_chunks)
    items, _ = dataset_texts(None)
    cw = calibration_windows(items, args.n_samples, args.seq_len, 0, tok)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    f = score(base, ev, progress=False)
    print(f"{'variant':28} {'ppl':>8} {'KL':>7} {'top-1':>6} {'time s':>7}")
    print(f"{'float32':28} {f['ppl']:8.3f}")
    def ours(gar):
        return lambda: hfq.HfqConfig(method="gptq", bits=4, group_size=128, sym=True, desc_act=args.desc_act,
                                     act_group_aware=gar and not args.desc_act, dataset=[w[0].tolist() for w in cw],
                                     n_samples=len(cw), seq_len=args.seq_len)

    def theirs(gar):
        return lambda: GPTQConfig(bits=4, group_size=128, sym=True, desc_act=args.desc_act,
                                  act_group_aware=gar and not args.desc_act, tokenizer=tok,
                                  dataset=[{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in cw])

    # gptqmodel's default is group-aware reordering (GAR) with damp 0.1; hfq's is plain order with damp 0.01
    runs = {"hfq GPTQ int4 g128": ours(False), "hfq GPTQ int4 g128 GAR": ours(True),
            "gptqmodel int4 g128 (GAR)": theirs(True), "gptqmodel int4 g128 no GAR": theirs(False)}
    for label, make in runs.items():
        t0 = time.perf_counter()
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu",
                                                 quantization_config=make())
        dt = time.perf_counter() - t0
        r = score(m, ev, base=base, progress=False)
        print(f"{label:28} {r['ppl']:8.3f} {r['kl']:7.4f} {r['top1']:6.3f} {dt:7.1f}", flush=True)
        del m


if __name__ == "__main__":
    main()
