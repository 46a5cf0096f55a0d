import pytest
import torch
from helpers import naive_unpack_bitstream

from hfq.formats.bitpack import pack_bits, pack_nibbles_hi_first, unpack_bits, unpack_nibbles_hi_first


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_bits_matches_naive_bitstream(bits):
    g = torch.Generator().manual_seed(bits)
    q = torch.randint(0, 2**bits, (3, 64), generator=g, dtype=torch.uint8)
    packed = pack_bits(q, bits)
    assert packed.shape == (3, 64 * bits // 8)
    for r in range(3):
        assert naive_unpack_bitstream(packed[r].tolist(), bits, 64) == q[r].tolist()
    assert torch.equal(unpack_bits(packed, bits), q)


def test_pack_bits_4bit_is_gptq_nibble_order():
    # GPTQ packs 8 int4 values into an int32, value j at bits 4j..4j+3; viewed as little-endian bytes.
    q = torch.arange(8, dtype=torch.uint8).reshape(1, 8)
    word = sum(int(v) << (4 * j) for j, v in enumerate(q[0]))
    assert pack_bits(q, 4)[0].tolist() == list(word.to_bytes(4, "little"))


def test_nibbles_hi_first():
    q = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    assert pack_nibbles_hi_first(q).tolist() == [[0x12, 0xF0]]
    assert torch.equal(unpack_nibbles_hi_first(pack_nibbles_hi_first(q)), q)


def test_pack_errors_name_the_problem():
    with pytest.raises(ValueError, match="whole number of bytes"):
        pack_bits(torch.zeros(1, 3, dtype=torch.uint8), 3)
    with pytest.raises(TypeError, match="uint8"):
        pack_bits(torch.zeros(1, 8, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="even number"):
        pack_nibbles_hi_first(torch.zeros(1, 3, dtype=torch.uint8))
