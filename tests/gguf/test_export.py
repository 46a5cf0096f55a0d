"""hfq.export_gguf on tiny real models (with trained tokenizers) of every supported architecture.

Oracles: gguf-py's reader and decoders, gguf-py's Q8_0 encoder, llama.cpp's own requantize of hfq's F32 file,
transformers' GGUF loader, llama.cpp (llama-cpp-python) for loading and running the files."""

import gguf
import numpy as np
import pytest
import torch

import hfq
from helpers import PREFILL_LOGIT_TOL, assert_logits_close
from ggml_oracle import llama_quantize, read_gguf
from hfq.gguf import export as export_mod

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3"]
U32, F32, STR, BOOL, ARR = (gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.STRING,
                            gguf.GGUFValueType.BOOL, gguf.GGUFValueType.ARRAY)


def _load(d):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(d)


def _naive_rotary_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k row order, written per row: within each head, rows i and i + d/2 become 2i and 2i + 1."""
    d = w.shape[0] // n_head
    out = torch.empty_like(w)
    for h in range(n_head):
        for i in range(d // 2):
            out[h * d + 2 * i] = w[h * d + i]
            out[h * d + 2 * i + 1] = w[h * d + d // 2 + i]
    return out


def _expected_f32(model, arch: str) -> dict[str, np.ndarray]:
    """What llama.cpp expects for each float tensor, from the HF weights, by GGUF name."""
    cfg = model.config
    tmap = gguf.get_tensor_name_map(export_mod.gguf_arch(arch), cfg.num_hidden_layers)
    out = {}
    for k, v in model.state_dict().items():
        if cfg.tie_word_embeddings and k == "lm_head.weight":
            continue
        x = v.float().clone()
        if arch in ("llama", "mistral") and (".q_proj." in k or ".k_proj." in k):
            x = _naive_rotary_rows(x, cfg.num_attention_heads if ".q_proj." in k else cfg.num_key_value_heads)
        if arch == "gemma3" and k.endswith("norm.weight"):
            x = x + 1
        out[tmap.get_name(k, try_suffixes=(".weight", ".bias"))] = x.numpy()
    return out


@pytest.fixture(scope="module")
def exports(export_dir, tmp_path_factory):
    """{(arch, type): path} for F32, Q8_0 and Q4_K_M exports of each tiny float model."""
    out, root = {}, tmp_path_factory.mktemp("exports")
    for arch in ARCHS:
        model, tok = _load(export_dir(arch))
        for qt in ("F32", "Q8_0", "Q4_K_M"):
            files = hfq.export_gguf(model, tok, root / f"{arch}-{qt}.gguf", quant_type=qt, progress=False)
            assert files == [root / f"{arch}-{qt}.gguf"]
            out[arch, qt] = files[0]
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_export_metadata_and_tensors(arch, export_dir, exports):
    model, tok = _load(export_dir(arch))
    r = gguf.GGUFReader(exports[arch, "F32"])
    f = r.fields
    name = export_mod.gguf_arch(arch).name.lower()
    cfg = model.config
    assert f["general.architecture"].contents() == name
    expect = {f"{name}.block_count": (U32, cfg.num_hidden_layers), f"{name}.embedding_length": (U32, cfg.hidden_size),
              f"{name}.feed_forward_length": (U32, cfg.intermediate_size),
              f"{name}.attention.head_count": (U32, cfg.num_attention_heads),
              f"{name}.attention.head_count_kv": (U32, cfg.num_key_value_heads),
              f"{name}.context_length": (U32, cfg.max_position_embeddings),
              f"{name}.attention.layer_norm_rms_epsilon": (F32, pytest.approx(cfg.rms_norm_eps)),
              "general.file_type": (U32, 0), "tokenizer.ggml.bos_token_id": (U32, tok.bos_token_id or
                                                                               f.get("tokenizer.ggml.bos_token_id") and
                                                                               f["tokenizer.ggml.bos_token_id"].contents())}
    if tok.bos_token_id is None:
        expect.pop("tokenizer.ggml.bos_token_id")
    for k, (typ, val) in expect.items():   # metadata hygiene: ints are UINT32, floats FLOAT32
        assert f[k].types == [typ], (k, f[k].types)
        assert f[k].contents() == val, k
    assert f["tokenizer.ggml.tokens"].types == [ARR, STR]
    assert f["tokenizer.ggml.model"].contents() == ("llama" if arch in ("llama", "mistral") else "gpt2")
    if "tokenizer.ggml.add_bos_token" in f:
        assert f["tokenizer.ggml.add_bos_token"].types == [BOOL]
    expected = _expected_f32(model, arch)
    got = {t.name: t for t in r.tensors}
    assert set(got) == set(expected)
    for n, t in got.items():
        assert t.tensor_type.name == "F32"
        np.testing.assert_array_equal(np.array(t.data).reshape(expected[n].shape), expected[n], err_msg=n)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("qt", ["Q8_0", "Q4_K_M"])
def test_quantized_export_equals_llama_cpp_requantize(arch, qt, exports, tmp_path):
    """llama.cpp's llama_model_quantize of hfq's F32 file gives the same types and bytes as hfq's direct export."""
    theirs = llama_quantize(exports[arch, "F32"], tmp_path / "lc.gguf", qt)
    ours = read_gguf(exports[arch, qt])
    assert set(ours) == set(theirs)
    for n in theirs:
        assert ours[n][0] == theirs[n][0], n
        np.testing.assert_array_equal(ours[n][1], theirs[n][1], err_msg=n)
    f = gguf.GGUFReader(exports[arch, qt]).fields
    assert f["general.file_type"].contents() == export_mod.FILE_TYPES[qt][0]


def test_q8_0_bytes_equal_gguf_py_encoder(export_dir, exports):
    model, _ = _load(export_dir("llama"))
    expected = _expected_f32(model, "llama")
    for t in gguf.GGUFReader(exports["llama", "Q8_0"]).tensors:
        if t.tensor_type.name == "Q8_0":
            ref = gguf.quants.quantize(expected[t.name], gguf.GGMLQuantizationType.Q8_0)
            np.testing.assert_array_equal(np.array(t.data), ref, err_msg=t.name)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("qt", ["Q8_0", "Q4_K_M"])
def test_transformers_loads_export_of_hfq_model(arch, qt, export_dir, tmp_path):
    """An hfq gguf-method model exports its blocks unchanged, the embedding and the output head included (they are
    stored in llama.cpp's token_embd/output types already); transformers' GGUF loader runs the file with the hfq
    model's logits, to kernel rounding."""
    from transformers import AutoModelForCausalLM

    src = export_dir(arch)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=hfq.HfqConfig(method="gguf", quant_type=qt),
                                                 dtype=torch.float32).eval()
    _, tok = _load(src)
    path = hfq.export_gguf(model, tok, tmp_path / "m.gguf", progress=False)[0]
    r = gguf.GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}
    tied = model.config.tie_word_embeddings
    assert isinstance(model.model.embed_tokens, hfq.nn.HfqEmbedding)
    for mod_name, m in model.named_modules():   # the file holds exactly the hfq layers' bytes
        if isinstance(m, hfq.nn.linear.HfqLinear):
            if tied and mod_name == "lm_head":
                assert m.weight is model.model.embed_tokens.weight and "output.weight" not in tensors
                continue
            g = gguf.get_tensor_name_map(export_mod.gguf_arch(arch), model.config.num_hidden_layers).get_name(
                mod_name + ".weight", try_suffixes=(".weight",))
            data = np.array(tensors[g].data)
            if arch == "llama" and (".q_proj" in mod_name or ".k_proj" in mod_name):
                heads = model.config.num_attention_heads if ".q_proj" in mod_name else model.config.num_key_value_heads
                want = _naive_rotary_rows(m.weight.detach(), heads).numpy()
            else:
                want = m.weight.detach().numpy()
            assert tensors[g].tensor_type.name == m.ggml_type
            np.testing.assert_array_equal(data.reshape(want.shape), want, err_msg=mod_name)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    ids = tok("The harbour town woke slowly on winter mornings.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = model(ids[:, :16]).logits, loaded(ids[:, :16]).logits   # the GEMV kernels: int16 activations
        assert_logits_close(a, b)
        a, b = model(ids).logits, loaded(ids).logits                   # prefill: bfloat16 tiles
        assert ids.shape[1] > 16
        assert_logits_close(a, b, PREFILL_LOGIT_TOL)
