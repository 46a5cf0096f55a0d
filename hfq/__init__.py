"""hfq: quantize Hugging Face causal LMs to 2-8 bits from one API. `import hfq` registers it with transformers."""

from __future__ import annotations

from ._version import __version__
from .config import HfqConfig
from .quantizer import HfqQuantizer, register
from .standard import save_standard

register()

__all__ = ["HfqConfig", "HfqQuantizer", "__version__", "register", "save_standard"]
