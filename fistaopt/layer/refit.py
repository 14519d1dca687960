"""Masked least squares: the refit of the kept weights on a fixed support."""

from __future__ import annotations

import torch

from fistaopt.problems.lasso import LassoProblem


def masked_refit(
    problem: LassoProblem,
    mask: torch.Tensor,
    W_init: torch.Tensor | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, int, float]:
    """Masked least squares ``min ½ tr(W H Wᵀ) − ⟨G, W⟩``, ``W = 0`` off ``mask``.

    ``H (d_in, d_in)``, ``G, W, mask (d_out, d_in)``.  Per row this is
    ``H_SS w_S = G_S``; all rows are solved together by conjugate gradients with the
    Jacobi preconditioner ``diag(H)`` (one GEMM ``(W⊙M) H`` per iteration).  Stops
    when every row's preconditioned residual norm is below ``tol`` times its initial
    value.  Returns ``(W, iterations, max relative residual)``.
    """
    H, G = problem.H, problem.G
    dtype = H.dtype
    M = mask.to(dtype)
    tiny = torch.finfo(dtype).tiny
    Minv = (1.0 / torch.diagonal(H).clamp_min(tiny))[None, :]
    X = (W_init.to(dtype) if W_init is not None else torch.zeros_like(G)) * M
    R = (G - X @ H) * M
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
    return X * M, k, rel


def refit_mask(problem: LassoProblem, mask: torch.Tensor, W_init: torch.Tensor | None = None,
               max_iter: int = 100) -> torch.Tensor:
    """The refit weights on a fixed mask (baselines + refit comparisons); ``problem.lam`` ignored."""
    return masked_refit(problem.with_lam(0.0), mask, W_init, max_iter=max_iter)[0]
