"""Per-block steps of the calibrated methods, for hfq.algorithms.layerwise.calibrate_blocks: GPTQ (true-sequential
groups of linears) and AWQ (scale search from hfq.algorithms.awq, then the grid's own encoder). Each quantized
nn.Linear is replaced by an HfqLinear holding its layout tensors, so the next block's inputs come from exactly
the layers that will be saved."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..nn import HfqLinear
from .gptq import Hessian, auto_damp, gptq_quantize
from .layerwise import collect_inputs, linear_groups

logger = logging.getLogger(__name__)


def install(block: nn.Module, name: str, grid, tensors: dict[str, torch.Tensor]) -> HfqLinear:
    """Replace block.<name> (an nn.Linear) with an HfqLinear holding `tensors`."""
    lin = block.get_submodule(name)
    w = lin.weight
    new = HfqLinear(lin.in_features, lin.out_features, lin.bias is not None, grid.layout,
                    getattr(grid, "bits", 4), grid.group_size or 0, getattr(grid, "sym", True),
                    getattr(grid, "double_quant", False), dtype=w.dtype, device=w.device,
                    ggml_type=getattr(grid, "type", None), act_order="g_idx" in tensors)
    new.load_quantized({k: v.to(w.device) for k, v in tensors.items()})
    if lin.bias is not None:
        new.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
    new._is_hf_initialized = True
    block.set_submodule(name, new)
    return new


def gptq_block(block: nn.Module, inputs: list, grids: dict, damp: float | None, desc_act: bool, static_groups: bool,
               true_sequential: bool = True, prefix: str = "", group_aware: bool = False) -> dict:
    """GPTQ on every linear of `block` named in `grids` ({name relative to block: grid}); damp None: per layer
    from its token count and width (hfq.algorithms.gptq.auto_damp)."""
    groups = [[n for n in g if n in grids] for g in linear_groups(block, inputs)]
    groups = [g for g in groups if g]
    missing = set(grids) - {n for g in groups for n in g}
    if missing:
        raise ValueError(f"{prefix}: layers {sorted(missing)} were not called by the block's forward; GPTQ "
                         "cannot collect their inputs. List them in modules_to_not_convert.")
    stages = groups if true_sequential else [[n for g in groups for n in g]]
    summary = {}
    for stage in stages:
        # linears of one group see the same input: one Hessian per group
        owner = {n: g[0] for g in groups for n in g if n in stage}
        hess = {o: Hessian(block.get_submodule(o).in_features, block.get_submodule(o).weight.device)
                for o in set(owner.values())}
        collect_inputs(block, inputs, stage, lambda n, x: hess[n].add(x) if n in hess else None)
        for n in stage:
            lin = block.get_submodule(n)
            h = hess[owner[n]]
            d = damp if damp is not None else auto_damp(h.n, lin.in_features)
            res = gptq_quantize(lin.weight.detach(), h.H, grids[n], d, desc_act, static_groups,
                                name=f"{prefix}.{n}", group_aware=group_aware)
            install(block, n, grids[n], res.tensors)
            summary[n] = {"loss": round(res.loss, 6), "damp": res.damp, **res.info}
        del hess
    logger.debug("gptq %s: %s", prefix, summary)
    return summary


def fake_quant_fn(grids: dict):
    """fake_quant(name, weight) for AWQ: the quantize-dequantize of a weight on its grid (identity if kept float)."""
    def fq(name: str, w: torch.Tensor) -> torch.Tensor:
        g = grids.get(name)
        if g is None:
            return w
        return g.fake(w.detach()).to(w.dtype)
    return fq


def awq_block_step(block: nn.Module, inputs: list, grids: dict, arch: str, prefix: str = "") -> dict:
    """AWQ's scale and clip search on the float block, then each linear through its grid's encoder."""
    from .awq import awq_block

    # the group the search normalizes and clips by: the grid's group, or the smallest GGML block in this block
    widths = {g.group_size if g.group_size else g.step for g in grids.values()}
    summary = awq_block(block, inputs, arch, fake_quant_fn(grids), group_size=min(widths))
    for n, g in grids.items():
        w = block.get_submodule(n).weight.detach().float()
        install(block, n, g, g.rtn(w))
    logger.debug("awq %s: %s", prefix, summary)
    return summary
