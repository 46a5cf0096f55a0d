"""The native CPU encoder (extensions/cpu/ggml_quant.cpp) against the pure-torch reference, byte for byte.
(Both are checked against llama.cpp itself in tests/algorithms/test_ggml_quant.py.)"""

import pytest
import torch

from hfq.algorithms.ggml_quant import quantize_rows, quantize_rows_reference
from hfq.formats.ggml_types import QUANT_TYPES
from hfq.kernels import build


@pytest.fixture(scope="module")
def native():
    if build.disabled():
        pytest.skip("HFQ_NO_EXTENSIONS is set")
    assert build.load("cpu"), f"the CPU extension failed to build: {build.status()}"


@pytest.mark.parametrize("name", QUANT_TYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_native_equals_reference(native, name, weighted):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(40, 512, generator=g) * torch.logspace(-4, 2, 40).unsqueeze(1)
    w[0, :256] = 0
    w[1] = w[1].abs() + 0.1
    w[2, 3] = w[2, 5] = -20 * w[2].abs().max()
    imp = torch.rand(512, generator=g) ** 3 * 5 if weighted else None
    ref = quantize_rows_reference(w, name, None if name == "Q8_0" else imp)
    got = torch.ops.hfq.quantize_ggml(w, name, imp if name != "Q8_0" else None)   # the dispatcher: native on CPU
    assert torch._C._dispatch_has_kernel_for_dispatch_key("hfq::quantize_ggml", "CPU")
    assert torch.equal(got, ref), f"{(got != ref).reshape(40, -1).any(1).sum().item()} rows differ"
    assert torch.equal(quantize_rows(w, name, imp), ref)
