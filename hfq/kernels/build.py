"""Lazy, cached builds of the native kernels in extensions/, registered on the hfq ops they implement.

The first use compiles with torch.utils.cpp_extension (ninja) into the user cache, keyed by torch version,
CUDA version, machine, flags and a hash of the sources, so a rebuild happens only when one of those changes.
HFQ_NO_EXTENSIONS=1 turns native kernels off; a failed build logs why once and the pure-torch reference keeps
serving every op. `hfq doctor` shows what is registered.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import threading
from pathlib import Path

import torch

from .._resources import resource_dir

logger = logging.getLogger(__name__)

CPU_FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fopenmp"]   # OpenMP: at::parallel_for
# extension name -> (sources under extensions/, {op name: function in the module}, device)
EXTENSIONS = {"cpu_ggml": (["cpu/ggml_quant.cpp", "cpu/ggml_blocks.h"], {"quantize_ggml": "quantize_ggml"}, "cpu")}

_lock = threading.Lock()
_state: dict[str, object] = {}   # name -> loaded module, or the error string of a failed build


def disabled() -> bool:
    return os.environ.get("HFQ_NO_EXTENSIONS", "").strip() not in ("", "0")


def cache_root() -> Path:
    base = os.environ.get("HFQ_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hfq")
    return Path(base) / "extensions"


def build_key(name: str) -> str:
    srcs, _, _ = EXTENSIONS[name]
    h = hashlib.sha256()
    for part in (torch.__version__, str(torch.version.cuda), platform.machine(), " ".join(CPU_FLAGS)):
        h.update(part.encode())
    root = resource_dir("extensions")
    for s in srcs:
        h.update((root / s).read_bytes())
    return h.hexdigest()[:16]


def load(name: str):
    """Build (once, cached) and register extension `name`. Returns the module, or None when unavailable."""
    if disabled():
        return None
    with _lock:
        if name in _state:
            st = _state[name]
            return None if isinstance(st, str) else st
        try:
            mod = _build(name)
        except Exception as e:   # compiler missing, headers missing, compile error: fall back, say why once
            _state[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            logger.warning("hfq: native kernel %s unavailable, using the pure-torch reference (%s). "
                           "Run `hfq doctor`; set HFQ_NO_EXTENSIONS=1 to skip the build.", name, _state[name])
            return None
        _state[name] = mod
        return mod


def status() -> dict[str, str]:
    """name -> 'loaded', 'disabled', 'not built yet' or the build error."""
    out = {}
    for name in EXTENSIONS:
        st = _state.get(name)
        out[name] = ("disabled (HFQ_NO_EXTENSIONS)" if disabled() else "loaded" if st is not None and
                     not isinstance(st, str) else st if isinstance(st, str) else "not built yet")
    return out


def _build(name: str):
    from torch.utils.cpp_extension import load as cpp_load

    srcs, ops_map, device = EXTENSIONS[name]
    key = build_key(name)
    build_dir = cache_root() / f"{name}-{key}"
    src_dir = build_dir / "src"
    root = resource_dir("extensions")
    if not src_dir.is_dir():
        # Build from a copy inside the cache: ninja tracks source paths, so compiling the checkout's files
        # directly would rebuild for every checkout or install location with the same sources.
        tmp = build_dir / f".src-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        for s in srcs:
            shutil.copyfile(root / s, tmp / Path(s).name)
        try:
            os.replace(tmp, src_dir)
        except OSError:   # another process finished first; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    cpp = [str(src_dir / Path(s).name) for s in srcs if s.endswith((".cpp", ".cu"))]
    logger.info("hfq: loading native kernel %s (cache %s; the first build takes about a minute)", name, build_dir)
    mod = cpp_load(name=f"hfq_{name}_{key}", sources=cpp, extra_cflags=CPU_FLAGS, extra_ldflags=["-fopenmp"],
                   extra_include_paths=[str(src_dir)], build_directory=str(build_dir), verbose=False)
    for op_name, fn in ops_map.items():
        torch.library.register_kernel(f"hfq::{op_name}", device)(getattr(mod, fn))
    return mod
