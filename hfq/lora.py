"""QLoRA on hfq models: peft's LoRA layer for HfqLinear, and its registration with peft's dispatcher.

peft has no public hook for third-party quantized layers: `LoraModel._create_new_module` tries a fixed list of
`dispatch_*` functions (bitsandbytes, GPTQ, AWQ, HQQ, torchao, ... then nn.Linear), and its one extension point,
`LoraConfig._register_custom_module`, is documented as experimental, subject to change, and lost on save (it must be
repeated on every config, including the one PeftModel.from_pretrained reads). `enable()` therefore wraps
`_create_new_module` once: an HfqLinear base layer gets `HfqLoraLinear`, everything else goes to peft's own
dispatchers unchanged. The quantizer calls it when it loads a model and peft is installed, so `get_peft_model`,
`PeftModel.from_pretrained` and `model.add_adapter` work with peft's public API. Every peft internal this relies on
is checked first (`_check_peft`): a peft that changed them gets one error naming its version (a warning
at model load, where inference goes on).

peft's parameter counts special-case only bitsandbytes' Params4bit; `enable()` also wraps
`get_nb_trainable_parameters` so that `print_trainable_parameters` counts packed layers by their logical weights.

The packed base stays frozen: the hfq linear ops carry an autograd formula for x only (hfq/kernels/ops.py).
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging

from .nn import HfqLinear
from .nn.counting import packed_shortfall

TESTED_PEFT = "0.21.2"


def _mismatch(what: str) -> RuntimeError:
    version = importlib.metadata.version("peft")
    return RuntimeError(
        f"hfq: peft {version} does not fit hfq's QLoRA support: {what}. peft has no public hook for third-party "
        f"quantized layers, so hfq uses these internals (docs/training.md); it is tested with peft {TESTED_PEFT}. "
        f"Install a peft that fits (pip install 'peft>=0.18,<={TESTED_PEFT}'), or uninstall peft if you do not "
        "train adapters.")


try:
    from peft import PeftMixedModel, PeftModel
    from peft.tuners.lora import LoraConfig, LoraModel
    from peft.tuners.lora.layer import Linear, LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer
except ImportError as e:
    raise _mismatch(str(e)) from e

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


def _check_peft() -> None:
    """The peft internals enable() and HfqLoraLinear rely on, as peft TESTED_PEFT defines them."""
    problems = []
    create = inspect.getattr_static(LoraModel, "_create_new_module", None)
    if not isinstance(create, staticmethod):
        problems.append("LoraModel._create_new_module is no longer a staticmethod")
    else:
        params = list(inspect.signature(create.__func__).parameters.values())
        if ([p.name for p in params[:3]] != ["lora_config", "adapter_name", "target"]
                or params[-1].kind is not inspect.Parameter.VAR_KEYWORD):
            problems.append(f"LoraModel._create_new_module{inspect.signature(create.__func__)} is not "
                            "(lora_config, adapter_name, target, **kwargs)")
    for cls, name in ((LoraLayer, "_get_in_out_features"), (LoraLayer, "resolve_lora_variant"),
                      (PeftModel, "get_nb_trainable_parameters"), (PeftMixedModel, "get_nb_trainable_parameters")):
        if not callable(getattr(cls, name, None)):
            problems.append(f"{cls.__name__}.{name} is gone")
    if problems:
        raise _mismatch("; ".join(problems))


def _logical_counts(original):
    @functools.wraps(original)
    def get_nb_trainable_parameters(self):
        trainable, total = original(self)
        return trainable, total + packed_shortfall(self)   # packed codes never train: only the total changes

    get_nb_trainable_parameters._hfq = True
    return get_nb_trainable_parameters


def enable() -> None:
    """Route HfqLinear targets of peft's LoRA to HfqLoraLinear and make peft's counts logical (once per process; a
    user's own `_register_custom_module` mapping for HfqLinear still wins)."""
    original = LoraModel._create_new_module
    if getattr(original, "_hfq", False):
        return
    _check_peft()

    def _create_new_module(lora_config, adapter_name, target, **kwargs):
        base = _base_of(target)
        if (isinstance(base, HfqLinear) and kwargs.get("parameter_name") is None
                and not _user_maps(lora_config, base)):
            kwargs.pop("parameter_name", None)
            return HfqLoraLinear(target, adapter_name, config=lora_config, **kwargs)
        return original(lora_config, adapter_name, target, **kwargs)

    _create_new_module._hfq = True
    LoraModel._create_new_module = staticmethod(_create_new_module)
    for cls in (PeftModel, PeftMixedModel):
        if not getattr(cls.get_nb_trainable_parameters, "_hfq", False):
            cls.get_nb_trainable_parameters = _logical_counts(cls.get_nb_trainable_parameters)
