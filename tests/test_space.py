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


def test_broken_variant_errors_in_its_own_panel(export_dir, variants_dir, broken_dir):
    from transformers import AutoTokenizer

    good = _variant_folder(variants_dir)
    cmp = comparison(models=[str(export_dir("llama")), str(broken_dir), str(good)])
    demo = _serve(cmp)
    try:
        final = _client(demo).submit(PROMPT, NEW, 0, 1, 0, api_name="/compare").result()
    finally:
        demo.close()
    tok = AutoTokenizer.from_pretrained(export_dir("llama"))
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    assert final[1].startswith("error:") and str(broken_dir.name) in final[1], final[1]
    assert final[4].startswith("**error**")
    assert final[0] == _reference_text(export_dir("llama"), tok, ids)
    assert final[2] == _reference_text(good, tok, ids)


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


def test_divergence_marks_the_first_differing_greedy_token(export_dir, variants_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    good = _variant_folder(variants_dir)
    cmp = comparison(models=[str(export_dir("llama")), str(good)])
    rows = cmp.divergence(PROMPT, 24)
    tok = AutoTokenizer.from_pretrained(export_dir("llama"))
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    answers = []
    for src in (export_dir("llama"), good):
        m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        answers.append(m.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.eos_token_id)[0,
                       ids.shape[1]:].tolist())
    assert rows[0]["tokens"] == answers[0]
    diff = [k for k, (a, b) in enumerate(zip(*answers)) if a != b]
    assert rows[1]["first"] == (diff[0] if diff else None)
    html = cmp.divergence_html(rows)
    assert html.count('class="hfq-diff"') == len(rows[1]["disagree"])


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
        page.get_by_role("tab", name="Side by side").click()
        shot = Path(os.environ.get("HFQ_TEST_ARTIFACTS", tmp_path)) / "space.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert page.evaluate("window.__hfq_pwned") is None
        assert page.locator("#panel-1 script, #hfq-divergence script, #hfq-divergence img").count() == 0
    finally:
        page.close()
        demo.close()
