import pytest
import torch
import torch.nn.functional as F
from cpu_oracle import act_block, bnb_dense, int_dense, linear_bound

from hfq.algorithms import quantize_layer_weight
from hfq.formats.codebooks import codebook
from hfq.nn import HfqLinear


def _layer(layout, bits, gs, sym, dq, w, bias=True):
    lin = HfqLinear(w.shape[1], w.shape[0], bias, layout, bits, gs, sym, dq)
    lin.load_quantized(quantize_layer_weight(w, layout, bits, gs, bool(sym), dq))
    return lin


def _independent_dense(lin):
    """The layer's weight decoded without hfq: a naive loop for int codes, bitsandbytes for nf4/fp4."""
    if lin.layout == "int":
        return int_dense(lin.weight, lin.scales, None if lin.sym else lin.zeros, lin.bits,
                         lin.g_idx if lin.act_order else None)
    nested = (lin.absmax_scale, lin.absmax_offset, codebook("dynamic8")) if lin.double_quant else None
    return bnb_dense(lin.weight, lin.absmax, [lin.out_features, lin.in_features], lin.layout, lin.group_size, nested)


@pytest.mark.parametrize("layout,bits,gs,sym,dq", [("int", 4, 32, True, False), ("int", 3, -1, False, False),
                                                   ("nf4", 4, 64, None, True), ("fp4", 4, 64, None, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_forward_matches_an_independent_decode(layout, bits, gs, sym, dq, dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 64, generator=g) * 0.1
    lin = _layer(layout, bits, gs, sym, dq, w)
    b = torch.randn(24, generator=g)
    lin.bias.data.copy_(b)
    dense = _independent_dense(lin)
    assert torch.equal(lin.dequantize_weight(), dense)
    for m in (1, 5, 40):   # GEMV engine and prefill tiles
        x = torch.randn(2, m, 64, generator=g).to(dtype)
        y = lin(x)
        assert y.dtype == dtype and y.shape == (2, m, 24)
        ref = x.double() @ dense.double().T + b.double()
        step = None
        if layout in ("nf4", "fp4"):
            blk = lin.absmax_float().repeat_interleave(gs)[: 24 * 64].reshape(24, 64)
            step = blk * codebook(layout).abs().max() * 0.5 / 16383
        block = act_block(layout, gs, 64)
        bound = linear_bound(dense, x, prefill=2 * m > 16, lut_step=step, block=block) + b.double().abs() * 2.0 ** -7
        assert ((y.double() - ref).abs() <= bound).all()
    # and the dequantized weight is close to the float one
    err = (lin.dequantize_weight() - w).pow(2).mean() / w.pow(2).mean()
    assert err < (0.15 if bits == 3 else 0.02)


def test_gradients_flow_when_asked_and_no_graph_is_kept_otherwise():
    """forward enters the op below autograd when nothing asks for a gradient; x or a trainable bias still gets
    grad @ W and sum(grad) (W decoded by a naive loop)."""
    g = torch.Generator().manual_seed(3)
    lin = _layer("int", 4, 32, True, False, torch.randn(8, 64, generator=g) * 0.1)
    dense = _independent_dense(lin)
    x = torch.randn(3, 64, generator=g)
    assert lin(x).grad_fn is None
    with torch.no_grad():
        assert lin(x.clone().requires_grad_()).grad_fn is None
    xg = x.clone().requires_grad_()
    grad = torch.randn(3, 8, generator=g)
    lin(xg).backward(grad)
    torch.testing.assert_close(xg.grad, (grad.double() @ dense.double()).float(), rtol=1e-5, atol=1e-6)
    lin.bias.requires_grad_(True)
    y = lin(x)
    assert y.grad_fn is not None
    y.backward(grad)
    torch.testing.assert_close(lin.bias.grad, grad.sum(0))


def test_act_order_layer_runs_the_sorted_layout_exactly():
    """GPTQ act-order: the layer sorts its columns by group once; forward equals the g_idx decode."""
    g = torch.Generator().manual_seed(1)
    lin = HfqLinear(64, 8, False, "int", 4, 16, False, act_order=True)
    codes = torch.randint(0, 256, (8, 4, 8), generator=g, dtype=torch.uint8)
    g_idx = (torch.randperm(64, generator=g) // 16).to(torch.int32)
    lin.load_quantized({"weight": codes, "scales": torch.rand(8, 4, generator=g).half(),
                        "zeros": torch.randint(0, 16, (8, 4), generator=g, dtype=torch.uint8), "g_idx": g_idx})
    assert lin.perm is not None and "weight_sorted" not in lin.state_dict()
    dense = _independent_dense(lin)
    x = torch.randn(3, 64, generator=g)
    assert ((lin(x).double() - x.double() @ dense.double().T).abs() <= linear_bound(dense, x, False)).all()
    uneven = HfqLinear(64, 8, False, "int", 4, 16, False, act_order=True)   # groups of unequal size: g_idx path
    gi = g_idx.clone()
    gi[:5] = 0
    uneven.load_quantized({**{k: getattr(lin, k) for k in ("weight", "scales", "zeros")}, "g_idx": gi})
    assert uneven.perm is None
    dense = int_dense(uneven.weight, uneven.scales, uneven.zeros, 4, gi)
    torch.testing.assert_close(uneven(x), x @ dense.T)


def test_double_quant_absmax_is_decoded_once_not_per_forward():
    lin = _layer("nf4", 4, 64, None, True, torch.randn(16, 128))
    calls = []

    class Count(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.append(str(func))
            return func(*args, **(kwargs or {}))

    with Count():
        lin(torch.randn(1, 128))
    assert not any("dequantize_8bit_blockwise" in c for c in calls), calls


@pytest.mark.parametrize("cast", ["to", "bfloat16", "half"])
def test_casting_the_model_keeps_layout_dtypes(cast):
    lin = _layer("nf4", 4, 64, None, True, torch.randn(16, 128))
    rtn = _layer("int", 4, 16, False, False, torch.randn(8, 16))
    model = torch.nn.Sequential(lin, torch.nn.ReLU(), rtn)
    before = {k: v.dtype for k, v in model.state_dict().items() if not k.endswith("bias")}
    x = torch.randn(2, 128)
    y32 = model(x)
    model = {"to": lambda m: m.to(torch.bfloat16), "bfloat16": lambda m: m.bfloat16(), "half": lambda m: m.half()}[cast](model)
    dt = torch.float16 if cast == "half" else torch.bfloat16
    after = {k: v.dtype for k, v in model.state_dict().items() if not k.endswith("bias")}
    assert after == before   # float16 scales, float32 absmax, uint8 codes unchanged
    assert lin.absmax_f32.dtype == torch.float32 and lin.code.dtype == torch.float32
    assert lin.bias.dtype == dt
    y = model(x.to(dt))
    assert y.dtype == dt
    assert (y.float() - y32).abs().max() < 0.05 * y32.abs().max()


def test_state_dict_is_plain_named_tensors():
    lin = HfqLinear(64, 8, False, "nf4", 4, 64, None, True)
    sd = lin.state_dict()
    assert {k: (tuple(v.shape), v.dtype) for k, v in sd.items()} == {
        "weight": ((8, 32), torch.uint8), "absmax": ((8,), torch.uint8),
        "absmax_scale": ((1,), torch.float32), "absmax_offset": ((), torch.float32)}


def test_load_state_dict_refreshes_the_derived_buffers():
    a = _layer("nf4", 4, 64, None, True, torch.randn(16, 128))
    b = _layer("nf4", 4, 64, None, True, torch.randn(16, 128))
    x = torch.randn(1, 128)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b(x), a(x))
    assert F.linear(x, b.dequantize_weight()).shape == (1, 16)


def test_load_quantized_rejects_wrong_tensors():
    lin = HfqLinear(64, 8, False, "int", 4, 32, True, False)
    with pytest.raises(ValueError, match="expected tensors"):
        lin.load_quantized({"weight": torch.zeros(8, 2, 16, dtype=torch.uint8)})
