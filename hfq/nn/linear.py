"""HfqLinear: a Linear whose weight is stored in an hfq layout as plain named tensors."""

from __future__ import annotations

import torch
from torch import nn

from ..formats.bitpack import pack_bits, unpack_bits
from ..formats.codebooks import codebook
from ..formats.layouts import DQ_BLOCK, layer_specs
from ..kernels import build, ops


class HfqLinear(nn.Module):
    """y = x @ dequant(W).T + b, through torch.ops.hfq.*. The state dict holds only the layout tensors (+ bias).

    Derived tensors the kernels need (the decoded double-quant absmax, the code table, act-order columns sorted
    by group) are non-persistent buffers made once by `prepare()`: never saved, and moved with the module."""

    def __init__(self, in_features: int, out_features: int, bias: bool, layout: str, bits: int, group_size: int,
                 sym: bool = True, double_quant: bool = False, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, ggml_type: str | None = None, act_order: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.layout, self.bits, self.group_size = layout, bits, group_size
        self.sym, self.double_quant = bool(sym), bool(double_quant)
        self.ggml_type = ggml_type
        self.act_order = bool(act_order)   # int grids: a g_idx tensor maps columns to groups (GPTQ desc_act)
        self.layout_names = []
        for spec in layer_specs(layout, out_features, in_features, bits, group_size, self.sym, self.double_quant,
                                ggml_type, self.act_order):
            t = torch.zeros(spec.shape, dtype=spec.dtype, device=device)
            self._set_layout(spec.name, t)
            self.layout_names.append(spec.name)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._ready = False

    def extra_repr(self) -> str:
        if self.layout == "gguf":
            return (f"in_features={self.in_features}, out_features={self.out_features}, layout=gguf, "
                    f"ggml_type={self.ggml_type}, bias={self.bias is not None}")
        extra = f", sym={self.sym}" if self.layout == "int" else f", double_quant={self.double_quant}"
        extra += ", act_order=True" if self.act_order else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}, "
                f"bits={self.bits}, group_size={self.group_size}{extra}, bias={self.bias is not None}")

    def _set_layout(self, name: str, t: torch.Tensor) -> None:
        """Integer layout tensors are frozen parameters; float ones (scales, absmax) are persistent buffers, so that
        the model's dtype (its first float parameter) stays the compute dtype, never a float16 scale."""
        if t.is_floating_point():
            self.register_buffer(name, t)
        else:
            self.register_parameter(name, nn.Parameter(t, requires_grad=False))

    def load_quantized(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy layout tensors (as produced by hfq.algorithms) into this layer, checking names and shapes."""
        expected = set(self.layout_names)
        if set(tensors) != expected:
            raise ValueError(f"expected tensors {sorted(expected)}, got {sorted(tensors)}")
        for name, t in tensors.items():
            p = getattr(self, name)
            if p.shape != t.shape or p.dtype != t.dtype:
                raise ValueError(f"{name}: expected {tuple(p.shape)} {p.dtype}, got {tuple(t.shape)} {t.dtype}")
            self._set_layout(name, t.to(p.device))
        self.prepare()

    # ---- derived tensors ----

    def prepare(self) -> None:
        """Build the derived buffers from the layout tensors and load the native kernels for their device.

        Called after loading (by the quantizer, load_quantized and load_state_dict); forward calls it when a
        layer was filled some other way."""
        dev = self.weight.device
        if dev.type == "meta":
            return
        build.ensure(dev)
        with torch.no_grad():
            if self.layout in ("nf4", "fp4"):
                self.register_buffer("code", codebook(self.layout, dev).clone(), persistent=False)
                absmax = self.absmax
                if self.double_quant:
                    absmax = ops.op("dequantize_8bit_blockwise")(self.absmax, self.absmax_scale,
                                                                 codebook("dynamic8", dev), DQ_BLOCK)
                    absmax = absmax + self.absmax_offset
                self.register_buffer("absmax_f32", absmax, persistent=False)
            elif self.layout == "int" and self.act_order:
                self._sort_act_order()
        self._ready = True

    def _sort_act_order(self) -> None:
        """GPTQ's act-order puts exactly group_size columns in each group; sorting the columns by group turns the
        layer into a plain grouped one (x is permuted to match), which the fast kernels run. Other g_idx layouts
        keep g_idx."""
        g = self.in_features if self.group_size == -1 else self.group_size
        gi = self.g_idx.long()
        perm = torch.argsort(gi, stable=True)
        if not torch.equal(gi[perm], torch.arange(self.in_features, device=gi.device) // g):
            self.register_buffer("perm", None, persistent=False)
            return
        out, G, nbytes = self.weight.shape
        codes = unpack_bits(self.weight, self.bits).reshape(out, -1)[:, perm]
        sorted_w = pack_bits(codes.reshape(out, G, g).contiguous(), self.bits)
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("weight_sorted", sorted_w, persistent=False)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False   # new layout tensors: derived buffers are stale

    def _apply(self, fn, recurse=True):
        """Layout tensors keep their dtype under model.to(dtype)/.half()/.bfloat16(): only their device moves.
        (A cast would turn float16 scales or float32 absmax into something no kernel reads.) The bias follows."""
        keep = {id(t) for name, t in [*self._parameters.items(), *self._buffers.items()]
                if t is not None and name != "bias"}

        def move_only(t):
            r = fn(t)
            if id(t) in keep and r.dtype != t.dtype:
                return t.to(device=r.device)
            return r

        return super()._apply(move_only, recurse)

    def absmax_float(self) -> torch.Tensor:
        """The float32 absmax of each 4-bit block (decoding double quantization when used)."""
        if not self._ready:
            self.prepare()
        return self.absmax_f32

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.layout == "gguf":
            return ops.op("dequantize_ggml")(self.weight, self.ggml_type, self.in_features, dtype)
        if self.layout == "int":
            return ops.op("dequantize_int")(self.weight, self.scales, self._zeros(), self.bits, dtype, self._g_idx())
        return ops.op("dequantize_4bit")(self.weight, self.absmax_float(), codebook(self.layout, self.weight.device),
                                         [self.out_features, self.in_features], dtype)

    def _zeros(self):
        return None if self.sym else self.zeros

    def _g_idx(self):
        return self.g_idx if self.act_order else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            self.prepare()
        if self.layout == "gguf":
            return ops.call("linear_ggml", x, self.weight, self.ggml_type, self.in_features, self.bias)
        if self.layout == "int":
            if self.act_order and self.perm is not None:
                return ops.call("linear_int", x.index_select(-1, self.perm), self.weight_sorted, self.scales,
                                self._zeros(), self.bits, self.bias, None)
            return ops.call("linear_int", x, self.weight, self.scales, self._zeros(), self.bits, self.bias,
                            self._g_idx())
        return ops.call("linear_4bit", x, self.weight, self.absmax_f32, self.code,
                        [self.out_features, self.in_features], self.bias)
