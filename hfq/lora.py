"""QLoRA on hfq models: peft's LoRA layer for HfqLinear, and its registration with peft's dispatcher.

peft has no public hook for third-party quantized layers: `LoraModel._create_new_module` tries a fixed list of
`dispatch_*` functions (bitsandbytes, GPTQ, AWQ, HQQ, torchao, ... then nn.Linear), and its one extension point,
`LoraConfig._register_custom_module`, is experimental and must be repeated on every config. `enable()` therefore
wraps `_create_new_module` once: an HfqLinear base layer gets `HfqLoraLinear`, everything else goes to peft's own
dispatchers unchanged. The quantizer calls it when it loads a model and peft is installed, so `get_peft_model`,
`PeftModel.from_pretrained` and `model.add_adapter` work with peft's public API.

The packed base stays frozen: the hfq linear ops carry an autograd formula for x only (hfq/kernels/ops.py).
"""

from __future__ import annotations

import logging

from peft.tuners.lora import LoraConfig, LoraModel
from peft.tuners.lora.layer import Linear
from peft.tuners.tuners_utils import BaseTunerLayer

from .nn import HfqLinear

logger = logging.getLogger(__name__)

# init_lora_weights values that only set A and B; the others (pissa, olora, loftq, corda, eva, ...) rewrite or read
# the base weight as a float matrix.
_PLAIN_INITS = (True, False, "gaussian")


class HfqLoraLinear(Linear):
    """peft's LoRA Linear around an HfqLinear: y = base(x) + B(A(dropout(x))) * scaling, base packed and frozen.

    merge() raises: adding the adapter to packed codes would round it away. Merge into the dequantized model."""

    def __init__(self, base_layer, adapter_name: str, config: LoraConfig, r: int = 0, lora_alpha: int = 1,
                 **kwargs) -> None:
        base = base_layer.get_base_layer() if isinstance(base_layer, BaseTunerLayer) else base_layer
        if config.init_lora_weights not in _PLAIN_INITS:
            raise ValueError(f"hfq: LoraConfig(init_lora_weights={config.init_lora_weights!r}) reads or rewrites the "
                             f"base weight, which is packed in {base.layout}; use init_lora_weights=True or "
                             "'gaussian', or dequantize the model first (model.dequantize()).")
        if config.fan_in_fan_out:   # as peft's own nn.Linear dispatcher does: HfqLinear computes x @ W.T
            logger.warning("hfq: fan_in_fan_out=True does not apply to HfqLinear; using False")
            config.fan_in_fan_out = False
        super().__init__(base_layer, adapter_name, config=config, r=r, lora_alpha=lora_alpha, **kwargs)

    def _get_in_out_features(self, module):
        # peft's generic lookup would warn "Unsupported layer type" (and probe other libraries' layer classes)
        if isinstance(module, HfqLinear):
            return module.in_features, module.out_features
        return super()._get_in_out_features(module)

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs):
        variant = super().resolve_lora_variant(config=config, **kwargs)
        if variant is not None:
            raise ValueError(f"hfq: the LoRA variant {type(variant).__name__} (DoRA, aLoRA, ...) needs the float base "
                             "weight; use plain LoRA on hfq models, or dequantize the model first "
                             "(model.dequantize()).")
        return None

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        base = self.get_base_layer()
        raise ValueError(
            f"hfq: cannot merge a LoRA adapter into packed {base.layout} weights (requantizing would round the adapter "
            "away). Merge it into the dequantized model: base = peft_model.unload().dequantize(); then "
            "PeftModel.from_pretrained(base, adapter_dir).merge_and_unload() gives a float model. Or keep the adapter "
            "unmerged: it runs on the packed model as it is.")

    def unmerge(self) -> None:
        return None   # nothing is ever merged

    def __repr__(self) -> str:
        return "hfq." + super().__repr__()


def _base_of(target):
    return target.get_base_layer() if isinstance(target, BaseTunerLayer) else target


def _user_maps(config, base) -> bool:
    custom = getattr(config, "_custom_modules", None) or {}
    return any(isinstance(base, k) for k in custom)


def enable() -> None:
    """Route HfqLinear targets of peft's LoRA to HfqLoraLinear (once per process; a user's own
    `_register_custom_module` mapping for HfqLinear still wins)."""
    original = LoraModel._create_new_module
    if getattr(original, "_hfq", False):
        return

    def _create_new_module(lora_config, adapter_name, target, **kwargs):
        base = _base_of(target)
        if (isinstance(base, HfqLinear) and kwargs.get("parameter_name") is None
                and not _user_maps(lora_config, base)):
            kwargs.pop("parameter_name", None)
            return HfqLoraLinear(target, adapter_name, config=lora_config, **kwargs)
        return original(lora_config, adapter_name, target, **kwargs)

    _create_new_module._hfq = True
    LoraModel._create_new_module = staticmethod(_create_new_module)
