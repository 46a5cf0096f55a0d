"""The grids a calibrated method (GPTQ, AWQ) rounds onto, with the hooks GPTQ's error feedback needs.

A grid knows how to round a slice of columns given its group parameters, how to pack the result into an hfq
layout (hfq.formats.layouts), and how to do plain round-to-nearest (the RTN fallback, and AWQ's encoder).
- IntGrid: GPTQ's integer grids (stored in the rtn layout, optionally with g_idx for act-order).
- CodebookGrid: NF4/FP4 absmax blocks along each row (stored in the nf4/fp4 layout).
- GGMLGrid: GGUF blocks; `step` columns (one block) are rounded at once by hfq's byte-exact ggml encoder.
"""

from __future__ import annotations

import torch

from ..formats.bitpack import pack_bits, pack_nibbles_hi_first
from ..formats.codebooks import codebook
from ..formats.ggml_dequant import dequantize_rows
from ..formats.ggml_types import ggml_type
from .ggml_quant import quantize_rows
from .rtn import double_quantize, int_grid_params, nearest_code, quantize_layer_weight


class IntGrid:
    """b-bit integers, scale and zero per group of `group_size` columns (-1: one group per row)."""

    layout = "int"
    step = 1

    def __init__(self, bits: int, group_size: int, sym: bool, act_order: bool = False):
        self.bits, self.group_size, self.sym, self.act_order = bits, group_size, sym, act_order
        self.maxq = 2**bits - 1

    def group(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size

    def params(self, wg: torch.Tensor):
        """wg [out, g] (current weights of one group) -> (scale [out], zero [out]), float32."""
        scale, zero = int_grid_params(wg.float().unsqueeze(1), self.bits, self.sym)
        return scale[:, 0], zero[:, 0]

    def quantize(self, w: torch.Tensor, p):
        """w [out, s] -> (dequantized [out, s], codes uint8 [out, s])."""
        scale, zero = (t.to(w.dtype).unsqueeze(1) for t in p)
        q = torch.clamp(torch.round(w / scale) + zero, 0, self.maxq)
        return scale * (q - zero), q.to(torch.uint8)

    def encode(self, codes: torch.Tensor, params: list, g_idx: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """codes [out, in] in original column order; params[g] for group g (g_idx maps columns to groups)."""
        out_f, in_f = codes.shape
        g = self.group(in_f)
        t = {"weight": pack_bits(codes.reshape(out_f, in_f // g, g).contiguous(), self.bits),
             "scales": torch.stack([p[0] for p in params], 1).to(torch.float16)}
        if not self.sym:
            t["zeros"] = torch.stack([p[1] for p in params], 1).to(torch.uint8)
        if g_idx is None and self.act_order:   # layers of an act-order model all carry g_idx
            g_idx = torch.arange(in_f, device=codes.device) // g
        if g_idx is not None:
            t["g_idx"] = g_idx.to(torch.int32)
        return t

    def fake(self, w: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest quantize-dequantize of w [out, in] (the values rtn() stores), float32."""
        out_f, in_f = w.shape
        wg = w.float().reshape(out_f, -1, self.group(in_f))
        scale, zero = int_grid_params(wg, self.bits, self.sym)
        scale, zero = scale.unsqueeze(-1), zero.unsqueeze(-1)
        return (scale * (torch.clamp(torch.round(wg / scale) + zero, 0, self.maxq) - zero)).reshape(out_f, in_f)

    def rtn(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        t = quantize_layer_weight(w, "int", self.bits, self.group_size, self.sym, False)
        if self.act_order:
            t["g_idx"] = (torch.arange(w.shape[1], device=w.device) // self.group(w.shape[1])).to(torch.int32)
        return t

    def describe(self) -> str:
        g = "pc" if self.group_size == -1 else f"g{self.group_size}"
        return f"int{self.bits}-{g}-{'sym' if self.sym else 'asym'}"


class CodebookGrid:
    """NF4/FP4: codes from a 16-entry table, scaled by the absmax of each block of `group_size` columns.

    GPTQ needs blocks inside rows (in_features % group_size == 0) so each block is a group of columns.
    With double quantization the codes are chosen against the float32 absmax, then the absmax constants are
    double-quantized, exactly as the round-to-nearest path (and bitsandbytes) does."""

    step = 1

    def __init__(self, name: str, group_size: int, double_quant: bool):
        self.layout, self.group_size, self.double_quant = name, group_size, double_quant

    def group(self, in_features: int) -> int:
        if in_features % self.group_size:
            raise ValueError(f"in_features={in_features} is not a multiple of the {self.layout} block "
                             f"{self.group_size}; calibrated {self.layout} needs blocks inside rows. Pick a "
                             "group_size that divides it or list the layer in modules_to_not_convert.")
        return self.group_size

    def params(self, wg: torch.Tensor):
        return wg.abs().amax(1)

    def quantize(self, w: torch.Tensor, absmax):
        code = codebook(self.layout, w.device).to(w.dtype)
        a = absmax.to(w.dtype).unsqueeze(1)
        inv = 1.0 / a.clamp(min=torch.finfo(torch.float32).tiny)
        idx = nearest_code(torch.clamp(w * inv, -1, 1), code)
        return code[idx.long()] * a, idx

    def encode(self, codes: torch.Tensor, params: list, g_idx: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if g_idx is not None:
            raise ValueError("the nf4/fp4 layout has no g_idx; act-order needs static_groups=True here.")
        b = self.group_size
        t = {"weight": pack_nibbles_hi_first(codes.reshape(-1, b).contiguous())}
        absmax = torch.stack(params, 1).reshape(-1).float()
        if self.double_quant:
            a, s2, off = double_quantize(absmax)
            t.update(absmax=a, absmax_scale=s2, absmax_offset=off)
        else:
            t["absmax"] = absmax
        return t

    def fake(self, w: torch.Tensor) -> torch.Tensor:
        if self.double_quant:
            return decode(self, self.rtn(w), *w.shape)
        wg = w.float().reshape(-1, self.group_size)
        q, _ = self.quantize(wg, self.params(wg))
        return q.reshape(w.shape)

    def rtn(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        return quantize_layer_weight(w, self.layout, 4, self.group_size, True, self.double_quant)

    def describe(self) -> str:
        return f"{self.layout}{'-dq' if self.double_quant else ''}-b{self.group_size}"


class GGMLGrid:
    """One GGML type. A whole block of columns is rounded at once by the ggml encoder (its scale search spans
    the block), weighted by `importance` = the diagonal of the block's effective Hessian (see gptq.py)."""

    layout = "gguf"
    group_size = None

    def __init__(self, type_name: str):
        self.type = ggml_type(type_name).name
        self.step = ggml_type(type_name).block

    def group(self, in_features: int) -> int | None:
        if in_features % self.step:
            raise ValueError(f"in_features={in_features} is not a multiple of the {self.type} block ({self.step}).")
        return None

    def quantize_block(self, w: torch.Tensor, importance: torch.Tensor | None):
        """w [out, block] -> (dequantized [out, block], bytes uint8 [out, type_size])."""
        data = quantize_rows(w.float(), self.type, importance)
        return dequantize_rows(data, self.type, w.shape[0], w.shape[1]).to(w.dtype), data

    def encode(self, chunks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"weight": torch.cat(chunks, 1).contiguous()}

    def fake(self, w: torch.Tensor) -> torch.Tensor:
        return dequantize_rows(quantize_rows(w.float(), self.type), self.type, *w.shape)

    def rtn(self, w: torch.Tensor, importance: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"weight": quantize_rows(w, self.type, importance)}

    def describe(self) -> str:
        return self.type


def decode(grid, tensors: dict[str, torch.Tensor], out_features: int, in_features: int) -> torch.Tensor:
    """The float32 weight that layout `tensors` of `grid` hold (through the ops, as HfqLinear computes it)."""
    from ..nn import HfqLinear

    lin = HfqLinear(in_features, out_features, False, grid.layout, getattr(grid, "bits", 4),
                    grid.group_size or 0, getattr(grid, "sym", True), getattr(grid, "double_quant", False),
                    ggml_type=getattr(grid, "type", None), act_order="g_idx" in tensors,
                    device=next(iter(tensors.values())).device)
    lin.load_quantized(tensors)
    return lin.dequantize_weight(torch.float32)


def make_grid(layout: str, bits: int | None = None, group_size: int | None = None, sym: bool = True,
              double_quant: bool = False, ggml: str | None = None, act_order: bool = False):
    """The grid for an hfq layer layout ('int', 'nf4', 'fp4', 'gguf' with a GGML type)."""
    if layout == "int":
        return IntGrid(bits, group_size, sym, act_order)
    if layout in ("nf4", "fp4"):
        return CodebookGrid(layout, group_size, double_quant)
    if layout == "gguf":
        return GGMLGrid(ggml)
    raise ValueError(f"no calibrated grid for layout {layout!r}; allowed: 'int', 'nf4', 'fp4', 'gguf'.")
