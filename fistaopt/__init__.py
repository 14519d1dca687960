"""fistaopt: LLM pruning by layer-wise ℓ1 reconstruction on a pluggable, certified solver layer.

    import fistaopt as fo
    prob = fo.LassoProblem.from_data(X, Y, lam=0.1)
    res = fo.solve(prob, solver="fista", tol=1e-6)
"""

from fistaopt import solvers
from fistaopt.problems import (
    DataStatsAccumulator,
    GapInfo,
    LassoProblem,
    LayerStatsAccumulator,
    make_problem,
)
from fistaopt.solvers import ConvergenceWarning, SolveResult, Trace, solve

__all__ = [
    "LassoProblem", "GapInfo", "LayerStatsAccumulator", "DataStatsAccumulator", "make_problem",
    "solve", "SolveResult", "Trace", "ConvergenceWarning", "solvers",
]
__version__ = "0.1.0"
