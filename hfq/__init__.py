"""hfq: quantize Hugging Face causal LMs to 2-8 bits from one API. `import hfq` registers it with transformers."""

from __future__ import annotations

from ._version import __version__
from .config import HfqConfig
from .gguf.export import export_gguf
from .quantizer import HfqQuantizer, register
from .standard import save_standard

register()

from .cards import make_card  # noqa: E402  (after register: these load models through transformers)
from .publish import evaluate, push_variants  # noqa: E402

__all__ = ["HfqConfig", "HfqQuantizer", "__version__", "evaluate", "export_gguf", "make_card", "push_variants",
           "register", "save_standard"]
