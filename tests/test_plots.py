"""Plot functions: figures with the expected labels, log scales and one line per solver."""

from __future__ import annotations

import json

import pytest
from matplotlib.figure import Figure

from fistaopt import plots, study
from fistaopt.solvers.base import Trace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _trace(n: int, rate: float) -> Trace:
    t = Trace()
    for k in range(1, n + 1):
        t.append(10 * k, 1.0 + rate**k, rate**k, rate**k, 0.001 * k)
    return t


TRACES = {"fista": _trace(8, 0.1), "ista": _trace(30, 0.7), "cvxpy": _trace(1, 1e-10)}


def _data_lines(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("tol")]


@pytest.mark.parametrize("x", ["iteration", "seconds"])
def test_plot_gap(x) -> None:
    fig = plots.plot_gap(TRACES, x=x, tol=1e-8)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == x and ax.get_ylabel() == "relative duality gap"
    assert len(_data_lines(ax)) == 3
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith("fista (final 1.0e-08, 80 it)")


def test_plot_suboptimality() -> None:
    fig = plots.plot_suboptimality(TRACES, reference=1.0)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "iteration"
    assert ax.get_ylabel() == "P(W_k) − P_ref"
    assert len(ax.get_lines()) == 3
    with pytest.raises(ValueError, match="reference"):
        plots.plot_suboptimality(TRACES, reference=float("nan"))
    with pytest.raises(ValueError, match="non-empty"):
        plots.plot_gap({})


def test_plot_convergence_of_a_study(tmp_path) -> None:
    probs = study.problem_set(["llm-like"], d_out=3, d_in=6)
    res = study.compare(probs, ["fista", "ista", "admm"], tol=1e-8, max_iter=200, progress=False)
    fig = plots.plot_convergence(res, "llm-like-3x6-s0")
    assert len(fig.axes) == 3
    assert [a.get_xlabel() for a in fig.axes] == ["iteration", "seconds", "iteration"]
    assert all(a.get_yscale() == "log" for a in fig.axes)
    for ax in fig.axes:
        assert len(_data_lines(ax)) == 3
    path = plots.save_figure(fig, tmp_path / "c.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    svg = plots.save_figure(fig, tmp_path / "c.svg").read_text()
    assert "<svg" in svg
    with pytest.raises(ValueError, match="must end in one of .png, .svg"):
        plots.save_figure(fig, tmp_path / "c.jpg")
    with pytest.raises(ValueError, match="unknown problem"):
        plots.plot_convergence(res, "nope")


def test_plot_sparsity_path() -> None:
    import fistaopt as fo

    path = study.lambda_path(fo.make_problem("iid", 3, 6), [0.01, 0.1, 1.0], relative=True, max_iter=300)
    fig = plots.plot_sparsity_path(path)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "λ / λ_max"
    assert ax.get_ylabel() == "sparsity (fraction of zeros)"
    assert list(ax.get_lines()[0].get_ydata()) == sorted(path.sparsity)


REAL_REPORT = {  # the layout `fistaopt prune` writes (fistaopt/llm/prune.py: PruneReport.to_dict)
    "settings": {"method": "fista", "pattern": "unstructured", "sparsity": 0.5},
    "totals": {},
    "records": [
        {"block": b, "name": n, "shape": [8, 8], "method": "fista", "sparsity": 0.5,
         "rel_error": 0.01 * (b + 1) * (i + 1), "lam": {"min": 0.1, "mean": 0.2 * (b + 1), "max": 0.3}}
        for b in range(3) for i, n in enumerate(["self_attn.q_proj", "mlp.down_proj"])
    ],
}

SIMPLE_REPORT = {"operators": [
    {"block": 0, "operator": "fc1", "rel_error": 0.1, "lam": 0.5},
    {"block": 1, "operator": "fc1", "rel_error": 0.2},  # no lam: tolerated
    {"block": 1, "operator": "fc2"},                      # nothing optional
]}


@pytest.mark.parametrize("report, n_ops", [(REAL_REPORT, 2), (SIMPLE_REPORT, 1)])
def test_plot_prune_report(report, n_ops) -> None:
    fig = plots.plot_prune_report(report)
    err_ax, lam_ax = fig.axes
    assert err_ax.get_xlabel() == "block" and lam_ax.get_xlabel() == "block"
    assert err_ax.get_ylabel() == "relative reconstruction error"
    assert err_ax.get_yscale() == "log" and lam_ax.get_yscale() == "log"
    assert len(err_ax.get_lines()) == n_ops


def test_operator_records_normalizes_both_layouts(tmp_path) -> None:
    recs = plots.operator_records(REAL_REPORT)
    assert recs[0] == {"block": 0, "operator": "self_attn.q_proj", "rel_error": 0.01, "lam": 0.2}
    assert plots.operator_records(SIMPLE_REPORT)[2]["lam"] is None
    with pytest.raises(ValueError, match="per-operator list"):
        plots.operator_records({"settings": {}})
    (tmp_path / "report.json").write_text(json.dumps(REAL_REPORT))
    assert plots.load_report(tmp_path)["settings"]["method"] == "fista"
    with pytest.raises(ValueError, match="no prune report"):
        plots.load_report(tmp_path / "missing.json")
