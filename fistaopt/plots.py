"""Convergence and pruning plots (matplotlib, object API: no pyplot, no global state).

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save_figure` writes
it as PNG or SVG by suffix.

    from fistaopt import plots, study
    res = study.compare(study.problem_set(["llm-like"], d_out=32, d_in=64), ["fista", "admm"])
    fig = plots.plot_convergence(res, "llm-like-32x64-s0")      # three panels
    plots.save_figure(fig, "convergence.png")
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from fistaopt import _io

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from fistaopt.solvers.base import Trace
    from fistaopt.study import LambdaPath, StudyResult

#: Suffixes :func:`save_figure` understands.
FIGURE_FORMATS = {".png": "png", ".svg": "svg"}

_X_LABELS = {"iteration": "iteration", "seconds": "seconds"}


def _new_figure(ncols: int = 1, *, width: float = 5.2, height: float = 3.8) -> tuple["Figure", list["Axes"]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _positive(values: Sequence[float]) -> list[float]:
    """Non-positive / non-finite values → NaN (hidden on a log axis)."""
    return [v if (v is not None and math.isfinite(v) and v > 0) else math.nan for v in values]


def _draw(ax: "Axes", x: Sequence[float], y: Sequence[float], label: str, color: Any = None) -> None:
    style = {"marker": "o", "markersize": 5} if len(x) <= 2 else {}
    ax.plot(list(x), list(y), label=label, color=color, linewidth=1.6, **style)


def _check_traces(traces: Mapping[str, "Trace"]) -> None:
    if not isinstance(traces, Mapping) or not traces:
        raise ValueError("traces must be a non-empty mapping {solver label: Trace}")


def plot_gap(
    traces: Mapping[str, "Trace"],
    *,
    x: str = "iteration",
    ax: "Axes | None" = None,
    title: str | None = None,
    tol: float | None = None,
    logx: bool | None = None,
    legend: bool = True,
) -> "Figure":
    """Relative duality gap ``Σ gap_i / P(W_k)`` vs iteration or seconds, log y.

    One line per solver; the legend shows each solver's final relative gap and
    iteration count.  A single-point trace (cvxpy) is drawn as a marker.

    Args:
        traces: ``{solver label: Trace}``.
        x: ``"iteration"`` or ``"seconds"``.
        ax: draw into this axes (its figure is returned); None: a new figure.
        tol: draw the target as a dashed horizontal line.
        logx: log-scale x (None: for seconds always, for iterations when the longest
            run is over 50× the shortest check, so fast solvers stay visible).
        legend: draw the legend inside the axes.
    """
    _check_traces(traces)
    if x not in _X_LABELS:
        raise ValueError(f"x must be one of {tuple(_X_LABELS)}, got {x!r}")
    if ax is None:
        fig, (ax,) = _new_figure()
    else:
        fig = ax.figure
    for label, tr in traces.items():
        xs = tr.iteration if x == "iteration" else tr.seconds
        final = tr.rel_gap[-1] if len(tr) else math.nan
        n = tr.iteration[-1] if len(tr) else 0
        _draw(ax, xs, _positive(tr.rel_gap), f"{label} (final {final:.1e}, {n} it)")
    if tol is not None and tol > 0:
        ax.axhline(tol, color="0.5", linestyle="--", linewidth=1, label=f"tol {tol:.0e}")
    _style_log_axes(ax, traces, x, logx, "relative duality gap", legend, title)
    return fig


def _style_log_axes(ax: "Axes", traces: Mapping[str, "Trace"], x: str, logx: bool | None, ylabel: str,
                    legend: bool, title: str | None) -> None:
    """Log y (and log x when the runs span decades), labels, grid, legend and title."""
    ax.set_yscale("log")
    if _want_logx(traces, x, logx):
        ax.set_xscale("log")
    ax.set_xlabel(_X_LABELS[x])
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    if legend:
        ax.legend(fontsize="small")
    if title:
        ax.set_title(title)


def _want_logx(traces: Mapping[str, "Trace"], x: str, logx: bool | None) -> bool:
    if logx is not None:
        return logx
    if x == "seconds":
        return True
    its = [i for tr in traces.values() for i in tr.iteration if i > 0]
    return bool(its) and max(its) > 50 * min(its)


def plot_suboptimality(
    traces: Mapping[str, "Trace"],
    reference: float,
    *,
    ax: "Axes | None" = None,
    title: str | None = None,
    logx: bool | None = None,
    legend: bool = True,
) -> "Figure":
    """Suboptimality ``P(W_k) − P_ref`` vs iteration, log y, one line per solver.

    Values ``≤ 0`` (at or below the reference within rounding) are not drawn.  The
    legend shows each solver's final ``P − P_ref``.
    """
    _check_traces(traces)
    if reference is None or not math.isfinite(reference):
        raise ValueError(f"reference must be a finite objective value, got {reference!r}")
    if ax is None:
        fig, (ax,) = _new_figure()
    else:
        fig = ax.figure
    for label, tr in traces.items():
        sub = [o - reference for o in tr.objective]
        final = sub[-1] if sub else math.nan
        _draw(ax, tr.iteration, _positive(sub), f"{label} (final {final:.1e})")
    _style_log_axes(ax, traces, "iteration", logx, "P(W_k) − P_ref", legend, title)
    return fig


def plot_convergence(study: "StudyResult", problem: str, *, tol: float | None = None) -> "Figure":
    """Three panels for one problem of a study: gap vs iteration, gap vs seconds, suboptimality.

    Raises:
        ValueError: ``problem`` is not in the study or no solver ran on it.
    """
    if problem not in study.problem_names:
        raise ValueError(f"unknown problem {problem!r}; problems in this study: {', '.join(study.problem_names)}")
    traces = study.traces(problem)
    if not traces:
        raise ValueError(f"no solver produced a trace on problem {problem!r} (all raised)")
    tol = study.settings.get("tol") if tol is None else tol
    fig, axes = _new_figure(3, width=4.6, height=4.2)
    plot_gap(traces, x="iteration", ax=axes[0], tol=tol, legend=False)
    plot_gap(traces, x="seconds", ax=axes[1], tol=tol, legend=False)
    axes[0].set_title("gap vs iteration", fontsize="small")
    axes[1].set_title("gap vs seconds", fontsize="small")
    ref = study.references.get(problem, {}).get("objective")
    if ref is not None:
        plot_suboptimality(traces, ref, ax=axes[2], legend=False)
        src = study.references[problem].get("source")
        axes[2].set_title(f"suboptimality, P_ref = {ref:.10g} ({src})", fontsize="small")
    else:
        axes[2].set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), fontsize="small")
    fig.suptitle(f"{problem}")
    return fig


def plot_sparsity_path(path: "LambdaPath | tuple[Sequence[float], Sequence[float]]", *,
                       ax: "Axes | None" = None, title: str | None = None) -> "Figure":
    """Sparsity (fraction of exact zeros) vs λ along a path, log x.

    ``path`` is a :class:`fistaopt.study.LambdaPath` or a pair ``(lams, sparsity)``.
    """
    if isinstance(path, tuple):
        lams, sp, relative, label = list(path[0]), list(path[1]), False, None
    else:
        lams, sp, relative, label = list(path.lams), list(path.sparsity), path.relative, path.solver
    if not lams or len(lams) != len(sp):
        raise ValueError(f"need as many sparsity values as λ values (> 0), got {len(lams)} and {len(sp)}")
    order = sorted(range(len(lams)), key=lambda i: lams[i])
    if ax is None:
        fig, (ax,) = _new_figure()
    else:
        fig = ax.figure
    ax.plot([lams[i] for i in order], [sp[i] for i in order], marker="o", label=label)
    if min(lams) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("λ / λ_max" if relative else "λ")
    ax.set_ylabel("sparsity (fraction of zeros)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    if label:
        ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return fig


# ---------------------------------------------------------------------- prune reports
def operator_records(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Normalized per-operator records of a prune report.

    Accepts the ``fistaopt prune`` ``report.json`` layout (records under ``"records"``,
    operator under ``"name"``, ``lam`` a ``{min, mean, max}`` dict) and the simpler one
    (``"operators"`` list, ``"operator"`` name, ``lam`` a float).  Returns dicts with
    ``block`` (int), ``operator`` (str), ``rel_error`` (float or None), ``lam`` (float
    or None: the mean λ); records without ``block`` or a name are skipped.

    Raises:
        ValueError: ``report`` holds no operator list.
    """
    if not isinstance(report, Mapping):
        raise ValueError(f"a prune report must be a JSON object, got {type(report).__name__}")
    ops = report.get("operators")
    if ops is None:
        ops = report.get("records")
    if not isinstance(ops, list):
        raise ValueError("prune report has no per-operator list (expected key 'operators' or 'records')")
    out = []
    for r in ops:
        if not isinstance(r, Mapping):
            continue
        name = r.get("operator", r.get("name"))
        block = r.get("block")
        if name is None or block is None:
            continue
        lam = r.get("lam")
        if isinstance(lam, Mapping):
            lam = lam.get("mean")
        err = r.get("rel_error")
        out.append({
            "block": int(block), "operator": str(name),
            "rel_error": None if err is None else float(err),
            "lam": None if lam is None else float(lam),
        })
    return out


def plot_prune_report(report: Mapping[str, Any] | str | os.PathLike, *, title: str | None = None) -> "Figure":
    """Per-operator relative reconstruction error and λ across blocks (two panels, log y).

    One line per operator name (e.g. ``self_attn.q_proj``), x = block index.  ``report``
    is the dict of ``report.json`` or its path.

    Raises:
        ValueError: no operator records with a block and a name.
    """
    if isinstance(report, (str, os.PathLike)):
        report = load_report(report)
    recs = operator_records(report)
    if not recs:
        raise ValueError("prune report holds no operator records with 'block' and an operator name")
    names = list(dict.fromkeys(r["operator"] for r in recs))
    fig, axes = _new_figure(2, width=5.6, height=4.0)
    for ax, key, ylabel in ((axes[0], "rel_error", "relative reconstruction error"),
                            (axes[1], "lam", "λ (mean over rows)")):
        drawn = False
        for name in names:
            pts = sorted((r["block"], r[key]) for r in recs if r["operator"] == name and r[key] is not None)
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, _positive(ys), marker="o", markersize=3, linewidth=1.2, label=name)
            drawn = True
        ax.set_xlabel("block")
        ax.set_ylabel(ylabel)
        if drawn:
            ax.set_yscale("log")
            ax.legend(fontsize="x-small", ncol=1 if len(names) <= 8 else 2)
        else:
            ax.text(0.5, 0.5, f"no '{key}' in the report", ha="center", va="center", transform=ax.transAxes)
        ax.grid(True, alpha=0.3)
    settings = report.get("settings", {}) if isinstance(report.get("settings"), Mapping) else {}
    if title is None:
        bits = [f"{k}={settings[k]}" for k in ("method", "pattern", "sparsity") if k in settings]
        title = "prune report" + (f" ({', '.join(bits)})" if bits else "")
    fig.suptitle(title)
    return fig


def plot_allocation(report: Mapping[str, Any] | str | os.PathLike, *, title: str | None = None) -> "Figure":
    """A non-uniform allocation per block: target and realised sparsity (left), per operator (right).

    ``report`` is the dict of ``report.json`` (with its ``allocation``, written by a run
    with ``allocation="owl"`` or ``"convex"``) or its path.

    Raises:
        ValueError: the report holds no allocation.
    """
    if isinstance(report, (str, os.PathLike)):
        report = load_report(report)
    alloc = report.get("allocation")
    if not isinstance(alloc, Mapping) or not alloc.get("blocks"):
        raise ValueError("prune report holds no sparsity allocation (run with allocation='owl' or 'convex')")
    fig, axes = _new_figure(2, width=5.6, height=4.0)
    blocks = alloc["blocks"]
    xs = [b["block"] for b in blocks]
    axes[0].plot(xs, [b["target"] for b in blocks], marker="o", markersize=3, label="target")
    realised = [(b["block"], b["realised"]) for b in blocks if b.get("realised") is not None]
    if realised:
        axes[0].plot(*zip(*realised), marker="x", linestyle="none", label="realised")
    axes[0].axhline(alloc["target"], color="grey", linewidth=0.8, linestyle="--", label="uniform")
    axes[0].set_ylabel("sparsity (parameter-weighted)")
    ops = alloc.get("operators", [])
    for name in dict.fromkeys(op["name"] for op in ops):
        pts = sorted((op["block"], op["target"]) for op in ops if op["name"] == name)
        axes[1].plot(*zip(*pts), marker="o", markersize=3, linewidth=1.2, label=name)
    axes[1].set_ylabel("operator sparsity (target)")
    for ax in axes:
        ax.set_xlabel("block")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle(title or f"sparsity allocation ({alloc.get('rule')}, target {alloc['target']:g})")
    return fig


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``report.json`` (a file, or a folder that holds one).

    Raises:
        ValueError: missing file or invalid JSON (the message names the path).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise ValueError(f"no prune report at {str(p)!r}")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(p)!r} is not valid JSON: {e}") from None


def save_figure(fig: "Figure", path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` as PNG or SVG (by suffix), atomically; returns the path.

    Raises:
        ValueError: a suffix other than ``.png`` / ``.svg``.
    """
    p = Path(path)
    fmt = FIGURE_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ValueError(f"figure path {str(p)!r} must end in one of {', '.join(FIGURE_FORMATS)}")
    return _io.write_with(p, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
