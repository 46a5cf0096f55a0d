"""Which named tensors an hfq layer stores, with shapes and dtypes. This is the on-disk contract.

int (bits b, group g, G = in/g groups per row; what RTN, GPTQ and AWQ write):
  weight  uint8   [out, G, g*b/8]   codes q in [0, 2**b-1], little-endian bitstream per group
  scales  float16 [out, G]
  zeros   uint8   [out, G]          asymmetric only; symmetric uses zero = 2**(b-1)
  g_idx   int32   [in]              act-order (GPTQ desc_act) only: column c belongs to group g_idx[c];
                                    codes stay in original column order, packed in chunks of g columns
  meaning: w = scales * (q - zero); with g_idx, w[:, c] = scales[:, g_idx[c]] * (q[:, c] - zero[:, g_idx[c]])

nf4 / fp4 (block B over the row-major flattened weight, nb = ceil(out*in/B) blocks):
  weight  uint8   [nb, B/2]         4-bit codes, first in the high nibble (bitsandbytes order), tail zero-padded
  absmax  float32 [nb]              without double quant
  absmax  uint8   [nb]              with double quant: codes into the signed dynamic 8-bit map
  absmax_scale  float32 [ceil(nb/256)]   double quant: absmax of each 256-block of (absmax - offset)
  absmax_offset float32 []               double quant: mean of the absmax constants
  meaning: w = codebook[q] * absmax[block]; with double quant absmax = dynamic8[a] * absmax_scale[a_block] + offset

gguf (GGML type T, llama.cpp blocks along each row of `in` values):
  weight  uint8   [out, in / block(T) * type_size(T)]   the GGUF tensor data itself, byte for byte
  meaning: ggml's dequantize_row_<T> (hfq.formats.ggml_dequant)

The packed weight is never [out, in], so a checkpoint loaded by plain transformers (without `import hfq`)
fails with a size mismatch instead of silently casting codes to floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .ggml_types import ggml_type, row_bytes

DQ_BLOCK = 256


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def n_groups(in_features: int, group_size: int) -> int:
    return 1 if group_size == -1 else in_features // group_size


def check_shape(layout: str, out_features: int, in_features: int, bits: int, group_size: int,
                ggml: str | None = None) -> None:
    """Raise ValueError for a weight shape the layout cannot hold, naming the fix."""
    if layout == "gguf":
        t = ggml_type(ggml or "")
        if t.block == 1 or in_features % t.block:
            raise ValueError(
                f"in_features={in_features} is not a multiple of the {t.name} block ({t.block}); pick another type "
                "in tensor_types or list the layer in modules_to_not_convert."
            )
    if layout == "int":
        g = in_features if group_size == -1 else group_size
        if in_features % g:
            raise ValueError(
                f"in_features={in_features} is not a multiple of group_size={group_size}; choose a group_size that "
                "divides it, group_size=-1, or list the layer in modules_to_not_convert."
            )
        if (g * bits) % 8:
            raise ValueError(
                f"a group of {g} {bits}-bit values is not a whole number of bytes (in_features={in_features}); "
                "use a group_size that is a multiple of 8 or list the layer in modules_to_not_convert."
            )


def layer_specs(layout: str, out_features: int, in_features: int, bits: int, group_size: int,
                sym: bool, double_quant: bool, ggml: str | None = None, act_order: bool = False) -> list[TensorSpec]:
    check_shape(layout, out_features, in_features, bits, group_size, ggml)
    if layout == "gguf":
        return [TensorSpec("weight", (out_features, row_bytes(ggml, in_features)), torch.uint8)]
    if layout == "int":
        g = in_features if group_size == -1 else group_size
        G = in_features // g
        specs = [TensorSpec("weight", (out_features, G, g * bits // 8), torch.uint8),
                 TensorSpec("scales", (out_features, G), torch.float16)]
        if not sym:
            specs.append(TensorSpec("zeros", (out_features, G), torch.uint8))
        if act_order:
            specs.append(TensorSpec("g_idx", (in_features,), torch.int32))
        return specs
    if act_order:
        raise ValueError(f"act-order (g_idx) is stored only with integer grids, not with layout={layout!r}.")
    nb = -(-(out_features * in_features) // group_size)
    specs = [TensorSpec("weight", (nb, group_size // 2), torch.uint8)]
    if double_quant:
        specs += [TensorSpec("absmax", (nb,), torch.uint8),
                  TensorSpec("absmax_scale", (-(-nb // DQ_BLOCK),), torch.float32),
                  TensorSpec("absmax_offset", (), torch.float32)]
    else:
        specs.append(TensorSpec("absmax", (nb,), torch.float32))
    return specs
