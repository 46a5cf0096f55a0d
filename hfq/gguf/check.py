"""check_gguf: everything llama.cpp would assert on, checked with gguf-py before llama.cpp sees a file.

llama.cpp aborts the process (GGML_ASSERT) when a header's hyperparameters do not match the tensor shapes, and
fails with "Failed to load model from file" and no reason for a missing tensor. Here each of those is a ValueError
naming the file, the key or tensor, what was found and what was expected."""

from __future__ import annotations

import os
from pathlib import Path

import gguf

# tensors every block of a transformer llama.cpp loads must have (the rest must merely be the same in every block)
CORE = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down")
TOKEN_IDS = ("bos", "eos", "unknown", "padding", "seperator", "sep", "eot", "eom")


def _bad(path, problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}; the file is damaged or was edited, re-export or re-download it.")


def check_gguf(path: str | os.PathLike) -> gguf.GGUFReader:
    """Open a GGUF file with gguf-py and check its layout and hyperparameters; returns the reader."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"GGUF file {str(path)!r} does not exist.")
    try:
        r = gguf.GGUFReader(path)
        fields = {k: _value(f) for k, f in r.fields.items()}
        tensors = {t.name: t for t in r.tensors}
    except Exception as e:   # gguf-py raises ValueError, IndexError or struct/numpy errors on bad bytes
        raise ValueError(f"{path} is truncated or corrupt: gguf-py cannot read it ({type(e).__name__}: {e}); "
                         "re-export or re-download it.") from None
    _check_layout(path, r)
    _check_hparams(path, fields, tensors)
    return r


def _value(field):
    try:
        return field.contents()
    except Exception:   # noqa: BLE001  a value gguf-py cannot decode
        return None


def _check_layout(path: Path, r: gguf.GGUFReader) -> None:
    size = path.stat().st_size
    spans = []
    for t in r.tensors:
        block, type_size = gguf.GGML_QUANT_SIZES.get(t.tensor_type, (None, None))
        ne = [int(x) for x in t.shape]
        if block is None or not ne or any(n <= 0 for n in ne) or ne[0] % block:
            raise _bad(path, f"tensor {t.name} has type {t.tensor_type!r} and shape {ne}, which is not a whole "
                       "number of blocks")
        n = 1
        for x in ne:
            n *= x
        if t.n_bytes != n // block * type_size:
            raise _bad(path, f"tensor {t.name} holds {t.n_bytes} bytes, its type and shape need {n // block * type_size}")
        if t.data_offset % r.alignment:
            raise _bad(path, f"tensor {t.name} starts at byte {t.data_offset}, not aligned to {r.alignment}")
        if t.data_offset + t.n_bytes > size:
            raise ValueError(f"{path} is truncated: tensor {t.name} ends at byte {t.data_offset + t.n_bytes}, the "
                             f"file has {size}; re-export or re-download it.")
        spans.append((t.data_offset, t.data_offset + t.n_bytes, t.name))
    spans.sort()
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise _bad(path, f"tensors {n0} and {n1} overlap (bytes {b1}..{e0})")


def _int(path, fields, key, required=True, minimum=1):
    v = fields.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise _bad(path, f"{key} is {v!r}, expected an integer >= {minimum}")
    return v


def _check_hparams(path: Path, fields: dict, tensors: dict) -> None:
    arch = fields.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise _bad(path, f"general.architecture is {arch!r}, expected the model's architecture name")
    blocks = {}
    for name, t in tensors.items():
        parts = name.split(".")
        if parts[0] == "blk":
            if len(parts) < 3 or not parts[1].isdigit():
                raise _bad(path, f"tensor name {name!r} is not blk.N.NAME")
            blocks.setdefault(int(parts[1]), {})[".".join(parts[2:])] = [int(x) for x in t.shape]
    n_layer = _int(path, fields, f"{arch}.block_count")
    if sorted(blocks) != list(range(n_layer)):
        raise _bad(path, f"{arch}.block_count is {n_layer} but the file has tensors for blocks "
                   f"{sorted(blocks)[:3]}..{sorted(blocks)[-1:] if blocks else []} ({len(blocks)} blocks)")
    _int(path, fields, f"{arch}.context_length")
    n_embd = _int(path, fields, f"{arch}.embedding_length")
    emb = tensors.get("token_embd.weight")
    if emb is None:
        raise _bad(path, "tensor token_embd.weight is missing")
    if int(emb.shape[0]) != n_embd:
        raise _bad(path, f"{arch}.embedding_length is {n_embd} but token_embd.weight rows have {int(emb.shape[0])}")
    n_vocab = int(emb.shape[1])
    tokens = fields.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and len(tokens) != n_vocab:
        raise _bad(path, f"tokenizer.ggml.tokens has {len(tokens)} tokens but token_embd.weight has {n_vocab} rows")
    for kind in TOKEN_IDS:
        tid = fields.get(f"tokenizer.ggml.{kind}_token_id")
        if tid is not None and not (isinstance(tid, int) and 0 <= tid < n_vocab):
            raise _bad(path, f"tokenizer.ggml.{kind}_token_id is {tid!r}, outside the vocabulary of {n_vocab}")
    if not blocks or not any("attn_q.weight" in b for b in blocks.values()):
        return   # not a transformer llama.cpp's attention checks apply to
    n_head = _int(path, fields, f"{arch}.attention.head_count")
    n_head_kv = _int(path, fields, f"{arch}.attention.head_count_kv", required=False) or n_head
    if n_head % n_head_kv:
        raise _bad(path, f"{arch}.attention.head_count ({n_head}) is not a multiple of head_count_kv ({n_head_kv})")
    dk = _int(path, fields, f"{arch}.attention.key_length", required=False) or n_embd // n_head
    dv = _int(path, fields, f"{arch}.attention.value_length", required=False) or dk
    rope = _int(path, fields, f"{arch}.rope.dimension_count", required=False)
    if rope is not None and rope > dk:
        raise _bad(path, f"{arch}.rope.dimension_count is {rope}, more than the head size {dk}")
    n_ff = _int(path, fields, f"{arch}.feed_forward_length", required=False)
    expect = {"attn_q.weight": [n_embd, n_head * dk], "attn_k.weight": [n_embd, n_head_kv * dk],
              "attn_v.weight": [n_embd, n_head_kv * dv], "attn_output.weight": [n_head * dv, n_embd]}
    if n_ff is not None:
        expect.update({"ffn_gate.weight": [n_embd, n_ff], "ffn_up.weight": [n_embd, n_ff],
                       "ffn_down.weight": [n_ff, n_embd]})
    names0 = set(blocks[0])
    for i, b in sorted(blocks.items()):
        missing = [f"{c}.weight" for c in CORE if f"{c}.weight" not in b] or sorted(names0 ^ set(b))
        if missing:
            raise _bad(path, f"block {i} lacks or adds tensor(s) {missing[:3]} (blk.{i}.{missing[0]})")
        for name, want in expect.items():
            if name in b and b[name] != want:
                raise _bad(path, f"blk.{i}.{name} has shape {b[name]} but the header's hyperparameters "
                           f"({arch}.attention.head_count={n_head}, head_count_kv={n_head_kv}, embedding_length="
                           f"{n_embd}, feed_forward_length={n_ff}) need {want}")
        for name, shape in b.items():
            if name.endswith("norm.weight") and shape not in ([n_embd], [dk], [dv]):
                raise _bad(path, f"blk.{i}.{name} has shape {shape}, expected [{n_embd}] or a head size")
