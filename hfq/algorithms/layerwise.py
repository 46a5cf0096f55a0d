"""Run a decoder block by block on calibration windows, for calibrated quantization (GPTQ, AWQ).

The first pass swaps every block's forward for a stub that records the arguments the decoder passes it
(attention mask, position embeddings, ...: they can differ per block, e.g. Gemma's sliding/global layers) and
returns its input, so only the embeddings run; the last stub stops the model. Then each block in turn gets its
inputs, `process(...)` quantizes it in place, and the quantized block computes the next block's inputs. Only one
block's activations live at a time. Windows whose other arguments are equal run as one batch (fewer, larger
matmuls), after checking on the first block that batching leaves each window's output unchanged. Generic over
architectures: the blocks are the longest nn.ModuleList of modules that hold nn.Linear layers (model.model.layers
in transformers decoders).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

BATCH_TOKENS = 8192     # calibration windows run through a block together, up to this many tokens (measured 1.5-2x
                        # faster than one window per call on Gemma-3-270M, 16 x 512 tokens, 2 CPU cores)


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


def execution_device(model: nn.Module) -> torch.device:
    """Where the model computes: accelerate's execution device when it dispatched the model, else the device of
    its first parameter that is not on meta (offloaded weights sit on meta between forwards)."""
    hook = getattr(model, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def onload_block(model: nn.Module, prefix: str, block: nn.Module) -> None:
    """Bring an accelerate-offloaded block's weights onto its execution device for good (its offload hooks are
    removed), so it can be quantized in place; the quantized layers then stay there. Only this block's float
    weights are on the device while it is calibrated; later blocks stay offloaded until their turn."""
    from accelerate.hooks import remove_hook_from_module
    from accelerate.utils import has_offloaded_params

    parent = prefix
    while parent:
        parent = parent.rpartition(".")[0]
        if has_offloaded_params(model.get_submodule(parent) if parent else model):
            raise ValueError(f"{parent or 'the model'} is offloaded as one unit, above the decoder block {prefix}; "
                             "calibrated quantization onloads one block at a time. Use device_map='auto' (which "
                             "keeps blocks whole) or a device_map whose entries are blocks or their parts.")
    for m in list(block.modules()):
        if has_offloaded_params(m):
            hook = m._hf_hook
            hook.pre_forward(m)          # offloaded tensors -> execution device, with their values
            hook.offload = False         # so detaching leaves them there
            remove_hook_from_module(m)


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
    device = execution_device(model)
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


def _same(a, b) -> bool:
    """Equal call arguments (tensors by value)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a, b)))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def batch_windows(hidden: list[torch.Tensor], per_block: list[list],
                  max_tokens: int = BATCH_TOKENS) -> list[list[int]]:
    """Windows that can run as one batch: same shape and, in every block, the same other arguments (positions,
    masks), up to max_tokens tokens. Those arguments have batch size 1 and broadcast over the batch."""
    groups: list[list[int]] = []
    for j, h in enumerate(hidden):
        g = groups[-1] if groups else None
        if (g is not None and h.shape[0] == 1 and hidden[g[0]].shape == h.shape
                and (len(g) + 1) * h.shape[1] <= max_tokens
                and all(_same(calls[g[0]], calls[j]) for calls in per_block)):
            g.append(j)
        else:
            groups.append([j])
    return groups


def _batching_is_exact(block: nn.Module, pair: list[torch.Tensor], call: tuple) -> bool:
    """Does the block give each window the same output alone and in a batch of two? (A block that mixes the
    batch, or arguments that do not broadcast, fail this and calibration runs window by window.)"""
    a, kw = call
    try:
        alone = [_first_tensor(block(h, *a, **kw)) for h in pair]
        both = _first_tensor(block(torch.cat(pair), *a, **kw))
    except RuntimeError:
        return False
    ref = torch.cat(alone)
    return both.shape == ref.shape and bool(((both - ref).abs().max() <= 1e-4 * ref.abs().max() + 1e-6))


def linear_groups(block: nn.Module, inputs: list) -> list[list[str]]:
    """The block's nn.Linear layers in call order, grouped by shared input (q,k,v | o | gate,up | down)."""
    order, seen, alive = [], {}, []
    hooks = []

    def hook(name):
        def fn(m, args):
            # the inputs stay referenced, so a freed input's memory cannot be reused by a later one with the same
            # address and shape (the allocator does that: o_proj's and gate_proj's inputs collided)
            alive.append(args[0])
            key = (args[0].data_ptr(), tuple(args[0].shape), args[0].stride())
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
    groups = batch_windows(hidden, per_block)
    g = next((g for g in groups if len(g) > 1), None)
    if g and not _batching_is_exact(blocks[0], [hidden[g[0]], hidden[g[1]]], per_block[0][g[0]]):
        logger.info("%s: block outputs change when windows are batched; running one window per call", desc)
        groups = [[j] for j in range(len(hidden))]
    hidden = [torch.cat([hidden[j] for j in g]) for g in groups]
    per_block = [[calls[g[0]] for g in groups] for calls in per_block]
    summaries = []
    bar = tqdm(range(len(blocks)), desc=desc, unit="block")
    for i in bar:
        onload_block(model, f"{prefix}.{i}", blocks[i])
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
