"""The block-by-block driver: captured block inputs and the block chain reproduce the model's own forward."""

import pytest
import torch

from hfq.algorithms.layerwise import calibrate_blocks, capture_inputs, find_blocks, linear_groups


@pytest.fixture(params=["llama", "gemma3"])
def model(request):
    from conftest import _tiny_gemma3, _tiny_llama

    return _tiny_llama(False) if request.param == "llama" else _tiny_gemma3()


def test_chain_of_captured_blocks_reproduces_the_decoder(model):
    g = torch.Generator().manual_seed(0)
    windows = [torch.randint(0, 512, (1, 24), generator=g) for _ in range(3)]
    seen = []
    summaries = calibrate_blocks(model, windows, lambda i, prefix, block, inputs: seen.append((i, prefix)) or i)
    assert summaries == [0, 1] and seen == [(0, "model.layers.0"), (1, "model.layers.1")]
    # the same chain by hand: block outputs from captured inputs equal hidden_states of a normal forward
    _, blocks = find_blocks(model)
    first, per_block = capture_inputs(model, blocks, windows)
    for w, (a, kw), j in zip(windows, first, range(3)):
        ref = model(input_ids=w, output_hidden_states=True).hidden_states
        h = a[0]
        torch.testing.assert_close(h, ref[0])
        for i, b in enumerate(blocks):
            a_i, kw_i = per_block[i][j]
            h = b(h, *a_i, **kw_i)
            h = h[0] if isinstance(h, tuple) else h
            if i < len(blocks) - 1:
                torch.testing.assert_close(h, ref[i + 1])
        torch.testing.assert_close(model.model.norm(h), ref[-1])


def test_linear_groups_follow_shared_inputs(model):
    windows = [torch.randint(0, 512, (1, 16))]
    _, blocks = find_blocks(model)
    first, per_block = capture_inputs(model, blocks, windows)
    groups = linear_groups(blocks[0], first)
    assert groups == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                      ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]


def test_no_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot find the decoder blocks of Linear"):
        find_blocks(torch.nn.Linear(4, 4))
