"""HfqQuantizer: every transformers hook hfq implements. The hook API changes between releases; keep its
calls here. Checked against transformers 5.23 (see README, 'How loading works')."""

from __future__ import annotations

import importlib.util
import json
import logging
import types

import torch
from transformers import AutoTokenizer
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

from .config import CALIBRATED, FORMAT_VERSION, QUANT_METHOD, HfqConfig
from .algorithms.calibration import load_importance
from .gguf import mixes
from .integration import (HfqQuantize, calibrate_model, convertible_linears, dequantize_model, plan_embeddings,
                          quantize_embeddings, replace_embeddings, replace_with_hfq_linear, tie_quantized_head,
                          tied_head_extras)
from .nn import HfqLinear
from .nn.counting import num_parameters
from .verify import check_model_data, verify_loading

logger = logging.getLogger(__name__)


class HfqQuantizer(HfQuantizer):
    requires_calibration = False

    def validate_environment(self, device_map=None, **kwargs):
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError(
                "hfq cannot offload quantized layers to disk (device_map has 'disk' entries); give more CPU memory "
                "via max_memory, or use a smaller model."
            )

    def update_dtype(self, dtype):
        return dtype if dtype is not None else torch.float32

    def _process_model_before_weight_loading(self, model, keep_in_fp32_modules=None, **kwargs):
        cfg = self.quantization_config
        skip = self.get_modules_to_not_convert(model, cfg.modules_to_not_convert, model._keep_in_fp32_modules)
        self.modules_to_not_convert = skip
        self.embedding_types = plan_embeddings(model, cfg)
        if cfg.method in CALIBRATED and not self.pre_quantized:
            return   # the float weights load as they are; calibration (and the embeddings) after loading
        self._replace_layers(model, cfg, skip)
        replace_embeddings(model, self.embedding_types)
        cfg.embedding_types = self.embedding_types or None
        if self.pre_quantized:   # nothing damaged or mismatched may load as uninitialized memory
            tied = getattr(model, "all_tied_weights_keys", None) or {}
            verify_loading(model, cfg, kwargs.get("checkpoint_files"), tied_keys=tied,
                           ignore=getattr(model, "_keys_to_ignore_on_load_missing", None) or ())

    def _replace_layers(self, model, cfg, skip) -> None:
        if cfg.layout != "gguf":
            replace_with_hfq_linear(model, cfg, skip, pre_quantized=self.pre_quantized)
            return
        layers = convertible_linears(model, skip)
        if self.pre_quantized:
            if cfg.tensor_types is None:
                raise ValueError("this gguf checkpoint's quantization_config has no tensor_types; it was not written "
                                 "by hfq or was edited. Re-quantize from the float model.")
            types = cfg.tensor_types
        else:
            shape = mixes.model_shape(model.config)
            types = mixes.plan(cfg.quant_type, layers, shape, cfg.has_importance)
            types.update({k: v for k, v in (cfg.tensor_types or {}).items() if k in layers})
        importance = None
        if cfg.has_importance and not self.pre_quantized:
            importance = load_importance(cfg.importance)
            missing = [n for n, t in types.items() if t != "F16" and n not in importance]
            if missing:
                raise ValueError(f"importance has no vector for {len(missing)} layer(s), e.g. {missing[:3]}; collect "
                                 "it on this model (hfq importance) so every quantized layer is covered.")
        cfg.tensor_types = {n: types.get(n, "F16") for n in layers}
        replace_with_hfq_linear(model, cfg, skip, ggml_types=cfg.tensor_types, importance=importance,
                                pre_quantized=self.pre_quantized)

    def _process_model_after_weight_loading(self, model, **kwargs):
        cfg = self.quantization_config
        # push_to_hub and save_pretrained(push_to_hub=True) both upload through model._upload_modified_files after
        # writing transformers' default card; wrap it so the upload carries hfq's card instead.
        upload = model._upload_modified_files

        def upload_with_card(working_dir, repo_id, *args, **kw):
            from .publish.push import write_push_card

            write_push_card(working_dir, repo_id, model.config._name_or_path, cfg)
            return upload(working_dir, repo_id, *args, **kw)

        model._upload_modified_files = upload_with_card
        # transformers counts stored elements (packed uint8 codes) and special-cases only bitsandbytes' Params4bit;
        # this model's own num_parameters counts each quantized layer as its float weight, as bitsandbytes' does.
        model.num_parameters = types.MethodType(num_parameters, model)
        _enable_peft()
        if cfg.method not in CALIBRATED or self.pre_quantized:
            tie_quantized_head(model, self.embedding_types)
            if self.pre_quantized:   # after tying: the tied head's tensors are the embedding's
                check_model_data(model, cfg)
            _prepare_layers(model)
            return model

        def tokenizer():
            try:
                return AutoTokenizer.from_pretrained(model.name_or_path, trust_remote_code=False)
            except (OSError, ValueError) as e:
                raise ValueError(f"{cfg.method} needs the model's tokenizer to tokenize its calibration text, and "
                                 f"{model.name_or_path!r} has none ({e}). Save the tokenizer with the model, or "
                                 "pass dataset= as lists of token ids.") from e

        calibrate_model(model, cfg, self.modules_to_not_convert, tokenizer)
        quantize_embeddings(model, self.embedding_types)   # round to nearest, as llama.cpp does for these tables
        cfg.embedding_types = self.embedding_types or None
        _prepare_layers(model)
        return model

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if self.pre_quantized:
            return False
        module_name, _, tensor_name = param_name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            return False
        return isinstance(module, HfqLinear) and tensor_name == "weight"

    def get_quantize_ops(self):
        return HfqQuantize()

    def get_state_dict_and_metadata(self, model):
        cfg = self.quantization_config
        layers = {n: [m.out_features, m.in_features] for n, m in model.named_modules() if isinstance(m, HfqLinear)}
        extras = tied_head_extras(model, cfg.embedding_types or {})
        sd = None
        if extras:   # a tied head's other tensors are the embedding's: save them once
            sd = {k: v for k, v in model.state_dict().items() if k not in extras}
        # each layer's GGML type too: two types of one byte size would otherwise load as each other
        types = {n: m.ggml_type for n, m in model.named_modules() if isinstance(m, HfqLinear) and m.ggml_type}
        return sd, {"hfq_format_version": str(FORMAT_VERSION), "hfq_method": cfg.short_name(),
                    "hfq_layers": json.dumps(layers, separators=(",", ":")),
                    "hfq_tensor_types": json.dumps(types, separators=(",", ":"), sort_keys=True)}

    def is_serializable(self):
        return True

    @property
    def is_trainable(self) -> bool:
        # Adapters (QLoRA) train on every layout: the linear ops have an autograd formula for x, and the packed
        # weights stay frozen. Training the packed weights themselves (QAT) is not supported.
        return True

    def _dequantize(self, model, dtype=None):
        if isinstance(dtype, str):  # config.dtype is a string after save_pretrained
            dtype = getattr(torch, dtype)
        n = dequantize_model(model, dtype or torch.float32)
        logger.info("hfq: dequantized %d layers", n)
        return model


def _prepare_layers(model) -> None:
    """Derived buffers and native kernels for every quantized layer, once, before the first forward."""
    for m in model.modules():
        if isinstance(m, HfqLinear):
            m.prepare()


def _enable_peft() -> None:
    """Route peft's LoRA to hfq's layer (hfq/lora.py) when peft is installed, so QLoRA needs no extra call."""
    if importlib.util.find_spec("peft") is None:
        return
    try:   # a peft whose internals changed must not stop inference: LoRA is what it breaks, so say that once
        from .lora import enable

        enable()
    except RuntimeError as e:
        if not _peft_warned:
            logger.warning("%s The model loads and runs; LoRA adapters on its quantized layers will not.", e)
            _peft_warned.append(True)


_peft_warned: list = []


def register() -> None:
    """Register HfqConfig and HfqQuantizer under quant_method 'hfq'. Safe to call more than once."""
    if AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not HfqConfig:
        AUTO_QUANTIZATION_CONFIG_MAPPING.pop(QUANT_METHOD, None)  # a stale class from a reloaded module
        register_quantization_config(QUANT_METHOD)(HfqConfig)
    if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not HfqQuantizer:
        AUTO_QUANTIZER_MAPPING.pop(QUANT_METHOD, None)
        register_quantizer(QUANT_METHOD)(HfqQuantizer)


def verify_model_structure(folder) -> int:
    """What a load of an hfq checkpoint checks before reading weights (hfq.verify.verify_loading), without loading
    them: the model is built from config.json on the meta device. Returns the number of quantized layers."""
    from pathlib import Path

    from transformers import AutoConfig, AutoModelForCausalLM

    from .checkpoint import hfq_config, weight_files

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    cfg = hfq_config(folder, config.quantization_config if isinstance(config.quantization_config, dict)
                     else config.quantization_config.to_dict())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    quantizer = HfqQuantizer(cfg, pre_quantized=True)
    quantizer.preprocess_model(model, dtype=model.dtype, device_map=None,
                               checkpoint_files=[str(f) for f in weight_files(folder)], use_kernels=False)
    return sum(isinstance(m, HfqLinear) for m in model.modules())
