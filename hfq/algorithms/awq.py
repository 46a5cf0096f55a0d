"""AWQ (Lin et al., "Activation-aware Weight Quantization", 2023) on one decoder block.

Per group of linears that read the same input, AWQ scales input channel j of their weights by s_j and divides
that channel of the input by s_j, which it folds into the op that produced the input (a norm or a linear), so the
float block computes the same function. Channels with large activations get large s_j, so the quantization grid
spends more resolution on the weights that matter. The search tries

    s = mean|x|^a / (mean|w~|^(1-a) + 1e-4),  a in {0, 1/n, ..., (n-1)/n},  s /= sqrt(max(s) * min(s))

(w~ = |w| / max|w| over its quantization group; AutoAWQ's "duo scaling"), plus s = 1, and keeps the s whose
fake-quantized group gives the smallest MSE of the inspected sub-module's output against float (its raw output,
as AutoAWQ, even where a norm follows it as in Gemma 3; docs/gptq-awq.md, "AWQ's loss on Gemma 3"). Then it shrinks
each (row, group)'s clipping range max|w| over a grid and keeps, per group, the range with the smallest error of
that group's partial output on a token sample; a row whose whole-row output error got worse is left unclipped.

The block stays float: awq_block returns it scaled and clipped, for the caller to quantize with the same grid.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from ..architectures import AWQ, ARCHITECTURES, AwqNorms

logger = logging.getLogger(__name__)

FakeQuant = Callable[[str, torch.Tensor], torch.Tensor]
_ATTN, _O, _MLP, _DOWN = "self_attn", "self_attn.o_proj", "mlp", "mlp.down_proj"
_QKV = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
_GATE_UP = ["mlp.gate_proj", "mlp.up_proj"]
# q/k outputs pass through RoPE and softmax (and Qwen3/Gemma3's q_norm/k_norm): their output MSE is a poor proxy
# for the block's, so, as AutoAWQ does, they are not clipped.
_CLIPPED = ["self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
_CHUNK_ELEMS = 1 << 22  # float32 temporaries of at most 16 MB in the clip search
SUPPORTED_ARCHS = AWQ


def scale_groups(block: nn.Module, arch: str) -> list[tuple[str, list[str], str, str | None]]:
    """(prev op, linears that read its output, sub-module whose output the search compares, norm applied to that
    output or None) for each scaling group of the block."""
    spec = _arch(arch)
    attn_post, mlp_post = spec.post_norms or (None, None)
    for name in [*_QKV, _O, *_GATE_UP, _DOWN, "input_layernorm", spec.mlp_norm, *(spec.post_norms or ())]:
        try:
            block.get_submodule(name)
        except AttributeError:
            raise ValueError(f"arch={arch!r} expects a decoder block with a {name!r} module, which this "
                             f"{type(block).__name__} lacks; pass the model's config.model_type as arch.") from None
    v, o = block.get_submodule("self_attn.v_proj"), block.get_submodule(_O)
    groups = [("input_layernorm", _QKV, _ATTN, attn_post)]
    # Exact only if o_proj's input channels are v_proj's outputs one to one (no grouped-query sharing).
    if v.out_features == o.in_features:
        groups.append(("self_attn.v_proj", [_O], _O, attn_post))
    groups += [(spec.mlp_norm, _GATE_UP, _MLP, mlp_post), ("mlp.up_proj", [_DOWN], _DOWN, mlp_post)]
    return groups


def _arch(arch: str) -> AwqNorms:
    if arch not in AWQ:
        raise ValueError(f"AWQ does not support arch={arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}. "
                         "Quantize this model with method='gptq' or 'rtn' instead.")
    return ARCHITECTURES[arch].awq


@torch.no_grad()
def fold_scales(block: nn.Module, arch: str, prev: str, layers: list[str], s: torch.Tensor) -> None:
    """Divide the output channels of `prev` by s and multiply the input channels of `layers` by s (exact)."""
    op = block.get_submodule(prev)
    s32 = s.float().to(op.weight.device)
    if isinstance(op, nn.Linear):
        op.weight.copy_((op.weight.float() / s32[:, None]).to(op.weight.dtype))
        if op.bias is not None:
            op.bias.copy_((op.bias.float() / s32).to(op.bias.dtype))
    else:  # RMSNorm: y = norm(x) * (offset + weight)
        off = _arch(arch).norm_offset
        op.weight.copy_(((op.weight.float() + off) / s32 - off).to(op.weight.dtype))
        if getattr(op, "bias", None) is not None:
            op.bias.copy_((op.bias.float() / s32).to(op.bias.dtype))
    for name in layers:
        w = block.get_submodule(name).weight
        w.copy_((w.float() * s32.to(w.device)).to(w.dtype))


def _replay_kwargs(kwargs: dict) -> dict:
    """Replays must not grow a KV cache."""
    kw = dict(kwargs)
    if "past_key_values" in kw:
        kw["past_key_values"] = None
    if "use_cache" in kw:
        kw["use_cache"] = False
    return kw


def _first(out):
    return out[0] if isinstance(out, tuple) else out


class _Captured:
    """Inputs of the attention (per call, with its kwargs) and of the token-wise modules (tokens x channels)."""

    def __init__(self, block: nn.Module, calls: list[tuple[tuple, dict]]):
        self.attn: list[tuple[torch.Tensor, tuple, dict, bool]] = []
        self.tokens: dict[str, torch.Tensor] = {}
        parts: dict[str, list[torch.Tensor]] = {_O: [], _MLP: [], _DOWN: []}

        def attn_hook(module, args, kwargs):
            in_kw = "hidden_states" in kwargs
            x = kwargs["hidden_states"] if in_kw else args[0]
            rest = args if in_kw else args[1:]
            self.attn.append((x.detach().clone(), rest, _replay_kwargs(kwargs), in_kw))

        def tok_hook(name):
            def fn(module, args):
                parts[name].append(args[0].detach().reshape(-1, args[0].shape[-1]).clone())
            return fn

        hooks = [block.get_submodule(_ATTN).register_forward_pre_hook(attn_hook, with_kwargs=True)]
        hooks += [block.get_submodule(n).register_forward_pre_hook(tok_hook(n)) for n in parts]
        try:
            for args, kwargs in calls:
                block(*args, **_replay_kwargs(kwargs))
        finally:
            for h in hooks:
                h.remove()
        self.tokens = {n: torch.cat(p) for n, p in parts.items()}

    def run_attn(self, attn: nn.Module) -> list[torch.Tensor]:
        out = []
        for x, rest, kw, in_kw in self.attn:
            out.append(_first(attn(*rest, **{**kw, "hidden_states": x}) if in_kw else attn(x, *rest, **kw)))
        return out

    def input_of(self, inspect: str) -> torch.Tensor:
        """All input tokens of a sub-module, [n, channels]."""
        if inspect == _ATTN:
            return torch.cat([x.reshape(-1, x.shape[-1]) for x, *_ in self.attn])
        return self.tokens[inspect]

    def divide(self, inspect: str, s: torch.Tensor) -> None:
        """The fold divided this sub-module's input by s."""
        if inspect == _ATTN:
            for x, *_ in self.attn:
                x.div_(s.to(x.device, x.dtype))
        else:
            self.tokens[inspect].div_(s.to(self.tokens[inspect].device, self.tokens[inspect].dtype))


POST_NORM = ("skip", "normalize", "apply")


def _run(block: nn.Module, cap: _Captured, inspect: str, post: str | None, post_norm: str) -> list[torch.Tensor]:
    module = block.get_submodule(inspect)
    out = cap.run_attn(module) if inspect == _ATTN else [_first(module(cap.tokens[inspect]))]
    if post is None or post_norm == "skip":
        return out
    norm = block.get_submodule(post)
    if post_norm == "apply":
        return [norm(o) for o in out]
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6))  # "normalize": the norm without its gain
    return [o.float() * torch.rsqrt(o.float().pow(2).mean(-1, keepdim=True) + eps) for o in out]


def _mse(out: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    num = sum(float((a.float() - b.float()).pow(2).sum()) for a, b in zip(out, ref))
    return num / sum(r.numel() for r in ref)


def _group_width(in_features: int, group_size: int) -> int:
    if group_size == -1:
        return in_features
    if group_size <= 0 or in_features % group_size:
        raise ValueError(f"group_size={group_size} does not divide in_features={in_features}; give the grid's "
                         "group size (a divisor of every layer's input width) or -1 for one group per row.")
    return group_size


def _weight_mean(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean over rows of |w| / max|w| of its quantization group, per input channel."""
    out_f, in_f = w.shape
    g = _group_width(in_f, group_size)
    wg = w.float().abs().reshape(out_f, in_f // g, g)
    return (wg / (wg.amax(-1, keepdim=True) + 1e-6)).reshape(out_f, in_f).mean(0)


@torch.no_grad()
def _search_scale(block, cap, inspect, post, layers, fake_quant, n_grid, group_size, post_norm):
    """Returns (ratio or None for s = 1, s, loss with s = 1, best loss)."""
    mods = [block.get_submodule(n) for n in layers]
    ref = _run(block, cap, inspect, post, post_norm)
    x_mean = cap.input_of(inspect).float().abs().mean(0)
    w_mean = _weight_mean(torch.cat([m.weight for m in mods]), group_size).to(x_mean.device)
    originals = [m.weight.detach().clone() for m in mods]
    best = (None, torch.ones_like(x_mean), float("inf"))
    loss_plain = float("nan")
    try:
        for ratio in [None] + [i / n_grid for i in range(n_grid)]:
            if ratio is None:
                s = torch.ones_like(x_mean)
            else:
                s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
                s = s / (s.max() * s.min()).sqrt()
            for name, m, w0 in zip(layers, mods, originals):
                sd = s.to(w0.device)
                m.weight.copy_((fake_quant(name, (w0.float() * sd).to(w0.dtype)).float() / sd).to(w0.dtype))
            loss = _mse(_run(block, cap, inspect, post, post_norm), ref)
            if ratio is None:
                loss_plain = loss
            if loss < best[2]:
                best = (ratio, s, loss)
    finally:
        for m, w0 in zip(mods, originals):
            m.weight.copy_(w0)
    return best[0], best[1], loss_plain, best[2]


@torch.no_grad()
def clip_weight(name: str, w: torch.Tensor, x: torch.Tensor, fake_quant: FakeQuant, group_size: int,
                n_grid: int = 20, max_shrink: float = 0.5) -> tuple[torch.Tensor, dict]:
    """Search the clipping range of weight w [out, in] for inputs x [tokens, in]; returns (clipped w, stats).

    Each (row, group) tries max|w| * (1 - i/n_grid) for i < max_shrink * n_grid and keeps the one with the
    smallest MSE of its partial output x_g . w_g. fake_quant must quantize each (row, group) independently (RTN
    grids do). Rows whose whole-row output MSE ends up above no clipping's are left unclipped, so the layer's
    output error on x never grows.
    """
    out_f, in_f = w.shape
    g = _group_width(in_f, group_size)
    G = in_f // g
    w32 = w.float()
    xg = x.float().to(w.device).reshape(-1, G, g)
    amax = w32.abs().reshape(out_f, G, g).amax(-1, keepdim=True)
    rows = max(1, _CHUNK_ELEMS // (xg.shape[0] * G))
    best_err = torch.full((out_f, G), float("inf"), device=w.device)
    best_ratio = torch.ones(out_f, G, device=w.device)
    for i in range(max(1, int(max_shrink * n_grid))):
        r = 1 - i / n_grid
        lim = amax * r
        cw = torch.maximum(torch.minimum(w32.reshape(out_f, G, g), lim), -lim).reshape(out_f, in_f)
        delta = (fake_quant(name, cw.to(w.dtype)).float() - w32).reshape(out_f, G, g)
        for a in range(0, out_f, rows):
            err = torch.einsum("tGg,oGg->otG", xg, delta[a:a + rows]).pow(2).mean(1)
            better = err < best_err[a:a + rows]
            best_err[a:a + rows][better] = err[better]
            best_ratio[a:a + rows][better] = r
    lim = amax * best_ratio[..., None]
    clipped = torch.maximum(torch.minimum(w32.reshape(out_f, G, g), lim), -lim).reshape(out_f, in_f)
    xf = xg.reshape(-1, in_f)
    e_plain = (xf @ (fake_quant(name, w).float() - w32).T).pow(2).mean(0)
    e_clip = (xf @ (fake_quant(name, clipped.to(w.dtype)).float() - w32).T).pow(2).mean(0)
    revert = e_clip > e_plain
    clipped[revert] = w32[revert]
    best_ratio[revert] = 1.0
    stats = {"mean_ratio": float(best_ratio.mean()), "min_ratio": float(best_ratio.min()),
             "rows_reverted": int(revert.sum()), "mse_plain": float(e_plain.mean()),
             "mse_clipped": float(torch.minimum(e_plain, e_clip).mean())}
    return clipped.to(w.dtype), stats


def _kept_calls(inputs: list[tuple[tuple, dict]], max_tokens: int) -> list[tuple[tuple, dict]]:
    """A prefix of the calls holding about max_tokens tokens in whole sequences (at least one): bounds the
    captured inputs. A batched call [batch, seq, channels] is cut along its batch."""
    kept, n = [], 0
    for args, kwargs in inputs:
        if kept and n >= max_tokens:
            break
        h = args[0] if args else kwargs["hidden_states"]
        per = h.numel() // (h.shape[0] * h.shape[-1])
        k = h.shape[0] if h.dim() < 3 else max(1, min(h.shape[0], -(-(max_tokens - n) // per)))
        if k < h.shape[0]:
            if args:
                args = (h[:k],) + tuple(args[1:])
            else:
                kwargs = {**kwargs, "hidden_states": h[:k]}
        n += k * per
        kept.append((args, kwargs))
    return kept


@torch.no_grad()
def awq_block(block: nn.Module, inputs: list[tuple[tuple, dict]], arch: str, fake_quant: FakeQuant,
              n_grid: int = 20, group_size: int | None = None, max_tokens: int = 4096, clip_tokens: int = 512,
              clip: bool = True, post_norm: str = "skip") -> dict:
    """AWQ on one decoder block, in place. `inputs` are the block's captured forward calls (args, kwargs), so
    block(*args, **kwargs) reproduces the forward; `fake_quant(name, weight)` returns the quantize-dequantize of a
    linear's weight, name relative to the block (e.g. "self_attn.q_proj"). Searches per-channel scales and folds
    them into the preceding op (input norm -> q/k/v, v_proj -> o_proj when shapes allow, post-attention /
    pre-feedforward norm -> gate/up, up_proj -> down_proj), then searches and applies weight clipping. Returns a
    summary dict (chosen ratio per group, clip stats per layer) for logging.

    group_size: the grid's group width (-1: one group per row); by default fake_quant.group_size, else -1.
    max_tokens: the search uses the first calls holding about this many tokens (whole calls: attention needs
    whole sequences); clip_tokens: evenly spaced tokens of those for the clip search. past_key_values and
    use_cache in the captured kwargs are replaced by None/False when replaying. The block stays float.

    post_norm: how the scale search treats a norm applied to the inspected output (Gemma 3's post-attention and
    post-feedforward norms): "skip" scores the raw output (AutoAWQ's loss, the default), "normalize" divides each
    token by its RMS as the norm does but leaves out the norm's channel gain, "apply" scores after the whole norm
    (hfq's loss before 2026-12-03). The gain is what misleads: on Gemma-3-270M post_feedforward_layernorm
    multiplies channel 400 by 153 (median 0.9) and the next input_layernorm by 0.8 (median 25), so "apply" spends
    the search on a channel the next blocks barely read. Measured in docs/gptq-awq.md, "AWQ's loss on Gemma 3".
    """
    groups = scale_groups(block, arch)
    if not inputs:
        raise ValueError("awq_block needs at least one captured forward call of the block in `inputs`.")
    if post_norm not in POST_NORM:
        raise ValueError(f"post_norm={post_norm!r}; give one of {', '.join(POST_NORM)}.")
    if n_grid < 1:
        raise ValueError(f"n_grid={n_grid} must be at least 1 (AutoAWQ uses 20).")
    if group_size is None:
        group_size = getattr(fake_quant, "group_size", -1)
    cap = _Captured(block, _kept_calls(inputs, max_tokens))
    summary: dict = {"arch": arch, "scales": {}, "clip": {}, "skipped": []}
    if not any(g[0] == "self_attn.v_proj" for g in groups):
        v, o = block.get_submodule("self_attn.v_proj"), block.get_submodule(_O)
        summary["skipped"].append(f"self_attn.v_proj -> o_proj: v_proj has {v.out_features} outputs, o_proj "
                                  f"{o.in_features} inputs (grouped-query attention), not foldable exactly")
    for prev, layers, inspect, post in groups:
        ratio, s, plain, best = _search_scale(block, cap, inspect, post, layers, fake_quant, n_grid, group_size,
                                              post_norm)
        if ratio is not None:
            fold_scales(block, arch, prev, layers, s)
            cap.divide(inspect, s)
        summary["scales"][prev] = {"layers": layers, "ratio": ratio, "mse_plain": plain, "mse_best": best}
        logger.debug("awq %s -> %s: ratio %s, mse %.3g -> %.3g", prev, layers, ratio, plain, best)
    if clip:
        sources = {n: _ATTN for n in _QKV} | {_O: _O, _DOWN: _DOWN} | {n: _MLP for n in _GATE_UP}
        posts = dict(zip((_O, _DOWN), _arch(arch).post_norms or (None, None)))
        for name in _CLIPPED:
            x = cap.input_of(sources[name])
            x = x[torch.linspace(0, x.shape[0] - 1, min(clip_tokens, x.shape[0])).long()]
            lin = block.get_submodule(name)
            if posts.get(name):  # the norm divides each token's output by its RMS: weigh its error the same way
                x = x * torch.rsqrt(lin(x).float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)
            new, stats = clip_weight(name, lin.weight, x, fake_quant, group_size, n_grid)
            lin.weight.copy_(new)
            summary["clip"][name] = stats
    return summary
