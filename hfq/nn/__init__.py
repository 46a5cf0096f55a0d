from .linear import HfqLinear

__all__ = ["HfqLinear"]
