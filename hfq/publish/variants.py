"""Named variants for `hfq push` and `hfq demo`: a short name -> what to make.

A "safetensors" variant is an hfq checkpoint (HfqConfig) published in its own repo {repo}-{name}. A "gguf"
variant is a llama.cpp file published, with its siblings, in the shared {repo}-GGUF repo (like gguf-my-repo).
Adding a method is one line in _SAFETENSORS. Calibrated variants draw 16 windows of 512 tokens (seed 0) from the
calibration text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import GGUF_QUANT_TYPES, HfqConfig

# Marks a setting that takes the calibration text (push/demo fill it in; the card describes it).
CALIBRATION = object()

_CAL = dict(dataset=CALIBRATION, n_samples=16, seq_len=512, seed=0)

_SAFETENSORS: dict[str, dict] = {
    "nf4": dict(method="nf4"),
    "nf4-dq": dict(method="nf4", double_quant=True),
    "nf4-dq-e8": dict(method="nf4", double_quant=True, embeddings="int8"),   # int8 embedding and head
    "fp4": dict(method="fp4"),
    "fp4-dq": dict(method="fp4", double_quant=True),
    "rtn-int4-g128": dict(method="rtn", bits=4, group_size=128),
    "rtn-int4-g128-asym": dict(method="rtn", bits=4, group_size=128, sym=False),
    "rtn-int3-g128": dict(method="rtn", bits=3, group_size=128),
    "rtn-int8": dict(method="rtn", bits=8, group_size=-1),
    "int8": dict(method="rtn", bits=8, group_size=-1),
    "gptq-int4-g128": dict(method="gptq", bits=4, group_size=128, **_CAL),
    "gptq-int4-g128-e8": dict(method="gptq", bits=4, group_size=128, embeddings="int8", **_CAL),
    "gptq-int4-g128-act": dict(method="gptq", bits=4, group_size=128, desc_act=True, **_CAL),
    "gptq-int3-g128": dict(method="gptq", bits=3, group_size=128, **_CAL),
    "awq-int4-g128": dict(method="awq", bits=4, group_size=128, sym=False, **_CAL),
    "gptq-nf4": dict(method="gptq", grid="nf4", **_CAL),
    "gptq-q3_k_m": dict(method="gptq", quant_type="Q3_K_M", **_CAL),
    "gptq-q4_k_m": dict(method="gptq", quant_type="Q4_K_M", **_CAL),
    # the GGUF k-quant mixes as hfq checkpoints (transformers loads them with `import hfq`)
    **{f"gguf-{qt.lower()}": dict(method="gguf", quant_type=qt) for qt in GGUF_QUANT_TYPES},
}

# GGUF files made by hfq.export_gguf from the float base, named by llama.cpp's file types.
_GGUF_FILES: tuple[str, ...] = GGUF_QUANT_TYPES

STANDARD = ("nf4", "nf4-dq", "nf4-dq-e8", "rtn-int4-g128", "gptq-int4-g128", "awq-int4-g128", "rtn-int8",
            "gguf-q3_k_m", "gptq-q3_k_m", "Q4_K_M", "Q8_0")


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str                       # "safetensors" or "gguf"
    settings: dict = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        return any(v is CALIBRATION for v in self.settings.values())

    def config(self, calibration=None) -> HfqConfig:
        """The HfqConfig of a safetensors variant; `calibration` replaces CALIBRATION markers."""
        if self.kind != "safetensors":
            raise ValueError(f"variant {self.name!r} is a GGUF file, not an hfq checkpoint; it has no HfqConfig.")
        if self.calibrated and calibration is None:
            raise ValueError(f"variant {self.name!r} needs calibration data; pass calibration text.")
        text = [calibration] if isinstance(calibration, str) else calibration   # one text, not a file path
        return HfqConfig(**{k: (text if v is CALIBRATION else v) for k, v in self.settings.items()})

    def repo_suffix(self) -> str:
        return "GGUF" if self.kind == "gguf" else self.name


def names() -> list[str]:
    return [*_SAFETENSORS, *_GGUF_FILES]


def get(name: str) -> Variant:
    """The variant called `name`; a ValueError names the allowed ones."""
    if name in _SAFETENSORS:
        return Variant(name, "safetensors", dict(_SAFETENSORS[name]))
    if name in _GGUF_FILES:
        return Variant(name, "gguf", {"quant_type": name})
    if name.upper() in GGUF_QUANT_TYPES:
        return Variant(name.upper(), "gguf", {"quant_type": name.upper()})
    raise ValueError(f"unknown variant {name!r}; allowed: {', '.join(names())}.")


def parse(spec: str | list[str]) -> list[Variant]:
    """'nf4,rtn-int4-g128' or a list -> variants, in order, without duplicates."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("no variants given; pass e.g. --variants nf4,rtn-int4-g128.")
    if len(set(items)) != len(items):
        raise ValueError(f"variants {items} name one variant twice; list each once.")
    out = [get(s) for s in items]
    if len({v.name for v in out}) != len(out):
        raise ValueError(f"variants {items} name one GGUF type twice; list each once.")
    return out
