"""GPTQ (Frantar et al., 2023): round the columns of W one at a time (or one GGML block at a time) and push
each rounding error onto the columns not yet rounded, weighted by the inverse Hessian of the layer's inputs.

Notation: H = 2/n sum x x^T over the calibration tokens; U is the upper Cholesky factor of H^-1 (H^-1 = U^T U).
After the first p columns are fixed, the inverse Hessian of the remaining columns F is U_FF^T U_FF, so:
- one column i:   err = (w_i - q_i) / U_ii,            W_F -= err U_{i,F}
- a block B:      err = (W_B - Q_B) U_BB^-1,           W_F -= err U_{B,F}   (exact block OBS update)
Lazy batches apply the updates to columns past the current batch of 128 once per batch (same result).

GGML blocks: ggml's k-quant scale search spans a whole block of 32 or 256 columns, so a block is rounded at once
by hfq's byte-exact encoder and its error is distributed as above. The encoder's importance vector is the diagonal
of the block's effective Hessian, diag((U_BB^T U_BB)^-1): the Hessian of the block once every later column is
free to compensate (for the last block it is diag(H_BB) = 2 mean x^2, llama.cpp's imatrix up to scale).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch

from .grids import decode

logger = logging.getLogger(__name__)

BLOCK_SIZE = 128
DAMP_STEPS = 3          # percdamp, x10, x100 before falling back to round-to-nearest
# damp_percent when none is given, by calibration tokens per input column of the layer (tokens / in_features):
# (below this ratio, dampening). Chosen from benchmarks/calibration_sweep.py; table in docs/gptq-awq.md.
AUTO_DAMP = ((AUTO_DAMP_RATIO := 64, 0.1), (float("inf"), 0.01))


def auto_damp(tokens: int, width: int) -> float:
    """The dampening hfq uses for a layer of `width` input columns calibrated on `tokens` tokens: with few tokens
    per column H is poorly estimated (rank <= tokens) and stronger dampening keeps GPTQ from overfitting it."""
    ratio = tokens / max(width, 1)
    return next(d for limit, d in AUTO_DAMP if ratio < limit)


class Hessian:
    """Running H = 2/n sum x x^T over every token row seen (GPTQ's running average)."""

    def __init__(self, in_features: int, device=None):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        m = x.shape[0]
        self.H *= self.n / (self.n + m)
        self.n += m
        x = x * (2.0 / self.n) ** 0.5
        self.H += x.T @ x


@dataclass
class GPTQResult:
    tensors: dict[str, torch.Tensor]      # layout tensors (hfq.formats.layouts)
    weight: torch.Tensor                  # the dequantized weight [out, in], float32
    loss: float                           # sum of (W - Q) H (W - Q)^T / 2 estimate, as in the paper's code
    damp: float | None                    # dampening used; None when the layer fell back to RTN
    info: dict = field(default_factory=dict)


def inverse_cholesky(H: torch.Tensor, damp: float, name: str = "") -> tuple[torch.Tensor | None, float]:
    """Upper Cholesky factor of (H + damp*mean(diag H) I)^-1, raising damp x10 up to DAMP_STEPS times."""
    mean = torch.diag(H).mean()
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for k in range(DAMP_STEPS):
        pct = damp * 10**k
        if torch.isfinite(mean) and mean > 0:
            L, info = torch.linalg.cholesky_ex(H + pct * mean * eye)
            if info == 0:
                U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
                if info == 0 and torch.isfinite(U).all():
                    return U, pct
        logger.warning("gptq %s: Hessian is not positive definite with damp_percent=%g%s", name, pct,
                       "; raising dampening" if k + 1 < DAMP_STEPS else "")
    return None, damp


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, grid, damp: float = 0.01, desc_act: bool = False,
                  static_groups: bool = False, block_size: int = BLOCK_SIZE, name: str = "",
                  group_aware: bool = False) -> GPTQResult:
    """GPTQ on one weight W [out, in] with Hessian H [in, in] onto `grid` (hfq.algorithms.grids).

    Computes in H's dtype (float32 normally). desc_act processes columns by decreasing H_ii; with group grids the
    groups then follow that order and g_idx (int32 [in]) maps each column to its group, unless static_groups,
    where group parameters come from the original weight's contiguous groups before any update. group_aware (GAR):
    groups in decreasing order of their largest H_ii, columns within each group likewise; groups stay contiguous,
    so their parameters come from the group's current weights when its first column is reached and no g_idx is
    stored."""
    # One CPU thread: the per-column ops are tiny and thread hand-offs cost more than the work (measured 30x
    # slower with 2 threads on 2 busy cores); the Cholesky of a 2048-column Hessian takes 0.4 s on one.
    with _one_thread():
        return _gptq(W, H, grid, damp, desc_act, static_groups, block_size, name, group_aware)


@torch.no_grad()
def _gptq(W: torch.Tensor, H: torch.Tensor, grid, damp: float, desc_act: bool, static_groups: bool,
          block_size: int, name: str, group_aware: bool = False) -> GPTQResult:
    """The body of gptq_quantize."""
    dt = H.dtype if H.dtype == torch.float64 else torch.float32
    W0 = W
    W = W.detach().to(dt).clone()
    H = H.detach().to(dt).clone()
    out_f, n = W.shape
    if H.shape != (n, n):
        raise ValueError(f"Hessian of {name or 'layer'} is {tuple(H.shape)}; the weight has {n} input columns.")
    gs = grid.group(n)
    s = grid.step
    if desc_act and s > 1:
        raise ValueError("desc_act=True cannot reorder GGML blocks (a block is 32 or 256 contiguous columns); "
                         "use desc_act=False with quant_type.")
    if desc_act and gs is not None and not static_groups and grid.layout != "int":
        raise ValueError(f"desc_act=True with {grid.layout} needs static_groups=True (its layout has no g_idx).")
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    static = [grid.params(W[:, g0:g0 + gs]) for g0 in range(0, n, gs)] if (gs and static_groups) else None
    if group_aware and (desc_act or s > 1 or not gs or static_groups):
        raise ValueError("group_aware needs a group grid without desc_act or static_groups (not GGML blocks).")
    perm = torch.argsort(torch.diag(H), descending=True) if desc_act else None
    gorder = None
    if group_aware:
        d = torch.diag(H).reshape(n // gs, gs)
        inner = torch.argsort(d, dim=1, descending=True, stable=True)
        gorder = torch.argsort(d.amax(1), descending=True, stable=True)
        perm = (inner + torch.arange(0, n, gs, device=d.device)[:, None])[gorder].reshape(-1)
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    U, used = inverse_cholesky(H, damp, name)
    if U is None:
        logger.warning("gptq %s: falling back to round-to-nearest for this layer (no error feedback). Check its "
                       "calibration activations for inf/NaN or give more calibration windows.", name)
        tensors = grid.rtn(W0.float())
        return GPTQResult(tensors, decode(grid, tensors, *W0.shape), float("nan"), None, {"fallback": "rtn"})
    bs = max(block_size, s)
    if gs and gs < bs and bs % gs:
        bs = gs
    codes = torch.zeros(out_f, n, dtype=torch.uint8, device=W.device) if s == 1 else None
    chunks, params, loss = [], [], torch.zeros((), dtype=dt, device=W.device)
    Qall = torch.zeros_like(W)
    p = None
    for i1 in range(0, n, bs):
        i2 = min(i1 + bs, n)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(0, i2 - i1, s):
            pos = i1 + i
            if s == 1:
                if static is not None:
                    col = pos if perm is None else int(perm[pos])
                    p = static[col // gs]
                elif pos % gs == 0:
                    # columns of the group past this batch have every update of earlier batches already
                    src = W1[:, i:i + gs] if i + gs <= i2 - i1 else W[:, pos:pos + gs]
                    p = grid.params(src)
                    params.append(p)
                q, c = grid.quantize(W1[:, i:i + 1], p)
                codes[:, pos] = c[:, 0]
                err = (W1[:, i:i + 1] - q) / U1[i, i]
                W1[:, i + 1:] -= err @ U1[i:i + 1, i + 1:]
            else:
                Ub = U1[i:i + s, i:i + s]
                Ubinv = torch.linalg.solve_triangular(Ub, torch.eye(s, dtype=dt, device=W.device), upper=True)
                imp = (Ubinv * Ubinv).sum(1)
                q, data = grid.quantize_block(W1[:, i:i + s], imp)
                chunks.append(data)
                err = (W1[:, i:i + s] - q) @ Ubinv
                W1[:, i + s:] -= err @ U1[i:i + s, i + s:]
            Qall[:, pos:pos + s] = q
            E1[:, i:i + s] = err
            loss += (err * err).sum() / 2
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    g_idx = None
    if perm is not None:
        inv = torch.argsort(perm)
        Qall, codes = Qall[:, inv], codes[:, inv]
        if static is None and gs and gorder is None:
            g_idx = (inv // gs).to(torch.int32)
    if static is not None:
        params = static
    if gorder is not None:      # params were made in processing order; the layout wants original group order
        params = [params[k] for k in torch.argsort(gorder).tolist()]
    tensors = grid.encode(chunks) if s > 1 else grid.encode(codes, params, g_idx)
    return GPTQResult(tensors, Qall.float(), float(loss), used, {})


@contextlib.contextmanager
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)

