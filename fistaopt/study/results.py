"""The outcome of a solver study: one record per solver × problem, traces, tables, files."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from fistaopt import _io
from fistaopt.solvers.base import SolveResult, Trace


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

    # .................................................................. persistence    # .................................................................. persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``results.json`` (records), ``results.csv``, ``results.md`` and ``traces.json``.

        Files are written atomically into ``directory`` (created if needed), which
        should be a fresh folder, e.g. from :func:`fistaopt._io.atomic_dir`.  Returns it.
        """
        out = Path(directory)
        _io.write_text(out / "results.json", json.dumps(self.records, indent=1, default=_json_default) + "\n")
        _io.write_text(out / "results.csv", records_to_csv(self.records))
        _io.write_text(out / "results.md", self.to_markdown() + "\n")
        traces = {
            "settings": self.settings,
            "references": self.references,
            "problems": self.problems,
            "traces": [
                {"solver": s, "problem": p, **data} for (s, p), data in self.traces_data.items()
            ],
        }
        _io.write_text(out / "traces.json", json.dumps(traces, default=_json_default) + "\n")
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


def iter_records(result: StudyResult, problem: str | None = None) -> Iterator[dict[str, Any]]:
    """The records of ``result`` (of one problem if given)."""
    for r in result.records:
        if problem is None or r["problem"] == problem:
            yield dict(r)
