"""Independent decoders and error bounds for the CPU kernel tests. Nothing here calls hfq's decoders: GGML blocks go
through gguf-py, NF4/FP4 through bitsandbytes, integer codes through a loop written from the layout's definition."""

from __future__ import annotations

import bitsandbytes.functional as bF
import gguf
import numpy as np
import torch

from helpers import naive_unpack_bitstream


def ggml_dense(raw: torch.Tensor, qtype: str) -> torch.Tensor:
    """gguf-py's numpy dequantizer: uint8 [rows, row_bytes] -> float32 [rows, in]."""
    with np.errstate(all="ignore"):
        out = gguf.quants.dequantize(raw.numpy(), getattr(gguf.GGMLQuantizationType, qtype))
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def bnb_dense(weight, absmax, shape, qtype, blocksize, nested=None) -> torch.Tensor:
    """bitsandbytes' CPU dequantize_4bit. nested = (absmax_scale, offset, dynamic code) for double quantization."""
    if nested is None:
        state = bF.QuantState(absmax=absmax, shape=torch.Size(shape), code=None, blocksize=blocksize,
                              quant_type=qtype, dtype=torch.float32)
    else:
        scale, offset, code8 = nested
        state2 = bF.QuantState(absmax=scale, code=code8, blocksize=256, dtype=torch.float32)
        state = bF.QuantState(absmax=absmax, shape=torch.Size(shape), code=None, blocksize=blocksize,
                              quant_type=qtype, dtype=torch.float32, offset=offset, state2=state2)
    n = int(np.prod(shape))
    return bF.dequantize_4bit(weight.reshape(-1)[: (n + 1) // 2].reshape(-1, 1), state)   # bnb reads whole codes only


def int_dense(weight: torch.Tensor, scales: torch.Tensor, zeros, bits: int, g_idx=None) -> torch.Tensor:
    """w[r, c] = scale * (code - zero), codes read bit by bit from each row's little-endian stream."""
    out, G, nbytes = weight.shape
    n = G * nbytes * 8 // bits
    g = n // G
    res = torch.empty(out, n, dtype=torch.float32)
    for r in range(out):
        codes = naive_unpack_bitstream(weight[r].reshape(-1).tolist(), bits, n)
        for c in range(n):
            grp = int(g_idx[c]) if g_idx is not None else c // g
            z = 2 ** (bits - 1) if zeros is None else int(zeros[r, grp])
            res[r, c] = float(np.float32(scales[r, grp].float().item()) * np.float32(codes[c] - z))
    return res


def act_block(kind: str, group: int | None = None, in_features: int | None = None,
              int8: bool = False, isa: str = "avx512", bits: int | None = None) -> tuple[int, int]:
    """(columns per activation block, quantization levels) of hfq's CPU GEMV engine on `isa` (docs/kernels.md):
    int16 per 64 columns, or per weight group up to 256 columns where the group is wider (int groups of 128 and
    more, per-channel rows). k-quants whose rows are whole 256-column super-blocks take x per super-block: int16 as
    two signed bytes (32639 levels) or, with int8 activations (HFQ_CPU_ACTIVATIONS=int8), int8 (127, llama.cpp's
    Q8_K). On AVX-512 the 32-column types take x per block: int8 with int8 activations, as llama.cpp does, else
    (Q8_0 aside) int16 as two signed bytes. int4 rows of whole 128-column units with groups of 32 and more on
    AVX-512 and AVX2, or per channel, take x as two signed bytes too (32639)."""
    kquant = kind in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K") and in_features is not None and in_features % 256 == 0
    if kquant and isa in ("avx512", "avx2"):
        return (256, 127) if int8 else (256, 32639)
    if int8 and isa == "avx512" and kind in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        return 32, 127
    if isa == "avx512" and kind in ("Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        return 32, 32639
    if kind == "int" and group is not None:
        per_channel = group == -1 or group == in_features
        bytes4 = bits == 4 and in_features is not None and in_features % 128 == 0 and (
            per_channel or group >= (32 if isa in ("avx512", "avx2") else 1 << 30))
        levels = 32639 if bytes4 else 32767
        if per_channel:
            return 256, levels
        return (min(group, 256) if group >= 128 else 64), levels
    return 64, 32767


def linear_bound(w: torch.Tensor, x: torch.Tensor, prefill: bool, lut_step: torch.Tensor | None = None,
                 block: tuple[int, int] = (64, 32767), codes_offset: bool = False):
    """Bound on |y - x @ w.T| for hfq's CPU kernels, per output element (float64).

    GEMV (few rows): x is quantized per `block` = (columns, levels), error at most max|x in the block| /
    (2 levels) per element, times the weight's code part: |w|, or for k-quants (codes_offset, unsigned codes with
    a minimum or offset) up to |w| + max|w| of its 16-column segment. nf4/fp4 codes are int16 with step lut_step;
    float32 accumulation adds 1e-6 of sum |w||x|.
    Prefill (many rows): the matmul runs in bfloat16 (or float16 for float16 x): 2^-7 of sum |w||x|.
    Without native kernels (HFQ_NO_EXTENSIONS=1) the reference rounds w to x's dtype: the prefill bound.
    Either way the output is rounded to x's dtype."""
    import os

    if os.environ.get("HFQ_NO_EXTENSIONS", "").strip() not in ("", "0"):
        prefill, lut_step = x.dtype != torch.float32, None
    wd, xd = w.double(), x.double().reshape(-1, x.shape[-1])
    absum = xd.abs() @ wd.abs().T
    if prefill:
        b = absum * (2.0 ** -10 if x.dtype == torch.float16 else 2.0 ** -7)
    else:
        cols, levels = block
        k = xd.shape[1]
        pad = (-k) % cols
        a = wd.abs()
        if codes_offset:
            seg = torch.nn.functional.pad(a, (0, (-k) % 16)).reshape(a.shape[0], -1, 16).amax(-1)
            a = a + seg.repeat_interleave(16, 1)[:, :k]
        xa = torch.nn.functional.pad(xd.abs(), (0, pad)).reshape(xd.shape[0], -1, cols).amax(-1)
        wa = torch.nn.functional.pad(a, (0, pad)).reshape(a.shape[0], -1, cols).sum(-1)
        b = xa @ wa.T / (2 * levels) + absum * 1e-6
        if lut_step is not None:
            b = b + xd.abs() @ lut_step.double().T
    y = xd @ wd.T
    rnd = {torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}[x.dtype]
    return (b + y.abs() * rnd + 1e-30).reshape(*x.shape[:-1], w.shape[0])
