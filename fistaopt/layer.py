"""Prune ONE linear layer: λ search → ℓ1 solve → round to the pattern → refit.

Given the layer problem ``min_W ½‖X* Wᵀ − X W₀ᵀ‖²_F + Σ λ_i ‖W_i‖₁`` (a
:class:`~fistaopt.problems.LassoProblem` whose ``lam`` is ignored here) and a sparsity
pattern:

1. **λ search.**  Rows are independent, so each row gets its own ``λ_i``, found by a
   vectorised bracketed search on ``log λ`` (all rows in one batched solve, each solve
   warm-started from the previous one) until the ℓ1 solution of every row has about the
   number of non-zeros the pattern keeps.
2. **Rounding** to the exact pattern by the scaled magnitude ``|W_ij|·√H_jj`` (the
   change in the loss a single entry makes, up to cross terms).
3. **Refit** of the kept weights: masked least squares ``min ½ tr(W H Wᵀ) − ⟨G, W⟩``
   with ``W = 0`` off the mask, by Jacobi-preconditioned conjugate gradients batched
   over rows (the ℓ1 penalty shrinks the kept weights; the refit removes that bias).
4. **Candidates.**  When a warm start (Wanda or SparseGPT weights) is given, its mask is
   refit too and each row keeps whichever candidate reconstructs it better — rows are
   independent, so this can only lower the layer error.

The result reports the relative reconstruction error
``‖X* Wᵀ − X W₀ᵀ‖² / ‖X W₀ᵀ‖²`` before and after rounding.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.solvers import ConvergenceWarning, get
from fistaopt.sparsity import Pattern, parse_pattern, project

logger = logging.getLogger(__name__)


@dataclass
class LayerResult:
    """The pruned layer and how it was obtained.

    Attributes:
        W: final weight ``(d_out, d_in)`` on the pattern.
        mask: bool ``(d_out, d_in)``, True = kept.
        lam: per-row λ used for the ℓ1 solve (float64, ``(d_out,)``; zeros for baselines).
        rel_error_before_rounding: relative error of the ℓ1 solution (before rounding).
        rel_error_rounded: relative error right after rounding (before the refit).
        rel_error: final relative reconstruction error.
        n_iter: solver iterations in total (λ search + final solve).
        refit_iter: conjugate-gradient iterations of the refit.
        seconds: wall-clock seconds.
        chosen: fraction of rows improved by the ℓ1 rounds (rows that kept their start: the rest).
        info: extra numbers (search steps, per-candidate errors).
    """

    W: torch.Tensor
    mask: torch.Tensor
    lam: torch.Tensor
    rel_error_before_rounding: float
    rel_error_rounded: float
    rel_error: float
    n_iter: int
    refit_iter: int
    seconds: float
    chosen: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- refit
def masked_refit(
    problem: LassoProblem,
    mask: torch.Tensor,
    W_init: torch.Tensor | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, int, float]:
    """Masked least squares ``min ½ tr(W H Wᵀ) − ⟨G, W⟩``, ``W = 0`` off ``mask``.

    Per row this is ``H_SS w_S = G_S``; all rows are solved together by conjugate
    gradients with the Jacobi preconditioner ``diag(H)`` (one GEMM ``(W⊙M) H`` per
    iteration).  Stops when every row's preconditioned residual norm is below ``tol``
    times its initial value.  Returns ``(W, iterations, max relative residual)``.
    """
    H, G = problem.H, problem.G
    dtype = H.dtype
    M = mask.to(dtype)
    d = torch.diagonal(H).clamp_min(torch.finfo(dtype).tiny)
    Minv = (1.0 / d)[None, :]
    X = (W_init.to(dtype) if W_init is not None else torch.zeros_like(G)) * M
    R = (G - X @ H) * M
    Z = R * Minv
    P = Z.clone()
    rz = (R * Z).sum(-1, keepdim=True)
    r0 = rz.clamp_min(0).sqrt()
    k = 0
    rel = 0.0
    tiny = torch.finfo(dtype).tiny
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


# ---------------------------------------------------------------------------- λ search
def _rounding_scores(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    return W.abs() * torch.sqrt(torch.diagonal(H).clamp_min(0))[None, :]


def _search_lam(
    problem: LassoProblem,
    target: torch.Tensor,
    W: torch.Tensor,
    *,
    solver: str,
    steps: int,
    iters: int,
    solver_options: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, int, list[float]]:
    """Per-row λ with about ``target[i]`` non-zeros in row i of the ℓ1 solution.

    Bracketed search on ``log λ``: the bracket ``[lo, hi]`` starts at
    ``[1e-6, 1]·λ_max``; each step solves all rows at once (warm start), moves the
    bracket by the non-zero count, and picks the next ``log λ`` by interpolating the
    log non-zero counts (regula falsi), falling back to bisection.
    """
    lam_max = problem.lam_max().to(problem.dtype).clamp_min(1e-30)
    log_lo = torch.log(lam_max * 1e-6)
    log_hi = torch.log(lam_max)
    n_lo = torch.full_like(lam_max, float(problem.d_in))  # nnz at lo (dense side)
    n_hi = torch.zeros_like(lam_max)  # nnz at hi
    # start where a fraction of λ_max usually lands near 50% sparsity
    log_lam = torch.log(lam_max * 0.05)
    n_iter = 0
    history: list[float] = []
    tgt = target.to(problem.dtype)
    for _ in range(steps):
        sub = problem.with_lam(torch.exp(log_lam))
        res = get(solver, max_iter=iters, tol=0.0, warn=False, check_every=iters, **solver_options).solve(sub, W0=W)
        W = res.W
        n_iter += res.n_iter
        nnz = (W != 0).sum(-1).to(problem.dtype)
        history.append(float((nnz - tgt).abs().mean()))
        dense = nnz > tgt
        log_lo = torch.where(dense, log_lam, log_lo)
        n_lo = torch.where(dense, nnz, n_lo)
        log_hi = torch.where(dense, log_hi, log_lam)
        n_hi = torch.where(dense, n_hi, nnz)
        # regula falsi on log(nnz + 1) vs log λ, kept inside the bracket
        f_lo, f_hi, f_t = torch.log1p(n_lo), torch.log1p(n_hi), torch.log1p(tgt)
        frac = ((f_lo - f_t) / (f_lo - f_hi).clamp_min(1e-12)).clamp(0.1, 0.9)
        log_lam = log_lo + frac * (log_hi - log_lo)
    return torch.exp(log_lam), W, n_iter, history


# ---------------------------------------------------------------------------- one layer
def _pruned_gradient_lam(problem: LassoProblem, W: torch.Tensor, quantile: float) -> torch.Tensor:
    """Per-row λ: the ``quantile`` of ``|∇f(W)_ij| / ω_j`` over the pruned entries of row i.

    At a refit point the gradient vanishes on the kept entries, and a pruned entry
    enters the ℓ1 solution iff ``|g_ij| > λ_i ω_j``: this λ lets the top
    ``1 − quantile`` of the pruned entries compete for a place in the support.
    """
    g = (W @ problem.H - problem.G).abs() / problem._omega(W.dtype)[None, :]
    pruned = W == 0
    if problem.mask is not None:
        pruned &= problem.mask
    vals = torch.where(pruned, g, torch.full_like(g, float("nan")))
    lam = torch.nanquantile(vals.double(), quantile, dim=-1).to(W.dtype)
    return torch.nan_to_num(lam, nan=0.0).clamp_min(0)


def prune_layer(
    problem: LassoProblem,
    pattern: Pattern | str = "unstructured",
    *,
    sparsity: float | None = None,
    solver: str = "fista",
    warm_start: torch.Tensor | None = None,
    refit: bool = True,
    rounds: int = 2,
    round_iter: int = 15,
    quantiles: tuple[float, ...] = (0.9, 0.6),
    refit_iter: int = 25,
    search_steps: int = 8,
    search_iter: int = 20,
    penalty: str = "scaled",
    lam_rule: str = "quantile",
    xi: float = 0.3,
    xi_grid: tuple[float, ...] = (0.5, 0.7, 0.85, 0.95),
    **solver_options: Any,
) -> LayerResult:
    """Prune one layer to ``pattern`` (see the module docstring).

    Args:
        problem: the layer problem (its ``lam`` is ignored; λ is set per row).
        pattern: ``"unstructured"``, ``"unstructured-layer"``, ``"N:M"`` or a :class:`Pattern`.
        sparsity: for unstructured patterns.
        solver: registry name of the ℓ1 solver (``fista``, ``ista``, ``admm``).
        warm_start: weights ``(d_out, d_in)`` on the pattern to start from (Wanda's or
            SparseGPT's).  Without one, a per-row λ search on the ℓ1 path gives the start.
        refit: refit the kept weights by masked least squares after each rounding
            (paper-faithful: off; then the rounded ℓ1 solution is returned).
        rounds: ℓ1 rounds (solve → round → refit), each from the best point so far.
        round_iter: solver iterations per round.
        quantiles: per round, the quantile of the pruned-entry gradient that sets λ_i
            (see :func:`_pruned_gradient_lam`); cycled if shorter than ``rounds``.
        refit_iter: conjugate-gradient iterations per refit.
        search_steps, search_iter: λ-search steps and iterations (only without warm start).
        penalty: ``"l1"`` (the paper's plain ``λ‖W‖₁``) or ``"scaled"`` (``λ Σ ‖X*_j‖ |W_ij|``,
            Wanda's saliency as an ℓ1 weight; invariant to rescaling an input channel).
        lam_rule: ``"quantile"`` (λ_i from ``quantiles``) or ``"xi"`` (the paper's
            criterion: per round, one batched solve over the λ candidates of ``xi_grid``;
            each row takes the candidate whose rounding error ``P(round(W)) − P(W)`` is
            closest to ``xi`` times its total error ``P(round(W))``).
        xi, xi_grid: the target ratio and the gradient quantiles that give the candidates.
        solver_options: passed to the solver (e.g. ``precondition``, ``device``, ``dtype``).

    Every candidate is scored by the layer objective row by row and each row keeps its
    best candidate (for the layer-scope pattern, whose rows share one budget, whole
    candidates compete), so the result is never worse than the (refit) warm start.
    """
    start = time.perf_counter()
    if not isinstance(problem, LassoProblem):
        raise TypeError(f"problem must be a LassoProblem, got {type(problem).__name__}")
    pat = parse_pattern(pattern, sparsity)
    pat.check_shape(problem.d_out, problem.d_in)
    if problem.batch_shape:
        raise ValueError("prune_layer takes a problem with a scalar or per-row lam, not a batch")
    if solver == "cvxpy":
        raise ValueError("cvxpy is a verifier, too slow for pruning; use fista, ista or admm")
    if lam_rule not in ("quantile", "xi"):
        raise ValueError(f"lam_rule must be 'quantile' or 'xi', got {lam_rule!r}")
    if not 0.0 < xi < 1.0 or not xi_grid or not all(0.0 <= q <= 1.0 for q in (*xi_grid, *quantiles)):
        raise ValueError("xi must be in (0, 1); xi_grid and quantiles non-empty with values in [0, 1]")
    if rounds < 0 or round_iter < 0 or refit_iter < 0:
        raise ValueError("rounds, round_iter and refit_iter must be >= 0")
    for key in ("tol", "max_iter", "warn", "check_every"):
        solver_options.pop(key, None)
    device = solver_options.get("device")
    work = problem.to(device=device) if device is not None else problem
    if penalty == "scaled":
        work = work.with_penalty_weights(torch.sqrt(torch.diagonal(work.H)).clamp_min(1e-12))
    elif penalty != "l1":
        raise ValueError(f"penalty must be 'l1' or 'scaled', got {penalty!r}")
    plain = work.with_lam(0.0).with_penalty_weights(None) if work.penalty_weights is not None else work.with_lam(0.0)
    n_iter, cg_iter = 0, 0
    info: dict[str, Any] = {}

    def finish(W_l1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal cg_iter
        mask = project(_rounding_scores(W_l1, work.H), pat)
        W_r = W_l1 * mask
        if refit:
            W_r, it, _ = masked_refit(plain, mask, W_r, max_iter=refit_iter)
            cg_iter += it
        return W_r, mask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if warm_start is not None:
            W_ws = work.check_W(warm_start, "warm_start")
            if not _fits(W_ws, pat):
                raise ValueError(f"warm_start does not satisfy the pattern {pat}")
            lam = torch.zeros(work.d_out, dtype=work.dtype, device=work.device)
            W_l1 = W_ws
            mask = W_ws != 0
            best = W_ws * mask
            if refit:
                best, it, _ = masked_refit(plain, mask, best, max_iter=refit_iter)
                cg_iter += it
        else:
            target = torch.full((work.d_out,), float(pat.keep_per_row(work.d_in)), dtype=work.dtype,
                                device=work.device)
            W_start = torch.zeros(work.w_shape, dtype=work.dtype, device=work.device)
            lam, W_l1, n_iter, history = _search_lam(
                work, target, W_start, solver=solver, steps=search_steps, iters=search_iter,
                solver_options=solver_options,
            )
            info["search_nnz_error"] = history
            best, mask = finish(W_l1)
        err_l1 = float(plain.relative_error(W_l1))
        err_round = float(plain.relative_error(W_l1 * mask))
        best_obj = plain.objective(best, per_row=True)
        start_error = float(plain.relative_error(best))
        improved = torch.zeros(work.d_out, dtype=torch.bool, device=work.device)
        for r in range(rounds):
            if lam_rule == "xi":
                lam_r, W_r, it = _xi_round(work, plain, best, pat, solver, round_iter, xi, xi_grid, solver_options)
            else:
                q = quantiles[r % len(quantiles)] if quantiles else 0.5
                lam_r = _pruned_gradient_lam(work, best, q)
                res = get(solver, max_iter=round_iter, tol=0.0, warn=False, check_every=max(round_iter, 1),
                          **solver_options).solve(work.with_lam(lam_r), W0=best)
                W_r, it = res.W, res.n_iter
            n_iter += it
            cand, cand_mask = finish(W_r)
            obj = plain.objective(cand, per_row=True)
            better = obj < best_obj
            if pat.scope == "layer":  # rows share one budget: candidates compete as a whole
                better = torch.full_like(better, bool(obj.sum() < best_obj.sum()))
            best = torch.where(better[:, None], cand, best)
            mask = torch.where(better[:, None], cand_mask, best != 0) if refit else mask
            best_obj = torch.minimum(obj, best_obj)
            lam = torch.where(better, lam_r, lam)
            improved |= better
            if r == 0:
                err_l1 = float(plain.relative_error(W_r))
                err_round = float(plain.relative_error(W_r * cand_mask))
    mask = best != 0 if refit else project(_rounding_scores(best, work.H), pat)
    if not _fits(mask, pat):  # refit may leave exact zeros only, never extra non-zeros
        mask = project(_rounding_scores(best, work.H), pat)
        best = best * mask
    err = float(plain.relative_error(best))
    info.update(start_error=start_error)
    seconds = time.perf_counter() - start
    logger.debug("prune_layer %s: start %.4g final %.4g (%.2fs)", pat, start_error, err, seconds)
    return LayerResult(
        W=best.to(problem.dtype), mask=_full_mask(best, mask, pat, work), lam=lam.to(torch.float64),
        rel_error_before_rounding=err_l1, rel_error_rounded=err_round, rel_error=err, n_iter=n_iter,
        refit_iter=cg_iter, seconds=seconds, chosen=float(improved.float().mean()), info=info,
    )


def _xi_round(
    work: LassoProblem, plain: LassoProblem, best: torch.Tensor, pat: Pattern, solver: str, iters: int,
    xi: float, grid: tuple[float, ...], solver_options: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One round of the paper's λ rule, all λ candidates in one batched solve.

    Candidates ``λ_k`` (``k`` over ``grid``, each a per-row vector) are solved together
    (``W`` of shape ``(K, d_out, d_in)``, one GEMM per iteration); for each row the
    candidate whose rounding error ratio ``(P(round W_k) − P(W_k)) / P(round W_k)`` is
    closest to ``xi`` is returned with its λ.
    """
    K = len(grid)
    lams = torch.stack([_pruned_gradient_lam(work, best, q) for q in grid])  # (K, d_out)
    res = get(solver, max_iter=iters, tol=0.0, warn=False, check_every=max(iters, 1), **solver_options).solve(
        work.with_lam(lams), W0=best.expand(K, -1, -1).clone())
    W = res.W  # (K, d_out, d_in)
    rounded = W * project(_rounding_scores(W, work.H), pat)
    batch = plain.with_lam(torch.zeros_like(lams))
    p_l1 = batch.objective(W, per_row=True)
    p_round = batch.objective(rounded, per_row=True)
    ratio = (p_round - p_l1) / p_round.clamp_min(torch.finfo(torch.float64).tiny)
    pick = (ratio - xi).abs().argmin(0)  # (d_out,)
    rows = torch.arange(work.d_out, device=W.device)
    return lams[pick, rows], W[pick.to(W.device), rows], res.n_iter


def _full_mask(W: torch.Tensor, mask: torch.Tensor, pat: Pattern, problem: LassoProblem) -> torch.Tensor:
    """The pattern mask of ``W``: its non-zeros, topped up to the pattern's count when
    the refit left exact zeros (so the mask always has the pattern's exact density)."""
    nz = W != 0
    base = _rounding_scores(W, problem.H)
    scores = base + nz.to(W.dtype) * (1 + base.max())
    full = project(scores, pat)
    return full | nz


def _fits(mask: torch.Tensor, pattern: Pattern) -> bool:
    from fistaopt.sparsity import satisfies

    return satisfies(mask, pattern)


def refit_mask(problem: LassoProblem, mask: torch.Tensor, W_init: torch.Tensor | None = None,
               max_iter: int = 100) -> torch.Tensor:
    """Convenience: the refit weights on a fixed mask (baselines + refit comparisons)."""
    return masked_refit(problem.with_lam(0.0), mask, W_init, max_iter=max_iter)[0]


__all__ = ["LayerResult", "prune_layer", "masked_refit", "refit_mask"]
