"""GPTQ: the lazy-batched Cholesky implementation against a naive column-by-column OBQ written from the paper's
equations (explicit inverse Hessian, Gaussian elimination after each column; no Cholesky, no lazy batches) on grids
written here from their definitions (llama.cpp's own encoder for GGML blocks), and the error ordering GPTQ <= RTN
on layers with correlated inputs."""

import logging

import bitsandbytes.functional as bF
import gguf
import numpy as np
import pytest
import torch
from ggml_oracle import ggml_quantize
from helpers import naive_rtn

from hfq.algorithms.gptq import Hessian, auto_damp, gptq_quantize
from hfq.algorithms.grids import decode, make_grid
from hfq.formats.ggml_dequant import dequantize_rows
from hfq.algorithms.ggml_quant import quantize_rows


def _gar_order(d, gs):
    """Group-aware reordering from its description: groups by decreasing largest H_ii, columns within a group by
    decreasing H_ii, each group's columns kept together."""
    groups = [list(range(g, g + gs)) for g in range(0, len(d), gs)]
    groups.sort(key=lambda cols: -max(d[c] for c in cols))
    return [c for cols in groups for c in sorted(cols, key=lambda c: -d[c])]


class SpecInt:
    """GPTQ's integer grid from its definition: sym scale = 2 max|w| / (2^b - 1), zero 2^(b-1); asym scale =
    (max(w,0) - min(w,0)) / (2^b - 1), zero = round(-min(w,0) / scale); the scale is stored in float16 (an
    all-zero group gets 1) and codes are rounded against that stored value."""

    step = 1

    def __init__(self, layout, bits, group_size, sym):
        self.bits, self.group_size, self.sym, self.maxq = bits, group_size, sym, 2**bits - 1

    def group(self, n):
        return n if self.group_size == -1 else self.group_size

    def params(self, wg):
        w = wg.float()
        if self.sym:
            scale = 2 * w.abs().amax(1) / self.maxq
        else:
            lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
            scale = (hi - lo) / self.maxq
        scale = scale.clamp(max=65504).half().float()
        scale[scale == 0] = 1
        zero = torch.full_like(scale, 2 ** (self.bits - 1)) if self.sym else (-lo / scale).round().clamp(0, self.maxq)
        return scale, zero

    def quantize(self, w, p):
        scale, zero = (t.to(w.dtype)[:, None] for t in p)
        q = ((w / scale).round() + zero).clamp(0, self.maxq)
        return scale * (q - zero), q


class SpecCodebook:
    """NF4/FP4 from QLoRA: each block of columns scaled by its absmax (times its reciprocal, as bitsandbytes does)
    and rounded to the nearest entry of bitsandbytes' code table (a midpoint goes to the smaller entry)."""

    step = 1

    def __init__(self, layout, group_size):
        self.code, self.group_size = bF.get_4bit_type(layout, device="cpu").double(), group_size

    def group(self, n):
        return self.group_size

    def params(self, wg):
        return wg.abs().amax(1)

    def quantize(self, w, absmax):
        a = absmax.to(w.dtype)[:, None]
        x = (w * (1 / a)).clamp(-1, 1)
        idx = (x[..., None] - self.code.to(w.dtype)).abs().argmin(-1)
        return self.code.to(w.dtype)[idx] * a, idx


class SpecGGML:
    """A GGML type: a block of columns is encoded by llama.cpp's own ggml_quantize_chunk (weighted by importance,
    as with an imatrix) and decoded by gguf-py."""

    def __init__(self, layout, ggml):
        self.type = ggml
        self.step = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml]][0]

    def group(self, n):
        return None

    def quantize_block(self, w, importance):
        data = ggml_quantize(w.float().numpy(), self.type, importance.float().numpy())
        deq = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[self.type]).reshape(w.shape)
        return torch.from_numpy(np.ascontiguousarray(deq)).to(w.dtype), data


def spec_grid(layout, **kw):
    return {"int": SpecInt, "nf4": SpecCodebook, "gguf": SpecGGML}[layout](layout, **kw)


def _naive_gptq(W, H, grid, damp=0.01, desc_act=False, static_groups=False, group_aware=False):
    """OBQ in GPTQ's fixed order, from the equations: for each column q (or GGML block B) in order,
    delta_F = -(w_q - quant(w_q)) / [Hinv]_qq * [Hinv]_{q,F}, then Hinv <- Hinv - Hinv_{:,q} Hinv_{q,:} / [Hinv]_qq
    (block: delta_F = -(W_B - Q_B) Hinv_BB^-1 Hinv_{B,F}, Hinv_FF <- Hinv_FF - Hinv_FB Hinv_BB^-1 Hinv_BF)."""
    W = W.double().clone()
    H = H.double().clone()
    n = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.diag(H).mean() * torch.eye(n, dtype=H.dtype)
    order = torch.argsort(torch.diag(H), descending=True).tolist() if desc_act else list(range(n))
    if group_aware:
        order = _gar_order(torch.diag(H).tolist(), grid.group(n))
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    s = grid.step
    gs = grid.group(n)
    static = [grid.params(W[:, g:g + gs]) for g in range(0, n, gs)] if (gs and static_groups) else None
    p = None
    for j in range(0, n, s):
        B = order[j:j + s]
        F = order[j + s:]
        if s == 1:
            c = B[0]
            if static is not None:
                p = static[c // gs]
            elif j % gs == 0:
                p = grid.params(W[:, order[j:j + gs]])
            q, _ = grid.quantize(W[:, B], p)
        else:
            imp = torch.diag(torch.linalg.inv(Hinv[B][:, B]))
            q, _ = grid.quantize_block(W[:, B], imp)
        Q[:, B] = q
        K = torch.linalg.inv(Hinv[B][:, B])
        W[:, F] -= (W[:, B] - q) @ K @ Hinv[B][:, F]
        Hinv = Hinv - Hinv[:, B] @ K @ Hinv[B, :]
    return Q


def _layer(seed, out_f=48, in_f=256, tokens=1024, rank=32):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(rank, in_f, generator=g)
    X = torch.randn(tokens, rank, generator=g) @ A + 0.1 * torch.randn(tokens, in_f, generator=g)
    X *= torch.rand(in_f, generator=g) * 3 + 0.1        # uneven column energy, as in LLM activations
    W = torch.randn(out_f, in_f, generator=g) * 0.05
    h = Hessian(in_f)
    h.add(X)
    return W, X, h.H


GRIDS = {
    "int4-g32-sym": dict(layout="int", bits=4, group_size=32, sym=True),
    "int3-g64-asym": dict(layout="int", bits=3, group_size=64, sym=False),
    "int4-pc": dict(layout="int", bits=4, group_size=-1, sym=True),
    "nf4-b32": dict(layout="nf4", group_size=32),
    "Q4_K": dict(layout="gguf", ggml="Q4_K"),
    "Q3_K": dict(layout="gguf", ggml="Q3_K"),
    "Q4_0": dict(layout="gguf", ggml="Q4_0"),
}
ORDERS = {"plain": (False, False), "act-order": (True, False), "act-order-static": (True, True)}


def _valid(name, order):
    """GGML blocks keep column order (no act-order); the nf4 layout has no g_idx (act-order needs static groups);
    test_bad_inputs checks that both are refused."""
    layout, (desc_act, static) = GRIDS[name]["layout"], ORDERS[order]
    return not (layout == "gguf" and desc_act) and not (layout == "nf4" and desc_act and not static)


@pytest.mark.parametrize("name,order", [(n, o) for n in GRIDS for o in ORDERS if _valid(n, o)])
def test_lazy_batched_equals_naive_obq(name, order):
    desc_act, static = ORDERS[order]
    grid = make_grid(**GRIDS[name])
    W, _, H = _layer(1, out_f=16, in_f=256 if grid.step > 1 else 128)
    H = H.double()
    res = gptq_quantize(W.double(), H, grid, desc_act=desc_act, static_groups=static, block_size=64)
    ref = _naive_gptq(W, H, spec_grid(**GRIDS[name]), desc_act=desc_act, static_groups=static)
    torch.testing.assert_close(res.weight.double(), ref.float().double(), rtol=1e-5, atol=1e-6)
    # the saved layout decodes to the same weight
    torch.testing.assert_close(decode(grid, res.tensors, *W.shape), res.weight, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["int4-g32-sym", "int3-g64-asym", "nf4-b32"])
def test_group_aware_order_equals_naive_obq_in_that_order(name):
    grid = make_grid(**GRIDS[name])
    W, _, H = _layer(2, out_f=16, in_f=128)
    H = H.double()
    res = gptq_quantize(W.double(), H, grid, block_size=64, group_aware=True)
    ref = _naive_gptq(W, H, spec_grid(**GRIDS[name]), group_aware=True)
    torch.testing.assert_close(res.weight.double(), ref.double(), rtol=1e-5, atol=1e-6)
    assert "g_idx" not in res.tensors     # contiguous groups: the plain layout
    torch.testing.assert_close(decode(grid, res.tensors, *W.shape), res.weight, rtol=1e-6, atol=1e-6)
    plain = gptq_quantize(W.double(), H, grid, block_size=64)
    assert not torch.equal(plain.weight, res.weight)     # the order really changed the result


@pytest.mark.parametrize("name", ["int4-g128-sym", "int4-g128-asym", "int3-g128-sym", "nf4-b64", "Q4_K", "Q3_K"])
def test_gptq_beats_rtn_on_correlated_inputs(name):
    spec = {"int4-g128-sym": dict(layout="int", bits=4, group_size=128, sym=True),
            "int4-g128-asym": dict(layout="int", bits=4, group_size=128, sym=False),
            "int3-g128-sym": dict(layout="int", bits=3, group_size=128, sym=True),
            "nf4-b64": dict(layout="nf4", group_size=64)}.get(name) or GRIDS[name]
    grid = make_grid(**spec)
    ratios = []
    for seed in range(4):
        W, X, H = _layer(seed)
        q = gptq_quantize(W, H, grid).weight
        r = decode(grid, grid.rtn(W), *W.shape)
        err_g = ((X @ (W - q).T) ** 2).sum()
        err_r = ((X @ (W - r).T) ** 2).sum()
        ratios.append((err_g / err_r).item())
    assert max(ratios) < 0.9, ratios          # GPTQ's output error is lower on every seed


def _draws(seed, tokens, in_f=256):
    """Calibration and held-out inputs of one layer: full rank with a slowly falling spectrum (1/sqrt(i)) and
    uneven column energies, so that a few hundred tokens estimate H poorly; the held-out draw has new tokens."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(in_f, in_f, generator=g))
    spectrum = (torch.arange(in_f) + 1.0) ** -0.5
    energy = torch.rand(in_f, generator=g) * 3 + 0.1
    W = torch.randn(48, in_f, generator=g) * 0.05
    x = lambda n: ((torch.randn(n, in_f, generator=g) * spectrum) @ basis) * energy  # noqa: E731
    return W, x(tokens), x(4096)


@pytest.mark.parametrize("name", ["int4-g128-sym", "int3-g128-sym", "nf4-b64", "Q4_K", "Q3_K"])
@pytest.mark.parametrize("per_column", [0.5, 2, 16, 128])
def test_gptq_defaults_beat_rtn_on_held_out_inputs_at_every_budget(name, per_column):
    """hfq's defaults (damp by data size, GAR where the grid allows it) from half a token per input column to 128:
    the output error on inputs GPTQ never saw stays below round-to-nearest's on every seed. (At half a token per
    column, damp 0.001 instead of the default 0.1 makes int4's error 1.5-1.7x RTN's here.)"""
    spec = {"int4-g128-sym": dict(layout="int", bits=4, group_size=128, sym=True),
            "int3-g128-sym": dict(layout="int", bits=3, group_size=128, sym=True),
            "nf4-b64": dict(layout="nf4", group_size=64)}.get(name) or GRIDS[name]
    grid = make_grid(**spec)
    tokens = int(per_column * 256)
    ratios = []
    for seed in range(3):
        W, X, held = _draws(seed, tokens)
        h = Hessian(256)
        h.add(X)
        q = gptq_quantize(W, h.H, grid, damp=auto_damp(tokens, 256), group_aware=spec["layout"] != "gguf").weight
        r = decode(grid, grid.rtn(W), *W.shape)
        ratios.append((((held @ (W - q).T) ** 2).sum() / ((held @ (W - r).T) ** 2).sum()).item())
    assert max(ratios) < 1.0, ratios


def test_act_order_stores_g_idx_and_helps():
    W, X, H = _layer(3)
    grid = make_grid("int", 4, 32, True)
    res = gptq_quantize(W, H, grid, desc_act=True)
    g_idx = res.tensors["g_idx"]
    assert g_idx.dtype == torch.int32 and g_idx.shape == (256,)
    assert torch.bincount(g_idx.long()).tolist() == [32] * 8      # each group holds exactly group_size columns
    perm = torch.argsort(torch.diag(H), descending=True)
    assert torch.equal(g_idx[perm].long(), torch.arange(256) // 32)    # groups follow activation order
    plain = gptq_quantize(W, H, grid).weight
    err = lambda q: ((X @ (W - q).T) ** 2).sum()  # noqa: E731
    assert err(res.weight) < err(plain)


def test_hessian_running_average_equals_two_over_n_xtx():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 50, 16, generator=g)
    h = Hessian(16)
    for x in X:
        h.add(x)
    flat = X.reshape(-1, 16).double()
    torch.testing.assert_close(h.H.double(), 2 / 150 * flat.T @ flat, rtol=1e-5, atol=1e-6)


def test_not_positive_definite_falls_back_to_rtn(caplog):
    W, _, _ = _layer(0, in_f=64)
    H = torch.full((64, 64), 1.0)
    H += torch.eye(64) * -2.0 + torch.eye(64) * 3.0   # diag 2, off-diagonal 1 ... then break it:
    H[0, 1] = H[1, 0] = 50.0                          # a 2x2 minor with det 4 - 2500 < 0: indefinite
    grid = make_grid("int", 4, 32, True)
    with caplog.at_level(logging.WARNING, logger="hfq.algorithms.gptq"):
        res = gptq_quantize(W, H, grid, name="layer.x")
    assert res.damp is None and res.info == {"fallback": "rtn"}
    expected = grid.rtn(W)
    assert all(torch.equal(res.tensors[k], expected[k]) for k in expected)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("not positive definite" in m for m in msgs) == 3
    assert any("layer.x: falling back to round-to-nearest" in m for m in msgs)


def test_ggml_block_step_uses_the_byte_exact_encoder():
    W, _, H = _layer(2)
    grid = make_grid("gguf", ggml="Q4_K")
    res = gptq_quantize(W, H, grid)
    data = res.tensors["weight"]
    assert data.shape == (48, 144)
    torch.testing.assert_close(dequantize_rows(data, "Q4_K", 48, 256), res.weight)
    # error feedback moved the weights the encoder saw: the bytes differ from plain encoding of W
    assert not torch.equal(data, quantize_rows(W, "Q4_K"))


def test_bad_inputs():
    W, _, H = _layer(0, in_f=64)
    with pytest.raises(ValueError, match="Hessian of layer is"):
        gptq_quantize(W, H[:32, :32], make_grid("int", 4, 32, True))
    with pytest.raises(ValueError, match="desc_act=True cannot reorder GGML blocks"):
        gptq_quantize(torch.randn(4, 256), torch.eye(256), make_grid("gguf", ggml="Q4_K"), desc_act=True)
    with pytest.raises(ValueError, match="needs static_groups=True"):
        gptq_quantize(W, H, make_grid("nf4", group_size=32), desc_act=True)


def _independent_rtn(spec, W):
    """Round-to-nearest of W on the grid, by code that shares nothing with hfq's encoders or decoders."""
    if spec["layout"] == "int":
        return torch.tensor(naive_rtn(W, spec["bits"], spec["group_size"], spec["sym"])[3], dtype=torch.float32)
    if spec["layout"] == "gguf":
        qt = gguf.GGMLQuantizationType[spec["ggml"]]
        return torch.from_numpy(gguf.quants.dequantize(ggml_quantize(W.numpy(), spec["ggml"]), qt).reshape(W.shape))
    packed, state = bF.quantize_4bit(W, blocksize=spec["group_size"], quant_type="nf4",
                                     compress_statistics=spec.get("double_quant", False))
    if spec.get("double_quant"):
        # bitsandbytes' CPU kernel picks a neighbouring 8-bit absmax code for a few constants (test_rtn.py), so the
        # 8-bit codes are chosen here from QLoRA's definition instead: the truly nearest entry of bitsandbytes'
        # dynamic table to (absmax - offset) / the 256-block's scale. bitsandbytes' 4-bit codes, offset and scales
        # are kept, and decoded by bitsandbytes.
        _, plain = bF.quantize_4bit(W, blocksize=spec["group_size"], quant_type="nf4")
        blk = torch.arange(plain.absmax.numel()) // 256
        target = (plain.absmax - state.offset) / state.state2.absmax[blk]
        state.absmax = (target[:, None] - state.state2.code[None]).abs().argmin(1).to(torch.uint8)
        t = make_grid(**spec).rtn(W)    # hfq's stored tensors agree with each independent part
        assert torch.equal(t["weight"].reshape(-1, 1), packed) and torch.equal(t["absmax"], state.absmax)
        assert torch.equal(state.offset, t["absmax_offset"]) and torch.equal(state.state2.absmax, t["absmax_scale"])
    return bF.dequantize_4bit(packed, state)


@pytest.mark.parametrize("spec", [dict(layout="int", bits=3, group_size=32, sym=False),
                                  dict(layout="int", bits=4, group_size=-1, sym=True),
                                  dict(layout="nf4", group_size=64), dict(layout="nf4", group_size=64, double_quant=True),
                                  dict(layout="gguf", ggml="Q3_K")], ids=str)
def test_fake_quant_equals_decoded_rtn_layout(spec):
    """AWQ's fake quantizer is exactly the stored round-to-nearest result, and both equal an independent
    round-to-nearest: the naive per-element RTN, bitsandbytes, or llama.cpp's encoder with gguf-py's decoder."""
    grid = make_grid(**spec)
    W = torch.randn(8, 256, generator=torch.Generator().manual_seed(5))
    assert torch.equal(grid.fake(W), decode(grid, grid.rtn(W), 8, 256))
    assert torch.equal(grid.fake(W), _independent_rtn(spec, W))
