"""The comparison Space's logic (spaces/hfq-compare/app.py is only its page): the base and up to three quantized
variants answer one prompt side by side, with what each answer cost, the quality table, scores on the user's
text, and the divergence view.

- models.py: names -> specs, lazy cached loading, streamed generation with equal settings;
- compare.py: Comparison (panels, cost, quality, your text, divergence), all without Gradio.
It sits at the top of hfq's layers, with the CLI, and imports transformers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .compare import (MAX_NEW_TOKENS, MAX_PANELS, MAX_PROMPT_TOKENS, MAX_SCORE_TOKENS, QUALITY_COLUMNS, SCORE_COLUMNS,
                      Comparison, esc)
from .models import Spec, from_variants, spec

logger = logging.getLogger(__name__)

DEFAULT_BASE = "gemma-3-270m"
DEFAULT_VARIANTS = ("nf4-dq", "gptq-int4-g128", "Q4_K_M")
CONFIG_FILE = "space.json"    # what `hfq push --space` writes beside app.py: {"models": [...]}


def default_folder() -> Path:
    """Where the no-argument page keeps the embedded model's variants ($HFQ_CACHE/space/gemma-3-270m)."""
    from ..embedded import cache_dir

    return cache_dir() / "space" / DEFAULT_BASE


def make_default(progress: bool = True) -> Path:
    """Make (once; reused after) the default variants of the embedded Gemma-3-270M, evaluated on one chunk."""
    from ..publish.push import prepare

    out = default_folder()
    prepare(DEFAULT_BASE, list(DEFAULT_VARIANTS), out, chunks=1, progress=progress, decode_tokens=0,
            command="hfq space")
    return out


def _select(specs: list[Spec], show: list[str] | None) -> list[Spec]:
    if not show:
        if len(specs) > MAX_PANELS:
            logger.info("hfq: showing %s; choose others with --show NAME,NAME", ", ".join(s.name for s in specs[1:4]))
        return specs[:MAX_PANELS]
    by_name = {s.name: s for s in specs[1:]}
    missing = [n for n in show if n not in by_name]
    if missing:
        raise ValueError(f"--show {','.join(missing)}: not among the variants; allowed: {', '.join(by_name)}.")
    if len(show) > MAX_PANELS - 1:
        raise ValueError(f"--show names {len(show)} variants; the page shows up to {MAX_PANELS - 1}.")
    return [specs[0], *(by_name[n] for n in show)]


def comparison(variants: str | Path | None = None, models: list[str] | None = None,
               show: list[str] | None = None, config: str | Path | None = None) -> Comparison:
    """The page's models: a folder of `hfq demo` / `hfq push --dry-run` output (variants), or models (the base
    first: folders, .gguf files, Hub ids, namespace/name/file.gguf, gemma-3-270m), or a space.json (config).
    With none of them: the embedded Gemma-3-270M and DEFAULT_VARIANTS, made on first use."""
    if variants and models:
        raise ValueError("pass either --variants DIR or --models BASE [VARIANT ...], not both.")
    chart = None
    if config and not (variants or models):
        data = json.loads(Path(config).read_text(encoding="utf-8"))
        models = [str(m) for m in data.get("models", [])]
        if not models:
            raise ValueError(f"{config} lists no models; it needs {{\"models\": [BASE, VARIANT, ...]}}.")
    if models:
        specs = [spec(m) for m in models]
        return Comparison(_select(specs, show) if show else specs)
    else:
        folder = Path(variants) if variants else make_default()
        specs = from_variants(folder)
        chart = folder / "quality_vs_size.png"
    return Comparison(_select(specs, show), chart=chart)


__all__ = ["Comparison", "Spec", "comparison", "make_default", "esc", "spec", "from_variants", "CONFIG_FILE",
           "MAX_NEW_TOKENS", "MAX_PANELS", "MAX_PROMPT_TOKENS", "MAX_SCORE_TOKENS", "QUALITY_COLUMNS", "SCORE_COLUMNS"]
