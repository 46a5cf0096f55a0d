"""The Space's divergence view against independent computations on tiny models: each variant's first differing
greedy token against model.generate / a greedy loop over llama.cpp's logits, its top-1 set against a forward pass
per prefix / llama.cpp's token-by-token evaluation, and the token text (spaces kept, markup inert)."""

import json

import pytest

gr = pytest.importorskip("gradio", reason="the Space needs gradio: pip install 'hfq[spaces]'")

import hfq  # noqa: E402,F401
from hfq.space import comparison  # noqa: E402
from space_helpers import (EVIL, NEW, PROMPT, _first_diff, _greedy_ids, _reference_text,  # noqa: E402
                           _teacher_forced, variants_dir)  # noqa: F401 (fixture)


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
    final = list(cmp.run(PROMPT, NEW))[-1]     # the panels after the view's passes (llama.cpp's cache reused)
    assert final[1: len(srcs) + 1] == [_reference_text(src, tok, ids) for src in srcs]


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
