"""The demo's chart: quality (perplexity and KL) against size, as a PNG. matplotlib comes with hfq[demo].

Each model keeps one colour and one marker in both panels, and is named once, in a shared legend, so no two
labels can overlap however close their points are. The base sits at KL 0 (it is its own reference)."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_file

MARKERS = "os^Dv<>pPhX*"


def styles(names: list[str]) -> dict[str, tuple]:
    """name -> (colour, marker): one pair per model, the same in every panel."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if len(names) > 10 else "tab10"]
    return {n: (cmap(i % cmap.N), MARKERS[i % len(MARKERS)]) for i, n in enumerate(names)}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("the chart needs matplotlib; install it with `pip install 'hfq[demo]'`.") from e
    return plt


def figure(rows: list[tuple[str, dict]], title: str = ""):
    """The chart as a matplotlib figure: each (name, evaluation result) at its size in MB, perplexity on the
    left, KL vs base on the right. The first row is the base; rows without a perplexity are left out."""
    plt = _pyplot()
    rows = [(n, r) for n, r in rows if r.get("ppl") is not None]
    style = styles([n for n, _ in rows])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5.2))
    for i, (name, r) in enumerate(rows):
        mb = r["size"]["bytes"] / 1e6
        colour, marker = style[name]
        kw = dict(color=colour, marker=marker, s=70, edgecolors="black", linewidths=0.5, zorder=3)
        ax1.scatter(mb, r["ppl"], label=name.replace("$", r"\$"), **kw)   # no mathtext from a name
        kl = 0.0 if i == 0 and r.get("kl") is None else r.get("kl")
        if kl is not None:
            ax2.scatter(mb, kl, **kw)
    ax1.set(xlabel="size on disk (MB)", ylabel="perplexity (lower is better)", title="perplexity")
    ax2.set(xlabel="size on disk (MB)", ylabel="mean KL divergence from the base", title="KL vs base (base at 0)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.legend(*ax1.get_legend_handles_labels(), loc="lower center", ncol=min(len(rows), 4), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 + 0.045 * ((len(rows) - 1) // 4), 1, 1))
    return fig


def quality_vs_size(rows: list[tuple[str, dict]], path: str | Path, title: str = "") -> Path:
    """figure(rows, title) saved as a PNG: written to a temporary file and renamed into place."""
    plt = _pyplot()
    path = Path(path)
    fig = figure(rows, title)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
