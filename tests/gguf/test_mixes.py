"""Per-tensor types against the ones llama_model_quantize picks for the same model and file type."""

import numpy as np
import pytest
import torch
from ggml_oracle import llama_quantize, llama_tensors, write_f32_gguf

from hfq.formats.ggml_types import FILE_TYPES
from hfq.gguf import mixes
from hfq.gguf.names import gguf_name

# (layers, embd, ff, heads, kv heads, tied): 16 layers exercise use_more_bits and the n/8, n/16 rules; ff=384
# sends ffn_down (rows of 384) to the shape fallback; gqa 4 vs 2 switches Q2_K's attn_v rule.
MODELS = {"deep-gqa4": (16, 256, 512, 4, 1, False), "tied-gqa2-ff384": (8, 256, 384, 4, 2, True)}


@pytest.fixture(scope="module", params=list(MODELS))
def f32_file(request, tmp_path_factory):
    n_layer, n_embd, n_ff, n_head, n_kv, tied = MODELS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    t = llama_tensors(np.random.default_rng(0), n_layer, n_embd, n_ff, n_head, n_kv, 256, tied=tied)
    shape = mixes.ModelShape("llama", n_layer, n_head, n_kv, tied)
    return write_f32_gguf(d / "f32.gguf", t, n_layer, n_embd, n_ff, n_head, n_kv, 256), t, shape, d


@pytest.mark.parametrize("file_type", list(FILE_TYPES))
def test_types_match_llama_model_quantize(f32_file, file_type):
    src, tensors, shape, d = f32_file
    out = llama_quantize(src, d / f"{file_type}.gguf", file_type)
    want = {k: v[0] for k, v in out.items() if tensors[k].ndim == 2}
    got = {k: mixes.tensor_type(file_type, k, tensors[k].shape[1], shape) for k in want}
    diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not diff, diff


def test_rules_spot_checks():
    s = mixes.ModelShape("llama", 32, 32, 8, False)
    assert mixes.tensor_type("Q4_K_M", "blk.0.attn_v.weight", 4096, s) == "Q6_K"
    assert mixes.tensor_type("Q4_K_M", "blk.5.attn_v.weight", 4096, s) == "Q4_K"
    assert mixes.tensor_type("Q4_K_M", "output.weight", 4096, s) == "Q6_K"
    assert mixes.tensor_type("Q2_K", "blk.3.attn_v.weight", 4096, s) == "Q4_K"        # n_gqa = 4
    assert mixes.tensor_type("Q4_K_M", "blk.0.attn_q.weight", 640, s) == "Q5_0"      # fallback
    assert mixes.tensor_type("Q2_K", "blk.0.attn_q.weight", 640, s) == "Q4_0"
    assert mixes.tensor_type("Q6_K", "blk.0.attn_q.weight", 640, s) == "Q8_0"
    assert mixes.tensor_type("Q4_K_M", "blk.0.attn_q.weight", 100, s) == "F16"
    assert mixes.tensor_type("Q4_0", "blk.0.ffn_down.weight", 4096, s, has_importance=True) == "Q4_1"
    assert mixes.tensor_type("Q4_0", "blk.4.ffn_down.weight", 4096, s, has_importance=True) == "Q4_0"
    big = mixes.ModelShape("llama", 80, 64, 8, False)
    assert mixes.tensor_type("Q3_K_M", "blk.40.attn_v.weight", 8192, big) == "Q5_K"  # 70B rule


def _tiny(arch):
    import transformers as tf

    kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=128)
    cfg_cls, model_cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                          "mistral": ("MistralConfig", "MistralForCausalLM"),
                          "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
                          "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM")}[arch]
    if arch == "gemma3_text":
        kw.update(head_dim=16, layer_types=["sliding_attention", "full_attention"], sliding_window=16)
    with torch.device("meta"):
        return getattr(tf, model_cls)(getattr(tf, cfg_cls)(**kw))


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "gemma3_text"])
def test_every_linear_of_supported_archs_has_a_gguf_role(arch):
    model = _tiny(arch)
    shape = mixes.model_shape(model.config)
    names = {n: m.in_features for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    mapped = {n: gguf_name(n, shape.arch, shape.n_layer, shape.tied_embeddings) for n in names}
    assert all(mapped.values()), mapped
    assert mapped["model.layers.1.self_attn.v_proj"] == "blk.1.attn_v.weight"
    assert mapped["model.layers.0.mlp.down_proj"] == "blk.0.ffn_down.weight"
    assert mapped["lm_head"] == ("token_embd.weight" if shape.tied_embeddings else "output.weight")


def test_unknown_architecture_is_refused():
    class Cfg:
        model_type = "falcon"
    with pytest.raises(ValueError, match="model_type in llama, mistral.*got 'falcon'"):
        mixes.model_shape(Cfg())
