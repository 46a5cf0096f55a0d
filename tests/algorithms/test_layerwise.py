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


def _hand_chain(model, windows):
    """Per window and block, the block's input hidden states, from the model's own forward."""
    with torch.no_grad():
        return [model(input_ids=w, output_hidden_states=True).hidden_states for w in windows]


@torch.no_grad()
def test_equal_windows_run_as_one_batch_with_each_windows_own_inputs(model):
    g = torch.Generator().manual_seed(1)
    windows = [torch.randint(0, 512, (1, 24), generator=g) for _ in range(3)]
    windows.insert(2, torch.randint(0, 512, (1, 16), generator=g))     # a shorter one breaks the batch
    ref = _hand_chain(model, windows)
    seen = {}
    calibrate_blocks(model, windows, lambda i, p, block, inputs: seen.setdefault(i, [a[0] for a, _ in inputs]))
    for i in seen:
        assert [h.shape[0] for h in seen[i]] == [2, 1, 1]
        got = [h for b in seen[i] for h in b.split(1)]
        for h, r in zip(got, ref):
            torch.testing.assert_close(h, r[i], atol=1e-5, rtol=1e-4)


def test_batch_windows_limits_and_splits():
    from hfq.algorithms.layerwise import batch_windows

    h = [torch.zeros(1, 8, 4) for _ in range(5)]
    same = [[((), {"m": torch.ones(1, 8)}) for _ in range(5)]]
    assert batch_windows(h, same, max_tokens=24) == [[0, 1, 2], [3, 4]]
    other = [[((), {"m": torch.ones(1, 8) * (j == 3)}) for j in range(5)]]
    assert batch_windows(h, other, max_tokens=64) == [[0, 1, 2], [3], [4]]


class _MixingBlock(torch.nn.Module):
    """A block whose output depends on the other sequences of the batch: batching must be refused."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, h):
        return self.proj(h) + h.mean(0, keepdim=True)


class _MixingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(32, 8)
        self.layers = torch.nn.ModuleList([_MixingBlock(), _MixingBlock()])

    def forward(self, input_ids, use_cache=False):
        h = self.embed(input_ids)
        for b in self.layers:
            h = b(h)
        return h


def test_a_block_that_mixes_the_batch_runs_window_by_window(caplog):
    m = _MixingModel()
    windows = [torch.randint(0, 32, (1, 6)) for _ in range(3)]
    with torch.no_grad():
        ref = [m.embed(w) for w in windows]
        ref = [ref, [m.layers[0](r) for r in ref]]
    seen = {}
    with caplog.at_level("INFO"):
        calibrate_blocks(m, windows, lambda i, p, block, inputs: seen.setdefault(i, [a[0] for a, _ in inputs]))
    assert "running one window per call" in caplog.text
    for i in (0, 1):
        assert [h.shape[0] for h in seen[i]] == [1, 1, 1]
        for h, r in zip(seen[i], ref[i]):
            torch.testing.assert_close(h, r)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_accelerate_offloaded_model_calibrates_like_the_resident_one(method):
    """Weights offloaded by accelerate (on meta between forwards) are brought in one block at a time; the result
    equals calibrating the same model held in memory."""
    from accelerate import cpu_offload
    from conftest import _tiny_llama

    import hfq
    from hfq.integration import calibrate_model

    g = torch.Generator().manual_seed(3)
    data = [torch.randint(0, 512, (40,), generator=g).tolist() for _ in range(4)]
    cfg = dict(method=method, bits=4, group_size=32, dataset=data, n_samples=4, seq_len=32)
    resident, offloaded = _tiny_llama(False), _tiny_llama(False)
    cpu_offload(offloaded, execution_device=torch.device("cpu"))
    assert offloaded.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    for m in (resident, offloaded):
        calibrate_model(m, hfq.HfqConfig(**cfg), ["lm_head"])
    a = {k: v for k, v in resident.state_dict().items()}
    b = {k: v for k, v in offloaded.state_dict().items()}
    quantized = [k for k in a if ".layers." in k and "_proj." in k]
    assert quantized and all(b[k].device.type != "meta" for k in quantized)
    for k in quantized:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0, msg=k)
    x = torch.randint(0, 512, (1, 12), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(offloaded(x).logits, resident(x).logits)


def test_offload_above_the_blocks_is_refused():
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module
    from conftest import _tiny_llama

    from hfq.algorithms.layerwise import onload_block

    m = _tiny_llama(False)
    add_hook_to_module(m.model.layers, AlignDevicesHook(execution_device="cpu", offload=True, place_submodules=True))
    with pytest.raises(ValueError, match="model.layers is offloaded as one unit, above the decoder block"):
        onload_block(m, "model.layers.0", m.model.layers[0])
