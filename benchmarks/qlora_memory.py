"""Peak RSS and time of a QLoRA step: hfq nf4-dq against bitsandbytes NF4 with double quantization, same model.

A random Llama (hidden 1024, 8 layers, vocab 8192: 117M parameters, 470 MB in float32) is saved once; each backend
then runs in its own process: load with the quantization config, prepare_model_for_kbit_training, LoRA r=16 on
q_proj/v_proj (peft), and STEPS AdamW steps on a batch of 2 x 256 tokens. Reported: peak RSS after loading and after
the steps (ru_maxrss of that process), the packed size of the quantized layers, and seconds per step.

    python benchmarks/qlora_memory.py [--steps 3] [--threads 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CFG = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
           num_key_value_heads=16, vocab_size=8192, max_position_embeddings=512, tie_word_embeddings=False)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(backend: str, path: str, steps: int) -> dict:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    import hfq

    base_rss = _rss_mb()
    if backend == "hfq":
        q = hfq.HfqConfig(method="nf4", double_quant=True)
    else:
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    packed = sum(t.numel() * t.element_size() for n, t in model.state_dict().items()
                 if t.dtype == torch.uint8)
    load_rss = _rss_mb()
    model = get_peft_model(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, CFG["vocab_size"], (2, 256), generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return {"backend": backend, "rss_after_import_mb": base_rss, "peak_rss_after_load_mb": load_rss,
            "peak_rss_after_steps_mb": _rss_mb(), "packed_mb": packed / 1e6, "load_s": load_s,
            "step_s": min(times), "loss": loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=2, metavar=("BACKEND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.steps)))
        return
    from transformers import LlamaConfig, LlamaForCausalLM

    rows = []
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**CFG)).save_pretrained(d)
        for backend in ("hfq", "bitsandbytes"):
            r = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--threads", str(args.threads),
                                "--child", backend, d], capture_output=True, text=True, check=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"{'backend':14} {'packed MB':>9} {'RSS import':>10} {'peak load':>9} {'peak step':>9} {'s/step':>7}")
    for r in rows:
        print(f"{r['backend']:14} {r['packed_mb']:9.1f} {r['rss_after_import_mb']:10.0f} "
              f"{r['peak_rss_after_load_mb']:9.0f} {r['peak_rss_after_steps_mb']:9.0f} {r['step_s']:7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
