"""The comparison Space's models: what a name on the command line means, lazy loading (once, cached, errors
included), and generation streamed piece by piece with the same token ids, seed and sampling for every panel.

Every panel is fed the base tokenizer's ids for the prompt, and a GGUF file's tokens are decoded with that
tokenizer too, so all panels see and show exactly the same tokens."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..embedded import EMBEDDED, resolve
from ..evaluation import _no_extra_buffers, peak_rss_mb, size
from ..integration import load_causal_lm, load_tokenizer, token_streamer

logger = logging.getLogger(__name__)

EVAL_FILE = "hfq_eval.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)/([^/]+\.gguf)$")   # namespace/name/file.gguf


@dataclass
class Spec:
    """One panel's model. kind: "transformers" (folder, Hub id, embedded name) or "gguf" (file or Hub file).
    result: its evaluation read from hfq_eval.json / results.json (None: measured on demand)."""
    name: str
    kind: str
    source: str
    result: dict | None = None
    origin: str = ""          # where result came from, shown in the quality table


def spec(item: str, name: str | None = None, result: dict | None = None, origin: str = "") -> Spec:
    """A --models entry as a Spec. Nothing is checked on disk here: a missing model fails in its own panel."""
    item = str(item)
    kind = "gguf" if item.lower().endswith(".gguf") else "transformers"
    shown = Path(item).name if Path(item).exists() else item   # a local path by its last part
    s = Spec(name or shown, kind, item, result, origin)
    if result is None and kind == "transformers" and (Path(item) / EVAL_FILE).is_file():
        s.result, s.origin = _read(Path(item) / EVAL_FILE), EVAL_FILE
    elif result is None and kind == "gguf" and (Path(item).parent / EVAL_FILE).is_file():
        stored = _read(Path(item).parent / EVAL_FILE) or {}
        stem = Path(item).stem   # hfq push names GGUF files {stem}-{variant}.gguf
        hits = [v for k, v in stored.items() if isinstance(v, dict) and stem.endswith(f"-{k}")]
        if hits:
            s.result, s.origin = hits[0], EVAL_FILE
    return s


def _read(path: Path):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def from_variants(folder: str | Path) -> list[Spec]:
    """The base and the variants of a folder that `hfq demo` or `hfq push --dry-run` wrote (its results.json)."""
    folder = Path(folder)
    results = _read(folder / "results.json")
    if not results or "base" not in results or not isinstance(results.get("variants"), list):
        raise ValueError(f"--variants {folder}: no readable results.json there; pass a folder written by "
                         "`hfq demo` or `hfq push --dry-run`.")
    base = results["base"]
    out = [spec(str(base.get("model", "")), result=base, origin="results.json")]
    for r in results["variants"]:
        src = r.get("file") if r.get("kind") == "gguf" else r.get("folder")
        out.append(spec(str(src), name=str(r.get("variant", src)), result=r.get("result"), origin="results.json"))
    return out


@dataclass
class Loaded:
    kind: str
    model: object             # a transformers model, or a llama_cpp.Llama
    path: Path                # what is on disk (for its size)
    size: dict = field(default_factory=dict)


def _hub_file(source: str) -> Path:
    m = _HUB_FILE.match(source)
    if not m:
        raise FileNotFoundError(f"GGUF file {source!r} does not exist; pass a local .gguf path or "
                                "namespace/name/file.gguf on the Hub.")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(m.group(1), m.group(2)))


def load(s: Spec, n_ctx: int = 1024) -> Loaded:
    """Load one model (float32 for transformers; llama.cpp with every token's logits kept, for the divergence
    view, over n_ctx: the prompt limit, 512, and the most new tokens, 256, fit). Raises with a message that names
    the model."""
    if s.kind == "gguf":
        path = Path(s.source) if Path(s.source).is_file() else _hub_file(s.source)
        try:
            import llama_cpp
        except ImportError as e:
            raise RuntimeError(f"{s.name}: GGUF files need llama-cpp-python; `pip install llama-cpp-python`.") from e
        with _no_extra_buffers(llama_cpp):
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, logits_all=True, verbose=False)
        return Loaded("gguf", llm, path, size(path))
    import hfq  # noqa: F401  (registers the hfq quantizer with transformers)

    src = resolve(s.source) if s.source in EMBEDDED else s.source
    if not Path(src).exists() and not _HUB_ID.match(src):
        raise FileNotFoundError(f"model {s.source!r} is not a folder, a .gguf file, a Hub id (namespace/name) or "
                                f"an embedded name ({', '.join(EMBEDDED)}).")
    model = load_causal_lm(src).eval()   # float32
    path = Path(src) if Path(src).exists() else Path(model.name_or_path)
    try:
        sz = size(path)
    except (OSError, ValueError, KeyError):   # a Hub model outside a local folder: size unknown
        sz = {}
    return Loaded("transformers", model, path, sz)


class Pool:
    """Loads each spec on first use, once; a failure is remembered and re-raised, so a broken variant costs one
    attempt and every request shows the same message."""

    def __init__(self, specs: list[Spec]):
        self.specs = specs
        self._done: dict[int, Loaded | Exception] = {}
        self._lock = threading.Lock()
        self._tok = None

    def get(self, i: int) -> Loaded:
        with self._lock:
            if i not in self._done:
                try:
                    self._done[i] = load(self.specs[i])
                except Exception as e:  # noqa: BLE001 (any failure belongs to that panel only)
                    logger.warning("hfq: %s failed to load: %s", self.specs[i].name, e)
                    self._done[i] = e
            got = self._done[i]
        if isinstance(got, Exception):
            raise got
        return got

    def tokenizer(self):
        """The base's tokenizer, shared by every panel."""
        if self._tok is None:
            base = self.specs[0]
            if base.kind != "transformers":
                raise ValueError(f"the base {base.name!r} is a GGUF file; the first model must be a folder, a Hub "
                                 f"id or {', '.join(EMBEDDED)} (its tokenizer is shared by every panel).")
            src = resolve(base.source) if base.source in EMBEDDED else base.source
            self._tok = load_tokenizer(src)
        return self._tok


@dataclass
class Settings:
    """The same for every panel. temperature 0 is greedy (the default)."""
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Cost:
    """What one answer cost: time to first token and decode speed (seconds, tokens/s), process peak RSS."""
    tokens: int = 0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    peak_rss_mb: float | None = None


def _eos_ids(tok, loaded: Loaded | None = None) -> set[int]:
    """Where an answer ends: the tokenizer's eos, and the model's own (generation_config, or llama.cpp's)."""
    ids, model = set(), None
    if loaded is not None and loaded.kind == "gguf":
        ids.add(int(loaded.model.token_eos()))
    elif loaded is not None:
        model = loaded.model
    for v in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tok.eos_token_id):
        ids.update(v if isinstance(v, (list, tuple)) else [] if v is None else [v])
    return ids


def _token_ids(loaded: Loaded, tok, ids: torch.Tensor, st: Settings):
    """Yield new token ids one at a time, as the model makes them."""
    if loaded.kind == "gguf":
        llm = loaded.model
        llm.set_seed(st.seed)
        greedy = st.temperature <= 0
        eos = _eos_ids(tok, loaded)
        gen = llm.generate(ids[0].tolist(), temp=0.0 if greedy else st.temperature, top_p=1.0 if greedy else st.top_p,
                           top_k=1 if greedy else 0, min_p=0.0, repeat_penalty=1.0, reset=True)
        for n, t in enumerate(gen):
            if n >= st.max_new_tokens:
                return
            yield int(t)
            if t in eos:   # yielded, as generate()'s streamer hands it over: both kinds count the same tokens
                return
        return
    q: list = []
    cond = threading.Condition()
    first = True

    def put(value):   # hands generate()'s tokens to this thread as they come
        nonlocal first
        if first:   # generate() puts the prompt first
            first = False
            return
        with cond:
            q.extend(int(x) for x in value.reshape(-1))
            cond.notify()

    def end():
        with cond:
            q.append(None)
            cond.notify()

    errors: list[BaseException] = []
    kw = dict(do_sample=False) if st.temperature <= 0 else dict(do_sample=True, temperature=st.temperature,
                                                               top_p=st.top_p, top_k=0)

    def run():
        try:
            torch.manual_seed(st.seed)
            loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=st.max_new_tokens,
                                  streamer=token_streamer(put, end),
                                  pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                                  **kw)
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
            errors.append(e)
            with cond:
                q.append(None)
                cond.notify()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    i = 0
    while True:
        with cond:
            cond.wait_for(lambda: len(q) > i)
            t = q[i]
        i += 1
        if t is None:
            break
        yield t
    th.join()
    if errors:
        raise errors[0]


def stream(loaded: Loaded, tok, ids: torch.Tensor, st: Settings, cost: Cost):
    """Yield the answer's text so far after each token (decoded with the base tokenizer, special tokens hidden);
    fills `cost` as it goes."""
    t0 = time.perf_counter()
    new: list[int] = []
    eos = _eos_ids(tok, loaded)
    t_first = t_last = None
    text = ""
    for t in _token_ids(loaded, tok, ids, st):
        t_last = time.perf_counter()
        t_first = t_first or t_last
        new.append(t)
        cost.tokens = len(new)
        cost.ttft_s = t_first - t0
        if len(new) > 1:
            cost.tokens_per_s = (len(new) - 1) / max(t_last - t_first, 1e-9)
        if t in eos:
            break
        shown = tok.decode(new, skip_special_tokens=True).rstrip("\ufffd")   # the rest of a character may follow
        if shown != text:
            text = shown
            yield text
    final = tok.decode(new, skip_special_tokens=True)
    cost.peak_rss_mb = peak_rss_mb()
    if final != text:
        yield final


__all__ = ["Spec", "spec", "from_variants", "Pool", "Settings", "Cost", "stream", "load"]
