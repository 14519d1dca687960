"""Interchangeable solvers with one result type and one stopping rule (the duality gap).

    fistaopt.solvers.available()        -> ["admm", "auto", "cd", "cvxpy", "fista", "ista"]
    fistaopt.solvers.get("admm", rho=1) -> a configured solver with .solve(problem, W0=None)
    fistaopt.solve(problem, solver="fista", W0=None, **options) -> SolveResult
"""

from __future__ import annotations

from typing import Any

from fistaopt.problems.lasso import LassoProblem
from fistaopt.solvers.base import STOP_REASONS, ConvergenceWarning, SolveResult, Solver, Trace
from fistaopt.solvers.registry import available, get, solver_class


def solve(problem: LassoProblem, solver: str = "fista", W0: Any = None, **options: Any) -> SolveResult:
    """Solve ``problem`` with the named solver and options; see :class:`Solver` for the options."""
    return get(solver, **options).solve(problem, W0=W0)


__all__ = ["available", "get", "solver_class", "solve", "Solver", "SolveResult", "Trace",
           "ConvergenceWarning", "STOP_REASONS"]
