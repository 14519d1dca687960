"""Solver comparison studies: many solvers × many problems → one tidy table.

    from fistaopt import study
    probs = study.problem_set(["iid", "llm-like"], d_out=32, d_in=64, seeds=(0, 1))
    res = study.compare(probs, ["fista", "admm", "cvxpy"], tol=1e-8, max_iter=2000)
    res.to_records()        # one dict per solver × problem
    res.save("out/")        # results.json, results.csv, results.md, traces.json

Every solver runs under the same budget (``tol``, ``max_iter``, ``time_limit``) and the
same stopping rule (the certified relative duality gap, see
:meth:`fistaopt.LassoProblem.duality_gap`), so the numbers in a row are comparable.
A solver may be named with options, ``"fista[restart=False,precondition=False]"``: the
whole string is the row's label, the part before ``[`` the registry name.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.problems.synthetic import PROBLEM_KINDS, make_problem
from fistaopt.solvers import available as available_solvers
from fistaopt.solvers import get as get_solver
from fistaopt.solvers.base import SolveResult, Trace

logger = logging.getLogger(__name__)

#: Relative duality gaps at which a study records iterations and seconds.
MILESTONES: tuple[float, ...] = (1e-2, 1e-4, 1e-6, 1e-8)

REFERENCE_BEST = "best"


def milestone_key(rel: float) -> str:
    """Column suffix of a milestone: ``1e-4 → "1e-04"``."""
    return f"{rel:.0e}"


# ---------------------------------------------------------------------- problem sets
@dataclass
class NamedProblem:
    """A problem with a name (the row key of a study) and free-form metadata.

    Attributes:
        name: unique within a study, e.g. ``"llm-like-32x64-s0"`` or a file stem.
        problem: the :class:`~fistaopt.LassoProblem`.
        metadata: e.g. ``kind, d_out, d_in, seed`` or ``block, operator`` for captured layers.
    """

    name: str
    problem: LassoProblem
    metadata: dict[str, Any] = field(default_factory=dict)


def problem_set(
    kinds: Iterable[str],
    *,
    d_out: int,
    d_in: int,
    seeds: Iterable[int] = (0,),
    lam_ratio: float = 0.1,
    dtype: torch.dtype = torch.float64,
) -> list[NamedProblem]:
    """Synthetic problems, one per ``kind × seed``, named ``"<kind>-<d_out>x<d_in>-s<seed>"``.

    Args:
        kinds: names from :data:`fistaopt.problems.PROBLEM_KINDS` (``iid, correlated, llm-like``).
        d_out, d_in: weight shape ``(d_out, d_in)``; ``H`` is ``(d_in, d_in)``.
        seeds: one problem per seed.
        lam_ratio: ``λ_i = lam_ratio · λ_max,i`` (``λ_max,i = ‖G_i‖_∞``).
        dtype: dtype of the statistics (float64 for studies).

    Raises:
        ValueError: an unknown kind (the message lists the valid kinds), or bad sizes.
    """
    kinds = list(kinds)
    seeds = list(seeds)
    if not kinds:
        raise ValueError("kinds must name at least one problem kind; valid kinds: " + ", ".join(PROBLEM_KINDS))
    bad = [k for k in kinds if k not in PROBLEM_KINDS]
    if bad:
        raise ValueError(f"unknown problem kind(s) {bad}; valid kinds: {', '.join(PROBLEM_KINDS)}")
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    out = []
    for kind in kinds:
        for seed in seeds:
            prob = make_problem(kind, d_out, d_in, lam_ratio=lam_ratio, seed=int(seed), dtype=dtype)
            meta = dict(getattr(prob, "metadata", {}) or {})
            out.append(NamedProblem(f"{kind}-{d_out}x{d_in}-s{seed}", prob, meta))
    return out


def load_problem_dir(
    path: str | os.PathLike, *, pattern: str = "*.pt", lam_ratio: float | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> list[NamedProblem]:
    """Every problem saved by :meth:`LassoProblem.save` in ``path`` (sorted by file name).

    The name of each problem is its file stem; its metadata is what was saved with it
    (for captured layers e.g. ``block``, ``operator``).  Captured layer statistics carry
    ``λ = 0``; with ``lam_ratio`` such problems get ``λ_i = lam_ratio · λ_max,i`` (a
    problem saved with a non-zero λ keeps it).  ``dtype`` (float64 by default) is the
    dtype the statistics are studied in: float32 statistics certify only to ~1e-4.

    Raises:
        ValueError: ``path`` is not a directory or holds no matching file.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"problem directory {str(root)!r} does not exist or is not a directory")
    files = sorted(root.glob(pattern))
    if not files:
        raise ValueError(f"problem directory {str(root)!r} holds no {pattern} files")
    out = []
    for f in files:
        prob = LassoProblem.load(f)
        meta = dict(getattr(prob, "metadata", {}) or {})
        if dtype is not None:
            prob = prob.to(dtype=dtype)
        if lam_ratio is not None and not bool((prob.lam != 0).any()):
            prob = prob.with_lam(lam_ratio * prob.lam_max())
            meta["lam_ratio"] = lam_ratio
        prob.metadata = meta
        out.append(NamedProblem(f.stem, prob, meta))
    return out


# ---------------------------------------------------------------------- solver specs
@dataclass(frozen=True)
class SolverSpec:
    """A solver in a study: row label, registry name and options.

    ``SolverSpec.parse("fista[restart=False,precondition=False]")`` gives label
    ``"fista[restart=False,precondition=False]"``, solver ``"fista"`` and options
    ``{"restart": False, "precondition": False}``.
    """

    label: str
    solver: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: "str | SolverSpec") -> "SolverSpec":
        if isinstance(spec, SolverSpec):
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"a solver must be a non-empty name, got {spec!r}")
        spec = spec.strip()
        m = re.fullmatch(r"([A-Za-z0-9_\-]+)(?:\[(.*)\])?", spec)
        if not m:
            raise ValueError(f"cannot parse solver {spec!r}; use NAME or NAME[option=value,...]")
        name, opts_s = m.group(1), m.group(2)
        if name not in available_solvers():
            raise ValueError(f"unknown solver {name!r}; valid solvers: {', '.join(available_solvers())}")
        options: dict[str, Any] = {}
        if opts_s:
            for item in opts_s.split(","):
                if "=" not in item:
                    raise ValueError(f"solver option {item!r} in {spec!r} must be option=value")
                key, val = (s.strip() for s in item.split("=", 1))
                options[key] = _literal(val)
        return cls(spec, name, options)


def _literal(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def split_solver_list(text: str) -> list[str]:
    """Split ``"fista,admm[rho=1,alpha=1.5]"`` on commas outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [s.strip() for s in out if s.strip()]


# ---------------------------------------------------------------------- results
@dataclass
class Run:
    """One solver on one problem: the result, or the error it raised."""

    solver: str
    problem: str
    result: SolveResult | None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class StudyResult:
    """The outcome of :func:`compare`.

    Attributes:
        runs: one :class:`Run` per solver × problem, problem-major order.
        references: per problem name, ``{"objective", "source", "lower_bound"}``: the
            reference optimum ``P_ref`` and where it came from; ``lower_bound`` is the
            certified ``max_runs (P(W) − gap)``, so ``P* ∈ [lower_bound, P_ref]``.
        problems: per problem name, its metadata.
        settings: the shared budget (``tol, max_iter, time_limit, reference``).
        records: the tidy table (see :meth:`to_records`).
    """

    runs: list[Run]
    references: dict[str, dict[str, Any]]
    problems: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    traces_data: dict[tuple[str, str], dict[str, list]] = field(default_factory=dict)

    @property
    def solver_labels(self) -> list[str]:
        return list(dict.fromkeys(r["solver"] for r in self.records))

    @property
    def problem_names(self) -> list[str]:
        return list(dict.fromkeys(r["problem"] for r in self.records))

    def to_records(self) -> list[dict[str, Any]]:
        """The tidy table: one dict per solver × problem (JSON-ready plain values).

        Keys: ``solver, problem, error, converged, stop_reason, n_iter, seconds,
        iter_to_1e-02 … iter_to_1e-08, sec_to_1e-02 … sec_to_1e-08`` (None when not
        reached), ``final_rel_gap, gap, sparsity, objective, reference_objective,
        objective_gap`` (``P(W) − P_ref``), ``rel_objective_gap``
        (``(P(W) − P_ref)/|P_ref|``), plus the problem's metadata under ``problem_*`` keys.
        """
        return [dict(r) for r in self.records]

    def trace(self, solver: str, problem: str) -> Trace | None:
        """The trace of one run (None if the solver raised)."""
        data = self.traces_data.get((solver, problem))
        if data is None:
            return None
        return Trace(**{k: list(v) for k, v in data.items()})

    def traces(self, problem: str) -> dict[str, Trace]:
        """``{solver label: Trace}`` of every successful run on ``problem``."""
        out = {}
        for s in self.solver_labels:
            t = self.trace(s, problem)
            if t is not None and len(t):
                out[s] = t
        return out

    def to_markdown(self, columns: Sequence[str] | None = None) -> str:
        """A GitHub-flavoured Markdown table of the records (compact columns by default)."""
        return records_to_markdown(self.records, columns)

    # .................................................................. persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``results.json`` (records), ``results.csv``, ``results.md`` and ``traces.json``.

        Files are written atomically (temp file + rename) into ``directory``, which is
        created if needed.  Returns the directory.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "results.json", json.dumps(self.records, indent=1, default=_json_default) + "\n")
        _atomic_write(out / "results.csv", records_to_csv(self.records))
        _atomic_write(out / "results.md", self.to_markdown() + "\n")
        traces = {
            "settings": self.settings,
            "references": self.references,
            "problems": self.problems,
            "traces": [
                {"solver": s, "problem": p, **data} for (s, p), data in self.traces_data.items()
            ],
        }
        _atomic_write(out / "traces.json", json.dumps(traces, default=_json_default) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "StudyResult":
        """Read a study written by :meth:`save` (records and traces; no solution matrices)."""
        root = Path(directory)
        rec_f, tr_f = root / "results.json", root / "traces.json"
        if not rec_f.is_file() or not tr_f.is_file():
            raise ValueError(f"{str(root)!r} is not a study folder (needs results.json and traces.json)")
        records = json.loads(rec_f.read_text())
        tr = json.loads(tr_f.read_text())
        traces_data = {
            (t["solver"], t["problem"]): {k: t[k] for k in ("iteration", "objective", "gap", "rel_gap", "seconds")}
            for t in tr.get("traces", [])
        }
        runs = [Run(r["solver"], r["problem"], None, r.get("error"), r.get("seconds") or 0.0) for r in records]
        return cls(runs=runs, references=tr.get("references", {}), problems=tr.get("problems", {}),
                   settings=tr.get("settings", {}), records=records, traces_data=traces_data)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    return str(obj)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------- tables
DEFAULT_MD_COLUMNS: tuple[str, ...] = (
    "problem", "solver", "converged", "stop_reason", "n_iter", "seconds",
    "iter_to_1e-04", "iter_to_1e-06", "iter_to_1e-08", "sec_to_1e-06",
    "final_rel_gap", "sparsity", "objective_gap", "error",
)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if math.isnan(v):
            return "nan"
        a = abs(v)
        return f"{v:.3g}" if 1e-3 <= a < 1e5 else f"{v:.2e}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def records_to_markdown(records: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Markdown table of ``records``; columns that are empty in every record are dropped."""
    cols = list(columns or DEFAULT_MD_COLUMNS)
    cols = [c for c in cols if any(r.get(c) not in (None, "") for r in records) or c in ("problem", "solver")]
    head = "| " + " | ".join(cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    lines = [head, sep]
    for r in records:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def records_to_csv(records: Sequence[Mapping[str, Any]]) -> str:
    """CSV of ``records`` with the union of their keys (first-seen order); None → empty."""
    keys: list[str] = list(dict.fromkeys(k for r in records for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    return buf.getvalue()


# ---------------------------------------------------------------------- the study
def sparsity(W: torch.Tensor) -> float:
    """Fraction of exact zeros in ``W`` (any shape)."""
    return float((W == 0).sum().item()) / max(W.numel(), 1)


def compare(
    problems: Sequence[NamedProblem | LassoProblem],
    solvers: Sequence[str | SolverSpec],
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

    specs = [SolverSpec.parse(s) for s in solvers]
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
                "solvers": {s.label: {"solver": s.solver, **dict(s.options)} for s in specs},
                "milestones": list(milestones)}
    return StudyResult(runs=runs, references=references, problems={p.name: dict(p.metadata) for p in named},
                       settings=settings, records=records, traces_data=traces_data)


def _warmup(specs: Sequence[SolverSpec]) -> None:
    tiny = make_problem("iid", 2, 4, seed=0)
    for spec in specs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                get_solver(spec.solver, **{**dict(spec.options), "max_iter": 20, "warn": False}).solve(tiny)
        except Exception:  # noqa: BLE001 - the real run reports errors
            pass


def _run_one(np_: NamedProblem, spec: SolverSpec, tol: float, max_iter: int, time_limit: float | None,
             extra: Mapping[str, Any]) -> Run:
    options: dict[str, Any] = {"tol": tol, "max_iter": max_iter, "time_limit": time_limit, "warn": False}
    options.update(spec.options)
    options.update(extra)
    start = time.perf_counter()
    try:
        solver = get_solver(spec.solver, **options)
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


# ---------------------------------------------------------------------- λ path
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
    solver: str | SolverSpec = "fista",
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
    spec = SolverSpec.parse(solver)
    opts = {"warn": False, **dict(spec.options), **options}
    s = get_solver(spec.solver, **opts)
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


def iter_records(result: StudyResult, problem: str | None = None) -> Iterator[dict[str, Any]]:
    """The records of ``result`` (of one problem if given)."""
    for r in result.records:
        if problem is None or r["problem"] == problem:
            yield dict(r)


def atomic_output_dir(final: str | os.PathLike) -> "_AtomicDir":
    """Context manager: write into a temp folder next to ``final``, publish on success.

    If ``final`` does not exist the temp folder is renamed onto it; if it exists, each
    file is moved into it with an atomic rename (other files there are kept).  On an
    exception the temp folder is removed and ``final`` is left untouched (a folder
    that did not exist is not created).
    """
    return _AtomicDir(Path(final))


class _AtomicDir:
    def __init__(self, final: Path) -> None:
        self.final = final
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.final.exists() and not self.final.is_dir():
            raise ValueError(f"output path {str(self.final)!r} exists and is not a directory")
        parent = self.final.parent
        parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.final.name}.tmp-"))
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            os.rename(self.tmp, self.final)  # fails if final exists (non-empty or not)
            return
        except OSError:
            if not self.final.is_dir():
                raise
        for f in sorted(self.tmp.iterdir()):
            os.replace(f, self.final / f.name)
        shutil.rmtree(self.tmp, ignore_errors=True)


def register_cli(subparsers: Any) -> None:
    """Add the ``compare`` subcommand (hook called by :func:`fistaopt.cli._register_study_commands`)."""
    from fistaopt.study_cli import add_compare_parser

    add_compare_parser(subparsers)
