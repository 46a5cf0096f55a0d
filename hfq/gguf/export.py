"""Any hfq model (float, rtn, nf4/fp4, gguf-method, and the calibrated methods that store those layouts) to a
GGUF file that llama.cpp runs.

Tensors stream one at a time: each is encoded when gguf-py's writer reaches it, so no second copy of the model is
held. The file is written under a temporary name in the destination folder and renamed at the end.

Source policy, per 2-D weight (the file type's llama.cpp mix picks the target type T of each tensor):
- gguf-method layers: their blocks are written unchanged (rows permuted for llama's rotary layout).
- rtn layers whose grid is T's grid are re-laid exactly: symmetric int4 group 32 is Q4_0, symmetric int8 group
  32 is Q8_0 (same codes, same float16 scales).
- every other quantized layer is dequantized and requantized into T with ggml's encoder (a second rounding).
- float weights are quantized into T (with importance, if given), as llama-quantize does.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import gguf
import numpy as np
import torch

from ..algorithms.ggml_quant import quantize_rows
from ..architectures import architecture
from ..atomic import locked, recover, temp_name
from ..atomic_set import publish_set, recover_set
from ..formats.bitpack import unpack_bits
from ..formats.ggml_layout import PACK
from ..formats.ggml_types import FILE_TYPES, ggml_type
from ..nn import HfqEmbedding, HfqLinear
from . import mixes
from .check import check_gguf  # noqa: F401  (hfq.gguf.export.check_gguf is imported from here)
from .metadata import add_hparams, gguf_arch
from .names import tensor_name_map
from .split import Writer, members, refuse_existing_set, stamp_export_id
from .vocab import add_tokenizer

logger = logging.getLogger(__name__)

FLOAT_TYPES = {"F32": 0, "F16": 1}
_CLOSEST = {2: "Q2_K", 3: "Q3_K_M", 4: "Q4_K_M", 5: "Q5_K_M", 6: "Q6_K", 7: "Q8_0", 8: "Q8_0"}


class _Lazy:
    """What gguf-py's writer needs of a tensor (shape, dtype, nbytes, tofile); the data is made on write."""

    def __init__(self, shape, dtype, make):
        self.shape, self.dtype, self._make = tuple(shape), np.dtype(dtype), make
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize

    def tofile(self, f) -> None:
        with torch.no_grad():
            arr = np.ascontiguousarray(self._make())
        if arr.nbytes != self.nbytes or arr.dtype != self.dtype:
            raise RuntimeError(f"tensor data is {arr.dtype} {arr.nbytes} B, announced {self.dtype} {self.nbytes} B")
        arr.tofile(f)


def _hfq_config(model) -> dict:
    qc = getattr(model.config, "quantization_config", None)
    if qc is None:
        return {}
    d = qc.to_dict() if hasattr(qc, "to_dict") else dict(qc)
    return d if d.get("quant_method") == "hfq" else {}


def file_type_for(model, quant_type: str | None) -> str:
    """The llama.cpp file type to write: the one asked for, else the closest to how the model is stored."""
    if quant_type is not None:
        qt = quant_type.upper()
        if qt not in FILE_TYPES and qt not in FLOAT_TYPES:
            raise ValueError(f"quant_type={quant_type!r} is not a type hfq writes; allowed: "
                             f"{', '.join([*FLOAT_TYPES, *FILE_TYPES])}.")
        return qt
    cfg = _hfq_config(model)
    method = cfg.get("method")
    if method is None:
        logger.info("float model and no quant_type: writing F16 (pass quant_type='Q4_K_M' etc. to quantize)")
        return "F16"
    if method == "gguf" or cfg.get("grid") == "gguf":   # gptq/awq into GGUF blocks keep their file type
        return cfg["quant_type"]
    if method == "rtn" and cfg.get("group_size") == 32 and cfg.get("sym") and cfg.get("bits") in (4, 8):
        return "Q4_0" if cfg["bits"] == 4 else "Q8_0"
    return _CLOSEST[cfg.get("bits") or 4]


def _permute_rows(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's rotary layout for q/k rows: per head, interleave the two halves (rows or row-blocks)."""
    return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def _exact_ggml(m: HfqLinear, t: str) -> torch.Tensor | None:
    """GGML bytes for an rtn layer whose grid is exactly type t's, else None."""
    if m.layout != "int" or not m.sym or m.group_size != 32 or getattr(m, "g_idx", None) is not None:
        return None
    if (m.bits, t) not in ((4, "Q4_0"), (8, "Q8_0")):
        return None
    q = unpack_bits(m.weight.detach().reshape(-1, m.weight.shape[-1]), m.bits, 32).to(torch.int16)
    q = q - (1 << (m.bits - 1))                                    # symmetric zero 2**(b-1)
    d = m.scales.detach().reshape(-1)
    blocks = PACK[t]({"d": d, "q": q + 8 if t == "Q4_0" else q})   # Q4_0 stores q+8 in 0..15
    return blocks.reshape(m.out_features, -1)


class _Plan:
    def __init__(self, model, file_type: str, importance: dict | None):
        self.model, self.file_type, self.importance = model, file_type, importance or {}
        self.hp = model.config.to_dict()
        self.model_type = self.hp.get("model_type")
        self.arch = gguf_arch(self.model_type)
        self.gemma = architecture(self.model_type).norm_plus_one
        self.shape = mixes.model_shape(model.config) if file_type in FILE_TYPES else None
        cfg = _hfq_config(model)
        self.requant_gguf = ((cfg.get("method") == "gguf" or cfg.get("grid") == "gguf")
                             and file_type != cfg.get("quant_type"))
        if self.requant_gguf:
            logger.warning("the model holds %s blocks; writing %s requantizes them (a second rounding)",
                           cfg.get("quant_type"), file_type)

    def target(self, gname: str, ncols: int, ndim: int) -> str:
        if ndim < 2 or gname.endswith("_norm.weight") or self.file_type == "F32":
            return "F32"
        if self.file_type == "F16":
            return "F16"
        return mixes.tensor_type(self.file_type, gname, ncols, self.shape, bool(self.importance))

    def permute(self, hf_name: str) -> int | None:
        if not architecture(self.model_type).rotary_permute:
            return None
        if re.search(r"\.q_proj\.(weight|bias)$", hf_name):
            return self.hp["num_attention_heads"]
        if re.search(r"\.k_proj\.(weight|bias)$", hf_name):
            return self.hp.get("num_key_value_heads") or self.hp["num_attention_heads"]
        return None


def _float_tensor(plan: _Plan, hf_name: str, t: torch.Tensor, gname: str, n_vocab: int):
    """(lazy data, raw GGML type or None) for a float tensor."""
    def data() -> torch.Tensor:
        x = t.detach().to(torch.float32)
        if plan.gemma:
            if hf_name.endswith("embed_tokens.weight"):
                x = x[:n_vocab]                       # the converter drops rows past the tokenizer
            if hf_name.endswith("norm.weight"):
                x = x + 1.0                           # Gemma RMSNorm scales by (1 + weight)
        n_head = plan.permute(hf_name)
        return _permute_rows(x, n_head) if n_head else x

    rows = min(t.shape[0], n_vocab) if plan.gemma and hf_name.endswith("embed_tokens.weight") else t.shape[0]
    shape = (rows, *t.shape[1:])
    typ = plan.target(gname, t.shape[-1], t.dim())
    if typ in ("F32", "F16"):
        dt = np.float32 if typ == "F32" else np.float16
        return _Lazy(shape, dt, lambda: data().to(torch.float32 if typ == "F32" else torch.float16).numpy()), None
    imp = plan.importance.get(hf_name.rsplit(".", 1)[0])
    nbytes_row = shape[-1] // ggml_type(typ).block * ggml_type(typ).type_size
    return (_Lazy((shape[0], nbytes_row), np.uint8, lambda: quantize_rows(data(), typ, imp).numpy()),
            gguf.GGMLQuantizationType[typ])


def _hfq_linear(plan: _Plan, hf_name: str, m: HfqLinear, gname: str, rows: int | None = None):
    """A quantized layer (or embedding table) of `rows` rows (all by default: Gemma's table keeps n_vocab)."""
    n_head = plan.permute(hf_name + ".weight")
    rows = m.out_features if rows is None else rows
    # a stored GGML table is kept as it is, unless it is an embedding/head whose type differs from the file's mix
    table = gname in ("token_embd.weight", "output.weight")
    keep = m.layout == "gguf" and not (table and m.ggml_type != plan.target(gname, m.in_features, 2))
    if keep and not plan.requant_gguf:
        typ = m.ggml_type
        raw = lambda: m.weight.detach()                                   # noqa: E731
    else:
        typ = plan.target(gname, m.in_features, 2)
        exact = _exact_ggml(m, typ) is not None
        if not exact:
            logger.info("%s: %s layer requantized to %s", hf_name, m.layout, typ)
        if typ in ("F32", "F16"):
            dt = np.float32 if typ == "F32" else np.float16
            tdt = torch.float32 if typ == "F32" else torch.float16

            def dense():
                w = m.dequantize_weight(torch.float32)[:rows]
                return (_permute_rows(w, n_head) if n_head else w).to(tdt).numpy()
            return _Lazy((rows, m.in_features), dt, dense), None

        def raw():
            b = _exact_ggml(m, typ)
            return b if b is not None else quantize_rows(m.dequantize_weight(torch.float32), typ,
                                                         plan.importance.get(hf_name.rsplit(".", 1)[0]))
    t = ggml_type(typ)
    if t.block == 1:   # an F16 layer of a gguf-method model
        return _Lazy((rows, m.in_features), np.float16,
                     lambda: m.dequantize_weight(torch.float16)[:rows].numpy()), None

    def data():
        b = raw()[:rows]
        return (_permute_rows(b, n_head) if n_head else b).numpy()
    return (_Lazy((rows, m.in_features // t.block * t.type_size), np.uint8, data),
            gguf.GGMLQuantizationType[t.name])


def _tensors(plan: _Plan, n_vocab: int):
    """(gguf name, lazy tensor, raw type) for every tensor, in the model's state-dict order."""
    model, hp = plan.model, plan.hp
    tmap = tensor_name_map(plan.model_type, hp["num_hidden_layers"])
    hfq_mods = {n: m for n, m in model.named_modules() if isinstance(m, HfqLinear)}
    tied = bool(hp.get("tie_word_embeddings"))
    for key, t in model.state_dict(keep_vars=True).items():
        prefix, leaf = key.rsplit(".", 1)
        if tied and key.endswith("lm_head.weight"):
            continue
        if prefix in hfq_mods and leaf != "bias":
            if leaf != "weight":
                continue                                   # scales/zeros/absmax travel with the weight
        gname = tmap.get_name(key, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise ValueError(f"tensor {key!r} has no GGUF name for {plan.arch.name.lower()}; hfq exports "
                             "dense decoder models of the supported architectures only.")
        if prefix in hfq_mods and leaf == "weight":
            m = hfq_mods[prefix]
            rows = min(m.out_features, n_vocab) if plan.gemma and isinstance(m, HfqEmbedding) else None
            yield (gname, *_hfq_linear(plan, prefix, m, gname, rows))
        else:
            yield (gname, *_float_tensor(plan, key, t, gname, n_vocab))


def _size_bytes(v) -> int:
    if v is None or isinstance(v, int):
        return v or 0
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", str(v).upper())
    if not m:
        raise ValueError(f"split_max_size={v!r} is not a size; use bytes or a string such as '2G' or '500M'.")
    return int(float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)])


def export_gguf(model, tokenizer, path: str | os.PathLike, quant_type: str | None = None,
                importance: dict | None = None, split_max_size: int | str | None = None,
                name: str | None = None, progress: bool = True, overwrite: bool = True) -> list[Path]:
    """Write `model` (with `tokenizer`) as a GGUF file llama.cpp runs; returns the written file(s).

    quant_type: a llama.cpp file type (Q4_K_M, Q8_0, ...), F16 or F32. Default: the model's own GGUF type for
    method="gguf", the closest type for other hfq methods, F16 for a float model.
    importance: {module name: mean squared input per column} for float weights (llama.cpp's imatrix).
    split_max_size: split into gguf-split shards (name-00001-of-0000N.gguf) of at most this many bytes.
    overwrite=False refuses an existing file or shard set (checked again as the files are moved into place); with
    overwrite, every file of the previous export to `path` (NAME.gguf and any NAME-*-of-*.gguf) is replaced as
    one set (hfq.atomic_set): a kill leaves the old set or the new one, never a mix."""
    path = Path(path)
    if path.suffix != ".gguf":
        raise ValueError(f"path={str(path)!r} must end in .gguf.")
    file_type = file_type_for(model, quant_type)
    plan = _Plan(model, file_type, importance)
    ftype_id = FLOAT_TYPES.get(file_type, FILE_TYPES.get(file_type, (None,))[0])
    with locked(path):   # one writer per file; a killed run's journal, then its temporaries, go first
        recover_set(path)
        recover(path)
        refuse_existing_set(path, overwrite, "path")
        return _write(model, tokenizer, path, plan, file_type, ftype_id, name, split_max_size, progress, overwrite)


def _write(model, tokenizer, path: Path, plan, file_type, ftype_id, name, split_max_size, progress,
           overwrite) -> list[Path]:
    tmp = temp_name(path)
    tmp.mkdir()
    try:
        w = Writer(tmp / path.name, gguf.MODEL_ARCH_NAMES[plan.arch],
                            split_max_size=_size_bytes(split_max_size))
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name or str(getattr(model.config, "_name_or_path", "") or path.stem).rstrip("/").split("/")[-1])
        add_hparams(w, plan.hp, plan.model_type, ftype_id)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        n_real = add_tokenizer(w, tokenizer, plan.model_type, plan.hp["vocab_size"])
        for gname, lazy, raw in _tensors(plan, min(n_real, plan.hp["vocab_size"])):
            w.add_tensor(gname, lazy, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=progress)
        w.close()
        stamp_export_id(sorted(tmp.iterdir()))
        refuse_existing_set(path, overwrite, "path")   # again: something may have appeared meanwhile
        out = publish_set(path, tmp, members(path) if overwrite else [], overwrite)
        logger.info("wrote %s (%s)", ", ".join(str(p) for p in out), file_type)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
