"""Read an hfq checkpoint folder without loading it: config, safetensors headers, per-layer layouts, sizes.
Corrupt or truncated files raise ValueError naming the file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .config import HfqConfig

_DTYPE_BYTES = {"U8": 1, "I8": 1, "F16": 2, "BF16": 2, "F32": 4, "I32": 4, "I64": 8, "F64": 8, "BOOL": 1,
               "I16": 2, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_LAYOUT_TENSORS = {"weight", "scales", "zeros", "absmax", "absmax_scale", "absmax_offset"}


def read_safetensors_header(path: Path) -> tuple[dict, dict]:
    """(tensors {name: {dtype, shape, data_offsets}}, metadata) of one file, checked against its size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header length); re-save it.")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise ValueError(f"{path} is truncated: its header says {n} bytes but the file has {size}; re-save it.")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} has a corrupt safetensors header ({e}); re-save it.") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a corrupt safetensors header (not a JSON object); re-save it.")
    meta = header.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{path} has corrupt safetensors metadata (not a string map); re-save it.")
    spans = []
    for key, t in header.items():
        problem = _entry_problem(t)
        if problem:
            raise ValueError(f"{path}: tensor {key!r} has a corrupt header entry ({problem}); re-save it.")
        spans.append((t["data_offsets"][0], t["data_offsets"][1], key))
    at = 0
    for begin, end, key in sorted(spans):   # safetensors packs tensors back to back, without gaps or overlaps
        if begin != at:
            raise ValueError(f"{path}: tensor {key!r} starts at byte {begin}, expected {at} (edited offsets); "
                             "re-save it.")
        at = end
    if 8 + n + at > size:
        raise ValueError(f"{path} is truncated: tensors need {8 + n + at} bytes, the file has {size}; re-save or "
                         "re-download it.")
    return header, meta


# Every from_pretrained hfq makes: no code from a model folder or repo, and no pickle (transformers refuses a repo
# without safetensors weights instead of unpickling it). Tokenizers take only the first.
SAFE_LOAD = {"trust_remote_code": False, "use_safetensors": True}
NO_REMOTE_CODE = {"trust_remote_code": False}
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_source(model: str) -> str:
    """Refuse, with the reason, a local model folder hfq must not load: one whose config names its own code
    (auto_map) or whose weights are pickles only. A path that does not exist is an error, not a Hub id."""
    p = Path(model).expanduser()
    if not p.exists():
        s = str(model)
        if s.startswith((".", "/", "~")) or s.count("/") > 1 or "\\" in s or p.suffix in (".gguf", ".safetensors"):
            raise ValueError(f"model path {s} does not exist; pass an existing folder, a Hub id (namespace/name) "
                             "or an embedded model name.")
        return model
    if not p.is_dir():
        return model
    for name in ("config.json", "tokenizer_config.json"):
        f = p / name
        if f.is_file():
            cfg = read_config(p) if name == "config.json" else _json_or_empty(f)
            if cfg.get("auto_map"):
                raise ValueError(f"{f} has an auto_map: the model needs its own Python code, and hfq never runs "
                                 "code from a checkpoint (trust_remote_code=False). Use a model transformers "
                                 "supports natively.")
            qc = cfg.get("quantization_config") if name == "config.json" else None
            if qc is not None:   # an hfq checkpoint's settings, checked before transformers reads them
                if not isinstance(qc, dict) or not isinstance(qc.get("quant_method"), str):
                    raise ValueError(f"{f}: quantization_config has no quant_method; restore config.json from the "
                                     "original folder or re-quantize.")
                if qc["quant_method"] == "hfq":
                    hfq_config(p, qc)
    if not list(p.glob("*.safetensors")) and any(next(p.glob(g), None) for g in _PICKLES):
        raise ValueError(f"{p} holds only pickle weights (.bin/.pt); hfq loads safetensors only, never pickle. "
                         "Convert it to safetensors with a tool you trust.")
    return model


def _json_or_empty(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it from the original folder.") from None
    return d if isinstance(d, dict) else {}


def read_config(folder: Path) -> dict:
    """config.json as a dict; a missing or broken file is an error naming it."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no config.json; pass a folder written by save_pretrained or `hfq quantize`.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it from the original folder.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object; restore it from the original folder.")
    return config


def hfq_config(folder: Path, qc: dict) -> HfqConfig:
    """config.json's quantization_config as an HfqConfig; an invalid one is an error naming the file."""
    try:
        return HfqConfig.from_dict(qc)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"{Path(folder) / 'config.json'}: its quantization_config is not valid ({e}); restore it "
                         "or re-quantize.") from None


def _entry_problem(t) -> str | None:
    if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
        return "not {dtype, shape, data_offsets}"
    if t["dtype"] not in _DTYPE_BYTES:
        return f"unknown dtype {t['dtype']!r}"
    shape, offs = t["shape"], t["data_offsets"]
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        return f"shape {shape!r}"
    if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs) and 0 <= offs[0] <= offs[1]):
        return f"data_offsets {offs!r}"
    if offs[1] - offs[0] != _DTYPE_BYTES[t["dtype"]] * _numel(shape):
        return f"{offs[1] - offs[0]} bytes for {t['dtype']} {shape}"
    return None


def canonicalize_metadata(folder: str | Path) -> None:
    """Rewrite each safetensors header's __metadata__ with sorted keys, in place. safetensors writes metadata in
    a hash order that changes from process to process, so the same tensors would give a different file (and
    sha256) on every run; sorted, the bytes depend only on the content. The header keeps its length."""
    for path in weight_files(Path(folder)):
        with open(path, "r+b") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            raw = f.read(n)
            header = json.loads(raw)
            meta = header.get("__metadata__")
            if not meta:
                continue
            old = json.dumps({"__metadata__": meta}, separators=(",", ":"), ensure_ascii=False)[1:-1].encode()
            new = json.dumps({"__metadata__": dict(sorted(meta.items()))}, separators=(",", ":"),
                             ensure_ascii=False)[1:-1].encode()
            if raw.count(old) != 1 or len(old) != len(new):
                continue  # not the compact form safetensors writes; leave the file alone
            f.seek(8)
            f.write(raw.replace(old, new))


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index} is not a valid shard index ({type(e).__name__}: {e}); re-save or "
                             "re-download the folder.") from None
        if not all(isinstance(n, str) and n.endswith(".safetensors") and Path(n).name == n for n in names):
            raise ValueError(f"{index} names a shard that is not a .safetensors file in the folder; re-save it.")
        missing = [n for n in names if not (folder / n).exists()]
        if missing:
            raise ValueError(f"{folder} is missing shard(s) {missing} listed in {index.name}; re-save or re-download.")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} holds no .safetensors weights (hfq reads safetensors only, never pickle).")
    return files


def describe(folder: str | Path) -> dict:
    """Summary of an hfq (or float) checkpoint: method, layers quantized, bits per weight, bytes on disk."""
    folder = Path(folder)
    config = read_config(folder)
    qc = config.get("quantization_config")
    hq = hfq_config(folder, qc) if isinstance(qc, dict) and qc.get("quant_method") == "hfq" else None
    tensors: dict[str, dict] = {}
    layers_meta: dict[str, list[int]] = {}
    for f in weight_files(folder):
        header, meta = read_safetensors_header(f)
        tensors.update(header)
        if "hfq_layers" in meta:
            layers_meta.update(json.loads(meta["hfq_layers"]))
    nbytes = {k: _DTYPE_BYTES.get(t["dtype"], 0) * _numel(t["shape"]) for k, t in tensors.items()}
    layers, tied = {}, {}
    emb_types = (hq.embedding_types if hq is not None else None) or {}
    for name, shape in layers_meta.items():
        keys = [f"{name}.{t}" for t in _LAYOUT_TENSORS if f"{name}.{t}" in tensors]
        if not keys and name in emb_types:   # a tied head: the embedding's table, stored once
            tied[name] = {"shape": shape, "type": emb_types[name], "tied_to": _tied_source(name, emb_types, tensors)}
            continue
        layers[name] = {"shape": shape, "bytes": sum(nbytes[k] for k in keys),
                        "bpw": 8 * sum(nbytes[k] for k in keys) / (shape[0] * shape[1])}
        t = ((hq.tensor_types or {}).get(name) if hq is not None else None) or emb_types.get(name)
        if t is not None:
            layers[name]["type"] = t
    quant_keys = {f"{n}.{t}" for n in layers for t in _LAYOUT_TENSORS}
    float_params = sum(_numel(t["shape"]) for k, t in tensors.items() if k not in quant_keys)
    q_weights = sum(v["shape"][0] * v["shape"][1] for v in layers.values())
    q_bytes = sum(v["bytes"] for v in layers.values())
    total_tensor_bytes = sum(nbytes.values())
    return {
        "path": str(folder),
        "model_type": config.get("model_type"),
        "method": hq.short_name() if hq else "float",
        "config": hq.to_dict() if hq else None,
        "layers_quantized": len(layers),
        "quantized_weights": q_weights,
        "quantized_bpw": 8 * q_bytes / q_weights if q_weights else None,
        "parameters": q_weights + float_params,
        "model_bpw": 8 * total_tensor_bytes / (q_weights + float_params) if tensors else None,
        "bytes_on_disk": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
        "weight_bytes": total_tensor_bytes,
        "layers": layers,
        "tied_layers": tied,
        "embeddings": {n: {"type": v.get("type"), "bytes": v.get("bytes", 0), "bpw": v.get("bpw", 0.0),
                           **({"tied_to": v["tied_to"]} if "tied_to" in v else {})}
                       for n, v in {**{k: layers[k] for k in emb_types if k in layers}, **tied}.items()},
        "types": _type_summary(layers),
        "modules": _module_summary(tensors, nbytes, layers),
    }


def _tied_source(name: str, emb_types: dict, tensors: dict) -> str | None:
    """The embedding whose stored table a tied head reads."""
    return next((n for n in emb_types if n != name and f"{n}.weight" in tensors), None)


def _module_type(name: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'q_proj'; 'model.embed_tokens' -> 'embed_tokens'."""
    return name.rsplit(".", 1)[-1]


def _module_summary(tensors: dict, nbytes: dict, layers: dict) -> dict:
    """{module type: {"weights", "bytes", "bpw"}} over every tensor: a quantized layer counts its original
    out x in weights and all its layout tensors' bytes; a float tensor counts itself under its module."""
    out: dict[str, dict] = {}

    def add(kind, weights, size):
        s = out.setdefault(kind, {"weights": 0, "bytes": 0})
        s["weights"] += weights
        s["bytes"] += size

    for name, v in layers.items():
        add(_module_type(name), v["shape"][0] * v["shape"][1], v["bytes"])
    quant_keys = {f"{n}.{t}" for n in layers for t in _LAYOUT_TENSORS}
    for key, t in tensors.items():
        if key not in quant_keys:
            add(_module_type(key.rsplit(".", 1)[0]) if "." in key else key, _numel(t["shape"]), nbytes[key])
    for s in out.values():
        s["bpw"] = 8 * s["bytes"] / s["weights"] if s["weights"] else None
    return dict(sorted(out.items()))


def describe_gguf(path: str | Path) -> dict:
    """Size of a GGUF file: bytes on disk, bits per weight overall, per GGML type and per tensor kind."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    kinds: dict[str, dict] = {}
    types: dict[str, dict] = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        kind = parts[2] if parts[0] == "blk" and len(parts) > 2 else parts[0]  # blk.N.attn_q.weight -> attn_q
        for table, key in ((kinds, kind), (types, t.tensor_type.name)):
            s = table.setdefault(key, {"weights": 0, "bytes": 0})
            s["weights"] += int(t.n_elements)
            s["bytes"] += int(t.n_bytes)
    for s in (*kinds.values(), *types.values()):
        s["bpw"] = 8 * s["bytes"] / s["weights"]
    n = sum(s["weights"] for s in kinds.values())
    return {"path": str(path), "bytes_on_disk": Path(path).stat().st_size, "parameters": n,
            "weight_bytes": sum(s["bytes"] for s in kinds.values()),
            "model_bpw": 8 * sum(s["bytes"] for s in kinds.values()) / n if n else None,
            "modules": dict(sorted(kinds.items())), "types": dict(sorted(types.items()))}


def _type_summary(layers: dict) -> dict:
    """{GGML type: {"layers": n, "weights": n, "bpw": b}} for gguf checkpoints; empty otherwise."""
    out: dict[str, dict] = {}
    for v in layers.values():
        if "type" not in v:
            continue
        s = out.setdefault(v["type"], {"layers": 0, "weights": 0, "bytes": 0})
        s["layers"] += 1
        s["weights"] += v["shape"][0] * v["shape"][1]
        s["bytes"] += v["bytes"]
    for s in out.values():
        s["bpw"] = 8 * s.pop("bytes") / s["weights"]
    return dict(sorted(out.items()))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n

