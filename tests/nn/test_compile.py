"""torch.compile of whole quantized models: no graph break (HfqLinear's ops are opaque custom ops with fake
functions and precomputed inputs), compiled logits equal eager ones, and a static-cache decode loop compiles once."""

import pytest
import torch
from transformers import AutoModelForCausalLM, StaticCache

import hfq

CONFIGS = {"nf4-dq": dict(method="nf4", double_quant=True), "rtn4-g32": dict(method="rtn", bits=4, group_size=32),
           "gguf-Q4_0": dict(method="gguf", quant_type="Q4_0")}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_compiled_model_has_no_graph_break_and_matches_eager(tiny_llama_dir, name):
    torch._dynamo.reset()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(**CONFIGS[name]))
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    ex = torch._dynamo.explain(model.eval())(ids)
    assert ex.graph_break_count == 0, [str(r.reason) for r in ex.break_reasons]
    compiled = torch.compile(model)
    with torch.no_grad():
        a, b = compiled(ids).logits, model(ids).logits
    # the hfq ops run the same kernels; only the float ops around them are fused differently
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_static_cache_decode_compiles_once(tiny_llama_dir):
    """One decode step per call with a static cache: after the first compiled step, no recompilation."""
    torch._dynamo.reset()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=hfq.HfqConfig(method="nf4",
                                                                                                  double_quant=True))
    cache = StaticCache(config=model.config, max_cache_len=64)
    step = torch.compile(lambda ids, pos: model(ids, past_key_values=cache, cache_position=pos, use_cache=True).logits)
    ids = torch.tensor([[5]])
    counts = []
    with torch.no_grad():
        for t in range(10):
            logits = step(ids, torch.tensor([t]))
            ids = logits[:, -1:].argmax(-1)
            counts.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert counts[0] >= 1 and counts[-1] == counts[2], counts   # steps 3.. reuse the compiled graph
