"""The compiled coordinate-descent kernel (fistaopt.solvers.cd_kernel) and cd's CPU path.

The oracle and property tests every solver passes run ``cd`` through this kernel on the
CPU (test_solvers.py); here: the kernel called directly against scikit-learn and the
torch sweeps, masks, per-row λ, penalty weights, warm starts, row independence, threads,
float32, the lazy import and the cache fallback.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given

import fistaopt as fo
from fistaopt.solvers import cd_kernel
from strategies import specs

f64 = torch.float64


def _arrays(p: fo.LassoProblem):
    """The kernel's inputs for ``p`` (no mask, no dead columns): ``H, G, T, fixed, W, Q``."""
    R, d = p.d_out, p.d_in
    H = np.ascontiguousarray(p.H.numpy())
    G = np.ascontiguousarray(p.G.numpy())
    T = np.ascontiguousarray(p.threshold(f64).expand(R, d).numpy())
    fixed = np.zeros((R, d), dtype=bool) if p.mask is None else ~p.mask.numpy().copy()
    return H, G, T, fixed, np.zeros((R, d)), np.zeros((R, d))


def _kernel(p, rows=None, tol=1e-13, rounds=10_000, W0=None, kernel=None):
    H, G, T, fixed, W, Q = _arrays(p)
    if W0 is not None:
        W[:] = W0
        Q[:] = W @ H
    rows = np.arange(p.d_out, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    run = kernel or cd_kernel.solve_rows_serial
    used = run(H, G, T, fixed, W, Q, rows, np.full(len(rows), tol), rounds, 1000)
    return W, Q, used


def test_kernel_matches_sklearn_gram_cd_per_row_lam():
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(0)
    n, d_in, d_out = 80, 20, 5
    X = rng.standard_normal((n, d_in)) * 10 ** rng.uniform(-1, 0, d_in)
    Y = X @ rng.standard_normal((d_in, d_out)) + 0.3 * rng.standard_normal((n, d_out))
    p = fo.LassoProblem.from_data(X, Y)
    lam = p.lam_max() * torch.tensor([0.02, 0.1, 0.3, 0.6, 1.2], dtype=f64)
    p = p.with_lam(lam)
    W, _, _ = _kernel(p)
    for i in range(d_out):
        sk = Lasso(alpha=float(lam[i]) / n, fit_intercept=False, precompute=True, tol=1e-14,
                   max_iter=1_000_000).fit(X, Y[:, i])
        np.testing.assert_allclose(W[i], sk.coef_, rtol=0, atol=1e-7)
    assert np.all(W[4] == 0)  # λ > λ_max: the row is exactly zero
    assert p.duality_gap(torch.from_numpy(W)).relative <= 1e-10


@given(spec=specs(max_d=12))
def test_compiled_and_torch_paths_reach_the_same_optimum(spec):
    p = spec.problem()
    a = fo.solve(p, "cd", tol=1e-10, max_iter=50_000, warn=False)
    b = fo.solve(p, "cd", tol=1e-10, max_iter=50_000, warn=False, compiled=False)
    assert a.converged and b.converged, (a.summary(), b.summary())
    assert abs(a.objective - b.objective) <= a.gap + b.gap + 1e-13 * abs(b.objective)


def test_masks_and_penalty_weights_against_cvxpy():
    p = fo.make_problem("llm-like", 6, 24, lam_ratio=0.05, seed=2)
    gen = torch.Generator().manual_seed(1)
    p = p.with_mask(torch.rand(p.w_shape, generator=gen) < 0.7)
    p = p.with_penalty_weights(torch.rand(p.d_in, generator=gen, dtype=f64) * 2 + 0.1)
    p = p.with_lam(p.lam_max() * torch.linspace(0.01, 0.5, p.d_out, dtype=f64))
    W, Q, _ = _kernel(p)
    assert np.all(W[~p.mask.numpy()] == 0)
    np.testing.assert_allclose(Q, W @ p.H.numpy(), rtol=0, atol=1e-9 * np.abs(Q).max())
    ref = fo.solve(p, "cvxpy", tol=1e-10, warn=False)
    r = fo.solve(p, "cd", tol=1e-10, max_iter=50_000)
    assert r.converged and torch.all(r.W[~p.mask] == 0)
    assert abs(p.objective(torch.from_numpy(W)) - ref.objective) <= 1e-7 * ref.objective
    torch.testing.assert_close(r.W, torch.from_numpy(W), rtol=0, atol=1e-6)


def test_rows_are_independent_one_row_equals_many():
    p = fo.make_problem("llm-like", 12, 40, lam_ratio=0.03, seed=3)
    W_all, _, _ = _kernel(p)
    for i in (0, 5, 11):
        W_one, _, _ = _kernel(p, rows=[i])
        np.testing.assert_array_equal(W_one[i], W_all[i])  # same operations, bit for bit
        assert np.all(np.delete(W_one, i, axis=0) == 0)  # rows not asked for are untouched


def test_parallel_kernel_equals_serial():
    p = fo.make_problem("llm-like", 16, 48, lam_ratio=0.05, seed=4)
    serial, _, _ = _kernel(p)
    parallel, _, _ = _kernel(p, kernel=cd_kernel.solve_rows)
    np.testing.assert_array_equal(parallel, serial)


def test_warm_start_at_the_optimum_stops_at_once():
    p = fo.make_problem("llm-like", 8, 32, lam_ratio=0.05, seed=5)
    W_opt, _, _ = _kernel(p)
    W, _, used = _kernel(p, W0=W_opt)
    assert np.all(used == 1)  # one round: nothing moved beyond tol, nothing entered
    np.testing.assert_allclose(W, W_opt, rtol=0, atol=1e-12 * np.abs(W_opt).max())
    cold = fo.solve(p, "cd", tol=1e-10, max_iter=50_000)
    warm = fo.solve(p, "cd", tol=1e-10, max_iter=50_000, W0=cold.W)
    assert warm.converged and warm.n_iter == 10 and len(warm.trace) == 1  # the first check


def test_budget_of_rounds_is_respected_and_reported():
    p = fo.make_problem("llm-like", 8, 64, lam_ratio=0.01, seed=6)
    _, _, used = _kernel(p, rounds=1)
    assert np.all(used == 1)
    r = fo.solve(p, "cd", tol=0.0, max_iter=3, warn=False, certify=False)
    assert r.n_iter == 3 and r.stop_reason == "max_iter"


def test_float32_iterates_are_swept_in_float64_and_rounded():
    p = fo.make_problem("correlated", 32, 48, lam_ratio=0.1, seed=1)
    W64, _, _ = _kernel(p)
    r = fo.solve(p, "cd", tol=1e-5, dtype=torch.float32)
    assert r.W.dtype == torch.float32 and r.converged, r.summary()
    torch.testing.assert_close(r.W, torch.from_numpy(W64).float(), rtol=0, atol=1e-3 * float(np.abs(W64).max()))


def test_time_limit_is_looked_at_between_row_chunks():
    p = fo.make_problem("llm-like", 256, 512, lam_ratio=1e-3, seed=0)
    r = fo.solve(p, "cd", tol=1e-14, max_iter=10**6, time_limit=0.05, warn=False)
    assert r.stop_reason == "time_limit" and r.seconds < 5


def test_bad_compiled_option():
    with pytest.raises(ValueError, match="compiled must be True or False"):
        fo.solvers.get("cd", compiled=1)


def _python(code: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **env}, check=True)
    return out.stdout.strip()


def test_importing_fistaopt_does_not_import_numba():
    assert _python("import sys, fistaopt; print('numba' in sys.modules)") == "False"


def test_no_cache_where_numba_cannot_write_one():
    # no cache locator usable (as in a read-only install without a user cache folder):
    # the kernels are compiled without a cache and still run
    code = ("from fistaopt.solvers import cd_kernel; import fistaopt as fo; "
            "p = fo.make_problem('iid', 3, 5, lam_ratio=0.1); "
            "print(cd_kernel.CACHE, fo.solve(p, 'cd', tol=1e-10).converged)")
    assert _python(code, NUMBA_CACHE_LOCATOR_CLASSES="IPythonCacheLocator") == "False True"
    assert _python(code) == "True True"
