"""ggml's quantizers for every GGML block type hfq supports, exact to the byte.

`quantize_rows(w, type, importance)` matches llama.cpp's `ggml_quantize_chunk`: with no importance the
`quantize_row_*_ref` path, with a per-column importance vector (llama.cpp's imatrix) the weighted `*_impl`
path. Q8_0 ignores importance, as ggml does. Work is chunked by rows to bound memory.
"""

from __future__ import annotations

import torch

from ..formats.ggml_layout import PACK, as_blocks, scale_halves
from ..kernels import build, ops
from ..formats.ggml_types import ggml_type
from .ggml_search import (F32, first_absmax, make_q3_quants, make_qkx_quants, make_qp_quants, make_qx_quants,
                          nearest_int, rdiv, sqrtf, roundf, seqsum)

_CHUNK_ELEMS = 1 << 17


def _em(t: torch.Tensor, sub: int) -> torch.Tensor:
    """[nb, QK] -> element-major [sub, nb * QK / sub] (one column per sub-block)."""
    return t.reshape(-1, sub).T.contiguous()


def _unem(t: torch.Tensor, nb: int) -> torch.Tensor:
    return t.T.reshape(nb, -1)


def _pos_max(v: torch.Tensor) -> torch.Tensor:
    """max(0, max over dim 1), as ggml's `if (v > m) m = v` scan starting from 0."""
    m = v.amax(1)
    return torch.where(m > 0, m, torch.zeros_like(m))


def _half(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16)


def _requant(x, d16, dmin16, sc, m, L, sub, lo, hi, signed_offset=0):
    """ggml's final pass: requantize each sub-block with the stored fp16 scale times its integer scale."""
    nb = x.shape[0]
    dl = d16.to(F32).unsqueeze(1) * sc.to(F32)
    xs = x.view(nb, -1, sub)
    if dmin16 is not None:
        dm = dmin16.to(F32).unsqueeze(1) * m.to(F32)
        l = nearest_int((xs + dm.unsqueeze(2)) / dl.unsqueeze(2))
    else:
        l = nearest_int(xs / dl.unsqueeze(2))
    l = l.clamp(lo, hi) + signed_offset
    keep = (dl == 0).unsqueeze(2)
    return torch.where(keep, L.reshape(nb, -1, sub), l).reshape(nb, -1)


def _sigma2(x: torch.Tensor, factor: int) -> torch.Tensor:
    """factor * sum(x^2) / n per block, summed in order ([nb, n] -> [nb, 1])."""
    return (factor * seqsum((x * x).T) / x.shape[1]).unsqueeze(1)


def _q2_k(x, qw):
    nb = x.shape[0]
    xs = _em(x, 16)
    if qw is None:
        scales, mins, L = make_qkx_quants(xs, xs.abs(), 3, -0.5, 0.1, 15, use_mad=True)
        scales, mins = scales.view(nb, 16), mins.view(nb, 16)
        ms, mm = _pos_max(scales), _pos_max(mins)
        ls = torch.where((ms > 0).unsqueeze(1), nearest_int(rdiv(15.0, ms).unsqueeze(1) * scales) & 0xFF, 0)
        lm = torch.where((mm > 0).unsqueeze(1), (nearest_int(rdiv(15.0, mm).unsqueeze(1) * mins) << 4) & 0xFF, 0)
        byte = ls | lm
        d16, dmin16 = _half(ms / 15.0), _half(mm / 15.0)
    else:
        w = qw * sqrtf(_sigma2(x, 1) + x * x)
        we = _em(w, 16)
        sw = seqsum(we)
        scales, mins, L = make_qkx_quants(xs, we, 3, -0.9, 0.05, 36, use_mad=False, qkx3=True)
        swt = sw.view(nb, 16).T
        dm, Ls = make_qp_quants(scales.view(nb, 16).T.contiguous(), 15, swt)
        mm, Lm = make_qp_quants(mins.view(nb, 16).T.contiguous(), 15, swt)
        d16, dmin16 = _half(dm), _half(mm)
        byte = (Ls.T | (Lm.T << 4)) & 0xFF
    q = _requant(x, d16, dmin16, byte & 0xF, byte >> 4, _unem(L, nb), 16, 0, 3)
    return {"d": d16, "dmin": dmin16, "sc": byte & 0xF, "m": byte >> 4, "q": q}


def _q3_k(x, qw):
    nb = x.shape[0]
    xs = _em(x, 16)
    if qw is None:
        scales, L = make_q3_quants(xs, 4)
        scales = scales.view(nb, 16)
        mx = first_absmax(scales.T)
        nz = (mx != 0).unsqueeze(1)
        iscale = rdiv(-32.0, mx)
        sc = torch.where(nz, nearest_int(iscale.unsqueeze(1) * scales).clamp(-32, 31) + 32, 0)
        d16 = torch.where(nz.squeeze(1), _half(rdiv(1.0, iscale)), _half(torch.zeros_like(mx)))
    else:
        w = qw * sqrtf(_sigma2(x, 2) + x * x)
        we = _em(w, 16)
        scales, L = make_qx_quants(xs, 4, we)
        d_block, Ls = make_qx_quants(scales.view(nb, 16).T.contiguous(), 32, seqsum(we).view(nb, 16).T)
        d16, sc = _half(d_block), Ls.T
    q = _requant(x, d16, None, sc - 32, None, _unem(L, nb), 16, -4, 3, 4)
    return {"d": d16, "sc": sc, "q": q}


def _q45_k(x, qw, nmax, ref_search):
    nb = x.shape[0]
    xs = _em(x, 32)
    if qw is None:
        av_x = sqrtf(seqsum(xs * xs) / 32)
        scales, mins, L = make_qkx_quants(xs, av_x + xs.abs(), nmax, *ref_search, use_mad=False)
        scales, mins = scales.view(nb, 8), mins.view(nb, 8)
        ms, mm = _pos_max(scales), _pos_max(mins)
        inv_s = torch.where(ms > 0, rdiv(63.0, ms), 0.0).unsqueeze(1)
        inv_m = torch.where(mm > 0, rdiv(63.0, mm), 0.0).unsqueeze(1)
        ls = (nearest_int(inv_s * scales) & 0xFF).clamp(max=63)
        lm = (nearest_int(inv_m * mins) & 0xFF).clamp(max=63)
        d16, dmin16 = _half(ms / 63.0), _half(mm / 63.0)
    else:
        w = qw * sqrtf(_sigma2(x, 2) + x * x)
        we = _em(w, 32)
        swt = seqsum(we).view(nb, 8).T
        scales, mins, L = make_qkx_quants(xs, we, nmax, -0.9, 0.05, 36, use_mad=False, qkx3=True)
        d_block, ls = make_qp_quants(scales.view(nb, 8).T.contiguous(), 63, swt)
        m_block, lm = make_qp_quants(mins.view(nb, 8).T.contiguous(), 63, swt)
        d16, dmin16, ls, lm = _half(d_block), _half(m_block), ls.T, lm.T
    q = _requant(x, d16, dmin16, ls, lm, _unem(L, nb), 32, 0, nmax)
    return {"d": d16, "dmin": dmin16, "sc": ls, "m": lm, "q": q}


def _q6_k(x, qw):
    nb = x.shape[0]
    scales, L = make_qx_quants(_em(x, 16), 32, None if qw is None else _em(qw, 16))
    scales = scales.view(nb, 16)
    mx = first_absmax(scales.T)
    zero = (mx.abs() < 1e-15).unsqueeze(1)
    iscale = rdiv(-128.0, mx)
    d16 = _half(rdiv(1.0, iscale))
    sc = nearest_int(iscale.unsqueeze(1) * scales).clamp(max=127)
    q = _requant(x, d16, None, sc, None, _unem(L, nb), 16, -32, 31, 32)
    d16 = torch.where(zero.squeeze(1), _half(torch.zeros_like(mx)), d16)
    return {"d": d16, "sc": torch.where(zero, 0, sc), "q": torch.where(zero, 0, q)}


def _legacy_sym(x, qw, nmax, row_sigma2):
    if qw is None:
        mx = first_absmax(x.T)
        d = mx / float(-nmax)
        inv = torch.where(d != 0, rdiv(1.0, d), 0.0).unsqueeze(1)
        q = torch.trunc(x * inv + (nmax + 0.5)).to(torch.int32).clamp(max=2 * nmax - 1)
        return {"d": _half(d), "q": q}
    d, L = make_qx_quants(_em(x, 32), nmax, _em(qw * sqrtf(row_sigma2 + x * x), 32))
    return {"d": _half(d), "q": _unem(L, x.shape[0])}


def _legacy_asym(x, qw, nmax, row_sigma2):
    if qw is None:
        mn = torch.full_like(x[:, 0], torch.finfo(F32).max)
        mx = -mn
        for j in range(x.shape[1]):
            mn = torch.where(x[:, j] < mn, x[:, j], mn)
            mx = torch.where(x[:, j] > mx, x[:, j], mx)
        d = (mx - mn) / float(nmax)
        inv = torch.where(d != 0, rdiv(1.0, d), 0.0).unsqueeze(1)
        q = torch.trunc((x - mn.unsqueeze(1)) * inv + 0.5).to(torch.int32)
        if nmax == 15:   # Q4_1 clamps to 15; Q5_1's reference does not, and the packing drops bit 5
            q = q.clamp(max=15)
        return {"d": _half(d), "m": _half(mn), "q": q & 0x1F}
    w = qw * sqrtf(row_sigma2 + x * x)
    scale, the_min, L = make_qkx_quants(_em(x, 32), _em(w, 32), nmax, -0.9, 0.05, 36, use_mad=False, qkx3=True)
    return {"d": _half(scale), "m": _half(-the_min), "q": _unem(L, x.shape[0])}


def _q8_0(x, qw):
    amax = x.abs().amax(1)
    d = amax / 127.0
    inv = torch.where(d != 0, rdiv(1.0, d), 0.0).unsqueeze(1)
    return {"d": _half(d), "q": roundf(x * inv).to(torch.int8)}


def _encode(name, x, qw, row_sigma2):
    if name == "Q2_K":
        return _q2_k(x, qw)
    if name == "Q3_K":
        return _q3_k(x, qw)
    if name == "Q4_K":
        return _q45_k(x, qw, 15, (-1.0, 0.1, 20))
    if name == "Q5_K":
        return _q45_k(x, qw, 31, (-0.5, 0.1, 15))
    if name == "Q6_K":
        return _q6_k(x, qw)
    if name == "Q4_0":
        return _legacy_sym(x, qw, 8, row_sigma2)
    if name == "Q5_0":
        return _legacy_sym(x, qw, 16, row_sigma2)
    if name == "Q4_1":
        return _legacy_asym(x, qw, 15, row_sigma2)
    if name == "Q5_1":
        return _legacy_asym(x, qw, 31, row_sigma2)
    return _q8_0(x, qw)


def quantize_rows(w: torch.Tensor, type_name: str, importance: torch.Tensor | None = None) -> torch.Tensor:
    """float [rows, cols] -> uint8 [rows, row_bytes] in GGML `type_name` blocks, as llama.cpp writes them.

    Runs torch.ops.hfq.quantize_ggml: the native CPU kernel when it is built (hfq.kernels.build), else the
    pure-torch reference below. Both are byte-exact against llama.cpp."""
    t = ggml_type(type_name)
    if t.block == 1:
        raise ValueError(f"{t.name} is not a block type; store it as a plain tensor.")
    if w.dim() != 2:
        raise ValueError(f"quantize_rows expects a 2-D weight, got shape {tuple(w.shape)}.")
    rows, cols = w.shape
    if cols % t.block:
        raise ValueError(
            f"row length {cols} is not a multiple of the {t.name} block size {t.block}; pick a type with a "
            "smaller block (the GGUF mixes fall back automatically) or keep this layer in float."
        )
    if importance is not None:
        importance = importance.detach().to(device=w.device, dtype=F32).reshape(-1)
        if importance.numel() != cols:
            raise ValueError(f"importance has {importance.numel()} entries; the weight has {cols} columns.")
        if t.name == "Q8_0":
            importance = None
    w = w.detach().to(F32)
    if not torch.isfinite(w.sum()) and not torch.isfinite(w).all():   # one cheap pass; exact check if needed
        bad = torch.nonzero(~torch.isfinite(w).all(1))[:3].flatten().tolist()
        raise ValueError(f"the weight has non-finite values (rows {bad}...); GGML blocks cannot hold them "
                         "(llama.cpp rejects such files). Fix the checkpoint first.")
    if w.device.type == "cpu":
        build.load("cpu")
    out = ops.op("quantize_ggml")(w, t.name, importance)
    _check_scales(out, t.name, w)
    return out


def _check_scales(out: torch.Tensor, name: str, w: torch.Tensor) -> None:
    """llama.cpp refuses blocks whose float16 scales overflowed; so does hfq, naming the cause."""
    for half in scale_halves(as_blocks(out, name), name):
        if not torch.isfinite(half).all():
            raise ValueError(f"weights up to {w.abs().max().item():.3g} overflow the float16 scales of {name} "
                             "(max 65504); llama.cpp rejects such blocks. Use Q8_0 for this layer or rescale it.")


@ops.register_default("quantize_ggml")
def quantize_rows_reference(w: torch.Tensor, type_name: str, importance: torch.Tensor | None) -> torch.Tensor:
    """The pure-torch body of hfq::quantize_ggml (the spec the native kernel must match)."""
    t = ggml_type(type_name)
    rows, cols = w.shape
    out = torch.empty(rows, cols // t.block * t.type_size, dtype=torch.uint8, device=w.device)
    step = max(1, _CHUNK_ELEMS // cols)
    for r0 in range(0, rows, step):
        x = w[r0:r0 + step].to(F32)
        nr = x.shape[0]
        qw = None if importance is None else importance.expand(nr, cols).reshape(-1, t.block)
        row_sigma2 = None
        if importance is not None and t.block == 32:   # legacy impls weight by the whole row's mean square
            row_sigma2 = (seqsum((x * x).T) / cols).repeat_interleave(cols // 32).unsqueeze(1)
        out[r0:r0 + nr] = PACK[t.name](_encode(t.name, x.reshape(-1, t.block), qw, row_sigma2)).view(nr, -1)
    return out
