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

Each iteration costs two products ``(d_out, d_in) × (d_in, d_in)`` and one projection.
``ρ`` starts small (``V`` near the least-squares weight, ``D`` its projection) and grows
after every ``update_every`` iterations by a factor set by how much of the support moved
(ALPS's rule: ×1.3 when at least 10% of the kept entries changed, ×1.2 above 0.5%, ×1.1
while any did), pulling ``V`` onto the pattern; the loop stops once at least ``min_iter``
iterations ran and less than ``stop_change`` of the kept entries moved in the last update,
or after ``max_iter``.  The problem is non-convex: the result is a candidate, which the layer
prune refits on its support and keeps per row only where it beats the others
(:mod:`fistaopt.layer.prune`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.sparsity import Pattern, project

_local = threading.local()


@dataclass
class L0Admm:
    """The result of :func:`l0_admm`.

    Attributes:
        W: weights on the pattern ``(d_out, d_in)`` (the projection ``D``, unscaled).
        mask: bool ``(d_out, d_in)``, its support (True = kept).
        iterations: ADMM iterations run.
        rho: the final ρ (in the scaled coordinates, where ``H̃`` has a unit diagonal).
        support_change: fraction of the kept entries that moved in the last ρ update.
    """

    W: torch.Tensor
    mask: torch.Tensor
    iterations: int
    rho: float
    support_change: float


def scaled_eigh(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(s, Λ, Q)``: the column scale ``s = √diag(H)`` and ``S⁻¹HS⁻¹ = Q diag(Λ) Qᵀ`` (``Λ ≥ 0``).

    The operators that read one input (LLaMA's q, k, v; gate and up) have the same ``H``:
    the last decomposition is kept per thread and reused when ``H`` is equal to its input
    (an exact comparison; one entry, so the memory held is one ``H`` and one ``Q``).
    """
    last = getattr(_local, "last", None)
    if last is not None and last[0].shape == H.shape and last[0].dtype == H.dtype \
            and last[0].device == H.device and torch.equal(last[0], H):
        return last[1], last[2], last[3]
    s = torch.sqrt(torch.diagonal(H).clamp_min(0))
    s = torch.where(s > 0, s, torch.ones_like(s))
    lam, Q = torch.linalg.eigh(H / s[:, None] / s[None, :])
    lam = lam.clamp_min(0)
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
) -> L0Admm:
    """ℓ0-constrained ADMM on ``problem``'s quadratic (its ``lam`` ignored), from ``start``.

    Args:
        problem: the layer problem (``H``, ``G``; damping already in it).
        start: ``(d_out, d_in)`` weights on the pattern: ``D`` at the start (``U = 0``).
        pattern: the sparsity pattern ``D`` is projected on.
        rho: the first ρ, relative to the unit diagonal of ``H̃``.
        max_iter, min_iter: iteration bounds.
        update_every: iterations between ρ updates (and support checks).
        stop_change: stop when fewer than this fraction of the kept entries moved since the
            last update (after ``min_iter``).
    """
    s, lam, Q = scaled_eigh(problem.H)
    dtype = start.dtype
    s, lam, Q = s.to(dtype), lam.to(dtype), Q.to(dtype)
    G_Q = (problem.G.to(dtype) / s[None, :]) @ Q  # G̃ Q, fixed
    D = start * s[None, :]
    U = torch.zeros_like(D)
    mask = D != 0
    kept = max(float(mask.sum()), 1.0)
    checked, change, t = mask, 0.0, 0
    for t in range(1, max_iter + 1):
        V = ((G_Q + rho * ((D - U) @ Q)) / (lam + rho)[None, :]) @ Q.T
        Z = V + U
        mask = project(Z.abs(), pattern)
        D = Z * mask
        U = Z - D  # = U + V − D
        if t % update_every == 0:
            change = float((mask ^ checked).sum()) / kept
            checked = mask
            if change >= 0.1:
                rho *= 1.3
            elif change >= 0.005:
                rho *= 1.2
            elif change > 0:
                rho *= 1.1
            if t >= min_iter and change < stop_change:
                break
    return L0Admm(W=D / s[None, :], mask=mask, iterations=t, rho=rho, support_change=change)
