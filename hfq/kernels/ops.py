"""Every hfq op: one schema and one fake (shape/dtype) function each, and the autograd formula of the linear ops.
Native kernels add device impls only.

Ops (meaning of the tensors in hfq.formats.layouts):
  dequantize_int(weight, scales, zeros?, bits, dtype, g_idx?)          -> [out, in]   (g_idx: act-order groups)
  dequantize_4bit(weight, absmax, code, shape, dtype)                  -> shape
  dequantize_8bit_blockwise(codes, absmax, code, blocksize)            -> float32, codes.shape
  linear_int(x, weight, scales, zeros?, bits, bias?, g_idx?)           -> [..., out]
  linear_4bit(x, weight, absmax, code, shape, bias?)                   -> [..., shape[0]]
  dequantize_ggml(weight, qtype, in_features, dtype)                   -> [out, in_features]
  linear_ggml(x, weight, qtype, in_features, bias?)                    -> [..., out]
  quantize_ggml(w, qtype, importance?)                                 -> uint8 [rows, row_bytes]
  embedding_int(weight, scales, zeros?, bits, ids, dtype)              -> [*ids.shape, in]   (rows of the table)
  embedding_ggml(weight, qtype, in_features, ids, dtype)               -> [*ids.shape, in_features]
"""

from __future__ import annotations

import torch

NAMESPACE = "hfq"

SCHEMAS = {
    "dequantize_int": ("(Tensor weight, Tensor scales, Tensor? zeros, int bits, ScalarType dtype, "
                       "Tensor? g_idx=None) -> Tensor"),
    "dequantize_4bit": "(Tensor weight, Tensor absmax, Tensor code, int[] shape, ScalarType dtype) -> Tensor",
    "dequantize_8bit_blockwise": "(Tensor codes, Tensor absmax, Tensor code, int blocksize) -> Tensor",
    "linear_int": ("(Tensor x, Tensor weight, Tensor scales, Tensor? zeros, int bits, Tensor? bias, "
                   "Tensor? g_idx=None) -> Tensor"),
    "linear_4bit": "(Tensor x, Tensor weight, Tensor absmax, Tensor code, int[] shape, Tensor? bias) -> Tensor",
    "dequantize_ggml": "(Tensor weight, str qtype, int in_features, ScalarType dtype) -> Tensor",
    "linear_ggml": "(Tensor x, Tensor weight, str qtype, int in_features, Tensor? bias) -> Tensor",
    "quantize_ggml": "(Tensor w, str qtype, Tensor? importance) -> Tensor",
    "embedding_int": "(Tensor weight, Tensor scales, Tensor? zeros, int bits, Tensor ids, ScalarType dtype) -> Tensor",
    "embedding_ggml": "(Tensor weight, str qtype, int in_features, Tensor ids, ScalarType dtype) -> Tensor",
}


def _is_defined(name: str) -> bool:
    try:
        getattr(getattr(torch.ops, NAMESPACE), name)
        return True
    except (AttributeError, RuntimeError):
        return False


# A re-executed module (importlib.reload) must not define twice: the first definitions stay.
_FIRST_TIME = not _is_defined("dequantize_int")
if not _FIRST_TIME and "g_idx" not in str(getattr(torch.ops, NAMESPACE).dequantize_int.default._schema):
    raise ImportError("torch.ops.hfq was defined by an older hfq in this process; restart Python.")
if _FIRST_TIME:
    _lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    for _name, _schema in SCHEMAS.items():
        _lib.define(_name + _schema)


def _register_fake(name):
    def deco(fn):
        if _FIRST_TIME:
            torch.library.register_fake(f"{NAMESPACE}::{name}")(fn)
        return fn

    return deco


def register_default(name):
    """Register fn as the pure-torch `default` body of hfq::<name> (once per process)."""
    def deco(fn):
        if _FIRST_TIME:
            torch.library.impl(f"{NAMESPACE}::{name}", "default")(fn)
        return fn

    return deco


def _int_in_features(weight: torch.Tensor, bits: int) -> int:
    return weight.shape[1] * weight.shape[2] * 8 // bits


@_register_fake("dequantize_int")
def _(weight, scales, zeros, bits, dtype, g_idx=None):
    torch._check(weight.dtype == torch.uint8, lambda: f"weight must be uint8, got {weight.dtype}")
    torch._check(weight.dim() == 3, lambda: f"weight must be [out, groups, bytes], got {tuple(weight.shape)}")
    torch._check(2 <= bits <= 8, lambda: f"bits must be 2..8, got {bits}")
    return weight.new_empty((weight.shape[0], _int_in_features(weight, bits)), dtype=dtype)


@_register_fake("dequantize_4bit")
def _(weight, absmax, code, shape, dtype):
    torch._check(weight.dtype == torch.uint8, lambda: f"weight must be uint8, got {weight.dtype}")
    torch._check(absmax.dtype == torch.float32, lambda: f"absmax must be float32, got {absmax.dtype}")
    return weight.new_empty(tuple(shape), dtype=dtype)


@_register_fake("dequantize_8bit_blockwise")
def _(codes, absmax, code, blocksize):
    torch._check(codes.dtype == torch.uint8, lambda: f"codes must be uint8, got {codes.dtype}")
    return codes.new_empty(codes.shape, dtype=torch.float32)


@_register_fake("linear_int")
def _(x, weight, scales, zeros, bits, bias, g_idx=None):
    torch._check(x.shape[-1] == _int_in_features(weight, bits), lambda: "x's last dim must equal in_features")
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@_register_fake("linear_4bit")
def _(x, weight, absmax, code, shape, bias):
    torch._check(x.shape[-1] == shape[1], lambda: f"x's last dim must be {shape[1]}, got {x.shape[-1]}")
    return x.new_empty((*x.shape[:-1], shape[0]))


@_register_fake("dequantize_ggml")
def _(weight, qtype, in_features, dtype):
    torch._check(weight.dtype == torch.uint8, lambda: f"weight must be uint8, got {weight.dtype}")
    torch._check(weight.dim() == 2, lambda: f"weight must be [out, row_bytes], got {tuple(weight.shape)}")
    return weight.new_empty((weight.shape[0], in_features), dtype=dtype)


@_register_fake("linear_ggml")
def _(x, weight, qtype, in_features, bias):
    torch._check(x.shape[-1] == in_features, lambda: f"x's last dim must be {in_features}, got {x.shape[-1]}")
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@_register_fake("quantize_ggml")
def _(w, qtype, importance):
    from ..formats.ggml_types import row_bytes

    return w.new_empty((w.shape[0], row_bytes(qtype, w.shape[1])), dtype=torch.uint8)


@_register_fake("embedding_int")
def _(weight, scales, zeros, bits, ids, dtype):
    torch._check(weight.dtype == torch.uint8, lambda: f"weight must be uint8, got {weight.dtype}")
    torch._check(not ids.is_floating_point(), lambda: f"ids must be integers, got {ids.dtype}")
    return weight.new_empty((*ids.shape, _int_in_features(weight, bits)), dtype=dtype)


@_register_fake("embedding_ggml")
def _(weight, qtype, in_features, ids, dtype):
    torch._check(weight.dtype == torch.uint8, lambda: f"weight must be uint8, got {weight.dtype}")
    torch._check(not ids.is_floating_point(), lambda: f"ids must be integers, got {ids.dtype}")
    return weight.new_empty((*ids.shape, in_features), dtype=dtype)


# ---- autograd: x (and a bias that asks for it) get gradients; the packed weight and its scales never do ----
# d/dx (x @ W.T + b) = grad @ W, with W decoded by the matching dequantize op in grad's dtype, so the backward runs
# on whichever kernel serves the device. Each entry: (index of bias, W from the op's inputs).
_LINEAR_BACKWARD = {
    "linear_int": (5, lambda a, dtype: op("dequantize_int")(a[1], a[2], a[3], a[4], dtype, a[6])),
    "linear_4bit": (5, lambda a, dtype: op("dequantize_4bit")(a[1], a[2], a[3], a[4], dtype)),
    "linear_ggml": (4, lambda a, dtype: op("dequantize_ggml")(a[1], a[2], a[3], dtype)),
}


def _setup_context(ctx, inputs, output):
    tensors = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
    ctx.tensor_at = tensors
    ctx.others = [None if isinstance(a, torch.Tensor) else a for a in inputs]
    ctx.save_for_backward(*(inputs[i] for i in tensors))


def _linear_backward(name):
    bias_at, weight_of = _LINEAR_BACKWARD[name]

    def backward(ctx, grad):
        args = list(ctx.others)
        for i, t in zip(ctx.tensor_at, ctx.saved_tensors):
            args[i] = t
        grads = [None] * len(args)
        if ctx.needs_input_grad[0]:
            grads[0] = (grad @ weight_of(args, grad.dtype)).to(args[0].dtype)
        bias = args[bias_at]
        if bias is not None and ctx.needs_input_grad[bias_at]:
            grads[bias_at] = grad.reshape(-1, grad.shape[-1]).sum(0).to(bias.dtype)
        return tuple(grads)

    return backward


if _FIRST_TIME:
    for _name in _LINEAR_BACKWARD:
        torch.library.register_autograd(f"{NAMESPACE}::{_name}", _linear_backward(_name), setup_context=_setup_context)


def op(name: str):
    """The OpOverloadPacket torch.ops.hfq.<name>."""
    return getattr(getattr(torch.ops, NAMESPACE), name)


_DEFAULT = {}   # name -> its OpOverload: the attribute walk costs about 1 us a call


def call(name: str, *args):
    """torch.ops.hfq.<name>.default(*args), entered below autograd when no input asks for a gradient: the same
    redispatch torch's registered autograd kernel makes, without its Python wrapper (about 5 us of each decode-time
    call). Traced programs take the op as it is."""
    f = _DEFAULT.get(name)
    if f is None:
        f = _DEFAULT[name] = op(name).default
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in args)):
        return f(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return f(*args)
