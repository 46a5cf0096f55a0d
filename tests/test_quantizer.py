"""hfq through transformers' from_pretrained: quantize at load, save, reload, dequantize, options."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import hfq
from hfq.nn import HfqLinear

CONFIGS = {
    "nf4-dq": dict(method="nf4", double_quant=True),
    "fp4": dict(method="fp4"),
    "rtn4-g32-asym": dict(method="rtn", bits=4, group_size=32, sym=False),
    "rtn8-pc": dict(method="rtn", bits=8, group_size=-1),
    "rtn2-g16": dict(method="rtn", bits=2, group_size=16),
}
IDS = torch.tensor([[1, 5, 9, 200, 33, 7, 81, 400, 2, 3, 11, 12]])
# Relative logit MSE against the float model, ||l_q - l||^2 / ||l||^2, on IDS. Measured with torch 2.14.1 on the
# seeded tiny models (llama / gemma3): nf4-dq 0.0075 / 0.044, fp4 0.014 / 0.066, rtn4-g32-asym 0.0062 / 0.034,
# rtn8-pc 2.6e-5 / 2.5e-4, rtn2-g16 0.19 / 0.83. The bounds are about 1.5x those: a regression that doubles the
# error fails. Gemma3's 2-bit bound stays 1.0 (1.2x): zero logits would score 1.0, so it still means "better than
# nothing", and the ordering test below checks that it is the worst. Everything is seeded, so runs repeat.
REL_MSE_BOUND = {"llama": {"nf4-dq": 0.012, "fp4": 0.022, "rtn4-g32-asym": 0.01, "rtn8-pc": 4e-5, "rtn2-g16": 0.3},
                 "gemma3_text": {"nf4-dq": 0.065, "fp4": 0.1, "rtn4-g32-asym": 0.05, "rtn8-pc": 4e-4,
                                 "rtn2-g16": 1.0}}


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _float_reference(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_quantize_save_reload_identical(tiny_model_dir, tmp_path, name):
    cfg = hfq.HfqConfig(**CONFIGS[name])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=cfg)
    hq = [n for n, m in model.named_modules() if isinstance(m, HfqLinear)]
    assert len(hq) == 14  # 7 projections x 2 layers; lm_head stays float
    assert not isinstance(model.lm_head, HfqLinear)
    # each layer holds exactly the bytes the algorithm makes from the float weight
    ref = _float_reference(tiny_model_dir)
    layer = model.model.layers[1].mlp.down_proj
    want = hfq.algorithms.quantize_layer_weight(ref.model.layers[1].mlp.down_proj.weight, layer.layout, layer.bits,
                                                layer.group_size, layer.sym, layer.double_quant)
    for k, v in want.items():
        assert torch.equal(getattr(layer, k), v), k
    logits = _logits(model)
    # quality: close to the float model, ordered by bit width
    rel = ((logits - _logits(ref)).pow(2).mean() / _logits(ref).pow(2).mean()).item()
    assert rel < REL_MSE_BOUND[ref.config.model_type][name], rel
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "hfq" and saved["hfq_format_version"] == 1
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.hf_quantizer.pre_quantized
    sd1, sd2 = model.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert torch.equal(_logits(again), logits)


def test_logit_error_falls_with_bits(tiny_model_dir):
    """rtn at 2, 3, 4 and 8 bits (group 16; 8 per channel): each step up lowers the logit error at least 2x."""
    ref = _logits(_float_reference(tiny_model_dir))
    rel = []
    for bits, gs in ((2, 16), (3, 16), (4, 16), (8, -1)):
        q = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=hfq.HfqConfig(
            method="rtn", bits=bits, group_size=gs))
        rel.append(((_logits(q) - ref).pow(2).mean() / ref.pow(2).mean()).item())
    assert all(b < a / 2 for a, b in zip(rel, rel[1:])), rel


def test_sharded_save_and_reload(tiny_llama_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(method="nf4"))
    model.save_pretrained(tmp_path, max_shard_size="50KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(_logits(again), _logits(model))


def test_dequantize_gives_linear_with_same_logits(tiny_llama_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, quantization_config=hfq.HfqConfig(method="rtn", bits=4, group_size=32))
    logits = _logits(model)
    w = model.model.layers[0].self_attn.q_proj.dequantize_weight()
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    again.dequantize()
    q = again.model.layers[0].self_attn.q_proj
    assert type(q) is torch.nn.Linear and torch.equal(q.weight, w)
    assert not any(isinstance(m, HfqLinear) for m in again.modules())
    assert getattr(again.config, "quantization_config", None) is None
    # The quantized model's kernels round x to int16 per 64 columns (at most 2^-16 of the chunk's largest value);
    # measured here 2e-5 of the largest logit. A wrong layout would be off by far more.
    diff = (_logits(again) - logits).abs().max() / logits.abs().max()
    assert diff < 2e-4


def test_modules_to_not_convert(tiny_llama_dir):
    cfg = hfq.HfqConfig(method="nf4", modules_to_not_convert=["lm_head", r"model.layers.*.mlp"])
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=cfg)
    names = {n for n, m in model.named_modules() if isinstance(m, HfqLinear)}
    assert names and all("self_attn" in n for n in names)
    assert type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear
    ref = _float_reference(tiny_llama_dir)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, ref.model.layers[0].mlp.up_proj.weight)


def test_tied_embeddings_stay_float_and_tied(tiny_llama_tied_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_tied_dir, quantization_config=hfq.HfqConfig(method="nf4"))
    assert type(model.lm_head) is torch.nn.Linear
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.lm_head.weight is again.model.embed_tokens.weight
    assert torch.equal(_logits(again), _logits(model))


def test_device_map_auto_and_bfloat16(tiny_gemma3_dir, tmp_path):
    cfg = hfq.HfqConfig(method="rtn", bits=4, group_size=32)
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir, quantization_config=cfg, device_map="auto",
                                                 dtype=torch.bfloat16)
    layer = model.model.layers[0].self_attn.o_proj
    assert layer.weight.dtype == torch.uint8 and layer.scales.dtype == torch.float16
    assert model.model.norm.weight.dtype == torch.bfloat16
    assert _logits(model).dtype == torch.bfloat16
    ref = _float_reference(tiny_gemma3_dir)
    lq, lf = _logits(model).float(), _logits(ref)
    assert ((lq - lf).pow(2).mean() / lf.pow(2).mean()) < 0.1
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto")
    assert torch.equal(_logits(again), _logits(model))


def test_dict_config_and_saved_config_wins(tiny_llama_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config={"quant_method": "hfq",
                                                                                     "method": "fp4"})
    assert model.model.layers[0].mlp.up_proj.layout == "fp4"
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.config.quantization_config.method == "fp4"


def test_bad_shape_is_a_clear_error(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"q_proj.*not a multiple of group_size=32.*modules_to_not_convert"):
        AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=hfq.HfqConfig(method="rtn", group_size=32))


def test_disk_offload_is_refused(tiny_llama_dir):
    with pytest.raises(ValueError, match="disk"):
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(method="nf4"),
                                             device_map={"": "disk"})


def test_loading_without_import_hfq_fails_loudly(tiny_llama_dir, tmp_path):
    # rtn 8-bit per-channel is the worst case: the same number of bytes as a [out, in] weight.
    for i, cfg in enumerate([dict(method="rtn", bits=8, group_size=-1), dict(method="nf4")]):
        out = tmp_path / str(i)
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(**cfg)).save_pretrained(out)
        code = f"from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained({str(out)!r})"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode != 0
        assert "size mismatch" in proc.stderr or "mismatched" in proc.stderr.lower()
        assert "Unknown quantization type, got hfq" in proc.stderr
