"""Bit packing.

Two layouts:
- `pack_bits`/`unpack_bits`: a little-endian bitstream per row. Value i of a row occupies bits
  [i*b, (i+1)*b) of the row's bytes, bit 0 being the least significant bit of byte 0. For b=4 this is
  the nibble order of GPTQ's int32 words viewed as bytes (value 0 in the low nibble).
- `pack_nibbles_hi_first`/`unpack_nibbles_hi_first`: two 4-bit codes per byte, first code in the high
  nibble, as bitsandbytes stores NF4/FP4.
"""

from __future__ import annotations

import torch


def _check_uint8(t: torch.Tensor, what: str) -> None:
    if t.dtype != torch.uint8:
        raise TypeError(f"{what} must be torch.uint8, got {t.dtype}")


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes (< 2**bits) along the last dim into ceil-free bytes: [..., n] -> [..., n*bits/8]."""
    _check_uint8(q, "codes")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits} must be in 1..8")
    n = q.shape[-1]
    if (n * bits) % 8:
        raise ValueError(f"a row of {n} {bits}-bit codes is not a whole number of bytes; need n*bits % 8 == 0")
    if bits == 8:
        return q.clone()
    if bits == 4:  # the common case, without the 8x bit-plane temporary
        return q[..., 0::2] | (q[..., 1::2] << 4)
    shifts = torch.arange(bits, device=q.device, dtype=torch.uint8)
    stream = (q.unsqueeze(-1) >> shifts) & 1  # [..., n, bits]
    stream = stream.reshape(*q.shape[:-1], n * bits // 8, 8)
    weights = (torch.ones(8, dtype=torch.uint8, device=q.device) << torch.arange(8, device=q.device, dtype=torch.uint8))
    return (stream * weights).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int | None = None) -> torch.Tensor:
    """Inverse of pack_bits: [..., m] bytes -> [..., m*8/bits] uint8 codes (or the first n)."""
    _check_uint8(packed, "packed")
    if bits == 8:
        out = packed
    elif bits == 4:
        out = torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(*packed.shape[:-1], -1)
    else:
        shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
        stream = ((packed.unsqueeze(-1) >> shifts) & 1).reshape(*packed.shape[:-1], -1, bits)
        weights = torch.ones(bits, dtype=torch.uint8, device=packed.device) << torch.arange(
            bits, device=packed.device, dtype=torch.uint8
        )
        out = (stream * weights).sum(-1, dtype=torch.int32).to(torch.uint8)
    return out if n is None else out[..., :n]


def pack_nibbles_hi_first(q: torch.Tensor) -> torch.Tensor:
    """[..., 2k] 4-bit codes -> [..., k] bytes, first code in the high nibble."""
    _check_uint8(q, "codes")
    if q.shape[-1] % 2:
        raise ValueError(f"need an even number of 4-bit codes, got {q.shape[-1]}")
    return (q[..., 0::2] << 4) | q[..., 1::2]


def unpack_nibbles_hi_first(packed: torch.Tensor) -> torch.Tensor:
    _check_uint8(packed, "packed")
    return torch.stack((packed >> 4, packed & 0xF), dim=-1).reshape(*packed.shape[:-1], -1)
