"""ggml's scale searches (ggml-quants.c), vectorized over blocks and exact to the bit.

Every function takes element-major tensors: x[i] is element i of every block, shape [n, B]. Blocks are
independent columns; the loops run over the n elements of one block because ggml accumulates sums sequentially
in float32 and a tree reduction changes the last bit often enough to flip the search's decisions. All math is
float32, with the same association as the C source ((w*x)*l, not w*(x*l)) and no fused multiply-add.
"""

from __future__ import annotations

import numpy as np
import torch

F32 = torch.float32
I32 = torch.int32
GROUP_MAX_EPS = 1e-15


def f32(v: float) -> float:
    """A Python float holding exactly the float32 value C would compute for this constant."""
    return float(np.float32(v))


def nearest_int(v: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int: add 1.5*2**23 in float32 and read the mantissa (round half to even)."""
    return ((v + 12582912.0).view(I32) & 0x007FFFFF) - 0x00400000


def roundf(v: torch.Tensor) -> torch.Tensor:
    """C roundf (half away from zero), without the floor(a + 0.5) double rounding."""
    a = v.abs()
    fl = torch.floor(a)
    return torch.copysign(fl + torch.floor(2 * (a - fl)), v)


def sqrtf(t: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt (torch's vectorized float sqrt can be 1 ulp off; double then round is exact)."""
    return torch.sqrt(t.double()).to(F32)


def rdiv(c: float, t: torch.Tensor) -> torch.Tensor:
    """c / t as one IEEE division. (`float / tensor` in torch is reciprocal(t) * c: two roundings.)"""
    return torch.full_like(t, c) / t


def seqsum(t: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0 in index order, starting from +0.0, as `float s = 0; for (...) s += t[i];`."""
    acc = torch.zeros_like(t[0])
    for i in range(t.shape[0]):
        acc = acc + t[i]
    return acc


def first_absmax(x: torch.Tensor) -> torch.Tensor:
    """The signed element with the largest |x|, the first one on ties (ggml's strict `>` scan)."""
    idx = x.abs().argmax(0, keepdim=True)
    return x.gather(0, idx).squeeze(0)


def make_qx_quants(x: torch.Tensor, nmax: int, qw: torch.Tensor | None = None):
    """Symmetric levels in [-nmax, nmax-1] with a weighted RMSE search (rmse_type 1). Returns (scale, L+nmax)."""
    mx = first_absmax(x)
    zero = mx.abs() < GROUP_MAX_EPS
    w = qw if qw is not None else x * x
    wx = w * x

    def trial(iscale):
        l = nearest_int(iscale * x).clamp(-nmax, nmax - 1)
        lf = l.to(F32)
        s = seqsum(torch.stack([wx * lf, (w * lf) * lf], 1))
        return l, s[0], s[1]

    L, sumlx, suml2 = trial(rdiv(-float(nmax), mx))
    scale = torch.where(suml2 != 0, sumlx / suml2, torch.zeros_like(sumlx))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        c = f32(f32(nmax) + f32(f32(0.1) * step))
        l, slx, sl2 = trial(rdiv(-c, mx))
        take = (sl2 > 0) & (slx * slx > best * sl2)
        L = torch.where(take, l, L)
        scale = torch.where(take, slx / sl2, scale)
        best = torch.where(take, scale * slx, best)
    L = torch.where(zero, torch.full_like(L, -nmax), L) + nmax
    return torch.where(zero, torch.zeros_like(scale), scale), L


def _descend(x, w, wx, L, sumlx, suml2, lo, hi, q3: bool):
    """ggml's coordinate descent: move one level at a time while the weighted fit improves (up to 5 passes).

    q3 (make_q3_quants) requires the new sum of w*l^2 to stay positive; make_qp_quants instead requires the
    old one to be positive before trying."""
    for _ in range(5):
        changed_any = False
        for i in range(x.shape[0]):
            li = L[i].to(F32)
            slx = sumlx - wx[i] * li
            sl2 = suml2 - (w[i] * li) * li
            new = nearest_int((x[i] * sl2) / slx).clamp(lo, hi)
            nf = new.to(F32)
            slx2 = slx + wx[i] * nf
            sl22 = sl2 + (w[i] * nf) * nf
            ok = (sl22 > 0) if q3 else (sl2 > 0)
            take = (slx > 0) & ok & (new != L[i]) & ((slx2 * slx2) * suml2 > (sumlx * sumlx) * sl22)
            L[i] = torch.where(take, new, L[i])
            sumlx = torch.where(take, slx2, sumlx)
            suml2 = torch.where(take, sl22, suml2)
            changed_any = changed_any or bool(take.any())
        if not changed_any:   # a pass without changes would repeat itself exactly
            break
    return L, sumlx, suml2


def make_q3_quants(x: torch.Tensor, nmax: int):
    """Q3_K's search: symmetric start, then coordinate descent on each level. Returns (scale, L+nmax)."""
    mx = first_absmax(x)
    zero = mx.abs() < GROUP_MAX_EPS
    L = nearest_int((rdiv(-float(nmax), mx)) * x).clamp(-nmax, nmax - 1)
    w = x * x
    wx = w * x
    lf = L.to(F32)
    s = seqsum(torch.stack([wx * lf, (w * lf) * lf], 1))
    L, sumlx, suml2 = _descend(x, w, wx, L, s[0], s[1], -nmax, nmax - 1, q3=True)
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    L = torch.where(zero, torch.full_like(L, -nmax), L) + nmax
    return torch.where(zero, torch.zeros_like(scale), scale), L


def make_qkx_quants(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int,
                    use_mad: bool, qkx3: bool = False):
    """Scale-and-min search (make_qkx2_quants; make_qkx3_quants when qkx3). Returns (scale, the_min, L).

    the_min is the non-negative offset subtracted on dequantization: x ~ scale * L - the_min.
    """
    n = x.shape[0]
    mn = x[0].clone()
    mx = x[0].clone()
    sum_w = w[0].clone()
    sum_x = sum_w * x[0]
    for i in range(1, n):
        mn = torch.where(x[i] < mn, x[i], mn)
        mx = torch.where(x[i] > mx, x[i], mx)
        sum_w = sum_w + w[i]
        sum_x = sum_x + w[i] * x[i]
    mn = torch.where(mn > 0, torch.zeros_like(mn), mn)
    mn0 = mn
    degenerate = (mx <= mn) if qkx3 else (mx == mn)

    def error(scale, the_min, L):
        diff = (scale * L.to(F32) + the_min) - x
        return seqsum(w * (diff.abs() if use_mad else diff * diff))

    iscale = rdiv(float(nmax), mx - mn)
    scale = rdiv(1.0, iscale)
    L = nearest_int(iscale * (x - mn)).clamp(0, nmax)
    best = error(scale, mn, L)
    for step in range(nstep + 1):
        c = f32(f32(f32(rmin) + f32(f32(rdelta) * step)) + nmax)
        la = nearest_int(rdiv(c, mx - mn) * (x - mn)).clamp(0, nmax)
        lf = la.to(F32)
        wl = w * lf
        s = seqsum(torch.stack([wl, wl * lf, wl * x], 1))
        sum_l, sum_l2, sum_xl = s[0], s[1], s[2]
        D = sum_w * sum_l2 - sum_l * sum_l
        ts = (sum_w * sum_xl - sum_x * sum_l) / D
        tm = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = tm > 0
        tm = torch.where(pos, torch.zeros_like(tm), tm)
        ts = torch.where(pos, sum_xl / sum_l2, ts)
        cur = error(ts, tm, la)
        take = (D > 0) & (cur < best)
        L = torch.where(take, la, L)
        best = torch.where(take, cur, best)
        scale = torch.where(take, ts, scale)
        mn = torch.where(take, tm, mn)
    L = torch.where(degenerate, torch.zeros_like(L), L)
    scale = torch.where(degenerate, torch.zeros_like(scale), scale)
    return scale, -torch.where(degenerate, mn0, mn), L


def make_qp_quants(x: torch.Tensor, nmax: int, qw: torch.Tensor):
    """Quantize non-negative values (sub-block scales or mins) to 0..nmax with weights qw. Returns (scale, L)."""
    mx = torch.zeros_like(x[0])
    for i in range(x.shape[0]):
        mx = torch.where(mx > x[i], mx, x[i])
    zero = mx < GROUP_MAX_EPS
    wx = qw * x

    def mse(scale, l):
        diff = x - scale * l.to(F32)
        return seqsum((qw * diff) * diff)

    iscale = rdiv(float(nmax), mx)
    best = mse(rdiv(1.0, iscale), nearest_int(iscale * x) & 0xFF)   # L is uint8 in ggml
    for step in range(-4, 5):
        if step == 0:
            continue
        isc = rdiv(f32(f32(f32(0.1) * step) + nmax), mx)
        err = mse(rdiv(1.0, isc), nearest_int(isc * x).clamp(max=nmax))
        take = err < best
        best = torch.where(take, err, best)
        iscale = torch.where(take, isc, iscale)
    L = nearest_int(iscale * x).clamp(max=nmax)
    lf = L.to(F32)
    s = seqsum(torch.stack([wx * lf, (qw * lf) * lf], 1))
    sumlx, suml2 = s[0], s[1]
    L = L & 0xFF   # stored as uint8 in ggml; the sums above used the int
    L, sumlx, suml2 = _descend(x, qw, wx, L, sumlx, suml2, None, nmax, q3=False)
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    return torch.where(zero, torch.zeros_like(scale), scale), torch.where(zero, torch.zeros_like(L), L)
