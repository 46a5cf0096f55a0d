"""GGML encoders against ggml itself: gguf-py's quantizers for the legacy types and llama.cpp's
llama_model_quantize (llama-cpp-python) for the k-quants, byte for byte."""

import gguf
import numpy as np
import pytest
import torch
from ggml_oracle import llama_quantize, llama_tensors, run_llama_quantize_bin, write_f32_gguf, write_imatrix

from hfq.algorithms.ggml_quant import quantize_rows, quantize_rows_reference
from hfq.algorithms.ggml_search import nearest_int, roundf
from hfq.formats.ggml_types import TYPES

LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
# "dispatch" runs torch.ops.hfq.quantize_ggml (the native CPU kernel once built); "reference" the pure-torch body.
IMPLS = {"dispatch": quantize_rows, "reference": lambda w, t, imp=None: quantize_rows_reference(w, t, imp)}
KQUANTS = {"Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q4_K_S": "Q4_K", "Q5_K_S": "Q5_K", "Q6_K": "Q6_K"}


def _rows(seed=0, rows=48, cols=512):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x *= rng.choice([1e-6, 1e-3, 1.0, 100.0, 1e3], size=(rows, 1)).astype(np.float32)   # tiny to huge
    x[0, :64] = 0                                  # all-zero blocks
    x[1] = np.abs(x[1]) + 1                        # all positive (min > 0)
    x[2, :256] = -np.abs(x[2, :256])               # all negative
    x[3, 7] = x[3, 9] = -3 * np.abs(x[3]).max()   # tied signed outliers: the first wins
    x[4, 100:140] = 0.5                            # constant runs
    x[5] = rng.standard_t(2, size=cols) * 0.01     # heavy tails
    return x


def _bad_blocks(ours: np.ndarray, ref: np.ndarray, type_size: int) -> int:
    return int((ours.reshape(-1, type_size) != ref.reshape(-1, type_size)).any(1).sum())


def test_nearest_int_and_roundf_follow_c():
    v = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999997, -2.5000002, 4194303.0], dtype=torch.float32)
    assert nearest_int(v).tolist() == [0, 2, 2, 0, -2, 0, -3, 4194303]           # half to even
    assert roundf(v).tolist() == [1.0, 2.0, 3.0, -1.0, -2.0, 0.0, -3.0, 4194303.0]  # half away from zero


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("name", LEGACY)
@pytest.mark.parametrize("seed", [0, 1])
def test_legacy_types_equal_gguf_quantize(name, seed, impl):
    x = _rows(seed)
    ref = gguf.quants.quantize(x, getattr(gguf.GGMLQuantizationType, name))
    ours = IMPLS[impl](torch.from_numpy(x), name).numpy()
    assert _bad_blocks(ours, ref, TYPES[name].type_size) == 0


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    """A llama GGUF whose tensors carry the awkward rows of _rows() next to plain Gaussian ones."""
    d = tmp_path_factory.mktemp("ggml")
    rng = np.random.default_rng(11)
    t = llama_tensors(rng, n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=1, n_vocab=512,
                      scale=lambda i, role: 0.02 if role == "attn_q" else 1.0)
    t["blk.0.ffn_up.weight"][:48] = _rows(3, cols=256)
    t["blk.1.ffn_down.weight"][:48] = _rows(4, cols=512)
    return write_f32_gguf(d / "f32.gguf", t, 2, 256, 512, 4, 1, 512), t, d


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("file_type", list(KQUANTS))
def test_kquants_equal_llama_cpp(f32_model, file_type, impl):
    src, tensors, d = f32_model
    out = llama_quantize(src, d / f"{file_type}.gguf", file_type, pure=True)
    report = {}
    for name, (tname, data) in out.items():
        if tname == "F32":
            continue
        assert tname == KQUANTS[file_type]
        ours = IMPLS[impl](torch.from_numpy(tensors[name]), tname).numpy()
        bad = _bad_blocks(ours, data, TYPES[tname].type_size)
        if bad:
            report[name] = f"{bad} of {ours.size // TYPES[tname].type_size} blocks differ"
    assert not report, report


@pytest.mark.parametrize("name", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_importance_lowers_the_weighted_error(name):
    """With importance, ggml's weighted search trades error on unimportant columns for important ones."""
    torch.manual_seed(0)
    w = torch.randn(64, 512)
    imp = torch.rand(512) ** 4 * 100
    def werr(q):
        deq = gguf.quants.dequantize(q.numpy(), getattr(gguf.GGMLQuantizationType, name))
        return float(((torch.from_numpy(deq) - w) ** 2 * imp).sum())
    assert werr(quantize_rows(w, name, imp)) < 0.97 * werr(quantize_rows(w, name))


def test_error_ordering_by_bits():
    """More bits, less error (SQNR through gguf-py's decoder): Q2_K < Q3_K < Q4_K < Q5_K < Q6_K < Q8_0."""
    torch.manual_seed(1)
    w = torch.randn(64, 512)
    sq = []
    for name in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]:
        deq = gguf.quants.dequantize(quantize_rows(w, name).numpy(), getattr(gguf.GGMLQuantizationType, name))
        sq.append(10 * np.log10((w ** 2).sum().item() / ((torch.from_numpy(deq) - w) ** 2).sum().item()))
    assert all(b - a > 4 for a, b in zip(sq, sq[1:])), sq
    assert 8 < sq[0] < 14 and sq[-1] > 38, sq


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="row length 640 is not a multiple of the Q4_K block size 256"):
        quantize_rows(torch.zeros(2, 640), "Q4_K")
    with pytest.raises(ValueError, match="importance has 3 entries; the weight has 256 columns"):
        quantize_rows(torch.zeros(2, 256), "Q4_K", torch.ones(3))
    with pytest.raises(ValueError, match="overflow.*float16 scales of Q4_1"):
        quantize_rows(torch.full((1, 32), -1e6), "Q4_1")
    with pytest.raises(ValueError, match="non-finite"):
        quantize_rows(torch.tensor([[float("nan")] * 256]), "Q6_K")
    with pytest.raises(ValueError, match="2-D weight"):
        quantize_rows(torch.zeros(256), "Q4_K")


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("file_type", list(KQUANTS) + ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_importance_weighted_bytes_equal_llama_quantize_imatrix(f32_model, file_type, impl, llama_quantize_bin):
    """llama-quantize --imatrix (built from the pinned sdist by .ci/llama_tools.sh) given the same vectors."""
    src, tensors, d = f32_model
    rng = np.random.default_rng(2)
    vecs = {k: (rng.random(v.shape[1]) ** 3 * 10).astype(np.float32)
            for k, v in tensors.items() if k.startswith("blk.") and v.ndim == 2}
    imat = write_imatrix(d / "imatrix.gguf", vecs)
    out = run_llama_quantize_bin(llama_quantize_bin, src, d / f"imat-{file_type}.gguf", file_type, imat)
    report = {}
    for name, v in vecs.items():
        tname, data = out[name]
        ours = IMPLS[impl](torch.from_numpy(tensors[name]), tname, torch.from_numpy(v)).numpy()
        bad = _bad_blocks(ours, data, TYPES[tname].type_size)
        if bad:
            report[name] = bad
    assert not report, report
