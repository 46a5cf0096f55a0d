"""hfq: quantize Hugging Face causal LMs to 2-8 bits from one API. `import hfq` registers it with transformers.

Publishing (hfq.make_card, hfq.push_variants, hfq.publish) is imported on first use, not by `import hfq`.
hfq.local_model("gemma-3-270m") is the embedded model's local float folder (built once)."""

from __future__ import annotations

import importlib

from ._version import __version__
from .config import HfqConfig
from .quantizer import HfqQuantizer, register

register()

from .embedded import local_model  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .gguf.export import export_gguf  # noqa: E402
from .standard import save_standard  # noqa: E402

_LAZY = {"make_card": "hfq.publish.cards", "push_variants": "hfq.publish.push"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hfq' has no attribute {name!r}")


__all__ = ["HfqConfig", "HfqQuantizer", "__version__", "evaluate", "export_gguf", "local_model", "make_card",
           "push_variants", "register", "save_standard"]
