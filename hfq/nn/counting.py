"""Parameter counts in logical weights: a quantized layer counts as the float [out, in] matrix it encodes (plus its
bias), as bitsandbytes' 4-bit parameters do in transformers and peft. Scales, zeros, absmax and g_idx describe
the encoding; they are not parameters of the model the user trains or compares."""

from __future__ import annotations

from torch import nn

from .embedding import HfqEmbedding
from .linear import HfqLinear


def logical_sizes(model: nn.Module) -> dict[int, int]:
    """{id(parameter): logical element count} for the packed parameters of every HfqLinear (and HfqEmbedding) in
    model: the codes count out*in, the layer's other integer layout parameters 0. A tied head that shares its
    embedding's tensors maps the same ids, so it is counted once, as torch's parameters() yields it once."""
    sizes = {}
    for m in model.modules():
        if isinstance(m, HfqLinear):
            for name in m.layout_names:
                if isinstance(t := getattr(m, name), nn.Parameter):
                    sizes[id(t)] = 0
            sizes[id(m.weight)] = m.out_features * m.in_features
    return sizes


def num_parameters(model: nn.Module, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
    """transformers' PreTrainedModel.num_parameters, counting quantized layers by their logical weights. An
    HfqEmbedding is an embedding for exclude_embeddings. The packed weights never train, so only_trainable leaves
    them out, as it does bitsandbytes' (and a float model's frozen layers)."""
    skip = set()
    if exclude_embeddings:
        skip = {id(p) for m in model.modules() if isinstance(m, (nn.Embedding, HfqEmbedding))
                for p in m.parameters(recurse=False)}
    sizes = logical_sizes(model)
    return sum(sizes.get(id(p), p.numel()) for p in model.parameters()
               if id(p) not in skip and (p.requires_grad or not only_trainable))


def packed_shortfall(model: nn.Module) -> int:
    """How many elements a count of model.parameters()' numel() misses: logical minus stored, over packed ones."""
    sizes = logical_sizes(model)
    return sum(sizes[id(p)] - p.numel() for p in model.parameters() if id(p) in sizes)
