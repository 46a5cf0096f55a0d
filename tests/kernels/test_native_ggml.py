"""The native CPU encoder (extensions/cpu) against the pure-torch reference, byte for byte, and its switches.
(Both are checked against llama.cpp itself in tests/algorithms/test_ggml_quant.py.)"""

import os
import subprocess
import sys

import pytest
import torch

from hfq.algorithms.ggml_quant import quantize_rows, quantize_rows_reference
from hfq.formats.ggml_types import QUANT_TYPES
from hfq.kernels import build


@pytest.fixture(scope="module")
def native():
    if build.disabled():
        pytest.skip("HFQ_NO_EXTENSIONS is set")
    mod = build.load("cpu_ggml")
    assert mod is not None, f"the CPU extension failed to build: {build.status()}"
    return mod


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
    got = native.quantize_ggml(w, name, imp if name != "Q8_0" else None)
    assert torch.equal(got, ref), f"{(got != ref).reshape(40, -1).any(1).sum().item()} rows differ"
    assert torch.equal(quantize_rows(w, name, imp), ref)   # the dispatcher picks the native kernel


def test_native_kernel_is_registered_for_cpu(native):
    assert torch._C._dispatch_has_kernel_for_dispatch_key("hfq::quantize_ggml", "CPU")
    assert build.status()["cpu_ggml"] == "loaded"


def test_kill_switch_and_doctor():
    code = ("import torch, hfq; from hfq.algorithms.ggml_quant import quantize_rows; from hfq.kernels import build; "
            "quantize_rows(torch.ones(2, 256), 'Q4_K'); "
            "print(build.status()['cpu_ggml'], torch._C._dispatch_has_kernel_for_dispatch_key("
            "'hfq::quantize_ggml', 'CPU'))")
    env = dict(os.environ, HFQ_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["disabled", "(HFQ_NO_EXTENSIONS)", "False"]
    doc = subprocess.run([sys.executable, "-m", "hfq.cli", "doctor"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "hfq::quantize_ggml" in doc and "disabled" in doc


def test_missing_compiler_falls_back_with_a_reason(tmp_path):
    code = ("import torch, hfq, logging; logging.basicConfig(); from hfq.algorithms.ggml_quant import quantize_rows;"
            "from hfq.kernels import build; q = quantize_rows(torch.ones(2, 256), 'Q4_K');"
            "print('STATUS', build.status()['cpu_ggml'])")
    env = dict(os.environ, CXX="/nonexistent/c++", HFQ_CACHE=str(tmp_path), PATH="/usr/bin/nonexistent",
               HFQ_NO_EXTENSIONS="")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "native kernel cpu_ggml unavailable, using the pure-torch reference" in r.stderr
    assert "STATUS" in r.stdout and "loaded" not in r.stdout
