"""method='gguf' end to end in transformers: load-time quantization, forward, save and reload."""

import json

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM

import hfq
from helpers import assert_logits_close
from hfq.algorithms.calibration import collect_importance, save_importance
from hfq.formats.ggml_types import FILE_TYPES, TYPES
from hfq.nn import HfqLinear


def _gguf_dequant(layer: HfqLinear) -> torch.Tensor:
    deq = gguf.quants.dequantize(layer.weight.numpy(), getattr(gguf.GGMLQuantizationType, layer.ggml_type))
    return torch.from_numpy(deq.reshape(layer.out_features, layer.in_features))


@pytest.mark.parametrize("quant_type", list(FILE_TYPES))
def test_every_quant_type_loads_runs_and_reloads(llama256_dir, tmp_path, quant_type):
    cfg = hfq.HfqConfig(method="gguf", quant_type=quant_type)
    model = AutoModelForCausalLM.from_pretrained(llama256_dir, quantization_config=cfg)
    ref = AutoModelForCausalLM.from_pretrained(llama256_dir)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, HfqLinear)}
    assert len(layers) == 16   # 14 linears, the embedding and the head (llama.cpp's token_embd/output types)
    qc = model.config.quantization_config
    types = {**qc.tensor_types, **qc.embedding_types}
    assert set(qc.embedding_types) == {"model.embed_tokens", "lm_head"}
    for name, layer in layers.items():
        assert layer.ggml_type == types[name]
        want = ref.get_submodule(name).weight
        assert layer.weight.shape == (layer.out_features, layer.in_features // TYPES[layer.ggml_type].block
                                      * TYPES[layer.ggml_type].type_size)
        deq = _gguf_dequant(layer)                     # independent decoder of hfq's bytes
        assert torch.equal(layer.dequantize_weight(), deq)
        rel = ((deq - want).norm() / want.norm()).item()
        assert rel < {"Q2_K": 0.45, "Q3_K": 0.25}.get(layer.ggml_type, 0.12), (name, layer.ggml_type, rel)
    x = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        out = model(x).logits
        for name, layer in layers.items():       # the forward equals F.linear on the oracle's weights
            ref.get_submodule(name).weight.copy_(_gguf_dequant(layer))
        assert_logits_close(out, ref(x).logits)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["quant_type"] == quant_type and saved["tensor_types"] == qc.tensor_types and saved["importance"] is False
    assert saved["embedding_types"] == qc.embedding_types
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    for name, layer in layers.items():
        assert torch.equal(again.get_submodule(name).weight, layer.weight)
    with torch.no_grad():
        assert torch.equal(again(x).logits, out)


def test_mix_and_fallback_on_the_tiny_gemma(tiny_gemma3_dir):
    """Rows of 64 fit no 256-block type: every layer falls back as llama.cpp does (Q4_K -> Q5_0, Q6_K -> Q8_0)."""
    model = AutoModelForCausalLM.from_pretrained(
        tiny_gemma3_dir, quantization_config=hfq.HfqConfig(method="gguf", quant_type="Q4_K_M"))
    types = model.config.quantization_config.tensor_types
    assert types["model.layers.0.self_attn.q_proj"] == "Q5_0"
    assert types["model.layers.0.self_attn.v_proj"] == "Q5_0"
    assert types["model.layers.1.self_attn.v_proj"] == "Q8_0"      # use_more_bits(1, 2) -> Q6_K -> fallback
    assert types["model.layers.1.mlp.down_proj"] == "Q8_0"


def test_importance_changes_bytes_and_is_recorded(llama256_dir, tmp_path):
    ref = AutoModelForCausalLM.from_pretrained(llama256_dir)
    windows = [torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    imp = collect_importance(ref, windows)
    path = save_importance(imp, tmp_path / "imp.safetensors")
    plain = AutoModelForCausalLM.from_pretrained(llama256_dir, quantization_config=hfq.HfqConfig(
        method="gguf", quant_type="Q4_0"))
    weighted = AutoModelForCausalLM.from_pretrained(llama256_dir, quantization_config=hfq.HfqConfig(
        method="gguf", quant_type="Q4_0", importance=str(path)))
    qc = weighted.config.quantization_config
    assert qc.short_name() == "gguf-q4_0-imat"
    q = "model.layers.1.self_attn.q_proj"
    assert not torch.equal(plain.get_submodule(q).weight, weighted.get_submodule(q).weight)
    weighted.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert saved["importance"] is True and str(tmp_path) not in json.dumps(saved)


def test_collect_importance_is_the_mean_square_of_each_layer_input(llama256_dir):
    model = AutoModelForCausalLM.from_pretrained(llama256_dir)
    ids = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(0))
    imp = collect_importance(model, [ids[:, :10], ids[:, 10:]])
    with torch.no_grad():   # independent path: rebuild the q_proj input of layer 0 by hand from hidden states
        rows = []
        for part in (ids[:, :10], ids[:, 10:]):
            h = model(part, output_hidden_states=True).hidden_states[0]
            rows.append(model.model.layers[0].input_layernorm(h).reshape(-1, 256))
        x = torch.cat(rows).double()
    torch.testing.assert_close(imp["model.layers.0.self_attn.q_proj"], (x * x).mean(0).float(), rtol=1e-5, atol=1e-7)
    assert set(imp) == {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_gguf_config_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="needs quant_type; allowed: 'Q4_0'"):
        hfq.HfqConfig(method="gguf")
    with pytest.raises(ValueError, match="quant_type='Q3_K_XL' is not a GGUF type"):
        hfq.HfqConfig(method="gguf", quant_type="Q3_K_XL")
    with pytest.raises(ValueError, match="bits=4 does not apply to method='gguf'"):
        hfq.HfqConfig(method="gguf", quant_type="Q4_0", bits=4)
    with pytest.raises(ValueError, match="quant_type applies to method='gguf' only"):
        hfq.HfqConfig(method="nf4", quant_type="Q4_0")
    with pytest.raises(ValueError, match="tensor_types has unknown GGML type"):
        hfq.HfqConfig(method="gguf", quant_type="Q4_0", tensor_types={"lm_head": "IQ2_XS"})
    assert hfq.HfqConfig(method="gguf", quant_type="q4_k_m").quant_type == "Q4_K_M"


def test_missing_or_mismatched_importance_is_refused(llama256_dir, tiny_llama_dir, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        AutoModelForCausalLM.from_pretrained(llama256_dir, quantization_config=hfq.HfqConfig(
            method="gguf", quant_type="Q4_K_M", importance=str(tmp_path / "nope.safetensors")))
    small = collect_importance(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), [torch.randint(0, 512, (1, 8))])
    with pytest.raises(ValueError, match="collected on another model"):
        AutoModelForCausalLM.from_pretrained(llama256_dir, quantization_config=hfq.HfqConfig(
            method="gguf", quant_type="Q4_K_M", importance=small))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        AutoModelForCausalLM.from_pretrained(llama256_dir, quantization_config=hfq.HfqConfig(
            method="gguf", quant_type="Q4_K_M", importance=str(bad)))


def test_tensor_types_override_the_mix(llama256_dir):
    model = AutoModelForCausalLM.from_pretrained(llama256_dir, quantization_config=hfq.HfqConfig(
        method="gguf", quant_type="Q4_K_M", tensor_types={"model.layers.0.mlp.up_proj": "Q8_0"}))
    assert model.get_submodule("model.layers.0.mlp.up_proj").ggml_type == "Q8_0"
    assert model.get_submodule("model.layers.0.mlp.gate_proj").ggml_type == "Q4_K"
