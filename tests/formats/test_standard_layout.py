"""GPTQ v1 and AWQ GEMM packing, bit for bit: against naive readers written from the format descriptions, and
against gptqmodel's own packers (TorchLinear.pack + its v2->v1 conversion, pack_awq) when gptqmodel is installed."""

import pytest
import torch

from hfq.formats.bitpack import pack_bits
from hfq.formats.standard_layout import hfq_int_codes, pack_awq, pack_gptq_qweight, pack_gptq_qzeros
from helpers import naive_unpack_bitstream


def _u32(x: int) -> int:
    return x & 0xFFFFFFFF


def naive_read_bitstream(words: list[int], bits: int, n: int) -> list[int]:
    """Value i occupies bits [i*b, (i+1)*b) of the concatenated 32-bit words (int32 as stored), bit 0 = LSB of
    word 0."""
    return naive_unpack_bitstream(words, bits, n, word_bits=32)


def naive_read_awq(word: int) -> list[int]:
    """AutoAWQ GEMM: nibble i (from the LSB) of a word holds column [0, 2, 4, 6, 1, 3, 5, 7][i] of its 8."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    cols = [0] * 8
    for i in range(8):
        cols[order[i]] = (_u32(word) >> (4 * i)) & 0xF
    return cols


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_qweight_matches_the_spec(bits):
    torch.manual_seed(bits)
    out_f, in_f = 5, 64
    codes = torch.randint(0, 2**bits, (out_f, in_f), dtype=torch.uint8)
    qw = pack_gptq_qweight(codes, bits)
    assert qw.dtype == torch.int32 and qw.shape == (in_f * bits // 32, out_f)
    for o in range(out_f):
        assert naive_read_bitstream(qw[:, o].tolist(), bits, in_f) == codes[o].tolist()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_qzeros_store_zero_minus_one(bits):
    torch.manual_seed(10 + bits)
    n_groups, out_f = 3, 64
    zeros = torch.randint(1, 2**bits, (n_groups, out_f))  # z >= 1: every reader agrees on z - 1
    qz = pack_gptq_qzeros(zeros, bits)
    assert qz.dtype == torch.int32 and qz.shape == (n_groups, out_f * bits // 32)
    for g in range(n_groups):
        assert naive_read_bitstream(qz[g].tolist(), bits, out_f) == (zeros[g] - 1).tolist()


def test_awq_matches_the_spec():
    torch.manual_seed(3)
    codes = torch.randint(0, 16, (6, 32))
    packed = pack_awq(codes)
    assert packed.dtype == torch.int32 and packed.shape == (6, 4)
    for r in range(6):
        row = sum((naive_read_awq(w) for w in packed[r].tolist()), [])
        assert row == codes[r].tolist()


def test_hfq_codes_unpack_per_group_streams():
    torch.manual_seed(4)
    codes = torch.randint(0, 8, (4, 64), dtype=torch.uint8)
    weight = pack_bits(codes.reshape(4, 2, 32), 3)  # hfq's layout: one bitstream per group of 32
    assert torch.equal(hfq_int_codes(weight, 3, 64), codes)


def test_bad_shapes_and_bits_are_refused():
    with pytest.raises(ValueError, match="bits=5"):
        pack_gptq_qweight(torch.zeros(4, 64, dtype=torch.uint8), 5)
    with pytest.raises(ValueError, match="whole 32-bit words"):
        pack_gptq_qweight(torch.zeros(4, 20, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_awq(torch.zeros(4, 12, dtype=torch.uint8))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_packing_equals_gptqmodel(bits):
    pytest.importorskip("gptqmodel", reason="gptqmodel is the GPTQ oracle; install hfq[gptq-oracle]")
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.quantization import QuantizeConfig
    from gptqmodel.utils.model import convert_gptq_v2_to_v1_format_module

    torch.manual_seed(20 + bits)
    out_f, in_f, gs = 64, 128, 32
    n_groups = in_f // gs
    codes = torch.randint(0, 2**bits, (out_f, in_f))
    zeros = torch.randint(0, 2**bits, (out_f, n_groups))
    zeros[0, :2] = 0  # zero point 0: v1's z - 1 underflows; gptqmodel's own encoding is the reference
    scales = (torch.rand(out_f, n_groups) * 0.1 + 0.01).half().float()
    g_idx = torch.arange(in_f) // gs
    lin = torch.nn.Linear(in_f, out_f, bias=False)
    lin.weight.data = scales[:, g_idx] * (codes - zeros[:, g_idx])  # gptqmodel re-rounds these to the codes
    ref = TorchLinear(bits=bits, group_size=gs, sym=False, desc_act=False, in_features=in_f, out_features=out_f,
                      bias=False)
    ref.pack(lin, scales, zeros, g_idx.int())
    assert torch.equal(pack_gptq_qweight(codes.to(torch.uint8), bits), ref.qweight)
    convert_gptq_v2_to_v1_format_module(ref, QuantizeConfig(bits=bits, group_size=gs, sym=False))
    assert torch.equal(pack_gptq_qzeros(zeros.T.contiguous(), bits), ref.qzeros)


def test_awq_packing_equals_gptqmodel():
    pytest.importorskip("gptqmodel", reason="gptqmodel is the AWQ oracle; install hfq[gptq-oracle]")
    from gptqmodel.quantization.awq.utils.packing_utils import pack_awq as gm_pack_awq

    torch.manual_seed(5)
    codes, zeros = torch.randint(0, 16, (128, 64)), torch.randint(0, 16, (4, 64))
    qweight, qzeros = gm_pack_awq(codes, zeros, 4)
    assert torch.equal(pack_awq(codes), qweight) and torch.equal(pack_awq(zeros), qzeros)
