"""Solver comparison studies: rows, numbers consistent with traces, error rows, λ path."""

from __future__ import annotations

import json
import math

import pytest
import torch

import fistaopt as fo
from fistaopt import study
from fistaopt.study import MILESTONES, NamedProblem, Spec, milestone_key, solver_spec

SOLVERS = ["fista", "ista", "admm", "cvxpy"]


@pytest.fixture(scope="module")
def small_study() -> study.StudyResult:
    probs = study.problem_set(["iid", "llm-like"], d_out=4, d_in=8, seeds=(0,))
    return study.compare(probs, SOLVERS, tol=1e-8, max_iter=300, progress=False)


def test_problem_set_names_and_metadata() -> None:
    probs = study.problem_set(["iid", "correlated"], d_out=3, d_in=5, seeds=(0, 1))
    assert [p.name for p in probs] == ["iid-3x5-s0", "iid-3x5-s1", "correlated-3x5-s0", "correlated-3x5-s1"]
    assert probs[1].metadata["seed"] == 1 and probs[0].problem.w_shape == (3, 5)


def test_problem_set_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="valid kinds: iid, correlated, llm-like"):
        study.problem_set(["iid", "nope"], d_out=2, d_in=3)


def test_load_problem_dir(tmp_path) -> None:
    fo.make_problem("iid", 3, 4, seed=1).save(tmp_path / "b.pt", block=1, operator="mlp.up_proj")
    fo.make_problem("llm-like", 3, 4, seed=2).save(tmp_path / "a.pt", block=0, operator="self_attn.q_proj")
    probs = study.load_problem_dir(tmp_path)
    assert [p.name for p in probs] == ["a", "b"]
    assert probs[0].metadata == {"block": 0, "operator": "self_attn.q_proj"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no"):
        study.load_problem_dir(empty)
    with pytest.raises(ValueError, match="does not exist"):
        study.load_problem_dir(tmp_path / "missing")


def test_every_solver_problem_pair_has_a_row(small_study) -> None:
    recs = small_study.to_records()
    assert len(recs) == 2 * len(SOLVERS)
    assert {(r["solver"], r["problem"]) for r in recs} == {
        (s, p) for s in SOLVERS for p in ("iid-4x8-s0", "llm-like-4x8-s0")
    }
    for r in recs:
        assert r["error"] is None
        for key in ("converged", "stop_reason", "n_iter", "seconds", "final_rel_gap", "sparsity", "objective",
                    "objective_gap"):
            assert key in r


def test_rows_agree_with_traces(small_study) -> None:
    for run in small_study.runs:
        rec = next(r for r in small_study.records if r["solver"] == run.solver and r["problem"] == run.problem)
        res = run.result
        assert rec["n_iter"] == res.n_iter and rec["converged"] == res.converged
        assert rec["final_rel_gap"] == pytest.approx(res.rel_gap)
        assert rec["objective"] == pytest.approx(res.objective)
        assert rec["sparsity"] == pytest.approx(float((res.W == 0).float().mean()))
        for m in MILESTONES:
            hit = res.trace.first_reaching(m)
            it, sec = rec[f"iter_to_{milestone_key(m)}"], rec[f"sec_to_{milestone_key(m)}"]
            if hit is None:
                assert it is None and sec is None
            else:
                assert (it, sec) == (hit[0], pytest.approx(hit[1]))
        # the saved trace is the solver's trace
        assert small_study.trace(run.solver, run.problem).rel_gap == res.trace.rel_gap


def test_reference_is_best_objective_and_gaps_nonnegative(small_study) -> None:
    for name in small_study.problem_names:
        ref = small_study.references[name]
        objs = [r["objective"] for r in small_study.records if r["problem"] == name]
        assert ref["objective"] == min(objs)
        assert ref["lower_bound"] <= ref["objective"] + 1e-12
        assert all(r["objective_gap"] >= 0 for r in small_study.records if r["problem"] == name)


def test_first_order_solvers_converge_on_iid(small_study) -> None:
    for r in small_study.records:
        if r["problem"].startswith("iid") and r["solver"] != "cvxpy":
            assert r["converged"], r


def test_erroring_solver_gets_an_error_row() -> None:
    # cvxpy refuses problems above max_variables: a row with `error`, not a crash
    probs = study.problem_set(["iid"], d_out=4, d_in=8)
    res = study.compare(probs, ["fista", "cvxpy[max_variables=10]"], tol=1e-6, max_iter=200, progress=False)
    rows = {r["solver"]: r for r in res.to_records()}
    assert rows["fista"]["error"] is None and rows["fista"]["converged"]
    bad = rows["cvxpy[max_variables=10]"]
    assert "max_variables" in bad["error"] and bad["stop_reason"] == "error" and bad["converged"] is False
    assert bad["n_iter"] is None and res.trace("cvxpy[max_variables=10]", "iid-4x8-s0") is None
    assert res.references["iid-4x8-s0"]["source"] == "fista"


def test_reference_solver_and_options() -> None:
    probs = study.problem_set(["iid"], d_out=3, d_in=6)
    res = study.compare(probs, ["ista", "cvxpy"], tol=1e-6, max_iter=50, reference="cvxpy",
                        solver_options={"ista": {"check_every": 5}}, progress=False)
    assert res.references["iid-3x6-s0"]["source"] == "cvxpy"
    assert res.trace("ista", "iid-3x6-s0").iteration[:2] == [5, 10]


def test_bad_inputs_raise_clear_errors() -> None:
    probs = study.problem_set(["iid"], d_out=2, d_in=3)
    with pytest.raises(ValueError, match="valid solvers: " + ", ".join(fo.solvers.available())):
        study.compare(probs, ["fista", "fsta"], progress=False)
    with pytest.raises(ValueError, match="unique"):
        study.compare(probs, ["fista", "fista"], progress=False)
    with pytest.raises(ValueError, match="max_iter"):
        study.compare(probs, ["fista"], max_iter=-1, progress=False)
    with pytest.raises(ValueError, match="not in the study"):
        study.compare(probs, ["fista"], solver_options={"admm": {}}, progress=False)


def test_solver_spec_parsing() -> None:
    spec = solver_spec("fista[restart=False,precondition=false,check_every=5,rho=None]")
    assert spec.name == "fista" and spec.label == "fista[restart=False,precondition=false,check_every=5,rho=None]"
    assert dict(spec.options) == {"restart": False, "precondition": False, "check_every": 5, "rho": None}
    assert study.split_specs("fista,admm[rho=1.0,alpha=1.5], ista") == ["fista", "admm[rho=1.0,alpha=1.5]", "ista"]
    with pytest.raises(ValueError, match="option=value"):
        Spec.parse("fista[restart]")
    with pytest.raises(ValueError, match="unknown solver 'fsta'"):
        solver_spec("fsta")


def test_one_spec_syntax_for_methods_with_tuples() -> None:
    """The benchmark's method specs use the same syntax; values may be tuples (commas inside)."""
    spec = Spec.parse("fista[warm_start=sparsegpt,quantiles=(0.9, 0.5),rounds=3]")
    assert spec.name == "fista"
    assert dict(spec.options) == {"warm_start": "sparsegpt", "quantiles": (0.9, 0.5), "rounds": 3}


def test_save_and_load_roundtrip(small_study, tmp_path) -> None:
    out = small_study.save(tmp_path / "s")
    recs = json.loads((out / "results.json").read_text())
    assert isinstance(recs, list) and len(recs) == 8
    assert {"solver", "problem", "converged", "n_iter", "seconds", "final_rel_gap"} <= set(recs[0])
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 9 and csv_lines[0].startswith("solver,problem,error,converged")
    md = (out / "results.md").read_text()
    assert md.startswith("| problem | solver |") and md.count("\n") >= 10
    back = study.StudyResult.load(out)
    assert back.records == recs
    assert back.traces("llm-like-4x8-s0").keys() == small_study.traces("llm-like-4x8-s0").keys()
    assert not list(out.glob(".*tmp"))


def test_lambda_path_sparsity_monotone_and_warm_started() -> None:
    prob = fo.make_problem("iid", 4, 8, seed=0)
    path = study.lambda_path(prob, [0.5, 0.01, 1.2, 0.1], "fista", relative=True, tol=1e-8, max_iter=500)
    assert path.lams == [0.5, 0.01, 1.2, 0.1]
    assert path.sparsity[2] == 1.0  # λ ≥ λ_max: W = 0
    by_lam = sorted(zip(path.lams, path.sparsity))
    assert all(a[1] <= b[1] + 1e-12 for a, b in zip(by_lam, by_lam[1:]))
    assert all(path.converged)
    with pytest.raises(ValueError, match="finite and >= 0"):
        study.lambda_path(prob, [-1.0])


def test_bare_problems_are_named() -> None:
    res = study.compare([fo.make_problem("iid", 2, 3)], ["fista"], max_iter=100, tol=1e-6, progress=False)
    assert res.problem_names == ["problem0"]
    assert isinstance(res.runs[0].result.W, torch.Tensor)
    assert not math.isnan(res.records[0]["objective"])
