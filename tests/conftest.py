import os
import sys
from pathlib import Path

import pytest
import torch

# Keep hfq's cache where CI can reuse it between runs on the same machine, but never on the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The push tests' Hub (tests/hub_server.py) listens here. huggingface_hub reads HF_ENDPOINT once, when it is first
# imported, so it is set now, before anything imports it; no test can reach the real Hub.
os.environ["HFQ_TEST_HUB_PORT"] = str(_free_port())
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{os.environ['HFQ_TEST_HUB_PORT']}"

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py


@pytest.hookimpl(tryfirst=True)   # before -m deselects
def pytest_collection_modifyitems(config, items):
    """Every test that loads the real Gemma-3-270M (through gemma_dir) is slow, so `-m "not slow"` is a quick run;
    the tests that reach it otherwise (hfq demo, the embedded GGUF) are marked by hand."""
    for item in items:
        if "gemma_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def _tiny_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, tie_word_embeddings=tie, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def _tiny_gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=32, vocab_size=512, max_position_embeddings=128,
                           sliding_window=16, layer_types=["sliding_attention", "full_attention"])
    return Gemma3ForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def llama256_dir(tmp_path_factory):
    """Rows of 256 and 512, so GGUF k-quants apply without the shape fallback."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=1, vocab_size=512, tie_word_embeddings=False, max_position_embeddings=128)
    d = tmp_path_factory.mktemp("llama256")
    LlamaForCausalLM(cfg).eval().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    _tiny_llama(tie=False).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_llama_tied_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama-tied")
    _tiny_llama(tie=True).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-gemma3")
    _tiny_gemma3().save_pretrained(d)
    return d


@pytest.fixture(scope="session", params=["llama", "gemma3"])
def tiny_model_dir(request, tiny_llama_dir, tiny_gemma3_dir):
    return {"llama": tiny_llama_dir, "gemma3": tiny_gemma3_dir}[request.param]


@pytest.fixture(scope="session")
def gemma_dir():
    """The embedded Gemma-3-270M as a float folder (built once into the hfq cache)."""
    from hfq.embedded import local_model

    return local_model("gemma-3-270m")


@pytest.fixture(scope="session")
def gemma_f32_gguf(tmp_path_factory):
    """The embedded Gemma-3-270M as an F32 GGUF for llama.cpp's tools (1 GB, written once per session)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from _gemma_gguf import f32_gguf

    return f32_gguf(tmp_path_factory.mktemp("gemma-f32") / "gemma-3-270m-f32.gguf")


def _llama_tool_fixture(fixture: str, tool: str):
    """A session fixture giving the path of one llama.cpp oracle (tests/ggml_oracle.py: fails in CI when missing,
    skips elsewhere naming the command that builds it)."""
    @pytest.fixture(scope="session", name=fixture)
    def path():
        from ggml_oracle import llama_tool

        return llama_tool(tool)
    return path


llama_quantize_bin = _llama_tool_fixture("llama_quantize_bin", "llama-quantize")
llama_imatrix_bin = _llama_tool_fixture("llama_imatrix_bin", "llama-imatrix")
llama_perplexity_bin = _llama_tool_fixture("llama_perplexity_bin", "llama-perplexity")
llama_cpp_src = _llama_tool_fixture("llama_cpp_src", "convert_hf_to_gguf.py")   # llama.cpp's tree (gguf-py too)


def _export_model(arch: str):
    """A tiny model with a real tokenizer, rows of 256/512 so k-quants apply without fallbacks."""
    import transformers as tf

    import tokenizers_tiny as tt

    tok = {"llama": tt.spm_style, "mistral": tt.spm_style, "gemma3": tt.gemma_style}.get(arch, tt.byte_level)()
    common = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256)
    torch.manual_seed(0)
    if arch == "gemma3":
        # six layers in llama.cpp's fixed Gemma-3 pattern: five sliding-window layers, then a global one
        cfg = tf.Gemma3TextConfig(**dict(common, num_hidden_layers=6), head_dim=64, sliding_window=8,
                                  tie_word_embeddings=True)
        model = tf.Gemma3ForCausalLM(cfg)
    else:
        cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
               "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM), "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM)}[arch]
        extra = {"attention_bias": arch == "qwen2"} if arch == "qwen2" else {}
        model = cls[1](cls[0](**common, tie_word_embeddings=arch == "qwen3", **extra))
    with torch.no_grad():   # nonzero norms and biases, so their transforms are checked
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (0.0 if arch == "gemma3" else 1.0))
    return model.eval(), tok


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    """export_dir(arch) -> a saved tiny float model with its tokenizer (llama, mistral, qwen2, qwen3, gemma3)."""
    made = {}

    def make(arch: str):
        if arch not in made:
            model, tok = _export_model(arch)
            d = tmp_path_factory.mktemp(f"export-{arch}")
            model.save_pretrained(d)
            tok.save_pretrained(d)
            # as transformers itself saves it for this model type (the class AutoTokenizer picks adds its defaults)
            from transformers import AutoTokenizer
            AutoTokenizer.from_pretrained(d).save_pretrained(d)
            made[arch] = d
        return made[arch]
    return make
