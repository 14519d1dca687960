"""`fistaopt compare` and `fistaopt plot` end to end (subprocess, tmp folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fistaopt as fo

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli() -> list[str]:
    return [sys.executable, "-m", "fistaopt.cli"]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(_cli() + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_compare_end_to_end(tmp_path) -> None:
    pdir = tmp_path / "problems"
    pdir.mkdir()
    fo.make_problem("llm-like", 3, 6, seed=3).save(pdir / "block0.q_proj.pt", block=0, operator="q_proj")
    r = run(["compare", "--problems", "iid,llm-like", "--solvers", "fista,ista,admm,cvxpy,fista[restart=False]",
             "--d-out", "3", "--d-in", "6", "--seeds", "0", "--tol", "1e-8", "--max-iter", "300",
             "--problem-dir", str(pdir), "--out", "out", "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    recs = json.loads((out / "results.json").read_text())
    assert len(recs) == 3 * 5
    assert {"solver", "problem", "converged", "n_iter", "seconds", "final_rel_gap"} <= set(recs[0])
    assert {r["problem"] for r in recs} == {"iid-3x6-s0", "llm-like-3x6-s0", "block0.q_proj"}
    assert (out / "results.md").read_text().startswith("| problem | solver |")
    assert (out / "results.csv").read_text().startswith("solver,problem,")
    for name in ("iid-3x6-s0", "llm-like-3x6-s0", "block0.q_proj"):
        assert (out / f"convergence-{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "problems"]  # no temp folder left

    # `plot` redraws a compare folder
    r = run(["plot", "out", "--out", "replot"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "replot" / "convergence-iid-3x6-s0.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("args, message", [
    (["--solvers", "fista,nosuch"], "unknown solver 'nosuch'; valid solvers: " + ", ".join(fo.solvers.available())),
    (["--problems", "iid,weird"], "unknown problem kind(s) 'weird'; valid kinds: iid, correlated, llm-like"),
])
def test_compare_bad_names_exit_2_and_write_nothing(tmp_path, args, message) -> None:
    r = run(["compare", *args, "--d-out", "2", "--d-in", "3", "--out", "out"], tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_plot_prune_report(tmp_path) -> None:
    report = {"settings": {"method": "fista", "sparsity": 0.5}, "records": [
        {"block": b, "name": n, "rel_error": 0.01 * (b + 1), "lam": {"min": 0.1, "mean": 0.2, "max": 0.3}}
        for b in range(4) for n in ("self_attn.q_proj", "mlp.up_proj")]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    r = run(["plot", "report.json", "--out", "figs"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "figs" / "prune-report.png").read_bytes()[:8] == PNG_MAGIC

    r = run(["plot", "missing.json", "--out", "figs2"], tmp_path)
    assert r.returncode == 2 and "no prune report" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "figs2").exists()
