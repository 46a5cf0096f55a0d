"""One quick pass of the layer, op and load tests with HFQ_NO_EXTENSIONS=1, so the pure-torch reference (the
fallback on machines without a compiler) stays tested in every default run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_layer_op_and_load_tests_pass_on_the_reference_path():
    if os.environ.get("HFQ_NO_EXTENSIONS", "").strip() not in ("", "0"):
        pytest.skip("already running on the reference path")
    env = dict(os.environ, HFQ_NO_EXTENSIONS="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                        "tests/nn", "tests/kernels/test_ops.py", "tests/kernels/test_autograd.py",
                        "tests/test_quantizer.py"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    tail = "\n".join(r.stdout.splitlines()[-15:])
    assert r.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail.split("passed")[0], tail
