"""What the comparison Space shows, without Gradio: panels streamed one after another, the cost of each answer,
the quality table, scores on the user's text, and where each variant's greedy tokens leave the base's.

Panels run one after another, not at once, so each answer's tokens/s is measured on an otherwise idle CPU.
Strings that end up in Markdown or HTML (model names, repo ids, tokens, error messages) pass through `esc`."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import torch

from ..evaluation import chunks as token_chunks, default_text, score
from .models import Cost, Pool, Settings, Spec, stream, _token_ids

logger = logging.getLogger(__name__)

MAX_PANELS = 4                # the base and up to three variants
MAX_PROMPT_TOKENS = 512
MAX_NEW_TOKENS = 256
MAX_SCORE_TOKENS = 1024       # "Your text": the longest text scored
QUALITY_CTX = 256             # measured quality (no evaluation JSON): one window of the default text
QUALITY_COLUMNS = ["model", "size (MB)", "bits per weight", "perplexity", "KL vs base", "top-1 vs base", "from"]
SCORE_COLUMNS = ["model", "tokens scored", "perplexity", "KL vs base", "top-1 vs base"]


def esc(v) -> str:
    """Text for Markdown or HTML: markup inert, on one line, no table cell split."""
    return html.escape(" ".join(str(v).split())).replace("|", "&#124;")


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _fmt(v, places: int) -> str:
    return "—" if v is None else f"{v:.{places}f}"


def cost_markdown(size: dict, cost: Cost) -> str:
    """The line under a panel: size on disk, bits per weight, tokens/s, time to first token, peak memory."""
    mb = size.get("bytes")
    parts = [f"size {_fmt(mb / 1e6 if mb else None, 1)} MB", f"{_fmt(size.get('bpw'), 2)} bits/weight",
             f"{cost.tokens} tokens", f"{_fmt(cost.tokens_per_s, 1)} tokens/s",
             f"first token {_fmt(cost.ttft_s, 2)} s", f"peak memory {_fmt(cost.peak_rss_mb, 0)} MB"]
    return " · ".join(parts)


class Comparison:
    """A base model (specs[0]) and up to three variants, loaded lazily through a Pool."""

    def __init__(self, specs: list[Spec], chart: str | Path | None = None):
        if not specs:
            raise ValueError("no models to compare; pass --models BASE [VARIANT ...] or --variants DIR.")
        if len(specs) > MAX_PANELS:
            raise ValueError(f"{len(specs)} models given; the page shows the base and up to {MAX_PANELS - 1} "
                             "variants: choose them with --show NAME,NAME.")
        self.specs = specs
        self.pool = Pool(specs)
        self.chart = Path(chart) if chart and Path(chart).is_file() else None
        self._measured: dict[int, dict] = {}

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """The prompt as the base tokenizer's ids; one clear refusal when it is empty or over the limit."""
        if not prompt or not prompt.strip():
            raise ValueError("the prompt is empty; type some text.")
        ids = self.pool.tokenizer()(prompt, return_tensors="pt")["input_ids"]
        if ids.shape[1] > MAX_PROMPT_TOKENS:
            raise ValueError(f"the prompt has {ids.shape[1]} tokens; the limit is {MAX_PROMPT_TOKENS}: shorten it.")
        return ids

    def settings(self, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=0) -> Settings:
        n = int(max_new_tokens)
        if not 1 <= n <= MAX_NEW_TOKENS:
            raise ValueError(f"max new tokens={n}; allowed: 1 to {MAX_NEW_TOKENS}.")
        if not 0 <= float(temperature) <= 2 or not 0 < float(top_p) <= 1:
            raise ValueError(f"temperature={temperature} must be in 0..2 and top-p={top_p} in (0, 1].")
        return Settings(n, float(temperature), float(top_p), int(seed))

    def run(self, prompt: str, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=0):
        """Yield [text of each panel..., cost line of each panel...] after every new piece of text. A panel whose
        model fails shows its error; the others go on."""
        st = self.settings(max_new_tokens, temperature, top_p, seed)
        ids = self.prompt_ids(prompt)
        tok = self.pool.tokenizer()
        n = len(self.specs)
        texts, costs = [""] * n, [""] * n
        for i in range(n):
            costs[i] = "loading…"
            yield texts + costs
            cost = Cost()
            try:
                loaded = self.pool.get(i)
                costs[i] = cost_markdown(loaded.size, cost)
                for texts[i] in stream(loaded, tok, ids, st, cost):
                    costs[i] = cost_markdown(loaded.size, cost)
                    yield texts + costs
                costs[i] = cost_markdown(loaded.size, cost)
            except Exception as e:  # noqa: BLE001 (a broken variant is that panel's problem only)
                logger.warning("hfq: %s: %s", self.specs[i].name, e)
                texts[i], costs[i] = f"error: {_first_line(e)}", f"**error**: {esc(_first_line(e))}"
            yield texts + costs

    # --- quality -------------------------------------------------------------------------------------------
    def _measure(self, i: int) -> dict:
        """Quality of model i on one window of the default text, when no evaluation JSON gave it."""
        if i not in self._measured:
            base = self.pool.get(0).model
            windows = token_chunks(self.pool.tokenizer(), default_text()[0], QUALITY_CTX, 1)
            loaded = self.pool.get(i)
            model = str(loaded.path) if loaded.kind == "gguf" else loaded.model
            r = score(model, windows, base=None if i == 0 else base, progress=False)
            self._measured[i] = {**r, "size": loaded.size}
        return self._measured[i]

    def results(self, measure: bool = True) -> list[tuple[str, dict | None, str]]:
        """(name, evaluation result or None, where it came from) for every model."""
        out = []
        for i, s in enumerate(self.specs):
            if s.result is not None:
                out.append((s.name, s.result, s.origin))
            elif measure:
                try:
                    r = self._measure(i)
                    out.append((s.name, r, f"measured on {r['scored_tokens']} tokens"))
                except Exception as e:  # noqa: BLE001
                    out.append((s.name, None, f"error: {_first_line(e)}"))
            else:
                out.append((s.name, None, "not measured"))
        return out

    def quality_table(self, measure: bool = True) -> list[list[str]]:
        """Rows of QUALITY_COLUMNS, the numbers at the model cards' precision. Plain text (for a Dataframe)."""
        rows = []
        for name, r, origin in self.results(measure):
            r = r or {}
            sz = r.get("size") or {}
            rows.append([name, _fmt(sz["bytes"] / 1e6 if sz.get("bytes") else None, 1), _fmt(sz.get("bpw"), 3),
                         _fmt(r.get("ppl"), 3), _fmt(r.get("kl"), 4), _fmt(r.get("top1"), 3), origin])
        return rows

    def chart_path(self, out_dir: str | Path) -> Path | None:
        """The quality-vs-size chart: the one `hfq demo` saved beside results.json, else drawn from the table."""
        if self.chart:
            return self.chart
        rows = [(n, r) for n, r, _ in self.results(measure=True) if r and r.get("ppl") is not None and r.get("size")]
        if not rows:
            return None
        try:
            from ..publish.chart import quality_vs_size

            return quality_vs_size(rows, Path(out_dir) / "quality_vs_size.png", title="quality against size")
        except RuntimeError as e:   # no matplotlib
            logger.info("hfq: no chart: %s", e)
            return None

    # --- your text -----------------------------------------------------------------------------------------
    def score_text(self, text: str) -> list[list[str]]:
        """Perplexity (and KL, top-1 against the base) of every model on the user's text, scored as
        llama-perplexity scores one window: the second half of the tokens, with the first half as context."""
        if not text or not text.strip():
            raise ValueError("the text is empty; paste some text to score.")
        ids = self.pool.tokenizer()(text, return_tensors="pt")["input_ids"]
        n = ids.shape[1] - ids.shape[1] % 2
        if ids.shape[1] > MAX_SCORE_TOKENS:
            raise ValueError(f"the text has {ids.shape[1]} tokens; the limit is {MAX_SCORE_TOKENS}: shorten it.")
        if n < 8:
            raise ValueError(f"the text has {ids.shape[1]} tokens; give at least 8.")
        window = [ids[:, :n]]
        rows = []
        for i, s in enumerate(self.specs):
            try:
                base = None if i == 0 else self.pool.get(0).model
                loaded = self.pool.get(i)
                r = score(str(loaded.path) if loaded.kind == "gguf" else loaded.model, window, base=base,
                          progress=False)
                rows.append([s.name, str(r["scored_tokens"]), _fmt(r["ppl"], 3), _fmt(r.get("kl"), 4),
                             _fmt(r.get("top1"), 3)])
            except Exception as e:  # noqa: BLE001
                rows.append([s.name, "—", f"error: {_first_line(e)}", "—", "—"])
        return rows

    # --- divergence ----------------------------------------------------------------------------------------
    def _top1(self, i: int, full: list[int]) -> list[int]:
        loaded = self.pool.get(i)
        if loaded.kind == "gguf":
            import numpy as np

            llm = loaded.model
            llm.reset()
            llm.eval(full)
            return np.asarray(llm.scores[: len(full)]).argmax(-1).tolist()
        with torch.no_grad():
            return loaded.model(input_ids=torch.tensor([full])).logits[0].argmax(-1).tolist()

    def divergence(self, prompt: str, max_new_tokens: int = 32) -> list[dict]:
        """The base's greedy tokens, and for each variant the positions where its own top-1, fed the base's
        tokens, disagrees. The first such position is where the variant's greedy answer first differs (the
        contexts are the same up to it). Returns [{name, tokens, top1, disagree, first, error}], base first."""
        ids = self.prompt_ids(prompt)
        st = self.settings(max_new_tokens, 0.0, 1.0, 0)
        tok = self.pool.tokenizer()
        base_new = list(_token_ids(self.pool.get(0), tok, ids, st))
        prompt_ids = ids[0].tolist()
        full, p = prompt_ids + base_new, len(prompt_ids)
        out = [{"name": self.specs[0].name, "tokens": base_new, "top1": base_new, "disagree": [], "first": None,
                "error": None}]
        for i in range(1, len(self.specs)):
            try:
                top1 = self._top1(i, full)[p - 1: len(full) - 1]
                dis = [k for k, (a, b) in enumerate(zip(top1, base_new)) if a != b]
                out.append({"name": self.specs[i].name, "tokens": base_new, "top1": top1, "disagree": dis,
                            "first": dis[0] if dis else None, "error": None})
            except Exception as e:  # noqa: BLE001
                out.append({"name": self.specs[i].name, "tokens": base_new, "top1": [], "disagree": [],
                            "first": None, "error": _first_line(e)})
        return out

    def divergence_html(self, rows: list[dict]) -> str:
        """The divergence view: the base's tokens once per variant, disagreements highlighted, the first framed."""
        tok = self.pool.tokenizer()

        def piece(t: int) -> str:
            return esc(tok.decode([t])).replace(" ", "&nbsp;") or "&nbsp;"

        base = rows[0]
        parts = [f'<div id="hfq-divergence"><p><b>{esc(base["name"])}</b> (base, greedy): '
                 + "".join(f'<span class="hfq-tok">{piece(t)}</span>' for t in base["tokens"]) + "</p>"]
        for r in rows[1:]:
            if r["error"]:
                parts.append(f'<p class="hfq-variant"><b>{esc(r["name"])}</b>: error: {esc(r["error"])}</p>')
                continue
            where = ("the same greedy tokens as the base" if r["first"] is None else
                     f'greedy tokens first differ at token {r["first"] + 1} of {len(r["tokens"])}; '
                     f'top-1 disagrees at {len(r["disagree"])}')
            spans = []
            for k, t in enumerate(r["tokens"]):
                if k in r["disagree"]:
                    frame = "outline:2px solid #c00;" if k == r["first"] else ""
                    spans.append(f'<mark class="hfq-diff" style="background:#fcc;{frame}" '
                                 f'title="its top-1: {piece(r["top1"][k])}">{piece(t)}</mark>')
                else:
                    spans.append(f'<span class="hfq-tok">{piece(t)}</span>')
            parts.append(f'<p class="hfq-variant"><b>{esc(r["name"])}</b>: {where}<br>{"".join(spans)}</p>')
        return "".join(parts) + "</div>"


__all__ = ["Comparison", "cost_markdown", "esc", "MAX_PROMPT_TOKENS", "MAX_NEW_TOKENS", "MAX_SCORE_TOKENS",
           "QUALITY_COLUMNS", "SCORE_COLUMNS"]
