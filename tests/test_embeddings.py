"""Quantized embeddings and output head (HfqConfig(embeddings=...)): bytes against llama.cpp's own quantizer,
lookups against the decoded table, the tie surviving save and reload, and the refusals."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import hfq
from ggml_oracle import llama_quantize
from hfq.nn import HfqEmbedding, HfqLinear

IDS = torch.tensor([[1, 5, 9, 200, 33, 7, 81, 400, 2, 3, 11, 12]])


def _gguf_rows(raw: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(raw).reshape(n, -1)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])   # untied, tied, tied with a scaled embedding
@pytest.mark.parametrize("qt", ["Q4_K_M", "Q6_K", "Q2_K"])
def test_gguf_checkpoint_tables_equal_llama_quantize(export_dir, tmp_path, arch, qt):
    """An hfq gguf checkpoint stores token_embd (and output) exactly as llama_model_quantize writes them from
    hfq's F32 export of the same float model."""
    src = export_dir(arch)
    base = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(src)
    f32 = hfq.export_gguf(base, tok, tmp_path / "f32.gguf", quant_type="F32", progress=False)[0]
    theirs = llama_quantize(f32, tmp_path / "lc.gguf", qt)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=hfq.HfqConfig(method="gguf", quant_type=qt))
    emb = model.get_input_embeddings()
    assert isinstance(emb, HfqEmbedding)
    typ, data = theirs["token_embd.weight"]
    assert emb.ggml_type == typ
    np.testing.assert_array_equal(_gguf_rows(data, emb.num_embeddings), emb.weight.numpy())
    if model.config.tie_word_embeddings:
        assert "output.weight" not in theirs
        assert model.lm_head.weight is emb.weight
    else:
        typ, data = theirs["output.weight"]
        assert model.lm_head.ggml_type == typ
        np.testing.assert_array_equal(_gguf_rows(data, model.lm_head.out_features), model.lm_head.weight.numpy())


@pytest.mark.parametrize("kind", ["int8", "Q6_K", "Q8_0"])
def test_lookup_equals_rows_of_the_decoded_table(kind):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(300, 256, generator=g)
    emb = HfqEmbedding(300, 256, kind, padding_idx=0)
    from hfq.algorithms import quantize_layer_weight
    from hfq.algorithms.ggml_quant import quantize_rows
    tensors = ({"weight": quantize_rows(table, kind, None)} if kind != "int8"
               else quantize_layer_weight(table, "int", 8, -1, True, False))
    emb.load_quantized(tensors)
    full = emb.dequantize_weight(torch.float32)
    ids = torch.cat([torch.randint(0, 300, (42,), generator=g), torch.tensor([0, 299, 0])]).reshape(3, -1)
    out = emb(ids)
    assert out.shape == (3, ids.shape[1], 256)
    assert torch.equal(out, full[ids])               # bit for bit, padding id and the last id included
    for dt in (torch.bfloat16, torch.float16):
        emb.to(dt)
        assert torch.equal(emb(ids), full.to(dt)[ids])
    with pytest.raises(IndexError, match="300 is out of range"):
        emb(torch.tensor([300]))


@pytest.mark.parametrize("qc", [dict(method="nf4", double_quant=True, embeddings="int8"),
                                dict(method="rtn", bits=4, group_size=32, embeddings="Q8_0"),
                                dict(method="gguf", quant_type="Q4_K_M")])
def test_tied_table_saved_once_and_retied_on_reload(export_dir, tmp_path, qc):
    src = export_dir("qwen3")   # tied
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=hfq.HfqConfig(**qc)).eval()
    emb = model.get_input_embeddings()
    assert model.lm_head.weight is emb.weight and isinstance(emb, HfqEmbedding)
    with torch.no_grad():
        logits = model(IDS).logits
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert [k for k in keys if k.startswith(("model.embed_tokens.", "lm_head."))] == sorted(
        f"model.embed_tokens.{n}" for n in emb.layout_names)   # one packed table, no head copy
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["dtype"] == "float32"   # the compute dtype, not a float16 scale's
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    e2 = again.get_input_embeddings()
    assert again.lm_head.weight is e2.weight
    for n in e2.layout_names:
        assert getattr(again.lm_head, n) is getattr(e2, n)
    with torch.no_grad():
        assert torch.equal(again(IDS).logits, logits)
    info = hfq.checkpoint.describe(tmp_path)
    assert info["embeddings"]["lm_head"]["tied_to"] == "model.embed_tokens"


def test_untied_model_quantizes_each_table_on_its_own(tiny_llama_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, quantization_config=hfq.HfqConfig(method="nf4", embeddings="Q8_0")).eval()
    assert isinstance(model.model.embed_tokens, HfqEmbedding) and type(model.lm_head) is HfqLinear
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(IDS).logits, model(IDS).logits)


def test_float_default_skip_list_and_fallback(tiny_llama_dir, tiny_gemma3_dir, caplog):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(method="nf4"))
    assert type(model.model.embed_tokens) is torch.nn.Embedding   # embeddings="float" is the default here
    skip = hfq.HfqConfig(method="nf4", embeddings="int8", modules_to_not_convert=["lm_head"])
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=skip)
    assert isinstance(model.model.embed_tokens, HfqEmbedding) and type(model.lm_head) is torch.nn.Linear
    with caplog.at_level("INFO"):   # rows of 64 hold no 256-block: Q6_K falls back to Q8_0, as llama.cpp does
        model = AutoModelForCausalLM.from_pretrained(
            tiny_gemma3_dir, quantization_config=hfq.HfqConfig(method="nf4", embeddings="Q6_K"))
    assert model.get_input_embeddings().ggml_type == "Q8_0" and "llama.cpp's fallback" in caplog.text
    with pytest.raises(ValueError, match="embeddings='Q7_K' is not an embedding storage"):
        hfq.HfqConfig(method="nf4", embeddings="Q7_K")


def test_standard_export_refuses_a_quantized_embedding(tiny_llama_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, quantization_config=hfq.HfqConfig(method="rtn", bits=4, group_size=32, embeddings="int8"))
    with pytest.raises(ValueError, match="quantized embedding table.*embeddings='float'"):
        hfq.save_standard(model, tmp_path / "g", "gptq")
    assert not (tmp_path / "g").exists()


def test_dequantize_gives_float_embedding_and_head(export_dir):
    model = AutoModelForCausalLM.from_pretrained(
        export_dir("gemma3"), quantization_config=hfq.HfqConfig(method="gguf", quant_type="Q8_0")).eval()
    with torch.no_grad():
        before = model(IDS).logits
    table = model.get_input_embeddings().dequantize_weight()
    model.dequantize()
    emb = model.get_input_embeddings()
    assert isinstance(emb, torch.nn.Embedding) and torch.equal(emb.weight, table)
    assert not any(isinstance(m, HfqLinear) for m in model.modules())
    with torch.no_grad():   # float kernels now, so only kernel rounding separates the two
        after = model(IDS).logits
    assert (after - before).abs().max() <= 2e-3 * before.abs().max()


CHILD = r"""
import sys, threading, time, torch, hfq
from transformers import AutoModelForCausalLM
def anon():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:"))
peak = [0]
def sample():
    while True:
        peak[0] = max(peak[0], anon()); time.sleep(0.002)
base = anon()
threading.Thread(target=sample, daemon=True).start()
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], quantization_config=hfq.HfqConfig(method="gguf",
                                         quant_type="Q4_K_M"))
time.sleep(0.05)
size = sum(t.numel() * t.element_size() for t in m.state_dict().values())
print(peak[0] - base, size // 1024)
"""


def test_load_peak_memory_stays_below_quantized_size_plus_one_float_table(tmp_path):
    """Quantizing at load holds one float tensor at a time (anonymous memory; the mmapped checkpoint is cache)."""
    import subprocess
    import sys

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=8192, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    float_kb = sum(p.numel() * 4 for p in LlamaForCausalLM(cfg).parameters()) // 1024
    largest_kb = 8192 * 512 * 4 // 1024                                  # the embedding table
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, check=True)
    peak_kb, quant_kb = map(int, out.stdout.split()[-2:])
    assert peak_kb <= quant_kb + largest_kb + 48 * 1024, (peak_kb, quant_kb, largest_kb, float_kb)
    assert quant_kb + largest_kb + 48 * 1024 < float_kb   # the bound would catch a whole float copy
