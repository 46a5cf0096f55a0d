"""GGML block layouts: fields <-> bytes, byte for byte as ggml-common.h lays them out.

Each type has `pack_<type>(fields) -> uint8 [nb, type_size]` and `unpack_<type>(blocks) -> fields`. Fields are
plain tensors in element order (q[:, e] is element e of the block); scales d/dmin/m are float16 [nb].

  Q4_0: d, q[32] 0..15         Q4_1: d, m, q 0..15      Q5_0: d, q 0..31     Q5_1: d, m, q 0..31
  Q8_0: d, q[32] int8
  Q2_K: d, dmin, sc[16] 0..15, m[16] 0..15, q[256] 0..3
  Q3_K: d, sc[16] 0..63 (signed scale + 32), q[256] 0..7 (signed quant + 4)
  Q4_K / Q5_K: d, dmin, sc[8] 0..63, m[8] 0..63, q[256] 0..15 / 0..31
  Q6_K: d, sc[16] int8, q[256] 0..63 (signed quant + 32)
"""

from __future__ import annotations

import sys

import torch

from .ggml_types import ggml_type

if sys.byteorder != "little":  # halves are viewed in place; GGUF is little-endian
    raise ImportError("hfq's GGML layouts need a little-endian host.")

U8 = torch.uint8


def _half_bytes(h: torch.Tensor) -> torch.Tensor:
    return h.to(torch.float16).contiguous().view(U8).view(-1, 2)


def _half(blocks: torch.Tensor, off: int) -> torch.Tensor:
    return blocks[:, off:off + 2].contiguous().view(torch.float16).view(-1)


def _nib(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return ((lo & 0xF) | ((hi & 0xF) << 4)).to(U8)


def _shifts(n: int, step: int, device) -> torch.Tensor:
    return torch.arange(0, n * step, step, dtype=torch.int32, device=device)


def _bits_join(parts: torch.Tensor, step: int, dim: int) -> torch.Tensor:
    """OR parts[..., k, ...] << step*k along dim into one byte."""
    sh = _shifts(parts.shape[dim], step, parts.device)
    shape = [1] * parts.dim()
    shape[dim] = -1
    return (parts.to(torch.int32) << sh.view(shape)).sum(dim).to(U8)


def _bits_split(b: torch.Tensor, n: int, step: int, dim: int) -> torch.Tensor:
    sh = _shifts(n, step, b.device)
    shape = [1] * (b.dim() + 1)
    shape[dim] = -1
    return ((b.to(torch.int32).unsqueeze(dim) >> sh.view(shape)) & ((1 << step) - 1)).to(U8)


# 32-element legacy blocks: qs[j] holds elements j (low nibble) and j+16 (high nibble).
def _pack_q32(q: torch.Tensor) -> torch.Tensor:
    return _nib(q[:, :16], q[:, 16:])


def _unpack_q32(qs: torch.Tensor) -> torch.Tensor:
    return torch.cat([qs & 0xF, qs >> 4], 1)


def _pack_qh32(q: torch.Tensor) -> torch.Tensor:
    bits = ((q.to(torch.int64) >> 4) & 1) << torch.arange(32, device=q.device)
    return _u32_bytes(bits.sum(1))


def _u32_bytes(v: torch.Tensor) -> torch.Tensor:
    return torch.stack([(v >> (8 * k)) & 0xFF for k in range(4)], 1).to(U8)


def _unpack_qh32(qh: torch.Tensor) -> torch.Tensor:
    v = sum(qh[:, k].to(torch.int64) << (8 * k) for k in range(4))
    return ((v.unsqueeze(1) >> torch.arange(32, device=qh.device)) & 1).to(U8)


def pack_q4_0(f):
    return torch.cat([_half_bytes(f["d"]), _pack_q32(f["q"])], 1)


def unpack_q4_0(b):
    return {"d": _half(b, 0), "q": _unpack_q32(b[:, 2:18])}


def pack_q4_1(f):
    return torch.cat([_half_bytes(f["d"]), _half_bytes(f["m"]), _pack_q32(f["q"])], 1)


def unpack_q4_1(b):
    return {"d": _half(b, 0), "m": _half(b, 2), "q": _unpack_q32(b[:, 4:20])}


def pack_q5_0(f):
    return torch.cat([_half_bytes(f["d"]), _pack_qh32(f["q"]), _pack_q32(f["q"])], 1)


def unpack_q5_0(b):
    return {"d": _half(b, 0), "q": _unpack_q32(b[:, 6:22]) | (_unpack_qh32(b[:, 2:6]) << 4)}


def pack_q5_1(f):
    return torch.cat([_half_bytes(f["d"]), _half_bytes(f["m"]), _pack_qh32(f["q"]), _pack_q32(f["q"])], 1)


def unpack_q5_1(b):
    return {"d": _half(b, 0), "m": _half(b, 2), "q": _unpack_q32(b[:, 8:24]) | (_unpack_qh32(b[:, 4:8]) << 4)}


def pack_q8_0(f):
    return torch.cat([_half_bytes(f["d"]), f["q"].to(torch.int8).view(U8)], 1)


def unpack_q8_0(b):
    return {"d": _half(b, 0), "q": b[:, 2:34].contiguous().view(torch.int8)}


# 2-bit planes (Q2_K quants, Q3_K low bits): qs[32h + l] bits 2k..2k+1 = element 128h + 32k + l.
def _pack_2bit(q: torch.Tensor) -> torch.Tensor:
    return _bits_join((q & 3).reshape(-1, 2, 4, 32), 2, 2).view(-1, 64)


def _unpack_2bit(qs: torch.Tensor) -> torch.Tensor:
    return _bits_split(qs.reshape(-1, 2, 32), 4, 2, 2).reshape(-1, 256)


def pack_q2_k(f):
    sc = _nib(f["sc"], f["m"])
    return torch.cat([sc, _pack_2bit(f["q"]), _half_bytes(f["d"]), _half_bytes(f["dmin"])], 1)


def unpack_q2_k(b):
    sc = b[:, :16]
    return {"sc": sc & 0xF, "m": sc >> 4, "q": _unpack_2bit(b[:, 16:80]),
            "d": _half(b, 80), "dmin": _half(b, 82)}


def _pack_scales_q3(sc: torch.Tensor) -> torch.Tensor:
    # bytes 0..7: low nibbles of sc[0..7] | sc[8..15] << 4; byte 8+r: bits 2q..2q+1 = sc[4q + r] >> 4
    low = _nib(sc[:, :8], sc[:, 8:])
    high = _bits_join((sc >> 4).view(-1, 4, 4) & 3, 2, 1)
    return torch.cat([low, high], 1)


def _unpack_scales_q3(s: torch.Tensor) -> torch.Tensor:
    low = torch.cat([s[:, :8] & 0xF, s[:, :8] >> 4], 1)
    high = _bits_split(s[:, 8:12], 4, 2, 1).reshape(-1, 16)
    return low | (high << 4)


def pack_q3_k(f):
    q = f["q"]
    hmask = _bits_join((q >> 2).reshape(-1, 8, 32) & 1, 1, 1)   # element e: byte e % 32, bit e // 32
    return torch.cat([hmask, _pack_2bit(q), _pack_scales_q3(f["sc"]), _half_bytes(f["d"])], 1)


def unpack_q3_k(b):
    hbit = _bits_split(b[:, :32], 8, 1, 1).reshape(-1, 256)
    return {"q": _unpack_2bit(b[:, 32:96]) | (hbit << 2), "sc": _unpack_scales_q3(b[:, 96:108]),
            "d": _half(b, 108)}


def _pack_scales_k4(sc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    sc, m = sc & 63, m & 63
    b0 = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    b4 = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    return torch.cat([b0.to(U8), b4.to(U8), _nib(sc[:, 4:], m[:, 4:])], 1)


def _unpack_scales_k4(s: torch.Tensor):
    sc = torch.cat([s[:, :4] & 63, (s[:, 8:12] & 0xF) | ((s[:, :4] >> 6) << 4)], 1)
    m = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], 1)
    return sc, m


# Q4_K/Q5_K nibbles: qs[32g + l] low = element 64g + l, high = element 64g + 32 + l.
def _pack_nib64(q: torch.Tensor) -> torch.Tensor:
    q = q.view(-1, 4, 2, 32)
    return _nib(q[:, :, 0], q[:, :, 1]).view(-1, 128)


def _unpack_nib64(qs: torch.Tensor) -> torch.Tensor:
    qs = qs.view(-1, 4, 1, 32)
    return torch.cat([qs & 0xF, qs >> 4], 2).view(-1, 256)


def pack_q4_k(f):
    return torch.cat([_half_bytes(f["d"]), _half_bytes(f["dmin"]), _pack_scales_k4(f["sc"], f["m"]),
                      _pack_nib64(f["q"])], 1)


def unpack_q4_k(b):
    sc, m = _unpack_scales_k4(b[:, 4:16])
    return {"d": _half(b, 0), "dmin": _half(b, 2), "sc": sc, "m": m, "q": _unpack_nib64(b[:, 16:144])}


def pack_q5_k(f):
    q = f["q"]
    qh = _bits_join((q >> 4).reshape(-1, 8, 32) & 1, 1, 1)   # bit 2g + half of byte l
    return torch.cat([_half_bytes(f["d"]), _half_bytes(f["dmin"]), _pack_scales_k4(f["sc"], f["m"]), qh,
                      _pack_nib64(q)], 1)


def unpack_q5_k(b):
    sc, m = _unpack_scales_k4(b[:, 4:16])
    hbit = _bits_split(b[:, 16:48], 8, 1, 1).reshape(-1, 256)
    return {"d": _half(b, 0), "dmin": _half(b, 2), "sc": sc, "m": m,
            "q": _unpack_nib64(b[:, 48:176]) | (hbit << 4)}


def pack_q6_k(f):
    q = f["q"].view(-1, 2, 2, 2, 32)   # element 128h + 32(2a + c) + l -> [h, a, c, l]
    ql = _nib(q[:, :, 0], q[:, :, 1]).view(-1, 128)
    qh = _bits_join((f["q"] >> 4).reshape(-1, 2, 4, 32) & 3, 2, 2).view(-1, 64)
    return torch.cat([ql, qh, f["sc"].to(torch.int8).view(U8), _half_bytes(f["d"])], 1)


def unpack_q6_k(b):
    ql = b[:, :128].reshape(-1, 2, 1, 2, 32)
    low = torch.cat([ql & 0xF, ql >> 4], 2).view(-1, 256)
    high = _bits_split(b[:, 128:192].reshape(-1, 2, 32), 4, 2, 2).reshape(-1, 256)
    return {"q": low | (high << 4), "sc": b[:, 192:208].contiguous().view(torch.int8), "d": _half(b, 208)}


# Byte offsets of each type's float16 scale fields (d, dmin or m) inside a block.
HALF_OFFSETS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q2_K": (80, 82),
                "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def scale_halves(blocks: torch.Tensor, type_name: str) -> list[torch.Tensor]:
    """The float16 scale fields of [n_blocks, type_size] blocks, one [n_blocks] tensor per field."""
    return [_half(blocks, off) for off in HALF_OFFSETS[type_name]]


PACK = {"Q4_0": pack_q4_0, "Q4_1": pack_q4_1, "Q5_0": pack_q5_0, "Q5_1": pack_q5_1, "Q8_0": pack_q8_0,
        "Q2_K": pack_q2_k, "Q3_K": pack_q3_k, "Q4_K": pack_q4_k, "Q5_K": pack_q5_k, "Q6_K": pack_q6_k}
UNPACK = {"Q4_0": unpack_q4_0, "Q4_1": unpack_q4_1, "Q5_0": unpack_q5_0, "Q5_1": unpack_q5_1,
          "Q8_0": unpack_q8_0, "Q2_K": unpack_q2_k, "Q3_K": unpack_q3_k, "Q4_K": unpack_q4_k,
          "Q5_K": unpack_q5_k, "Q6_K": unpack_q6_k}


def as_blocks(data: torch.Tensor, type_name: str) -> torch.Tensor:
    """View row-major packed bytes as [n_blocks, type_size], checking the byte count."""
    t = ggml_type(type_name)
    if data.dtype != U8:
        raise ValueError(f"{t.name} data must be uint8 bytes, got {data.dtype}.")
    if data.numel() % t.type_size:
        raise ValueError(
            f"{data.numel()} bytes is not a whole number of {t.name} blocks ({t.type_size} bytes each); "
            "the tensor is truncated or not of this type."
        )
    return data.reshape(-1, t.type_size)
