"""Does gptqmodel's AWQ scale fold keep a Gemma 3 decoder layer's function? (the reason its AWQ row in
benchmarks/calibration_sweep.py is not an AWQ anchor on Gemma 3)

AWQ multiplies input channels of a group of linears by s and divides the op before them by s, which must leave the
float layer unchanged. This folds one set of positive scales with gptqmodel's own `apply_scale` into the ops its
Gemma 3 model definition names, and, for contrast, with Gemma 3's (1 + weight) rule into the norm that really feeds
the group, and prints each layer's output change relative to its largest output.

    python benchmarks/gptqmodel_awq_gemma3_fold.py      # needs gptqmodel (7.7.0 checked)
"""

from __future__ import annotations

import copy

import torch
from gptqmodel.models.definitions.gemma3 import Gemma3QModel
from gptqmodel.quantization.awq.quantize.scale import apply_scale
from transformers import Gemma3TextConfig
from transformers.models.gemma3.modeling_gemma3 import Gemma3DecoderLayer, Gemma3RotaryEmbedding


def main() -> None:
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=32, num_hidden_layers=1, vocab_size=100)
    cfg._attn_implementation = "eager"
    layer = Gemma3DecoderLayer(cfg, 0).eval()
    for name, p in layer.named_parameters():
        if "norm" in name:   # trained norms are not all zero (zero is (1 + w) = 1, where both rules agree)
            p.data.normal_(0, 0.3)
    x, pos = torch.randn(1, 8, 64), torch.arange(8)[None]
    pe = Gemma3RotaryEmbedding(cfg)(x, pos, layer_type="sliding_attention")

    def run(block):
        out = block(x, position_embeddings=pe, attention_mask=None, position_ids=pos)
        return out[0] if isinstance(out, tuple) else out

    def change(block):
        return float((run(block) - ref).abs().max() / ref.abs().max())

    def plus_one_fold(norm_name, layers, s):
        block = copy.deepcopy(layer)
        norm = block.get_submodule(norm_name)
        norm.weight.copy_((norm.weight + 1) / s - 1)
        for n in layers:
            block.get_submodule(n).weight.mul_(s)
        return block

    qkv, gate_up = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")
    print("gptqmodel Gemma3QModel module tree:", Gemma3QModel.module_tree[-1])
    with torch.no_grad():
        ref = run(layer)
        s = torch.rand(64) + 0.5
        for prev, layers in (("input_layernorm", qkv), ("post_attention_layernorm", gate_up),
                             ("pre_feedforward_layernorm", gate_up)):
            block = copy.deepcopy(layer)
            apply_scale(block, [(prev, layers, s.clone(), 0.0)])
            print(f"gptqmodel apply_scale, {layers[0].split('.')[0]} scales into {prev}: output change "
                  f"{change(block):.3g}")
        for prev, layers in (("input_layernorm", qkv), ("pre_feedforward_layernorm", gate_up)):
            print(f"(1 + w) / s fold into {prev}: output change {change(plus_one_fold(prev, layers, s)):.3g}")


if __name__ == "__main__":
    main()
