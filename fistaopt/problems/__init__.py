"""Problem objects: the layer-wise ℓ1 reconstruction problem and its constructors."""

from fistaopt.problems.accumulate import DataStatsAccumulator, LayerStatsAccumulator
from fistaopt.problems.lasso import GapInfo, LassoProblem
from fistaopt.problems.synthetic import make_problem, PROBLEM_KINDS

__all__ = ["LassoProblem", "GapInfo", "LayerStatsAccumulator", "DataStatsAccumulator", "make_problem", "PROBLEM_KINDS"]
