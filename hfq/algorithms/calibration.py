"""Importance from calibration text: the mean squared input activation of every linear layer, per column.

This is what llama.cpp's llama-imatrix collects (sum of x^2 over tokens divided by the token count) and what
its weighted quantizers read. Collect it on the float model, save it, then quantize with it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def token_windows(input_ids: torch.Tensor, ctx: int, bos_id: int | None = None) -> list[torch.Tensor]:
    """Split one long token sequence into full windows of ctx tokens (the tail is dropped), as llama-imatrix
    does; with bos_id the first token of every window is replaced by BOS."""
    ids = input_ids.reshape(-1)
    n = ids.numel() // ctx
    if n == 0:
        raise ValueError(f"calibration text has {ids.numel()} tokens, fewer than one window of ctx={ctx}; "
                         "give more text or a smaller ctx.")
    out = []
    for i in range(n):
        w = ids[i * ctx:(i + 1) * ctx].clone()
        if bos_id is not None:
            w[0] = bos_id
        out.append(w.unsqueeze(0))
    return out


@torch.no_grad()
def collect_importance(model: nn.Module, windows: list[torch.Tensor],
                       modules: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Run the model on each window and return {linear name: mean x^2 per input column} (float32)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook(name):
        def fn(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and (modules is None or name in modules):
            hooks.append(m.register_forward_pre_hook(hook(name)))
    if not hooks:
        raise ValueError("the model has no nn.Linear layer to collect importance for (is it already quantized?).")
    device = next(model.parameters()).device
    try:
        for w in tqdm(windows, desc="importance", unit="window", disable=len(windows) < 2):
            model(input_ids=w.to(device))
    finally:
        for h in hooks:
            h.remove()
    return {k: (sums[k] / counts[k]).float().cpu() for k in sums}


def save_importance(importance: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write importance vectors as safetensors, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous().float() for k, v in importance.items()}, str(tmp),
              metadata={"format": "hfq-importance", "statistic": "mean_sq_activation"})
    os.replace(tmp, path)
    return path


def load_importance(source) -> dict[str, torch.Tensor]:
    """A dict as given, or the vectors in a safetensors file written by save_importance."""
    if isinstance(source, dict):
        # explicit device: transformers builds the model under a meta-device context
        return {k: torch.as_tensor(v, device="cpu").float().reshape(-1) for k, v in source.items()}
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"importance file {str(path)!r} does not exist; make one with `hfq importance` or "
                         "hfq.algorithms.calibration.save_importance.")
    try:
        data = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise ValueError(f"importance file {str(path)!r} is not a readable safetensors file ({e}).") from e
    bad = [k for k, v in data.items() if not torch.isfinite(v).all() or (v < 0).any()]
    if bad:
        raise ValueError(f"importance file {str(path)!r} has negative or non-finite values for {bad[:3]}.")
    return data
