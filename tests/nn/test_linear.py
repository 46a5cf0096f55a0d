import pytest
import torch
import torch.nn.functional as F

from hfq.algorithms import quantize_layer_weight
from hfq.nn import HfqLinear


@pytest.mark.parametrize("method,bits,gs,sym,dq", [("rtn", 4, 32, True, False), ("rtn", 3, -1, False, False),
                                                   ("nf4", 4, 64, None, True), ("fp4", 4, 64, None, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_is_linear_of_dequantized_weight(method, bits, gs, sym, dq, dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 64, generator=g) * 0.1
    b = torch.randn(24, generator=g)
    lin = HfqLinear(64, 24, True, method, bits, gs, sym, dq)
    lin.load_quantized(quantize_layer_weight(w, method, bits, gs, bool(sym), dq))
    lin.bias.data.copy_(b)
    x = torch.randn(2, 5, 64, generator=g).to(dtype)
    ref = F.linear(x, lin.dequantize_weight(dtype), b.to(dtype))
    assert torch.equal(lin(x), ref)
    assert lin(x).dtype == dtype
    # and the dequantized weight is close to the float one
    err = (lin.dequantize_weight() - w).pow(2).mean() / w.pow(2).mean()
    assert err < (0.15 if bits == 3 else 0.02)


def test_state_dict_is_plain_named_tensors():
    lin = HfqLinear(64, 8, False, "nf4", 4, 64, None, True)
    sd = lin.state_dict()
    assert {k: (tuple(v.shape), v.dtype) for k, v in sd.items()} == {
        "weight": ((8, 32), torch.uint8), "absmax": ((8,), torch.uint8),
        "absmax_scale": ((1,), torch.float32), "absmax_offset": ((), torch.float32)}


def test_load_quantized_rejects_wrong_tensors():
    lin = HfqLinear(64, 8, False, "rtn", 4, 32, True, False)
    with pytest.raises(ValueError, match="expected tensors"):
        lin.load_quantized({"weight": torch.zeros(8, 2, 16, dtype=torch.uint8)})
