"""The architecture registry and the one HF -> GGUF tensor-name map, against the names llama.cpp uses
(src/llama-arch.cpp: blk.N.attn_q ... ffn_down, token_embd, output, output_norm)."""

import pytest

from hfq.algorithms.awq import scale_groups
from hfq.architectures import ARCHITECTURES, AWQ, GGUF_EXPORT, MIXES
from hfq.gguf.metadata import gguf_arch
from hfq.gguf.names import gguf_name

ROLES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down"}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_block_linear_has_llama_cpps_name(arch):
    for hf, gg in ROLES.items():
        assert gguf_name(f"model.layers.3.{hf}", arch, 6) == f"blk.3.{gg}.weight"
        assert gguf_name(f"model.layers.5.{hf}.bias", arch, 6) == f"blk.5.{gg}.bias"
        # the text model inside a multimodal checkpoint has the same names
        assert gguf_name(f"model.language_model.layers.0.{hf}", arch, 6) == f"blk.0.{gg}.weight"
    assert gguf_name("model.embed_tokens", arch, 6) == "token_embd.weight"
    assert gguf_name("model.norm.weight", arch, 6) == "output_norm.weight"
    assert gguf_name("lm_head", arch, 6, tied=False) == "output.weight"
    assert gguf_name("lm_head", arch, 6, tied=True) == "token_embd.weight"   # llama.cpp reads a tied head there
    assert gguf_name("model.layers.0.self_attn.not_a_tensor", arch, 6) is None


def test_registry_is_what_each_feature_supports():
    assert MIXES == tuple(ARCHITECTURES)
    assert GGUF_EXPORT == ("llama", "mistral", "qwen2", "qwen3", "gemma3", "gemma3_text")
    assert AWQ == ("gemma3", "gemma3_text", "llama", "mistral", "qwen2", "qwen3")
    with pytest.raises(ValueError, match="cannot be exported to GGUF by hfq; supported: llama, mistral, qwen2"):
        gguf_arch("gemma2")
    with pytest.raises(ValueError, match="AWQ does not support arch='gemma2'; supported: gemma3"):
        scale_groups(None, "gemma2")
    with pytest.raises(ValueError, match="no GGUF tensor names"):
        gguf_name("model.layers.0.mlp.up_proj", "falcon", 2)
