"""`hfq demo` on the embedded Gemma-3-270M: --quick in the default run, the full demo opt-in (HFQ_FULL_DEMO=1)."""

import json
import os
import struct

import pytest
from huggingface_hub import ModelCard

from hfq.cli import main


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _check(out, variants, printed):
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results["variants"]] == list(variants)
    base = results["base"]
    assert 10 < base["ppl"] < 60  # Gemma-3-270M on English documentation (README: about 23 at 2,048 tokens)
    for r in results["variants"]:
        res = r["result"]
        # 4-8 bit projections; an hfq checkpoint keeps the 671 MB tied embedding in float, a GGUF file does not
        assert res["size"]["bytes"] < (0.75 if r["kind"] == "safetensors" else 0.3) * base["size"]["bytes"]
        assert 0 < res["kl"] < 1 and 0.5 < res["top1"] <= 1
        card = ModelCard.load(os.path.join(r["folder"], "README.md"))
        assert card.data.base_model == "google/gemma-3-270m" and card.data.license == "gemma"
        assert f"| {r['variant']} | {res['size']['bytes'] / 1e6:.1f} |" in card.text
        assert f"| {r['variant']} | {res['size']['bytes'] / 1e6:.1f} |" in printed
    w, h = _png_size(out / "quality_vs_size.png")
    assert w > 600 and h > 300
    return results


@pytest.mark.slow
def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = _check(out, ("nf4-dq", "Q8_0"), capsys.readouterr().out)
    assert results["base"]["scored_tokens"] == 255  # one chunk of 512, second half scored


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("HFQ_FULL_DEMO"), reason="the full demo takes ~10 minutes; HFQ_FULL_DEMO=1")
def test_demo_full(tmp_path, capsys):
    from hfq.publish.variants import STANDARD

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    results = _check(out, STANDARD, capsys.readouterr().out)
    assert results["base"]["scored_tokens"] == 4 * 255
