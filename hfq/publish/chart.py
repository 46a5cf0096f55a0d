"""The demo's chart: quality (perplexity and KL) against size, as a PNG. matplotlib comes with hfq[demo]."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_file


def quality_vs_size(rows: list[tuple[str, dict]], path: str | Path, title: str = "") -> Path:
    """Plot each (name, evaluation result): size in MB on x, perplexity (left) and KL vs base (right) on y.
    Written to a temporary file and renamed into place."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("the chart needs matplotlib; install it with `pip install 'hfq[demo]'`.") from e
    path = Path(path)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, (name, r) in enumerate(rows):
        off = (5, 5) if i % 2 else (5, -12)   # alternate label sides so neighbours stay readable
        if r.get("ppl") is None:  # a GGUF file without llama-cpp-python: size only
            continue
        mb = r["size"]["bytes"] / 1e6
        marker = "*" if r.get("kl") is None else "o"
        ax1.scatter(mb, r["ppl"], marker=marker, s=90)
        ax1.annotate(name, (mb, r["ppl"]), textcoords="offset points", xytext=off, fontsize=8)
        if r.get("kl") is not None:
            ax2.scatter(mb, r["kl"], s=60)
            ax2.annotate(name, (mb, r["kl"]), textcoords="offset points", xytext=off, fontsize=8)
    ax1.set(xlabel="size on disk (MB)", ylabel="perplexity (lower is better)", title="perplexity")
    ax2.set(xlabel="size on disk (MB)", ylabel="mean KL divergence from the base", title="KL vs base")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
