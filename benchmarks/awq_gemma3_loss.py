"""Which error AWQ's scale search should minimize on Gemma 3 (issue 16), block by block on Gemma-3-270M.

Each of the first blocks is AWQ'd alone (int4 g128 asym, the slow test's grid and data: 4 x 256 tokens of the
pydoc first half to calibrate, 4 x 256 of the second half held out) with one scale loss, then every linear is
rounded to nearest, and the result is scored by
- the block's held-out output MSE (the residual stream), its share in position 0 and in the top channel;
- the MSE after the next block's input_layernorm (what the next attention reads);
- the KL of the float model's next-token distribution to the model with only this block quantized, on the pydoc
  second half and on hfq's prose (4 x 512 each, every position after the first).
Losses (awq_block's post_norm): `skip` (the raw sub-module output, AutoAWQ's and hfq's default), `normalize`
(each token divided by its RMS as the post norm does, without the norm's channel gain), `apply` (after the whole
post norm, hfq's default before 2026-12-03); `rtn` is the baseline. Also prints the range of the scales chosen
per group.

    python benchmarks/awq_gemma3_loss.py [--blocks 0 1] [--losses rtn skip normalize apply] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hfq.algorithms.awq as awq
from hfq.algorithms.calibration import token_windows
from hfq.algorithms.rtn import quantize_int
from hfq.embedded import local_model
from hfq.evaluation import chunks, pydoc_halves

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj"]
FOLD = awq.fold_scales


def fake_quant(name: str, w: torch.Tensor) -> torch.Tensor:
    """int4 g128 asymmetric round to nearest, as tests/algorithms/test_awq.py's rtn_fake_quant(4, 128)."""
    codes, scales, zeros = quantize_int(w, 4, 128, False)
    return ((codes.float() - zeros.float().unsqueeze(-1)) * scales.float().unsqueeze(-1)).reshape(w.shape)


fake_quant.group_size = 128


def run(block, calls):
    with torch.no_grad():
        return torch.cat([o[0] if isinstance(o, tuple) else o for o in (block(*a, **k) for a, k in calls)])


def rounded(block):
    q = copy.deepcopy(block)
    with torch.no_grad():
        for n in LINEARS:
            q.get_submodule(n).weight.copy_(fake_quant(n, q.get_submodule(n).weight))
    return q


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--losses", nargs="+", default=["rtn", "skip", "normalize", "apply"])
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = local_model("gemma-3-270m")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    layers = model.model.layers
    calls = {i: [] for i in args.blocks}
    hooks = [layers[i].register_forward_pre_hook(lambda m, a, k, i=i: calls[i].append((a, dict(k))),
                                                 with_kwargs=True) for i in calls]
    with torch.no_grad():
        for text in pydoc_halves():
            ids = tok(text[:20000], return_tensors="pt")["input_ids"]
            for w in token_windows(ids, 256, tok.bos_token_id)[:4]:
                model.model(input_ids=w, use_cache=False)
    for h in hooks:
        h.remove()
    prose = (Path(__file__).parent / "data" / "prose_eval.txt").read_text()
    evals = {"pydoc": chunks(tok, pydoc_halves()[1], 512, 4), "prose": chunks(tok, prose, 512, 4)}

    def logprobs(w):
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=w).logits[0].float(), -1)

    base = {k: [logprobs(w) for w in ws] for k, ws in evals.items()}
    rows = []
    for i in args.blocks:
        block, reader = layers[i], layers[i + 1].input_layernorm
        ref = run(block, calls[i][4:])
        for loss in args.losses:
            b, scales = copy.deepcopy(block), {}
            if loss != "rtn":
                awq.fold_scales = lambda blk, arch, prev, ls, s: (scales.setdefault(prev, s.clone()),
                                                                  FOLD(blk, arch, prev, ls, s))
                awq.awq_block(b, calls[i][:4], "gemma3_text", fake_quant, post_norm=loss)
                awq.fold_scales = FOLD
            q = rounded(b)
            out = run(q, calls[i][4:])
            with torch.no_grad():
                e = (out - ref).pow(2)
                e_read = float((reader(out) - reader(ref)).pow(2).mean())
            per_ch = e.mean((0, 1))
            layers[i] = q
            kl = {}
            for k, ws in evals.items():
                tot = sum(float((r.exp() * (r - lp)).sum(-1)[1:].sum()) for r, lp in
                          zip(base[k], (logprobs(w) for w in ws)))
                kl[k] = tot / sum(w.shape[1] - 1 for w in ws)
            layers[i] = block
            row = dict(block=i, loss=loss, mse=float(e.mean()), pos0_share=float(e[:, 0].sum() / e.sum()),
                       top_channel=int(per_ch.argmax()), top_channel_share=float(per_ch.max() / per_ch.sum()),
                       mse_after_next_norm=e_read, kl_pydoc=kl["pydoc"], kl_prose=kl["prose"],
                       scales={p: [round(float(s.min()), 4), round(float(s.max()), 2)] for p, s in scales.items()})
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
