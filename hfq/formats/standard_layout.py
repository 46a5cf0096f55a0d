"""Bit layouts of the standard GPTQ (v1, "gptq" checkpoint format) and AutoAWQ GEMM checkpoints. Pure layout.

GPTQ v1 (bits b in 2, 3, 4, 8; G groups; desc_act keeps columns in original order and says groups in g_idx):
  qweight int32   [in*b/32, out]   column o: codes q[o, 0..in) as a little-endian bitstream of 32-bit words
                                   (3-bit: 32 codes per 3 words, codes 10 and 21 straddle word boundaries)
  qzeros  int32   [G, out*b/32]    row g: zero points z[0..out) in the same bitstream, stored as z - 1 (v1 quirk)
  scales  float16 [G, out]
  g_idx   int32   [in]             group of each input column
  meaning: w[o, c] = scales[g_idx[c], o] * (q[o, c] - (stored_zero + 1))

AutoAWQ GEMM (4-bit only): 8 codes per int32 along the output dimension, nibble i holding column AWQ_ORDER[i]
  qweight int32   [in, out/8]      codes transposed to [in, out]
  qzeros  int32   [G, out/8]       zero points as they are (no offset)
  scales  float16 [G, out]
  meaning: w[o, c] = scales[c // group, o] * (q[o, c] - z[c // group, o])
"""

from __future__ import annotations

import torch

from .bitpack import pack_bits, unpack_bits

GPTQ_BITS = (2, 3, 4, 8)
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ word holds column AWQ_ORDER[i] of its 8


def hfq_int_codes(weight: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """hfq's int layout weight [out, G, g*b/8] (a little-endian bitstream per group) -> codes uint8 [out, in]."""
    rows = weight.reshape(weight.shape[0], -1)  # whole groups of whole bytes: the row is one bitstream
    return unpack_bits(rows, bits, in_features)


def _as_int32(w: torch.Tensor) -> torch.Tensor:
    """int64 words in [0, 2**32) -> the int32 with the same bits."""
    return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)


def _bytes_to_int32(stream: torch.Tensor) -> torch.Tensor:
    """[..., 4k] uint8 -> [..., k] int32, little-endian whatever the host's byte order."""
    b = stream.reshape(*stream.shape[:-1], -1, 4).to(torch.int64)
    return _as_int32(b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24))


def _check_bits(bits: int) -> None:
    if bits not in GPTQ_BITS:
        raise ValueError(f"bits={bits} has no GPTQ layout; allowed: {list(GPTQ_BITS)}. Requantize with one of them.")


def _bitstream_words(codes: torch.Tensor, bits: int, what: str) -> torch.Tensor:
    n = codes.shape[-1]
    if (n * bits) % 32:
        raise ValueError(f"{what}: {n} {bits}-bit values do not fill whole 32-bit words (need {n}*{bits} % 32 == 0).")
    return _bytes_to_int32(pack_bits(codes.to(torch.uint8), bits))


def pack_gptq_qweight(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes uint8 [out, in] -> qweight int32 [in*bits/32, out]."""
    _check_bits(bits)
    return _bitstream_words(codes, bits, "qweight (in_features)").T.contiguous()


def pack_gptq_qzeros(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """zero points (ints in [0, 2**bits - 1]) [G, out] -> v1 qzeros int32 [G, out*bits/32], each stored as z - 1.

    2/4/8 bits: the whole word minus 0x..0101 (mod 2**32), as gptqmodel writes v1 and adds back on load; it equals
    a per-field z - 1 whenever z > 0. 3 bits: per field (z - 1) mod 8, as gptqmodel does for that cross-word layout.
    """
    _check_bits(bits)
    z = zeros.to(torch.int64)
    if bits == 3:
        return _bitstream_words(((z - 1) & 7).to(torch.uint8), bits, "qzeros (out_features)")
    words = _bitstream_words(z.to(torch.uint8), bits, "qzeros (out_features)").to(torch.int64)
    ones = sum(1 << (bits * j) for j in range(32 // bits))
    return _as_int32((words - ones) % 2**32)


def pack_awq(codes: torch.Tensor) -> torch.Tensor:
    """4-bit values [rows, cols] -> int32 [rows, cols/8] in AWQ's interleaved nibble order."""
    rows, cols = codes.shape
    if cols % 8:
        raise ValueError(f"AWQ packs 8 values per int32 along out_features; {cols} is not a multiple of 8.")
    grouped = codes.to(torch.int64).reshape(rows, cols // 8, 8)[..., list(AWQ_ORDER)]
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=codes.device)
    return _as_int32((grouped << shifts).sum(-1))
