"""Parameter counts of hfq models are logical: num_parameters() and peft's counts give what transformers and peft
give on the float model (and on bitsandbytes' NF4 model), never the packed bytes. The references are computed by
transformers and peft themselves on the unquantized checkpoint."""

import logging

import pytest
import torch
from bitsandbytes.nn import Linear4bit
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

import hfq
from hfq import lora
from hfq.nn import HfqEmbedding, HfqLinear

CONFIGS = {
    "nf4": dict(method="nf4"),
    "nf4-dq": dict(method="nf4", double_quant=True),
    "int4-g32-asym": dict(method="rtn", bits=4, group_size=32, sym=False),
    "int8-embeddings": dict(method="rtn", bits=8, group_size=-1, embeddings="int8"),
    "gguf-q4_k_m": dict(method="gguf", quant_type="Q4_K_M"),   # quantizes the embedding and the head too
}
COUNTS = [dict(), dict(exclude_embeddings=True), dict(only_trainable=True),
          dict(only_trainable=True, exclude_embeddings=True)]


def _lora_config():
    return LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])


def _counts(model):
    return [model.num_parameters(**kw) for kw in COUNTS]


def _float_counts(path, quantized):
    """transformers' counts on the float model, with the layers hfq quantized frozen: packed weights never train
    (as bitsandbytes' do not), so only_trainable leaves them out on both."""
    ref = AutoModelForCausalLM.from_pretrained(path)
    names = [n for n, m in quantized.named_modules() if isinstance(m, HfqLinear)]
    total = ref.num_parameters()
    for n in names:
        for p in ref.get_submodule(n).parameters():
            p.requires_grad_(False)
    return [total] + [ref.num_parameters(**kw) for kw in COUNTS[1:]]


def _peft_counts(model, mixed=False):
    torch.manual_seed(0)
    return get_peft_model(model, _lora_config(), mixed=mixed).get_nb_trainable_parameters()


@pytest.mark.parametrize("name", CONFIGS)
def test_counts_are_the_float_models(name, tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(**CONFIGS[name]))
    packed = sum(p.numel() for p in model.parameters())
    want = _float_counts(tiny_llama_dir, model)
    assert _counts(model) == want
    if "4" in name:   # 4-bit codes: the stored elements alone would undercount (int8 codes are one per weight)
        assert packed < want[0]
    if name.startswith(("gguf", "int8")):
        assert isinstance(model.model.embed_tokens, HfqEmbedding) and want[1] < want[0]
    ref_peft = _peft_counts(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))
    assert ref_peft[0] > 0 and _peft_counts(model) == ref_peft


def test_tied_quantized_head_counts_once(tiny_llama_tied_dir):
    cfg = hfq.HfqConfig(method="gguf", quant_type="Q4_K_M")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_tied_dir, quantization_config=cfg)
    assert isinstance(model.lm_head, HfqLinear) and model.lm_head.weight is model.model.embed_tokens.weight
    assert _counts(model) == _float_counts(tiny_llama_tied_dir, model)


def test_counts_survive_save_and_reload(tiny_llama_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir,
                                                 quantization_config=hfq.HfqConfig(**CONFIGS["gguf-q4_k_m"]))
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert _counts(again) == _float_counts(tiny_llama_dir, again)
    assert _peft_counts(again) == _peft_counts(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))


def test_counts_match_bitsandbytes_nf4(tiny_llama_dir, capsys):
    bnb = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, device_map="cpu",
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"))
    assert isinstance(bnb.model.layers[0].self_attn.q_proj, Linear4bit)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(method="nf4"))
    assert _counts(model) == _counts(bnb)
    peft_model = get_peft_model(model, _lora_config())
    assert peft_model.get_nb_trainable_parameters() == _peft_counts(bnb)
    for m in (get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), _lora_config()), peft_model):
        m.print_trainable_parameters()
    float_line, hfq_line = capsys.readouterr().out.splitlines()
    assert hfq_line == float_line and float_line.startswith("trainable params: 3,584 || all params: 143,168 ||")


def test_mixed_peft_model_counts(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(method="nf4"))
    assert _peft_counts(model, mixed=True) == _peft_counts(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                                                           mixed=True)


def test_a_peft_without_the_hook_stops_with_its_version(monkeypatch):
    import importlib.metadata

    version = importlib.metadata.version("peft")
    monkeypatch.setattr(LoraModel, "_create_new_module", staticmethod(lambda config, target: None))
    with pytest.raises(RuntimeError, match=rf"peft {version} does not fit.*_create_new_module.*tested with peft"):
        lora.enable()
    monkeypatch.setattr(LoraModel, "_create_new_module", lambda self, lora_config, adapter_name, target: None)
    with pytest.raises(RuntimeError, match="no longer a staticmethod"):
        lora.enable()


def test_a_peft_without_the_hook_still_loads_for_inference(monkeypatch, tiny_llama_dir, caplog):
    import importlib.metadata

    from hfq import quantizer

    monkeypatch.setattr(LoraModel, "_create_new_module", staticmethod(lambda config, target: None))
    monkeypatch.setattr(quantizer, "_peft_warned", [])
    float_model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ids = torch.tensor([[1, 5, 9, 2]])
    with caplog.at_level(logging.WARNING, logger="hfq.quantizer"):
        for _ in range(2):
            model = AutoModelForCausalLM.from_pretrained(
                tiny_llama_dir, quantization_config=hfq.HfqConfig(method="rtn", bits=8, group_size=32))
    warned = [r for r in caplog.records if "does not fit" in r.getMessage()]
    assert len(warned) == 1 and importlib.metadata.version("peft") in warned[0].getMessage()
    assert "LoRA adapters" in warned[0].getMessage()
    with torch.no_grad():   # 8-bit RTN stays close to the float model's logits
        a, b = model(ids).logits, float_model(ids).logits
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
