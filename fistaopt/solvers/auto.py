"""``solver="auto"``: pick the solver measured fastest for the problem at hand.

The rule (measured with ``benchmarks/solver_peers.py``, see docs/solvers.md)::

    device is not the CPU, or float32 iterates   →  fista   (GEMM-bound iterations)
    otherwise (CPU, float64):
        f = mean over rows of #{j free : |G_ij| > λ_i ω_j} / d_in   (KKT violated at W = 0)
        f ≤ CD_MAX_VIOLATOR_FRACTION (0.5)               →  cd     (sparse rows: compiled kernel)
        κ = cond(D^-½ H D^-½) ≤ FISTA_MAX_CONDITION (100)   →  fista  (few iterations)
        ρ = solution density of PROBE_ROWS sampled rows
            ρ ≤ CD_MAX_DENSITY (0.5)                      →  cd
            otherwise                                    →  admm   (dense, hard problems)

``f`` costs one pass over ``G`` and predicts the share of its coordinates each row's
coordinate descent will have to work on (its active phases cost the square of that
number per sweep; ADMM's iterations do not depend on it).  Where ``f`` is large the
solution may still be sparse (correlated designs: ``f`` = 0.80 but 23% non-zeros on the
``correlated`` set at 0.1 λ_max), so ``κ`` (one ``eigvalsh``: the smallest eigenvalue as
well as the largest) and then ``ρ`` (a loose ``cd`` solve of a few rows) decide.  Measured
(docs/results/solver-peers*.json, SmolLM2 block-3 statistics and the synthetic sets at
256×512, λ = 0.01 and 0.1 λ_max): ``f`` = 0.01–0.37 on the rows where ``cd`` was the
fastest of ours; ``iid`` (``κ`` = 8.9, ``f`` ≥ 0.75) went to ``fista``; the
``correlated`` set (``κ`` = 1.0e3, ``f`` ≥ 0.80, ``ρ`` ≤ 0.6) to ``cd``; o_proj, up_proj
and down_proj at 0.01 (``f`` = 0.86–0.92, ``κ`` = 676–28,400) to ``admm``.  A masked
refit (``λ = 0``) has every free entry violating and dense solutions: ``admm``.
float32 iterates on the CPU were not part of the measurement; they keep ``fista``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.solvers.base import SolveResult, Solver
from fistaopt.solvers.registry import get

#: Largest mean fraction of a row's entries violating the KKT condition at zero for
#: which ``cd`` is chosen.
CD_MAX_VIOLATOR_FRACTION = 0.5
#: Largest Jacobi-scaled condition number for which ``fista`` is chosen (dense gradients).
FISTA_MAX_CONDITION = 100.0
#: Largest sampled solution density for which ``cd`` is chosen (dense gradients).
CD_MAX_DENSITY = 0.5
#: Rows of the density probe, its relative-gap tolerance and sweep budget.
PROBE_ROWS = 8
PROBE_TOL = 1e-3
PROBE_MAX_ITER = 50
#: Widest problem probed (``eigvalsh`` is O(d_in³)); wider dense-gradient problems: ``admm``.
MAX_PROBED_WIDTH = 4096


def violators_per_row(problem: LassoProblem) -> float:
    """Mean over rows of the number of free entries with ``|G_ij| > λ_i ω_j``."""
    violating = problem.G.abs() > problem.threshold(problem.G.dtype)
    if problem.mask is not None:
        violating = violating & problem.mask
    rows = violating.numel() // max(problem.d_in, 1)
    return float(violating.sum()) / rows if rows else 0.0


def violator_fraction(problem: LassoProblem) -> float:
    """:func:`violators_per_row` divided by ``d_in`` (0 for ``d_in = 0``)."""
    return violators_per_row(problem) / problem.d_in if problem.d_in else 0.0


def jacobi_condition(problem: LassoProblem) -> float:
    """Condition number of the Jacobi-scaled ``D^-½ H D^-½`` (float64; inf when singular)."""
    H = problem.H.to(torch.float64)
    d = torch.diagonal(H)
    if problem.d_in == 0:
        return 1.0
    if bool((d <= 0).any()):
        return math.inf
    s = d.rsqrt()
    ev = torch.linalg.eigvalsh(s[:, None] * H * s[None, :])
    return float(ev[-1] / ev[0]) if float(ev[0]) > 0 else math.inf


def probe_density(problem: LassoProblem) -> float:
    """Mean non-zero fraction (of the free entries) of a loose ``cd`` solve of ``PROBE_ROWS`` evenly spaced rows."""
    rows = torch.linspace(0, problem.d_out - 1, min(PROBE_ROWS, problem.d_out)).round().long().unique()
    idx = rows.to(problem.G.device)
    mask = None if problem.mask is None else problem.mask[idx]
    sample = LassoProblem(problem.H, problem.G[idx], problem.c[idx], problem._lam_rows()[idx], mask=mask,
                          penalty_weights=problem.penalty_weights, check_symmetry=False)
    W = get("cd", tol=PROBE_TOL, max_iter=PROBE_MAX_ITER, warn=False).solve(sample).W
    free = problem.d_in * len(rows) if mask is None else int(mask.sum())
    return float((W != 0).sum()) / max(free, 1)


def choose(problem: LassoProblem, device: Any = None, dtype: torch.dtype | None = None) -> str:
    """Registry name of the solver the rule above picks for ``problem``."""
    where = torch.device(device) if device is not None else problem.device
    if where.type != "cpu" or dtype == torch.float32:
        return "fista"
    if violator_fraction(problem) <= CD_MAX_VIOLATOR_FRACTION:
        return "cd"
    if problem.batch_shape or problem.d_in > MAX_PROBED_WIDTH:  # no cheap probe: the dense-case default
        return "admm"
    if jacobi_condition(problem) <= FISTA_MAX_CONDITION:
        return "fista"
    return "cd" if probe_density(problem) <= CD_MAX_DENSITY else "admm"


@dataclass
class Auto(Solver):
    """Delegates to :func:`choose`'s pick with the same shared options.

    ``SolveResult.solver`` is the picked solver's name and ``options["picked"]`` says it
    too; ``dtype=None`` leaves each solver its own default (float64 for ``cd``).
    """

    name: ClassVar[str] = "auto"

    def solve(self, problem: LassoProblem, W0: Any = None) -> SolveResult:
        if not isinstance(problem, LassoProblem):
            return super().solve(problem, W0=W0)  # raises the shared TypeError
        picked = choose(problem, self.device, self.dtype)
        shared = {k: v for k, v in vars(self).items() if k in Solver.option_names()}
        if shared["dtype"] is None:
            del shared["dtype"]
        result = get(picked, **shared).solve(problem, W0=W0)
        result.options["picked"] = picked
        return result
