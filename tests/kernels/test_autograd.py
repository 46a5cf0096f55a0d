"""Autograd of the hfq linear ops: d/dx and d/dbias against dense references (bitsandbytes, gguf-py, a naive loop),
gradcheck in float64, opcheck's autograd tests, and no 'autograd kernel was not registered' warning."""

import warnings

import bitsandbytes.functional as bF
import gguf
import pytest
import torch
from helpers import naive_unpack_bitstream
from torch.library import opcheck

import hfq.kernels  # noqa: F401
from hfq.algorithms.ggml_quant import quantize_rows
from hfq.algorithms.rtn import quantize_codebook4
from hfq.formats.codebooks import codebook
from hfq.kernels import build

OUT, IN = 6, 64


def _int_case(sym, act_order):
    g = torch.Generator().manual_seed(1)
    G = IN // 16
    weight = torch.randint(0, 256, (OUT, G, 16 * 4 // 8), generator=g, dtype=torch.uint8)
    scales = (torch.rand(OUT, G, generator=g) * 0.1 + 0.01).half()
    zeros = None if sym else torch.randint(0, 16, (OUT, G), generator=g, dtype=torch.uint8)
    g_idx = (torch.randperm(IN, generator=g) // 16).to(torch.int32) if act_order else None
    dense = torch.empty(OUT, IN, dtype=torch.float64)   # the naive definition: scale * (code - zero)
    for r in range(OUT):
        codes = [c for k in range(G) for c in naive_unpack_bitstream(weight[r, k].tolist(), 4, 16)]
        for c in range(IN):
            k = int(g_idx[c]) if act_order else c // 16
            z = 8 if sym else int(zeros[r, k])
            dense[r, c] = float(scales[r, k]) * (codes[c] - z)   # act-order keeps codes in column order
    return "linear_int", (weight, scales, zeros, 4), (g_idx,), dense


def _4bit_case(qt, dq):
    t = quantize_codebook4(torch.randn(OUT, IN, generator=torch.Generator().manual_seed(2)), qt, 64, False)
    state = bF.QuantState(absmax=t["absmax"], shape=torch.Size([OUT, IN]), code=None, blocksize=64, quant_type=qt,
                          dtype=torch.float32)
    dense = bF.dequantize_4bit(t["weight"].reshape(-1, 1), state).double()
    return "linear_4bit", (t["weight"], t["absmax"], codebook(qt), [OUT, IN]), (), dense


def _ggml_case(qt):
    n = 256
    q = quantize_rows(torch.randn(OUT, n, generator=torch.Generator().manual_seed(3)), qt, None)
    dense = torch.from_numpy(gguf.quants.dequantize(q.numpy(), getattr(gguf.GGMLQuantizationType, qt))).double()
    return "linear_ggml", (q, qt, n), (), dense


def _cases():
    yield "int-sym", lambda: _int_case(True, False)
    yield "int-asym", lambda: _int_case(False, False)
    yield "int-act-order", lambda: _int_case(True, True)
    yield "nf4", lambda: _4bit_case("nf4", False)
    yield "fp4", lambda: _4bit_case("fp4", False)
    for qt in ("Q4_0", "Q8_0", "Q4_K", "Q6_K"):
        yield qt, (lambda qt=qt: _ggml_case(qt))


CASES = dict(_cases())


def _call(name, packed, tail, x, bias):
    return getattr(torch.ops.hfq, name)(x, *packed, bias, *tail)


@pytest.mark.parametrize("case", CASES)
def test_backward_equals_the_dense_reference(case):
    name, packed, tail, dense = CASES[case]()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, dense.shape[1], generator=g, requires_grad=True)
    bias = torch.randn(OUT, generator=g, requires_grad=True)
    up = torch.randn(2, 3, OUT, generator=g)
    _call(name, packed, tail, x, bias).backward(up)
    ref_x = up.double() @ dense                     # d/dx sum(up * (x @ W.T + b)) = up @ W
    torch.testing.assert_close(x.grad.double(), ref_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.grad, up.sum((0, 1)))


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_float64(case):
    if build.status().get("cpu") == "loaded":
        pytest.skip("the native CPU kernels (loaded by an earlier test) take float32/16 only; gradcheck runs on the "
                    "reference path (tests/kernels/test_reference_path.py)")
    name, packed, tail, dense = CASES[case]()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, dense.shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(OUT, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: _call(name, packed, tail, x, b)  # noqa: E731
    # fast_mode checks random projections of the Jacobian: a full one costs 2 x 512 forwards of the reference decode
    assert torch.autograd.gradcheck(fn, (x, bias), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, bias), fast_mode=True)


@pytest.mark.parametrize("case", CASES)
def test_opcheck_with_gradients(case):
    """opcheck's test_autograd_registration and test_aot_dispatch_dynamic need inputs that require grad."""
    name, packed, tail, dense = CASES[case]()
    x = torch.randn(4, dense.shape[1], requires_grad=True)
    bias = torch.randn(OUT, requires_grad=True)
    opcheck(getattr(torch.ops.hfq, name).default, (x, *packed, bias, *tail))


@pytest.mark.parametrize("layout", ["nf4-dq", "int-act-order", "gguf"])
def test_layer_backward_warns_nothing_and_leaves_the_weights_frozen(layout):
    from hfq.nn import HfqLinear

    torch.manual_seed(6)
    w = torch.randn(OUT, 256)
    if layout == "nf4-dq":
        layer = HfqLinear(256, OUT, True, "nf4", 4, 64, double_quant=True)
        layer.load_quantized(quantize_codebook4(w, "nf4", 64, True))
    elif layout == "gguf":
        layer = HfqLinear(256, OUT, True, "gguf", 4, 256, ggml_type="Q4_K")
        layer.load_quantized({"weight": quantize_rows(w, "Q4_K", None)})
    else:
        name, packed, tail, _ = _int_case(True, True)
        layer = HfqLinear(IN, OUT, True, "int", 4, 16, act_order=True)
        layer.load_quantized({"weight": packed[0], "scales": packed[1], "g_idx": tail[0]})
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(5, layer.in_features, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        up = torch.randn(5, OUT)
        (layer(x) * up).sum().backward()   # linear in y: the native forward may round y through bf16
    assert not [w for w in caught if "autograd" in str(w.message)], [str(w.message) for w in caught]
    ref = x.detach().clone().requires_grad_(True)
    (torch.nn.functional.linear(ref, layer.dequantize_weight(), layer.bias) * up).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-4, atol=1e-4)
    assert all(p.grad is None for p in layer.parameters())
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in before.items())
