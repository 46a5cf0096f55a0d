"""Shared by the GGUF benchmarks: the embedded Gemma as an F32 GGUF for llama.cpp, and offline text."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def f32_gguf(dst: Path) -> Path:
    """The shipped Gemma-3-270M Q4_K_M file with every tensor dequantized to F32 (all metadata copied)."""
    import gguf

    from hfq.atomic import atomic_file
    from hfq.embedded import gguf_path

    dst = Path(dst)
    if dst.exists():
        return dst
    with atomic_file(dst) as tmp:
        _write_f32(gguf, gguf.GGUFReader(str(gguf_path())), tmp)
    return dst


def _write_f32(gguf, src, dst: Path) -> None:
    w = gguf.GGUFWriter(str(dst), arch=None)
    for f in src.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.file_type", "general.quantization_version"):
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_key_value(f.name, f.contents(), vt, sub_type=f.types[-1])
        else:
            w.add_key_value(f.name, f.contents(), vt)
    w.add_file_type(0)
    for t in src.tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, arr.reshape([int(s) for s in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def texts() -> tuple[str, str]:
    """(calibration, held-out): disjoint halves of CPython's pydoc topics, which ship with Python."""
    from hfq.evaluation import pydoc_halves

    return pydoc_halves()
