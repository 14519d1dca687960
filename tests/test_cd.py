"""Coordinate descent specifics, gap-safe screening, the precision-limit stop and ``auto``.

(The oracle and property tests every solver passes, cd included, are in test_solvers.py.)
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from hypothesis import given

import fistaopt as fo
from fistaopt import ConvergenceWarning
from fistaopt.solvers import auto
from fistaopt.solvers.screening import entry_scores, gap_safe_zeros
from strategies import Spec, specs

f64 = torch.float64


@functools.lru_cache(maxsize=None)
def _oracle_W(spec: Spec) -> torch.Tensor:
    return fo.solve(spec.problem(), "cvxpy", tol=1e-10, warn=False).W


@given(spec=specs(max_d=12))
def test_gap_safe_screening_keeps_every_nonzero_of_the_optimum(spec):
    p = spec.problem()
    for iters in (0, 3, 30):  # screen at points of increasing quality
        W = fo.solve(p, "fista", tol=0.0, max_iter=iters, warn=False).W if iters else torch.zeros(p.w_shape, dtype=f64)
        WH = W @ p.H
        zeros = gap_safe_zeros(p, W, WH - p.G, p.duality_gap(W, WH=WH))
        W_opt = _oracle_W(spec)
        # the natural size of a coordinate, |G_ij| / H_jj (W* may itself be ~0 at λ ≈ λ_max)
        live = p.H.diagonal() > 0
        natural = p.G[:, live].abs() / p.H.diagonal()[live]
        scale = max(float(W_opt.abs().max()), float(natural.max()) if natural.numel() else 0.0)
        # CLARABEL is accurate to ~1e-8 relative; a screened entry must be zero there
        assert torch.all(W_opt[zeros].abs() <= 1e-6 * scale), (iters, W_opt[zeros].abs().max())


def test_screening_proves_rows_above_lam_max_zero_at_the_start():
    p = fo.make_problem("iid", 6, 10, seed=2)
    lam = p.lam_max() * torch.tensor([2.0, 2.0, 0.1, 0.1, 0.1, 0.1], dtype=f64)
    p = p.with_lam(lam)
    W = torch.zeros(p.w_shape, dtype=f64)
    zeros = gap_safe_zeros(p, W, -p.G, p.duality_gap(W))
    assert zeros[:2].all()  # gap 0 and a|g| < λ: the whole row is proven zero
    assert not zeros[2:].all()


def test_entry_scores_are_negative_exactly_where_kkt_fails_at_zero():
    p = fo.make_problem("llm-like", 8, 32, lam_ratio=0.3, seed=1)
    W = torch.zeros(p.w_shape, dtype=f64)
    info = p.duality_gap(W)
    fixed = torch.zeros(p.w_shape, dtype=torch.bool)
    fixed[0, 0] = True
    s = entry_scores(p, -p.G, info, fixed)
    violating = info.dual_scale[:, None] * p.G.abs() > p.threshold()
    assert torch.equal((s < 0) & ~fixed, violating & ~fixed)
    assert s[0, 0] == float("inf")


@pytest.mark.parametrize("options", [
    dict(), dict(screening=False), dict(compiled=False), dict(compiled=False, working_set=False),
    dict(compiled=False, screening=False), dict(compiled=False, anderson=0),
    dict(compiled=False, min_working_set=1), dict(compiled=False, block_size=3, working_set=False),
])
def test_variants_reach_the_same_certified_optimum(options):
    # compiled=False: the torch sweeps (other devices) on the CPU
    p = fo.make_problem("llm-like", 24, 64, lam_ratio=0.05, seed=4)
    ref = fo.solve(p, "admm", tol=1e-11, max_iter=50_000)
    r = fo.solve(p, "cd", tol=1e-10, max_iter=50_000, **options)
    assert r.converged and r.rel_gap <= 1e-10, r.summary()
    assert abs(r.objective - ref.objective) <= r.gap + ref.gap + 1e-13 * ref.objective


def test_iterates_in_float64_by_default():
    p = fo.make_problem("iid", 4, 6, dtype=torch.float32)
    r = fo.solve(p, "cd", tol=1e-6)
    assert r.W.dtype == f64 and r.converged
    assert fo.solve(p, "cd", tol=1e-5, dtype=torch.float32).W.dtype == torch.float32


@pytest.mark.parametrize("bad, match", [
    (dict(block_size=0), "block_size must be an int >= 1"),
    (dict(min_working_set=1.5), "min_working_set must be an int >= 1"),
    (dict(anderson=-1), "anderson must be an int >= 0"),
    (dict(working_sets=True), r"unknown option\(s\) \['working_sets'\]"),
])
def test_bad_options(bad, match):
    with pytest.raises(ValueError, match=match):
        fo.solvers.get("cd", **bad)


def test_masked_dead_columns_and_zero_rows_stay_exact():
    p = fo.make_problem("iid", 5, 8, lam_ratio=0.2, seed=5)
    H, G = p.H.clone(), p.G.clone()
    H[3, :] = 0
    H[:, 3] = 0  # a dead input channel
    G[:, 3] = 0
    q = fo.LassoProblem(H, G, p.c, lam=p.lam).with_mask(torch.rand(5, 8, generator=torch.Generator().manual_seed(0)) < 0.7)
    r = fo.solve(q, "cd", tol=1e-10, max_iter=10_000)
    assert r.converged and torch.all(r.W[:, 3] == 0) and torch.all(r.W[~q.mask] == 0)


# ---------------------------------------------------------------------------- precision limit
def test_float32_stall_stops_with_precision_limit():
    # float32 FISTA on ill-conditioned statistics bottoms out near a relative gap of 1e-6;
    # asking for 1e-10 must end with "precision_limit" (and the gap reached), not max_iter
    p = fo.make_problem("llm-like", 32, 128, lam_ratio=1e-3, seed=0)
    with pytest.warns(ConvergenceWarning, match=r"precision_limit.*relative duality gap"):
        r = fo.solve(p, "fista", dtype=torch.float32, tol=1e-10, max_iter=100_000)
    assert r.stop_reason == "precision_limit" and not r.converged
    assert r.n_iter < 100_000 and r.rel_gap > 1e-10


def test_float64_is_never_stopped_by_the_stall_rule():
    p = fo.make_problem("llm-like", 8, 32, lam_ratio=1e-3, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r = fo.solve(p, "ista", tol=1e-15, max_iter=1200, check_every=10)
    assert r.stop_reason in ("max_iter", "converged")


# ---------------------------------------------------------------------------- auto
def test_auto_rule():
    """Each branch of the rule: sparse gradients → cd; dense gradients and well conditioned → fista;
    dense gradients, ill conditioned, sparse sampled solution → cd; dense solution → admm."""
    sparse = fo.make_problem("llm-like", 32, 640, lam_ratio=0.1)
    well_conditioned = fo.make_problem("iid", 32, 640, lam_ratio=1e-3)
    sparse_solution = fo.make_problem("correlated", 32, 64, lam_ratio=0.1)
    dense_solution = fo.make_problem("correlated", 32, 640, lam_ratio=1e-3)
    assert auto.violator_fraction(sparse) <= auto.CD_MAX_VIOLATOR_FRACTION
    for p in (well_conditioned, sparse_solution, dense_solution):
        assert auto.violator_fraction(p) > auto.CD_MAX_VIOLATOR_FRACTION
    assert auto.jacobi_condition(well_conditioned) <= auto.FISTA_MAX_CONDITION < auto.jacobi_condition(dense_solution)
    assert auto.probe_density(sparse_solution) <= auto.CD_MAX_DENSITY < auto.probe_density(dense_solution)
    assert [auto.choose(p) for p in (sparse, well_conditioned, sparse_solution, dense_solution)] == [
        "cd", "fista", "cd", "admm"]
    assert auto.choose(sparse, dtype=torch.float32) == "fista"
    assert auto.choose(sparse, device="meta") == "fista"
    refit = dense_solution.with_lam(0.0).with_mask(torch.ones(32, 640, dtype=torch.bool))
    assert auto.choose(refit) == "admm"


def test_auto_probe_density_matches_the_solution_of_those_rows():
    """The probe's density is that of a certified solve of the same sampled rows (loose tolerance)."""
    p = fo.make_problem("correlated", 40, 64, lam_ratio=0.1, seed=2)
    full = fo.solve(p, "cd", tol=1e-10).W
    rows = torch.linspace(0, 39, auto.PROBE_ROWS).round().long().unique()
    exact = float((full[rows] != 0).float().mean())
    assert abs(auto.probe_density(p) - exact) <= 0.05


@pytest.mark.parametrize("kind, d_in, lam_ratio, picked", [
    ("llm-like", 24, 0.1, "cd"), ("iid", 400, 1e-3, "fista"), ("correlated", 400, 1e-3, "admm")])
def test_auto_solves_with_its_pick(kind, d_in, lam_ratio, picked):
    p = fo.make_problem(kind, 8, d_in, lam_ratio=lam_ratio, seed=3)
    r = fo.solve(p, "auto", tol=1e-9, max_iter=20_000)
    assert r.options["picked"] == picked and r.solver == picked
    assert r.converged and r.rel_gap <= 1e-9
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['rho'\]"):
        fo.solve(p, "auto", rho=1.0)
    with pytest.raises(TypeError, match="problem must be a fistaopt.LassoProblem"):
        fo.solvers.get("auto").solve("not a problem")
