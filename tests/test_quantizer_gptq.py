"""GPTQ/AWQ at load time on tiny models: calibrate, save, reload to identical logits; the config records the
calibration but never the texts or local paths; bad inputs fail clearly."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import hfq
from hfq.nn import HfqLinear


def _ids(n=12, length=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 512, (length,), generator=g).tolist() for _ in range(n)]


CASES = {
    "int4-g32-act": dict(method="gptq", group_size=32, desc_act=True),
    "int3-g32-asym": dict(method="gptq", bits=3, group_size=32, sym=False),
    "nf4-dq-b32": dict(method="gptq", grid="nf4", group_size=32, double_quant=True),
    "int4-g32-gar": dict(method="gptq", group_size=32, act_group_aware=True),
}


@pytest.mark.parametrize("case,arch", [("int4-g32-act", "llama"), ("int4-g32-act", "gemma3"),
                                       ("int3-g32-asym", "llama"), ("nf4-dq-b32", "gemma3"),
                                       ("int4-g32-gar", "llama")])
def test_calibrate_save_reload_identical(tiny_llama_dir, tiny_gemma3_dir, tmp_path, case, arch):
    tiny_model_dir = tiny_llama_dir if arch == "llama" else tiny_gemma3_dir
    cfg = hfq.HfqConfig(dataset=_ids(), n_samples=6, seq_len=64, **CASES[case])
    q = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=cfg)
    layers = [m for m in q.modules() if isinstance(m, HfqLinear)]
    assert len(layers) == 14 and not any(type(m) is torch.nn.Linear for m in q.model.layers.modules())
    assert all(("g_idx" in dict(m.named_parameters())) == (case == "int4-g32-act") for m in layers)
    x = torch.randint(0, 512, (1, 32))
    with torch.no_grad():
        a = q(x).logits
    q.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["calibration"] == {"dataset": "12 token sequences given in Python", "n_samples": 6, "seq_len": 64,
                                    "seed": 0}
    assert "dataset" not in saved and saved["method"] == "gptq"
    r = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(r(x).logits, a)


def test_gptq_beats_rtn_on_a_tiny_model(tiny_llama_dir):
    """Mean KL from the float model on held-out windows: GPTQ below RTN on the same grid."""
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    held = [torch.tensor([w]) for w in _ids(4, 64, seed=1)]

    def kl(m):
        with torch.no_grad():
            return sum(torch.nn.functional.kl_div(m(input_ids=w).logits.log_softmax(-1),
                                                  base(input_ids=w).logits.log_softmax(-1), log_target=True,
                                                  reduction="batchmean").item() for w in held)
    rtn = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, quantization_config=hfq.HfqConfig(method="rtn", bits=3, group_size=32))
    gptq = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(
        method="gptq", bits=3, group_size=32, dataset=_ids(32), n_samples=32, seq_len=64))
    assert kl(gptq) < kl(rtn)


def test_gptq_into_ggml_blocks_saves_and_reloads(llama256_dir, tmp_path):
    cfg = hfq.HfqConfig(method="gptq", quant_type="Q4_K_M", dataset=_ids(4, 64), n_samples=4, seq_len=64)
    q = AutoModelForCausalLM.from_pretrained(llama256_dir, quantization_config=cfg)
    types = q.config.quantization_config.tensor_types
    assert types["model.layers.0.self_attn.q_proj"] == "Q4_K" and types["model.layers.1.mlp.down_proj"] == "Q6_K"
    assert all(m.layout == "gguf" for m in q.modules() if isinstance(m, HfqLinear))
    x = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        a = q(x).logits
    q.save_pretrained(tmp_path)
    r = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(r(x).logits, a)


def test_bad_calibration_inputs(tiny_llama_dir):
    with pytest.raises(ValueError, match="empty"):
        AutoModelForCausalLM.from_pretrained(
            tiny_llama_dir, quantization_config=hfq.HfqConfig(method="gptq", group_size=32, dataset=[""]))
    with pytest.raises(ValueError, match=r"768 tokens: 6 windows of seq_len=128, but n_samples=8"):
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(
            method="gptq", group_size=32, dataset=_ids(12, 64), n_samples=8, seq_len=128))
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(
            method="gptq", group_size=32, dataset=["some text"]))


def test_config_validation():
    with pytest.raises(ValueError, match="dataset=.* applies to method='gptq' or 'awq' only"):
        hfq.HfqConfig(method="rtn", dataset=["x"])
    with pytest.raises(ValueError, match="grid='int8' is not a grid"):
        hfq.HfqConfig(method="gptq", grid="int8")
    with pytest.raises(ValueError, match="needs static_groups=True"):
        hfq.HfqConfig(method="gptq", grid="nf4", desc_act=True)
    with pytest.raises(ValueError, match="cannot be used with GGUF blocks"):
        hfq.HfqConfig(method="gptq", quant_type="Q4_K_M", desc_act=True)
    with pytest.raises(ValueError, match="desc_act/static_groups/act_group_aware apply to method='gptq' only"):
        hfq.HfqConfig(method="awq", desc_act=True)
    with pytest.raises(ValueError, match="act_group_aware=True and desc_act=True are two column orders"):
        hfq.HfqConfig(method="gptq", desc_act=True, act_group_aware=True)
    with pytest.raises(ValueError, match="act_group_aware=True cannot reorder GGUF blocks"):
        hfq.HfqConfig(method="gptq", quant_type="Q4_K_M", act_group_aware=True)
    with pytest.raises(ValueError, match="act_group_aware=True needs groups"):
        hfq.HfqConfig(method="gptq", group_size=-1, act_group_aware=True)
    with pytest.raises(ValueError, match="act_group_aware apply to method='gptq' only"):
        hfq.HfqConfig(method="awq", act_group_aware=True)
    assert hfq.HfqConfig(method="gptq", act_group_aware=True).short_name() == "gptq-int4-g128-sym-gar"
    with pytest.raises(ValueError, match="damp_percent=0 must be a number in"):
        hfq.HfqConfig(method="gptq", damp_percent=0)
    with pytest.raises(ValueError, match="bits=9 is not supported"):
        hfq.HfqConfig(method="gptq", bits=9)
    c = hfq.HfqConfig(method="gptq", quant_type="q3_k_m")
    assert (c.grid, c.quant_type, c.layout, c.short_name()) == ("gguf", "Q3_K_M", "gguf", "gptq-q3_k_m")
    d = hfq.HfqConfig(method="gptq", desc_act=True, dataset=["secret text"]).to_dict()
    assert "dataset" not in d and "secret" not in json.dumps(d)
    assert hfq.HfqConfig(**d).act_order


@pytest.mark.parametrize("kw", [dict(group_size=32), dict(grid="nf4", group_size=32)], ids=["int4-g32", "nf4-b32"])
def test_awq_calibrates_saves_and_reloads(tiny_llama_dir, tmp_path, kw):
    cfg = hfq.HfqConfig(method="awq", dataset=_ids(), n_samples=6, seq_len=64, **kw)
    q = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=cfg)
    assert sum(isinstance(m, HfqLinear) for m in q.modules()) == 14
    x = torch.randint(0, 512, (1, 32))
    with torch.no_grad():
        a = q(x).logits
    q.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"]["method"] == "awq"
    r = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(r(x).logits, a)


def test_gptq_gguf_blocks_export_unchanged_and_text_calibration(export_dir, tmp_path):
    """Calibration from text through the model's tokenizer; hfq.export_gguf writes GPTQ's GGML blocks as they are."""
    import gguf
    import numpy as np

    src = export_dir("gemma3")
    text = " ".join(f"Sentence {i} is about harbours, winter and the quiet of early mornings." for i in range(60))
    cfg = hfq.HfqConfig(method="gptq", quant_type="Q4_K_M", dataset=[text], n_samples=4, seq_len=64)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=cfg, dtype=torch.float32)
    assert model.config.quantization_config.calibration["dataset"] == "1 texts given in Python"
    from transformers import AutoTokenizer

    path = hfq.export_gguf(model, AutoTokenizer.from_pretrained(src), tmp_path / "m.gguf", progress=False)[0]
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    q = model.model.layers[0].self_attn.v_proj
    t = tensors["blk.0.attn_v.weight"]
    assert t.tensor_type.name == q.ggml_type
    np.testing.assert_array_equal(np.array(t.data).reshape(q.weight.shape), q.weight.detach().numpy())


def test_short_list_of_strings_calibrates_with_the_defaults(tmp_path, caplog):
    """A few paragraphs, far fewer tokens than 128 x 512: unset n_samples/seq_len use all of them, and say so."""
    import logging

    from helpers import WORDS, save_tiny_word_base

    base = save_tiny_word_base(tmp_path / "base", "# tiny\n")
    g = torch.Generator().manual_seed(0)
    paras = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (100,), generator=g)) for _ in range(7)]
    with caplog.at_level(logging.INFO, logger="hfq"):
        q = AutoModelForCausalLM.from_pretrained(base, quantization_config=hfq.HfqConfig(
            method="gptq", group_size=32, dataset=paras))
    # 7 x 100 words = 700 tokens: ceil(700 / 512) = 2 windows of 350
    assert q.config.quantization_config.calibration == {"dataset": "7 texts given in Python", "n_samples": 2,
                                                        "seq_len": 350, "seed": 0}
    assert any("700 tokens of data; using 2 windows of 350 tokens" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="the calibration data has 100 tokens; GPTQ/AWQ need at least 256"):
        AutoModelForCausalLM.from_pretrained(base, quantization_config=hfq.HfqConfig(
            method="gptq", group_size=32, dataset=paras[:1]))


@pytest.mark.parametrize("tokens,width,damp", [(640 * 63, 640, 0.1), (640 * 64, 640, 0.01), (512, 2048, 0.1),
                                               (64 * 512, 2048, 0.1), (128 * 512, 1024, 0.01), (100, 64, 0.1),
                                               (4096, 64, 0.01)])
def test_auto_damp_follows_the_documented_rule(tokens, width, damp):
    """damp_percent unset: 0.1 below 64 calibration tokens per input column, 0.01 from there (docs/gptq-awq.md)."""
    from hfq.algorithms.gptq import auto_damp

    assert auto_damp(tokens, width) == damp


def test_unset_damp_is_chosen_per_layer_from_tokens_and_width(tiny_llama_dir, caplog):
    """Tiny llama: attention/gate/up read 64 columns, down_proj 128. 6 x 64 = 384 tokens is 6 per column for the
    first, 3 for down: 0.1 everywhere. 64 x 64 = 4,096 tokens: 64 and 32 per column, so 0.01 and 0.1."""
    import logging
    import re

    def damps(n):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="hfq.algorithms.calibrated"):
            AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(
                method="gptq", group_size=32, dataset=_ids(n), n_samples=n, seq_len=64))
        text = " ".join(r.getMessage() for r in caplog.records if r.getMessage().startswith("gptq model.layers.0"))
        return dict(re.findall(r"'\w+\.(\w+_proj)': \{[^}]*'damp': ([0-9.e-]+)", text))

    assert set(damps(6).values()) == {"0.1"}
    d = damps(64)
    assert d["q_proj"] == d["gate_proj"] == "0.01" and d["down_proj"] == "0.1"
