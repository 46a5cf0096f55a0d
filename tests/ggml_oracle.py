"""Test-side helpers around the independent oracles: gguf-py (writer, dequantizer), llama.cpp's quantizer through
llama-cpp-python, and llama.cpp's own tools (llama-quantize, llama-imatrix, llama-perplexity, convert_hf_to_gguf.py)
built from the llama-cpp-python sdist by .ci/llama_tools.sh."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = 'eval "$(bash .ci/llama_tools.sh)"'
# tool -> (environment variable, path under the cache folder .ci/llama_tools.sh fills)
TOOLS = {"llama-quantize": ("HFQ_LLAMA_QUANTIZE", "bin/llama-quantize"),
         "llama-imatrix": ("HFQ_LLAMA_IMATRIX", "bin/llama-imatrix"),
         "llama-perplexity": ("HFQ_LLAMA_PERPLEXITY", "bin/llama-perplexity"),
         "convert_hf_to_gguf.py": ("HFQ_LLAMA_CPP_SRC", "src")}


def _cache() -> Path:
    version = re.search(r"llama-cpp-python==([\d.]+)", (ROOT / "pyproject.toml").read_text()).group(1)
    base = os.environ.get("HFQ_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hfq"
    return Path(base) / f"llama.cpp-{version}"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def llama_tool(name: str) -> str:
    """The path of one of llama.cpp's tools (for convert_hf_to_gguf.py: the llama.cpp source tree holding it), from
    its HFQ_LLAMA_* variable or the hfq cache. Missing, it fails the test in CI and skips it elsewhere, naming the
    command that builds it."""
    var, rel = TOOLS[name]
    path = Path(os.environ.get(var) or _cache() / rel)
    if (path / "convert_hf_to_gguf.py" if name == "convert_hf_to_gguf.py" else path).is_file():
        return str(path)
    msg = f"{name} is missing ({var}={os.environ.get(var)!r}, not in {_cache()}); build it with: {BUILD}"
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


def write_f32_gguf(path, tensors: dict, n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int,
                   n_vocab: int) -> Path:
    """A minimal llama GGUF holding float32 tensors, enough for llama_model_quantize to load."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}".encode() for i in range(n_vocab)])
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([1] * n_vocab)
    for name, arr in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def llama_tensors(rng, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, tied=False, scale=None):
    hd = n_embd // n_head
    shapes = {"attn_q": (n_embd, n_embd), "attn_k": (n_head_kv * hd, n_embd), "attn_v": (n_head_kv * hd, n_embd),
              "attn_output": (n_embd, n_embd), "ffn_gate": (n_ff, n_embd), "ffn_up": (n_ff, n_embd),
              "ffn_down": (n_embd, n_ff)}
    t = {"token_embd.weight": rng.standard_normal((n_vocab, n_embd)), "output_norm.weight": np.ones(n_embd)}
    if not tied:
        t["output.weight"] = rng.standard_normal((n_vocab, n_embd))
    for i in range(n_layer):
        t[f"blk.{i}.attn_norm.weight"] = np.ones(n_embd)
        t[f"blk.{i}.ffn_norm.weight"] = np.ones(n_embd)
        for role, shp in shapes.items():
            s = scale(i, role) if scale else 1.0
            t[f"blk.{i}.{role}.weight"] = rng.standard_normal(shp) * s
    return {k: v.astype(np.float32) for k, v in t.items()}


def run_llama_model_quantize(src, dst, file_type: str, pure: bool = False, nthread: int = 2) -> None:
    """llama.cpp's llama_model_quantize (llama-cpp-python), src -> dst."""
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + file_type)
    p.pure = pure
    p.nthread = nthread
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize {file_type} failed with {rc}")


def llama_quantize(src, dst, file_type: str, pure: bool = False) -> dict:
    """run_llama_model_quantize, then {tensor name: (type name, bytes)} of the result."""
    run_llama_model_quantize(src, dst, file_type, pure)
    return read_gguf(dst)


def llama_tokenize(model_path, text: str):
    """llama.cpp's own tokenization (vocab only, BOS added as llama-imatrix/llama-perplexity do): (ids, bos)."""
    import llama_cpp
    import torch

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    raw = text.encode()
    buf = (llama_cpp.llama_token * (len(raw) + 8))()
    n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, False)
    bos = llama_cpp.llama_vocab_bos(vocab)
    llama_cpp.llama_model_free(model)
    return torch.tensor(list(buf[:n])), bos


def ggml_quantize(x, type_name: str, importance=None) -> np.ndarray:
    """llama.cpp's own encoder (ggml_quantize_chunk in llama-cpp-python's libggml-base) on float32 rows x [n, k],
    importance-weighted (its imatrix argument) when importance [k] is given: uint8 [n, bytes per row]."""
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    qt = gguf.GGMLQuantizationType[type_name]
    block, size = gguf.GGML_QUANT_SIZES[qt]
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    dst = np.zeros((a.shape[0], a.shape[1] // block * size), np.uint8)
    imp = None if importance is None else np.ascontiguousarray(np.asarray(importance, dtype=np.float32))
    lib.ggml_quantize_init(int(qt))
    n = lib.ggml_quantize_chunk(int(qt), a.ctypes.data, dst.ctypes.data, 0, a.shape[0], a.shape[1],
                                None if imp is None else imp.ctypes.data)
    assert n == dst.nbytes, (n, dst.nbytes)
    return dst


def read_gguf(path) -> dict:
    r = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, np.array(t.data)) for t in r.tensors}


def write_imatrix(path, vectors: dict) -> Path:
    """An imatrix GGUF that llama-quantize reads back as exactly these vectors (counts of 1)."""
    w = gguf.GGUFWriter(str(path), "imatrix")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["hfq-test"])
    w.add_uint32("imatrix.chunk_count", 1)
    w.add_uint32("imatrix.chunk_size", 512)
    for k, v in vectors.items():
        w.add_tensor(k + ".in_sum2", np.asarray(v, np.float32).reshape(1, -1))
        w.add_tensor(k + ".counts", np.ones((1, 1), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def run_llama_quantize_bin(binary, src, dst, file_type, imatrix=None, pure=True) -> dict:
    cmd = [binary] + (["--pure"] if pure else []) + (["--imatrix", str(imatrix)] if imatrix else [])
    subprocess.run(cmd + [str(src), str(dst), file_type, "2"], check=True, capture_output=True)
    return read_gguf(dst)
