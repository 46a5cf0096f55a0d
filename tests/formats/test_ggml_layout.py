"""GGML decoders against gguf-py's numpy dequantizers (an independent implementation), bit for bit."""

import gguf
import numpy as np
import pytest
import torch

from hfq.formats.ggml_dequant import dequantize_blocks
from hfq.formats.ggml_layout import PACK, UNPACK, as_blocks
from hfq.formats.ggml_types import QUANT_TYPES, TYPES, row_bytes

# byte offsets of the fp16 scale fields in each block (ggml-common.h)
HALVES = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q2_K": [80, 82],
          "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def _oracle(raw: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, name))


def _assert_same_bits(ours: np.ndarray, ref: np.ndarray):
    both_nan = np.isnan(ours) & np.isnan(ref)
    bad = (ours.view(np.uint32) != ref.view(np.uint32)) & ~both_nan
    assert not bad.any(), f"{bad.sum()} of {bad.size} values differ"


def _set_halves(raw, name, values):
    for off in HALVES[name]:
        raw[:, off:off + 2] = np.asarray(values, np.float16).reshape(-1, 1).view(np.uint8).reshape(-1, 2)


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_decode_random_bytes_matches_gguf(name):
    t = TYPES[name]
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, size=(96, t.type_size), dtype=np.uint8)   # fuzz, including NaN/Inf halves
    ours = dequantize_blocks(torch.from_numpy(raw), name).numpy()
    _assert_same_bits(ours.reshape(-1), _oracle(raw, name).reshape(-1))


@pytest.mark.parametrize("name", QUANT_TYPES)
@pytest.mark.parametrize("scale", [0.0, 6.0e-8, 1e-4, 1.0, 3.0e4, 65504.0])   # zero, subnormal, ..., fp16 max
def test_decode_extreme_scales_matches_gguf(name, scale):
    t = TYPES[name]
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, size=(32, t.type_size), dtype=np.uint8)
    _set_halves(raw, name, np.where(rng.random(32) < 0.5, scale, -scale))
    ours = dequantize_blocks(torch.from_numpy(raw), name).numpy()
    ref = _oracle(raw, name)
    assert np.isfinite(ref).all() or scale > 1e4
    _assert_same_bits(ours.reshape(-1), ref.reshape(-1))


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_all_zero_blocks_decode_to_zero(name):
    raw = np.zeros((4, TYPES[name].type_size), np.uint8)
    ours = dequantize_blocks(torch.from_numpy(raw), name).numpy()
    assert not ours.any()
    _assert_same_bits(ours.reshape(-1), _oracle(raw, name).reshape(-1))


@pytest.mark.parametrize("name", QUANT_TYPES)
def test_unpack_then_pack_restores_every_byte(name):
    """The layout is a bijection on the bits it defines (Q2_K..Q6_K use every bit of their blocks)."""
    raw = torch.from_numpy(np.random.default_rng(5).integers(0, 256, size=(16, TYPES[name].type_size), dtype=np.uint8))
    assert torch.equal(PACK[name](UNPACK[name](raw)), raw)


def test_truncated_data_is_refused_with_the_type_named():
    with pytest.raises(ValueError, match="Q4_K blocks.*144 bytes"):
        as_blocks(torch.zeros(143, dtype=torch.uint8), "Q4_K")
    with pytest.raises(ValueError, match="not a whole number of Q6_K blocks"):
        row_bytes("Q6_K", 640)
    with pytest.raises(ValueError, match="not supported by hfq; allowed"):
        row_bytes("IQ2_XS", 256)
