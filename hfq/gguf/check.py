"""check_gguf: everything llama.cpp would fail or abort on, checked before llama.cpp sees a file.

llama.cpp aborts the process (GGML_ASSERT) when a header's hyperparameters do not match the tensor shapes or two
tokens of the vocabulary are equal, and fails with "Failed to load model from file" and no reason for a missing
tensor, a key of the wrong type or a token that is not UTF-8. Here each of those is one ValueError naming the file,
the key or tensor, what was found and what was expected. The header is read by hfq.gguf.header (bounded, strict),
never trusted to gguf-py, which loops on an edited array length."""

from __future__ import annotations

import functools
import mmap
import os
from pathlib import Path

import gguf

from ..atomic_set import settle
from .header import ARRAY, FLOAT32, INT32, STRING, UINT32, Header, TYPE_NAMES, read_header
from .split import shard_set, target_of
from .vocab import LLAMA_CPP_MODELS, LLAMA_CPP_PRE

# tensors every block of a transformer llama.cpp loads must have (the rest must merely be the same in every block)
CORE = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down")
# architectures whose rotary embedding llama.cpp requires to span the whole head ("invalid n_rot")
FULL_ROPE = ("llama", "deci", "falcon", "llama-embed")
TOKEN_IDS = ("bos", "eos", "unknown", "padding", "seperator", "sep", "eot", "eom", "mask")
# arrays llama.cpp's vocabulary loader reads, and the item types it accepts
TOKENIZER_ARRAYS = {"tokenizer.ggml.tokens": (STRING,), "tokenizer.ggml.merges": (STRING,),
                    "tokenizer.ggml.scores": (FLOAT32, INT32), "tokenizer.ggml.token_type": (INT32,)}


def _bad(path, problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}; the file is damaged or was edited, re-export or re-download it.")


def check_gguf(path: str | os.PathLike) -> Header:
    """Read a GGUF file's header strictly and check its layout, key types, vocabulary and hyperparameters;
    returns the header (hfq.gguf.header.Header). For the first shard of a split set, every shard is checked
    (hfq.gguf.split.shard_set) and the header returned holds the tensors of all of them."""
    path = Path(path)
    settle(target_of(path))   # an export killed while it moved files in: finish or undo it first
    shards = shard_set(path, _read(path), _read)
    for p, sh in shards:
        _check_layout(p, sh, p.stat().st_size)
    h = shards[0][1]
    if len(shards) > 1:
        h = Header(h.version, h.kv, [t for _, sh in shards for t in sh.tensors], h.alignment, h.data_start)
        seen: dict[str, Path] = {}
        for p, sh in shards:
            for t in sh.tensors:
                if t.name in seen:
                    raise _bad(p, f"tensor {t.name} is also in {seen[t.name].name}")
                seen[t.name] = p
    _check_types(path, h)
    _check_names(path, h)
    tensors = {t.name: t for t in h.tensors}
    n_vocab = _check_hparams(path, h, tensors)
    _check_vocab(path, h, n_vocab)
    return h


def _read(path: Path) -> Header:
    if not path.is_file():
        raise ValueError(f"GGUF file {str(path)!r} does not exist.")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty, not a GGUF file; re-export or re-download it.")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        try:
            return read_header(path, view)
        finally:
            view.release()


def _check_layout(path: Path, h: Header, size: int) -> None:
    """Types, shapes and offsets as ggml's loader requires: each tensor starts where the one before it ends
    (rounded up to the alignment), a whole number of blocks, and inside the file."""
    expected = 0
    for t in h.tensors:
        block, type_size = gguf.GGML_QUANT_SIZES.get(_ggml_type(t.type), (None, None))
        if block is None:
            raise _bad(path, f"tensor {t.name} has GGML type {t.type}, which is not a known type")
        if any(n <= 0 for n in t.dims) or t.dims[0] % block:
            raise _bad(path, f"tensor {t.name} has type {_ggml_type(t.type).name} and shape {t.dims}, which is not "
                       f"a whole number of {block}-element blocks")
        if len(t.dims) == 1 and _ggml_type(t.type).name not in ("F32", "F16", "BF16"):   # ggml's ops abort
            raise _bad(path, f"tensor {t.name} is a vector (a norm or bias) of type {_ggml_type(t.type).name}; "
                       "vectors must be F32, F16 or BF16")
        n = 1
        for x in t.dims:
            n *= x
        nbytes = n // block * type_size
        if t.offset != expected:
            raise _bad(path, f"tensor {t.name} starts at data offset {t.offset}, but the tensors before it end at "
                       f"{expected}")
        end = h.data_start + t.offset + nbytes
        if end > size:
            raise ValueError(f"{path} is truncated: tensor {t.name} ends at byte {end}, the file has {size}; "
                             "re-export or re-download it.")
        expected += -(-nbytes // h.alignment) * h.alignment


def _ggml_type(t: int):
    try:
        return gguf.GGMLQuantizationType(t)
    except ValueError:
        return None


@functools.lru_cache(maxsize=1)
def _key_types() -> dict[str, tuple[int, bool]]:
    """{key with 'ARCH' for the architecture: (GGUF type, may be a per-layer array)} for every standard key, as
    gguf-py's GGUFWriter writes it (each add_* method records its key and type); llama.cpp refuses another type."""
    import inspect

    w = gguf.GGUFWriter(path=None, arch="ARCH")
    out = {}
    for name, fn in inspect.getmembers(gguf.GGUFWriter, inspect.isfunction):
        params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
        if not name.startswith("add_") or len(params) != 1 or name == "add_architecture":
            continue
        ann = str(params[0].annotation)
        for sample in (3, 1.5, True, "x"):
            w.kv_data[0].clear()
            try:
                fn(w, sample)
            except Exception:   # noqa: BLE001  a method that wants another kind of argument
                continue
            for key, v in w.kv_data[0].items():
                if int(v.type) != ARRAY:
                    out[key] = (int(v.type), "Sequence" in ann)
            break
    return out


@functools.lru_cache(maxsize=1)
def _standard_keys() -> frozenset[str]:
    """Every key name gguf-py defines (gguf.Keys), '{arch}' unformatted."""
    import inspect

    out = set()

    def walk(c):
        for n, v in vars(c).items():
            if isinstance(v, str) and not n.startswith("_"):
                out.add(v)
            elif inspect.isclass(v) and not n.startswith("_"):
                walk(v)
    walk(gguf.Keys)
    return frozenset(out)


def _check_types(path: Path, h: Header) -> None:
    arch = h.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise _bad(path, f"general.architecture is {arch!r}, expected the model's architecture name")
    types = _key_types()
    for key, v in h.kv.items():
        want = types.get(key.replace(f"{arch}.", "ARCH.", 1) if key.startswith(f"{arch}.") else key)
        if want is None:
            continue
        vtype, per_layer = want
        if v.type == vtype or (per_layer and v.type == ARRAY and v.item_type in (UINT32, INT32)):
            continue
        found = TYPE_NAMES[v.type] + (f" of {TYPE_NAMES[v.item_type]}" if v.type == ARRAY else "")
        raise _bad(path, f"{key} has type {found}, llama.cpp reads it as {TYPE_NAMES[vtype]}")
    for key, items in TOKENIZER_ARRAYS.items():
        v = h.kv.get(key)
        if v is not None and (v.type != ARRAY or v.item_type not in items):
            found = TYPE_NAMES[v.type] + (f" of {TYPE_NAMES[v.item_type]}" if v.type == ARRAY else "")
            raise _bad(path, f"{key} has type {found}, expected an ARRAY of "
                       f"{' or '.join(TYPE_NAMES[i] for i in items)}")


def _check_names(path: Path, h: Header) -> None:
    """Key and tensor names gguf-py knows for the architecture: a damaged name would leave llama.cpp without a key
    or tensor it needs ("key not found", "missing tensor")."""
    arch = h.get("general.architecture")
    archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in archs:
        raise _bad(path, f"general.architecture is {arch!r}, not an architecture gguf-py (and llama.cpp) knows")
    standard = {k.replace("{arch}", arch) for k in _standard_keys()}
    for key in h.kv:
        if key in standard or key.startswith("GGUF."):
            continue
        if key.startswith((f"{arch}.", "general.", "tokenizer.ggml.")):
            raise _bad(path, f"key {key!r} is not a standard GGUF key (a damaged name?)")
        near = [k for k in standard - set(h.kv) if len(k) == len(key) and sum(a != b for a, b in zip(k, key)) == 1]
        if near:
            raise _bad(path, f"key {key!r} is one character away from {near[0]!r}, which the file lacks")
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[archs[arch]]}
    for t in h.tensors:
        base, _, suffix = t.name.rpartition(".")
        parts = base.split(".")
        generic = ".".join(["blk", "{bid}", *parts[2:]]) if parts[0] == "blk" and len(parts) > 2 and \
            parts[1].isdigit() else base
        if generic not in allowed or suffix not in ("weight", "bias", "scale"):
            raise _bad(path, f"tensor name {t.name!r} is not a {arch} tensor llama.cpp knows (a damaged name?)")
    if "output_norm" in allowed and not any(t.name == "output_norm.weight" for t in h.tensors):
        raise _bad(path, "tensor output_norm.weight is missing")


def _check_vocab(path: Path, h: Header, n_vocab: int) -> None:
    """What llama.cpp's vocabulary loader fails or aborts on."""
    model = h.get("tokenizer.ggml.model")
    if model not in LLAMA_CPP_MODELS:
        raise _bad(path, f"tokenizer.ggml.model is {model!r}, not a tokenizer llama.cpp knows "
                   f"({', '.join(sorted(LLAMA_CPP_MODELS))})")
    _check_template(path, h.get("tokenizer.chat_template"))
    if model in ("none", "no_vocab"):
        return
    tokens = h.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise _bad(path, "tokenizer.ggml.tokens is missing: llama.cpp needs the vocabulary")
    if len(tokens) != n_vocab:
        raise _bad(path, f"tokenizer.ggml.tokens has {len(tokens)} tokens but token_embd.weight has {n_vocab} rows")
    seen = {}
    for i, t in enumerate(tokens):
        t = t or f"[EMPTY_{i}]"    # what llama.cpp puts in place of an empty token
        if t in seen:   # llama.cpp aborts: GGML_ASSERT(id_to_token.size() == token_to_id.size())
            raise _bad(path, f"tokenizer.ggml.tokens[{i}] is {t!r}, the same as token {seen[t]}; every token must "
                       "be different")
        seen[t] = i
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        v = h.kv.get(key)
        if v is not None and len(v.value) < len(tokens):
            raise _bad(path, f"{key} has {len(v.value)} entries for {len(tokens)} tokens")
    types = h.get("tokenizer.ggml.token_type")
    kinds = {0} | {int(t) for t in gguf.TokenType}   # 0: llama.cpp's UNDEFINED
    if types is not None and not set(types.tolist()) <= kinds:
        i = next(i for i, t in enumerate(types.tolist()) if t not in kinds)
        raise _bad(path, f"tokenizer.ggml.token_type[{i}] is {types[i]}, not a token type ({sorted(kinds)})")
    if model in ("gpt2", "hybriddna", "whitespace"):
        pre = h.get("tokenizer.ggml.pre", "default")
        if h.kv.get("tokenizer.ggml.pre") is not None and h.kv["tokenizer.ggml.pre"].type != STRING or \
                pre not in LLAMA_CPP_PRE:
            raise _bad(path, f"tokenizer.ggml.pre is {pre!r}, not a pre-tokenizer llama.cpp knows")
        if "tokenizer.ggml.merges" not in h.kv and pre != "kimi-k2":
            raise _bad(path, "tokenizer.ggml.merges is missing: llama.cpp needs the merges of a BPE vocabulary")


def _check_template(path: Path, template) -> None:
    """llama-cpp-python compiles the chat template (Jinja, sandboxed) when it loads a model: it must compile."""
    if template is None:
        return
    try:
        from jinja2 import TemplateSyntaxError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:   # without jinja2 nothing here compiles templates either
        return
    try:
        ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
    except TemplateSyntaxError as e:
        raise _bad(path, f"tokenizer.chat_template is not a valid Jinja template ({e.message}, line {e.lineno})") \
            from None


def _int(path, h, key, required=True, minimum=1, maximum=2**31 - 1):
    """An integer hyperparameter; llama.cpp (and its Python binding) hold them as int32."""
    v = h.get(key)
    if v is None and not required:
        return None
    if hasattr(v, "__len__") and not isinstance(v, str) and len(v) and len(set(int(x) for x in v)) == 1:
        v = int(v[0])   # a per-layer array with one value for every layer
    if isinstance(v, int) and not isinstance(v, bool) and minimum <= v <= maximum:
        return v
    raise _bad(path, f"{key} is {v!r}, expected an integer from {minimum} to {maximum}")


def _check_hparams(path: Path, h: Header, tensors: dict) -> int:
    """The architecture's hyperparameters against the tensor shapes; returns the vocabulary size."""
    arch = h.get("general.architecture")
    blocks = {}
    for name, t in tensors.items():
        parts = name.split(".")
        if parts[0] == "blk":
            if len(parts) < 3 or not parts[1].isdigit():
                raise _bad(path, f"tensor name {name!r} is not blk.N.NAME")
            blocks.setdefault(int(parts[1]), {})[".".join(parts[2:])] = t.dims
    n_layer = _int(path, h, f"{arch}.block_count")
    if len(blocks) != n_layer or sorted(blocks) != list(range(len(blocks))):   # never range(n_layer): it may be 2**32
        raise _bad(path, f"{arch}.block_count is {n_layer} but the file has tensors for blocks "
                   f"{sorted(blocks)[:3]}..{sorted(blocks)[-1:] if blocks else []} ({len(blocks)} blocks)")
    _int(path, h, f"{arch}.context_length")
    n_embd = _int(path, h, f"{arch}.embedding_length")
    emb = tensors.get("token_embd.weight")
    if emb is None or len(emb.dims) != 2:
        raise _bad(path, "tensor token_embd.weight is missing or not a matrix")
    if emb.dims[0] != n_embd:
        raise _bad(path, f"{arch}.embedding_length is {n_embd} but token_embd.weight rows have {emb.dims[0]}")
    n_vocab = emb.dims[1]
    out = tensors.get("output.weight")
    if out is not None and out.dims != emb.dims:
        raise _bad(path, f"output.weight has shape {out.dims}, token_embd.weight {emb.dims}: they must agree")
    for kind in TOKEN_IDS:
        tid = h.get(f"tokenizer.ggml.{kind}_token_id")
        if tid is not None and tid != 2**32 - 1 and not (isinstance(tid, int) and 0 <= tid < n_vocab):   # -1: none
            raise _bad(path, f"tokenizer.ggml.{kind}_token_id is {tid!r}, outside the vocabulary of {n_vocab}")
    if not blocks or not any("attn_q.weight" in b for b in blocks.values()):
        return n_vocab   # not a transformer llama.cpp's attention checks apply to
    n_head = _int(path, h, f"{arch}.attention.head_count")
    n_head_kv = _int(path, h, f"{arch}.attention.head_count_kv", required=False) or n_head
    if n_head % n_head_kv:
        raise _bad(path, f"{arch}.attention.head_count ({n_head}) is not a multiple of head_count_kv ({n_head_kv})")
    dk = _int(path, h, f"{arch}.attention.key_length", required=False) or n_embd // n_head
    dv = _int(path, h, f"{arch}.attention.value_length", required=False) or dk
    rope = _int(path, h, f"{arch}.rope.dimension_count", required=False)
    if rope is not None and (rope > dk or rope % 2 or (arch in FULL_ROPE and rope != dk)):
        want = f"the head size {dk}" if arch in FULL_ROPE else f"an even number up to the head size {dk}"
        raise _bad(path, f"{arch}.rope.dimension_count is {rope}, expected {want}")
    n_ff = _int(path, h, f"{arch}.feed_forward_length", required=False)
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
    return n_vocab
