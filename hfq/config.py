"""HfqConfig: what the user asks for, validated at construction and JSON-native on disk."""

from __future__ import annotations

import copy
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

QUANT_METHOD = "hfq"
FORMAT_VERSION = 1

METHODS = ("rtn", "nf4", "fp4")
CODEBOOK_METHODS = ("nf4", "fp4")
RTN_BITS = (2, 3, 4, 5, 6, 7, 8)
RTN_GROUP_SIZES = (-1, 16, 32, 64, 128, 256, 512, 1024)
CODEBOOK_BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_GROUP_SIZE = {"rtn": 128, "nf4": 64, "fp4": 64}

_FIELDS = ("method", "bits", "group_size", "sym", "double_quant", "modules_to_not_convert")


def _allowed(values) -> str:
    return ", ".join(repr(v) for v in values)


class HfqConfig(QuantizationConfigMixin):
    """Quantization settings for hfq.

    method: "rtn" (integer round-to-nearest, 2-8 bits), "nf4" or "fp4" (4-bit codebooks, bitsandbytes layout).
    bits: integer width for rtn; 4 (or None) for nf4/fp4.
    group_size: rtn group along the input dimension (-1 = one group per output channel);
        for nf4/fp4 the absmax block size over the flattened weight.
    sym: rtn only. True uses the GPTQ symmetric grid (zero point 2**(bits-1)); False stores a zero point per group.
    double_quant: nf4/fp4 only. Quantizes the absmax constants to 8 bits (block 256) around their mean.
    modules_to_not_convert: module names or patterns kept in float. None keeps transformers' defaults
        (lm_head, tied and output embeddings); a list adds to nothing, so include them yourself.
    """

    def __init__(
        self,
        method: str = "nf4",
        bits: int | None = None,
        group_size: int | None = None,
        sym: bool | None = None,
        double_quant: bool | None = None,
        modules_to_not_convert: list[str] | None = None,
        **kwargs: Any,
    ):
        kwargs.pop("quant_method", None)
        version = kwargs.pop("hfq_format_version", FORMAT_VERSION)
        if kwargs:
            raise ValueError(
                f"HfqConfig got unknown argument(s) {sorted(kwargs)}; allowed: {', '.join(_FIELDS)}."
            )
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise ValueError(
                f"hfq_format_version={version!r} is not supported by this hfq (it reads 1..{FORMAT_VERSION}); "
                "upgrade hfq with `pip install -U hfq`."
            )
        self.quant_method = QUANT_METHOD
        self.hfq_format_version = FORMAT_VERSION
        self.method = method
        self.bits = bits
        self.group_size = group_size
        self.sym = sym
        self.double_quant = double_quant
        self.modules_to_not_convert = list(modules_to_not_convert) if modules_to_not_convert is not None else None
        self._validate_and_fill()

    def _validate_and_fill(self) -> None:
        m = self.method
        if m not in METHODS:
            raise ValueError(f"method={m!r} is not an hfq method; allowed: {_allowed(METHODS)}.")
        for name in ("bits", "group_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"{name}={v!r} must be an int.")
        for name in ("sym", "double_quant"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, bool):
                raise ValueError(f"{name}={v!r} must be True or False.")
        if self.group_size is None:
            self.group_size = DEFAULT_GROUP_SIZE[m]
        if m == "rtn":
            if self.bits is None:
                self.bits = 4
            if self.bits not in RTN_BITS:
                raise ValueError(f"bits={self.bits!r} is not supported by rtn; allowed: {_allowed(RTN_BITS)}.")
            if self.group_size not in RTN_GROUP_SIZES:
                raise ValueError(
                    f"group_size={self.group_size!r} is not supported by rtn; allowed: {_allowed(RTN_GROUP_SIZES)} "
                    "(-1 means one group per output channel)."
                )
            if self.double_quant:
                raise ValueError(
                    "double_quant=True does not apply to method='rtn' (it quantizes nf4/fp4 absmax constants); "
                    "use method='nf4' or drop double_quant."
                )
            self.double_quant = False
            if self.sym is None:
                self.sym = True
        else:
            if self.bits is None:
                self.bits = 4
            if self.bits != 4:
                raise ValueError(f"bits={self.bits!r} is not possible with method={m!r}; allowed: 4.")
            if self.group_size not in CODEBOOK_BLOCK_SIZES:
                raise ValueError(
                    f"group_size={self.group_size!r} is not a {m} block size; allowed: {_allowed(CODEBOOK_BLOCK_SIZES)}."
                )
            if self.sym is not None:
                raise ValueError(f"sym={self.sym!r} applies to method='rtn' only; {m} codebooks are fixed. Drop sym.")
            if self.double_quant is None:
                self.double_quant = False
        mods = self.modules_to_not_convert
        if mods is not None and not all(isinstance(x, str) for x in mods):
            raise ValueError(f"modules_to_not_convert={mods!r} must be a list of module names (str).")

    # JSON-native on disk: quant_method and the format version are always present.
    def to_dict(self) -> dict[str, Any]:
        d = {"quant_method": self.quant_method, "hfq_format_version": self.hfq_format_version}
        d.update({k: copy.deepcopy(getattr(self, k)) for k in _FIELDS})
        return d

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def short_name(self) -> str:
        """A name for file and repo suffixes, e.g. 'rtn-int4-g128-sym' or 'nf4-dq-b64'."""
        if self.method == "rtn":
            g = "pc" if self.group_size == -1 else f"g{self.group_size}"
            return f"rtn-int{self.bits}-{g}-{'sym' if self.sym else 'asym'}"
        return f"{self.method}{'-dq' if self.double_quant else ''}-b{self.group_size}"
