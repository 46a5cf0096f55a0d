"""What the CPU GEMV's activation quantization alone costs on Gemma-3-270M: hfq's gguf-q4_k_m variant of the
embedded demo model (whose float weights are Q4_K_M values already, so requantizing changes almost nothing)
against the float model, on 64 windows of 16 tokens of the held-out pydoc half, so that every matmul is a GEMV
(16 rows of x at most). KL and top-1 agreement over positions 1-8 of each window, with int16 activations (the
default) and int8 (HFQ_CPU_ACTIVATIONS=int8, llama.cpp's arithmetic), in one process.

    python benchmarks/activation_kl.py [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

import hfq  # noqa: F401  (registers HfqConfig with transformers)
from hfq.embedded import local_model
from hfq.evaluation import pydoc_halves
from hfq.publish import variants


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = local_model()
    ids = AutoTokenizer.from_pretrained(base)(pydoc_halves()[1], return_tensors="pt").input_ids[0][: 64 * 16]
    ids = ids.reshape(64, 16)
    float_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    cfg = variants.get("gguf-q4_k_m").config(None)
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=cfg, dtype=torch.float32).eval()

    def logprobs(m):
        with torch.no_grad():
            return F.log_softmax(torch.cat([m(ids[i:i + 1]).logits[0, 1:9].float() for i in range(len(ids))]), -1)

    ref = logprobs(float_model)
    before = torch.ops.hfq_cpu.activations()
    try:
        for mode in ("int16", "int8"):
            torch.ops.hfq_cpu.set_activations(mode)
            lq = logprobs(model)
            kl = (ref.exp() * (ref - lq)).sum(-1).mean().item()
            top = (ref.argmax(-1) == lq.argmax(-1)).float().mean().item()
            print(f"{mode}: KL {kl:.3g}, top-1 {top:.3f} over {ref.shape[0]} positions "
                  f"(isa {torch.ops.hfq_cpu.isa()}, {args.threads} threads)")
    finally:
        torch.ops.hfq_cpu.set_activations(before)


if __name__ == "__main__":
    main()
