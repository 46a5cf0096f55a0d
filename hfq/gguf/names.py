"""transformers tensor names -> GGUF tensor names, for every architecture in hfq.architectures.

The table is gguf-py's TensorNameMap, the one llama.cpp's converter uses. The output head is named by llama.cpp's
own rule: with tied embeddings llama.cpp reads it from token_embd, so its type is the embedding's."""

from __future__ import annotations

import re
from functools import lru_cache

import gguf

from ..architectures import architecture


@lru_cache(maxsize=None)
def tensor_name_map(model_type: str, n_layer: int) -> gguf.TensorNameMap:
    arch = architecture(model_type)
    if arch is None:
        raise ValueError(f"model_type={model_type!r} has no GGUF tensor names in hfq.")
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf_arch], n_layer)


def gguf_name(name: str, model_type: str, n_layer: int, tied: bool = False) -> str | None:
    """'model.layers.3.mlp.down_proj.weight' -> 'blk.3.ffn_down.weight' (a module name without .weight/.bias gets
    '.weight'), or None for a tensor GGUF has no name for."""
    if not name.endswith((".weight", ".bias")):
        name += ".weight"
    module, suffix = name.rsplit(".", 1)
    if module.rsplit(".", 1)[-1] == "lm_head":
        return f"{'token_embd' if tied else 'output'}.{suffix}"
    tmap = tensor_name_map(model_type, n_layer)
    found = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
    if found is None:   # the text model inside a multimodal one (Gemma3ForConditionalGeneration)
        text = _TEXT_MODEL.sub("model.", name)
        found = tmap.get_name(text, try_suffixes=(".weight", ".bias")) if text != name else None
    return found


_TEXT_MODEL = re.compile(r"^(?:model\.)?language_model\.(?:model\.)?")
