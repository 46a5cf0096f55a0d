"""Pure-torch bodies of the hfq ops, registered as the default kernel for every device.

They are the spec: native kernels must match them, and tests check them against bitsandbytes and
naive loops written from the format definitions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..formats.bitpack import unpack_bits, unpack_nibbles_hi_first
from ..formats.ggml_dequant import dequantize_rows
from ..formats.ggml_types import row_bytes
from . import ops


@ops.register_default("dequantize_int")
def dequantize_int(weight, scales, zeros, bits, dtype, g_idx=None):
    out, groups, nbytes = weight.shape
    q = unpack_bits(weight, bits).to(torch.float32)  # [out, G, g]
    if g_idx is not None:   # act-order: codes in column order, group of column c is g_idx[c]
        q = q.reshape(out, -1)
        gi = g_idx.long()
        zero = zeros.to(torch.float32)[:, gi] if zeros is not None else float(2 ** (bits - 1))
        return ((q - zero) * scales.to(torch.float32)[:, gi]).to(dtype)
    zero = zeros.to(torch.float32).unsqueeze(-1) if zeros is not None else float(2 ** (bits - 1))
    w = (q - zero) * scales.to(torch.float32).unsqueeze(-1)
    return w.reshape(out, groups * q.shape[-1]).to(dtype)


@ops.register_default("dequantize_4bit")
def dequantize_4bit(weight, absmax, code, shape, dtype):
    q = unpack_nibbles_hi_first(weight)  # [nb, B]
    vals = code.to(weight.device)[q.long()] * absmax.unsqueeze(-1)
    n = 1
    for s in shape:
        n *= s
    return vals.reshape(-1)[:n].reshape(shape).to(dtype)


@ops.register_default("dequantize_8bit_blockwise")
def dequantize_8bit_blockwise(codes, absmax, code, blocksize):
    n = codes.numel()
    vals = code.to(codes.device)[codes.reshape(-1).long()]
    pad = (-n) % blocksize
    if pad:
        vals = F.pad(vals, (0, pad))
    return (vals.reshape(-1, blocksize) * absmax.unsqueeze(-1)).reshape(-1)[:n].reshape(codes.shape)


@ops.register_default("linear_int")
def linear_int(x, weight, scales, zeros, bits, bias, g_idx=None):
    w = ops.op("dequantize_int")(weight, scales, zeros, bits, x.dtype, g_idx)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


@ops.register_default("linear_4bit")
def linear_4bit(x, weight, absmax, code, shape, bias):
    w = ops.op("dequantize_4bit")(weight, absmax, code, shape, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


@ops.register_default("dequantize_ggml")
def dequantize_ggml(weight, qtype, in_features, dtype):
    if weight.shape[-1] != row_bytes(qtype, in_features):
        raise ValueError(f"{qtype} rows of {in_features} values take {row_bytes(qtype, in_features)} bytes; "
                         f"weight has {weight.shape[-1]}. The checkpoint does not match its config.")
    return dequantize_rows(weight, qtype, weight.shape[0], in_features).to(dtype)


@ops.register_default("linear_ggml")
def linear_ggml(x, weight, qtype, in_features, bias):
    w = ops.op("dequantize_ggml")(weight, qtype, in_features, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def _check_ids(ids, rows):
    flat = ids.reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= rows):
        bad = flat[(flat < 0) | (flat >= rows)][0].item()
        raise IndexError(f"token id {bad} is out of range for an embedding table of {rows} rows")
    return flat


@ops.register_default("embedding_int")
def embedding_int(weight, scales, zeros, bits, ids, dtype):
    flat = _check_ids(ids, weight.shape[0])
    z = None if zeros is None else zeros.index_select(0, flat)
    rows = ops.op("dequantize_int")(weight.index_select(0, flat), scales.index_select(0, flat), z, bits, dtype)
    return rows.reshape(*ids.shape, rows.shape[-1])


@ops.register_default("embedding_ggml")
def embedding_ggml(weight, qtype, in_features, ids, dtype):
    flat = _check_ids(ids, weight.shape[0])
    rows = ops.op("dequantize_ggml")(weight.index_select(0, flat), qtype, in_features, dtype)
    return rows.reshape(*ids.shape, in_features)
