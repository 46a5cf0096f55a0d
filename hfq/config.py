"""HfqConfig: what the user asks for, validated at construction and JSON-native on disk."""

from __future__ import annotations

import copy
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from .formats.ggml_types import FILE_TYPES, QUANT_TYPES

QUANT_METHOD = "hfq"
FORMAT_VERSION = 1

METHODS = ("rtn", "nf4", "fp4", "gguf", "gptq", "awq")
CALIBRATED = ("gptq", "awq")
GRIDS = ("int", "nf4", "fp4", "gguf")
# The layout (hfq.formats.layouts) each grid's layers are stored in: int (codes, scales, zeros), nf4, fp4, gguf.
GRID_LAYOUT = {"int": "int", "nf4": "nf4", "fp4": "fp4", "gguf": "gguf"}
CODEBOOK_METHODS = ("nf4", "fp4")
RTN_BITS = (2, 3, 4, 5, 6, 7, 8)
RTN_GROUP_SIZES = (-1, 16, 32, 64, 128, 256, 512, 1024)
CODEBOOK_BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_GROUP_SIZE = {"rtn": 128, "nf4": 64, "fp4": 64}
GGUF_QUANT_TYPES = tuple(FILE_TYPES)

_FIELDS = ("method", "bits", "group_size", "sym", "double_quant", "modules_to_not_convert", "quant_type",
           "importance", "tensor_types", "embeddings", "embedding_types")
# embeddings=: the storage of the input embedding and the output head
EMBEDDINGS = ("float", "int8") + QUANT_TYPES
# gptq/awq only; `dataset` is never written to config.json (only the `calibration` record is)
_CAL_FIELDS = ("grid", "desc_act", "static_groups", "act_group_aware", "damp_percent", "true_sequential", "dataset",
               "n_samples", "seq_len", "seed", "calibration")
# unset n_samples/seq_len/damp_percent are chosen from the data at calibration time, act_group_aware from the grid
_CAL_DEFAULTS = {"desc_act": False, "static_groups": False, "true_sequential": True, "seed": 0}


GAR_DEFAULT = True   # act_group_aware when unset, where the grid allows it (benchmarks/calibration_sweep.py)


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
    quant_type: gguf only. A llama.cpp file type: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K_S/M/L, Q4_K_S/M,
        Q5_K_S/M or Q6_K. The _S/_M/_L mixes choose per-tensor types by llama.cpp's rules.
    importance: gguf only. Per-layer importance (mean squared input activation per column, llama.cpp's
        imatrix): a path to a safetensors file from `hfq.algorithms.calibration.save_importance`, or a dict
        {module name: tensor}. Saved checkpoints record only whether it was used (True).
    tensor_types: gguf only. {module name: GGML type}; filled in at quantization time and saved, so a reload
        builds the same layers. Given by hand, it overrides the mix for the layers it names.
    embeddings: the storage of the input embedding and the output head (lm_head): "float", "int8" (one float16
        scale per row) or a GGML type such as "Q6_K" or "Q8_0" (with llama.cpp's fallback where the row does not
        hold whole blocks). None: llama.cpp's mix for GGUF layouts (method="gguf" or a gguf grid), "float"
        otherwise. A tied head shares the embedding's packed table. modules_to_not_convert, when given, wins.
    embedding_types: {module name: "int8" or GGML type} of the quantized embedding/head; filled in at
        quantization time and saved.

    Calibrated methods, method="gptq" or "awq" (quantized at load time on calibration text, block by block):
    grid: what the weights are rounded onto. "int" (bits/group_size/sym as for rtn, the default), "nf4"/"fp4"
        (group_size is the absmax block, double_quant as for nf4), or "gguf" (quant_type, e.g. "Q4_K_M"; the
        default when quant_type is given). The result is stored in that grid's usual layout.
    desc_act: gptq only. Quantize columns in order of decreasing activation energy (act-order). With grid
        "int" the groups follow that order and each layer stores g_idx; static_groups=True keeps contiguous
        groups (needed for nf4/fp4). Not possible with GGUF blocks.
    act_group_aware: gptq only, without desc_act. Group-aware reordering (GAR, gptqmodel's default): groups are
        processed in decreasing order of their largest H_ii and columns within a group likewise, but each group
        keeps its contiguous columns, so no g_idx is stored and the layout is unchanged. int, nf4 and fp4 grids.
    damp_percent: gptq dampening, as a fraction of the Hessian's mean diagonal. None (default): 0.1 for a layer
        whose calibration tokens are fewer than 64 per input column, else 0.01 (hfq.algorithms.gptq.auto_damp).
    true_sequential: gptq; quantize q/k/v, then o, then gate/up, then down, recomputing inputs after each.
    dataset: calibration text: a list of strings (or of token-id lists), a local .txt or .jsonl ("text" field)
        file, or a local datasets.Dataset with a "text" column. None uses the built-in default (the first half of
        CPython's pydoc topics). Never saved; config.json gets `calibration`, a description without texts or paths.
    n_samples, seq_len, seed: how many token windows of how many tokens, drawn without overlap by seed.
        None (default): all of the data in at most 128 windows of at most 512 tokens (the text is one stream,
        so a list of short paragraphs fills windows); seed 0. See hfq.algorithms.calibration.plan_windows.
    """

    def __init__(
        self,
        method: str = "nf4",
        bits: int | None = None,
        group_size: int | None = None,
        sym: bool | None = None,
        double_quant: bool | None = None,
        modules_to_not_convert: list[str] | None = None,
        quant_type: str | None = None,
        importance: Any = None,
        tensor_types: dict[str, str] | None = None,
        embeddings: str | None = None,
        embedding_types: dict[str, str] | None = None,
        **kwargs: Any,
    ):
        kwargs.pop("quant_method", None)
        for name in _CAL_FIELDS:
            setattr(self, name, kwargs.pop(name, None))
        version = kwargs.pop("hfq_format_version", FORMAT_VERSION)
        if kwargs:
            raise ValueError(
                f"HfqConfig got unknown argument(s) {sorted(kwargs)}; allowed: {', '.join(_FIELDS + _CAL_FIELDS)}."
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
        self.quant_type = quant_type
        self.importance = importance
        self.tensor_types = dict(tensor_types) if tensor_types is not None else None
        self.embeddings = embeddings
        self.embedding_types = dict(embedding_types) if embedding_types is not None else None
        self._validate_and_fill()
        self._validate_embeddings()

    def _validate_embeddings(self) -> None:
        e = self.embeddings
        if e is not None:
            if not isinstance(e, str) or (e.lower() not in ("float", "int8") and e.upper() not in QUANT_TYPES):
                raise ValueError(f"embeddings={e!r} is not an embedding storage; allowed: {_allowed(EMBEDDINGS)} "
                                 "(or None: llama.cpp's mix for GGUF layouts, float otherwise).")
            self.embeddings = e.lower() if e.lower() in ("float", "int8") else e.upper()
        et = self.embedding_types
        if et is not None:
            bad = {k: v for k, v in et.items() if not isinstance(v, str) or (v != "int8" and v not in QUANT_TYPES)}
            if bad or not all(isinstance(k, str) for k in et):
                raise ValueError(f"embedding_types has unknown storage(s) {bad}; it is written by hfq, allowed values: "
                                 f"{_allowed(EMBEDDINGS[1:])}.")

    @property
    def embedding_default(self) -> str:
        """What embeddings=None means for this config: 'mix' (llama.cpp's types) for GGUF layouts, else 'float'."""
        if self.embeddings is not None:
            return self.embeddings
        return "mix" if self.layout == "gguf" else "float"

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
        if m in CALIBRATED:
            self._validate_calibrated()
            return
        given = [n for n in _CAL_FIELDS if getattr(self, n) is not None]
        if given:
            raise ValueError(f"{given[0]}={getattr(self, given[0])!r} applies to method='gptq' or 'awq' only; "
                             "drop it or use a calibrated method.")
        if m == "gguf":
            self._validate_gguf()
            return
        self._validate_and_fill_plain()

    def _validate_and_fill_plain(self) -> None:
        m = self.method
        for name in ("quant_type", "importance", "tensor_types"):
            if getattr(self, name) not in (None, False):
                raise ValueError(f"{name} applies to method='gguf' only; drop it or use method='gguf'.")
        self.importance = None
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
        self._validate_modules()

    def _validate_modules(self) -> None:
        mods = self.modules_to_not_convert
        if mods is not None and not all(isinstance(x, str) for x in mods):
            raise ValueError(f"modules_to_not_convert={mods!r} must be a list of module names (str).")

    def _validate_gguf(self) -> None:
        qt = self.quant_type
        if qt is None:
            raise ValueError(f"method='gguf' needs quant_type; allowed: {_allowed(GGUF_QUANT_TYPES)}.")
        if not isinstance(qt, str) or qt.upper() not in FILE_TYPES:
            raise ValueError(f"quant_type={qt!r} is not a GGUF type hfq makes; allowed: {_allowed(GGUF_QUANT_TYPES)}.")
        self.quant_type = qt.upper()
        for name in ("bits", "group_size", "sym", "double_quant"):
            if getattr(self, name) not in (None, False):
                raise ValueError(f"{name}={getattr(self, name)!r} does not apply to method='gguf'; the GGML type "
                                 "fixes bits and blocks. Drop it.")
        self.bits = self.group_size = self.sym = None
        self.double_quant = False
        imp = self.importance
        if imp is not None and not isinstance(imp, (str, dict, bool)) and not hasattr(imp, "__fspath__"):
            raise ValueError(f"importance={type(imp).__name__} must be a path to a safetensors file or a dict "
                             "{module name: tensor}.")
        if imp is False:
            self.importance = None
        tt = self.tensor_types
        if tt is not None:
            bad = {k: v for k, v in tt.items() if not isinstance(v, str) or v.upper() not in QUANT_TYPES + ("F16",)}
            if bad:
                raise ValueError(f"tensor_types has unknown GGML type(s) {bad}; allowed: "
                                 f"{_allowed(QUANT_TYPES + ('F16',))}.")
            self.tensor_types = {k: v.upper() for k, v in tt.items()}
        self._validate_modules()

    def _validate_calibrated(self) -> None:
        m = self.method
        for k, v in _CAL_DEFAULTS.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        for k in ("desc_act", "static_groups", "act_group_aware", "true_sequential"):
            if not isinstance(getattr(self, k), bool) and not (k == "act_group_aware" and self.act_group_aware is None):
                raise ValueError(f"{k}={getattr(self, k)!r} must be True or False.")
        for k, lo in (("n_samples", 1), ("seq_len", 8), ("seed", 0)):
            v = getattr(self, k)
            if v is None and k != "seed":
                continue   # chosen from the data at calibration time (hfq.algorithms.calibration.plan_windows)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{k}={v!r} must be an int >= {lo}.")
        d = self.damp_percent
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= 1):
            raise ValueError(f"damp_percent={d!r} must be a number in (0, 1], or None (the default) for hfq's "
                             "rule by data size (docs/gptq-awq.md).")
        self.damp_percent = None if d is None else float(d)
        if self.grid is None:
            self.grid = "gguf" if self.quant_type is not None else "int"
        if self.grid not in GRIDS:
            raise ValueError(f"grid={self.grid!r} is not a grid for method={m!r}; allowed: {_allowed(GRIDS)}.")
        if m == "awq" and (self.desc_act or self.static_groups or self.act_group_aware):
            raise ValueError("desc_act/static_groups/act_group_aware apply to method='gptq' only; AWQ keeps column "
                             "order. Drop them.")
        if self.act_group_aware and self.desc_act:
            raise ValueError("act_group_aware=True and desc_act=True are two column orders; pick one (act_group_aware "
                             "keeps contiguous groups and stores no g_idx).")
        if self.importance not in (None, False):
            raise ValueError(f"importance does not apply to method={m!r}: it calibrates from `dataset` itself. "
                             "Drop importance, or use method='gguf' with it.")
        self.importance = None
        if self.calibration is not None and not isinstance(self.calibration, dict):
            raise ValueError(f"calibration={self.calibration!r} is written by hfq; do not set it by hand.")
        if self.grid == "gguf":
            if self.act_group_aware:
                raise ValueError("act_group_aware=True cannot reorder GGUF blocks (GPTQ rounds a whole block at once); "
                                 "drop act_group_aware.")
            if self.desc_act:
                raise ValueError("desc_act=True cannot be used with GGUF blocks (a block is 32 or 256 contiguous "
                                 "columns); drop desc_act.")
            self.act_group_aware = False
            saved, self.method = self.method, "gguf"
            try:
                self._validate_gguf()
            finally:
                self.method = saved
            return
        if self.quant_type is not None or self.tensor_types is not None:
            raise ValueError(f"quant_type/tensor_types apply to grid='gguf'; grid={self.grid!r} was given.")
        saved, self.method = self.method, {"int": "rtn"}.get(self.grid, self.grid)
        try:
            self._validate_and_fill_plain()
        finally:
            self.method = saved
        if self.act_group_aware and self.group_size == -1:
            raise ValueError("act_group_aware=True needs groups (group_size > 0); group_size=-1 has one group per row.")
        if self.act_group_aware is None:   # GAR where it applies (gptqmodel's default too): docs/gptq-awq.md
            self.act_group_aware = (m == "gptq" and GAR_DEFAULT and self.group_size != -1 and not self.desc_act
                                    and not self.static_groups)
        if self.grid in ("nf4", "fp4") and self.desc_act and not self.static_groups:
            raise ValueError(f"desc_act=True with grid={self.grid!r} needs static_groups=True: the {self.grid} "
                             "layout has no g_idx to reorder groups.")

    @property
    def layout(self) -> str:
        """The layout the layers are stored in (HfqLinear.layout): int, nf4, fp4 or gguf."""
        if self.method in CALIBRATED:
            return GRID_LAYOUT[self.grid]
        return "int" if self.method == "rtn" else self.method

    @property
    def act_order(self) -> bool:
        """Whether integer layers carry g_idx (gptq desc_act without static groups)."""
        return self.method == "gptq" and self.grid == "int" and bool(self.desc_act) and not self.static_groups

    @property
    def has_importance(self) -> bool:
        return self.importance not in (None, False)

    # JSON-native on disk: quant_method and the format version are always present.
    def to_dict(self) -> dict[str, Any]:
        d = {"quant_method": self.quant_method, "hfq_format_version": self.hfq_format_version}
        d.update({k: copy.deepcopy(getattr(self, k)) for k in _FIELDS if k != "importance"})
        for k in ("embeddings", "embedding_types"):   # absent unless used, so older readers see no change
            if d[k] is None:
                d.pop(k)
        if self.method in CALIBRATED:
            d.update({k: copy.deepcopy(getattr(self, k)) for k in _CAL_FIELDS if k != "dataset"})
            d.pop("importance", None)
            if self.grid != "gguf":
                d.pop("quant_type", None)
                d.pop("tensor_types", None)
            return d
        if self.method == "gguf":
            d["importance"] = self.has_importance   # vectors and local paths never go into config.json
        else:
            for k in ("quant_type", "importance", "tensor_types"):
                d.pop(k, None)
        return d

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def short_name(self) -> str:
        """A name for file and repo suffixes, e.g. 'rtn-int4-g128-sym', 'nf4-dq-b64' or 'gptq-int4-g128-sym-act';
        quantized embeddings add '-e8' (int8) or '-eq6_k' (a GGML type)."""
        e = self.embeddings
        suffix = "" if e in (None, "float") else "-e8" if e == "int8" else f"-e{e.lower()}"
        return self._short_name() + suffix

    def _short_name(self) -> str:
        if self.method in CALIBRATED:
            if self.grid == "gguf":
                return f"{self.method}-{self.quant_type.lower()}"
            if self.grid == "int":
                g = "pc" if self.group_size == -1 else f"g{self.group_size}"
                act = "-act" if self.desc_act else "-gar" if self.act_group_aware else ""
                return f"{self.method}-int{self.bits}-{g}-{'sym' if self.sym else 'asym'}{act}"
            return f"{self.method}-{self.grid}{'-dq' if self.double_quant else ''}-b{self.group_size}"
        if self.method == "gguf":
            return f"gguf-{self.quant_type.lower()}{'-imat' if self.has_importance else ''}"
        if self.method == "rtn":
            g = "pc" if self.group_size == -1 else f"g{self.group_size}"
            return f"rtn-int{self.bits}-{g}-{'sym' if self.sym else 'asym'}"
        return f"{self.method}{'-dq' if self.double_quant else ''}-b{self.group_size}"
