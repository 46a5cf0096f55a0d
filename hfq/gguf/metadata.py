"""Architecture hyperparameters for GGUF, with the keys and values llama.cpp's converter writes for the
architectures hfq exports (hfq.architectures.GGUF_EXPORT), read from the transformers config dict."""

from __future__ import annotations

import logging

import gguf

from ..architectures import GGUF_EXPORT, architecture

logger = logging.getLogger(__name__)


def gguf_arch(model_type: str | None) -> gguf.MODEL_ARCH:
    if model_type not in GGUF_EXPORT:
        raise ValueError(f"model_type={model_type!r} cannot be exported to GGUF by hfq; supported: "
                         f"{', '.join(GGUF_EXPORT)}. Convert it with llama.cpp's convert_hf_to_gguf.py instead.")
    return gguf.MODEL_ARCH[architecture(model_type).gguf_arch]


def _find(hp: dict, keys: tuple[str, ...]):
    for k in keys:
        if hp.get(k) is not None:
            return hp[k]
    return None


def _rope(hp: dict) -> dict:
    rp = hp.get("rope_parameters") or {}
    if not rp and hp.get("rope_theta") is not None:     # older configs
        rp = dict(hp.get("rope_scaling") or {}, rope_theta=hp["rope_theta"])
    return rp


def add_hparams(w: gguf.GGUFWriter, hp: dict, model_type: str, file_type: int) -> None:
    """Hyperparameter keys in the order llama.cpp's converter adds them."""
    gemma = architecture(model_type).norm_plus_one
    w.add_block_count(hp["num_hidden_layers"])
    n_ctx = _find(hp, ("max_position_embeddings", "n_ctx", "n_positions", "max_length"))
    if n_ctx is not None:
        w.add_context_length(n_ctx)
    w.add_embedding_length(hp["hidden_size"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    if hp.get("num_key_value_heads") is not None:
        w.add_head_count_kv(hp["num_key_value_heads"])
    rp = _rope(hp)
    full = rp.get("full_attention", rp)
    kind, factor = full.get("rope_type"), full.get("factor")
    if kind == "linear" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(factor)
    elif kind == "yarn" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(full["original_max_position_embeddings"])
    elif kind not in (None, "default"):
        raise ValueError(f"rope_type={kind!r} is not supported by hfq's GGUF export (supported: default, linear, "
                         "yarn); convert this model with llama.cpp's convert_hf_to_gguf.py.")
    if full.get("rope_theta") is not None:
        w.add_rope_freq_base(full["rope_theta"])
    swa_theta = (rp.get("sliding_attention") or {}).get("rope_theta")
    if swa_theta is not None:
        w.add_rope_freq_base_swa(swa_theta)
    if hp.get("rms_norm_eps") is not None:
        w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    if hp.get("head_dim") is not None:
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
    w.add_file_type(file_type)
    if architecture(model_type).rotary_permute:   # the converter's LlamaModel writes these two
        w.add_vocab_size(hp["vocab_size"])
        w.add_rope_dimension_count(hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"])
    if gemma:
        _check_gemma3_layers(hp)
        if hp.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(hp["final_logit_softcapping"])
        if hp.get("sliding_window_pattern") != 1:
            w.add_sliding_window(hp["sliding_window"])


def _check_gemma3_layers(hp: dict) -> None:
    """llama.cpp runs Gemma-3 with every sixth layer global and the rest sliding; GGUF cannot say otherwise."""
    types = hp.get("layer_types")
    want = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(hp["num_hidden_layers"])]
    if types is not None and list(types) != want:
        raise ValueError(f"layer_types={types} differs from the pattern llama.cpp assumes for Gemma-3 (every sixth "
                         "layer full_attention, the others sliding_attention); such a model would run wrong in "
                         "llama.cpp, so hfq does not export it.")
