"""Shared by the GGUF benchmarks: the embedded Gemma as an F32 GGUF for llama.cpp, and offline text."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np


def f32_gguf(dst: Path) -> Path:
    """The shipped Gemma-3-270M Q4_K_M file with every tensor dequantized to F32 (all metadata copied)."""
    import gguf

    from hfq.models import gguf_path

    if dst.exists():
        return dst
    src = gguf.GGUFReader(str(gguf_path()))
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
    return dst


def llama_quantize(src: Path, dst: Path, file_type: str, nthread: int = 2) -> None:
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + file_type)
    p.nthread = nthread
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p)) != 0:
        raise RuntimeError(f"llama_model_quantize {file_type} failed")


def texts() -> tuple[str, str]:
    """(calibration, held-out): disjoint halves of CPython's pydoc topics, which ship with Python."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    half = len(names) // 2
    return ("\n\n".join(topics[n] for n in names[:half]), "\n\n".join(topics[n] for n in names[half:]))
