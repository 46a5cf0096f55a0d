"""Shared by the comparison Space's tests (tests/test_space*.py): the tiny variants, the page launched in-process,
and the references from outside hfq.space: transformers' model.generate and forward passes, greedy loops over
llama.cpp's logits."""

import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

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
