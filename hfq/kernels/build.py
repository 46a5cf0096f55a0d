"""Lazy, cached builds of the native kernels in extensions/, which register themselves on the hfq ops.

The first use compiles with torch.utils.cpp_extension (ninja) into the user cache, keyed by torch version, CUDA
version, machine, compiler, flags and a hash of the sources, so a rebuild happens only when one of those changes.
Every instruction-set variant is compiled with explicit target flags and chosen at run time, so one build serves
any CPU of the machine type (never -march=native). Concurrent builds wait on an OS file lock, which a killed build
cannot leave held. HFQ_NO_EXTENSIONS=1 turns native kernels off; a failed build logs why once (with the path of
its log) and the pure-torch reference keeps serving every op. `hfq doctor` shows what is registered.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from .._resources import resource_dir
from ..atomic import replace, temp_name, write_text

logger = logging.getLogger(__name__)

CPU_FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fopenmp"]   # OpenMP: at::parallel_for
MAX_JOBS = "2"   # ninja's default (all cores) can exceed a container's process limit
# extension name -> (sources under extensions/, ops it registers, device)
EXTENSIONS = {
    "cpu": (["cpu/ops_cpu.cpp", "cpu/kern_scalar.cpp", "cpu/kern_avx2.cpp", "cpu/kern_avx2_kq.cpp",
             "cpu/kern_avx2_b4.cpp", "cpu/kern_avx512.cpp", "cpu/kern_avx512_dequant.cpp",
             "cpu/kern_avx512bf16_dequant.cpp", "cpu/kern_avx512_k8.cpp", "cpu/kern_avx512_q8.cpp",
             "cpu/kern_avx512_b4.cpp", "cpu/ggml_quant.cpp", "cpu/qlinear.h", "cpu/decode.h", "cpu/avx512_rows.h",
             "cpu/avx512_dequant.h", "cpu/avx512_parts.h",
             "cpu/avx2_parts.h", "cpu/avx2_common.h", "cpu/ggml_blocks.h"],
            ("dequantize_int", "dequantize_4bit", "dequantize_8bit_blockwise", "linear_int", "linear_4bit",
             "dequantize_ggml", "linear_ggml", "quantize_ggml", "embedding_int", "embedding_ggml"), "cpu"),
}

_lock = threading.Lock()
_state: dict[str, str] = {}   # name -> "loaded", or the error string of a failed build


def disabled() -> bool:
    return os.environ.get("HFQ_NO_EXTENSIONS", "").strip() not in ("", "0")


def cache_root() -> Path:
    base = os.environ.get("HFQ_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hfq")
    return Path(base) / "extensions"


def _compiler_version() -> str:
    cxx = os.environ.get("CXX", "c++")
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return "none"


def build_key(name: str) -> str:
    srcs, _, _ = EXTENSIONS[name]
    h = hashlib.sha256()
    for part in (torch.__version__, str(torch.version.cuda), platform.machine(), _compiler_version(),
                 " ".join(CPU_FLAGS)):
        h.update(part.encode())
        h.update(b"\0")
    root = resource_dir("extensions")
    for s in srcs:
        h.update(s.encode())
        h.update((root / s).read_bytes())
    return h.hexdigest()[:16]


def load(name: str) -> bool:
    """Build (once, cached) and load extension `name`, which registers its kernels. False when unavailable."""
    if disabled():
        return False
    with _lock:
        if name in _state:
            return _state[name] == "loaded"
        try:
            _build(name)
        except Exception as e:   # compiler missing, headers missing, compile error: fall back, say why once
            text = str(e).strip()
            _state[name] = f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"
            log = _write_log(name, text)
            logger.warning("hfq: native kernel %s unavailable, using the pure-torch reference (%s). Build log: %s. "
                           "Run `hfq doctor`; set HFQ_NO_EXTENSIONS=1 to skip the build.", name, _state[name], log)
            return False
        _state[name] = "loaded"
        if name == "cpu":
            _check_isa_cap()
        return True


CPU_LEVELS = ("avx512bf16", "avx512", "avx2", "scalar")   # best first (extensions/cpu/ops_cpu.cpp)


def _check_isa_cap() -> None:
    cap = os.environ.get("HFQ_CPU_ISA")
    if cap is not None and cap not in CPU_LEVELS:
        logger.warning("hfq: HFQ_CPU_ISA=%r is not an instruction set level; allowed: %s. The CPU kernels use the "
                       "best this CPU has (%s); set one of those names, or unset HFQ_CPU_ISA.", cap,
                       ", ".join(CPU_LEVELS), torch.ops.hfq_cpu.isa())


def ensure(device: str | torch.device) -> None:
    """Load the native kernels for `device` (no-op where there are none)."""
    dev = torch.device(device).type
    for name, (_, _, d) in EXTENSIONS.items():
        if d == dev and name not in _state:
            load(name)


def status() -> dict[str, str]:
    """name -> 'loaded', 'disabled', 'not built yet' or the build error."""
    if disabled():
        return {name: "disabled (HFQ_NO_EXTENSIONS)" for name in EXTENSIONS}
    return {name: _state.get(name, "not built yet") for name in EXTENSIONS}


def cpu_isa() -> str | None:
    """The instruction set the CPU kernels use ('avx512bf16', 'avx512', 'avx2' or 'scalar'), or None when they are
    not loaded."""
    return torch.ops.hfq_cpu.isa() if _state.get("cpu") == "loaded" else None


def cpu_activations() -> str | None:
    """How the CPU GEMV quantizes x ('int16', or 'int8' for GGML types under HFQ_CPU_ACTIVATIONS=int8), or None."""
    return torch.ops.hfq_cpu.activations() if _state.get("cpu") == "loaded" else None


def _write_log(name: str, text: str) -> Path | None:
    try:
        d = cache_root()
        d.mkdir(parents=True, exist_ok=True)
        return write_text(d / f"{name}-build.log", text + "\n")
    except OSError:
        return None


def _build(name: str) -> None:
    from filelock import FileLock
    from torch.utils.cpp_extension import load as cpp_load

    srcs, _, _ = EXTENSIONS[name]
    key = build_key(name)
    build_dir = cache_root() / f"{name}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    # filelock's lock is an OS lock (flock): the kernel releases it when a build is killed, unlike torch's own
    # lock file, which a killed build leaves behind for every later load to wait on.
    with FileLock(str(build_dir) + ".lock", timeout=1800):
        src_dir = build_dir / "src"
        root = resource_dir("extensions")
        if not src_dir.is_dir():
            # Build from a copy inside the cache: ninja tracks source paths, so compiling the checkout's files
            # directly would rebuild for every checkout or install location with the same sources.
            tmp = temp_name(src_dir)
            tmp.mkdir(parents=True)
            try:
                for s in srcs:
                    shutil.copyfile(root / s, tmp / Path(s).name)
                replace(tmp, src_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        cpp = [str(src_dir / Path(s).name) for s in srcs if s.endswith((".cpp", ".cu"))]
        logger.info("hfq: loading native kernel %s (cache %s; the first build takes a minute or two)", name,
                    build_dir)
        # torch's own lock file, left by a killed build, would make cpp_load wait forever; the OS lock above
        # says no hfq build is running here, so it is stale.
        (build_dir / "lock").unlink(missing_ok=True)
        jobs = os.environ.get("MAX_JOBS")
        os.environ["MAX_JOBS"] = jobs or MAX_JOBS
        try:
            cpp_load(name=f"hfq_{name}_{key}", sources=cpp, extra_cflags=CPU_FLAGS, extra_ldflags=["-fopenmp"],
                     extra_include_paths=[str(src_dir)], build_directory=str(build_dir), is_python_module=False,
                     verbose=False)
        finally:
            if jobs is None:
                os.environ.pop("MAX_JOBS", None)
