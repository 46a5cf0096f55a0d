"""GPTQ/AWQ defaults across calibration budgets and text domains, on Gemma-3-270M, measured in one run.

Each row quantizes with one setting on one calibration set and scores on two held-out texts: the second half of
CPython's pydoc topics, and English prose written for hfq (benchmarks/data/prose_eval.txt). Calibration sets:
1, 2, 5, 16, 64 windows of 512 tokens from the pydoc first half, the prose calibration file as a list of short
paragraphs (the `GPTQConfig(dataset=[...])` case), and the pydoc first half as a list of paragraphs of the same
size. Settings: hfq's defaults ("auto"), fixed dampening 0.01 / 0.1 with or without GAR, AWQ and its
diagnosis variants, gptqmodel's defaults through transformers' GPTQConfig on the same token windows
(--gptqmodel), and gptqmodel's own AWQ (--gptqmodel-awq; on Gemma 3 its scale fold changes the float model, see
benchmarks/gptqmodel_awq_gemma3_fold.py).

    python benchmarks/calibration_sweep.py [--budgets 1 2 5 16 64 para-prose para-pydoc] [--formats int4 Q3_K_M] [--seed 0]
        [--settings auto d01 d10 d10-gar awq awq-noclip awq-alltok awq-postgain awq-posttok awq-rawattn]
        [--gptqmodel] [--gptqmodel-awq] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hfq
from hfq.evaluation import chunks, pydoc_halves, score
from hfq.embedded import local_model

DATA = Path(__file__).parent / "data"
SETTINGS = {   # name: HfqConfig keywords on top of the format's (None = the field's default)
    "auto": {},
    "rtn": {},     # round to nearest on the same grid, no calibration
    "d01": dict(damp_percent=0.01, act_group_aware=False),
    "d10": dict(damp_percent=0.1, act_group_aware=False),
    "d01-gar": dict(damp_percent=0.01, act_group_aware=True),
    "d10-gar": dict(damp_percent=0.1, act_group_aware=True),
    "d25-gar": dict(damp_percent=0.25, act_group_aware=True),
    "rank-gar": dict(act_group_aware=True),   # candidate rule: auto damp, 0.25 where tokens < input columns
    "rank": {},                                # the same rule where GAR cannot run (GGUF blocks)
    "awq": dict(method="awq"),
    "awq-noclip": dict(method="awq"),   # diagnosis: AWQ's scale search alone, no clipping search
    "awq-alltok": dict(method="awq"),   # diagnosis: the scale search on every calibration token (default: 4,096)
    # Gemma 3's scale loss (awq_block's post_norm): after the whole post norm (hfq's default before 2026-12-03),
    # after the norm without its channel gain, on the raw output (AutoAWQ's; the default since, so = "awq"), and
    # raw for the attention groups only with the whole norm for the MLP's
    "awq-postgain": dict(method="awq"),
    "awq-posttok": dict(method="awq"),
    "awq-nopost": dict(method="awq"),
    "awq-rawattn": dict(method="awq"),
}
AWQ_VARIANTS = {"awq-noclip": dict(clip=False), "awq-alltok": dict(max_tokens=1 << 30),
                "awq-postgain": dict(post_norm="apply"), "awq-posttok": dict(post_norm="normalize"),
                "awq-nopost": dict(post_norm="skip"), "awq-rawattn": dict(post_norm="apply")}
FORMATS = {"int4": dict(bits=4, group_size=128, sym=True), "int3": dict(bits=3, group_size=128, sym=True),
           "Q3_K_M": dict(quant_type="Q3_K_M")}


import hfq.algorithms.awq as _awq
import hfq.algorithms.gptq as _gptq

# the dampening rules (hfq.algorithms.gptq.AUTO_DAMP, read at call time) that candidate settings try
DAMP_RULES = {"rank-gar": ((1, 0.25), *_gptq.AUTO_DAMP), "rank": ((1, 0.25), *_gptq.AUTO_DAMP)}
AUTO_DAMP = _gptq.AUTO_DAMP

# hfq.algorithms.calibrated imports awq_block at call time and awq_block looks scale_groups up at call time, so
# the diagnosis variants replace them for one row
AWQ_BLOCK, SCALE_GROUPS = _awq.awq_block, _awq.scale_groups


def _attn_groups_without_post_norm(block, arch):
    return [(prev, layers, inspect, post if inspect.startswith("mlp") else None)
            for prev, layers, inspect, post in SCALE_GROUPS(block, arch)]


def awq_variant(setting: str) -> None:
    _awq.awq_block = functools.partial(AWQ_BLOCK, **AWQ_VARIANTS.get(setting, {}))
    _awq.scale_groups = _attn_groups_without_post_norm if setting == "awq-rawattn" else SCALE_GROUPS


def paragraphs(text: str, tok, budget: int) -> list[str]:
    """Blank-line separated paragraphs of `text`, in order, until about `budget` tokens."""
    out, n = [], 0
    for p in (p.strip() for p in text.split("\n\n")):
        if p and n < budget:
            out.append(p)
            n += len(tok(p, add_special_tokens=False)["input_ids"])
    return out


def calibration_sets(tok, names, seed=0):
    """{name: HfqConfig dataset keywords}: token windows drawn as hfq draws them, or a list of paragraphs."""
    first = pydoc_halves()[0]
    prose = (DATA / "prose_calibration.txt").read_text()
    n_prose = len(tok(prose, add_special_tokens=False)["input_ids"])
    out = {}
    for n in names:
        if n == "para-prose":
            out[n] = dict(dataset=paragraphs(prose, tok, n_prose))
        elif n == "para-pydoc":
            out[n] = dict(dataset=paragraphs(first, tok, n_prose))
        else:
            out[n] = dict(dataset=None, n_samples=int(n), seq_len=512, seed=seed)
    return out, n_prose


def gptqmodel_config(fmt, data, tok):
    """transformers' GPTQConfig with gptqmodel's defaults, on the same windows hfq draws from `data`."""
    from transformers import GPTQConfig

    from hfq.algorithms.calibration import calibration_windows, dataset_texts

    items, _ = dataset_texts(data["dataset"])
    cw = calibration_windows(items, data.get("n_samples"), data.get("seq_len"), data.get("seed", 0), tok)
    return GPTQConfig(bits=fmt["bits"], group_size=fmt["group_size"], sym=True, tokenizer=tok,
                      dataset=[{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in cw])


def gptqmodel_awq(path, fmt, data, tok):
    """gptqmodel's own AWQ with its defaults (GPTQModel.load + quantize) on the windows hfq draws from `data`;
    returns the quantized transformers model. transformers' AwqConfig only loads AWQ checkpoints. bfloat16, its
    CPU default: its CPU AWQ layer packs only float16/bfloat16 (float32 fails in pack_module with
    NotImplementedError: AwqTorchLinear only supports `[torch.float16, torch.bfloat16]`)."""
    import gptqmodel
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.utils.threadx import DeviceThreadPool

    from hfq.algorithms.calibration import calibration_windows, dataset_texts

    # gptqmodel 7.7's default pool wants 2 "model_loader:cpu" workers, more than the CPU pool it gives 2 cores
    # (ValueError: Virtual pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only has 1); one each
    gptqmodel._build_device_thread_pool = lambda: DeviceThreadPool(
        inference_mode=True, workers={"cpu": 1, "model_loader:cpu": 1}, empty_cache_every_n=512)
    items, _ = dataset_texts(data["dataset"])
    cw = calibration_windows(items, data.get("n_samples"), data.get("seq_len"), data.get("seed", 0), tok)
    qc = QuantizeConfig(bits=fmt["bits"], group_size=fmt["group_size"], sym=True, quant_method="awq", format="gemm")
    m = GPTQModel.load(str(path), qc, device="cpu", dtype=torch.bfloat16)
    # Its scale search recomputes rotary embeddings without Gemma 3's layer_type (TypeError:
    # Gemma3RotaryEmbedding.forward() missing 1 required positional argument: 'layer_type'): use the captured ones
    m.awq_preserve_explicit_position_embeddings = True
    m.quantize([{"input_ids": w.reshape(1, -1), "attention_mask": torch.ones_like(w).reshape(1, -1)} for w in cw],
               batch_size=1)
    # Known gap (2026-12-03): scoring this model fails with "Cannot copy out of meta tensor; no data!", since
    # gptqmodel offloads quantized layers to disk by default; save and reload it, or offload_to_disk=False (untried)
    return m.model


def print_table(files: list[str]) -> None:
    """One markdown table of --json results; 'cut' is the share of RTN's perplexity increase over float removed
    (RTN of the same format, from any of the files)."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    floor = runs[0]["float"]
    rows = [r for run in runs for r in run["rows"]]
    rtn = {r["format"]: r for r in rows if r["setting"] == "rtn"}
    print("| format | calibration | setting | pydoc ppl | KL | top-1 | cut | prose ppl | KL | top-1 | cut | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = []
        for dom in ("pydoc", "prose"):
            f, base = floor[dom]["ppl"], rtn.get(r["format"])
            cut = (f"{1 - (r[dom + '_ppl'] - f) / (base[dom + '_ppl'] - f):.0%}"
                   if base and r["setting"] != "rtn" else "")
            cells += [f"{r[dom + '_ppl']:.2f}", f"{r[dom + '_kl']:.3f}", f"{r[dom + '_top1']:.3f}", cut]
        print(f"| {r['format']} | {r['calibration']} | {r['setting']} | {' | '.join(cells)} | {r['seconds']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", nargs="*", default=["1", "2", "5", "16", "64", "para-prose", "para-pydoc"])
    ap.add_argument("--formats", nargs="*", default=["int4", "Q3_K_M"])
    ap.add_argument("--settings", nargs="*", default=["auto", "d01", "d10", "d10-gar", "awq"])
    ap.add_argument("--gptqmodel", action="store_true", help="add gptqmodel's defaults (int formats only)")
    ap.add_argument("--gptqmodel-awq", action="store_true", help="add gptqmodel's own AWQ (int formats only)")
    ap.add_argument("--eval-chunks", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="which windows of the built-in text the budgets draw")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print the markdown table of earlier --json runs")
    args = ap.parse_args()
    if args.table:
        return print_table(args.table)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = local_model("gemma-3-270m")
    tok = AutoTokenizer.from_pretrained(path)
    evals = {"pydoc": chunks(tok, pydoc_halves()[1], 512, args.eval_chunks),
             "prose": chunks(tok, (DATA / "prose_eval.txt").read_text(), 512, args.eval_chunks)}
    sets, n_prose = calibration_sets(tok, args.budgets, args.seed)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    floor = {k: score(base, w, progress=False) for k, w in evals.items()}
    print(f"held-out: pydoc {len(evals['pydoc'])} x 512, prose {len(evals['prose'])} x 512; paragraph sets "
          f"~{n_prose} tokens. float32 ppl: pydoc {floor['pydoc']['ppl']:.3f}, prose {floor['prose']['ppl']:.3f}")
    print(f"{'format':7} {'calib':10} {'setting':10} {'ppl pydoc':>9} {'KL':>7} {'top1':>6} "
          f"{'ppl prose':>9} {'KL':>7} {'top1':>6} {'time s':>7}")
    results = []
    for fmt_name in args.formats:
        fmt = FORMATS[fmt_name]
        runs = [(s, SETTINGS[s]) for s in args.settings if s != "rtn"]
        if args.gptqmodel and "bits" in fmt:
            runs.append(("gptqmodel", None))
        if args.gptqmodel_awq and "bits" in fmt:
            runs.append(("gptqmodel-awq", None))
        todo = [(c, d, s, e) for c, d in sets.items() for s, e in runs
                if not (fmt_name.startswith("Q") and "gar" in s)]   # GAR cannot reorder GGUF blocks
        if "rtn" in args.settings:   # the baseline GPTQ/AWQ improve on: calibration-free, one row per format
            todo.insert(0, ("-", {}, "rtn", {"method": "rtn" if "bits" in fmt else "gguf"}))
        for cal_name, data, s_name, extra in todo:
            awq_variant(s_name)
            _gptq.AUTO_DAMP = DAMP_RULES.get(s_name, AUTO_DAMP)
            t0 = time.perf_counter()
            if s_name == "gptqmodel-awq":
                m = gptqmodel_awq(path, fmt, data, tok)
            else:
                qc = (gptqmodel_config(fmt, data, tok) if extra is None else
                      hfq.HfqConfig(**{"method": "gptq", **fmt, **data, **extra}))
                m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu",
                                                         quantization_config=qc)
            dt = time.perf_counter() - t0
            r = {k: score(m, w, base=base, progress=False) for k, w in evals.items()}
            row = dict(format=fmt_name, calibration=cal_name, setting=s_name, seconds=round(dt, 1),
                       **{f"{k}_{q}": round(v[q], 5) for k, v in r.items() for q in ("ppl", "kl", "top1")})
            results.append(row)
            print(f"{fmt_name:7} {cal_name:10} {s_name:10} {row['pydoc_ppl']:9.3f} {row['pydoc_kl']:7.4f} "
                  f"{row['pydoc_top1']:6.3f} {row['prose_ppl']:9.3f} {row['prose_kl']:7.4f} "
                  f"{row['prose_top1']:6.3f} {dt:7.1f}", flush=True)
            del m
            if args.json:
                Path(args.json).write_text(json.dumps({"float": floor, "rows": results}, indent=1))

if __name__ == "__main__":
    main()
