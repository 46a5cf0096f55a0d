"""Algorithms choose scales, zeros and codes. They produce tensors in hfq.formats layouts."""

from .rtn import quantize_layer_weight

__all__ = ["quantize_layer_weight"]
