"""Peak RSS and wall time of from_pretrained: plain float load vs hfq nf4 / rtn-int4-g128 (and bitsandbytes NF4
when installed), each in a fresh subprocess, measured in the same run. Reports ratios against the float load.

    python benchmarks/load_memory.py [--model gemma-3-270m] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, threading, time
import torch

peak_anon = [0]
def _anon_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0
def _sample():  # anonymous memory only: clean pages of the mmapped checkpoint are reclaimable cache
    while True:
        peak_anon[0] = max(peak_anon[0], _anon_kb())
        time.sleep(0.005)
threading.Thread(target=_sample, daemon=True).start()
variant, path = sys.argv[1], sys.argv[2]
kw = {"dtype": torch.float32}
if variant.startswith("hfq-"):
    import hfq
    kw["quantization_config"] = {
        "hfq-nf4-dq": hfq.HfqConfig(method="nf4", double_quant=True),
        "hfq-rtn-int4-g128": hfq.HfqConfig(method="rtn", bits=4, group_size=128),
        "hfq-gguf-q4_k_m": hfq.HfqConfig(method="gguf", quant_type="Q4_K_M"),
    }[variant]
elif variant == "bnb-nf4-dq":
    from transformers import BitsAndBytesConfig
    kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                   bnb_4bit_use_double_quant=True,
                                                   bnb_4bit_compute_dtype=torch.float32)
    kw["device_map"] = "cpu"
from transformers import AutoModelForCausalLM
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(path, **kw)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
time.sleep(0.02)
load_anon = peak_anon[0]
resident = sum(p.numel() * p.element_size() for p in model.parameters())
with torch.no_grad():  # a forward touches every weight, so lazily mapped float files count too
    model(torch.arange(2, 34).unsqueeze(0))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"variant": variant, "wall_s": wall, "peak_rss_mb": peak / 1024, "peak_after_forward_mb": after / 1024,
                  "peak_anon_load_mb": load_anon / 1024, "peak_anon_forward_mb": peak_anon[0] / 1024,
                  "rss_before_load_mb": base / 1024, "param_bytes_mb": resident / 2**20}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--json")
    args = ap.parse_args()
    from hfq.embedded import resolve

    path = resolve(args.model)
    variants = ["float", "hfq-nf4-dq", "hfq-rtn-int4-g128", "hfq-gguf-q4_k_m"]
    try:
        import bitsandbytes  # noqa: F401

        variants.append("bnb-nf4-dq")
    except ImportError:
        pass
    rows = []
    for v in variants:
        out = subprocess.run([sys.executable, "-c", CHILD, v, path], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{v} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"model: {args.model}")
    print("peak RSS (ru_maxrss; counts touched pages of the mmapped checkpoint) and peak anonymous RSS (sampled "
          "every 5 ms; memory really held), for from_pretrained and then one forward")
    print(f"{'variant':20} {'RSS load':>9} {'x float':>8} {'RSS +fwd':>9} {'x float':>8} {'anon load':>10} "
          f"{'anon +fwd':>10} {'x float':>8} {'load s':>7} {'x float':>8} {'params MB':>10}")
    for r in rows:
        r["rss_ratio"] = r["peak_rss_mb"] / base["peak_rss_mb"]
        r["rss_after_forward_ratio"] = r["peak_after_forward_mb"] / base["peak_after_forward_mb"]
        r["anon_forward_ratio"] = r["peak_anon_forward_mb"] / base["peak_anon_forward_mb"]
        r["time_ratio"] = r["wall_s"] / base["wall_s"]
        print(f"{r['variant']:20} {r['peak_rss_mb']:9.0f} {r['rss_ratio']:8.2f} {r['peak_after_forward_mb']:9.0f} "
              f"{r['rss_after_forward_ratio']:8.2f} {r['peak_anon_load_mb']:10.0f} {r['peak_anon_forward_mb']:10.0f} "
              f"{r['anon_forward_ratio']:8.2f} {r['wall_s']:7.1f} {r['time_ratio']:8.2f} {r['param_bytes_mb']:10.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
