"""``solver="auto"``: pick the solver measured fastest for the problem at hand.

The rule (measured with ``benchmarks/solver_peers.py``, see docs/solvers.md)::

    device is not the CPU, or float32 iterates   →  fista   (GEMM-bound iterations)
    otherwise (CPU, float64):
        f = mean over rows of #{j free : |G_ij| > λ_i ω_j} / d_in   (KKT violated at W = 0)
        f ≤ CD_MAX_VIOLATOR_FRACTION (0.5)          →  cd      (sparse rows: compiled kernel)
        f >  CD_MAX_VIOLATOR_FRACTION               →  admm    (dense, hard problems)

``f`` costs one pass over ``G`` and predicts the share of its coordinates each row's
coordinate descent will have to work on (its active phases cost the square of that
number per sweep; ADMM's iterations do not depend on it).  Measured
(docs/results/solver-peers.json, SmolLM2 block-3 statistics and the synthetic
``llm-like`` 256×512 problem, λ = 0.01 and 0.1 λ_max): ``f`` = 0.01–0.37 on the rows
where ``cd`` was the fastest of ours (every 0.1 λ_max row, q_proj and llm-like at 0.01,
down_proj at 0.1 with ``f`` = 0.37), 0.86–0.92 on o_proj, up_proj and down_proj at
0.01, where ``admm`` was.  A masked refit (``λ = 0``) has every free entry violating and
goes to ADMM.  float32 iterates on the CPU were not part of the measurement; they keep
``fista``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.solvers.base import SolveResult, Solver
from fistaopt.solvers.registry import get

#: Largest mean fraction of a row's entries violating the KKT condition at zero for
#: which ``cd`` is chosen.
CD_MAX_VIOLATOR_FRACTION = 0.5


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


def choose(problem: LassoProblem, device: Any = None, dtype: torch.dtype | None = None) -> str:
    """Registry name of the solver the rule above picks for ``problem``."""
    where = torch.device(device) if device is not None else problem.device
    if where.type != "cpu" or dtype == torch.float32:
        return "fista"
    return "cd" if violator_fraction(problem) <= CD_MAX_VIOLATOR_FRACTION else "admm"


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
