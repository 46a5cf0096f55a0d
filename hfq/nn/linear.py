"""HfqLinear: a Linear whose weight is stored in an hfq layout as plain named tensors."""

from __future__ import annotations

import torch
from torch import nn

from ..formats.codebooks import codebook
from ..formats.layouts import DQ_BLOCK, layer_specs
from ..kernels import ops


class HfqLinear(nn.Module):
    """y = x @ dequant(W).T + b, through torch.ops.hfq.*. The state dict holds only the layout tensors (+ bias)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, method: str, bits: int, group_size: int,
                 sym: bool = True, double_quant: bool = False, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, ggml_type: str | None = None, act_order: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method, self.bits, self.group_size = method, bits, group_size
        self.sym, self.double_quant = bool(sym), bool(double_quant)
        self.ggml_type = ggml_type
        self.act_order = bool(act_order)   # int grids: a g_idx tensor maps columns to groups (GPTQ desc_act)
        for spec in layer_specs(method, out_features, in_features, bits, group_size, self.sym, self.double_quant,
                                ggml_type, self.act_order):
            t = torch.zeros(spec.shape, dtype=spec.dtype, device=device)
            self.register_parameter(spec.name, nn.Parameter(t, requires_grad=False))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        if self.method == "gguf":
            return (f"in_features={self.in_features}, out_features={self.out_features}, method=gguf, "
                    f"ggml_type={self.ggml_type}, bias={self.bias is not None}")
        extra = f", sym={self.sym}" if self.method == "rtn" else f", double_quant={self.double_quant}"
        extra += ", act_order=True" if self.act_order else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, method={self.method}, "
                f"bits={self.bits}, group_size={self.group_size}{extra}, bias={self.bias is not None}")

    def load_quantized(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy layout tensors (as produced by hfq.algorithms) into this layer, checking names and shapes."""
        expected = {n for n, _ in self.named_parameters() if n != "bias"}
        if set(tensors) != expected:
            raise ValueError(f"expected tensors {sorted(expected)}, got {sorted(tensors)}")
        for name, t in tensors.items():
            p = getattr(self, name)
            if p.shape != t.shape or p.dtype != t.dtype:
                raise ValueError(f"{name}: expected {tuple(p.shape)} {p.dtype}, got {tuple(t.shape)} {t.dtype}")
            setattr(self, name, nn.Parameter(t.to(p.device), requires_grad=False))

    def absmax_float(self) -> torch.Tensor:
        """The float32 absmax of each 4-bit block (decoding double quantization when used)."""
        if not self.double_quant:
            return self.absmax
        dq = ops.op("dequantize_8bit_blockwise")(self.absmax, self.absmax_scale,
                                                  codebook("dynamic8", self.absmax.device), DQ_BLOCK)
        return dq + self.absmax_offset

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.method == "gguf":
            return ops.op("dequantize_ggml")(self.weight, self.ggml_type, self.in_features, dtype)
        if self.method == "rtn":
            return ops.op("dequantize_int")(self.weight, self.scales, self._zeros(), self.bits, dtype, self._g_idx())
        return ops.op("dequantize_4bit")(self.weight, self.absmax_float(), codebook(self.method, self.weight.device),
                                         [self.out_features, self.in_features], dtype)

    def _zeros(self):
        return None if self.sym else self.zeros

    def _g_idx(self):
        return self.g_idx if self.act_order else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "gguf":
            return ops.op("linear_ggml")(x, self.weight, self.ggml_type, self.in_features, self.bias)
        if self.method == "rtn":
            return ops.op("linear_int")(x, self.weight, self.scales, self._zeros(), self.bits, self.bias, self._g_idx())
        return ops.op("linear_4bit")(x, self.weight, self.absmax_float(), codebook(self.method, x.device),
                                     [self.out_features, self.in_features], self.bias)
