"""Evaluation of a quantized model against its base: perplexity, KL divergence, top-1 agreement, speed, size.

- evaluate(model, base, text=...): the whole report for folders, Hub ids, the embedded name or .gguf files
  (hfq.evaluate, `hfq eval`);
- score(model, windows, base=...): the metrics on token windows, for loaded models or .gguf files.

Scoring follows llama.cpp's llama-perplexity, so numbers are comparable with it: the text becomes one token
stream (BOS first), cut into chunks of n_ctx tokens whose first token is BOS, and each chunk scores only its
second half (positions n_ctx/2 .. n_ctx-2 predict the next token), so every scored token has context.
Models are anything with `model(input_ids=...).logits` (transformers, hfq) or a GGUF file run by
llama-cpp-python.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .algorithms.calibration import token_windows
from .checkpoint import NO_REMOTE_CODE, SAFE_LOAD, describe, describe_gguf
from .embedded import resolve
from .gguf.export import check_gguf


def pydoc_halves() -> tuple[str, str]:
    """Disjoint halves of CPython's pydoc topics (PSF license), shipped with every Python: (first, second)."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    half = len(names) // 2
    return ("\n\n".join(topics[n] for n in names[:half]), "\n\n".join(topics[n] for n in names[half:]))


def default_text() -> tuple[str, str]:
    """(text, source): the held-out (second) half of pydoc_halves(); calibration uses the first."""
    return (pydoc_halves()[1],
            "CPython pydoc_data.topics, second half of the topics (Python Software Foundation License)")


def chunks(tokenizer, text: str, n_ctx: int = 512, max_chunks: int | None = None) -> list[torch.Tensor]:
    """llama-perplexity's chunks: tokenize with BOS, cut into n_ctx windows, BOS first in each."""
    if n_ctx < 4 or n_ctx % 2:
        raise ValueError(f"n_ctx={n_ctx} must be an even number of at least 4 tokens.")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=True)["input_ids"][0]
    out = token_windows(ids, n_ctx, tokenizer.bos_token_id)
    return out[:max_chunks] if max_chunks else out


_chunks = chunks   # evaluate()'s `chunks` argument shadows the function there


class _HF:
    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def logprobs(self, window: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=window.to(self.device)).logits[0].float().cpu()
        return F.log_softmax(logits, -1)


class GGUFModel:
    """A GGUF file in llama.cpp through llama-cpp-python (a test/eval extra)."""

    def __init__(self, path: Path, n_ctx: int, threads: int | None = None):
        import llama_cpp

        with _no_extra_buffers(llama_cpp):
            self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                                       verbose=False, n_threads=threads)
        self.n_vocab = self.llm.n_vocab()

    def logprobs(self, window: torch.Tensor) -> torch.Tensor:
        import numpy as np

        self.llm.reset()
        self.llm.eval(window[0].tolist())
        scores = np.array(self.llm.scores[: window.shape[1]], dtype=np.float32)
        return F.log_softmax(torch.from_numpy(scores), -1)


@contextlib.contextmanager
def _no_extra_buffers(llama_cpp):
    """ggml's AMX/extra-buffer repack crashes on some CPUs at the first eval; load without it."""
    orig = llama_cpp.llama_cpp.llama_model_default_params

    def params():
        p = orig()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    llama_cpp.llama_cpp.llama_model_default_params = params
    llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = orig
        llama_cpp.llama_model_default_params = orig


def _runner(model, n_ctx: int, threads: int | None):
    if isinstance(model, (str, Path)) and str(model).endswith(".gguf"):
        check_gguf(model)
        return GGUFModel(Path(model), n_ctx, threads)
    if not hasattr(model, "parameters"):
        raise ValueError(f"cannot evaluate {model!r}: pass a loaded model or the path of a .gguf file.")
    return _HF(model)


def score(model, windows: list[torch.Tensor], base=None, threads: int | None = None,
          progress: bool = True) -> dict:
    """Perplexity of `model` on the windows and, with `base`, mean KL(base || model) and top-1 agreement over
    the same scored positions. model/base: a loaded model or a .gguf path."""
    if not windows:
        raise ValueError("no evaluation windows: the text is shorter than one context; give more text.")
    n_ctx = windows[0].shape[1]
    first = n_ctx // 2
    run = _runner(model, n_ctx, threads)
    ref = _runner(base, n_ctx, threads) if base is not None else None
    nll, count, kl, agree, t_model = 0.0, 0, 0.0, 0, 0.0
    for w in tqdm(windows, desc="evaluate", unit="chunk", disable=not progress or len(windows) < 2):
        t0 = time.perf_counter()
        lp = run.logprobs(w)[first:n_ctx - 1]
        t_model += time.perf_counter() - t0
        tgt = w[0, first + 1:n_ctx]
        nll -= lp.gather(1, tgt.unsqueeze(1)).sum().item()
        count += tgt.numel()
        if ref is not None:
            rl = ref.logprobs(w)[first:n_ctx - 1]
            kl += (rl.exp() * (rl - lp)).sum().item()
            agree += (lp.argmax(-1) == rl.argmax(-1)).sum().item()
    out = {"ppl": math.exp(nll / count), "nll": nll / count, "scored_tokens": count, "chunks": len(windows),
           "n_ctx": n_ctx, "prefill_tokens_per_s": len(windows) * n_ctx / t_model}
    if ref is not None:
        out.update({"kl": kl / count, "top1": agree / count})
    return out


@torch.no_grad()
def decode_speed(model, tokenizer, prompt: str = "The capital of France is", new_tokens: int = 32) -> float:
    """Greedy decode tokens/s of a transformers/hfq model (KV cache on)."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    model.generate(ids, max_new_tokens=2, do_sample=False)   # warm-up
    # Exactly new_tokens, with EOS off for the call: min_new_tokens would mask EOS over the whole vocabulary on
    # every step (7-9 ms of a 35 ms Gemma token), a cost no plain generate pays.
    gc = model.generation_config
    eos, gc.eos_token_id = gc.eos_token_id, None
    try:
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
        return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0)
    finally:
        gc.eos_token_id = eos


def load(model, quantization_config=None):
    """A folder, Hub id or embedded name as a float32 transformers model in eval mode (quantized if asked)."""
    from transformers import AutoModelForCausalLM

    kw = {"quantization_config": quantization_config} if quantization_config is not None else {}
    return AutoModelForCausalLM.from_pretrained(resolve(str(model)), dtype=torch.float32, **SAFE_LOAD, **kw).eval()


def size(path: str | Path) -> dict:
    """Bytes on disk and bits per weight, overall and per module type (q_proj, mlp's down_proj, ...)."""
    path = Path(resolve(str(path)))
    if path.suffix == ".gguf":
        d = describe_gguf(path)
        return {"bytes": d["bytes_on_disk"], "bpw": d["model_bpw"], "parameters": d["parameters"],
                "modules": d["modules"], "types": d["types"]}
    d = describe(path)
    return {"bytes": d["bytes_on_disk"], "bpw": d["model_bpw"], "quantized_bpw": d["quantized_bpw"],
            "parameters": d["parameters"], "modules": d["modules"], "types": d["types"]}


def machine() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def measure(model, base, tokenizer, windows, threads=None, progress=True, decode_tokens: int = 32) -> dict:
    """score() plus greedy decode speed (transformers models; decode_tokens=0 skips it) and the machine."""
    out = score(model, windows, base, threads=threads, progress=progress)
    if hasattr(model, "generate") and decode_tokens:
        out["decode_tokens_per_s"] = decode_speed(model, tokenizer, new_tokens=decode_tokens)
    out["machine"] = machine()
    return out


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (None where the OS does not report it, e.g. Windows)."""
    try:
        import resource   # Unix only
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate(model, base=None, *, text: str | None = None, ctx: int = 512, chunks: int | None = 4,
             threads: int | None = None, progress: bool = True, speed: bool = True) -> dict:
    """hfq.evaluate: perplexity, KL and top-1 against `base`, speed, and size, as one JSON-ready dict.

    model: a folder, Hub id, embedded name ("gemma-3-270m") or .gguf file; base: the same kinds (needed for a
    GGUF file, whose tokenizer it provides). text: evaluation text (default: held-out CPython docs, docs/evaluation.md).
    chunks: how many ctx-token chunks (None: the whole text). speed=False skips the 32-token decode timing."""
    is_gguf = str(model).endswith(".gguf")
    if base is None and is_gguf:
        raise ValueError("a .gguf file needs --base / base= (the folder or embedded name whose tokenizer and logits "
                         "to use).")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(str(base if base is not None else model)), **NO_REMOTE_CODE)
    source = "the given text"
    if text is None:
        text, source = default_text()
    windows = _chunks(tok, text, ctx, chunks)
    m = str(model) if is_gguf else load(model)
    b = load(base) if base is not None else None
    result = {"model": str(model), "base": None if base is None else str(base), "text": source,
              **measure(m, b, tok, windows, threads, progress, decode_tokens=32 if speed else 0)}
    result["size"] = size(model)
    result["peak_rss_mb"] = peak_rss_mb()
    return result
