"""The GGML block types hfq reads and writes: ids, block sizes and byte sizes (ggml-common.h)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GGMLType:
    name: str
    type_id: int       # ggml_type enum value, as written in GGUF tensor infos
    block: int         # elements per block
    type_size: int     # bytes per block

    @property
    def bpw(self) -> float:
        return 8.0 * self.type_size / self.block


_TYPES = [
    GGMLType("F32", 0, 1, 4),
    GGMLType("F16", 1, 1, 2),
    GGMLType("Q4_0", 2, 32, 18),
    GGMLType("Q4_1", 3, 32, 20),
    GGMLType("Q5_0", 6, 32, 22),
    GGMLType("Q5_1", 7, 32, 24),
    GGMLType("Q8_0", 8, 32, 34),
    GGMLType("Q2_K", 10, 256, 84),
    GGMLType("Q3_K", 11, 256, 110),
    GGMLType("Q4_K", 12, 256, 144),
    GGMLType("Q5_K", 13, 256, 176),
    GGMLType("Q6_K", 14, 256, 210),
]
TYPES = {t.name: t for t in _TYPES}
BY_ID = {t.type_id: t for t in _TYPES}
QUANT_TYPES = tuple(t.name for t in _TYPES if t.block > 1)


def ggml_type(name: str) -> GGMLType:
    try:
        return TYPES[name.upper()]
    except KeyError:
        raise ValueError(
            f"GGML type {name!r} is not supported by hfq; allowed: {', '.join(TYPES)}."
        ) from None


def row_bytes(name: str, n_per_row: int) -> int:
    t = ggml_type(name)
    if n_per_row % t.block:
        raise ValueError(
            f"a row of {n_per_row} values is not a whole number of {t.name} blocks ({t.block} values each)."
        )
    return n_per_row // t.block * t.type_size


# llama.cpp file types (llama_ftype): name -> (ftype id, default tensor type). The _S/_M/_L mixes pick
# other types per tensor (hfq.gguf.mixes).
FILE_TYPES = {
    "Q4_0": (2, "Q4_0"), "Q4_1": (3, "Q4_1"), "Q8_0": (7, "Q8_0"), "Q5_0": (8, "Q5_0"), "Q5_1": (9, "Q5_1"),
    "Q2_K": (10, "Q2_K"), "Q3_K_S": (11, "Q3_K"), "Q3_K_M": (12, "Q3_K"), "Q3_K_L": (13, "Q3_K"),
    "Q4_K_S": (14, "Q4_K"), "Q4_K_M": (15, "Q4_K"), "Q5_K_S": (16, "Q5_K"), "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"),
}
