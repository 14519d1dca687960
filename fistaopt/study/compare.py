"""Solver comparison studies: many solvers × many problems → one tidy table.

    from fistaopt import study
    probs = study.problem_set(["iid", "llm-like"], d_out=32, d_in=64, seeds=(0, 1))
    res = study.compare(probs, ["fista", "admm", "cvxpy"], tol=1e-8, max_iter=2000)
    res.to_records()        # one dict per solver × problem
    res.save("out/")        # results.json, results.csv, results.md, traces.json

Every solver runs under the same budget (``tol``, ``max_iter``, ``time_limit``) and the
same stopping rule (the certified relative duality gap, see
:meth:`fistaopt.LassoProblem.duality_gap`), so the numbers in a row are comparable.
A solver may be named with options in the one spec syntax of fistaopt
(:mod:`fistaopt.study.specs`), ``"fista[restart=False,precondition=False]"``: the whole
string is the row's label, the part before ``[`` the registry name.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any, Mapping, Sequence

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.problems.synthetic import make_problem
from fistaopt.solvers import available as available_solvers
from fistaopt.solvers import get as get_solver
from fistaopt.study.problems import NamedProblem
from fistaopt.study.results import Run, StudyResult
from fistaopt.study.specs import Spec

logger = logging.getLogger(__name__)

#: Relative duality gaps at which a study records iterations and seconds.
MILESTONES: tuple[float, ...] = (1e-2, 1e-4, 1e-6, 1e-8)

REFERENCE_BEST = "best"


def milestone_key(rel: float) -> str:
    """Column suffix of a milestone: ``1e-4 → "1e-04"``."""
    return f"{rel:.0e}"


def solver_spec(spec: "str | Spec") -> Spec:
    """A study's solver: a :class:`Spec` whose name is a registered solver."""
    parsed = Spec.parse(spec)
    if parsed.name not in available_solvers():
        raise ValueError(f"unknown solver {parsed.name!r}; valid solvers: {', '.join(available_solvers())}")
    return parsed


def sparsity(W: torch.Tensor) -> float:
    """Fraction of exact zeros in ``W`` (any shape)."""
    return float((W == 0).sum().item()) / max(W.numel(), 1)


def compare(
    problems: Sequence[NamedProblem | LassoProblem],
    solvers: Sequence[str | Spec],
    *,
    tol: float = 1e-8,
    max_iter: int = 2000,
    time_limit: float | None = None,
    reference: str = REFERENCE_BEST,
    solver_options: Mapping[str, Mapping[str, Any]] | None = None,
    milestones: Sequence[float] = MILESTONES,
    progress: bool = True,
    warmup: bool = True,
) -> StudyResult:
    """Run every solver on every problem under the same budget; tabulate.

    Args:
        problems: named problems (see :func:`problem_set`, :func:`load_problem_dir`);
            a bare :class:`LassoProblem` is named ``"problem<i>"``.
        solvers: registry names or ``NAME[opt=value,...]`` specs (labels must be unique).
        tol: target certified relative duality gap ``Σ gap_i / P(W)`` for every solver.
        max_iter, time_limit: the shared budget (cvxpy ignores ``max_iter``).
        reference: how ``P_ref`` is chosen per problem: ``"best"`` = the smallest
            objective among the runs that did not raise (each is an upper bound on
            ``P*``, certified within its own gap), or a solver label (e.g. ``"cvxpy"``)
            whose objective is used when that run succeeded, else ``"best"``.
        solver_options: extra options per solver label (merged over the shared ones).
        milestones: relative gaps at which iterations and seconds are recorded.
        progress: show a tqdm progress bar (stderr).
        warmup: first solve a tiny problem with each solver (untimed), so that lazy
            imports and first-call set-up costs do not land in the first row's seconds.

    Returns:
        A :class:`StudyResult`; a solver that raises gets a row with ``error`` filled.

    Raises:
        ValueError: unknown solver name, duplicate labels/names, empty inputs, bad budget.
    """
    from tqdm import tqdm

    specs, named, extra = _check_inputs(problems, solvers, tol, max_iter, time_limit, reference, solver_options)
    if warmup:
        _warmup(specs)
    runs: list[Run] = []
    bar = tqdm(total=len(named) * len(specs), desc="compare", unit="run", disable=not progress)
    try:
        for np_ in named:
            for spec in specs:
                bar.set_postfix_str(f"{spec.label} on {np_.name}", refresh=False)
                runs.append(_run_one(np_, spec, tol, max_iter, time_limit, extra.get(spec.label, {})))
                bar.update(1)
    finally:
        bar.close()

    references = {p.name: _reference(p.name, [r for r in runs if r.problem == p.name], reference) for p in named}
    records = [_record(r, references[r.problem], {p.name: p.metadata for p in named}[r.problem], milestones)
               for r in runs]
    traces_data = {(r.solver, r.problem): r.result.trace.as_dict() for r in runs if r.result is not None}
    settings = {"tol": tol, "max_iter": max_iter, "time_limit": time_limit, "reference": reference,
                "solvers": {s.label: {"solver": s.name, **dict(s.options)} for s in specs},
                "milestones": list(milestones)}
    return StudyResult(runs=runs, references=references, problems={p.name: dict(p.metadata) for p in named},
                       settings=settings, records=records, traces_data=traces_data)


def _check_inputs(
    problems: Sequence[NamedProblem | LassoProblem], solvers: Sequence[str | Spec], tol: float, max_iter: int,
    time_limit: float | None, reference: str, solver_options: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[list[Spec], list[NamedProblem], dict[str, Mapping[str, Any]]]:
    """The arguments of :func:`compare`, checked: ``(specs, named problems, options per label)``."""
    specs = [solver_spec(s) for s in solvers]
    if not specs:
        raise ValueError("solvers must name at least one solver; valid solvers: " + ", ".join(available_solvers()))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"solver labels must be unique, got {labels}")
    named = [p if isinstance(p, NamedProblem) else NamedProblem(f"problem{i}", p) for i, p in enumerate(problems)]
    if not named:
        raise ValueError("problems must hold at least one problem")
    names = [p.name for p in named]
    if len(set(names)) != len(names):
        raise ValueError(f"problem names must be unique, got {names}")
    for p in named:
        if not isinstance(p.problem, LassoProblem):
            raise TypeError(f"problem {p.name!r} is a {type(p.problem).__name__}, not a LassoProblem")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if not (isinstance(max_iter, int) and max_iter >= 0):
        raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds or None, got {time_limit!r}")
    if reference != REFERENCE_BEST and not isinstance(reference, str):
        raise ValueError(f"reference must be 'best' or a solver label, got {reference!r}")
    extra = dict(solver_options or {})
    unknown = sorted(set(extra) - set(labels))
    if unknown:
        raise ValueError(f"solver_options names solver(s) {unknown} that are not in the study {labels}")
    return specs, named, extra


def _warmup(specs: Sequence[Spec]) -> None:
    tiny = make_problem("iid", 2, 4, seed=0)
    for spec in specs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                get_solver(spec.name, **{**dict(spec.options), "max_iter": 20, "warn": False}).solve(tiny)
        except Exception:  # noqa: BLE001 - the real run reports errors
            pass


def _run_one(np_: NamedProblem, spec: Spec, tol: float, max_iter: int, time_limit: float | None,
             extra: Mapping[str, Any]) -> Run:
    options: dict[str, Any] = {"tol": tol, "max_iter": max_iter, "time_limit": time_limit, "warn": False}
    options.update(spec.options)
    options.update(extra)
    start = time.perf_counter()
    try:
        solver = get_solver(spec.name, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = solver.solve(np_.problem)
    except Exception as exc:  # noqa: BLE001 - a failing solver is a row, not a crash
        logger.warning("%s failed on %s: %s", spec.label, np_.name, exc)
        return Run(spec.label, np_.name, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)
    return Run(spec.label, np_.name, result, None, result.seconds)


def _reference(name: str, runs: list[Run], reference: str) -> dict[str, Any]:
    ok = [r for r in runs if r.result is not None and math.isfinite(r.result.objective)]
    if not ok:
        return {"objective": None, "source": None, "lower_bound": None}
    lower = max(r.result.objective - r.result.gap for r in ok)
    chosen = None
    if reference != REFERENCE_BEST:
        chosen = next((r for r in ok if r.solver == reference), None)
        if chosen is None:
            logger.info("reference solver %r did not run on %s; using the best objective", reference, name)
    if chosen is None:
        chosen = min(ok, key=lambda r: r.result.objective)
    return {"objective": chosen.result.objective, "source": chosen.solver, "lower_bound": lower}


def _record(run: Run, ref: Mapping[str, Any], meta: Mapping[str, Any], milestones: Sequence[float]) -> dict[str, Any]:
    rec: dict[str, Any] = {"solver": run.solver, "problem": run.problem, "error": run.error}
    res = run.result
    p_ref = ref.get("objective")
    if res is None:
        rec.update(converged=False, stop_reason="error", n_iter=None, seconds=run.seconds)
        for m in milestones:
            rec[f"iter_to_{milestone_key(m)}"] = None
        for m in milestones:
            rec[f"sec_to_{milestone_key(m)}"] = None
        rec.update(final_rel_gap=None, gap=None, sparsity=None, objective=None,
                   reference_objective=p_ref, objective_gap=None, rel_objective_gap=None)
    else:
        rec.update(converged=bool(res.converged), stop_reason=res.stop_reason, n_iter=int(res.n_iter),
                   seconds=float(res.seconds))
        hits = {m: res.trace.first_reaching(m) for m in milestones}
        for m in milestones:
            rec[f"iter_to_{milestone_key(m)}"] = None if hits[m] is None else int(hits[m][0])
        for m in milestones:
            rec[f"sec_to_{milestone_key(m)}"] = None if hits[m] is None else float(hits[m][1])
        gap_obj = None if p_ref is None else res.objective - p_ref
        rec.update(
            final_rel_gap=float(res.rel_gap), gap=float(res.gap), sparsity=sparsity(res.W),
            objective=float(res.objective), reference_objective=p_ref, objective_gap=gap_obj,
            rel_objective_gap=None if gap_obj is None or not p_ref else gap_obj / abs(p_ref),
        )
    for k, v in meta.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            rec[f"problem_{k}"] = v
    return rec
