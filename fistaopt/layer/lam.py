"""Choosing λ inside a layer prune: the ℓ1 solver, the λ search and the two λ rules.

All three solve batched problems: every row of the layer (and, for the ``xi`` rule,
every λ candidate) in the same GEMM, for a fixed number of iterations.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.solvers import Solver, get
from fistaopt.sparsity import Pattern, project


def l1_solver(solver: str, iterations: int, solver_options: Mapping[str, Any]) -> Solver:
    """The ℓ1 solver of a layer prune: ``iterations`` steps, no stopping test, no certificate."""
    return get(solver, max_iter=iterations, tol=0.0, warn=False, check_every=max(iterations, 1), certify=False,
               **solver_options)


def rounding_scores(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``|W_ij| · √H_jj``: the loss change one entry makes alone (``W (..., d_out, d_in)``)."""
    return W.abs() * torch.sqrt(torch.diagonal(H).clamp_min(0))[None, :]


def search_lam(
    problem: LassoProblem, target: torch.Tensor, W: torch.Tensor, *, solver: str, steps: int, iters: int,
    solver_options: Mapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, int, list[float]]:
    """Per-row λ ``(d_out,)`` with about ``target[i]`` non-zeros in row i of the ℓ1 solution.

    Bracketed search on ``log λ``: the bracket ``[lo, hi]`` starts at
    ``[1e-6, 1]·λ_max``; each step solves all rows at once (warm start), moves the
    bracket by the non-zero count, and picks the next ``log λ`` by interpolating the
    log non-zero counts (regula falsi), kept inside the bracket.
    Returns ``(λ, W, iterations, mean |nnz − target| per step)``.
    """
    lam_max = problem.lam_max().to(problem.dtype).clamp_min(1e-30)
    log_lo, log_hi = torch.log(lam_max * 1e-6), torch.log(lam_max)
    n_lo = torch.full_like(lam_max, float(problem.d_in))  # nnz at lo (dense side)
    n_hi = torch.zeros_like(lam_max)  # nnz at hi
    log_lam = torch.log(lam_max * 0.05)  # a fraction of λ_max usually lands near 50% sparsity
    n_iter = 0
    history: list[float] = []
    tgt = target.to(problem.dtype)
    step = l1_solver(solver, iters, solver_options)
    for _ in range(steps):
        res = step.solve(problem.with_lam(torch.exp(log_lam)), W0=W)
        W = res.W
        n_iter += res.n_iter
        nnz = (W != 0).sum(-1).to(problem.dtype)
        history.append(float((nnz - tgt).abs().mean()))
        dense = nnz > tgt
        log_lo, n_lo = torch.where(dense, log_lam, log_lo), torch.where(dense, nnz, n_lo)
        log_hi, n_hi = torch.where(dense, log_hi, log_lam), torch.where(dense, n_hi, nnz)
        f_lo, f_hi, f_t = torch.log1p(n_lo), torch.log1p(n_hi), torch.log1p(tgt)
        frac = ((f_lo - f_t) / (f_lo - f_hi).clamp_min(1e-12)).clamp(0.1, 0.9)
        log_lam = log_lo + frac * (log_hi - log_lo)
    return torch.exp(log_lam), W, n_iter, history


def pruned_gradient_lam(problem: LassoProblem, W: torch.Tensor, quantile: float,
                        neg_grad: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row λ ``(d_out,)``: the ``quantile`` of ``|∇f(W)_ij| / ω_j`` over the pruned entries of row i.

    At a refit point the gradient vanishes on the kept entries, and a pruned entry
    enters the ℓ1 solution iff ``|g_ij| > λ_i ω_j``: this λ lets the top
    ``1 − quantile`` of the pruned entries compete for a place in the support.
    ``neg_grad``: ``G − W H`` when known (the refit's residual), saving the product with ``H``.
    """
    grad = W @ problem.H - problem.G if neg_grad is None else neg_grad
    g = grad.abs() / problem.column_weights(W.dtype)[None, :]
    pruned = W == 0
    if problem.mask is not None:
        pruned &= problem.mask
    lam = masked_row_quantile(g, pruned, quantile).to(W.dtype)
    return torch.nan_to_num(lam, nan=0.0).clamp_min(0)


def masked_row_quantile(values: torch.Tensor, where: torch.Tensor, q: float) -> torch.Tensor:
    """Per row, the ``q``-quantile of ``values[i, where[i]]`` (float64 ``(rows,)``; NaN where none).

    ``values, where (rows, n)``.  The same numbers as ``torch.nanquantile`` of the selected
    entries (linear interpolation between the order statistics at ``q·(nᵢ − 1)``, in
    float64), from a partial sort: ``topk`` of the side of the quantile, the larger values
    for ``q ≥ ½``, not a float64 sort of every row (3–5× faster on SmolLM2's shapes).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    n = where.sum(-1)
    out = torch.full(n.shape, float("nan"), dtype=torch.float64, device=values.device)
    if values.shape[-1] == 0 or int(n.max()) == 0:
        return out
    pos = q * (n - 1).clamp_min(0).to(torch.float64)
    lo, hi = pos.floor(), pos.ceil()
    if q >= 0.5:  # order statistic j is the (nᵢ − 1 − j)-th largest
        k = int((n - lo.long()).max())
        part = torch.topk(torch.where(where, values, float("-inf")), k, dim=-1).values
        i_lo, i_hi = (n - 1 - lo.long()), (n - 1 - hi.long())
    else:
        k = int(hi.max()) + 1
        part = torch.topk(torch.where(where, values, float("inf")), k, dim=-1, largest=False).values
        i_lo, i_hi = lo.long(), hi.long()
    v_lo = part.gather(-1, i_lo.clamp(0, k - 1)[..., None])[..., 0].to(torch.float64)
    v_hi = part.gather(-1, i_hi.clamp(0, k - 1)[..., None])[..., 0].to(torch.float64)
    return torch.where(n > 0, torch.lerp(v_lo, v_hi, pos - lo), out)


def quantile_round(
    work: LassoProblem, best: torch.Tensor, quantile: float, solver: str, iters: int,
    solver_options: Mapping[str, Any], neg_grad: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One ℓ1 round from ``best`` with λ from :func:`pruned_gradient_lam`: ``(λ, W, iterations)``.

    ``neg_grad``: ``G − best·H`` when known (the refit's residual)."""
    lam = pruned_gradient_lam(work, best, quantile, neg_grad)
    res = l1_solver(solver, iters, solver_options).solve(work.with_lam(lam), W0=best)
    return lam, res.W, res.n_iter


def xi_round(
    work: LassoProblem, plain: LassoProblem, best: torch.Tensor, pat: Pattern, solver: str, iters: int,
    xi: float, grid: tuple[float, ...], solver_options: Mapping[str, Any], neg_grad: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One round of the paper's λ rule, all λ candidates in one batched solve.

    Candidates ``λ_k`` (``k`` over ``grid``, each a per-row vector) are solved together
    (``W`` of shape ``(K, d_out, d_in)``, one GEMM per iteration); for each row the
    candidate whose rounding error ratio ``(P(round W_k) − P(W_k)) / P(round W_k)`` is
    closest to ``xi`` is returned with its λ: ``(λ (d_out,), W (d_out, d_in), iterations)``.
    ``neg_grad``: ``G − best·H`` when known (the refit's residual).
    """
    K = len(grid)
    if neg_grad is None:
        neg_grad = work.G - best @ work.H
    lams = torch.stack([pruned_gradient_lam(work, best, q, neg_grad) for q in grid])  # (K, d_out)
    res = l1_solver(solver, iters, solver_options).solve(work.with_lam(lams), W0=best.expand(K, -1, -1).clone())
    W = res.W  # (K, d_out, d_in)
    rounded = W * project(rounding_scores(W, work.H), pat)
    batch = plain.with_lam(torch.zeros_like(lams))
    p_l1 = batch.objective(W, per_row=True)
    p_round = batch.objective(rounded, per_row=True)
    ratio = (p_round - p_l1) / p_round.clamp_min(torch.finfo(torch.float64).tiny)
    pick = (ratio - xi).abs().argmin(0)  # (d_out,)
    rows = torch.arange(work.d_out, device=W.device)
    return lams[pick, rows], W[pick.to(W.device), rows], res.n_iter
