"""What GGML block fields mean: dequantization in float32 with ggml's operation order (dequantize_row_*).

The order matters for bit-exactness: Q6_K is (d * sc) * q, the K types compute d * sc and dmin * m once per
sub-block, and every product is float32.
"""

from __future__ import annotations

import torch

from .ggml_layout import UNPACK, as_blocks

F32 = torch.float32


def _f(t: torch.Tensor) -> torch.Tensor:
    return t.to(F32)


def _per_sub(v: torch.Tensor, sub: int) -> torch.Tensor:
    """[nb, n_sub] per-sub-block values -> [nb, n_sub * sub] per element."""
    return v.repeat_interleave(sub, dim=1)


def _deq(name: str, f: dict) -> torch.Tensor:
    d = _f(f["d"]).unsqueeze(1)
    q = f["q"]
    if name == "Q4_0":
        return _f(q.to(torch.int32) - 8) * d
    if name == "Q5_0":
        return _f(q.to(torch.int32) - 16) * d
    if name in ("Q4_1", "Q5_1"):
        return _f(q) * d + _f(f["m"]).unsqueeze(1)
    if name == "Q8_0":
        return _f(q) * d
    if name == "Q2_K":
        dl = d * _f(f["sc"])
        ml = _f(f["dmin"]).unsqueeze(1) * _f(f["m"])
        return _per_sub(dl, 16) * _f(q) - _per_sub(ml, 16)
    if name == "Q3_K":
        dl = d * _f(f["sc"].to(torch.int32) - 32)
        return _per_sub(dl, 16) * _f(q.to(torch.int32) - 4)
    if name in ("Q4_K", "Q5_K"):
        dl = d * _f(f["sc"])
        ml = _f(f["dmin"]).unsqueeze(1) * _f(f["m"])
        return _per_sub(dl, 32) * _f(q) - _per_sub(ml, 32)
    if name == "Q6_K":
        dl = d * _f(f["sc"])
        return _per_sub(dl, 16) * _f(q.to(torch.int32) - 32)
    raise ValueError(f"no dequantization for GGML type {name!r}.")


def dequantize_blocks(data: torch.Tensor, type_name: str) -> torch.Tensor:
    """uint8 bytes of whole blocks -> float32 [n_blocks, block_size]."""
    name = type_name.upper()
    return _deq(name, UNPACK[name](as_blocks(data, name)))


def dequantize_rows(data: torch.Tensor, type_name: str, rows: int, cols: int) -> torch.Tensor:
    """Packed [rows, row_bytes] -> float32 [rows, cols]."""
    return dequantize_blocks(data, type_name).reshape(rows, cols)
