"""``solver="auto"``: pick the solver measured fastest for the problem at hand.

The rule (measured with ``benchmarks/solver_peers.py``, see docs/solvers.md)::

    device is not the CPU, or float32 iterates   →  fista   (GEMM-bound iterations)
    otherwise (CPU, float64):
        v = mean over rows of #{j free : |G_ij| > λ_i ω_j}   (KKT violated at W = 0)
        v ≤ CD_MAX_VIOLATORS                       →  cd      (sparse rows)
        v >  CD_MAX_VIOLATORS                      →  admm    (dense, hard problems)

``v`` costs one pass over ``G`` and predicts how many coordinates each row's coordinate
descent will have to work on (its cost grows with their square, ADMM's does not).
Measured (docs/results/solver-peers.json, SmolLM2 block-3 statistics): ``v`` = 7–179
for ``q_proj`` (λ = 0.01 and 0.1 λ_max), ``o_proj`` and ``up_proj`` at 0.1 and the
synthetic ``llm-like`` problems, where ``cd`` was the fastest of ours (1.7–14× ahead
of FISTA and ADMM); 494–1417 for ``o_proj``, ``up_proj``, ``down_proj`` at 0.01, where
``admm`` was (``cd`` did not converge within 40 s on two of them); ``down_proj`` at 0.1
(``v`` = 567) was a tie (``cd`` 12.3 s, ``admm`` 12.7 s).  A masked refit (``λ = 0``) has
every free entry violating and goes to ADMM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.solvers.base import SolveResult, Solver
from fistaopt.solvers.registry import get

#: Largest mean number of entries per row violating the KKT condition at zero for
#: which ``cd`` is chosen.
CD_MAX_VIOLATORS = 300


def violators_per_row(problem: LassoProblem) -> float:
    """Mean over rows of the number of free entries with ``|G_ij| > λ_i ω_j``."""
    violating = problem.G.abs() > problem.threshold(problem.G.dtype)
    if problem.mask is not None:
        violating = violating & problem.mask
    rows = violating.numel() // max(problem.d_in, 1)
    return float(violating.sum()) / rows if rows else 0.0


def choose(problem: LassoProblem, device: Any = None, dtype: torch.dtype | None = None) -> str:
    """Registry name of the solver the rule above picks for ``problem``."""
    where = torch.device(device) if device is not None else problem.device
    if where.type != "cpu" or dtype == torch.float32:
        return "fista"
    return "cd" if violators_per_row(problem) <= CD_MAX_VIOLATORS else "admm"


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
