"""ℓ0-constrained ADMM for one layer (the splitting of ALPS, Meng et al. 2024): a candidate on the pattern.

The layer objective without penalty, ``H (d_in, d_in)``, ``G, W (d_out, d_in)``::

    min_W  ½ tr(W H Wᵀ) − ⟨G, W⟩      s.t.  W on the sparsity pattern

is solved in Jacobi-scaled coordinates ``V = W S`` (``S = diag √H_jj``, so ``H̃ = S⁻¹HS⁻¹``
has a unit diagonal and ``G̃ = G S⁻¹``), where the pattern's projection ``P`` (the largest
``|V_ij| = |W_ij|·√H_jj`` per row, per N:M group or per layer) is the rounding of the ℓ1
rounds.  Splitting ``V = D`` with ``D`` on the pattern and the scaled dual ``U``::

    V ← (G̃ + ρ (D − U)) (H̃ + ρI)⁻¹      one eigendecomposition H̃ = QΛQᵀ serves every ρ
    D ← P(V + U)
    U ← U + V − D

Each iteration costs two products ``(d_out, d_in) × (d_in, d_in)`` and one projection;
with ``precision="bf16"`` the products run in bfloat16 (their results rounded to it, the
rest of the iteration in ``start``'s dtype).  The layer prune runs IEEE unless asked
(:attr:`~fistaopt.layer.LayerOptions.l0_precision`); either way the candidate is refit in
IEEE and kept per row only where it beats the best so far, so the products' rounding can
cost a row its improvement, never its start.
``ρ`` starts small (``V`` near the least-squares weight, ``D`` its projection) and grows
after every ``update_every`` iterations by a factor set by how much of the support moved
(ALPS's rule: ×1.3 when at least 10% of the kept entries changed, ×1.2 above 0.5%, ×1.1
while any did), pulling ``V`` onto the pattern; a row stops (its ``D`` kept) once at least
``min_iter`` iterations ran and less than ``stop_change`` of its kept entries moved in the
last update, and the loop once every row stopped or after ``max_iter``.  For row-local
patterns (per row, N:M) ρ, its updates and the stop are per row, so a row's result does not
depend on the others (ranks that split the rows prune as one process); the layer-scope
pattern, whose projection couples the rows, shares one ρ.

The problem is non-convex: the result is a candidate, which the layer prune refits on its
support and keeps per row only where it beats the others (:mod:`fistaopt.layer.prune`).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.solvers.prox import PRECISIONS, matmul_precision
from fistaopt.sparsity import Pattern, pattern_mask

_local = threading.local()


@dataclass
class L0Admm:
    """The result of :func:`l0_admm`.

    Attributes:
        W: weights on the pattern ``(d_out, d_in)`` (the projection ``D``, unscaled).
        mask: bool ``(d_out, d_in)``, its support (True = kept).
        iterations: ADMM iterations run.
        rho: the largest final ρ of a row (scaled coordinates, where ``H̃`` has a unit diagonal).
        support_change: the largest fraction of a row's kept entries that moved in its last update.
    """

    W: torch.Tensor
    mask: torch.Tensor
    iterations: int
    rho: float
    support_change: float


@contextmanager
def shared_eigh() -> Iterator[None]:
    """Within: :func:`scaled_eigh` keeps its last decomposition and reuses it for an equal ``H``.

    The operators that read one input (LLaMA's q, k, v; gate and up) have the same ``H``: the
    model prune enters this once per operator group (``fistaopt/llm/block.py``).  One entry per
    thread, dropped on leaving, so no ``H``-sized matrix outlives the group.
    """
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1
        if _local.depth == 0:
            _local.last = None


def scaled_eigh(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(s, Λ, Q)``: the column scale ``s = √diag(H)`` and ``S⁻¹HS⁻¹ = Q diag(Λ) Qᵀ`` (``Λ ≥ 0``).

    Inside :func:`shared_eigh` the last decomposition is reused when ``H`` is equal to its
    input (an exact comparison).
    """
    sharing = getattr(_local, "depth", 0) > 0
    last = getattr(_local, "last", None) if sharing else None
    if last is not None and last[0].shape == H.shape and last[0].dtype == H.dtype \
            and last[0].device == H.device and torch.equal(last[0], H):
        return last[1], last[2], last[3]
    s = torch.sqrt(torch.diagonal(H).clamp_min(0))
    s = torch.where(s > 0, s, torch.ones_like(s))
    lam, Q = torch.linalg.eigh(H / s[:, None] / s[None, :])
    lam = lam.clamp_min(0)
    if sharing:
        _local.last = (H.clone(), s, lam, Q)
    return s, lam, Q


def l0_admm(
    problem: LassoProblem,
    start: torch.Tensor,
    pattern: Pattern,
    *,
    rho: float = 0.1,
    max_iter: int = 300,
    min_iter: int = 30,
    update_every: int = 3,
    stop_change: float = 3e-4,
    precision: str = "fp32",
) -> L0Admm:
    """ℓ0-constrained ADMM on ``problem``'s quadratic (its ``lam`` ignored), from ``start``.

    The defaults are ALPS's cadence (ρ updated every 3 iterations, at least 30); the layer
    prune passes its own (:class:`~fistaopt.layer.LayerOptions`: every iteration, at least 6).

    Args:
        problem: the layer problem (``H``, ``G``; damping already in it).
        start: ``(d_out, d_in)`` weights on the pattern: ``D`` at the start (``U = 0``).
        pattern: the sparsity pattern ``D`` is projected on.
        rho: the first ρ, relative to the unit diagonal of ``H̃``.
        max_iter, min_iter: iteration bounds.
        update_every: iterations between ρ updates (and support checks).
        stop_change: stop when fewer than this fraction of the kept entries moved since the
            last update (after ``min_iter``).
        precision: the two products of an iteration: ``"fp32"`` (IEEE, in ``start``'s dtype),
            ``"tf32"`` (TF32 on CUDA, IEEE elsewhere) or ``"bf16"`` (bfloat16 operands and
            results; module docstring).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    s, lam, Q = scaled_eigh(problem.H)
    dtype = start.dtype
    s, lam, Q = s.to(dtype), lam.to(dtype), Q.to(dtype)
    d_out = start.shape[0]
    # the result, written row by row as rows stop
    D_out = start * s[None, :]
    mask_out = D_out != 0
    rho_out = torch.full((d_out, 1), float(rho), dtype=dtype, device=D_out.device)
    change_out = torch.zeros(d_out, dtype=dtype, device=D_out.device)
    # ρ, its updates and the stop are per row for row-local patterns (so a row's result does not
    # depend on the other rows: ranks that split the rows prune as one process), shared by all
    # rows for the layer-scope pattern, whose projection couples them
    coupled = pattern.scope == "layer"
    # the running rows: their indices in the layer and their state; compacted when rows stop,
    # so every iteration works in place on buffers of the running rows only
    rows = torch.arange(d_out, device=D_out.device)
    G_Q = (problem.G.to(dtype) / s[None, :]) @ Q  # G̃ Q, fixed
    D, U, rho_t = D_out.clone(), torch.zeros_like(D_out), rho_out.clone()
    checked = mask = mask_out
    kept = mask_out.sum(1).to(dtype).clamp_min(1.0)
    change = change_out
    V, Z, tmp = torch.empty_like(D), torch.empty_like(D), torch.empty_like(D)
    if precision == "bf16":  # the products in bfloat16, their results back in dtype
        Q_lo, QT_lo = Q.to(torch.bfloat16), Q.T.to(torch.bfloat16).contiguous()

        def rotate(A: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # A Q
            return out.copy_(torch.mm(A.to(torch.bfloat16), Q_lo))

        def rotate_back_onto(B: torch.Tensor, A: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # B + A Qᵀ
            return torch.add(B, torch.mm(A.to(torch.bfloat16), QT_lo), out=out)
    else:
        def rotate(A: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            return torch.mm(A, Q, out=out)

        def rotate_back_onto(B: torch.Tensor, A: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            return torch.addmm(B, A, Q.T, out=out)
    t = 0
    with matmul_precision(precision, D.device):
        for t in range(1, max_iter + 1):
            rotate(torch.sub(D, U, out=tmp), V)
            V.mul_(rho_t).add_(G_Q).div_(torch.add(lam[None, :], rho_t, out=tmp))  # in the eigenbasis
            rotate_back_onto(U, V, Z)  # Z = V + U
            mask = pattern_mask(torch.abs(Z, out=tmp), pattern)
            torch.mul(Z, mask, out=D)
            torch.sub(Z, D, out=U)  # U + V − D
            if t % update_every:
                continue
            moved = (mask ^ checked).sum(1).to(dtype)
            change = (moved.sum() / kept.sum()).expand(len(rows)) if coupled else moved / kept
            checked = mask
            factor = torch.where(change >= 0.1, 1.3, torch.where(change >= 0.005, 1.2, torch.where(change > 0, 1.1, 1.0)))
            rho_t = rho_t * factor[:, None].to(dtype)
            if t < min_iter:
                continue
            done = change < stop_change
            if not bool(done.any()):
                continue
            stopped = rows[done]
            D_out[stopped], mask_out[stopped], rho_out[stopped], change_out[stopped] = (
                D[done], mask[done], rho_t[done], change[done])
            running = ~done
            if not bool(running.any()):
                break
            rows, D, U, G_Q, rho_t = rows[running], D[running], U[running], G_Q[running], rho_t[running]
            checked, mask, kept, change = checked[running], mask[running], kept[running], change[running]
            V, Z, tmp = torch.empty_like(D), torch.empty_like(D), torch.empty_like(D)
        else:  # max_iter reached: the running rows keep their last projection
            D_out[rows], mask_out[rows], rho_out[rows], change_out[rows] = D, mask, rho_t, change
    return L0Admm(W=D_out / s[None, :], mask=mask_out, iterations=t, rho=float(rho_out.max()),
                  support_change=float(change_out.max()))
