"""HfqEmbedding: an embedding table stored in an hfq layout; a lookup decodes only the rows it reads.

The table's layout tensors are those of an HfqLinear of shape [num_embeddings, embedding_dim] (int8 per row, or
GGML blocks), so a tied output head is an HfqLinear sharing these very tensors: one packed table serves both.
"""

from __future__ import annotations

import torch

from ..kernels import ops
from .linear import HfqLinear

# embeddings= values that name a storage: per-row int8, or a GGML type
INT8 = "int8"


def layout_of(kind: str) -> dict:
    """HfqLinear/HfqEmbedding layout kwargs for an embedding storage ('int8' or a GGML type name)."""
    if kind == INT8:
        return dict(layout="int", bits=8, group_size=-1, sym=True)
    return dict(layout="gguf", bits=0, group_size=0, ggml_type=kind)


class HfqEmbedding(HfqLinear):
    """nn.Embedding over a quantized table. `embed_scale` (Gemma's scaled embeddings) multiplies the rows, in the
    output dtype, as transformers' scaled embedding does."""

    def __init__(self, num_embeddings: int, embedding_dim: int, kind: str, padding_idx: int | None = None,
                 dtype: torch.dtype = torch.float32, embed_scale: float | None = None, device=None):
        super().__init__(embedding_dim, num_embeddings, False, dtype=dtype, device=device, **layout_of(kind))
        self.scalar_embed_scale = embed_scale   # a python float: the buffer is made on the table's device
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.kind = kind
        self.out_dtype = dtype
        self.register_buffer("embed_scale", None, persistent=False)

    def prepare(self) -> None:
        super().prepare()
        if self.scalar_embed_scale is not None and self.weight.device.type != "meta":
            self.register_buffer("embed_scale", torch.tensor(self.scalar_embed_scale, device=self.weight.device),
                                 persistent=False)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, storage={self.kind}, dtype={self.out_dtype}"

    def _apply(self, fn, recurse=True):
        # The layout keeps its dtypes (HfqLinear._apply); the rows come out in the dtype the model is cast to.
        self.out_dtype = fn(torch.empty(0, dtype=self.out_dtype)).dtype
        return super()._apply(fn, recurse)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            self.prepare()
        if self.layout == "gguf":
            y = ops.op("embedding_ggml")(self.weight, self.ggml_type, self.embedding_dim, ids, self.out_dtype)
        else:
            y = ops.op("embedding_int")(self.weight, self.scales, None, self.bits, ids, self.out_dtype)
        return y if self.embed_scale is None else y * self.embed_scale.to(y.dtype)

    def dequantized(self) -> torch.nn.Module:
        """A float nn.Embedding with the decoded table (and the same scaling)."""
        w = self.dequantize_weight(self.out_dtype)
        emb = torch.nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx,
                                 device=w.device, dtype=w.dtype, _weight=w)
        if self.scalar_embed_scale is None:
            return emb
        return _ScaledEmbedding(emb, torch.tensor(self.scalar_embed_scale, device=w.device))


class _ScaledEmbedding(torch.nn.Embedding):
    def __init__(self, emb: torch.nn.Embedding, scale: torch.Tensor):
        super().__init__(emb.num_embeddings, emb.embedding_dim, padding_idx=emb.padding_idx, _weight=emb.weight.data,
                         device=emb.weight.device, dtype=emb.weight.dtype)
        self.register_buffer("embed_scale", scale.detach().clone(), persistent=False)

    def forward(self, ids):
        return super().forward(ids) * self.embed_scale.to(self.weight.dtype)
