"""Prune ONE linear layer: start → rounds → finish.

Given the layer problem ``min_W ½‖X* Wᵀ − X W₀ᵀ‖²_F + Σ λ_i ‖W_i‖₁`` (a
:class:`~fistaopt.problems.LassoProblem` whose ``lam`` is ignored here; ``W (d_out,
d_in)``) and a sparsity pattern:

1. **Start.**  With a warm start (Wanda's or SparseGPT's weights on the pattern) its
   mask is refit; without one, a per-row λ search on the ℓ1 path
   (:func:`fistaopt.layer.lam.search_lam`) gives an ℓ1 solution with about the kept
   count per row, which is rounded and refit.  Either refit runs ``start_refit_for()``
   CG iterations when rounds follow (``refit_iter`` when the start is the result).
2. **Rounds.**  Each round makes a candidate from the best point so far and refits its
   kept weights (:func:`fistaopt.layer.refit.masked_refit`).  By default
   (``round_kind="l0-admm"``) one round of ℓ0-constrained ADMM on the pattern itself
   (:mod:`fistaopt.layer.l0_admm`); with ``round_kind="l1"`` FISTAPruner's rounds: a per-row
   λ from the gradient at the best point (:mod:`fistaopt.layer.lam`), the ℓ1 solver from
   there, rounding to the pattern by the scaled magnitude ``|W_ij|·√H_jj``.  Rows are
   independent, so each row keeps whichever candidate reconstructs it better (whole
   candidates compete for the layer-scope pattern, whose rows share one budget): never
   worse than the start.
3. **Finish.**  The best weights, their exact pattern mask and the relative
   reconstruction errors ``‖X* Wᵀ − X W₀ᵀ‖² / ‖X W₀ᵀ‖²`` before and after rounding.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch

from fistaopt.layer.l0_admm import l0_admm
from fistaopt.layer.lam import quantile_round, rounding_scores, search_lam, xi_round
from fistaopt.layer.options import LayerOptions, check_solver_options, resolve_precision
from fistaopt.layer.refit import refit
from fistaopt.problems.lasso import LassoProblem
from fistaopt.solvers import ConvergenceWarning, solver_class
from fistaopt.sparsity import Pattern, parse_pattern, project, satisfies

logger = logging.getLogger(__name__)


@dataclass
class LayerResult:
    """The pruned layer and how it was obtained.

    Attributes:
        W: final weight ``(d_out, d_in)`` on the pattern.
        mask: bool ``(d_out, d_in)``, True = kept.
        lam: per-row λ used for the ℓ1 solve (float64, ``(d_out,)``; zeros for rows that kept the start).
        rel_error_before_rounding: relative error of the (first) ℓ1 solution.
        rel_error_rounded: relative error right after rounding it (before the refit).
        rel_error: final relative reconstruction error.
        residual: its numerator ``Σᵢ ‖X* wᵢᵀ − X w₀ᵢᵀ‖²`` (float64) on the problem as given
            (with its damping: :meth:`LassoProblem.undamped_residual` removes the ridge).
        n_iter: solver iterations in total (λ search + rounds).
        refit_iter: conjugate-gradient iterations of the refits.
        seconds: wall-clock seconds.
        chosen: fraction of rows improved by the ℓ1 rounds (the rest kept their start).
        info: extra numbers (start error, λ-search history).
    """

    W: torch.Tensor
    mask: torch.Tensor
    lam: torch.Tensor
    rel_error_before_rounding: float
    rel_error_rounded: float
    rel_error: float
    residual: float
    n_iter: int
    refit_iter: int
    seconds: float
    chosen: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Candidate:
    """Weights on the pattern, with per-row objectives ``½ r²ᵢ`` of the layer problem.

    Attributes:
        W: ``(d_out, d_in)`` on the pattern (refit when the layer prune refits).
        rounded_obj: per-row objective of the rounded weights before the refit.
        obj: per-row objective of ``W``.
        neg_gradient: ``G − W H`` on every entry (from the refit), or None (no refit).
    """

    W: torch.Tensor
    rounded_obj: torch.Tensor
    obj: torch.Tensor
    neg_gradient: torch.Tensor | None


class _LayerPrune:
    """The state of one layer prune between its steps (see the module docstring)."""

    def __init__(self, problem: LassoProblem, pat: Pattern, solver: str, options: LayerOptions,
                 solver_options: Mapping[str, Any]) -> None:
        device = solver_options.get("device")
        work = problem.to(device=device) if device is not None else problem
        if options.penalty == "scaled":
            work = work.with_penalty_weights(torch.sqrt(torch.diagonal(work.H)).clamp_min(1e-12))
        self.work = work  # the penalised problem the ℓ1 solver sees
        self.plain = work.with_lam(0.0).with_penalty_weights(None)  # the layer objective alone
        # the precision of the ℓ1 solver's products (where it has the option) and of the ℓ0-ADMM
        # round's; the refits run IEEE
        # (a bfloat16 refit once read a diverged fit as a good one: docs/pruning.md)
        self.precision = resolve_precision(options.precision, work.device, solver_options.get("dtype") or work.dtype)
        self.l0_precision = resolve_precision(options.l0_precision, work.device, work.dtype)
        if "precision" in solver_class(solver).option_names():
            solver_options = {**solver_options, "precision": self.precision}
        self.pat, self.solver, self.options, self.solver_options = pat, solver, options, solver_options
        self.n_iter = self.cg_iter = 0
        self.info: dict[str, Any] = {"precision": self.precision, "l0_precision": self.l0_precision}
        # the first ℓ1 solution (its error is computed at the end) and the per-row objective
        # of its rounding (None: the start was on the pattern already)
        self.unrounded: torch.Tensor | None = None
        self.unrounded_obj: torch.Tensor | None = None  # known when the start was on the pattern
        self.rounded_obj: torch.Tensor | None = None

    def on_pattern(self, W: torch.Tensor, mask: torch.Tensor, refit_iter: int | None = None) -> Candidate:
        """``W⊙mask``, refit when asked (``refit_iter`` CG iterations, default the options'), as
        a :class:`Candidate`.

        With the refit, both objectives and the gradient come from its residuals (no product
        with ``H``).
        """
        W = W * mask
        if not self.options.refit:
            obj = self.plain.objective(W, per_row=True)
            return Candidate(W, obj, obj, None)
        r = refit(self.plain, mask, W, max_iter=self.options.refit_iter if refit_iter is None else refit_iter)
        self.cg_iter += r.iterations
        return Candidate(r.W, 0.5 * r.start_r2, 0.5 * r.r2, r.neg_gradient)

    def round_and_refit(self, W_l1: torch.Tensor, refit_iter: int | None = None) -> Candidate:
        """``W_l1`` rounded to the pattern (and refit)."""
        mask = project(rounding_scores(W_l1, self.work.H), self.pat)
        return self.on_pattern(W_l1, mask, refit_iter)

    def relative(self, rows: torch.Tensor) -> float:
        """Relative error ``Σ r²_i / Σ c_i`` from per-row objectives ``½ r²_i`` of :attr:`plain`."""
        return self.relative_total(2.0 * float(rows.sum()))

    def relative_total(self, residual: float) -> float:
        """Relative error ``Σ r²_i / Σ c_i`` from ``Σ r²_i``."""
        denom = float(self.plain.c.to(torch.float64).sum())
        return residual / denom if denom > 0 else residual

    def start(self, warm_start: torch.Tensor | None, rounds: int) -> None:
        """The first candidate: the refit warm start, or the rounded end of the λ search; its
        refit runs ``start_refit_for()`` CG iterations when ``rounds`` follow, else ``refit_iter``."""
        work = self.work
        refit_iter = self.options.start_refit_for() if rounds > 0 else self.options.refit_iter
        if warm_start is not None:
            W_l1 = work.check_W(warm_start, "warm_start")
            if not satisfies(W_l1, self.pat):
                raise ValueError(f"warm_start does not satisfy the pattern {self.pat}")
            self.lam = torch.zeros(work.d_out, dtype=work.dtype, device=work.device)
            # on the pattern already: its error stands for the ℓ1 solution's unless a round replaces it
            first = self.on_pattern(W_l1, W_l1 != 0, refit_iter)
            self.unrounded_obj = first.rounded_obj
        else:
            keep = float(self.pat.keep_per_row(work.d_in))
            target = torch.full((work.d_out,), keep, dtype=work.dtype, device=work.device)
            W_zero = torch.zeros(work.w_shape, dtype=work.dtype, device=work.device)
            self.lam, W_l1, self.n_iter, self.info["search_nnz_error"] = search_lam(
                work, target, W_zero, solver=self.solver, steps=self.options.search_steps,
                iters=self.options.search_iter, solver_options=self.solver_options)
            first = self.round_and_refit(W_l1, refit_iter)
            self.rounded_obj, self.unrounded = first.rounded_obj, W_l1
        self.best, self.best_obj, self.best_neg_grad = first.W, first.obj, first.neg_gradient
        self.info["start_error"] = self.relative(self.best_obj)
        self.improved = torch.zeros(work.d_out, dtype=torch.bool, device=work.device)

    def round(self, r: int) -> None:
        """Round ``r``: a candidate per row; each row keeps the better of it and its best."""
        o = self.options
        if o.round_kind == "l0-admm":
            res = l0_admm(self.plain, self.best, self.pat, rho=o.l0_rho, max_iter=o.l0_max_iter,
                          min_iter=o.l0_min_iter, update_every=o.l0_update_every, precision=self.l0_precision)
            self.n_iter += res.iterations
            self.info.setdefault("l0_admm", []).append({"iterations": res.iterations, "rho": res.rho,
                                                        "support_change": res.support_change})
            self.keep(r, self.on_pattern(res.W, res.mask), torch.zeros_like(self.lam), unrounded=None)
            return
        if o.lam_rule == "xi":
            lam_r, W_r, it = xi_round(self.work, self.plain, self.best, self.pat, self.solver, o.round_iter,
                                      o.xi, o.xi_grid, self.solver_options, neg_grad=self.best_neg_grad)
        else:
            lam_r, W_r, it = quantile_round(self.work, self.best, o.quantiles[r % len(o.quantiles)], self.solver,
                                            o.round_iter, self.solver_options, neg_grad=self.best_neg_grad)
        self.n_iter += it
        self.keep(r, self.round_and_refit(W_r), lam_r, unrounded=W_r)

    def keep(self, r: int, cand: Candidate, lam_r: torch.Tensor, unrounded: torch.Tensor | None) -> None:
        """Each row keeps the better of ``cand`` (round ``r``'s) and its best.

        ``unrounded``: the solution ``cand`` was rounded from, or None when it was on the
        pattern already (then its objective before the refit is the unrounded one)."""
        better = cand.obj < self.best_obj
        if self.pat.scope == "layer":  # rows share one budget: candidates compete as a whole
            better = torch.full_like(better, bool(cand.obj.sum() < self.best_obj.sum()))
        self.best = torch.where(better[:, None], cand.W, self.best)
        self.best_obj = torch.minimum(cand.obj, self.best_obj)
        if self.best_neg_grad is not None and cand.neg_gradient is not None:
            self.best_neg_grad = torch.where(better[:, None], cand.neg_gradient, self.best_neg_grad)
        self.lam = torch.where(better, lam_r, self.lam)
        self.improved |= better
        if r == 0:
            self.unrounded, self.rounded_obj = unrounded, cand.rounded_obj
            self.unrounded_obj = cand.rounded_obj if unrounded is None else None

    def finish(self, dtype: torch.dtype, started: float) -> LayerResult:
        """The best weights on the exact pattern, with their mask and errors."""
        best, H = self.best, self.work.H
        mask = best != 0 if self.options.refit else project(rounding_scores(best, H), self.pat)
        if not satisfies(mask, self.pat):  # refit may leave exact zeros only, never extra non-zeros
            mask = project(rounding_scores(best, H), self.pat)
            best = best * mask
        residual = 2.0 * float(self.best_obj.sum()) if best is self.best else float(self.plain.error_parts(best)[0])
        err = self.relative_total(residual)
        if self.unrounded_obj is not None:
            err_l1 = self.relative(self.unrounded_obj)
        else:  # a diagnostic: the product in the ℓ1 solution's dtype, the sums in float64
            assert self.unrounded is not None
            W_l1 = self.unrounded
            err_l1 = float(self.plain.relative_error(W_l1, WH=W_l1 @ H.to(W_l1.dtype)))
        err_round = err_l1 if self.rounded_obj is None else self.relative(self.rounded_obj)
        # the pattern mask of W: its non-zeros, topped up to the pattern's exact count
        nz = best != 0
        scores = rounding_scores(best, H)
        full_mask = project(scores + nz.to(best.dtype) * (1 + scores.max()), self.pat) | nz
        seconds = time.perf_counter() - started
        logger.debug("prune_layer %s: start %.4g final %.4g (%.2fs)", self.pat, self.info["start_error"], err, seconds)
        return LayerResult(
            W=best.to(dtype), mask=full_mask, lam=self.lam.to(torch.float64),
            rel_error_before_rounding=err_l1, rel_error_rounded=err_round, rel_error=err, residual=residual,
            n_iter=self.n_iter, refit_iter=self.cg_iter, seconds=seconds,
            chosen=float(self.improved.float().mean()), info=self.info,
        )


def prune_layer(
    problem: LassoProblem,
    pattern: Pattern | str = "unstructured",
    *,
    sparsity: float | None = None,
    solver: str = "fista",
    warm_start: torch.Tensor | None = None,
    options: LayerOptions | None = None,
    **overrides: Any,
) -> LayerResult:
    """Prune one layer to ``pattern`` (see the module docstring).

    Args:
        problem: the layer problem (its ``lam`` is ignored; λ is set per row).
        pattern: ``"unstructured"``, ``"unstructured-layer"``, ``"N:M"`` or a :class:`Pattern`.
        sparsity: for unstructured patterns given as a string.
        solver: registry name of the ℓ1 solver (not a verifier such as cvxpy).
        warm_start: weights ``(d_out, d_in)`` on the pattern to start from (Wanda's or
            SparseGPT's).  Without one, a per-row λ search on the ℓ1 path gives the start.
        options: a :class:`~fistaopt.layer.options.LayerOptions` (default: its defaults).
        **overrides: :class:`LayerOptions` fields (``refit=False``, ``rounds=3`` ...)
            over ``options``, and solver options (``precondition``, ``device``,
            ``dtype``, ...).  ``tol``/``max_iter`` and unknown names raise ``ValueError``.
    """
    started = time.perf_counter()
    if not isinstance(problem, LassoProblem):
        raise TypeError(f"problem must be a LassoProblem, got {type(problem).__name__}")
    pat = parse_pattern(pattern, sparsity)
    pat.check_shape(problem.d_out, problem.d_in)
    if problem.batch_shape:
        raise ValueError("prune_layer takes a problem with a scalar or per-row lam, not a batch")
    layer_keys = set(LayerOptions.names())
    options = replace(options or LayerOptions(), **{k: v for k, v in overrides.items() if k in layer_keys})
    solver_options = check_solver_options(solver, {k: v for k, v in overrides.items() if k not in layer_keys})
    run = _LayerPrune(problem, pat, solver, options, solver_options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        rounds = options.rounds_for(pat)
        run.start(warm_start, rounds)
        for r in range(rounds):
            run.round(r)
    return run.finish(problem.dtype, started)
