"""hfq.evaluation: llama-perplexity's scoring, KL and top-1, for transformers models and GGUF files.
tests/test_evaluation_llama_perplexity.py checks the same numbers against llama-perplexity --kl-divergence."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfq.evaluation import chunks, decode_speed, default_text, score
from hfq.embedded import gguf_path


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits at position t are rows[t], whatever the input: its scores can be done by hand."""

    def __init__(self, rows):
        super().__init__()
        self.rows = torch.nn.Parameter(torch.tensor(rows).log(), requires_grad=False)   # logits = log(weights)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.rows[None, : input_ids.shape[1]])


def test_kl_top1_and_ppl_equal_a_hand_computation():
    """n_ctx 8: positions 4, 5, 6 are scored. Two tokens; base probabilities (1/4, 3/4) everywhere; the model has
    (2/3, 1/3) at positions 4 and 5 and (1/4, 3/4) at 6. Every target is token 1.
    KL(base||model) at 4 and 5 = 1/4 ln(3/8) + 3/4 ln(9/4), at 6 = 0 (the other direction, KL(model||base),
    would be 2/3 ln(8/3) + 1/3 ln(4/9)). top-1: the argmax differs at 4 and 5 and agrees at 6: 1/3.
    nll: ln 3, ln 3, ln(4/3): ppl = 12^(1/3)."""
    flip, same = [2.0, 1.0], [1.0, 3.0]
    model = FixedLogits([same] * 4 + [flip, flip, same, same])
    base = FixedLogits([same] * 8)
    windows = [torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1]])] * 2
    r = score(model, windows, base=base, progress=False)
    assert r["scored_tokens"] == 6 and r["chunks"] == 2
    assert r["kl"] == pytest.approx(2 * (math.log(3 / 8) / 4 + 3 * math.log(9 / 4) / 4) / 3, rel=1e-6)
    assert r["top1"] == pytest.approx(1 / 3)
    assert r["ppl"] == pytest.approx(12 ** (1 / 3), rel=1e-6)
    assert r["nll"] == pytest.approx((2 * math.log(3) + math.log(4 / 3)) / 3, rel=1e-6)


def test_self_comparison_is_exact(llama256_dir):
    model = AutoModelForCausalLM.from_pretrained(llama256_dir)
    g = torch.Generator().manual_seed(0)
    windows = [torch.randint(2, 512, (1, 64), generator=g) for _ in range(3)]
    r = score(model, windows, base=model, progress=False)
    assert r["kl"] == 0.0 and r["top1"] == 1.0
    assert r["scored_tokens"] == 3 * 31 and r["chunks"] == 3
    # perplexity from its definition, written independently: cross-entropy of the second half of each chunk
    with torch.no_grad():
        losses = [F.cross_entropy(model(input_ids=w).logits[0, 32:63], w[0, 33:64], reduction="sum") for w in windows]
    assert r["ppl"] == pytest.approx(math.exp(sum(losses).item() / 93), rel=1e-5)


def test_decode_speed_times_exactly_the_asked_tokens_even_past_eos(llama256_dir):
    model = AutoModelForCausalLM.from_pretrained(llama256_dir).eval()
    ids = torch.tensor([[5, 17, 42, 7]])
    with torch.no_grad():
        first = int(model(input_ids=ids).logits[0, -1].argmax())
    model.generation_config.eos_token_id = first   # greedy decoding would stop at once
    lengths = []
    generate = model.generate
    model.generate = lambda *a, **k: (lambda out: lengths.append(out.shape[1] - ids.shape[1]) or out)(generate(*a, **k))
    tps = decode_speed(model, lambda text, return_tensors: {"input_ids": ids}, new_tokens=6)
    assert lengths[-1] == 6 and tps > 0
    assert model.generation_config.eos_token_id == first   # the caller's config comes back


@pytest.mark.slow
def test_chunks_follow_llama_perplexity(gemma_dir):
    tok = AutoTokenizer.from_pretrained(gemma_dir)
    text, source = default_text()
    assert "Python Software Foundation" in source and len(text) > 100_000
    w = chunks(tok, text, n_ctx=128, max_chunks=3)
    ids = tok(text, return_tensors="pt")["input_ids"][0]
    assert len(w) == 3 and all(x.shape == (1, 128) for x in w)
    assert all(x[0, 0].item() == tok.bos_token_id for x in w)
    assert torch.equal(w[1][0, 1:], ids[129:256])
    with pytest.raises(ValueError, match="n_ctx=7 must be an even number"):
        chunks(tok, text, n_ctx=7)
    with pytest.raises(ValueError, match="fewer than one window"):
        chunks(tok, "too short", n_ctx=512)


@pytest.mark.slow
def test_gguf_file_through_llama_cpp_against_transformers(gemma_dir):
    """The shipped Q4_K_M file in llama.cpp against transformers on the same weights (the float folder was
    dequantized from that file). The engines differ only by llama.cpp's 8-bit activations; the issue measured
    KL 0.0144 and top-1 94.5% for this pair on 2,048 tokens."""
    tok = AutoTokenizer.from_pretrained(gemma_dir)
    windows = chunks(tok, default_text()[0], n_ctx=512, max_chunks=2)
    hf = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32)
    ref = score(hf, windows, progress=False)
    r = score(str(gguf_path()), windows, base=hf, threads=2, progress=False)
    print(f"llama.cpp Q4_K_M file vs transformers: ppl {r['ppl']:.3f} vs {ref['ppl']:.3f}, KL {r['kl']:.4f}, "
          f"top-1 {r['top1']:.3f}")
    assert r["kl"] < 0.025 and r["top1"] > 0.9
    assert r["ppl"] == pytest.approx(ref["ppl"], rel=0.03)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        score(str(tmp_path / "x.gguf"), [torch.zeros(1, 8, dtype=torch.long)])
    with pytest.raises(ValueError, match="no evaluation windows"):
        score("x.gguf", [])


def test_eval_no_speed_skips_the_decode_timing(export_dir, tmp_path, capsys):
    import json

    from hfq.cli import main

    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    runs = {}
    for flag in ([], ["--no-speed"]):
        out = tmp_path / f"r{len(flag)}.json"
        assert main(["eval", str(export_dir("llama")), "--text", str(text), "--ctx", "16", "--chunks", "2",
                     "--json", str(out), *flag]) == 0
        runs[bool(flag)] = (json.loads(out.read_text()), capsys.readouterr().out)
    assert runs[False][0]["decode_tokens_per_s"] > 0 and "decode" in runs[False][1]
    assert "decode_tokens_per_s" not in runs[True][0] and "decode" not in runs[True][1]
    assert runs[True][0]["ppl"] == runs[False][0]["ppl"]
