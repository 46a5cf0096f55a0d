"""Redraw docs/quality_vs_size.png (the README's picture) from the measured `hfq demo` table in docs/publishing.md,
with the chart `hfq demo` itself writes (hfq.publish.chart). A fresh `hfq demo` run writes the same chart from
its own numbers as hfq-demo/quality_vs_size.png.

    python benchmarks/readme_chart.py
"""

from __future__ import annotations

import re
from pathlib import Path

from hfq.publish.chart import quality_vs_size

ROOT = Path(__file__).resolve().parents[1]


def demo_rows(text: str) -> list[tuple[str, dict]]:
    """(variant, {size, ppl, kl}) for each row of the demo table (the one with a 'prefill tokens/s' column)."""
    table = text[text.index("| variant | size (MB)"):].split("\n\n", 1)[0].splitlines()[2:]
    rows = []
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        name, mb, ppl, kl = cells[0].replace(" †", ""), float(cells[1]), float(cells[3]), cells[4]
        rows.append((name, {"size": {"bytes": mb * 1e6}, "ppl": ppl,
                            "kl": None if kl in ("—", "-") else float(kl)}))
    return rows


def main() -> None:
    rows = demo_rows((ROOT / "docs" / "publishing.md").read_text(encoding="utf-8"))
    assert rows and all(re.match(r"[\w.() -]+$", n) for n, _ in rows), rows
    out = quality_vs_size(rows, ROOT / "docs" / "quality_vs_size.png",
                          title="gemma-3-270m: quality against size (hfq demo, 1,020 scored tokens)")
    print(f"wrote {out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
