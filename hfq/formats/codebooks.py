"""Fixed codebooks: NF4 and FP4 (as bitsandbytes defines them) and the signed 8-bit dynamic map
used to double-quantize absmax constants (QLoRA). Values are float32, indexed by the stored code."""

from __future__ import annotations

import functools

import torch

# NF4: quantiles of N(0, 1) normalized to [-1, 1], with an exact zero (QLoRA, appendix E).
NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip

# FP4 as bitsandbytes lays it out: code = sign bit (8) | 3-bit magnitude index, magnitudes scaled so max is 1.
_FP4_MAGNITUDES = (0.0, 1 / 192, 4 / 6, 6 / 6, 2 / 6, 3 / 6, 1 / 6, 1.5 / 6)
FP4_VALUES = _FP4_MAGNITUDES + tuple(-m for m in _FP4_MAGNITUDES)


def _dynamic_map_signed() -> list[float]:
    """Dynamic tree quantization (Dettmers et al., 8-bit optimizers), signed, 7 exponent levels.

    Level i (0..6) has 2**i linear fractions: the midpoints of linspace(0.1, 1, 2**i + 1), scaled by 10**(i-6),
    with both signs. Add 0 and 1: 2*127 + 2 = 256 values, sorted ascending.
    """
    values: list[float] = []
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1)  # float32, as the reference builds it
        mids = (edges[:-1] + edges[1:]) / 2.0
        scale = 10 ** (-6 + i)  # applied to the float32 tensor, so products round to float32
        values += (scale * mids).tolist() + (-scale * mids).tolist()
    values += [0.0, 1.0]
    return sorted(values)


CODEBOOKS = {"nf4": NF4_VALUES, "fp4": FP4_VALUES}


@functools.lru_cache(maxsize=None)
def _cached(name: str, device: str) -> torch.Tensor:
    if name == "dynamic8":
        vals = _dynamic_map_signed()
    else:
        vals = CODEBOOKS[name]
    return torch.tensor(vals, dtype=torch.float32, device=device)


def codebook(name: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The float32 code table for 'nf4', 'fp4' or 'dynamic8' on a device (cached, do not modify)."""
    if name not in CODEBOOKS and name != "dynamic8":
        raise ValueError(f"unknown codebook {name!r}; allowed: 'nf4', 'fp4', 'dynamic8'")
    return _cached(name, str(torch.device(device)))
