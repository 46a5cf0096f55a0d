"""Verify an hfq checkpoint before and after it loads, so that no damaged file becomes a model of garbage.

Three levels, each raising ValueError that names the file, the layer and the tensor:
- headers (`verify_headers`): every layer listed in the shards' `hfq_layers` metadata has exactly the tensors its
  layout requires for config.json's quantization_config, with their dtype and shape; the shards' `hfq_method`
  and `hfq_tensor_types` metadata agree with config.json.
- data (`check_layer_data`): scales and absmax are finite and within float16 range, zero points and g_idx within
  their grid, and every GGML block's float16 scales finite.
- files (`verify_files`): the sha256 of every file the model card lists.
`hfq info`, `hfq verify` and every `from_pretrained` of an hfq checkpoint run them (the load checks the card's
sha256s only for the weight files).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from .checkpoint import hfq_config, read_config, read_safetensors_header, weight_files
from .config import HfqConfig
from .formats.ggml_types import ggml_type
from .formats.layouts import layer_specs
from .nn.embedding import layout_of

# No hfq writer produces a scale beyond float16's range: such a weight would overflow half precision anyway.
MAX_SCALE = 65504.0
LAYOUT_TENSORS = ("weight", "scales", "zeros", "g_idx", "absmax", "absmax_scale", "absmax_offset")
_TORCH_DTYPE = {torch.uint8: "U8", torch.int8: "I8", torch.float16: "F16", torch.float32: "F32",
                torch.int32: "I32", torch.bfloat16: "BF16"}
# Byte offsets of the float16 scale fields inside one block of each GGML type (ggml-common.h).
GGML_HALF_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
                    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}
_CARD_LINE = re.compile(r"^- `([^`]+)` sha256 `([0-9a-f]{64})`$", re.M)


def _fail(where: str, problem: str, fix: str = "re-save it with `hfq quantize` or re-download it") -> ValueError:
    return ValueError(f"{where}: {problem}; {fix}.")


def _layer_kwargs(cfg: HfqConfig, name: str, embedding_types: dict) -> dict:
    if name in embedding_types:
        kw = layout_of(embedding_types[name])
        return dict(kw, sym=kw.get("sym", True), double_quant=False, ggml=kw.get("ggml_type"))
    kw = dict(layout=cfg.layout, bits=cfg.bits, group_size=cfg.group_size, sym=bool(cfg.sym),
              double_quant=bool(cfg.double_quant), act_order=cfg.act_order)
    if cfg.layout == "gguf":
        kw["ggml"] = (cfg.tensor_types or {}).get(name)
        if kw["ggml"] is None:
            raise _fail(f"layer {name!r}", "config.json's tensor_types has no GGML type for it")
    return kw


def expected_tensors(cfg: HfqConfig, layers: dict[str, list[int]]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{state-dict key: (safetensors dtype, shape)} of every layout tensor the layers need under cfg."""
    emb = cfg.embedding_types or {}
    out = {}
    for name, shape in layers.items():
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s > 0 for s in shape)):
            raise _fail(f"layer {name!r}", f"hfq_layers metadata gives shape {shape!r}, not [out, in] > 0")
        kw = _layer_kwargs(cfg, name, emb)
        if kw.get("ggml") == "F16":
            continue
        try:
            specs = layer_specs(out_features=shape[0], in_features=shape[1], **{
                k: kw[k] for k in ("layout", "bits", "group_size", "sym", "double_quant")},
                ggml=kw.get("ggml"), act_order=kw.get("act_order", False))
        except ValueError as e:
            raise _fail(f"layer {name!r} [{shape[0]}x{shape[1]}]", f"config.json does not fit it ({e})") from None
        for s in specs:
            out[f"{name}.{s.name}"] = (_TORCH_DTYPE[s.dtype], tuple(s.shape))
    return out


def verify_headers(folder: str | Path, cfg: HfqConfig, config: dict, files: list[Path] | None = None) -> dict:
    """Check the shards' tensors and metadata against cfg (see the module doc). Returns {key: (file, entry)} of
    every tensor, and hfq_layers ({layer: [out, in]})."""
    folder = Path(folder)
    files = files or weight_files(folder)
    tensors, layers, types = {}, {}, {}
    for f in files:
        header, meta = read_safetensors_header(f)
        for key in ("hfq_format_version", "hfq_method", "hfq_layers"):
            if key not in meta:
                raise _fail(str(f), f"its metadata has no {key!r}, so it was not written by hfq (or was edited)")
        if meta["hfq_method"] != cfg.short_name():
            raise _fail(str(f), f"config.json says {cfg.short_name()!r} but the shard was written as "
                        f"{meta['hfq_method']!r}", "restore config.json's quantization_config or re-quantize")
        try:
            layers.update(json.loads(meta["hfq_layers"]))
            types.update(json.loads(meta.get("hfq_tensor_types", "{}")))
        except (json.JSONDecodeError, TypeError, AttributeError):
            raise _fail(str(f), "its hfq_layers / hfq_tensor_types metadata is not JSON") from None
        tensors.update({k: (f, v) for k, v in header.items()})
    if not isinstance(layers, dict) or not layers:
        raise _fail(str(files[0]), "its hfq_layers metadata lists no layer")
    want_types = {**(cfg.tensor_types or {}), **(cfg.embedding_types or {})}
    for name, t in types.items():
        if want_types.get(name) != t:
            raise _fail(f"layer {name!r}", f"the shard stores GGML type {t} but config.json says "
                        f"{want_types.get(name)}", "restore config.json or re-quantize")
    tied = _tied_head(config, cfg, layers, tensors)
    expected = expected_tensors(cfg, {n: s for n, s in layers.items() if n != tied})
    for key, (dtype, shape) in expected.items():
        if key not in tensors:
            raise _fail(f"layer {key.rsplit('.', 1)[0]!r}", f"tensor {key!r} is missing from the checkpoint "
                        f"(its layout {cfg.short_name()} needs it)")
        f, entry = tensors[key]
        if entry["dtype"] != dtype or tuple(entry["shape"]) != shape:
            raise _fail(f"{f.name}: tensor {key!r}", f"is {entry['dtype']} {entry['shape']}, the layout needs "
                        f"{dtype} {list(shape)}")
    for key in tensors:
        layer, _, t = key.rpartition(".")
        if layer in layers and layer != tied and t in LAYOUT_TENSORS and key not in expected:
            raise _fail(f"{tensors[key][0].name}: tensor {key!r}", f"is not part of layer {layer!r}'s layout "
                        f"({cfg.short_name()})", "remove it or restore config.json")
    return tensors, layers


def _tied_head(config: dict, cfg: HfqConfig, layers: dict, tensors: dict) -> str | None:
    """The tied output head, which stores no tensors of its own (it reads the embedding's table)."""
    emb = cfg.embedding_types or {}
    text = config.get("text_config") or {}
    if not (config.get("tie_word_embeddings") or text.get("tie_word_embeddings")) or len(emb) != 2:
        return None
    bare = [n for n in emb if n in layers and not any(k.startswith(n + ".") for k in tensors)]
    return bare[0] if len(bare) == 1 else None


def check_layer_data(name: str, tensors: dict[str, torch.Tensor], kw: dict) -> None:
    """Values a damaged file could hold that would compute garbage: non-finite or huge scales, zero points
    outside the grid, g_idx outside the groups, non-finite GGML block scales."""
    for t in ("scales", "absmax", "absmax_scale", "absmax_offset"):
        v = tensors.get(t)
        if v is not None and v.is_floating_point():
            bad = ~torch.isfinite(v) | (v.abs() > MAX_SCALE)
            if bool(bad.any()):
                i = int(bad.flatten().nonzero()[0])
                raise _fail(f"layer {name!r}", f"{t} holds {v.flatten()[i].item()!r} at index {i} (scales must "
                            f"be finite and at most {MAX_SCALE:g})")
    z = tensors.get("zeros")
    if z is not None and kw.get("bits", 8) < 8 and int(z.max()) >= 2 ** kw["bits"]:
        raise _fail(f"layer {name!r}", f"a zero point is {int(z.max())}, outside the {kw['bits']}-bit grid")
    g = tensors.get("g_idx")
    if g is not None and g.numel():
        groups = tensors["scales"].shape[1]
        if int(g.min()) < 0 or int(g.max()) >= groups:
            raise _fail(f"layer {name!r}", f"g_idx holds group {int(g.max())}/{int(g.min())}, outside 0..{groups - 1}")
    ggml = kw.get("ggml") or kw.get("ggml_type")
    if kw.get("layout") == "gguf" and ggml in GGML_HALF_FIELDS:
        size = ggml_type(ggml).type_size
        blocks = tensors["weight"].reshape(-1, size)
        for off in GGML_HALF_FIELDS[ggml]:
            d = blocks[:, off:off + 2].contiguous().view(torch.float16).float()
            bad = ~torch.isfinite(d)
            if bool(bad.any()):
                i = int(bad.flatten().nonzero()[0])
                raise _fail(f"layer {name!r}", f"{ggml} block {i} has a non-finite float16 scale at byte {off}")


def check_model_data(model: torch.nn.Module, cfg: HfqConfig) -> None:
    """check_layer_data for every quantized layer of a loaded model."""
    from .nn import HfqLinear

    for name, m in model.named_modules():
        if isinstance(m, HfqLinear) and m.weight.device.type != "meta":
            kw = dict(layout=m.layout, bits=m.bits, ggml=m.ggml_type)
            check_layer_data(name, {t: getattr(m, t) for t in m.layout_names}, kw)


def check_data_files(folder: str | Path, cfg: HfqConfig, tensors: dict, quantized: dict) -> None:
    """check_layer_data for every quantized layer, reading its tensors from the files (hfq info / hfq verify)."""
    from safetensors import safe_open

    layers = {}
    for key, (f, _) in tensors.items():
        layer, _, t = key.rpartition(".")
        if t in LAYOUT_TENSORS and layer in quantized:
            layers.setdefault(layer, {})[t] = (f, key)
    emb = cfg.embedding_types or {}
    handles = {}
    try:
        for layer, parts in layers.items():
            data = {}
            for t, (f, key) in parts.items():
                if f not in handles:
                    handles[f] = safe_open(str(f), framework="pt")
                data[t] = handles[f].get_tensor(key)
            kw = _layer_kwargs(cfg, layer, emb) if cfg.layout == "gguf" or layer in emb else dict(
                layout=cfg.layout, bits=cfg.bits)
            check_layer_data(layer, data, kw)
    finally:
        handles.clear()


def card_hashes(folder: str | Path) -> dict[str, str]:
    """{file name: sha256} from the model card's file list ({} without a card)."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return {}
    return dict(_CARD_LINE.findall(card.read_text(encoding="utf-8", errors="replace")))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_files(folder: str | Path, names: list[str] | None = None) -> int:
    """Recompute the sha256 of the files the card lists (or only `names` among them); returns how many."""
    folder = Path(folder)
    listed = card_hashes(folder)
    checked = 0
    for name, sha in listed.items():
        if names is not None and name not in names:
            continue
        path = folder / name
        if not path.is_file():
            raise _fail(str(path), "is listed in README.md's file list but missing", "re-download the folder")
        if sha256_file(path) != sha:
            raise _fail(str(path), f"does not match the sha256 in README.md ({sha[:12]}...): the file is damaged "
                        "or was changed after the card was written", "re-download or re-save the folder")
        checked += 1
    return checked


def verify_checkpoint(folder: str | Path) -> dict:
    """Every check, from the files alone: config, headers, layer data, card sha256s. Returns what was checked."""
    folder = Path(folder)
    config = read_config(folder)
    qc = config.get("quantization_config")
    files = weight_files(folder)
    report = {"path": str(folder), "files": len(files), "layers": 0, "sha256_checked": 0}
    if qc and qc.get("quant_method") == "hfq":
        cfg = hfq_config(folder, qc)
        tensors, layers = verify_headers(folder, cfg, config, files)
        check_data_files(folder, cfg, tensors, layers)
        report["layers"] = len(layers)
        report["hfq"] = True
    else:
        for f in files:
            read_safetensors_header(f)
    report["sha256_checked"] = verify_files(folder)
    return report


def verify_loading(model: torch.nn.Module, cfg: HfqConfig, checkpoint_files, tied_keys=(), ignore=()) -> None:
    """Before a saved checkpoint's weights load into `model` (its quantized layers already swapped in, on meta):
    the shards are safetensors, their headers match the layout, every layer of the model and every other tensor
    it expects is stored (nothing is left "newly initialized"), and the weight files match the card's sha256s.
    tied_keys: keys transformers fills by tying; ignore: regexes of keys the model may lack."""
    from .nn import HfqLinear

    files = [Path(f) for f in (checkpoint_files or [])]
    if not files:
        raise ValueError("this hfq checkpoint has no weight files to check; re-save it with `hfq quantize`.")
    pickles = [f for f in files if f.suffix != ".safetensors"]
    if pickles:
        raise ValueError(f"{pickles[0]} is not a .safetensors file; hfq loads safetensors only, never pickle. "
                         "Re-save the checkpoint with `hfq quantize`.")
    folder = files[0].parent
    tensors, layers = verify_headers(folder, cfg, model.config.to_dict(), files)
    modules = {n: m for n, m in model.named_modules() if isinstance(m, HfqLinear)}
    for name, m in modules.items():
        if layers.get(name) != [m.out_features, m.in_features]:
            raise _fail(f"layer {name!r}", f"the model has it as [{m.out_features}x{m.in_features}] but the "
                        f"checkpoint's hfq_layers says {layers.get(name)}", "re-save it or restore config.json")
    extra = sorted(set(layers) - set(modules))
    if extra:
        raise _fail(f"layer {extra[0]!r}", "the checkpoint stores it quantized but config.json's "
                    "quantization_config would load it as a float layer", "restore config.json")
    patterns = [re.compile(p) for p in ignore]
    tied = set(tied_keys)
    for key, t in model.state_dict(keep_vars=True).items():
        if key not in tensors:
            if key not in tied and not any(p.search(key) for p in patterns):
                raise _fail(f"{folder}", f"tensor {key!r} is missing from the checkpoint (it would load as "
                            "uninitialized memory)")
            continue
        f, entry = tensors[key]
        stored_float = entry["dtype"] in _FLOAT_DTYPES
        if tuple(entry["shape"]) != tuple(t.shape) or stored_float != t.is_floating_point():
            raise _fail(f"{f.name}: tensor {key!r}", f"is {entry['dtype']} {entry['shape']}, the model needs "
                        f"{'a float' if t.is_floating_point() else 'an integer'} tensor of shape {list(t.shape)}")
    verify_files(folder, [f.name for f in files])
