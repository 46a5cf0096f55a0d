"""Write an hfq model with integer-grid layers as a standard GPTQ (v1) or AutoAWQ GEMM checkpoint, which
transformers with optimum + gptqmodel (and vLLM, TGI) load without hfq."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from .atomic import publish
from .formats.standard_layout import GPTQ_BITS, hfq_int_codes, pack_awq, pack_gptq_qweight, pack_gptq_qzeros
from .nn import HfqEmbedding, HfqLinear

logger = logging.getLogger("hfq")

FORMATS = ("gptq", "awq")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")


def _fail(name: str, problem: str, fix: str) -> ValueError:
    return ValueError(f"layer {name!r}: {problem}; {fix}")


def _int_layer(name: str, m: HfqLinear, fmt: str) -> dict:
    """The integer-grid meaning of one layer: codes [out, in], zeros [out, G], scales [out, G], g_idx [in]."""
    requant = "requantize with method='rtn' (or gptq/awq), or list it in modules_to_not_convert"
    if getattr(m, "scales", None) is None or m.layout in ("nf4", "fp4", "gguf"):
        raise _fail(name, f"layout={m.layout!r} has no {fmt.upper()} equivalent (only integer grids with scales and "
                          "zero points do)", requant)
    out_f, in_f, bits = m.out_features, m.in_features, m.bits
    g = in_f if m.group_size == -1 else m.group_size
    codes = hfq_int_codes(m.weight.detach().cpu(), bits, in_f)
    scales = m.scales.detach().cpu().to(torch.float16)
    zeros = (torch.full(scales.shape, 2 ** (bits - 1), dtype=torch.int64) if m.sym
             else m.zeros.detach().cpu().to(torch.int64))
    g_idx = getattr(m, "g_idx", None)
    if g_idx is None or not getattr(m, "act_order", True):
        g_idx = torch.arange(in_f, dtype=torch.int32) // g
    g_idx = g_idx.detach().cpu().to(torch.int32)
    if g_idx.shape != (in_f,) or int(g_idx.min()) < 0 or int(g_idx.max()) >= scales.shape[1]:
        raise _fail(name, f"g_idx must be [in_features={in_f}] with groups in [0, {scales.shape[1]})",
                    "re-save the layer from hfq's GPTQ")
    return {"codes": codes, "scales": scales, "zeros": zeros, "g_idx": g_idx, "bits": bits, "sym": m.sym,
            "group_size": m.group_size, "act_order": bool((g_idx != torch.arange(in_f) // g).any())}


def _check_layer(name: str, m: HfqLinear, q: dict, fmt: str) -> None:
    if fmt == "gptq":
        if q["bits"] not in GPTQ_BITS:
            raise _fail(name, f"bits={q['bits']} has no GPTQ layout (allowed {list(GPTQ_BITS)})",
                        "requantize with bits 2, 3, 4 or 8")
        if (m.in_features * q["bits"]) % 32 or (m.out_features * q["bits"]) % 32:
            raise _fail(name, f"[{m.out_features}, {m.in_features}] at {q['bits']} bits does not fill whole int32 "
                              "words", "list it in modules_to_not_convert")
        return
    if q["bits"] != 4:
        raise _fail(name, f"bits={q['bits']}: AWQ GEMM checkpoints are 4-bit only", "use format='gptq' or bits=4")
    if q["group_size"] == -1:
        raise _fail(name, "group_size=-1 (per channel): AWQ GEMM needs groups", "requantize with a group_size, e.g. 128")
    if q["act_order"]:
        raise _fail(name, "its g_idx reorders groups (desc_act) and AWQ has no g_idx", "use format='gptq'")
    if m.out_features % 8:
        raise _fail(name, f"out_features={m.out_features} is not a multiple of 8 (AWQ packs 8 per int32)",
                    "list it in modules_to_not_convert")


def _packed(q: dict, fmt: str) -> dict[str, torch.Tensor]:
    if fmt == "gptq":
        return {"qweight": pack_gptq_qweight(q["codes"], q["bits"]),
                "qzeros": pack_gptq_qzeros(q["zeros"].T.contiguous(), q["bits"]),
                "scales": q["scales"].T.contiguous(), "g_idx": q["g_idx"]}
    return {"qweight": pack_awq(q["codes"].T.contiguous()), "qzeros": pack_awq(q["zeros"].T.contiguous()),
            "scales": q["scales"].T.contiguous()}


def _block_prefix(model: nn.Module, names: list[str]) -> str:
    """The ModuleList holding the transformer blocks (e.g. model.layers) that every quantized layer lives in."""
    lists = {n for n, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and n}
    found = set()
    for name in names:
        parts = name.split(".")
        cands = [".".join(parts[:i]) for i in range(1, len(parts) - 1)
                 if parts[i].isdigit() and ".".join(parts[:i]) in lists]
        if not cands:
            raise _fail(name, "it is not inside the transformer blocks, and GPTQ loaders keep such layers in float",
                        "requantize with it in modules_to_not_convert (e.g. lm_head)")
        found.add(cands[-1])
    if len(found) != 1:
        raise ValueError(f"quantized layers live in several block lists {sorted(found)}; GPTQ checkpoints name one "
                         "(block_name_to_quantize). Keep the others in float with modules_to_not_convert.")
    return found.pop()


def _gptq_blocks(model: nn.Module, layers: dict[str, HfqLinear]) -> dict:
    prefix = _block_prefix(model, list(layers))
    suffix = {n: n[len(prefix) + 1:].split(".", 1)[1] for n in layers}
    kept = sorted(set(suffix.values()))
    floats = [n for n, mod in model.named_modules()
              if isinstance(mod, nn.Linear) and n.startswith(prefix + ".")]
    for n in floats:
        if any(n.endswith(s) for s in kept):
            raise _fail(n, "it is float while the same module in other blocks is quantized; GPTQ quantizes a module "
                           "in every block or in none", "quantize it too, or keep that module float in every block")
    out = {"block_name_to_quantize": prefix}
    if floats:
        out["modules_in_block_to_quantize"] = [kept]
    return out


def _uniform(layers: dict[str, dict], key: str, fmt: str):
    first_name, first = next(iter(layers.items()))
    for name, q in layers.items():
        if q[key] != first[key]:
            raise _fail(name, f"{key}={q[key]} differs from {first_name}'s {key}={first[key]}, and a {fmt.upper()} "
                              "checkpoint has one", "requantize with one setting for every layer")
    return first[key]


def quantization_config(fmt: str, model: nn.Module, layers: dict[str, HfqLinear], ints: dict[str, dict]) -> dict:
    bits, group_size = _uniform(ints, "bits", fmt), _uniform(ints, "group_size", fmt)
    if fmt == "gptq":
        sym = _uniform(ints, "sym", fmt)
        return {"quant_method": "gptq", "bits": bits, "group_size": group_size,
                "desc_act": any(q["act_order"] for q in ints.values()), "sym": sym, "true_sequential": True,
                "checkpoint_format": "gptq", "format": "gptq", "pack_dtype": "int32", "lm_head": False,
                **_gptq_blocks(model, layers)}
    floats = sorted(n for n, mod in model.named_modules() if isinstance(mod, nn.Linear))
    return {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": floats or None}


def _float_tensors(model: nn.Module, layers: dict[str, HfqLinear]) -> dict[str, torch.Tensor]:
    """Every state-dict entry outside the quantized layers' layouts (their bias included), tied copies dropped."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False)) if hasattr(model, "config") else False
    out, seen = {}, {}
    for key, t in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in layers and leaf != "bias":
            continue
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ptr in seen and t.numel():
            if tied:
                logger.debug("%s is tied to %s; written once", key, seen[ptr])
                continue
            t = t.clone()
        seen.setdefault(ptr, key)
        out[key] = t.detach().cpu().contiguous()
    return out


def _write_tensors(tensors: dict[str, torch.Tensor], folder: Path, max_shard_size: int | str) -> None:
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(tensors, max_shard_size=max_shard_size)
    for fname, keys in split.filename_to_tensors.items():
        save_file({k: tensors[k] for k in keys}, str(folder / fname), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))


def _copy_side_files(model: nn.Module, folder: Path, tokenizer, source_dir: str | Path | None) -> None:
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    src = source_dir or getattr(getattr(model, "config", None), "_name_or_path", None)
    if src and Path(src).is_dir():
        for name in TOKENIZER_FILES + ("generation_config.json",):
            if (Path(src) / name).is_file() and not (folder / name).exists():
                shutil.copy2(Path(src) / name, folder / name)
    elif source_dir is not None:
        raise ValueError(f"source_dir={str(source_dir)!r} is not a folder; pass the model's folder or tokenizer=.")


def save_standard(model: nn.Module, out_dir: str | Path, format: str = "gptq", *, tokenizer=None,
                  source_dir: str | Path | None = None, overwrite: bool = False,
                  max_shard_size: int | str = "5GB") -> Path:
    """Save `model` (hfq integer-grid layers) as a GPTQ v1 (format="gptq") or AutoAWQ GEMM (format="awq")
    checkpoint at out_dir, atomically. Tokenizer files come from `tokenizer`, `source_dir`, or the folder the
    model was loaded from. Raises ValueError naming the layer and the fix when a layer cannot be expressed."""
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise ValueError(f"format={format!r} is not a standard format hfq writes; allowed: {list(FORMATS)}.")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, HfqLinear)}
    if not layers:
        raise ValueError("the model has no hfq quantized layers; load it with quantization_config=HfqConfig("
                         "method='rtn', ...) or from an hfq checkpoint first.")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    ints = {}
    for name, m in layers.items():
        if isinstance(m, HfqEmbedding):
            raise _fail(name, f"it is a quantized embedding table, which {fmt.upper()} checkpoints cannot hold",
                        "requantize with embeddings='float' (hfq's default)")
        if m is head:
            raise _fail(name, f"it is the output head, which {fmt.upper()} loaders keep in float",
                        "requantize with it in modules_to_not_convert (hfq's default)")
        ints[name] = _int_layer(name, m, fmt)
        _check_layer(name, m, ints[name], fmt)
    qc = quantization_config(fmt, model, layers, ints)
    tensors = _float_tensors(model, layers)
    zero0 = 0
    for name, q in ints.items():
        tensors.update({f"{name}.{k}": v for k, v in _packed(q, fmt).items()})
        zero0 += int((q["zeros"] == 0).sum()) if fmt == "gptq" else 0
    if zero0:
        logger.warning("%d groups have zero point 0. GPTQ v1 stores zero - 1, which gptqmodel and transformers read "
                       "back exactly, but readers that add 1 per field without masking (older exllama kernels) "
                       "see 2**bits there.", zero0)
    config = model.config.to_dict()
    config["quantization_config"] = qc
    out = Path(out_dir)
    with publish(out, overwrite, flag="out_dir") as tmp:
        _write_tensors(tensors, tmp, max_shard_size)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _copy_side_files(model, tmp, tokenizer, source_dir)
    logger.info("saved %s checkpoint %s: %d quantized layers", fmt.upper(), out, len(layers))
    return out
