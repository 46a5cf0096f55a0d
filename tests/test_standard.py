"""hfq.save_standard: GPTQ v1 / AutoAWQ GEMM checkpoints. The files are decoded by naive readers written from the
format descriptions; the acceptance tests load them with transformers + optimum + gptqmodel (no hfq code involved
in loading) and compare logits with hfq's own model of the same weights."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import hfq
from helpers import assert_logits_close
from hfq import standard
from hfq.cli import main

from helpers import naive_unpack_bitstream

BIT_CASES = [(2, False), (3, False), (3, True), (4, True), (4, False), (8, True)]


def _hfq(src, **kw):
    cfg = {"method": "rtn", "bits": 4, "group_size": 32, "sym": True, **kw}
    return AutoModelForCausalLM.from_pretrained(src, quantization_config=hfq.HfqConfig(**cfg), dtype=torch.float32)


def _bits_of(word: int, start: int, n: int) -> int:
    return ((word & 0xFFFFFFFF) >> start) & ((1 << n) - 1) if start + n <= 32 else None


def _stream(words: list[int], bits: int, i: int) -> int:
    """Value i of a little-endian bitstream of 32-bit words (bit 0 = LSB of word 0), bit by bit."""
    v = 0
    for b in range(bits):
        pos = i * bits + b
        v |= ((words[pos // 32] & 0xFFFFFFFF) >> (pos % 32) & 1) << b
    return v


def naive_gptq_dequant(t: dict, name: str, bits: int) -> torch.Tensor:
    """w[o, c] = scales[g_idx[c], o] * (q[o, c] - z[g_idx[c], o]), one element at a time. v1 stores z - 1:
    gptqmodel adds 1 to every field of a qzeros word at once (2/4/8 bits), or field by field mod 2**b (3 bits)."""
    qw, qz = t[f"{name}.qweight"].tolist(), t[f"{name}.qzeros"].tolist()
    if bits != 3:
        ones = sum(1 << (bits * j) for j in range(32 // bits))
        qz = [[(w + ones) % 2**32 for w in row] for row in qz]
    sc, gi = t[f"{name}.scales"].float(), t[f"{name}.g_idx"].tolist()
    in_f, out_f = len(gi), sc.shape[1]
    w = torch.empty(out_f, in_f)
    col = [[row[o] for row in qw] for o in range(out_f)]
    for o in range(out_f):
        for c in range(in_f):
            g = gi[c]
            z = _stream(qz[g], bits, o) if bits != 3 else (_stream(qz[g], bits, o) + 1) % 8
            w[o, c] = sc[g, o] * (_stream(col[o], bits, c) - z)
    return w


def naive_awq_dequant(t: dict, name: str, group_size: int) -> torch.Tensor:
    """AutoAWQ GEMM: nibble i of word j holds column 8j + [0,2,4,6,1,3,5,7][i]; w = scales * (q - z)."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    qw, qz, sc = t[f"{name}.qweight"].tolist(), t[f"{name}.qzeros"].tolist(), t[f"{name}.scales"].float()
    in_f, out_f = len(qw), sc.shape[1]
    w = torch.empty(out_f, in_f)
    for c in range(in_f):
        g = c // group_size
        for j in range(out_f // 8):
            for i in range(8):
                o = 8 * j + order[i]
                w[o, c] = sc[g, o] * (_bits_of(qw[c][j], 4 * i, 4) - _bits_of(qz[g][j], 4 * i, 4))
    return w


def _quantized(model) -> dict:
    return {n: m for n, m in model.named_modules() if type(m).__name__ == "HfqLinear"}


@pytest.mark.parametrize("bits,sym", [(3, False), (4, True)])
def test_gptq_files_decode_to_hfq_weights(tiny_llama_dir, tmp_path, bits, sym):
    model = _hfq(tiny_llama_dir, bits=bits, sym=sym)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "tokenizer.json").write_text('{"version": "1.0"}')
    out = hfq.save_standard(model, tmp_path / "gptq", "gptq", source_dir=tmp_path / "src")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc == {"quant_method": "gptq", "bits": bits, "group_size": 32, "desc_act": False, "sym": sym,
                  "checkpoint_format": "gptq", "format": "gptq", "pack_dtype": "int32", "lm_head": False,
                  "true_sequential": True, "block_name_to_quantize": "model.layers"}
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}' and (out / "generation_config.json").exists()
    t = load_file(out / "model.safetensors")
    name = "model.layers.1.self_attn.k_proj"  # [32, 64]
    assert t[f"{name}.qweight"].dtype == torch.int32 and t[f"{name}.qweight"].shape == (64 * bits // 32, 32)
    assert t[f"{name}.qzeros"].shape == (2, 32 * bits // 32) and t[f"{name}.scales"].dtype == torch.float16
    assert torch.equal(t[f"{name}.g_idx"], torch.arange(64, dtype=torch.int32) // 32)
    ref = _quantized(model)[name].dequantize_weight(torch.float32)
    assert torch.equal(naive_gptq_dequant(t, name, bits), ref)
    assert torch.equal(t["lm_head.weight"], model.lm_head.weight) and "lm_head.qweight" not in t
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("sym", [False, True])
def test_awq_files_decode_to_hfq_weights(tiny_llama_dir, tmp_path, sym):
    model = _hfq(tiny_llama_dir, sym=sym)
    out = hfq.save_standard(model, tmp_path / "awq", "awq")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc == {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
                  "modules_to_not_convert": ["lm_head"]}
    t = load_file(out / "model.safetensors")
    name = "model.layers.0.mlp.down_proj"  # [64, 128]
    assert t[f"{name}.qweight"].shape == (128, 8) and t[f"{name}.qzeros"].shape == (4, 8)
    ref = _quantized(model)[name].dequantize_weight(torch.float32)
    assert torch.equal(naive_awq_dequant(t, name, 32), ref)


def _set_g_idx(model, name: str, seed: int) -> torch.Tensor:
    """Give one int layer a GPTQ act-order g_idx: every group keeps 32 columns, scattered over the row."""
    layer = _quantized(model)[name]
    g = torch.Generator().manual_seed(seed)
    g_idx = (torch.randperm(layer.in_features, generator=g) // 32).to(torch.int32)
    layer.register_buffer("g_idx", g_idx)
    layer.act_order = True        # as a GPTQ desc_act layer stores it (HfqLinear(act_order=True))
    return g_idx


def _float_twin(src, model, g_idx_layer=None, g_idx=None):
    """A float model holding the dequantized weights; the g_idx layer decoded from the spec, not by hfq."""
    twin = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    for name, layer in _quantized(model).items():
        w = layer.dequantize_weight(torch.float32)
        if name == g_idx_layer:
            # the rtn layout's codes: a little-endian bitstream of bytes per group (hfq/formats/layouts.py)
            q = torch.tensor([[v for grp in row.tolist() for v in naive_unpack_bitstream(grp, layer.bits, layer.group_size)]
                              for row in layer.weight], dtype=torch.float32)
            gi = g_idx.long()
            w = layer.scales.float()[:, gi] * (q - 2 ** (layer.bits - 1))
        twin.get_submodule(name).weight.data.copy_(w)
    return twin


def test_desc_act_g_idx_round_trip_in_the_files(tiny_llama_dir, tmp_path):
    model = _hfq(tiny_llama_dir)
    name = "model.layers.0.mlp.down_proj"
    g_idx = _set_g_idx(model, name, 0)
    out = hfq.save_standard(model, tmp_path / "g", "gptq")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["desc_act"] is True
    t = load_file(out / "model.safetensors")
    assert torch.equal(t[f"{name}.g_idx"], g_idx)
    twin = _float_twin(tiny_llama_dir, model, name, g_idx)
    assert torch.equal(naive_gptq_dequant(t, name, 4), twin.get_submodule(name).weight)
    with pytest.raises(ValueError, match=f"layer '{name}'.*g_idx.*format='gptq'"):
        hfq.save_standard(model, tmp_path / "a", "awq")


# ---- acceptance: transformers + optimum + gptqmodel load the files on CPU, no hfq involved in loading ----

# gptqmodel's CPU kernels compute in float16 (TorchLinear supports fp16/bf16 only), so activations and the
# dequantized weights are rounded to float16 (unit roundoff 4.9e-4) while hfq's model computes in float32. On these
# tiny models that leaves max |logit difference| about 2e-4 for |logits| < 1 (measured). 2e-3 is ten times that and
# far below what a wrong bit layout does (GPTQ 4-bit with the nibbles of each word reversed: 0.68, measured). The
# file tests above and tests/formats/test_standard_layout.py check the bits exactly. Prompts are 2 x 8 tokens, so
# hfq runs its GEMV kernels (int16 activations, helpers.KERNEL_LOGIT_TOL) rather than bfloat16 prefill tiles.
ATOL = 2e-3


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def _load_standard(path):
    pytest.importorskip("gptqmodel", reason="loading GPTQ/AWQ checkpoints needs gptqmodel; install hfq[gptq-oracle]")
    pytest.importorskip("optimum", reason="loading GPTQ checkpoints needs optimum; install hfq[gptq-oracle]")
    return AutoModelForCausalLM.from_pretrained(path, device_map="cpu").eval()


@pytest.mark.parametrize("bits,sym", BIT_CASES)
def test_gptq_loads_in_transformers_with_same_logits(tiny_llama_dir, tmp_path, bits, sym):
    model = _hfq(tiny_llama_dir, bits=bits, sym=sym)
    out = hfq.save_standard(model, tmp_path / "gptq", "gptq")
    loaded = _load_standard(out)
    assert type(loaded.model.layers[0].mlp.up_proj).__module__.startswith("gptqmodel")
    ids = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(bits))
    ref = _logits(model, ids)
    assert_logits_close(_logits(loaded, ids), ref, atol=ATOL)
    twin = _logits(_float_twin(tiny_llama_dir, model), ids)  # the float twin used below matches hfq itself
    assert_logits_close(twin, ref)


@pytest.mark.parametrize("sym", [False, True])
def test_awq_loads_in_transformers_with_same_logits(tiny_llama_dir, tmp_path, sym):
    model = _hfq(tiny_llama_dir, sym=sym)
    loaded = _load_standard(hfq.save_standard(model, tmp_path / "awq", "awq"))
    assert "awq" in type(loaded.model.layers[0].mlp.up_proj).__name__.lower()
    ids = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(1))
    assert_logits_close(_logits(loaded, ids), _logits(model, ids), atol=ATOL)


def test_desc_act_checkpoint_loads_with_same_logits(tiny_llama_dir, tmp_path):
    model = _hfq(tiny_llama_dir, sym=True)
    name = "model.layers.1.mlp.down_proj"
    g_idx = _set_g_idx(model, name, 1)
    loaded = _load_standard(hfq.save_standard(model, tmp_path / "g", "gptq"))
    ids = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(2))
    twin = _float_twin(tiny_llama_dir, model, name, g_idx)
    assert_logits_close(_logits(loaded, ids), _logits(twin, ids), atol=ATOL)


def test_float_module_in_every_block_is_written_as_unquantized(tiny_llama_dir, tmp_path):
    model = _hfq(tiny_llama_dir, modules_to_not_convert=["lm_head", "down_proj"])
    out = hfq.save_standard(model, tmp_path / "p", "gptq")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["modules_in_block_to_quantize"] == [["mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
                                                   "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]]
    loaded = _load_standard(out)
    assert type(loaded.model.layers[0].mlp.down_proj) is torch.nn.Linear
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(3))
    assert_logits_close(_logits(loaded, ids), _logits(model, ids), atol=ATOL)


# ---- what cannot be expressed, and atomic output ----

@pytest.mark.parametrize("fmt,kw,match", [
    ("gptq", {"method": "nf4", "group_size": 64, "sym": None}, r"layer 'model.layers.0.self_attn.q_proj': layout='nf4' has no GPTQ"),
    ("gptq", {"bits": 5}, r"bits=5 has no GPTQ layout .* requantize with bits 2, 3, 4 or 8"),
    ("awq", {"bits": 3}, r"bits=3: AWQ GEMM checkpoints are 4-bit only; use format='gptq'"),
    ("awq", {"group_size": -1}, r"group_size=-1 \(per channel\): AWQ GEMM needs groups"),
    ("gptq", {"modules_to_not_convert": []}, r"layer 'lm_head': it is the output head"),
    ("gptq", {"modules_to_not_convert": ["lm_head", "model.layers.0.mlp.down_proj"]},
     r"layer 'model.layers.0.mlp.down_proj': it is float while the same module in other blocks is quantized"),
])
def test_inexpressible_models_are_refused(tiny_llama_dir, tmp_path, fmt, kw, match):
    model = _hfq(tiny_llama_dir, **kw)
    with pytest.raises(ValueError, match=match):
        hfq.save_standard(model, tmp_path / "out", fmt)
    assert list(tmp_path.iterdir()) == []


def test_bad_format_and_float_model(tiny_llama_dir, tmp_path):
    with pytest.raises(ValueError, match=r"format='exl2' .* allowed: \['gptq', 'awq'\]"):
        hfq.save_standard(_hfq(tiny_llama_dir), tmp_path / "o", "exl2")
    with pytest.raises(ValueError, match="no hfq quantized layers"):
        hfq.save_standard(LlamaForCausalLM.from_pretrained(tiny_llama_dir), tmp_path / "o", "gptq")


def test_existing_output_kept_and_failed_write_leaves_nothing(tiny_llama_dir, tmp_path, monkeypatch):
    model = _hfq(tiny_llama_dir)
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="exists and is not empty; pass overwrite=True"):
        hfq.save_standard(model, out, "gptq")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(standard, "_copy_side_files", boom)
    with pytest.raises(OSError, match="disk full"):
        hfq.save_standard(model, out, "gptq", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["o"] and (out / "mine.txt").read_text() == "keep"
    monkeypatch.undo()
    hfq.save_standard(model, out, "gptq", overwrite=True)
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").exists()


def test_cli_export(tiny_llama_dir, tmp_path, capsys):
    q = tmp_path / "q"
    assert main(["quantize", str(tiny_llama_dir), "--method", "rtn", "--bits", "4", "--group-size", "32",
                 "--asym", "--out", str(q)]) == 0
    assert main(["export", str(q), "--format", "awq", "--out", str(tmp_path / "awq")]) == 0
    assert "saved" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(q)
    t = load_file(tmp_path / "awq" / "model.safetensors")
    name = "model.layers.1.mlp.up_proj"
    assert torch.equal(naive_awq_dequant(t, name, 32), _quantized(model)[name].dequantize_weight(torch.float32))
    assert main(["export", str(tiny_llama_dir), "--format", "gptq", "--out", str(tmp_path / "x")]) == 1
    assert "not an hfq checkpoint" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_tied_embeddings_written_once_and_retied(tiny_llama_tied_dir, tmp_path):
    model = _hfq(tiny_llama_tied_dir)
    out = hfq.save_standard(model, tmp_path / "t", "gptq")
    t = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in t and torch.equal(t["model.embed_tokens.weight"], model.lm_head.weight)
    loaded = _load_standard(out)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(5))
    assert_logits_close(_logits(loaded, ids), _logits(model, ids), atol=ATOL)
