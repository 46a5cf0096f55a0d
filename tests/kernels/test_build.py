"""Lazy native builds: the kill switch, a missing compiler, the cross-process lock, stale locks, job cap, doctor."""

import os
import subprocess
import sys
import time

import pytest

from hfq.kernels import build

LOAD = ("import logging, torch, hfq; logging.basicConfig(); from hfq.kernels import build; "
        "ok = build.load('cpu'); print('STATUS', build.status()['cpu'], ok, "
        "torch._C._dispatch_has_kernel_for_dispatch_key('hfq::linear_ggml', 'CPU'))")


def _run(env_extra, code=LOAD, timeout=600):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


def test_kill_switch_and_doctor():
    r = _run({"HFQ_NO_EXTENSIONS": "1"})
    assert r.returncode == 0, r.stderr
    assert "STATUS disabled (HFQ_NO_EXTENSIONS) False False" in r.stdout
    doc = subprocess.run([sys.executable, "-m", "hfq.cli", "doctor"], env=dict(os.environ, HFQ_NO_EXTENSIONS="1"),
                         capture_output=True, text=True, check=True).stdout
    assert "hfq::linear_ggml" in doc and "disabled" in doc


def test_doctor_names_the_instruction_set_and_native_ops():
    if build.disabled():
        pytest.skip("HFQ_NO_EXTENSIONS is set")
    doc = subprocess.run([sys.executable, "-m", "hfq.cli", "doctor"], capture_output=True, text=True,
                         check=True).stdout
    isa = next(ln for ln in doc.splitlines() if "instruction set" in ln)
    assert any(s in isa for s in ("avx512", "avx2", "scalar")), doc
    for op in ("linear_int", "linear_4bit", "linear_ggml", "dequantize_ggml", "quantize_ggml"):
        line = next(ln for ln in doc.splitlines() if f"hfq::{op} " in ln)
        assert "native: CPU" in line, line


def test_missing_compiler_falls_back_with_a_reason_and_the_log_path(tmp_path):
    r = _run({"CXX": "/nonexistent/c++", "HFQ_CACHE": str(tmp_path), "PATH": "/usr/bin/nonexistent",
              "HFQ_NO_EXTENSIONS": ""})
    assert r.returncode == 0, r.stderr
    assert "native kernel cpu unavailable, using the pure-torch reference" in r.stderr
    log = tmp_path / "extensions" / "cpu-build.log"
    assert f"Build log: {log}" in r.stderr and log.stat().st_size > 0
    assert "STATUS" in r.stdout and "False False" in r.stdout


def test_concurrent_builds_wait_on_the_os_lock_and_stale_torch_locks_are_cleared(tmp_path):
    """A second process waits while the lock is held, then loads; a leftover torch `lock` file (a killed build)
    does not make it hang."""
    from filelock import FileLock

    if build.disabled():
        pytest.skip("HFQ_NO_EXTENSIONS is set")
    assert build.load("cpu")
    d = build.cache_root() / f"cpu-{build.build_key('cpu')}"
    (d / "lock").write_text("")   # what torch's FileBaton leaves behind when a build is killed
    with FileLock(str(d) + ".lock"):
        p = subprocess.Popen([sys.executable, "-c", LOAD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(8)
        assert p.poll() is None, "the second process did not wait for the lock"
    out, err = p.communicate(timeout=300)   # torch < 2.14 waits forever on a leftover `lock` unless hfq clears it
    assert "STATUS loaded True True" in out, err


def test_builds_cap_parallel_jobs(monkeypatch, tmp_path):
    seen = {}

    def fake_load(**kw):
        seen["jobs"] = os.environ.get("MAX_JOBS")
        seen["flags"] = kw["extra_cflags"]
        raise RuntimeError("stop here")

    import torch.utils.cpp_extension as ce

    monkeypatch.setattr(ce, "load", fake_load)
    monkeypatch.delenv("MAX_JOBS", raising=False)
    monkeypatch.setenv("HFQ_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="stop here"):
        build._build("cpu")
    assert seen["jobs"] == build.MAX_JOBS and "MAX_JOBS" not in os.environ
    assert not any("march=native" in f for f in seen["flags"])


def test_build_key_changes_with_sources_and_flags(monkeypatch):
    k = build.build_key("cpu")
    monkeypatch.setattr(build, "CPU_FLAGS", build.CPU_FLAGS + ["-DHFQ_TEST"])
    assert build.build_key("cpu") != k
