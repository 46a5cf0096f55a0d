"""GGUF mixes on the embedded Gemma-3-270M. The model came from a Q4_K_M file, so Q4_K_M re-lands close to its
source grid; Q3_K_M and Q2_K use other grids and measure real error."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hfq
from hfq.nn import HfqEmbedding, HfqLinear

from helpers import PARAGRAPH

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def float_run(gemma_dir):
    tok = AutoTokenizer.from_pretrained(gemma_dir)
    ids = tok(PARAGRAPH, return_tensors="pt")["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32)
    with torch.no_grad():
        return ids, ref(ids).logits[0]


@pytest.fixture(scope="module")
def mix_run(gemma_dir, float_run):
    """mix_run(quant_type) -> (HfqLinear GGML types, top-1 agreement with float); each type is loaded once per
    module, by whichever test asks first, so every test also runs alone or under -k."""
    done = {}

    def run(quant_type):
        if quant_type not in done:
            ids, lf = float_run
            q = AutoModelForCausalLM.from_pretrained(gemma_dir, quantization_config=hfq.HfqConfig(
                method="gguf", quant_type=quant_type))
            # the linears of the blocks; the embedding and its tied head (tests/test_embeddings.py) are apart
            layers = [m for m in q.modules() if isinstance(m, HfqLinear) and not isinstance(m, HfqEmbedding)
                      and m is not q.get_output_embeddings()]
            with torch.no_grad():
                lq = q(ids).logits[0]
            agree = (lq.argmax(-1) == lf.argmax(-1)).float().mean().item()
            print(f"gguf {quant_type}: top-1 agreement with float on {ids.shape[1]} tokens {agree:.3f}")
            done[quant_type] = ([m.ggml_type for m in layers], agree)
            del q
        return done[quant_type]
    return run


# Q4_K_M requantizes the source's own Q4_K_M weights, so it agrees (near) perfectly by construction and is
# not a quality result; Q3_K_M and Q2_K are.
@pytest.mark.parametrize("quant_type, low, high", [("Q4_K_M", 0.95, 1.0), ("Q3_K_M", 0.6, 0.99), ("Q2_K", 0.35, 0.95)])
def test_gemma_mix_loads_and_agrees_with_float(mix_run, quant_type, low, high):
    types, agree = mix_run(quant_type)
    assert len(types) == 18 * 7
    # rows of 640 take llama.cpp's fallbacks; rows of 1024/2048 keep the k-quant
    assert {"Q4_K_M": {"Q4_K", "Q5_0", "Q6_K", "Q8_0"}, "Q3_K_M": {"Q3_K", "Q4_0", "Q4_K", "Q5_0", "Q5_1", "Q5_K"},
            "Q2_K": {"Q3_K", "Q4_0", "Q4_K", "Q5_0"}}[quant_type] >= set(types)
    assert low <= agree <= high


def test_more_bits_agree_more(mix_run):
    agreement = {qt: mix_run(qt)[1] for qt in ("Q4_K_M", "Q3_K_M", "Q2_K")}
    assert agreement["Q4_K_M"] >= agreement["Q3_K_M"] >= agreement["Q2_K"] - 0.02, agreement
