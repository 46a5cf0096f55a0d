import bitsandbytes.functional as bF
import torch

from hfq.formats.codebooks import codebook


def test_dynamic8_map_equals_bitsandbytes():
    assert torch.equal(codebook("dynamic8"), bF.create_dynamic_map(signed=True))


def test_nf4_and_fp4_tables_equal_bitsandbytes_decoding():
    # Decode every 4-bit code with bitsandbytes at absmax 1: byte (c << 4 | c) holds code c twice.
    for name in ("nf4", "fp4"):
        packed = torch.tensor([(c << 4) | c for c in range(16)], dtype=torch.uint8).reshape(-1, 1)
        state = bF.QuantState(absmax=torch.ones(1), shape=torch.Size([32]), code=None, blocksize=64,
                              quant_type=name, dtype=torch.float32)
        ref = bF.dequantize_4bit(packed, state).reshape(-1)[0::2]
        assert torch.equal(codebook(name), ref), name


def test_nf4_properties():
    t = codebook("nf4")
    assert t[0] == -1 and t[-1] == 1 and t[7] == 0 and bool((t[1:] > t[:-1]).all())
