"""Model surgery for transformers models: swap nn.Linear for HfqLinear, quantize tensors as they load,
and undo it. Version-specific hook calls stay in quantizer.py; this module uses stable transformers APIs.

It also holds the transformers calls of the layers above it (publish, space) and beside it (embedded): loading a
tokenizer or a causal LM without remote code, and a streamer for generate(), so that only the integration layer
imports transformers (tests/test_packaging.py)."""

from __future__ import annotations

import logging
import re

import torch
from torch import nn
from transformers.core_model_loading import ConversionOps
from transformers.quantizers.quantizers_utils import get_module_from_name, should_convert_module

from .algorithms import quantize_layer_weight
from .algorithms.calibrated import awq_block_step, gptq_block, install
from .algorithms.calibration import calibration_windows, dataset_texts
from .algorithms.ggml_quant import quantize_rows
from .algorithms.grids import make_grid
from .algorithms.layerwise import calibrate_blocks, find_blocks, onload_block
from .checkpoint import NO_REMOTE_CODE
from .config import HfqConfig
from .formats.layouts import check_shape
from .gguf import mixes
from .nn import HfqEmbedding, HfqLinear
from .nn.embedding import INT8, layout_of

logger = logging.getLogger(__name__)


def layer_kwargs(config: HfqConfig) -> dict:
    kw = dict(layout=config.layout, bits=config.bits, group_size=config.group_size,
              sym=bool(config.sym), double_quant=bool(config.double_quant))
    if config.act_order:
        kw["act_order"] = True
    return kw


def convertible_linears(model: nn.Module, modules_to_not_convert: list[str] | None) -> dict[str, int]:
    """{name: in_features} of the nn.Linear layers hfq would quantize."""
    return {name: m.in_features for name, m in model.named_modules()
            if type(m) is nn.Linear and should_convert_module(name, modules_to_not_convert)}


def replace_with_hfq_linear(model: nn.Module, config: HfqConfig, modules_to_not_convert: list[str] | None,
                            ggml_types: dict[str, str] | None = None,
                            importance: dict[str, torch.Tensor] | None = None,
                            pre_quantized: bool = False) -> list[str]:
    """Replace every convertible nn.Linear (on the meta device) with an empty HfqLinear; return their names.
    pre_quantized: the checkpoint already holds the layouts (only the log line differs).

    gguf: ggml_types gives each layer's GGML type (F16 keeps the layer in float); importance, if given, is
    attached to the layers it names for the weighted encoders."""
    replaced = []
    kwargs = layer_kwargs(config)
    for name in convertible_linears(model, modules_to_not_convert):
        module = model.get_submodule(name)
        if ggml_types is not None:
            kwargs["ggml_type"] = ggml_types.get(name, "F16")
            if kwargs["ggml_type"] == "F16":
                continue
        try:
            with torch.device("meta"):
                new = HfqLinear(module.in_features, module.out_features, module.bias is not None,
                                dtype=module.weight.dtype, **kwargs)
        except ValueError as e:
            raise ValueError(f"cannot quantize layer {name!r} [{module.out_features}x{module.in_features}]: {e}") from e
        if importance is not None and name in importance:
            imp = importance[name]
            if imp.numel() != module.in_features:
                raise ValueError(f"importance for {name!r} has {imp.numel()} values; the layer has "
                                 f"{module.in_features} input columns. It was collected on another model.")
            new.importance = imp
        model.set_submodule(name, new)
        replaced.append(name)
    if not replaced:
        raise ValueError(
            f"no nn.Linear layer of {type(model).__name__} was left to quantize with {config.short_name()} "
            f"(modules_to_not_convert={modules_to_not_convert}); check the pattern list."
        )
    if pre_quantized:
        logger.info("hfq: loading %d quantized linear layers (%s)", len(replaced), config.short_name())
    else:
        logger.info("hfq: %d linear layers will be quantized with %s", len(replaced), config.short_name())
    return replaced


class HfqQuantize(ConversionOps):
    """Turns one float `...weight` tensor, as it is read from the checkpoint, into the layer's layout tensors."""

    def convert(self, input_dict, full_layer_name=None, model=None, **kwargs):
        result = {}
        for key, value in input_dict.items():
            if isinstance(value, list):
                value = value[0]
            module, tensor_name = get_module_from_name(model, key)
            prefix = key[: -len(tensor_name)]
            if module.layout == "gguf":
                tensors = {"weight": quantize_rows(value, module.ggml_type, getattr(module, "importance", None))}
            else:
                tensors = quantize_layer_weight(value, module.layout, module.bits, module.group_size,
                                                module.sym, module.double_quant)
            result.update({prefix + n: t for n, t in tensors.items()})
            module._is_hf_initialized = True
        return result


def embedding_modules(model: nn.Module) -> tuple[str | None, str | None, bool]:
    """(input embedding name, output head name, whether they are tied) of a transformers model."""
    names = {id(m): n for n, m in model.named_modules()}
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    e = names.get(id(emb)) if isinstance(emb, (nn.Embedding, HfqEmbedding)) else None
    h = names.get(id(head)) if isinstance(head, (nn.Linear, HfqLinear)) else None
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    tied = bool(getattr(text, "tie_word_embeddings", False) or getattr(model.config, "tie_word_embeddings", False))
    return e, h, tied and e is not None and h is not None


def plan_embeddings(model: nn.Module, config: HfqConfig) -> dict[str, str]:
    """{module name: storage ('int8' or a GGML type)} for the input embedding and the output head.

    embeddings=None follows llama.cpp's mix for GGUF layouts (token_embd / output types, Q8_0 where rows do not
    hold whole 256-blocks) and keeps float otherwise. A GGML type falls back as llama.cpp's does. A user's
    modules_to_not_convert wins; a tied pair is quantized together or not at all."""
    if config.embedding_types is not None:   # a saved checkpoint: rebuild what was made
        return dict(config.embedding_types)
    kind = config.embedding_default
    if kind == "float":
        return {}
    e, h, tied = embedding_modules(model)
    skip = config.modules_to_not_convert
    kept = [n for n in (e, h) if n is not None and skip is not None and not should_convert_module(n, skip)]
    if tied and kept:
        logger.info("hfq: the tied embedding and head stay float (modules_to_not_convert lists %s)", kept)
        return {}
    shape = mixes.model_shape(model.config) if kind == "mix" else None
    out = {}
    for name, role in ((e, "token_embd.weight"), (None if tied else h, "output.weight")):
        if name is None or name in kept:
            continue
        m = model.get_submodule(name)
        ncols = m.embedding_dim if isinstance(m, nn.Embedding) else m.in_features
        if kind == "mix":
            t = mixes.tensor_type(config.quant_type, role, ncols, shape)
        else:
            t = kind if kind == INT8 else mixes.fallback(kind, ncols)
            if t != kind:
                logger.info("hfq: %s rows of %d do not hold whole %s blocks; using %s (llama.cpp's fallback)",
                            name, ncols, kind, t)
        if t not in ("F16", "F32"):
            out[name] = t
    if tied and e in out:
        out[h] = out[e]
    return out


def replace_embeddings(model: nn.Module, types: dict[str, str]) -> None:
    """Swap the planned embedding/head modules for empty quantized ones on the meta device. A tied head shares
    the embedding's tensors: `weight` through transformers' own tying, the others through the tie map too."""
    e, h, tied = embedding_modules(model)
    for name, kind in types.items():
        old = model.get_submodule(name)
        try:
            with torch.device("meta"):
                if isinstance(old, nn.Embedding):
                    new = HfqEmbedding(old.num_embeddings, old.embedding_dim, kind, old.padding_idx,
                                       dtype=old.weight.dtype, embed_scale=getattr(old, "scalar_embed_scale", None))
                else:
                    new = HfqLinear(old.in_features, old.out_features, old.bias is not None, dtype=old.weight.dtype,
                                    **layout_of(kind))
        except ValueError as err:
            raise ValueError(f"cannot store {name!r} as {kind}: {err}") from err
        model.set_submodule(name, new)
    extra = tied_head_extras(model, types)
    if extra:   # e.g. the float16 row scales of an int8 table: never saved, re-tied after loading
        ignore = getattr(model, "_keys_to_ignore_on_load_missing", None) or set()
        model._keys_to_ignore_on_load_missing = set(ignore) | {f"^{re.escape(k)}$" for k in extra}
    if types:
        logger.info("hfq: embedding/head stored as %s", ", ".join(f"{n}={t}" for n, t in types.items()))


def quantize_embeddings(model: nn.Module, types: dict[str, str]) -> None:
    """Quantize loaded float embedding/head modules in place (calibrated methods, which load float weights)."""
    floats = {n: model.get_submodule(n).weight.detach() for n in types}
    replace_embeddings(model, types)
    e, h, tied = embedding_modules(model)
    for name, kind in types.items():
        if tied and name == h:
            continue
        m = model.get_submodule(name)
        w = floats[name]
        tensors = ({"weight": quantize_rows(w, kind, None)} if kind != INT8
                   else quantize_layer_weight(w.float(), "int", 8, -1, True, False))
        m.to_empty(device=w.device)
        m.load_quantized({k: v.to(w.device) for k, v in tensors.items()})
    if tied and h in types:
        head = model.get_submodule(h)
        head.to_empty(device=floats[h].device)
    tie_quantized_head(model, types)


def tied_head_extras(model: nn.Module, types: dict[str, str]) -> list[str]:
    """State-dict keys of a tied quantized head besides `weight` (which transformers ties and drops itself)."""
    e, h, tied = embedding_modules(model)
    if not (tied and e in types and h in types):
        return []
    return [f"{h}.{n}" for n in model.get_submodule(e).layout_names if n != "weight"]


def tie_quantized_head(model: nn.Module, types: dict[str, str]) -> None:
    """After loading: the tied head's tensors are the embedding's (one packed table serves both)."""
    e, h, tied = embedding_modules(model)
    if not (tied and e in types and h in types):
        return
    emb, head = model.get_submodule(e), model.get_submodule(h)
    for n in emb.layout_names:
        setattr(head, n, getattr(emb, n))


def dequantize_model(model: nn.Module, dtype: torch.dtype) -> int:
    """Replace each HfqLinear (and HfqEmbedding) with a float module holding its dequantized weight. Returns the
    layer count."""
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, HfqEmbedding):
            model.set_submodule(name, module.dequantized().to(dtype))
            count += 1
            continue
        if not isinstance(module, HfqLinear):
            continue
        w = module.dequantize_weight(dtype)
        lin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                        device=w.device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if module.bias is not None:
                lin.bias.copy_(module.bias.to(dtype))
        model.set_submodule(name, lin)
        count += 1
    return count


def layer_grids(model: nn.Module, config: HfqConfig, modules_to_not_convert) -> dict:
    """{module name: grid} for a calibrated method; for grid 'gguf' also fills config.tensor_types by the mix."""
    layers = convertible_linears(model, modules_to_not_convert)
    if config.grid == "gguf":
        types = mixes.plan(config.quant_type, layers, mixes.model_shape(model.config))
        types.update({k: v for k, v in (config.tensor_types or {}).items() if k in layers})
        config.tensor_types = {n: types.get(n, "F16") for n in layers}
        return {n: make_grid("gguf", ggml=t) for n, t in config.tensor_types.items() if t != "F16"}
    grid = make_grid(config.layout, config.bits, config.group_size, bool(config.sym), bool(config.double_quant),
                     act_order=config.act_order)
    for n, in_f in layers.items():
        m = model.get_submodule(n)
        try:
            check_shape(config.layout, m.out_features, in_f, config.bits, config.group_size)
            grid.group(in_f)
        except ValueError as e:
            raise ValueError(f"cannot quantize layer {n!r} [{m.out_features}x{in_f}]: {e}") from e
    return {n: grid for n in layers}


def calibrate_model(model: nn.Module, config: HfqConfig, modules_to_not_convert, tokenizer=None) -> None:
    """GPTQ or AWQ at load time: draw calibration windows, run the decoder block by block, and leave every
    quantized layer an HfqLinear. Records the calibration (never texts or paths) in config.calibration.
    tokenizer: a tokenizer, or a function returning one (called only when the dataset is text)."""
    items, description = dataset_texts(config.dataset)
    if callable(tokenizer) and not hasattr(tokenizer, "encode") and isinstance(items[0], str):
        tokenizer = tokenizer()
    windows = calibration_windows(items, config.n_samples, config.seq_len, config.seed, tokenizer)
    grids = layer_grids(model, config, modules_to_not_convert)
    if not grids:
        raise ValueError(f"no nn.Linear layer of {type(model).__name__} was left to quantize with "
                         f"{config.short_name()} (modules_to_not_convert={modules_to_not_convert}).")
    prefix, blocks = find_blocks(model)
    arch = getattr(model.config, "model_type", "")
    logger.info("hfq: %s on %d layers in %d blocks; calibration: %s, %d windows of %d tokens, seed %d",
                config.short_name(), len(grids), len(blocks), description, len(windows),
                windows[0].shape[1], config.seed)

    def process(i, block_prefix, block, inputs):
        mine = {n[len(block_prefix) + 1:]: g for n, g in grids.items() if n.startswith(block_prefix + ".")}
        if config.method == "gptq":
            return gptq_block(block, inputs, mine, config.damp_percent, config.desc_act, config.static_groups,
                              config.true_sequential, block_prefix, group_aware=bool(config.act_group_aware))
        return awq_block_step(block, inputs, mine, arch, block_prefix)

    was_training = model.training
    model.eval()
    try:
        calibrate_blocks(model, windows, process, desc=config.method)
    finally:
        model.train(was_training)
    rest = [n for n in grids if type(model.get_submodule(n)) is nn.Linear]
    for n in rest:   # layers outside the decoder blocks (e.g. an untied lm_head the user chose to quantize)
        parent, _, child = n.rpartition(".")
        onload_block(model, n, model.get_submodule(n))
        w = model.get_submodule(n).weight.detach().float()
        install(model.get_submodule(parent) if parent else model, child, grids[n], grids[n].rtn(w))
    if rest:
        logger.info("hfq: %d layer(s) outside the decoder blocks were rounded to nearest: %s", len(rest), rest[:4])
    config.calibration = {"dataset": description, "n_samples": len(windows), "seq_len": windows[0].shape[1],
                          "seed": config.seed}


# ---- transformers for the upper layers (imported on use, as those layers did) ----

def load_tokenizer(src, **kwargs):
    """AutoTokenizer for src, without remote code (gguf_file= reads a GGUF file's vocabulary)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(src, **kwargs, **NO_REMOTE_CODE)


def load_causal_lm(src, dtype: torch.dtype = torch.float32, gguf_file: str | None = None,
                   dequantize_gguf: bool = False):
    """AutoModelForCausalLM for src (a folder, a Hub id, or the folder of gguf_file) in dtype, without remote code.
    dequantize_gguf passes GgufConfig(dequantize=True): float weights from the GGUF file."""
    from transformers import AutoModelForCausalLM, GgufConfig

    kw = {} if gguf_file is None else {"gguf_file": gguf_file}
    if dequantize_gguf:
        kw["quantization_config"] = GgufConfig(dequantize=True)
    return AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kw, **NO_REMOTE_CODE)


def token_streamer(put, end):
    """A generate() streamer: put(ids) for each new step (the prompt comes first), end() once at the end."""
    from transformers.generation.streamers import BaseStreamer

    class _Streamer(BaseStreamer):
        def put(self, value):
            put(value)

        def end(self):
            end()

    return _Streamer()
