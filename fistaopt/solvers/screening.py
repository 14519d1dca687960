"""Gap-safe screening and working-set selection, both certified by the duality gap.

Per row ``i`` the dual point of :meth:`LassoProblem.duality_gap` is ``θ_i = a_i r_i / λ_i``
(``r_i`` the residual, ``a_i`` the dual scale), and the dual objective is
``λ_i²``-strongly concave, so the dual optimum lies in the ball
``‖θ_i − θ*_i‖ ≤ √(2 gap_i) / λ_i``.  In Gram form ``x_jᵀ r_i = −g_ij`` (``g = W H − G``)
and ``‖x_j‖ = √H_jj``, so the sphere test of Fercoq, Gramfort & Salmon (2015) reads::

    a_i |g_ij| + √(2 gap_i · H_jj)  <  λ_i ω_j      ⇒      W*_ij = 0 at every optimum

Screened entries are fixed at zero for the rest of a solve.  The test assumes the
statistics are realizable (``c_i ≥`` the least-squares part, true for any ``H, G, c``
accumulated from data, with or without damping); the final certificate is computed on
the original problem in any case.

Working sets: what matters next in a row is its support and the entries closest to
entering it, scored by the normalized distance to the dual constraint (celer's
priority, Massias et al. 2018)::

    score_ij = (λ_i ω_j − a_i |g_ij|) / √H_jj        (≤ 0: KKT violated at zero)

Shapes: ``W``, ``grad`` and the results have the problem's variable shape
``(*batch, d_out, d_in)``; per-row quantities ``(*batch, d_out)``.
"""

from __future__ import annotations

import torch

from fistaopt.problems.lasso import GapInfo, LassoProblem


def gap_safe_zeros(problem: LassoProblem, W: torch.Tensor, grad: torch.Tensor, info: GapInfo) -> torch.Tensor:
    """Bool ``(*batch, d_out, d_in)``: entries that are zero now and proven zero at the optimum.

    ``grad = W H − G`` and ``info = problem.duality_gap(W)`` of the same point (float64).
    Entries that are non-zero now are not screened (they are left to the solver, which
    will move them to zero; a later check screens them).
    """
    thr = problem.threshold(torch.float64)
    diag = torch.diagonal(problem.H).to(torch.float64).clamp_min(0)
    radius = torch.sqrt(2 * info.per_row.clamp_min(0))[..., None] * torch.sqrt(diag)
    proven = (info.dual_scale[..., None] * grad.to(torch.float64).abs() + radius < thr) & (W == 0)
    return proven if problem.mask is None else proven & problem.mask


def entry_scores(problem: LassoProblem, grad: torch.Tensor, info: GapInfo, fixed: torch.Tensor) -> torch.Tensor:
    """Normalized distance of each entry to the dual constraint, ``(λ_i ω_j − a_i |g_ij|) / √H_jj``.

    Variable shape, float64; ``≤ 0`` where the KKT condition at zero is violated (the entry
    wants to enter the support).  Entries in ``fixed`` (bool, mask or screened) and
    columns with ``H_jj = 0`` score ``+inf``.
    """
    thr = problem.threshold(torch.float64)
    slack = thr - info.dual_scale[..., None] * grad.to(torch.float64).abs()
    norm = torch.sqrt(torch.diagonal(problem.H).to(torch.float64))
    score = slack / torch.where(norm > 0, norm, 1.0)
    blocked = fixed | (norm == 0)
    return torch.where(blocked, torch.full_like(score, float("inf")), score)
