import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import hfq
from hfq.checkpoint import describe


@pytest.fixture(scope="module")
def nf4_dir(tiny_llama_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("nf4")
    cfg = hfq.HfqConfig(method="nf4", double_quant=True)
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=cfg).save_pretrained(d)
    return d


def test_describe_counts_bits_from_the_layout(nf4_dir, tiny_llama_dir):
    info = describe(nf4_dir)
    assert info["method"] == "nf4-dq-b64" and info["layers_quantized"] == 14
    q = info["layers"]["model.layers.0.self_attn.q_proj"]
    assert q["shape"] == [64, 64]
    # 4096 weights: 2048 B of codes + 64 absmax codes (1 B) + 1 second-level scale (4 B) + offset (4 B)
    assert q["bytes"] == 2048 + 64 + 4 + 4
    assert q["bpw"] == pytest.approx(8 * 2120 / 4096)
    # parameters are counted as the float model has them
    assert info["parameters"] == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama_dir).parameters())


def test_truncated_and_corrupt_files_are_named(nf4_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(nf4_dir, bad)
    f = bad / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors is truncated.*re-save"):
        describe(bad)
    f.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(ValueError, match="corrupt safetensors header"):
        describe(bad)
    f.write_bytes(b"abc")
    with pytest.raises(ValueError, match="not a safetensors file"):
        describe(bad)
    f.unlink()
    with pytest.raises(ValueError, match="no .safetensors weights"):
        describe(bad)
    (bad / "config.json").unlink()
    with pytest.raises(ValueError, match="no config.json"):
        describe(bad)


def test_truncated_checkpoint_fails_to_load(nf4_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(nf4_dir, bad)
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(Exception, match="(?i)incomplete|truncat|invalid|deserializ"):
        AutoModelForCausalLM.from_pretrained(bad)


def test_float_folder_describes_as_float(tiny_llama_dir):
    info = describe(tiny_llama_dir)
    assert info["method"] == "float" and info["layers_quantized"] == 0
    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama_dir).parameters())
    assert info["parameters"] == n and info["model_bpw"] == 32
    assert json.loads((tiny_llama_dir / "config.json").read_text())["model_type"] == info["model_type"]
