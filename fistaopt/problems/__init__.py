"""Problem objects: the layer-wise ℓ1 reconstruction problem and its constructors."""

from fistaopt.problems.accumulate import DataStatsAccumulator, LayerStatsAccumulator, OperatorStats
from fistaopt.problems.lasso import GapInfo, LassoProblem
from fistaopt.problems.synthetic import make_problem, PROBLEM_KINDS

__all__ = ["LassoProblem", "GapInfo", "LayerStatsAccumulator", "OperatorStats", "DataStatsAccumulator", "make_problem", "PROBLEM_KINDS"]
