"""hfq: quantize Hugging Face causal LMs to 2-8 bits from one API. `import hfq` registers it with transformers."""

from __future__ import annotations

from ._version import __version__
from .config import HfqConfig
from .gguf.export import export_gguf
from .quantizer import HfqQuantizer, register

register()

__all__ = ["HfqConfig", "HfqQuantizer", "__version__", "export_gguf", "register"]
