"""llama.cpp's per-tensor type choice for a file type (src/llama-quant.cpp, llama_tensor_get_type).

Dense decoder models only (hfq.architectures.MIXES): the rules that depend on experts or on Falcon never fire
for them. Tensors are named as in GGUF (blk.N.attn_v.weight); hfq.gguf.names maps transformers names onto those.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..architectures import MIXES
from ..formats.ggml_types import FILE_TYPES, ggml_type
from .names import gguf_name
# Where a shape does not divide the block size (llama.cpp's tensor_type_fallback).
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


@dataclass(frozen=True)
class ModelShape:
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    tied_embeddings: bool

    @property
    def n_gqa(self) -> int:
        return self.n_head // max(1, self.n_head_kv)

    @property
    def is_70b(self) -> bool:   # llama.cpp's LLM_TYPE_70B: an 80-layer llama with grouped KV heads
        return self.arch in ("llama", "mistral") and self.n_layer == 80 and self.n_head != self.n_head_kv


def model_shape(config) -> ModelShape:
    """Read what the rules need from a transformers config (text config for multimodal models)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    arch = getattr(config, "model_type", None)
    if arch not in MIXES:
        raise ValueError(f"GGUF mixes are defined for model_type in {', '.join(MIXES)}; got {arch!r}. "
                         "Use a plain type (Q4_0, Q8_0, ...) via tensor_types, or another hfq method.")
    n_head = text.num_attention_heads
    return ModelShape(arch=arch, n_layer=text.num_hidden_layers, n_head=n_head,
                      n_head_kv=getattr(text, "num_key_value_heads", None) or n_head,
                      tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)))


def _more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _layer(name: str) -> int:
    return int(name.split(".")[1])


def _rule(ftype: str, default: str, name: str, ncols: int, shape: ModelShape, has_importance: bool) -> str:
    n = shape.n_layer
    is_output = name == "output.weight" or (shape.tied_embeddings and name == "token_embd.weight")
    if is_output:
        if ncols % ggml_type(default).block:
            return "Q8_0"
        return "Q6_K" if default != "Q8_0" else "Q8_0"
    if name == "token_embd.weight":
        return default
    role = name.split(".")[2] if name.startswith("blk.") else ""
    if role == "attn_v":
        i = _layer(name)
        t = default
        if ftype == "Q2_K":
            t = "Q4_K" if shape.n_gqa >= 4 else "Q3_K"
        elif ftype == "Q3_K_M":
            t = "Q5_K" if i < 2 else "Q4_K"
        elif ftype == "Q3_K_L":
            t = "Q5_K"
        elif ftype in ("Q4_K_M", "Q5_K_M") and _more_bits(i, n):
            t = "Q6_K"
        elif ftype == "Q4_K_S" and i < 4:
            t = "Q5_K"
        if shape.is_70b and t in ("Q3_K", "Q4_K"):
            t = "Q5_K"
        return t
    if role == "ffn_down":
        i = _layer(name)
        if ftype == "Q2_K":
            return "Q3_K"
        if ftype == "Q3_K_M":
            return "Q5_K" if i < n // 16 else "Q4_K"
        if ftype == "Q3_K_L":
            return "Q5_K"
        if ftype == "Q4_K_M":
            return "Q6_K" if _more_bits(i, n) else default
        if ftype == "Q5_K_M":
            return "Q6_K" if _more_bits(i, n) else default
        if ftype == "Q4_K_S":
            return "Q5_K" if i < n // 8 else default
        if ftype in ("Q4_0", "Q5_0") and has_importance and i < n // 8:
            return "Q4_1" if ftype == "Q4_0" else "Q5_1"
        return default
    if role == "attn_output":
        return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ftype, default)
    return default


def fallback(t: str, ncols: int) -> str:
    """llama.cpp's shape fallback: a smaller block type, or F16 if even 32 does not divide the row."""
    if ncols % ggml_type(t).block:
        t = _FALLBACK.get(t, t)
        if ncols % ggml_type(t).block:
            return "F16"
    return t


def tensor_type(quant_type: str, name: str, ncols: int, shape: ModelShape, has_importance: bool = False) -> str:
    """The GGML type llama-quantize gives tensor `name` (GGUF naming, row length ncols) in a quant_type file."""
    if quant_type not in FILE_TYPES:
        raise ValueError(f"quant_type={quant_type!r} is not a llama.cpp file type hfq makes; "
                         f"allowed: {', '.join(FILE_TYPES)}.")
    default = FILE_TYPES[quant_type][1]
    return fallback(_rule(quant_type, default, name, ncols, shape, has_importance), ncols)


def plan(quant_type: str, layers: dict[str, int], shape: ModelShape, has_importance: bool = False) -> dict[str, str]:
    """{module name: GGML type} for modules {name: in_features}. Modules without a GGUF role get the default
    type (with the shape fallback)."""
    default = FILE_TYPES[quant_type][1]
    out = {}
    for module, ncols in layers.items():
        g = gguf_name(module, shape.arch, shape.n_layer, shape.tied_embeddings)
        out[module] = (tensor_type(quant_type, g, ncols, shape, has_importance) if g
                       else fallback(default, ncols))
    return out
