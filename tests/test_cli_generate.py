"""`hfq generate` and `hfq chat` on an hfq folder and a .gguf file: the streamed text equals transformers'
model.generate (or llama-cpp-python's non-streamed completion) with the same settings; driven through a pipe, and
chat through tmux."""

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hfq
from hfq.cli import main
from hfq.evaluation import load

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The quick brown fox"
N = 10


@pytest.fixture(scope="module")
def hfq_dir(export_dir, tmp_path_factory):
    """A tiny Qwen2 with a byte-level tokenizer and a ChatML chat template, quantized to nf4 and saved."""
    src = export_dir("qwen2")
    d = tmp_path_factory.mktemp("gen-nf4")
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=hfq.HfqConfig(method="nf4"))
    model.save_pretrained(d)
    AutoTokenizer.from_pretrained(src).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def gguf_file(export_dir, tmp_path_factory):
    src = export_dir("qwen2")
    path = tmp_path_factory.mktemp("gen-gguf") / "tiny-q8_0.gguf"
    hfq.export_gguf(AutoModelForCausalLM.from_pretrained(src), AutoTokenizer.from_pretrained(src), path,
                    quant_type="Q8_0", progress=False)
    return path


def _expected(d, enc, **kw):
    tok, model = AutoTokenizer.from_pretrained(d), load(d)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=N, pad_token_id=tok.pad_token_id, **kw)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "hfq.cli", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)


def test_generate_through_a_pipe_equals_model_generate(hfq_dir):
    tok = AutoTokenizer.from_pretrained(hfq_dir)
    want = _expected(hfq_dir, tok(PROMPT, return_tensors="pt"), do_sample=False)
    r = _cli("generate", str(hfq_dir), "--max-new-tokens", str(N), stdin=PROMPT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"
    assert want.strip() and f"[{N} tokens, " in r.stderr and "tokens/s]" in r.stderr


def test_sampled_generate_equals_model_generate_with_the_seed(hfq_dir, capsys):
    tok = AutoTokenizer.from_pretrained(hfq_dir)
    torch.manual_seed(7)
    want = _expected(hfq_dir, tok(PROMPT, return_tensors="pt"), do_sample=True, temperature=1.3, top_k=20, top_p=0.9)
    assert main(["generate", str(hfq_dir), "--prompt", PROMPT, "--max-new-tokens", str(N), "--temperature", "1.3",
                 "--top-k", "20", "--top-p", "0.9", "--seed", "7"]) == 0
    assert capsys.readouterr().out == want + "\n"


def _chat_expected(d, turns):
    tok, model = AutoTokenizer.from_pretrained(d), load(d)
    messages, replies = [], []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=N, do_sample=False, pad_token_id=tok.pad_token_id)
        reply = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        messages.append({"role": "assistant", "content": reply})
        replies.append(reply)
    return replies


def test_chat_keeps_the_turns(hfq_dir, capsys, monkeypatch):
    """Two turns from a non-terminal stdin: each reply is generated on the whole conversation so far."""
    turns = ["hello there", "and the fox?"]
    want = _chat_expected(hfq_dir, turns)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(turns) + "\n"))
    assert main(["chat", str(hfq_dir), "--max-new-tokens", str(N)]) == 0
    out = capsys.readouterr()
    assert out.out == "".join(w + "\n" for w in want)
    assert out.err.count("tokens/s]") == 2 and "you>" not in out.err   # no prompt when stdin is not a terminal


def test_chat_in_a_terminal(hfq_dir, tmp_path):
    if shutil.which("tmux") is None:
        from ggml_oracle import in_ci

        (pytest.fail if in_ci() else pytest.skip)("tmux is not installed (.ci/run installs it)")
    want = _chat_expected(hfq_dir, ["hello there"])[0]
    session = f"hfq-chat-{os.getpid()}"
    cmd = f"cd {ROOT} && PYTHONPATH={ROOT} {sys.executable} -m hfq.cli chat {hfq_dir} --max-new-tokens {N}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50", cmd], check=True)
    try:
        pane = _wait_for(session, "you>")   # capture-pane drops trailing spaces
        subprocess.run(["tmux", "send-keys", "-t", session, "hello there", "Enter"], check=True)
        pane = _wait_for(session, "tokens/s]")
        subprocess.run(["tmux", "send-keys", "-t", session, "/exit", "Enter"], check=True)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    lines = pane.splitlines()
    assert "you> hello there" in lines
    assert want.splitlines()[0] in lines[lines.index("you> hello there") + 1]


def _wait_for(session, text, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        pane = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
        if text in pane:
            return pane
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared; the pane shows:\n{pane}")


def _llama(path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from hfq.evaluation import _no_extra_buffers

    with _no_extra_buffers(llama_cpp):
        return llama_cpp.Llama(model_path=str(path), n_ctx=2048, seed=0, verbose=False)


def test_generate_and_chat_on_a_gguf_file_equal_llama_cpp(gguf_file, capsys, monkeypatch):
    llm = _llama(gguf_file)
    want = llm.create_completion(PROMPT, max_tokens=N, temperature=0.0, top_k=50, top_p=1.0, seed=0)
    assert main(["generate", str(gguf_file), "--prompt", PROMPT, "--max-new-tokens", str(N)]) == 0
    assert want["choices"][0]["text"].strip() and want["usage"]["completion_tokens"] == N
    assert capsys.readouterr().out == want["choices"][0]["text"] + "\n"

    reply = llm.create_chat_completion([{"role": "user", "content": "hello there"}], max_tokens=N, temperature=0.0,
                                       top_k=50, top_p=1.0, seed=0)["choices"][0]["message"]["content"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\n"))
    assert main(["chat", str(gguf_file), "--max-new-tokens", str(N)]) == 0
    assert reply.strip()
    assert capsys.readouterr().out == reply + "\n"


def test_bad_settings_get_one_clear_line(hfq_dir, capsys, monkeypatch):
    assert main(["generate", str(hfq_dir), "--prompt", "x", "--top-p", "1.5"]) == 1
    assert capsys.readouterr().err == "hfq: error: --top-p 1.5 must be in (0, 1].\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["generate", str(hfq_dir)]) == 1
    assert capsys.readouterr().err.startswith("hfq: error: the prompt is empty; pass --prompt TEXT")
