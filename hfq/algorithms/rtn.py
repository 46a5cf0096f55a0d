"""Round-to-nearest quantizers: integer grids (GPTQ conventions) and blockwise-absmax codebooks (NF4/FP4),
with QLoRA double quantization of the absmax constants."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..formats.bitpack import pack_bits, pack_nibbles_hi_first
from ..formats.codebooks import codebook
from ..formats.layouts import DQ_BLOCK, check_shape

_FP16_MAX = 65504.0
_CHUNK_ELEMS = 1 << 18  # float32 temporaries of about 1 MB: small ones keep the allocator's high-water mark low


def int_grid_params(wg: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float16-representable, as float32) and integer zero for each group in wg[..., g].

    sym: scale = 2*max|w| / (2**b - 1), zero = 2**(b-1) (GPTQ's symmetric grid).
    asym: scale = (max(w,0) - min(w,0)) / (2**b - 1), zero = round(-min(w,0) / scale).
    """
    maxq = 2**bits - 1
    if sym:
        scale = 2 * wg.abs().amax(-1) / maxq
    else:
        lo = wg.amin(-1).clamp(max=0)
        hi = wg.amax(-1).clamp(min=0)
        scale = (hi - lo) / maxq
    # The stored scale is float16: quantize against exactly that value. All-zero groups get scale 1.
    scale = scale.clamp(max=_FP16_MAX).to(torch.float16).to(torch.float32)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    if sym:
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def quantize_int(w: torch.Tensor, bits: int, group_size: int, sym: bool):
    """w [out, in] -> (codes uint8 [out, G, g], scales float16 [out, G], zeros uint8 [out, G] | None)."""
    out_f, in_f = w.shape
    g = in_f if group_size == -1 else group_size
    maxq = 2**bits - 1
    rows = max(1, _CHUNK_ELEMS // in_f)
    codes, scales, zeros = [], [], []
    for r in range(0, out_f, rows):
        wg = w[r : r + rows].to(torch.float32).reshape(-1, in_f // g, g)
        scale, zero = int_grid_params(wg, bits, sym)
        q = torch.clamp(torch.round(wg / scale.unsqueeze(-1)) + zero.unsqueeze(-1), 0, maxq)
        codes.append(q.to(torch.uint8))
        scales.append(scale.to(torch.float16))
        zeros.append(zero.to(torch.uint8))
    return torch.cat(codes), torch.cat(scales), (None if sym else torch.cat(zeros))


def nearest_code(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of `code` for each x; an exact midpoint goes to the smaller value."""
    values, order = torch.sort(code)
    mids = (values[1:] + values[:-1]) / 2
    return order[torch.bucketize(x, mids, right=False)].to(torch.uint8)


def quantize_blockwise_absmax(flat: torch.Tensor, code: torch.Tensor, blocksize: int):
    """flat [n] -> (codes uint8 [nb, blocksize] zero-padded, absmax float32 [nb]).

    Each block is scaled by the reciprocal of its absolute maximum into [-1, 1] and rounded to the nearest code.
    """
    n = flat.numel()
    flat = flat.to(torch.float32)
    pad = (-n) % blocksize
    blocks = F.pad(flat, (0, pad)).reshape(-1, blocksize)
    absmax = blocks.abs().amax(-1)
    inv = 1.0 / absmax.clamp(min=torch.finfo(torch.float32).tiny)
    out = torch.empty(blocks.shape, dtype=torch.uint8, device=flat.device)
    step = max(1, _CHUNK_ELEMS // blocksize)
    for r in range(0, blocks.shape[0], step):
        scaled = torch.clamp(blocks[r : r + step] * inv[r : r + step, None], -1, 1)
        out[r : r + step] = nearest_code(scaled, code.to(flat.device))
    if pad:  # padding is not data: store code of exact zero, whatever the block's scale
        out.view(-1)[n:] = nearest_code(torch.zeros(1, device=flat.device), code.to(flat.device))
    return out, absmax


def double_quantize(absmax: torch.Tensor):
    """QLoRA double quantization: (codes uint8 [nb], absmax_scale float32 [ceil(nb/256)], offset float32 [])."""
    offset = absmax.mean()
    codes, scale2 = quantize_blockwise_absmax(absmax - offset, codebook("dynamic8", absmax.device), DQ_BLOCK)
    return codes.reshape(-1)[: absmax.numel()].contiguous(), scale2, offset


def quantize_codebook4(w: torch.Tensor, name: str, blocksize: int, double_quant: bool) -> dict[str, torch.Tensor]:
    codes, absmax = quantize_blockwise_absmax(w.reshape(-1), codebook(name, w.device), blocksize)
    tensors = {"weight": pack_nibbles_hi_first(codes)}
    if double_quant:
        a, s2, off = double_quantize(absmax)
        tensors.update(absmax=a, absmax_scale=s2, absmax_offset=off)
    else:
        tensors["absmax"] = absmax
    return tensors


def quantize_layer_weight(w: torch.Tensor, layout: str, bits: int, group_size: int, sym: bool,
                          double_quant: bool) -> dict[str, torch.Tensor]:
    """Quantize one float weight [out, in] into the named tensors of hfq.formats.layouts."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"expected a 2-D float weight, got shape {tuple(w.shape)} dtype {w.dtype}")
    if not torch.isfinite(w).all():
        raise ValueError("the weight holds NaN or inf values; hfq will not quantize a corrupt tensor")
    out_f, in_f = w.shape
    check_shape(layout, out_f, in_f, bits, group_size)
    if layout == "int":
        codes, scales, zeros = quantize_int(w, bits, group_size, sym)
        tensors = {"weight": pack_bits(codes, bits), "scales": scales}
        if zeros is not None:
            tensors["zeros"] = zeros
        return tensors
    if layout in ("nf4", "fp4"):
        return quantize_codebook4(w, layout, group_size, double_quant)
    raise ValueError(f"layout={layout!r} has no round-to-nearest quantizer; allowed: 'int', 'nf4', 'fp4'")
