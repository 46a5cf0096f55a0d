"""`hfq demo`: the README's main job on the embedded Gemma-3-270M. Makes the standard variants, evaluates them
against the float model on the default held-out text, writes each variant's folder and card, prints the
comparison table and saves a chart of quality against size."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..atomic import write_text
from . import variants as registry
from .cards import markdown_table
from .chart import quality_vs_size
from .push import EMBEDDED_NOTE, SCORED_BY_TRANSFORMERS, base_card_info, prepare

MODEL = "gemma-3-270m"
QUICK_VARIANTS = ("nf4-dq", "Q8_0")


def run_demo(out: str | Path = "hfq-demo", quick: bool = False, progress: bool = True) -> dict:
    """Full: every variant in variants.STANDARD (hfq checkpoints and GGUF files) on 4 chunks of 512 tokens
    (2,048 tokens), decode speed over 8 tokens. quick: QUICK_VARIANTS on one chunk, no decode timing.
    Returns {"table", "chart", "results", "seconds"}; out/ gets the variant folders (cards, weights, GGUF files),
    base.json, results.json, table.md and quality_vs_size.png."""
    t0 = time.perf_counter()
    out = Path(out)
    names = QUICK_VARIANTS if quick else registry.STANDARD
    command = f"hfq demo{' --quick' if quick else ''} --out {out}"
    records = prepare(MODEL, list(names), out, chunks=1 if quick else 4, progress=progress, command=command,
                      decode_tokens=0 if quick else 8)
    base = json.loads((out / "base.json").read_text())
    rows = [(f"{base_card_info(MODEL)[2]} (float32)", base)] + [(r["variant"], r["result"]) for r in records]
    table = markdown_table(rows)
    if any("Q4_K" in name.upper() for name in names):
        table += f"\n\nQ4_K rows: {EMBEDDED_NOTE}"
    if any(r["result"].get("scored_by") == SCORED_BY_TRANSFORMERS for r in records):
        table += f"\n\nGGUF rows: scored by {SCORED_BY_TRANSFORMERS}."
    chart = quality_vs_size(rows, out / "quality_vs_size.png",
                            title=f"{MODEL}: quality against size ({base['scored_tokens']} scored tokens)")
    seconds = time.perf_counter() - t0
    write_text(out / "table.md", f"{table}\n\n`{command}`: {seconds:.0f} s\n")
    return {"table": table, "chart": str(chart), "results": records, "seconds": seconds}
