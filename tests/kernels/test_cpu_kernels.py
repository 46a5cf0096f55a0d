"""The native CPU kernels (extensions/cpu) on every instruction set this CPU has.

dequantize_*: bit for bit against independent decoders (gguf-py, bitsandbytes, a loop written from the layout).
linear_*: against float64 x @ w.T of the independently decoded weight, within the bound of tests/kernels/cpu_oracle.py
(int16 activations per 64 columns for few rows of x, bfloat16 tiles for many)."""

import itertools
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from cpu_oracle import act_block, bnb_dense, ggml_dense, int_dense, linear_bound
from hfq.algorithms import quantize_layer_weight
from hfq.algorithms.ggml_quant import quantize_rows
from hfq.formats.codebooks import codebook
from hfq.formats.ggml_types import QUANT_TYPES, TYPES
from hfq.kernels import build

ops = torch.ops.hfq
OPS = ("dequantize_int", "dequantize_4bit", "dequantize_8bit_blockwise", "linear_int", "linear_4bit",
       "dequantize_ggml", "linear_ggml", "quantize_ggml")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def native():
    if build.disabled():
        pytest.skip("HFQ_NO_EXTENSIONS is set: the reference serves every op")
    assert build.load("cpu"), f"the CPU kernels failed to build: {build.status()}"


LEVELS = ("avx512bf16", "avx512", "avx2", "scalar")   # best first


def _isas():
    """The levels this CPU has, best first (the current one is kept)."""
    before, out = torch.ops.hfq_cpu.isa(), []
    for name in LEVELS:
        try:
            torch.ops.hfq_cpu.set_isa(name)
            out.append(name)
        except RuntimeError:
            pass
    torch.ops.hfq_cpu.set_isa(before)
    return out


def _switched(name):
    before = torch.ops.hfq_cpu.isa()
    try:
        torch.ops.hfq_cpu.set_isa(name)
    except RuntimeError:
        pytest.skip(f"this CPU has no {name}")
    yield name
    torch.ops.hfq_cpu.set_isa(before)


@pytest.fixture(params=["avx512", "avx2", "scalar"])
def isa(request, native):
    """Each GEMV engine (avx512bf16 runs avx512's)."""
    yield from _switched(request.param)


@pytest.fixture(params=["avx512bf16", "avx512", "avx2", "scalar"])
def level(request, native):
    """Each dequantizer: avx512bf16 rounds bfloat16 with vcvtneps2bf16, avx512 in integer steps."""
    yield from _switched(request.param)


def test_every_op_has_a_native_cpu_kernel_where_a_compiler_exists():
    """Fails if the kernels are silently missing: a machine with a C++ compiler and ninja must build them."""
    if build.disabled():
        pytest.skip("HFQ_NO_EXTENSIONS is set")
    if not (shutil.which("c++") and shutil.which("ninja")):
        pytest.skip("no C++ compiler or ninja on PATH")
    assert build.load("cpu"), build.status()
    missing = [o for o in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"hfq::{o}", "CPU")]
    assert not missing, f"no native CPU kernel registered for {missing}"
    assert build.cpu_isa() in LEVELS
    if torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX"):   # torch's own detection, independent
        assert "avx512" in _isas() or "avx2" in _isas()


# ---- dequantize: bit for bit ----

def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN where the other is NaN (signed zeros count as equal, as in torch.equal)."""
    return a.dtype == b.dtype and bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_dequantize_ggml_random_bytes_equals_gguf_py(level, qtype):
    t = TYPES[qtype]
    cols = t.block * (3 if t.block == 256 else 5)
    raw = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (9, cols // t.block * t.type_size), np.uint8))
    ref = ggml_dense(raw, qtype)   # random bytes: also NaN/Inf halves and extreme scales
    assert _same_bits(ops.dequantize_ggml(raw, qtype, cols, torch.float32), ref)
    for dt in (torch.bfloat16, torch.float16):
        assert _same_bits(ops.dequantize_ggml(raw, qtype, cols, dt), ref.to(dt))


@pytest.mark.parametrize("qtype", ["nf4", "fp4"])
@pytest.mark.parametrize("shape,blocksize", [((37, 128), 64), ((5, 100), 64), ((8, 96), 32), ((3, 512), 256)])
def test_dequantize_4bit_equals_bitsandbytes(level, qtype, shape, blocksize):
    g = torch.Generator().manual_seed(1)
    n = shape[0] * shape[1]
    nb = -(-n // blocksize)
    weight = torch.randint(0, 256, (nb, blocksize // 2), generator=g, dtype=torch.uint8)
    absmax = torch.rand(nb, generator=g) * 3
    absmax[0] = 0.0
    absmax[1] = 3e-39                  # float32 subnormal: so are its products, which bfloat16 keeps
    absmax[2] = float("nan")
    absmax[3] = float("inf")           # inf, and NaN where the code is 0
    ref = bnb_dense(weight, absmax, shape, qtype, blocksize)
    for dt in DTYPES:
        got = ops.dequantize_4bit(weight, absmax, codebook(qtype), list(shape), dt)
        assert _same_bits(got, ref.to(dt))


def test_dequantize_double_quant_absmax_equals_bitsandbytes(isa):
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 256, (700,), generator=g, dtype=torch.uint8)
    scale = torch.rand(3, generator=g)
    from bitsandbytes.functional import QuantState, dequantize_blockwise
    ref = dequantize_blockwise(codes, QuantState(absmax=scale, code=codebook("dynamic8"), blocksize=256,
                                                 dtype=torch.float32))
    assert _same_bits(ops.dequantize_8bit_blockwise(codes, scale, codebook("dynamic8"), 256), ref)


def test_avx512bf16_rounds_every_bit_as_avx512_does(native):
    """vcvtneps2bf16 keeps NaN signs and payloads and flushes subnormals; hfq's avx512bf16 level must still give
    the integer rounding's bits (NaN -> 0x7FC0, as c10::BFloat16). NaN here also comes from inf * 0 (x86's default
    NaN is negative) and from NaN scales of either sign."""
    have = _isas()
    if "avx512bf16" not in have:
        pytest.skip("this CPU has no AVX512_BF16")
    g = torch.Generator().manual_seed(9)
    nb = 64
    absmax = torch.rand(nb, generator=g) * 3
    absmax[:6] = torch.tensor([float("inf"), -float("inf"), float("nan"), 3e-39, -3e-39, 0.0])
    absmax[6] = torch.tensor([-0.0]).view(torch.int32).bitwise_or(0x7FC00001).view(torch.float32)   # negative NaN, payload
    weight = torch.randint(0, 256, (nb, 32), generator=g, dtype=torch.uint8)
    weight[:6] = 0x77   # nf4 code 7 is 0.0: inf * 0
    raw = torch.from_numpy(np.random.default_rng(9).integers(0, 256, (16, 4 * 210), np.uint8))
    w4, sc, z = _int_case(4, 32, False, 8, 256, seed=9)
    sc.view(-1)[:3] = torch.tensor([0x7E00, 0xFE00 - 0x10000, 0x7C00], dtype=torch.int16).view(torch.float16)
    calls = [lambda: ops.dequantize_4bit(weight, absmax, codebook("nf4"), [nb, 64], torch.bfloat16),
             lambda: ops.dequantize_ggml(raw, "Q6_K", 4 * 256, torch.bfloat16),
             lambda: ops.dequantize_int(w4, sc, z, 4, torch.bfloat16)]
    before = torch.ops.hfq_cpu.isa()
    try:
        for call in calls:
            torch.ops.hfq_cpu.set_isa("avx512bf16")
            a = call().view(torch.int16)
            torch.ops.hfq_cpu.set_isa("avx512")
            b = call().view(torch.int16)
            assert torch.equal(a, b), (a != b).nonzero()[:5].tolist()
            assert bool(torch.isnan(a.view(torch.bfloat16)).any())
    finally:
        torch.ops.hfq_cpu.set_isa(before)


def _int_case(bits, gs, sym, out_f, in_f, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = 1 if gs == -1 else in_f // gs
    gsz = in_f if gs == -1 else gs
    weight = torch.randint(0, 256, (out_f, G, gsz * bits // 8), generator=g, dtype=torch.uint8)
    scales = (torch.rand(out_f, G, generator=g) * 0.2 - 0.1).half()
    zeros = None if sym else torch.randint(0, 2 ** bits, (out_f, G), generator=g, dtype=torch.uint8)
    return weight, scales, zeros


INT_SHAPES = [(3, 16, 48), (5, 8, 40), (4, 32, 96), (6, 128, 256), (3, -1, 40)]   # (bits, group, in)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_dequantize_int_equals_naive_loop(level, bits, sym):
    for _, gs, in_f in INT_SHAPES:
        if (in_f if gs == -1 else gs) * bits % 8:
            continue
        weight, scales, zeros = _int_case(bits, gs, sym, 3, in_f, seed=bits)
        scales[2, 0] = float("nan")
        ref = int_dense(weight, scales, zeros, bits)
        for dt in DTYPES:
            assert _same_bits(ops.dequantize_int(weight, scales, zeros, bits, dt), ref.to(dt)), (gs, in_f, dt)


def test_dequantize_int_act_order_equals_naive_loop(isa):
    weight, scales, zeros = _int_case(4, 16, False, 3, 64, seed=9)
    g_idx = (torch.randperm(64, generator=torch.Generator().manual_seed(3)) // 16).to(torch.int32)
    ref = int_dense(weight, scales, zeros, 4, g_idx)
    assert _same_bits(ops.dequantize_int(weight, scales, zeros, 4, torch.float32, g_idx), ref)


# ---- linear: within the stated bound ----

def _check_linear(run, w_dense, in_f, rows, dtype, lut_step=None, seed=0, block=(64, 32767), codes_offset=False):
    g = torch.Generator().manual_seed(seed)
    for m in rows:
        x = (torch.randn(m, in_f, generator=g) * torch.logspace(-2, 1, in_f)[torch.randperm(in_f, generator=g)])
        x = x.to(dtype)
        y = run(x)
        assert y.dtype == dtype and y.shape == (m, w_dense.shape[0])
        err = (y.double() - x.double() @ w_dense.double().T).abs()
        bound = linear_bound(w_dense, x, prefill=m > 16, lut_step=lut_step, block=block, codes_offset=codes_offset)
        assert (err <= bound).all(), f"rows {m} {dtype}: worst err/bound {(err / bound).max().item():.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_linear_int_within_bound(isa, dtype, bits):
    for _, gs, in_f in INT_SHAPES + [(4, 64, 192)]:
        if (in_f if gs == -1 else gs) * bits % 8:
            continue
        for sym in (True, False):
            weight, scales, zeros = _int_case(bits, gs, sym, 37, in_f, seed=bits + in_f)
            dense = int_dense(weight, scales, zeros, bits)
            _check_linear(lambda x: ops.linear_int(x, weight, scales, zeros, bits, None), dense, in_f,
                          (1, 3, 6, 17), dtype, block=act_block("int", gs, in_f))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_int4_byte_engine_shapes_within_bound(isa, dtype):
    """int4 rows of whole 128-column units take the byte engines: groups of 32 and 64 (four and two per unit; on
    AVX2 each half unit apart), 128, 256 (x blocks of two units) and per-channel rows that end on half an x block."""
    for gs, in_f in ((32, 256), (64, 256), (128, 384), (256, 512), (-1, 384)):
        for sym in (True, False):
            weight, scales, zeros = _int_case(4, gs, sym, 9, in_f, seed=in_f + gs)
            dense = int_dense(weight, scales, zeros, 4)
            _check_linear(lambda x: ops.linear_int(x, weight, scales, zeros, 4, None), dense, in_f, (1, 3, 6, 17),
                          dtype, block=act_block("int", gs, in_f, bits=4, isa=isa))


@pytest.mark.parametrize("zero", [0, 15, 7])
def test_linear_int4_extremes_within_bound(isa, zero):
    """Every code 15 (or 0) against zero point `zero`, x at its block maximum everywhere: the byte engine's integer
    sums are widest here; with codes equal to the zero point the weight is exactly 0, and so must y be."""
    in_f = 512
    for byte, gs in itertools.product((0xFF, 0x00, zero * 0x11), (128, 64, 32)):
        weight = torch.full((5, in_f // gs, gs // 2), byte, dtype=torch.uint8)
        scales = torch.full((5, in_f // gs), 0.5, dtype=torch.float16)
        zeros = torch.full((5, in_f // gs), zero, dtype=torch.uint8)
        dense = int_dense(weight, scales, zeros, 4)
        for x in (torch.ones(1, in_f), -torch.ones(2, in_f), torch.tensor([1.0, -1.0]).repeat(256).expand(3, -1)):
            y = ops.linear_int(x, weight, scales, zeros, 4, None)
            ref = x.double() @ dense.double().T
            if not dense.any():
                assert (y == 0).all(), (byte, zero)
            bound = linear_bound(dense, x, prefill=False, block=act_block("int", gs, in_f, bits=4, isa=isa))
            assert ((y.double() - ref).abs() <= bound).all(), (byte, zero)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qtype", ["nf4", "fp4"])
@pytest.mark.parametrize("shape,blocksize", [((37, 128), 64), ((5, 100), 64), ((24, 96), 32), ((7, 512), 256)])
def test_linear_4bit_within_bound(isa, dtype, qtype, shape, blocksize):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(*shape, generator=g)
    t = quantize_layer_weight(w, qtype, 4, blocksize, True, False)
    dense = bnb_dense(t["weight"], t["absmax"], shape, qtype, blocksize)
    code = codebook(qtype)
    blk = t["absmax"].repeat_interleave(blocksize)[: shape[0] * shape[1]].reshape(shape)
    step = blk * code.abs().max() * 0.5 / 16383   # nf4/fp4 values are int16 codes in the integer engine
    _check_linear(lambda x: ops.linear_4bit(x, t["weight"], t["absmax"], code, list(shape), None), dense,
                  shape[1], (1, 3, 17), dtype, lut_step=step)


@pytest.fixture(params=["int16", "int8"])
def activations(request, native):
    before = torch.ops.hfq_cpu.activations()
    torch.ops.hfq_cpu.set_activations(request.param)
    yield request.param
    torch.ops.hfq_cpu.set_activations(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_linear_ggml_within_bound(isa, activations, dtype, qtype):
    in_f = 512 if TYPES[qtype].block == 256 else 96   # 96: three 32-blocks, a chunk with one block
    g = torch.Generator().manual_seed(6)
    w = torch.randn(29, in_f, generator=g) * torch.logspace(-3, 1, 29).unsqueeze(1)
    w[3] = 0.0   # an all-zero row: its blocks have zero scales
    q = quantize_rows(w, qtype, None)
    dense = ggml_dense(q, qtype)
    # int8 activations: k-quants on AVX-512 and AVX2, the 32-column types on AVX-512. The byte engines keep codes
    # unsigned (minimums and offsets through sums of x): k-quants on both in both modes.
    int8 = activations == "int8"
    kbytes = qtype.endswith("_K") and isa in ("avx2", "avx512")
    _check_linear(lambda x: ops.linear_ggml(x, q, qtype, in_f, None), dense, in_f, (1, 3, 6, 17), dtype,
                  block=act_block(qtype, in_features=in_f, int8=int8, isa=isa), codes_offset=kbytes)


# Where each GGML type keeps its float16 d (and dmin or m) in a block (ggml's block structs).
_HALVES = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
           "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


@pytest.mark.parametrize("fill", [0xFF, 0x80, 0x7F])
@pytest.mark.parametrize("qtype", sorted(_HALVES))
def test_linear_ggml_extremes_within_bound(isa, activations, qtype, fill):
    """Every code, sub-block scale and minimum at a bit-pattern extreme (Q6_K scales -128 or -1, 6-bit scales 63,
    codes at their maximum) against x whose every element is its block's largest |x|: the integer sums of the
    byte engines reach their widest here and must not wrap."""
    t = TYPES[qtype]
    raw = np.full((5, 1024 // t.block * t.type_size), fill, np.uint8)
    blocks = raw.reshape(5, 1024 // t.block, t.type_size)
    for off in _HALVES[qtype]:
        blocks[..., off:off + 2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    raw = torch.from_numpy(raw)
    dense = ggml_dense(raw, qtype)
    block = act_block(qtype, in_features=1024, int8=activations == "int8", isa=isa)
    for x in (torch.ones(1, 1024), -torch.ones(3, 1024), torch.ones(2, 1024) * torch.tensor([1.0, -1.0]).repeat(512)):
        err = (ops.linear_ggml(x, raw, qtype, 1024, None).double() - x.double() @ dense.double().T).abs()
        bound = linear_bound(dense, x, prefill=False, block=block, codes_offset=qtype.endswith("_K"))
        assert (err <= bound).all(), f"{qtype} fill {fill:#x}: worst err/bound {(err / bound).max().item():.3g}"


def test_activation_modes_are_named_and_checked(native):
    assert torch.ops.hfq_cpu.activations() in ("int16", "int8")
    with pytest.raises(RuntimeError, match="int16, int8"):
        torch.ops.hfq_cpu.set_activations("int4")


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_rows_512_and_bias(native, dtype):
    g = torch.Generator().manual_seed(8)
    w = torch.randn(64, 256, generator=g)
    bias = torch.randn(64, generator=g)
    q = quantize_rows(w, "Q4_K", None)
    dense = ggml_dense(q, "Q4_K")
    x = torch.randn(512, 256, generator=g).to(dtype)
    y = ops.linear_ggml(x, q, "Q4_K", 256, bias)
    ref = x.double() @ dense.double().T + bias.double()
    bound = linear_bound(dense, x, prefill=True) + bias.double().abs() * 2.0 ** -7
    assert ((y.double() - ref).abs() <= bound).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_over_several_tiles(native, dtype):
    """1040 rows of 4096 columns: two tiles (1024 rows in 16-bit, about 2 MB in float32), the last one partial."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(1040, 4096, generator=g)
    q = quantize_rows(w, "Q4_0", None)
    dense = ggml_dense(q, "Q4_0")
    x = torch.randn(17, 4096, generator=g).to(dtype)
    y = ops.linear_ggml(x, q, "Q4_0", 4096, None)
    ref = x.double() @ dense.double().T
    assert ((y.double() - ref).abs() <= linear_bound(dense, x, prefill=True)).all()


def test_non_contiguous_and_3d_inputs(native):
    g = torch.Generator().manual_seed(10)
    t = quantize_layer_weight(torch.randn(40, 128, generator=g), "int", 4, 32, False, False)
    args = (t["weight"], t["scales"], t["zeros"], 4, None)
    base = torch.randn(2, 3, 256, generator=g)
    x = base[..., ::2]                       # strided last dim
    assert not x.is_contiguous()
    y = ops.linear_int(x, *args)
    assert y.shape == (2, 3, 40)
    assert torch.equal(y, ops.linear_int(x.contiguous(), *args))
    xt = torch.randn(128, 3, generator=g).T  # transposed
    assert torch.equal(ops.linear_int(xt, *args), ops.linear_int(xt.contiguous(), *args))
    assert ops.linear_int(torch.randn(0, 128), *args).shape == (0, 40)


def test_extreme_scales_and_special_inputs(native):
    weight, scales, zeros = _int_case(4, 32, True, 4, 64)
    scales[0] = 65504.0                 # largest float16
    scales[1] = 6e-8                    # float16 subnormal
    scales[2] = 0.0
    dense = int_dense(weight, scales, zeros, 4)
    x = torch.randn(2, 64)
    x[1, :32] = 0.0                     # a zero chunk half: activation scale 0
    y = ops.linear_int(x, weight, scales, zeros, 4, None)
    ref = x.double() @ dense.double().T
    assert ((y.double() - ref).abs() <= linear_bound(dense, x, prefill=False)).all()
    assert (y[:, 2] == 0).all()
    x[0, 5] = float("nan")
    assert torch.isnan(ops.linear_int(x, weight, scales, zeros, 4, None)[0]).all()
    q = quantize_rows(torch.randn(3, 256), "Q8_0", None)
    xi = torch.randn(1, 256)
    xi[0, 7] = float("inf")
    assert not torch.isfinite(ops.linear_ggml(xi, q, "Q8_0", 256, None)).any()


def test_bad_arguments_name_the_value(native):
    weight, scales, zeros = _int_case(4, 32, True, 4, 64)
    with pytest.raises(RuntimeError, match="last dim must be 64"):
        ops.linear_int(torch.randn(1, 65), weight, scales, zeros, 4, None)
    with pytest.raises(RuntimeError, match="scales must be float16"):
        ops.linear_int(torch.randn(1, 64), weight, scales.float(), zeros, 4, None)
    q = quantize_rows(torch.randn(2, 256), "Q4_K", None)
    with pytest.raises(RuntimeError, match="does not match its config"):
        ops.linear_ggml(torch.randn(1, 256), q[:, :-1], "Q4_K", 256, None)
    with pytest.raises(RuntimeError, match="instruction set 'sse9' is not available"):
        torch.ops.hfq_cpu.set_isa("sse9")


def test_hfq_cpu_isa_takes_the_best_level_at_or_below_it(native):
    have = _isas()
    if "HFQ_CPU_ISA" not in os.environ:
        assert torch.ops.hfq_cpu.isa() == have[0]   # the best this CPU has
    code = "import torch, hfq; from hfq.kernels import build; assert build.load('cpu'); print(torch.ops.hfq_cpu.isa())"
    for cap in ("avx512", "avx2", "scalar", "sse9"):
        want = next(n for n in LEVELS[LEVELS.index(cap):] if n in have) if cap in LEVELS else have[0]
        r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HFQ_CPU_ISA": cap},
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0 and r.stdout.split()[-1] == want, (cap, want, r.stdout, r.stderr[-3000:])
        assert ("HFQ_CPU_ISA='sse9' is not an instruction set level; allowed: avx512bf16" in r.stderr) == (cap == "sse9")
