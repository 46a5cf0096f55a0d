import bitsandbytes.functional as bF
import pytest
import torch
from helpers import naive_unpack_bitstream
from torch.library import opcheck

import hfq.kernels  # noqa: F401
from hfq.algorithms.rtn import quantize_codebook4
from hfq.formats.codebooks import codebook


def _int_args(bits, sym, seed=0):
    g = torch.Generator().manual_seed(seed)
    out, G, gsize = 5, 3, 16
    weight = torch.randint(0, 256, (out, G, gsize * bits // 8), generator=g, dtype=torch.uint8)
    scales = (torch.rand(out, G, generator=g) * 0.1).half()
    zeros = None if sym else torch.randint(0, 2**bits, (out, G), generator=g, dtype=torch.uint8)
    return weight, scales, zeros


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_dequantize_int_equals_naive_definition(bits, sym):
    weight, scales, zeros = _int_args(bits, sym)
    got = torch.ops.hfq.dequantize_int(weight, scales, zeros, bits, torch.float32)
    for r in range(weight.shape[0]):
        for gi in range(weight.shape[1]):
            q = naive_unpack_bitstream(weight[r, gi].tolist(), bits, 16)
            z = 2 ** (bits - 1) if zeros is None else int(zeros[r, gi])
            s = float(scales[r, gi])
            assert got[r, gi * 16 : (gi + 1) * 16].tolist() == [s * (v - z) for v in q]


@pytest.mark.parametrize("qt", ["nf4", "fp4"])
def test_dequantize_4bit_equals_bitsandbytes_on_random_bytes(qt):
    g = torch.Generator().manual_seed(3)
    nb, bs = 40, 64
    weight = torch.randint(0, 256, (nb, bs // 2), generator=g, dtype=torch.uint8)
    absmax = torch.rand(nb, generator=g) * 3
    shape = [20, 128]
    state = bF.QuantState(absmax=absmax, shape=torch.Size(shape), code=None, blocksize=bs, quant_type=qt,
                          dtype=torch.float32)
    ref = bF.dequantize_4bit(weight.reshape(-1, 1), state)
    got = torch.ops.hfq.dequantize_4bit(weight, absmax, codebook(qt), shape, torch.float32)
    assert torch.equal(got, ref)


def test_dequantize_double_quant_equals_bitsandbytes():
    # Feed hfq's own double-quantized tensors to bitsandbytes' decoder: the absmax values must agree exactly.
    w = torch.randn(300, 256, generator=torch.Generator().manual_seed(4))
    t = quantize_codebook4(w, "nf4", 64, True)
    got = torch.ops.hfq.dequantize_8bit_blockwise(t["absmax"], t["absmax_scale"], codebook("dynamic8"), 256)
    got = got + t["absmax_offset"]
    state2 = bF.QuantState(absmax=t["absmax_scale"], code=codebook("dynamic8"), blocksize=256, dtype=torch.float32)
    ref = bF.dequantize_blockwise(t["absmax"], state2) + t["absmax_offset"]
    assert torch.equal(got, ref)


def _opcheck_cases():
    from hfq.algorithms.ggml_quant import quantize_rows

    w, s, z = _int_args(4, False)
    x = torch.randn(2, 48)
    nf = quantize_codebook4(torch.randn(8, 64), "nf4", 64, False)
    g_idx = (torch.arange(48) % 3).to(torch.int32)
    yield "dequantize_int", (w, s, z, 4, torch.float32)
    yield "dequantize_int", (w, s, None, 4, torch.float16, g_idx)
    yield "linear_int", (x, w, s, z, 4, torch.randn(5))
    yield "linear_int", (torch.randn(20, 48).bfloat16(), w, s, z, 4, None, g_idx)
    yield "dequantize_4bit", (nf["weight"], nf["absmax"], codebook("nf4"), [8, 64], torch.bfloat16)
    yield "linear_4bit", (torch.randn(3, 64), nf["weight"], nf["absmax"], codebook("nf4"), [8, 64], None)
    yield "linear_4bit", (torch.randn(2, 9, 64).half(), nf["weight"], nf["absmax"], codebook("nf4"), [8, 64],
                          torch.randn(8).half())
    yield "dequantize_8bit_blockwise", (torch.randint(0, 256, (300,), dtype=torch.uint8), torch.rand(2),
                                        codebook("dynamic8"), 256)
    for qt in ("Q4_0", "Q8_0", "Q4_K", "Q6_K"):
        q = quantize_rows(torch.randn(6, 256), qt, None)
        yield "dequantize_ggml", (q, qt, 256, torch.float32)
        yield "linear_ggml", (torch.randn(3, 256), q, qt, 256, torch.randn(6))
    yield "linear_ggml", (torch.randn(20, 256).bfloat16(), q, "Q6_K", 256, None)
    yield "quantize_ggml", (torch.randn(4, 256), "Q4_K", torch.rand(256))
    yield "quantize_ggml", (torch.randn(4, 64), "Q5_1", None)


@pytest.mark.parametrize("name,args", list(_opcheck_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    """Schema, fake (meta) function, and dispatch of whichever kernel serves CPU (native, or the reference)."""
    opcheck(getattr(torch.ops.hfq, name).default, args)


@pytest.mark.parametrize("bits,sym", [(4, True), (3, False), (2, True)])
def test_dequantize_int_with_g_idx_matches_a_naive_loop(bits, sym):
    """Act-order layout: codes in column order, column c scaled by group g_idx[c] (GPTQ's convention)."""
    from hfq.formats.bitpack import pack_bits

    g = torch.Generator().manual_seed(bits)
    out_f, in_f, gs = 3, 64, 16
    codes = torch.randint(0, 2**bits, (out_f, in_f), generator=g).to(torch.uint8)
    scales = torch.rand(out_f, in_f // gs, generator=g).to(torch.float16)
    zeros = None if sym else torch.randint(0, 2**bits, (out_f, in_f // gs), generator=g).to(torch.uint8)
    g_idx = (torch.randperm(in_f, generator=g) // gs).to(torch.int32)
    packed = pack_bits(codes.reshape(out_f, in_f // gs, gs).contiguous(), bits)
    got = torch.ops.hfq.dequantize_int(packed, scales, zeros, bits, torch.float32, g_idx)
    for r in range(out_f):
        for c in range(in_f):
            k = int(g_idx[c])
            z = 2 ** (bits - 1) if sym else int(zeros[r, k])
            assert got[r, c].item() == float(scales[r, k]) * (int(codes[r, c]) - z)
    x = torch.randn(2, in_f, generator=g)
    y = torch.ops.hfq.linear_int(x, packed, scales, zeros, bits, None, g_idx)
    dense = torch.tensor([[float(scales[r, int(g_idx[c])]) * (int(codes[r, c]) - (2 ** (bits - 1) if sym else
                           int(zeros[r, int(g_idx[c])]))) for c in range(in_f)] for r in range(out_f)])
    torch.testing.assert_close(y, x @ dense.T)   # the naive matrix, not hfq's own decode
