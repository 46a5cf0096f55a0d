"""The comparison Space (spaces/hfq-compare/app.py, hfq.space) on tiny models, launched in-process and driven with
gradio_client: streamed panels against model.generate and a greedy loop over llama.cpp's logits, the quality
table against the evaluation JSON files, and the robustness rules (broken and missing variants, limits, lazy
loading, the queue's concurrency limit, escaping, no token field). The divergence view and the real browser:
tests/test_space_divergence.py, tests/test_space_browser.py."""

import json

import pytest
import torch

gr = pytest.importorskip("gradio", reason="the Space needs gradio: pip install 'hfq[spaces]'")

import hfq  # noqa: E402,F401
from hfq.space import comparison  # noqa: E402
from space_helpers import (EVIL, NEW, PROMPT, _app, _client, _has_llama_cpp, _reference_text, _serve,  # noqa: E402
                           _variant_folder, broken_dir, variants_dir)  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def page_of_variants(variants_dir):
    cmp = comparison(variants=variants_dir)
    demo = _serve(cmp)
    yield cmp, demo
    demo.close()


def test_panels_stream_and_equal_greedy_generate(page_of_variants, export_dir):
    from transformers import AutoTokenizer

    cmp, demo = page_of_variants
    n = len(cmp.specs)
    assert n == (3 if _has_llama_cpp() else 2)
    job = _client(demo).submit(PROMPT, NEW, 0, 1, 0, api_name="/compare")
    partials = [tuple(p) for p in job]
    final = job.result()
    tok = AutoTokenizer.from_pretrained(export_dir("llama"))
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    for i, s in enumerate(cmp.specs):
        seen = [p[i] for p in partials if p[i]]
        assert len(set(seen)) >= 3, (s.name, seen)      # several partial texts arrived for this panel
        assert all(final[i].startswith(x) for x in seen)
        assert final[i] == _reference_text(s.source, tok, ids), s.name
        cost = final[n + i]
        assert f"size {s.result['size']['bytes'] / 1e6:.1f} MB" in cost and "tokens/s" in cost
        assert "first token" in cost and "peak memory" in cost and "—" not in cost.split("tokens/s")[0][-8:]


def test_quality_table_holds_the_evaluation_json(page_of_variants, variants_dir):
    cmp, demo = page_of_variants
    results = json.loads((variants_dir / "results.json").read_text())
    table = _client(demo).predict(api_name="/quality")[0]
    rows = {r[0]: r for r in table["data"]}
    for name, r in [("", results["base"])] + [(v["variant"], v["result"]) for v in results["variants"]]:
        row = rows[name or cmp.specs[0].name]
        assert row[1] == f"{r['size']['bytes'] / 1e6:.1f}" and row[2] == f"{r['size']['bpw']:.3f}"
        assert row[3] == f"{r['ppl']:.3f}" and row[6] == "results.json"
        if name:
            assert row[4] == f"{r['kl']:.4f}" and row[5] == f"{r['top1']:.3f}"


def test_broken_and_missing_variants_error_in_their_own_panels(export_dir, variants_dir, broken_dir, tmp_path):
    """A broken config.json and a folder that does not exist: each panel names its model; the base and the good
    variant still answer as model.generate does, in /compare and in the divergence view."""
    from transformers import AutoTokenizer

    good = _variant_folder(variants_dir)
    missing = tmp_path / "no-such-variant"
    cmp = comparison(models=[str(export_dir("llama")), str(broken_dir), str(missing), str(good)])
    demo = _serve(cmp)
    try:
        final = _client(demo).submit(PROMPT, NEW, 0, 1, 0, api_name="/compare").result()
        view = _client(demo).predict(PROMPT, 8, api_name="/divergence")
    finally:
        demo.close()
    tok = AutoTokenizer.from_pretrained(export_dir("llama"))
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    assert final[1].startswith("error:") and str(broken_dir.name) in final[1], final[1]
    assert final[2].startswith("error:") and str(missing) in final[2] and "is not a folder" in final[2], final[2]
    assert final[5].startswith("**error**") and final[6].startswith("**error**")
    assert final[0] == _reference_text(export_dir("llama"), tok, ids)
    assert final[3] == _reference_text(good, tok, ids)
    assert "tokens/s" in final[4] and "tokens/s" in final[7]
    assert view.count('data-first="error"') == 2 and 'data-first="error"' not in view.split(good.name)[-1]


def test_models_load_lazily_once(export_dir, variants_dir, monkeypatch):
    import hfq.space.models as models

    calls = []
    real = models.load
    monkeypatch.setattr(models, "load", lambda s, **kw: calls.append(s.name) or real(s, **kw))
    cmp = comparison(models=[str(export_dir("llama")), str(_variant_folder(variants_dir))])
    _app().build(cmp)
    assert calls == []                                   # building the page loads nothing
    for _ in range(2):
        list(cmp.run(PROMPT, 4))
    cmp.divergence(PROMPT, 4)
    assert sorted(calls) == sorted(cmp.names)            # each model once, then cached


def test_queue_limits_concurrency():
    """One request at a time: the models share the CPU cores (and each answer is timed alone)."""
    app = _app()
    cmp = comparison(models=["gemma-3-270m"])             # nothing loads until a request
    demo = app.build(cmp)
    assert app.CONCURRENCY == 1 and demo._queue.default_concurrency_limit == 1
    fns = list(demo.fns.values())
    assert len(fns) == 4 and all(f.queue and f.concurrency_limit == "default" for f in fns)   # none overrides it


def test_names_and_errors_are_escaped_in_markdown_and_html(export_dir):
    """A repo id or card string carrying markup reaches the cost line and the divergence view only escaped."""
    evil = "evil/" + EVIL
    cmp = comparison(models=[str(export_dir("llama")), evil])
    final = list(cmp.run(PROMPT, 4))[-1]
    assert final[1].startswith("error:") and "<script>" not in final[3] and "&lt;script&gt;" in final[3]
    html = cmp.divergence_html(cmp.divergence(PROMPT, 4))
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in html


def test_score_text_over_the_limit_is_refused(export_dir):
    from hfq.space import MAX_SCORE_TOKENS

    cmp = comparison(models=[str(export_dir("llama"))])
    with pytest.raises(ValueError, match=f"the limit is {MAX_SCORE_TOKENS}: shorten it"):
        cmp.score_text("word " * 3000)
    with pytest.raises(ValueError, match="the prompt is empty"):
        cmp.divergence("  ", 4)
    with pytest.raises(ValueError, match="the limit is 512: shorten it"):
        cmp.divergence("word " * 2000, 4)


def test_page_asks_for_no_hub_token():
    """No login button and no secret field: the page reads the Hub with what huggingface_hub already has."""
    demo = _app().build(comparison(models=["gemma-3-270m"]))
    blocks = list(demo.blocks.values())
    assert not [b for b in blocks if isinstance(b, gr.LoginButton)]
    assert not [b for b in blocks if isinstance(b, gr.Textbox) and b.type == "password"]


def test_prompt_over_the_limit_is_refused(page_of_variants):
    from gradio_client.exceptions import AppError

    from hfq.space import MAX_PROMPT_TOKENS

    _, demo = page_of_variants
    with pytest.raises(AppError, match=f"the limit is {MAX_PROMPT_TOKENS}: shorten it"):
        _client(demo).predict("word " * 2000, NEW, 0, 1, 0, api_name="/compare")


def test_your_text_scores_every_model(page_of_variants, export_dir):
    """Perplexity of a pasted text against a naive loop over the base model's logits (second half scored)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cmp, demo = page_of_variants
    text = "The list.sort() method sorts the list in place, using only < comparisons between items."
    table = _client(demo).predict(text, api_name="/score")
    tok = AutoTokenizer.from_pretrained(export_dir("llama"))
    ids = tok(text, return_tensors="pt")["input_ids"]
    n = ids.shape[1] - ids.shape[1] % 2
    base = AutoModelForCausalLM.from_pretrained(export_dir("llama"), dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(base(input_ids=ids[:, :n]).logits[0].double(), -1)
    nll = [-lp[p, ids[0, p + 1]].item() for p in range(n // 2, n - 1)]
    rows = table["data"]
    assert [r[0] for r in rows] == cmp.names
    assert rows[0][1] == str(len(nll)) and rows[0][2] == f"{torch.tensor(nll).mean().exp().item():.3f}"
    for r in rows[1:]:
        assert float(r[2]) > 1 and 0 <= float(r[3]) and 0 <= float(r[4]) <= 1
