"""LassoProblem: constructors, certificate, λ_max, KKT, derived problems, persistence, input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fistaopt as fo
from fistaopt import DataStatsAccumulator, LassoProblem, LayerStatsAccumulator
from strategies import Spec, specs

f64 = torch.float64


def _rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=f64)


def _raw_primal_dual(X, Y, W, lam):
    """P(W) and D(θ) with θ_i = a_i R_i from raw data, float64, by hand (numpy)."""
    X, Y, W = (np.asarray(a, dtype=np.float64) for a in (X, Y, W))
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), (W.shape[0],))
    R = Y - X @ W.T                                # (n, d_out) residual
    P = 0.5 * (R**2).sum() + (lam[:, None] * np.abs(W)).sum()
    corr = np.abs(X.T @ R).max(axis=0) if X.shape[1] else np.zeros(W.shape[0])  # ‖Xᵀ r_i‖_∞
    a = np.where(corr > 0, np.minimum(1.0, lam / np.where(corr > 0, corr, 1.0)), 1.0)
    theta = a[None, :] * R
    D = 0.5 * (Y**2).sum() - 0.5 * ((Y - theta) ** 2).sum()
    return P, D


# ---------------------------------------------------------------------------- constructors
def test_from_data_statistics():
    X, Y = _rand(0, 30, 7), _rand(1, 30, 4)
    p = LassoProblem.from_data(X, Y, lam=0.3)
    torch.testing.assert_close(p.H, X.T @ X)
    torch.testing.assert_close(p.G, Y.T @ X)
    torch.testing.assert_close(p.c, (Y * Y).sum(0))
    assert p.w_shape == (4, 7) and p.dtype == f64 and float(p.lam) == 0.3
    W = _rand(2, 4, 7)
    want = 0.5 * ((X @ W.T - Y) ** 2).sum() + 0.3 * W.abs().sum()
    assert p.objective(W) == pytest.approx(float(want), rel=1e-12)
    # 1-D Y is one output
    p1 = LassoProblem.from_data(X, Y[:, 0])
    assert p1.w_shape == (1, 7)


def test_from_layer_with_x_star():
    X, W0 = _rand(0, 40, 6), _rand(1, 5, 6)
    Xs = X + 0.1 * _rand(2, 40, 6)
    p = LassoProblem.from_layer(W0, X, Xs, lam=0.2)
    torch.testing.assert_close(p.H, Xs.T @ Xs)
    torch.testing.assert_close(p.G, W0 @ X.T @ Xs)
    torch.testing.assert_close(p.c, ((X @ W0.T) ** 2).sum(0))
    W = _rand(3, 5, 6)
    want = 0.5 * ((Xs @ W.T - X @ W0.T) ** 2).sum() + 0.2 * W.abs().sum()
    assert p.objective(W) == pytest.approx(float(want), rel=1e-11)
    # without X_star: X* = X and W0 itself has zero residual
    q = LassoProblem.from_layer(W0, X)
    assert q.objective(W0) == pytest.approx(0.0, abs=1e-10 * float(q.c.sum()))
    # damping adds the ridge ½δ‖W − W₀‖², δ = damp · mean(diag H): toward W₀, not toward 0
    qd = LassoProblem.from_layer(W0, X, damp=0.01)
    delta = 0.01 * torch.diagonal(q.H).mean()
    torch.testing.assert_close(qd.H, q.H + delta * torch.eye(6, dtype=f64))
    assert qd.objective(W0) == pytest.approx(0.0, abs=1e-10 * float(qd.c.sum()))
    assert qd.objective(W) == pytest.approx(q.objective(W) + 0.5 * float(delta) * float(((W - W0) ** 2).sum()),
                                            rel=1e-10)


def test_layer_accumulator_streaming_equals_one_shot():
    X, W0 = _rand(0, 50, 8), _rand(1, 3, 8)
    Xs = X + 0.05 * _rand(2, 50, 8)
    acc = LayerStatsAccumulator(8, dtype=f64)
    for lo, hi in [(0, 7), (7, 30), (30, 50)]:
        # batches may carry leading dims: (..., d_in)
        acc.add(X[lo:hi].reshape(1, hi - lo, 8), Xs[lo:hi])
    assert acc.n_tokens == 50 and acc.error_corrected
    ps = acc.to_problem(W0, 0.1, normalize=False)
    p1 = LassoProblem.from_layer(W0, X, Xs, lam=0.1)
    for a, b in ((ps.H, p1.H), (ps.G, p1.G), (ps.c, p1.c)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    pn = acc.to_problem(W0, 0.1)  # normalized per token
    torch.testing.assert_close(pn.H, p1.H / 50)
    torch.testing.assert_close(acc.column_norms(), Xs.norm(dim=0))
    # mixing batches with and without X_star is refused
    with pytest.raises(ValueError, match="X_star"):
        acc.add(X[:3])
    acc2 = LayerStatsAccumulator(8, dtype=f64)
    acc2.add(X[:3])
    with pytest.raises(ValueError, match="without X_star"):
        acc2.add(X[:3], Xs[:3])
    with pytest.raises(ValueError, match="no tokens"):
        LayerStatsAccumulator(8).to_problem(W0)


def _assert_per_operator_problems(acc, weights, X, Xs):
    """Each operator's problem from ``acc`` (normalised, damped or not, and a part of its rows)
    equals the one-shot problem of ``X, X*`` and its weight."""
    n = X.shape[0]
    for k, W0 in enumerate(weights):
        stats = acc.for_operator(k)
        for damp in (0.0, 0.01):
            p = stats.to_problem(W0, 0.1, damp=damp)
            ref = LassoProblem.from_layer(W0, X, Xs, lam=0.1)
            ref = LassoProblem(H=ref.H / n, G=ref.G / n, c=ref.c / n, lam=0.1).with_damping(W0, damp)
            for a, b in ((p.H, ref.H), (p.G, ref.G), (p.c, ref.c)):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        part = stats.rows(1, W0.shape[0]).to_problem(W0[1:], 0.1)
        torch.testing.assert_close(part.G, stats.to_problem(W0, 0.1).G[1:], rtol=0, atol=0)
        torch.testing.assert_close(part.c, stats.to_problem(W0, 0.1).c[1:], rtol=0, atol=0)
        with pytest.raises(ValueError, match="operator's shape"):
            stats.to_problem(W0[1:])


def test_layer_accumulator_with_targets_equals_the_one_shot_problem_per_operator_and_rows():
    """G = YᵀX*, c = ‖Y‖² from Y = X W₀ᵀ (targets) is the problem of C and D, operator by operator."""
    X = _rand(0, 60, 8)
    Xs = X + 0.05 * _rand(2, 60, 8)
    W_a, W_b = _rand(1, 3, 8), _rand(3, 2, 8)
    acc = LayerStatsAccumulator(8, dtype=f64, targets=[W_a, W_b])
    for lo, hi in [(0, 25), (25, 60)]:
        acc.add(X[lo:hi].reshape(1, hi - lo, 8), Xs[lo:hi])
    assert acc.error_corrected and acc.n_tokens == 60
    _assert_per_operator_problems(acc, (W_a, W_b), X, Xs)
    with pytest.raises(ValueError, match="for_operator"):
        acc.to_problem(W_a)
    with pytest.raises(ValueError, match="for_operator"):
        acc.rows(0, 1)
    with pytest.raises(ValueError, match="outside"):
        acc.for_operator(0).rows(0, 4)
    with pytest.raises(ValueError, match="targets must be weights"):
        LayerStatsAccumulator(8, targets=[_rand(1, 3, 7)])
    plain = LayerStatsAccumulator(8)
    assert plain.for_operator(1) is plain and plain.rows(0, 2) is plain


def test_layer_accumulator_with_given_c_equals_the_one_shot_problem_per_operator_and_rows():
    """C = XᵀX* streamed and c = ‖X W₀ᵀ‖² given per batch (no D) is the problem of C and D."""
    X = _rand(0, 60, 8)
    Xs = X + 0.05 * _rand(2, 60, 8)
    W_a, W_b = _rand(1, 3, 8), _rand(3, 2, 8)
    W = torch.cat([W_a, W_b])
    acc = LayerStatsAccumulator(8, dtype=f64, output_rows=[3, 2])
    assert acc.takes_c and not LayerStatsAccumulator(8).takes_c
    for lo, hi in [(0, 25), (25, 60)]:
        acc.add(X[lo:hi].reshape(1, hi - lo, 8), Xs[lo:hi], c=(X[lo:hi] @ W.T).square().sum(0))
    assert acc.D is None and acc.error_corrected and acc.n_tokens == 60
    _assert_per_operator_problems(acc, (W_a, W_b), X, Xs)
    with pytest.raises(ValueError, match="for_operator"):
        acc.to_problem(W_a)
    with pytest.raises(ValueError, match="every batch or with none"):
        acc.add(X[:3], Xs[:3])
    with pytest.raises(ValueError, match="one entry per output row"):
        acc.add(X[:3], Xs[:3], c=torch.ones(4, dtype=f64))
    # without output_rows, with targets or without X_star, c is refused
    with pytest.raises(ValueError, match="output_rows"):
        LayerStatsAccumulator(8, dtype=f64).add(X[:3], Xs[:3], c=torch.ones(5, dtype=f64))
    with pytest.raises(ValueError, match="with X_star"):
        LayerStatsAccumulator(8, dtype=f64, output_rows=[5]).add(X[:3], c=torch.ones(5, dtype=f64))
    with pytest.raises(ValueError, match="with X_star"):
        LayerStatsAccumulator(8, dtype=f64, targets=[W_a]).add(X[:3], Xs[:3], c=torch.ones(3, dtype=f64))
    with pytest.raises(ValueError, match="not both"):
        LayerStatsAccumulator(8, targets=[W_a], output_rows=[3])
    with pytest.raises(ValueError, match="output widths"):
        LayerStatsAccumulator(8, output_rows=[3, 0])
    # the first batch without c: D is streamed, and a later c is refused
    d_mode = LayerStatsAccumulator(8, dtype=f64, output_rows=[3, 2])
    d_mode.add(X[:3], Xs[:3])
    assert d_mode.D is not None and d_mode.for_operator(1) is d_mode
    with pytest.raises(ValueError, match="every batch or with none"):
        d_mode.add(X[:3], Xs[:3], c=(X[:3] @ W.T).square().sum(0))


def test_data_accumulator_streaming_equals_one_shot():
    X, Y = _rand(0, 33, 5), _rand(1, 33, 4)
    acc = DataStatsAccumulator(5, 4)
    for lo, hi in [(0, 10), (10, 11), (11, 33)]:
        acc.add(X[lo:hi], Y[lo:hi].numpy())  # numpy batches too
    p = acc.to_problem(0.5)
    q = LassoProblem.from_data(X, Y, lam=0.5)
    for a, b in ((p.H, q.H), (p.G, q.G), (p.c, q.c)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="same number of rows"):
        acc.add(X[:3], Y[:4])
    with pytest.raises(ValueError, match="Y must have last dimension"):
        acc.add(X[:3], Y[:3, :2])


def test_numpy_and_float32_input():
    X, Y = _rand(0, 20, 5), _rand(1, 20, 3)
    pn = LassoProblem.from_data(X.numpy(), Y.numpy(), lam=np.full(3, 0.1))
    assert pn.dtype == f64
    torch.testing.assert_close(pn.H, X.T @ X)
    p32 = LassoProblem.from_data(X.float(), Y.float(), lam=0.1)
    assert p32.dtype == torch.float32 and p32.H.dtype == torch.float32
    W = _rand(2, 3, 5)
    g32 = p32.duality_gap(W.float())
    g64 = LassoProblem.from_data(X, Y, lam=0.1).duality_gap(W)
    assert g32.per_row.dtype == f64  # the certificate is float64 whatever the data dtype
    assert g32.total == pytest.approx(g64.total, rel=1e-5)
    # numpy float32 too, and integer data is promoted
    assert LassoProblem.from_data(X.numpy().astype(np.float32), Y.numpy()).dtype == torch.float32
    assert LassoProblem.from_data(np.ones((4, 2), dtype=np.int64), np.ones((4, 1))).dtype.is_floating_point


# ---------------------------------------------------------------------------- the certificate
@given(specs(), st.integers(0, 3), st.floats(0.0, 2.0))
def test_gap_equals_primal_minus_dual_from_raw_data(spec, w_seed, w_scale):
    X, Y = spec.data()
    p = spec.problem()
    W = w_scale * np.random.default_rng(w_seed).standard_normal(p.w_shape)
    W[np.random.default_rng(w_seed + 1).random(p.w_shape) < 0.3] = 0.0
    info = p.duality_gap(torch.from_numpy(W))
    P, D = _raw_primal_dual(X, Y, W, p.lam.numpy())
    scale = 0.5 * (Y**2).sum() + P + 1e-300
    assert info.objective == pytest.approx(P, rel=1e-9, abs=1e-12 * scale)
    assert info.total == pytest.approx(P - D, abs=1e-9 * scale)
    assert info.total >= 0.0 and torch.all(info.per_row >= 0)


@given(specs(), st.integers(0, 2**31 - 1), st.sampled_from([torch.float32, torch.float64]),
       st.sampled_from([1e-6, 1e-2, 1.0, 1e3]))
def test_gap_is_never_negative(spec, w_seed, dtype, w_scale):
    p = spec.problem().to(dtype=dtype)
    g = torch.Generator().manual_seed(w_seed)
    W = (w_scale * torch.randn(p.w_shape, generator=g, dtype=f64)).to(dtype)
    for Wt in (W, torch.zeros_like(W), W * (torch.rand(p.w_shape, generator=g) < 0.5)):
        info = p.duality_gap(Wt)
        assert info.total >= 0.0 and bool(torch.all(info.per_row >= 0)) and info.relative >= 0.0
        assert math.isfinite(info.total)


def test_gap_zero_at_exact_optimum():
    X, Y = _rand(0, 25, 6), _rand(1, 25, 4)
    p = LassoProblem.from_data(X, Y)
    lm = p.lam_max()
    # λ ≥ λ_max with W = 0: exactly optimal, gap exactly 0
    for lam in (lm, 1.5 * lm, float(lm.max())):
        info = p.with_lam(lam).duality_gap(torch.zeros(p.w_shape, dtype=f64))
        assert info.total == 0.0 and info.relative == 0.0
    # 1-D closed form (dyadic numbers, exact arithmetic): w* = S_λ(g)/h = (3 − 1)/2 = 1
    q = LassoProblem(H=[[2.0]], G=[[3.0]], c=[5.0], lam=1.0)
    assert q.duality_gap(torch.tensor([[1.0]], dtype=q.dtype)).total == 0.0
    assert q.kkt_violation(torch.tensor([[1.0]], dtype=q.dtype)).item() == 0.0
    assert q.duality_gap(torch.tensor([[1.25]], dtype=q.dtype)).total > 0.0


@given(specs())
def test_lam_max_is_where_zero_becomes_optimal(spec):
    X, Y = spec.data()
    p = LassoProblem.from_data(X, Y)
    lm = p.lam_max()
    np.testing.assert_allclose(lm.numpy(), np.abs(Y.T @ X).max(axis=1) if X.shape[1] else 0, rtol=1e-12)
    Z = torch.zeros(p.w_shape, dtype=f64)
    above = p.with_lam(lm).duality_gap(Z)
    assert above.total == 0.0
    assert torch.all(p.with_lam(lm).kkt_violation(Z) == 0)
    below = p.with_lam(0.99 * lm)
    gap_rows = below.duality_gap(Z).per_row
    kkt_rows = below.kkt_violation(Z)
    live = lm > 0
    assert torch.all(gap_rows[live] > 0) and torch.all(kkt_rows[live] > 0)  # W = 0 not optimal
    assert torch.all(gap_rows[~live] == 0)


def test_lam_max_with_mask_and_weights():
    H = torch.eye(3, dtype=f64)
    G = torch.tensor([[4.0, -2.0, 1.0]], dtype=f64)
    p = LassoProblem(H, G, c=[30.0], penalty_weights=[2.0, 1.0, 0.5])
    assert p.lam_max().tolist() == [2.0]  # max(4/2, 2/1, 1/0.5)
    m = p.with_mask(torch.tensor([[False, True, False]]))
    assert m.lam_max().tolist() == [2.0]
    m = p.with_penalty_weights([4.0, 4.0, 1.0]).with_mask(torch.tensor([[True, True, False]]))
    assert m.lam_max().tolist() == [1.0]


def test_kkt_violation_by_hand():
    H = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=f64)
    G = torch.tensor([[1.0, -3.0], [0.2, 0.1]], dtype=f64)
    p = LassoProblem(H, G, c=[20.0, 1.0], lam=torch.tensor([0.5, 1.0], dtype=f64))
    W = torch.tensor([[0.3, 0.0], [0.0, -0.2]], dtype=f64)
    g = (W @ H - G).numpy()
    lam = np.array([0.5, 1.0])
    want = np.array([
        max(abs(g[0, 0] + 0.5), max(0.0, abs(g[0, 1]) - 0.5)),
        max(max(0.0, abs(g[1, 0]) - 1.0), abs(g[1, 1] - 1.0)),
    ])
    np.testing.assert_allclose(p.kkt_violation(W).numpy(), want, rtol=1e-14)
    del lam
    # at the optimum the violation vanishes
    r = fo.solve(p, "fista", tol=1e-14, max_iter=5000, check_every=1, warn=False)
    assert float(p.kkt_violation(r.W).max()) < 1e-6


def test_with_lam_shares_statistics_and_validates():
    p = LassoProblem.from_data(_rand(0, 10, 4), _rand(1, 10, 3), lam=0.1)
    L = p.lipschitz()
    q = p.with_lam(torch.tensor([0.1, 0.2, 0.3], dtype=f64))
    assert q.H is p.H and q.G is p.G and q.c is p.c and q.lipschitz() == L
    assert float(p.lam) == 0.1  # the original is untouched
    assert q.with_lam(torch.ones(5, 3, dtype=f64)).w_shape == (5, 3, 4)
    with pytest.raises(ValueError, match="lam"):
        p.with_lam(-1.0)
    with pytest.raises(ValueError, match="lam"):
        p.with_lam(torch.ones(4, dtype=f64))


@given(specs(), st.integers(0, 100), st.booleans())
def test_jacobi_scaled_invariance(spec, w_seed, weighted):
    p = spec.problem()
    if weighted:
        p = p.with_penalty_weights(torch.linspace(0.5, 2.0, p.d_in, dtype=f64))
    sp, s = p.jacobi_scaled()
    assert torch.all(s > 0)
    d = torch.diagonal(sp.H)
    assert torch.all(((d - 1).abs() < 1e-12) | (d == 0))
    W = torch.randn(p.w_shape, generator=torch.Generator().manual_seed(w_seed), dtype=f64)
    a, b = p.duality_gap(W), sp.duality_gap(W * s)
    assert b.objective == pytest.approx(a.objective, rel=1e-10, abs=1e-13)
    assert b.total == pytest.approx(a.total, rel=1e-8, abs=1e-10 * max(a.objective, 1e-300))
    torch.testing.assert_close(sp.lam_max(), p.lam_max())


def test_save_load_roundtrip(tmp_path):
    p = LassoProblem.from_data(_rand(0, 12, 5), _rand(1, 12, 3), lam=torch.tensor([0.1, 0.2, 0.3], dtype=f64),
                               mask=torch.rand(3, 5, generator=torch.Generator().manual_seed(0)) < 0.6,
                               penalty_weights=torch.linspace(1, 2, 5, dtype=f64))
    path = tmp_path / "prob.pt"
    p.save(path, layer="model.layers.0.q_proj", step=3)
    q = LassoProblem.load(path)
    for name in ("H", "G", "c", "lam", "mask", "penalty_weights"):
        assert torch.equal(getattr(p, name), getattr(q, name)), name
    assert q.metadata == {"layer": "model.layers.0.q_proj", "step": 3}
    W = _rand(3, 3, 5)
    assert q.duality_gap(W).total == p.duality_gap(W).total
    assert not (tmp_path / "prob.pt.tmp").exists()
    with pytest.raises(FileNotFoundError):
        LassoProblem.load(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a fistaopt"):
        LassoProblem.load(tmp_path / "other.pt")


# ---------------------------------------------------------------------------- bad input
def _good():
    X = _rand(0, 10, 4)
    return X.T @ X, _rand(1, 3, 4), torch.ones(3, dtype=f64) * 50


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(H=torch.ones(4, 3)), ValueError, "H must be a square"),
    (dict(G=torch.ones(3, 5, dtype=f64)), ValueError, "G must have shape"),
    (dict(c=torch.ones(4, dtype=f64)), ValueError, "c must have shape"),
    (dict(c=-torch.ones(3, dtype=f64)), ValueError, "c holds squared norms"),
    (dict(H=torch.triu(torch.ones(4, 4, dtype=f64))), ValueError, "H must be symmetric"),
    (dict(H="not an array"), TypeError, "H must be"),
    (dict(G=torch.ones(3, 4, dtype=torch.complex128)), TypeError, "G must be real"),
    (dict(lam=-0.1), ValueError, "lam"),
    (dict(lam=float("inf")), ValueError, "lam"),
    (dict(lam=float("nan")), ValueError, "lam"),
    (dict(lam=torch.tensor([0.1, float("nan"), 0.1])), ValueError, "lam"),
    (dict(lam=torch.tensor([0.1, -0.1, 0.1])), ValueError, "lam"),
    (dict(lam=torch.ones(4)), ValueError, "lam vector must have shape"),
    (dict(lam=torch.ones(2, 4)), ValueError, "batched lam"),
    (dict(lam=torch.ones(2, 2, 3)), ValueError, "lam must be"),
    (dict(lam=True), TypeError, "lam"),
    (dict(mask=torch.ones(3, 5, dtype=torch.bool)), ValueError, "mask must have shape"),
    (dict(mask=torch.ones(4, dtype=torch.bool)), ValueError, "mask must have shape"),
    (dict(mask=torch.ones(3, 4)), TypeError, "mask must be a bool"),
    (dict(penalty_weights=torch.zeros(4)), ValueError, "penalty_weights must be > 0"),
    (dict(penalty_weights=-torch.ones(4)), ValueError, "penalty_weights must be > 0"),
    (dict(penalty_weights=torch.ones(5)), ValueError, "penalty_weights must have shape"),
    (dict(penalty_weights=torch.tensor([1.0, float("inf"), 1.0, 1.0])), ValueError, "penalty_weights"),
])
def test_bad_input_is_refused_with_a_clear_message(kwargs, exc, pattern):
    H, G, c = _good()
    args = dict(H=H, G=G, c=c, lam=0.1)
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        LassoProblem(**args)


@pytest.mark.parametrize("name", ["H", "G", "c"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_statistics_are_refused(name, bad):
    H, G, c = _good()
    args = dict(H=H.clone(), G=G.clone(), c=c.clone())
    args[name].view(-1)[0] = bad
    with pytest.raises(ValueError, match=rf"^{name} .*non-finite"):
        LassoProblem(**args)


@pytest.mark.parametrize("name", ["X", "Y"])
def test_non_finite_data_are_refused(name):
    data = {"X": _rand(0, 10, 4), "Y": _rand(1, 10, 3)}
    data[name][2, 1] = float("nan")
    with pytest.raises(ValueError, match=rf"^{name} .*non-finite.*\(1 NaN\)"):
        LassoProblem.from_data(data["X"], data["Y"])
    with pytest.raises(ValueError, match=name):
        DataStatsAccumulator(4, 3).add(data["X"], data["Y"])


def test_mismatched_data_shapes_are_refused():
    with pytest.raises(ValueError, match="Y must have shape"):
        LassoProblem.from_data(_rand(0, 10, 4), _rand(1, 9, 3))
    with pytest.raises(ValueError, match="X must have shape"):
        LassoProblem.from_data(_rand(0, 10), _rand(1, 10, 3))
    with pytest.raises(ValueError, match="W0 must have shape"):
        LassoProblem.from_layer(_rand(0, 3, 5), _rand(1, 10, 4))
    with pytest.raises(ValueError, match="X_star"):
        LassoProblem.from_layer(_rand(0, 3, 4), _rand(1, 10, 4), _rand(2, 9, 4))
    with pytest.raises(ValueError, match="X_star must have last dimension"):
        LassoProblem.from_layer(_rand(0, 3, 4), _rand(1, 10, 4), _rand(2, 10, 5))
    p = LassoProblem.from_data(_rand(0, 10, 4), _rand(1, 10, 3))
    with pytest.raises(ValueError, match="W must have shape"):
        p.duality_gap(torch.zeros(3, 5, dtype=f64))
    with pytest.raises(ValueError, match="W .*non-finite"):
        p.objective(torch.full((3, 4), float("nan"), dtype=f64))


def test_with_damping_equals_damped_statistics():
    """``with_damping`` is the ridge of ``from_layer_statistics(damp=)``: one place for the damping."""
    g = torch.Generator().manual_seed(0)
    X, Xs = torch.randn(64, 12, generator=g, dtype=torch.float64), torch.randn(64, 12, generator=g, dtype=torch.float64)
    W0 = torch.randn(5, 12, generator=g, dtype=torch.float64)
    H, C, D = Xs.T @ Xs, X.T @ Xs, X.T @ X
    damped = LassoProblem.from_layer_statistics(W0, H, C=C, D=D, damp=0.05)
    again = LassoProblem.from_layer_statistics(W0, H, C=C, D=D).with_damping(W0, 0.05)
    for name in ("H", "G", "c"):
        torch.testing.assert_close(getattr(again, name), getattr(damped, name), rtol=0, atol=0)
    delta = 0.05 * torch.diagonal(H).mean()
    torch.testing.assert_close(again.H - H, delta * torch.eye(12, dtype=torch.float64))
    with pytest.raises(ValueError, match="damp must be >= 0"):
        again.with_damping(W0, -1.0)


def test_diagonal_ridge_pulls_every_column_by_its_own_curvature():
    """``ridge="diagonal"``: the objective gains ``½ Σ_j damp·H_jj ‖W_:j − W₀_:j‖²``, for any W."""
    g = torch.Generator().manual_seed(2)
    Xs = torch.randn(64, 12, generator=g, dtype=torch.float64) * torch.logspace(-1, 1, 12, dtype=torch.float64)
    W0, W = torch.randn(5, 12, generator=g, dtype=torch.float64), torch.randn(5, 12, generator=g, dtype=torch.float64)
    plain = LassoProblem.from_layer_statistics(W0, Xs.T @ Xs)
    diag = plain.with_damping(W0, 0.3, ridge="diagonal")
    ridge = 0.5 * (0.3 * torch.diagonal(plain.H) * (W - W0) ** 2).sum(-1)
    torch.testing.assert_close(diag.objective(W, per_row=True), plain.objective(W, per_row=True) + ridge)
    torch.testing.assert_close(diag.H - plain.H, torch.diag(0.3 * torch.diagonal(plain.H)))
    assert plain.with_damping(W0, 0.3, ridge="mean").objective(W) != diag.objective(W)
    with pytest.raises(ValueError, match="ridge must be one of mean, diagonal"):
        plain.with_damping(W0, 0.3, ridge="row")
    from fistaopt.llm.config import PruneConfig

    assert PruneConfig(ridge="diagonal").settings()["ridge"] == "diagonal"
    with pytest.raises(ValueError, match="ridge must be one of"):
        PruneConfig(ridge="identity")


def test_least_squares_is_the_error_corrected_dense_optimum():
    """``least_squares`` minimises ‖X*Wᵀ − XW₀ᵀ‖² (+ ridge); it is W₀ when X* = X."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(80, 10, generator=g, dtype=torch.float64)
    Xs = X + 0.1 * torch.randn(80, 10, generator=g, dtype=torch.float64)
    W0 = torch.randn(4, 10, generator=g, dtype=torch.float64)
    p = LassoProblem.from_layer(W0, X, Xs)
    expected = torch.linalg.lstsq(Xs, X @ W0.T).solution.T
    torch.testing.assert_close(p.least_squares(), expected)
    same = LassoProblem.from_layer(W0, X, damp=0.01)
    torch.testing.assert_close(same.least_squares(), W0)
    dead = LassoProblem.from_layer(W0, torch.cat([X[:, :9], torch.zeros(80, 1, dtype=torch.float64)], 1))
    with pytest.raises(ValueError, match="not positive definite"):
        dead.least_squares()


@pytest.mark.parametrize("spectrum", ["outlier", "clustered"])
def test_lipschitz_bounds_the_top_eigenvalue(spectrum):
    """Lanczos where its top Ritz value has converged (an activation Gram matrix: a few
    outlier directions), eigvalsh where it has not (a clustered random spectrum): an upper
    bound on λ_max(H) either way, within 1e-6 of it."""
    n = 300
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(4 * n, n, generator=gen, dtype=f64)
    if spectrum == "outlier":
        X[:, :3] *= 30.0  # outlier features, as in LLM activations
    H = X.T @ X
    p = LassoProblem(H=H, G=torch.zeros(2, n, dtype=f64), c=torch.zeros(2, dtype=f64))
    exact = float(torch.linalg.eigvalsh(H)[-1])
    assert exact <= p.lipschitz() <= exact * (1 + 2e-6)
    theta, r = fo.problems.lasso.lanczos_top_eigenvalue(H)
    assert (r <= fo.problems.lasso.LANCZOS_TOL * theta) == (spectrum == "outlier")
