"""GGUF export of the embedded Gemma-3-270M, run by llama.cpp (llama-cpp-python) and transformers."""

import gguf
import numpy as np
import pytest
import torch

import hfq
from ggml_oracle import llama_quantize, llama_tokenize, read_gguf
from helpers import PARAGRAPH, PREFILL_LOGIT_TOL, assert_logits_close
from hfq.evaluation import chunks, score, pydoc_halves

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma(gemma_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("gemma-export")
    tok = AutoTokenizer.from_pretrained(gemma_dir)
    flt = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()
    files = {qt: hfq.export_gguf(flt, tok, root / f"float-{qt}.gguf", quant_type=qt, progress=False)[0]
             for qt in ("F32", "Q8_0", "Q4_K_M")}
    return {"dir": gemma_dir, "tok": tok, "files": files, "root": root}


def _hfq_model(gemma_dir, qt):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gemma_dir, quantization_config=hfq.HfqConfig(
        method="gguf", quant_type=qt), dtype=torch.float32).eval()


@pytest.mark.parametrize("qt", ["Q8_0", "Q4_K_M"])
def test_export_equals_llama_cpp_conversion_and_runs_like_it(qt, gemma, tmp_path):
    """llama.cpp's own conversion of the same weights (llama_model_quantize from the F32 file) holds the same
    bytes in every tensor; llama.cpp's logits on both files agree (top-1 >= 99.9%, mean KL <= 1e-4). Then an
    hfq gguf-method model exports to exactly the same file contents as the float model quantized on export."""
    theirs_path = tmp_path / "llama-cpp.gguf"
    theirs = llama_quantize(gemma["files"]["F32"], theirs_path, qt)
    ours = read_gguf(gemma["files"][qt])
    assert ours.keys() == theirs.keys() and len(ours) == 236
    for n in theirs:
        assert ours[n][0] == theirs[n][0], n
        np.testing.assert_array_equal(ours[n][1], theirs[n][1], err_msg=n)
    windows = chunks(gemma["tok"], pydoc_halves()[1], 256)[:2]
    r = score(gemma["files"][qt], windows, base=theirs_path, threads=2)
    assert r["top1"] >= 0.999 and r["kl"] <= 1e-4, r
    from_hfq = hfq.export_gguf(_hfq_model(gemma["dir"], qt), gemma["tok"], tmp_path / "hfq-model.gguf",
                               progress=False)[0]
    again = read_gguf(from_hfq)
    for n in ours:
        assert again[n][0] == ours[n][0], n
        np.testing.assert_array_equal(again[n][1], ours[n][1], err_msg=n)


def test_llama_cpp_tokenizes_like_transformers_and_generates(gemma):
    tok, path = gemma["tok"], gemma["files"]["Q4_K_M"]
    for text in (PARAGRAPH, pydoc_halves()[1][:4000], "Tabs\tand  double  spaces, ünïcödé — emoji 🤖 <b>tags</b>"):
        ids, bos = llama_tokenize(path, text)
        assert ids.tolist() == tok(text)["input_ids"], text[:40]
        assert bos == tok.bos_token_id
    import llama_cpp

    from hfq.evaluation import _no_extra_buffers
    with _no_extra_buffers(llama_cpp):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False, n_threads=2)
    text = llm("The capital of France is", max_tokens=12, temperature=0.0)["choices"][0]["text"]
    assert text.startswith(" the capital of the country of France."), text


def test_transformers_loads_export_and_llama_cpp_stays_within_engine_bounds(gemma, tmp_path):
    """transformers' GGUF loader runs the export with the hfq model's logits (both sides hold the mix's quantized
    token embedding, hfq's packed, transformers' dequantized from the file), within hfq's kernel rounding
    (tests/helpers.py). llama.cpp's logits on the same file differ from transformers' only by what the engines
    differ by anyway (8-bit activations in llama.cpp's dot products): KL <= 0.025 at Q4_K_M."""
    from transformers import AutoModelForCausalLM

    model = _hfq_model(gemma["dir"], "Q4_K_M")
    path = hfq.export_gguf(model, gemma["tok"], tmp_path / "g.gguf", progress=False)[0]
    emb = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    assert emb.tensor_type.name == model.model.embed_tokens.ggml_type, "the export rewrote the stored table"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="g.gguf", dtype=torch.float32).eval()
    ids = gemma["tok"](PARAGRAPH, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = model(ids[:, :16]).logits, loaded(ids[:, :16]).logits   # hfq's GEMV kernels: int16 activations
        assert_logits_close(a, b)
        a, b = model(ids).logits, loaded(ids).logits                   # prefill: bfloat16 tiles
    assert_logits_close(a, b, PREFILL_LOGIT_TOL)
    windows = chunks(gemma["tok"], pydoc_halves()[1], 512)[:2]
    r = score(path, windows, base=model, threads=2)
    assert r["kl"] <= 0.025 and r["top1"] >= 0.9, r
