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
    def _top1(self, loaded, full: list[int], n: int) -> list[int]:
        """The model's top-1 next token after each of the last n positions of `full` but the final one: one
        teacher-forced pass. Only those n rows of logits are kept (Gemma's are 1 MB a row)."""
        if loaded.kind == "gguf":
            import numpy as np

            llm = loaded.model
            llm.reset()
            llm.eval(full)
            return np.asarray(llm.scores[len(full) - n - 1: len(full) - 1]).argmax(-1).tolist()
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([full]), logits_to_keep=n + 1).logits[0]
        return logits[:-1].argmax(-1).tolist()

    def divergence(self, prompt: str, max_new_tokens: int = 32) -> list[dict]:
        """Where each variant leaves the base, for one prompt. Indices count the new tokens from 0 (the prompt's
        are not counted). Per model: `tokens`, the base's greedy tokens; `greedy`, the model's own greedy tokens;
        `first`, the first index where they differ (None: the same answer; an answer that ends early differs at
        its end); `disagree`, every index where the model's top-1, fed the prompt and the base's tokens before
        it, is not the base's token; `top1`, those top-1s. Up to `first` both answers saw the same context, so
        `first` is disagree[0] unless a near-tie flips between cached and full-pass logits. `context`: the
        prompt's last token, which the answer is decoded after. Base first."""
        ids = self.prompt_ids(prompt)
        st = self.settings(max_new_tokens, 0.0, 1.0, 0)
        tok = self.pool.tokenizer()
        base_new = list(_token_ids(self.pool.get(0), tok, ids, st))
        prompt_ids = ids[0].tolist()
        full = prompt_ids + base_new
        ctx = prompt_ids[-1:]   # what the answer's first token is decoded after
        out = [{"name": self.specs[0].name, "tokens": base_new, "greedy": base_new, "top1": base_new,
                "disagree": [], "first": None, "error": None, "context": ctx}]
        for i in range(1, len(self.specs)):
            row = {"name": self.specs[i].name, "tokens": base_new, "greedy": [], "top1": [], "disagree": [],
                   "first": None, "error": None, "context": ctx}
            try:
                loaded = self.pool.get(i)
                row["greedy"] = list(_token_ids(loaded, tok, ids, st))
                row["first"] = first_difference(base_new, row["greedy"])
                row["top1"] = self._top1(loaded, full, len(base_new))   # the prompt's last predicts token 0
                row["disagree"] = [k for k, (a, b) in enumerate(zip(row["top1"], base_new)) if a != b]
            except Exception as e:  # noqa: BLE001
                row["error"] = _first_line(e)
            out.append(row)
        return out

    def divergence_html(self, rows: list[dict]) -> str:
        """The divergence view: the base's tokens once per variant, top-1 disagreements marked (hover: the
        variant's top-1), the first differing token framed, then the variant's own greedy tokens from there.
        data-first holds that index (0-based, new tokens only)."""
        tok, ctx = self.pool.tokenizer(), rows[0]["context"]
        base = rows[0]["tokens"]
        shown = [token_html(t) for t in token_pieces(tok, ctx, base)]
        parts = [f'<div id="hfq-divergence"><p class="hfq-base"><b>{esc(rows[0]["name"])}</b> (base, greedy, '
                 f'{len(base)} new tokens): '
                 + "".join(f'<span class="hfq-tok">{x}</span>' for x in shown) + "</p>"]
        for r in rows[1:]:
            if r["error"]:
                parts.append(f'<p class="hfq-variant" data-first="error"><b>{esc(r["name"])}</b>: error: '
                             f'{esc(r["error"])}</p>')
                continue
            first = r["first"]
            where = ("the same greedy tokens as the base" if first is None else
                     f"its greedy tokens first differ at new token {first + 1} of {len(base)}")
            where += f"; its top-1 disagrees with the base's token at {len(r['disagree'])}"
            spans = []
            for k, x in enumerate(shown):
                frame = "outline:2px solid #c00;" if k == first else ""
                if k in r["disagree"]:
                    alt = token_html(token_pieces(tok, ctx + base[:k], [r["top1"][k]])[0])
                    spans.append(f'<mark class="hfq-diff" style="background:#fcc;{frame}" '
                                 f'title="its top-1: {alt}">{x}</mark>')
                else:
                    spans.append(f'<span class="hfq-tok" style="{frame}">{x}</span>')
            own = ""
            if first is not None:
                own = ('<br><i>its own greedy answer from there:</i> <span class="hfq-own">'
                       + "".join(token_html(x) for x in token_pieces(tok, ctx + base[:first], r["greedy"][first:]))
                       + "</span>")
            parts.append(f'<p class="hfq-variant" data-first="{"none" if first is None else first}">'
                         f'<b>{esc(r["name"])}</b>: {where}<br>{"".join(spans)}{own}</p>')
        return "".join(parts) + "</div>"


def token_pieces(tok, context: list[int], tokens: list[int]) -> list[str]:
    """Each token's text as it reads in the answer: decoded after the context and the tokens before it (a lone
    SentencePiece token decodes without its leading space, so words would run together). A character split
    over byte tokens shows on its last one."""
    def text(ids):
        return tok.decode(ids, skip_special_tokens=False).rstrip("\ufffd")

    out, prev = [], text(context)
    for k in range(len(tokens)):
        cur = text(context + tokens[: k + 1])
        out.append(cur[len(prev):] if cur.startswith(prev) else tok.decode([tokens[k]]))
        prev = cur
    return out


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where two token lists differ; an answer that is a strict prefix of the other differs at
    its end; None when they are equal."""
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return k
    return None if len(a) == len(b) else min(len(a), len(b))


def token_html(s: str) -> str:
    """One token's text for HTML: markup inert, its spaces and line breaks kept visible (esc would drop a
    leading space, and words would run together)."""
    return (html.escape(s, quote=True).replace(" ", "&nbsp;").replace("\n", "&#9166;").replace("\t", "&#8677;")
            or "&#8203;")


__all__ = ["Comparison", "cost_markdown", "esc", "first_difference", "token_html", "token_pieces", "MAX_PROMPT_TOKENS",
           "MAX_NEW_TOKENS", "MAX_SCORE_TOKENS", "QUALITY_COLUMNS", "SCORE_COLUMNS"]
