"""Run a decoder block by block on calibration windows, for calibrated quantization (GPTQ, AWQ).

The first pass swaps every block's forward for a stub that records the arguments the decoder passes it
(attention mask, position embeddings, ...: they can differ per block, e.g. Gemma's sliding/global layers) and
returns its input, so only the embeddings run; the last stub stops the model. Then each block in turn gets its
inputs, `process(...)` quantizes it in place, and the quantized block computes the next block's inputs. Only one
block's activations live at a time. Generic over architectures: the blocks are the longest nn.ModuleList of
modules that hold nn.Linear layers (model.model.layers in transformers decoders).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class _Stop(Exception):
    pass


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(prefix, blocks): the decoder's list of repeated blocks."""
    best = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and all(
                any(isinstance(x, nn.Linear) for x in b.modules()) for b in m):
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    if best is None:
        raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}: calibrated methods need an "
                         "nn.ModuleList of blocks holding nn.Linear layers (e.g. model.model.layers).")
    return best


def _first_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_inputs(model: nn.Module, blocks: nn.ModuleList, windows: list[torch.Tensor]):
    """(inputs of block 0 as [(args, kwargs)] per window, per-block kwargs [block][window])."""
    first, per_block = [], [[] for _ in blocks]
    saved = []

    def stub(i):
        def fwd(*args, **kwargs):
            kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "use_cache")}
            if i == 0:
                first.append(((args[0],) + tuple(args[1:]), kw))
            per_block[i].append((tuple(args[1:]), kw))
            if i == len(blocks) - 1:
                raise _Stop
            return args[0] if args else kwargs["hidden_states"]
        return fwd

    for i, b in enumerate(blocks):
        saved.append(b.__dict__.get("forward"))
        b.forward = stub(i)
    device = next(model.parameters()).device
    try:
        for w in windows:
            try:
                model(input_ids=w.to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        for b, f in zip(blocks, saved):
            del b.forward
            if f is not None:
                b.forward = f
    if len(first) != len(windows):
        raise RuntimeError(f"the decoder called its first block {len(first)} times for {len(windows)} windows; "
                           "calibrated quantization needs one call per window.")
    return first, per_block


def run_block(block: nn.Module, inputs: list) -> list[torch.Tensor]:
    return [_first_tensor(block(*a, **kw)) for a, kw in inputs]


def linear_groups(block: nn.Module, inputs: list) -> list[list[str]]:
    """The block's nn.Linear layers in call order, grouped by shared input (q,k,v | o | gate,up | down)."""
    order, seen = [], {}
    hooks = []

    def hook(name):
        def fn(m, args):
            key = (args[0].data_ptr(), tuple(args[0].shape))
            if name not in seen:
                seen[name] = key
                order.append(name)
        return fn

    for name, m in block.named_modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_pre_hook(hook(name)))
    try:
        with torch.no_grad():
            a, kw = inputs[0]
            block(*a, **kw)
    finally:
        for h in hooks:
            h.remove()
    groups = []
    for name in order:
        if groups and seen[groups[-1][-1]] == seen[name]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def collect_inputs(block: nn.Module, inputs: list, names: list[str], fn: Callable[[str, torch.Tensor], None]):
    """Run the block on every input until the last of `names` has been called; fn(name, x) sees each input."""
    last = names[-1]
    hooks = []

    def hook(name):
        def f(m, args):
            fn(name, args[0])
            if name == last:
                raise _Stop
        return f

    for n in names:
        hooks.append(block.get_submodule(n).register_forward_pre_hook(hook(n)))
    try:
        with torch.no_grad():
            for a, kw in inputs:
                try:
                    block(*a, **kw)
                except _Stop:
                    pass
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def calibrate_blocks(model: nn.Module, windows: list[torch.Tensor],
                     process: Callable[[int, str, nn.Module, list], dict], desc: str = "calibrate") -> list[dict]:
    """For each block: process(index, prefix, block, inputs) quantizes it in place (inputs: [(args, kwargs)]);
    then the quantized block computes the next block's inputs. Returns process's summaries."""
    prefix, blocks = find_blocks(model)
    t0 = time.perf_counter()
    first, per_block = capture_inputs(model, blocks, windows)
    hidden = [a[0] for a, _ in first]
    del first
    summaries = []
    bar = tqdm(range(len(blocks)), desc=desc, unit="block")
    for i in bar:
        inputs = [((h,) + a, kw) for h, (a, kw) in zip(hidden, per_block[i])]
        tb = time.perf_counter()
        summaries.append(process(i, f"{prefix}.{i}", blocks[i], inputs))
        hidden = run_block(blocks[i], inputs)
        del inputs
        per_block[i] = None
        done = time.perf_counter() - t0
        logger.info("%s: block %d/%d in %.1f s; %.0f s elapsed, about %.0f s left%s", desc, i + 1, len(blocks),
                    time.perf_counter() - tb, done, done / (i + 1) * (len(blocks) - i - 1), _peak_memory())
    return summaries


def _peak_memory() -> str:
    parts = []
    try:
        import resource

        parts.append(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    except ImportError:   # not on Windows
        pass
    if torch.cuda.is_available():
        parts.append(f"peak CUDA {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")
    return "; " + ", ".join(parts) if parts else ""
