"""Solver comparison studies: problem sets, the comparison, its results, the λ path.

    from fistaopt import study
    probs = study.problem_set(["iid", "llm-like"], d_out=32, d_in=64, seeds=(0, 1))
    res = study.compare(probs, ["fista", "admm[rho=1]", "cvxpy"], tol=1e-8, max_iter=2000)
    res.save("out/")        # results.json, results.csv, results.md, traces.json
"""

from fistaopt.study.compare import MILESTONES, REFERENCE_BEST, compare, milestone_key, solver_spec, sparsity
from fistaopt.study.path import LambdaPath, lambda_path
from fistaopt.study.problems import NamedProblem, load_problem_dir, problem_set
from fistaopt.study.results import Run, StudyResult, iter_records, records_to_csv, records_to_markdown
from fistaopt.study.specs import Spec, split_specs

__all__ = [
    "compare", "MILESTONES", "REFERENCE_BEST", "milestone_key", "solver_spec", "sparsity",
    "LambdaPath", "lambda_path", "NamedProblem", "load_problem_dir", "problem_set",
    "Run", "StudyResult", "iter_records", "records_to_csv", "records_to_markdown", "Spec", "split_specs",
]
