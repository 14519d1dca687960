"""Masked least squares: the refit of the kept weights on a fixed support."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.solvers.fista import effective_precision
from fistaopt.solvers.prox import matmul_precision


@dataclass
class Refit:
    """The result of :func:`refit`.

    Attributes:
        W: refit weights ``(d_out, d_in)``, zero off the mask.
        iterations: conjugate-gradient iterations run.
        residual: largest per-row preconditioned residual norm, relative to the start's.
        start_r2: per-row ``‖X* wᵢᵀ − X w₀ᵢᵀ‖²`` of the masked start (float64, ``(d_out,)``).
        r2: the same for ``W``.
        neg_gradient: ``G − W H`` on every entry ``(d_out, d_in)``, the negative gradient of the
            layer objective at ``W`` (from the CG recurrence, to its rounding).
    """

    W: torch.Tensor
    iterations: int
    residual: float
    start_r2: torch.Tensor
    r2: torch.Tensor
    neg_gradient: torch.Tensor


def _row_r2(problem: LassoProblem, W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Per-row ``‖X* wᵢᵀ − X w₀ᵢᵀ‖² = cᵢ − 2⟨wᵢ, gᵢ⟩ + ⟨wᵢ, (WH)ᵢ⟩`` from the residual
    ``R = G − WH`` of a masked ``W`` (only its entries on the mask count):
    ``⟨wᵢ, (WH)ᵢ⟩ = ⟨wᵢ, gᵢ − rᵢ⟩``, so no product with ``H`` is needed; the sums are taken in float64."""
    W64 = W.to(torch.float64)
    r2 = problem.c.to(torch.float64) - (W64 * problem.G.to(torch.float64)).sum(-1) - (W64 * R.to(torch.float64)).sum(-1)
    return r2.clamp_min(0)


def _row_dot(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Per-row ``⟨aᵢ, bᵢ⟩`` of ``A, B (..., d_out, d_in)`` as ``(..., d_out, 1)``, no temporary product."""
    return torch.linalg.vecdot(A, B).unsqueeze(-1)


def refit(
    problem: LassoProblem,
    mask: torch.Tensor,
    W_init: torch.Tensor | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
    precision: str = "fp32",
) -> Refit:
    """Masked least squares ``min ½ tr(W H Wᵀ) − ⟨G, W⟩``, ``W = 0`` off ``mask``.

    ``H (d_in, d_in)``, ``G, W, mask (d_out, d_in)``.  Per row this is
    ``H_SS w_S = G_S``; all rows are solved together by conjugate gradients with the
    Jacobi preconditioner ``diag(H)`` (one GEMM ``(W⊙M) H`` per iteration), started
    from ``W_init⊙M`` (zero when None).  Stops when every row's preconditioned residual
    norm is below ``tol`` times its initial value.  The residual energies of the start
    and of the result come from the CG residuals (no extra product with ``H``): they
    are the layer objective ``2 × P(W)`` of ``problem`` with ``λ = 0``, per row.

    ``precision`` (``fp32``/``tf32``/``bf16``, as the solvers' option) sets the precision
    of the products ``P H`` of the iterations; when it is not IEEE, ``r2`` of the result is
    computed with a float64 product instead (a bf16 refit once diverged to weights 77× the
    dense ones, which the residuals had read as a good fit; docs/pruning.md).
    """
    H, G = problem.H, problem.G
    dtype = H.dtype
    exact = effective_precision(precision, H.device, dtype) in ("fp32", "fp64")
    H_bf16 = H.to(torch.bfloat16) if precision == "bf16" else None
    M = mask.to(dtype)
    tiny = torch.finfo(dtype).tiny
    MinvM = M / torch.diagonal(H).clamp_min(tiny)[None, :]  # the Jacobi preconditioner, zero off the mask
    X = (W_init.to(dtype) if W_init is not None else torch.zeros_like(G)) * M
    # R = G − XH on every entry: on the mask the CG residual, off it the pruned entries' negative
    # gradient (what the next round's λ is read from); the preconditioner masks it for the iteration
    R = torch.addmm(G, X, H, alpha=-1.0)
    start_r2 = _row_r2(problem, X, R)
    Z = R * MinvM
    P = Z.clone()
    AP = torch.empty_like(P)
    rz = _row_dot(R, Z)
    r0 = rz.clamp_min(0).sqrt()
    k = 0
    rel = 0.0
    # every update in place: one GEMM and six element-wise passes per iteration; P is zero off
    # the mask, so ⟨P, PH⟩ needs no mask and R − αPH stays the residual everywhere
    with matmul_precision(precision, H.device):
        for k in range(1, max_iter + 1):
            if H_bf16 is not None:
                AP.copy_(P.to(torch.bfloat16) @ H_bf16)
            else:
                torch.mm(P, H, out=AP)
            pAp = _row_dot(P, AP)
            alpha = torch.where(pAp > 0, rz / pAp.clamp_min(tiny), torch.zeros_like(pAp))
            X.addcmul_(alpha, P)
            R.addcmul_(alpha, AP, value=-1.0)
            torch.mul(R, MinvM, out=Z)
            rz_new = _row_dot(R, Z)
            rel_rows = rz_new.clamp_min(0).sqrt() / r0.clamp_min(tiny)
            rel = float(rel_rows.max()) if rel_rows.numel() else 0.0
            if rel <= tol:
                break
            beta = torch.where(rz > 0, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
            torch.addcmul(Z, beta, P, out=P)
            rz = rz_new
    X.mul_(M)
    # with low-precision products the iterates may wander far along flat directions of H, where
    # residual-based objectives lose their digits: the result's objective is computed afresh in float64
    r2 = _row_r2(problem, X, R) if exact or k == 0 else 2 * problem.with_lam(0.0).objective(X, per_row=True)
    return Refit(W=X, iterations=k, residual=rel, start_r2=start_r2, r2=r2, neg_gradient=R)


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
