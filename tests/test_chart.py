"""The quality-vs-size chart (hfq.publish.chart) and the scoring of GGUF files without llama-cpp-python."""

import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the chart needs matplotlib (hfq[demo])")

ROWS = [("gemma (float32)", {"ppl": 20.0, "size": {"bytes": 536e6}}),
        ("nf4", {"ppl": 23.1, "kl": 0.081, "size": {"bytes": 380e6}}),
        ("nf4-dq", {"ppl": 23.2, "kl": 0.082, "size": {"bytes": 375e6}}),     # nearly on top of nf4
        ("gptq-int4-g128", {"ppl": 21.9, "kl": 0.051, "size": {"bytes": 390e6}}),
        ("awq-int4-g128", {"ppl": 21.95, "kl": 0.052, "size": {"bytes": 391e6}}),
        ("Q4_K_M $1", {"ppl": 22.0, "kl": 0.06, "size": {"bytes": 250e6}}),  # a '$' is not mathtext
        ("no-score", {"size": {"bytes": 100e6}})]


def _points(ax):
    out = []
    for c in ax.collections:
        (x, y), = c.get_offsets()
        out.append(((round(float(x), 3), round(float(y), 5)), tuple(np.round(c.get_facecolor()[0], 4)),
                    c.get_paths()[0].vertices.round(4).tobytes()))
    return out


def test_one_colour_and_marker_per_model_in_both_panels_and_the_base_at_kl_zero(tmp_path):
    import matplotlib.pyplot as plt

    from hfq.publish.chart import figure, quality_vs_size

    fig = figure(ROWS, "t")
    ax1, ax2 = fig.axes
    left, right = _points(ax1), _points(ax2)
    scored = ROWS[:-1]
    assert [p[0] for p in left] == [(r["size"]["bytes"] / 1e6, r["ppl"]) for _, r in scored]
    assert [p[0] for p in right] == [(r["size"]["bytes"] / 1e6, r.get("kl", 0.0)) for _, r in scored]
    assert [p[1:] for p in left] == [p[1:] for p in right]            # same colour and marker on both sides
    assert len({p[1:] for p in left}) == len(scored)                   # and no two models share a style
    assert not ax1.texts and not ax2.texts                             # names only in the legend: no collisions
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [n.replace("$", r"\$") for n, _ in scored]
    plt.close(fig)
    assert quality_vs_size(ROWS, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_gguf_scored_without_llama_cpp_by_transformers(export_dir, tmp_path, monkeypatch):
    """Without llama-cpp-python a GGUF file is still scored (transformers' dequantizing loader), labelled so, and
    its perplexity agrees with llama.cpp's on the same file when that is installed."""
    from hfq.publish.push import SCORED_BY_TRANSFORMERS, prepare

    base = str(export_dir("llama"))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "llama_cpp", None)    # as if not installed
        (rec,) = prepare(base, ["Q8_0"], tmp_path / "out", ctx=128, chunks=2, progress=False, decode_tokens=0)
    r = rec["result"]
    assert r["scored_by"] == SCORED_BY_TRANSFORMERS and r["ppl"] > 1 and 0 <= r["kl"] < 0.05 and r["top1"] > 0.8
    if "llama_cpp" in sys.modules and sys.modules["llama_cpp"] is None:
        del sys.modules["llama_cpp"]
    pytest.importorskip("llama_cpp", reason="llama-cpp-python for the llama.cpp side of the comparison")
    from transformers import AutoTokenizer

    from hfq.evaluation import chunks, default_text, score

    tok = AutoTokenizer.from_pretrained(base)
    ref = score(rec["file"], chunks(tok, default_text()[0], 128, 2), progress=False)
    assert ref["scored_tokens"] == r["scored_tokens"]
    assert r["ppl"] == pytest.approx(ref["ppl"], rel=0.02)
