"""The λ path of one problem: solutions and their sparsity along a list of λ, warm-started."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from fistaopt.problems.lasso import LassoProblem
from fistaopt.solvers import get as get_solver
from fistaopt.solvers.base import SolveResult
from fistaopt.study.compare import solver_spec, sparsity
from fistaopt.study.specs import Spec


@dataclass
class LambdaPath:
    """Solutions along a λ path (in the order the λ were given).

    Attributes:
        lams: the λ values (scalars; multiples of ``λ_max`` when ``relative``).
        sparsity: fraction of exact zeros of each solution.
        n_iter, rel_gap, converged: per λ, from the solver.
        relative: whether ``lams`` are ratios ``λ/λ_max,i``.
        solver: the solver label.
    """

    lams: list[float]
    sparsity: list[float]
    n_iter: list[int]
    rel_gap: list[float]
    converged: list[bool]
    relative: bool
    solver: str


def lambda_path(
    problem: LassoProblem,
    lams: Sequence[float],
    solver: str | Spec = "fista",
    *,
    relative: bool = False,
    **options: Any,
) -> LambdaPath:
    """Solve ``problem`` for each λ in ``lams`` with warm starts; sparsity per λ.

    λ is applied to every row (``relative=True``: ``λ_i = lams[k] · λ_max,i`` with
    ``λ_max,i = ‖G_i‖_∞ / ω``).  The path is solved from the largest λ (sparsest, W = 0
    nearby) to the smallest, each solve warm-started at the previous solution;
    results are returned in the order of ``lams``.  ``options`` go to the solver
    (``tol``, ``max_iter``, ...).

    Raises:
        ValueError: empty ``lams``, negative or non-finite λ, unknown solver.
    """
    lam_list = [float(x) for x in lams]
    if not lam_list:
        raise ValueError("lams must hold at least one value")
    if any(not math.isfinite(x) or x < 0 for x in lam_list):
        raise ValueError(f"lams must be finite and >= 0, got {lam_list}")
    if problem.batch_shape:
        raise ValueError("lambda_path needs a problem with scalar or per-row lam, not a batch (K, d_out)")
    spec = solver_spec(solver)
    opts = {"warn": False, **dict(spec.options), **options}
    s = get_solver(spec.name, **opts)
    lam_max = problem.lam_max().to(problem.dtype)
    order = sorted(range(len(lam_list)), key=lambda i: -lam_list[i])
    out: dict[int, SolveResult] = {}
    W = None
    for i in order:
        lam = lam_list[i] * lam_max if relative else lam_list[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = s.solve(problem.with_lam(lam), W0=W)
        out[i] = res
        W = res.W.to(device=problem.device, dtype=problem.dtype)
    return LambdaPath(
        lams=lam_list,
        sparsity=[sparsity(out[i].W) for i in range(len(lam_list))],
        n_iter=[int(out[i].n_iter) for i in range(len(lam_list))],
        rel_gap=[float(out[i].rel_gap) for i in range(len(lam_list))],
        converged=[bool(out[i].converged) for i in range(len(lam_list))],
        relative=relative,
        solver=spec.label,
    )
