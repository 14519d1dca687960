"""Masked least squares: the refit of the kept weights on a fixed support."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fistaopt.problems.lasso import LassoProblem


@dataclass
class Refit:
    """The result of :func:`refit`.

    Attributes:
        W: refit weights ``(d_out, d_in)``, zero off the mask.
        iterations: conjugate-gradient iterations run.
        residual: largest per-row preconditioned residual norm, relative to the start's.
        start_r2: per-row ``‖X* wᵢᵀ − X w₀ᵢᵀ‖²`` of the masked start (float64, ``(d_out,)``).
        r2: the same for ``W``.
    """

    W: torch.Tensor
    iterations: int
    residual: float
    start_r2: torch.Tensor
    r2: torch.Tensor


def _row_r2(problem: LassoProblem, W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Per-row ``‖X* wᵢᵀ − X w₀ᵢᵀ‖² = cᵢ − 2⟨wᵢ, gᵢ⟩ + ⟨wᵢ, (WH)ᵢ⟩`` from the masked residual
    ``R = (G − WH)⊙M`` of a masked ``W``: ``⟨wᵢ, (WH)ᵢ⟩ = ⟨wᵢ, gᵢ − rᵢ⟩``, so no product with ``H``
    is needed; the sums are taken in float64."""
    W64 = W.to(torch.float64)
    r2 = problem.c.to(torch.float64) - (W64 * problem.G.to(torch.float64)).sum(-1) - (W64 * R.to(torch.float64)).sum(-1)
    return r2.clamp_min(0)


def refit(
    problem: LassoProblem,
    mask: torch.Tensor,
    W_init: torch.Tensor | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> Refit:
    """Masked least squares ``min ½ tr(W H Wᵀ) − ⟨G, W⟩``, ``W = 0`` off ``mask``.

    ``H (d_in, d_in)``, ``G, W, mask (d_out, d_in)``.  Per row this is
    ``H_SS w_S = G_S``; all rows are solved together by conjugate gradients with the
    Jacobi preconditioner ``diag(H)`` (one GEMM ``(W⊙M) H`` per iteration), started
    from ``W_init⊙M`` (zero when None).  Stops when every row's preconditioned residual
    norm is below ``tol`` times its initial value.  The residual energies of the start
    and of the result come from the CG residuals (no extra product with ``H``): they
    are the layer objective ``2 × P(W)`` of ``problem`` with ``λ = 0``, per row.
    """
    H, G = problem.H, problem.G
    dtype = H.dtype
    M = mask.to(dtype)
    tiny = torch.finfo(dtype).tiny
    Minv = (1.0 / torch.diagonal(H).clamp_min(tiny))[None, :]
    X = (W_init.to(dtype) if W_init is not None else torch.zeros_like(G)) * M
    R = (G - X @ H) * M
    start_r2 = _row_r2(problem, X, R)
    Z = R * Minv
    P = Z.clone()
    rz = (R * Z).sum(-1, keepdim=True)
    r0 = rz.clamp_min(0).sqrt()
    k = 0
    rel = 0.0
    for k in range(1, max_iter + 1):
        AP = (P @ H) * M
        pAp = (P * AP).sum(-1, keepdim=True)
        alpha = torch.where(pAp > 0, rz / pAp.clamp_min(tiny), torch.zeros_like(pAp))
        X = X + alpha * P
        R = R - alpha * AP
        Z = R * Minv
        rz_new = (R * Z).sum(-1, keepdim=True)
        rel_rows = rz_new.clamp_min(0).sqrt() / r0.clamp_min(tiny)
        rel = float(rel_rows.max()) if rel_rows.numel() else 0.0
        if rel <= tol:
            break
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        P = Z + beta * P
        rz = rz_new
    X = X * M
    return Refit(W=X, iterations=k, residual=rel, start_r2=start_r2, r2=_row_r2(problem, X, R))


def masked_refit(
    problem: LassoProblem,
    mask: torch.Tensor,
    W_init: torch.Tensor | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, int, float]:
    """:func:`refit` as ``(W, iterations, max relative residual)``."""
    r = refit(problem, mask, W_init, max_iter=max_iter, tol=tol)
    return r.W, r.iterations, r.residual


def refit_mask(problem: LassoProblem, mask: torch.Tensor, W_init: torch.Tensor | None = None,
               max_iter: int = 100) -> torch.Tensor:
    """The refit weights on a fixed mask (baselines + refit comparisons); ``problem.lam`` ignored."""
    return refit(problem.with_lam(0.0), mask, W_init, max_iter=max_iter).W
