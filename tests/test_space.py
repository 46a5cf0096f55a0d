"""The comparison Space (spaces/hfq-compare/app.py, hfq.space) on tiny models: launched in-process and driven with
gradio_client, then in a real browser (Debian's chromium through Playwright). References: transformers'
model.generate, a greedy loop over llama.cpp's logits, the evaluation JSON files, and first differences between
independently generated greedy answers."""

import importlib.util
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="the Space needs gradio: pip install 'hfq[spaces]'")

import hfq  # noqa: E402,F401
from hfq.space import comparison  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Return the value of"   # the tiny random llama answers it in whole tokens, not stray bytes
NEW = 12
EVIL = '<script>window.__hfq_pwned=1</script><img src=x onerror="window.__hfq_pwned=2">'
CHROMIUM = "/usr/bin/chromium"


def _app():
    spec = importlib.util.spec_from_file_location("hfq_compare_app", ROOT / "spaces" / "hfq-compare" / "app.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


@pytest.fixture(scope="module")
def variants_dir(export_dir, tmp_path_factory):
    """What `hfq push --dry-run` writes for a tiny llama: an RTN int4 checkpoint and, with llama-cpp-python, a
    Q8_0 GGUF file, each evaluated against the base (results.json, hfq_eval.json)."""
    from hfq.publish.push import prepare

    out = tmp_path_factory.mktemp("space-variants")
    names = ["rtn-int4-g128", *(["Q8_0"] if _has_llama_cpp() else [])]
    prepare(str(export_dir("llama")), names, out, ctx=128, chunks=1, progress=False, decode_tokens=0)
    return out


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("broken-variant")
    (d / "config.json").write_text("{ not json")
    return d


def _serve(cmp):
    demo = _app().build(cmp)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_port(), quiet=True,
                allowed_paths=demo.hfq_allowed_paths)
    return demo


@pytest.fixture(scope="module")
def page_of_variants(variants_dir):
    cmp = comparison(variants=variants_dir)
    demo = _serve(cmp)
    yield cmp, demo
    demo.close()


def _variant_folder(variants_dir) -> Path:
    return Path(json.loads((variants_dir / "results.json").read_text())["variants"][0]["folder"])


def _client(demo):
    from gradio_client import Client

    return Client(demo.local_url, verbose=False, analytics_enabled=False)


def _reference_text(spec_source, tok, ids):
    """The panel's answer from outside hfq.space: model.generate, or greedy over llama.cpp's logits."""
    if str(spec_source).endswith(".gguf"):
        import llama_cpp
        import numpy as np

        from hfq.evaluation import _no_extra_buffers

        with _no_extra_buffers(llama_cpp):
            llm = llama_cpp.Llama(model_path=str(spec_source), n_ctx=256, logits_all=True, verbose=False)
        seq, new = ids[0].tolist(), []
        llm.eval(seq)
        for _ in range(NEW):
            t = int(np.asarray(llm.scores[len(seq) + len(new) - 1]).argmax())
            if t in {tok.eos_token_id, llm.token_eos()}:
                break
            new.append(t)
            llm.eval([t])
        return tok.decode(new, skip_special_tokens=True)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec_source, dtype=torch.float32).eval()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False,
                         pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


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


def _greedy_ids(src, ids, n, tok) -> list[int]:
    """Reference greedy new tokens, the end token included: model.generate, or a loop over llama.cpp's logits."""
    if str(src).endswith(".gguf"):
        import llama_cpp
        import numpy as np

        from hfq.evaluation import _no_extra_buffers

        with _no_extra_buffers(llama_cpp):
            llm = llama_cpp.Llama(model_path=str(src), n_ctx=256, logits_all=True, verbose=False)
        seq, new = ids[0].tolist(), []
        llm.eval(seq)
        while len(new) < n:
            t = int(np.asarray(llm.scores[len(seq) + len(new) - 1]).argmax())
            new.append(t)
            if t in {tok.eos_token_id, llm.token_eos()}:
                break
            llm.eval([t])
        return new
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                     pad_token_id=tok.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


def _teacher_forced(src, ids, base_new) -> tuple[list[int], list[float]]:
    """The model's top-1 for each of the base's new tokens, and its margin over the second, given the prompt and
    the base's tokens before it: a separate forward pass per prefix (transformers), or token-by-token evaluation
    with llama.cpp's cache (GGUF), where hfq.space runs one pass over the whole sequence."""
    prompt = ids[0].tolist()
    top1, margin = [], []
    if str(src).endswith(".gguf"):
        import llama_cpp
        import numpy as np

        from hfq.evaluation import _no_extra_buffers

        with _no_extra_buffers(llama_cpp):
            llm = llama_cpp.Llama(model_path=str(src), n_ctx=256, logits_all=True, verbose=False)   # kept scores
        llm.eval(prompt)
        for k, t in enumerate(base_new):
            row = np.sort(np.asarray(llm.scores[len(prompt) + k - 1], dtype=np.float64))
            top1.append(int(np.asarray(llm.scores[len(prompt) + k - 1]).argmax()))
            margin.append(float(row[-1] - row[-2]))
            llm.eval([t])
        return top1, margin
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        for k in range(len(base_new)):
            logits = m(input_ids=torch.tensor([prompt + base_new[:k]])).logits[0, -1].double()
            v, i = logits.topk(2)
            top1.append(int(i[0]))
            margin.append(float(v[0] - v[1]))
    return top1, margin


def _first_diff(a, b):
    k = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return k if k is not None or len(a) == len(b) else min(len(a), len(b))


def test_divergence_against_independent_greedy_and_teacher_forced_top1(export_dir, variants_dir):
    """first: where each variant's own greedy tokens leave the base's (0-based, new tokens only); disagree: where
    its teacher-forced top-1 is not the base's token. For a transformers folder and, with llama-cpp-python, a GGUF
    file; a variant that diverges is among them, so the view is not trivially empty."""
    from transformers import AutoTokenizer

    results = json.loads((variants_dir / "results.json").read_text())
    srcs = [r.get("file") if r.get("kind") == "gguf" else r.get("folder") for r in results["variants"]]
    cmp = comparison(models=[str(export_dir("llama")), *srcs])
    rows = cmp.divergence(PROMPT, 24)
    tok = AutoTokenizer.from_pretrained(export_dir("llama"))
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    base = _greedy_ids(export_dir("llama"), ids, 24, tok)
    assert rows[0]["tokens"] == base and len(base) > 0
    html = cmp.divergence_html(rows)
    diverged = 0
    for row, src in zip(rows[1:], srcs):
        assert row["error"] is None, row["error"]
        greedy = _greedy_ids(src, ids, 24, tok)
        assert row["greedy"] == greedy, src
        assert row["first"] == _first_diff(base, greedy), src
        top1, margin = _teacher_forced(src, ids, base)
        sure = [k for k, m in enumerate(margin) if m > 1e-4]   # a near-tie may flip between the two computations
        assert len(sure) >= len(base) - 2
        assert [row["top1"][k] for k in sure] == [top1[k] for k in sure], src
        assert {k for k in row["disagree"] if k in sure} == {k for k in sure if top1[k] != base[k]}, src
        if row["first"] is not None:
            diverged += 1
            assert row["first"] in row["disagree"] and min(row["disagree"]) == row["first"]
        assert f'data-first="{"none" if row["first"] is None else row["first"]}"' in html
    assert diverged >= 1, [r["greedy"] for r in rows]
    assert html.count('class="hfq-diff"') == sum(len(r["disagree"]) for r in rows[1:])


def test_divergence_tokens_read_as_text_with_spaces_and_markup_inert(export_dir):
    """Each token is decoded after the ones before it (a lone SentencePiece token loses its leading space) and
    escaped: the view's text is the decoded answer, character for character, and a <script> in it stays text."""
    from html.parser import HTMLParser

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export_dir("llama"))
    cmp = comparison(models=[str(export_dir("llama"))])
    ids = tok("Return the value of " + EVIL + " and\tthen", add_special_tokens=False)["input_ids"]
    ctx, toks = ids[:1], ids[1:]
    assert "".join(tok.decode([t]) for t in toks) != tok.decode(ids)[len(tok.decode(ctx)):]   # lone tokens lose spaces
    rows = [{"name": EVIL, "tokens": toks, "greedy": toks, "top1": toks, "disagree": [], "first": None,
             "error": None, "context": ctx}]
    html = cmp.divergence_html(rows)

    class Text(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.spans, self.inside = [], [], False

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.inside = tag == "span"

        def handle_endtag(self, tag):
            self.inside = False

        def handle_data(self, data):
            if self.inside:
                self.spans.append(data)

    p = Text()
    p.feed(html)
    assert "script" not in p.tags and "img" not in p.tags
    shown = "".join(p.spans).replace("\u200b", "").replace("\xa0", " ").replace("\u23ce", "\n")
    shown = shown.replace("\u21e5", "\t")
    want = tok.decode(ctx + toks)[len(tok.decode(ctx)):]
    assert shown == want and " the value of <script>" in want, (shown, want)


# --- a real browser -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    pw = sync_api.sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM)
    yield b
    b.close()
    pw.stop()


def test_browser_click_streams_every_panel_and_escapes_names(browser, variants_dir, tmp_path):
    from playwright.sync_api import expect

    folder = tmp_path / "evil"
    shutil.copytree(variants_dir, folder)
    results = json.loads((folder / "results.json").read_text())
    for r in results["variants"]:   # a hostile variant name, as a card or repo id could carry it
        for k in ("folder", "file"):
            if k in r:
                r[k] = r[k].replace(str(variants_dir), str(folder))
    results["variants"][0]["variant"] = EVIL
    (folder / "results.json").write_text(json.dumps(results))
    cmp = comparison(variants=folder)
    demo = _serve(cmp)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(demo.local_url)
        page.locator("#prompt textarea").fill(PROMPT)
        page.get_by_role("button", name="Generate").click()
        for i in range(len(cmp.specs)):
            expect(page.locator(f"#panel-{i} textarea")).not_to_have_value("", timeout=30_000)
            expect(page.locator(f"#cost-{i}")).to_contain_text("tokens/s", timeout=30_000)
        expect(page.locator("#panel-1")).to_contain_text(EVIL)        # the label, shown as text
        page.get_by_role("tab", name="Divergence").click()
        page.get_by_role("button", name="Show divergence").click()
        expect(page.locator("#hfq-divergence")).to_contain_text(EVIL, timeout=30_000)
        assert page.locator("#hfq-divergence .hfq-variant").count() == len(cmp.specs) - 1
        page.get_by_role("tab", name="Quality").click()
        expect(page.locator("#quality")).to_contain_text(EVIL)       # the table cell, as text
        page.get_by_role("tab", name="Side by side").click()
        shot = Path(os.environ.get("HFQ_TEST_ARTIFACTS", tmp_path)) / "space.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert page.evaluate("window.__hfq_pwned") is None
        assert page.locator("#panel-1 script, #hfq-divergence script, #hfq-divergence img, #quality script, "
                            "#quality img").count() == 0
    finally:
        page.close()
        demo.close()
