from .embedding import HfqEmbedding
from .linear import HfqLinear

__all__ = ["HfqEmbedding", "HfqLinear"]
