"""prune_layer, masked_refit and the sparsity patterns on synthetic layer problems."""

from __future__ import annotations

import pytest
import torch

import fistaopt as fo
from fistaopt.layer import LayerOptions, masked_refit, prune_layer, refit_mask
from fistaopt.sparsity import parse_pattern, project, satisfies


def layer_problem(d_out=24, d_in=32, seed=0, damp=0.01):
    """An LLM-like layer problem with its dense weight (float64)."""
    gen = torch.Generator().manual_seed(seed)
    n = 4 * d_in
    scales = 10 ** (torch.rand(d_in, generator=gen, dtype=torch.float64) * 2 - 1)
    X = torch.randn(n, d_in, generator=gen, dtype=torch.float64) * scales
    W0 = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    return fo.LassoProblem.from_layer(W0, X, damp=damp), W0, X


def error(W0, X, W):
    return float(((X @ (W - W0).T) ** 2).sum() / ((X @ W0.T) ** 2).sum())


# ------------------------------------------------------------------ sparsity
@pytest.mark.parametrize("spec,sparsity,kind", [("unstructured", 0.5, "unstructured"), ("2:4", None, "nm"),
                                               ("4:8", None, "nm"), ("unstructured-layer", 0.3, "unstructured")])
def test_parse_pattern(spec, sparsity, kind):
    p = parse_pattern(spec, sparsity)
    assert p.kind == kind
    assert 0 <= p.sparsity < 1


@pytest.mark.parametrize("spec,sparsity,match", [
    ("unstructured", 1.0, "sparsity"), ("unstructured", -0.1, "sparsity"), ("unstructured", None, "sparsity"),
    ("4:4", None, "N < M"), ("0:4", None, "N < M"), ("2:4", 0.3, "implies"), ("blocky", 0.5, "unknown"),
])
def test_parse_pattern_errors(spec, sparsity, match):
    with pytest.raises(ValueError, match=match):
        parse_pattern(spec, sparsity)


def test_project_exact_counts():
    scores = torch.rand(7, 16, generator=torch.Generator().manual_seed(1))
    row = project(scores, "unstructured", 0.5)
    assert (row.sum(1) == 8).all()
    layer = project(scores, "unstructured-layer", 0.25)
    assert int(layer.sum()) == round(0.75 * 7 * 16)
    nm = project(scores, "2:4")
    assert (nm.reshape(7, 4, 4).sum(-1) == 2).all()
    # the kept entries of a row are its largest scores
    assert (scores[row].min() >= 0) and all(
        scores[i][row[i]].min() >= scores[i][~row[i]].max() for i in range(7))
    assert satisfies(row, "unstructured", 0.5) and satisfies(nm, "2:4")
    with pytest.raises(ValueError, match="divisible"):
        project(torch.rand(3, 10), "2:4")


@pytest.mark.parametrize("n,m", [(1, 2), (1, 4), (2, 4), (3, 4), (2, 8), (4, 8), (7, 8), (4, 16), (8, 16)])
def test_nm_projection_keeps_the_n_largest_of_every_group_ties_to_the_lower_position(n, m):
    """Pairwise counting (M <= 8) and topk (larger M) agree with a stable sort: the N largest
    scores of each group, a tie won by the lower position; leading batch dimensions and
    bfloat16 scores too."""
    gen = torch.Generator().manual_seed(n * 100 + m)
    # few distinct values, so most groups hold ties
    scores = torch.randint(0, 4, (3, 5, 4 * m), generator=gen).float()

    def reference(s: torch.Tensor) -> torch.Tensor:
        groups = s.reshape(-1, m)
        order = torch.sort(-groups, dim=-1, stable=True).indices[:, :n]
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order, True).reshape(s.shape)

    for s in (scores, scores.to(torch.bfloat16), scores[0]):
        mask = project(s, f"{n}:{m}")
        assert mask.shape == s.shape and mask.dtype == torch.bool
        assert (mask.reshape(-1, m).sum(-1) == n).all()
        if m <= 8:  # topk's choice among ties is its own; the pairwise rule is exactly the stable sort's
            assert torch.equal(mask, reference(s.float()))
        else:
            groups, kept = s.float().reshape(-1, m), mask.reshape(-1, m)
            lowest_kept = torch.where(kept, groups, torch.inf).min(-1).values
            highest_dropped = torch.where(kept, -torch.inf, groups).max(-1).values
            assert (lowest_kept >= highest_dropped).all()


# ------------------------------------------------------------------ refit
def test_masked_refit_solves_masked_least_squares():
    prob, W0, X = layer_problem(8, 12, seed=3)
    mask = project(torch.rand(8, 12, generator=torch.Generator().manual_seed(0)), "unstructured", 0.5)
    W, it, rel = masked_refit(prob.with_lam(0.0), mask, max_iter=200, tol=1e-12)
    for i in range(8):
        S = mask[i]
        w = torch.linalg.solve(prob.H[S][:, S], prob.G[i, S])
        assert torch.allclose(W[i, S], w, rtol=1e-6, atol=1e-8)
        assert (W[i, ~S] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("iters", [0, 3, 10])
def test_refit_residual_energies_are_the_layer_objective(dtype, iters):
    """The per-row ‖X*wᵀ − Xw₀ᵀ‖² of the start and the result, read off the CG residuals,
    are 2 × the objective computed with a product with H (float64 rounding; float32: its own)."""
    from fistaopt.layer.refit import refit

    prob, W0, X = layer_problem(16, 24, seed=5)
    plain = prob.with_lam(0.0).to(dtype=dtype)
    mask = project(torch.rand(16, 24, generator=torch.Generator().manual_seed(1)), "unstructured", 0.6)
    start = W0.to(dtype) * 0.9
    r = refit(plain, mask, start, max_iter=iters)
    exact = prob.with_lam(0.0)  # float64 reference
    tol = (1e-10 if dtype == torch.float64 else 1e-4) * exact.c
    assert torch.all((r.start_r2 - 2 * exact.objective((start * mask).double(), per_row=True)).abs() <= tol)
    assert torch.all((r.r2 - 2 * exact.objective(r.W.double(), per_row=True)).abs() <= tol)
    assert r.iterations <= iters and (r.r2 <= r.start_r2 + tol).all()


def test_refit_leaves_its_inputs_alone():
    """The in-place CG updates work on copies: the start, the mask and the problem are unchanged."""
    from fistaopt.layer.refit import refit

    prob, W0, X = layer_problem(8, 12, seed=4)
    plain = prob.with_lam(0.0)
    mask = project(torch.rand(8, 12, generator=torch.Generator().manual_seed(2)), "unstructured", 0.5)
    start, H, G = W0.clone(), plain.H.clone(), plain.G.clone()
    r = refit(plain, mask, start, max_iter=5)
    assert torch.equal(start, W0) and torch.equal(plain.H, H) and torch.equal(plain.G, G)
    assert r.W.data_ptr() != start.data_ptr() and (r.W[~mask] == 0).all()


@pytest.mark.parametrize("q", [0.0, 0.1, 0.37, 0.5, 0.6, 0.9, 1.0])
def test_masked_row_quantile_equals_nanquantile(q):
    """The partial-sort quantile gives torch.nanquantile's numbers exactly: ties, empty rows, one entry."""
    from fistaopt.layer.lam import masked_row_quantile

    g = torch.Generator().manual_seed(7)
    for trial in range(40):
        rows, n = int(torch.randint(1, 12, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g))
        values = torch.randn(rows, n, generator=g)
        if trial % 3 == 0:
            values = torch.randint(0, 3, (rows, n), generator=g).float()  # ties
        where = torch.rand(rows, n, generator=g) < float(torch.rand(1, generator=g))
        where[0] = False  # an empty row: NaN
        ref = torch.nanquantile(torch.where(where, values, torch.nan).double(), q, dim=-1)
        got = masked_row_quantile(values, where, q)
        assert got.dtype == torch.float64 and torch.isnan(got[0])
        assert torch.equal(torch.nan_to_num(got, nan=-1.0), torch.nan_to_num(ref, nan=-1.0))
    with pytest.raises(ValueError, match="q must be in"):
        masked_row_quantile(values, where, 1.5)


def test_error_parts_add_up_over_row_blocks():
    """The distributed prune sums the residual and target energies of its row shares."""
    prob, W0, X = layer_problem(10, 16, seed=2)
    W = W0 * project(W0.abs(), "unstructured", 0.5)
    top, bottom = (fo.LassoProblem(H=prob.H, G=prob.G[rows], c=prob.c[rows]) for rows in (slice(0, 4), slice(4, 10)))
    parts = [top.error_parts(W[:4]), bottom.error_parts(W[4:])]
    residual, energy = (sum(float(p[k]) for p in parts) for k in (0, 1))
    assert residual / energy == pytest.approx(float(prob.relative_error(W)), rel=1e-12)


# ------------------------------------------------------------------ prune_layer
@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None),
                                              ("unstructured-layer", 0.5)])
@pytest.mark.parametrize("solver", ["fista", "ista", "admm"])
def test_prune_layer_exact_pattern_and_beats_baselines(pattern, sparsity, solver):
    prob, W0, X = layer_problem()
    pat = parse_pattern(pattern, sparsity)
    colnorm = X.norm(dim=0)
    wanda = W0 * project(W0.abs() * colnorm, pat)
    magnitude = W0 * project(W0.abs(), pat)
    res = prune_layer(prob, pat, solver=solver, warm_start=wanda)
    assert satisfies(res.W, pat)
    assert res.mask.shape == W0.shape and satisfies(res.mask, pat)
    assert ((res.W != 0) <= res.mask).all()
    if pat.scope != "layer":
        assert (res.mask.sum(1) == pat.keep_per_row(W0.shape[1])).all()
    e = error(W0, X, res.W)
    assert e <= error(W0, X, wanda) and e <= error(W0, X, magnitude)
    # never worse than the refit warm start, row by row
    # the start's refit, as prune_layer runs it before its rounds
    refit_ws = refit_mask(prob, wanda != 0, wanda, max_iter=LayerOptions().start_refit_for())
    plain = prob.with_lam(0.0)
    # candidates are compared by objectives from the refit's residuals, c − ⟨w, g⟩ − ⟨w, r⟩: equal up to
    # float64 rounding of terms of the size of c, so ties may go either way within 1e-12 c
    rounding = 1e-12 * plain.c.to(torch.float64)
    if pat.scope == "layer":  # one shared budget: the guarantee holds for the layer as a whole
        assert plain.objective(res.W) <= plain.objective(refit_ws) + float(rounding.sum())
    else:
        assert (plain.objective(res.W, per_row=True) <= plain.objective(refit_ws, per_row=True) + rounding).all()
    assert res.rel_error <= res.info["start_error"] + 1e-12


def test_prune_layer_without_warm_start_searches_lambda():
    prob, W0, X = layer_problem(16, 32, seed=2)
    res = prune_layer(prob, "unstructured", sparsity=0.5)
    assert satisfies(res.W, "unstructured", 0.5)
    assert res.lam.shape == (16,) and (res.lam >= 0).all()
    assert error(W0, X, res.W) < error(W0, X, W0 * project(W0.abs(), "unstructured", 0.5))


def test_prune_layer_xi_rule_and_paper_mode():
    prob, W0, X = layer_problem(16, 32, seed=4)
    wanda = W0 * project(W0.abs() * X.norm(dim=0), "2:4")
    res = prune_layer(prob, "2:4", warm_start=wanda, lam_rule="xi", xi=0.3)
    assert satisfies(res.W, "2:4") and error(W0, X, res.W) <= error(W0, X, wanda)
    paper = prune_layer(prob, "2:4", warm_start=wanda, refit=False, penalty="l1")
    assert satisfies(paper.W, "2:4")


@pytest.mark.parametrize("kwargs,match", [
    (dict(solver="cvxpy"), "verifier"), (dict(solver="newton"), "unknown solver"),
    (dict(lam_rule="magic"), "lam_rule"), (dict(penalty="l2"), "penalty"), (dict(rounds=-1), ">= 0"),
    (dict(start_refit_iter=-1), "start_refit_iter must be an int >= 0"), (dict(start_refit_iter=2.5), "start_refit_iter"),
    (dict(xi=1.5), "xi"), (dict(quantiles=()), "quantiles"),
    (dict(tol=1e-8), "tol: set by the layer prune itself"), (dict(max_iter=5), "max_iter: set by the layer prune"),
    (dict(rho=1.0), "unknown option.*rho.*valid fista options"),
])
def test_prune_layer_bad_input(kwargs, match):
    prob, W0, X = layer_problem(8, 16)
    with pytest.raises(ValueError, match=match):
        prune_layer(prob, "unstructured", sparsity=0.5, **kwargs)


def test_prune_layer_rejects_warm_start_off_pattern_and_bad_shapes():
    prob, W0, X = layer_problem(8, 16)
    with pytest.raises(ValueError, match="warm_start"):
        prune_layer(prob, "unstructured", sparsity=0.5, warm_start=W0)
    with pytest.raises(ValueError, match="divisible"):
        prune_layer(layer_problem(8, 18)[0], "2:4")
    with pytest.raises(TypeError):
        prune_layer(W0, "2:4")


def test_layer_options_object_and_overrides_agree():
    """An options object and the same keyword overrides prune identically; solver options reach the solver."""
    from fistaopt.layer import LayerOptions, split_options

    prob, W0, X = layer_problem(8, 16)
    a = prune_layer(prob, "unstructured", sparsity=0.5, options=LayerOptions(rounds=1, round_iter=5))
    b = prune_layer(prob, "unstructured", sparsity=0.5, rounds=1, round_iter=5)
    assert torch.equal(a.W, b.W) and a.n_iter == b.n_iter
    layer, solver = split_options("admm", {"rounds": 1, "rho": 2.0})
    assert layer == LayerOptions(rounds=1) and solver == {"rho": 2.0}
    with pytest.raises(ValueError, match="callback"):  # the layer prune owns the stopping rule
        prune_layer(prob, "unstructured", sparsity=0.5, callback=lambda iteration, W, info: False)
    unpreconditioned = prune_layer(prob, "unstructured", sparsity=0.5, rounds=1, round_iter=5, precondition=False)
    assert not torch.equal(unpreconditioned.W, b.W)  # the solver option changed the solve


def test_auto_rounds_by_pattern_and_explicit_rounds_win():
    from fistaopt.layer.options import auto_rounds
    from fistaopt.llm.config import PruneConfig
    from fistaopt.sparsity import parse_pattern

    assert auto_rounds(parse_pattern("unstructured", 0.5)) == 1
    assert auto_rounds(parse_pattern("unstructured-layer", 0.3)) == 1
    assert auto_rounds(parse_pattern("unstructured", 0.7)) == 2
    assert auto_rounds(parse_pattern("2:4")) == 2
    assert LayerOptions(rounds=3).rounds_for(parse_pattern("unstructured", 0.5)) == 3
    # the report's settings hold the rounds used, not None: one ℓ0-ADMM round by default, auto_rounds for ℓ1
    assert PruneConfig.build(None, pattern="2:4").settings()["layer"]["rounds"] == 1
    assert PruneConfig.build(None, pattern="2:4", round_kind="l1").settings()["layer"]["rounds"] == 2
    assert PruneConfig.build(None, sparsity=0.5, rounds=0).settings()["layer"]["rounds"] == 0


def test_default_l1_rounds_run_once_at_half_sparsity_twice_above():
    prob, _, _ = layer_problem(24, 48, seed=3)
    half = prune_layer(prob, "unstructured", sparsity=0.5, round_iter=5, round_kind="l1")
    one = prune_layer(prob, "unstructured", sparsity=0.5, round_iter=5, rounds=1, round_kind="l1")
    assert torch.equal(half.W, one.W) and half.n_iter == one.n_iter
    high = prune_layer(prob, "unstructured", sparsity=0.7, round_iter=5, round_kind="l1")
    two = prune_layer(prob, "unstructured", sparsity=0.7, round_iter=5, rounds=2, round_kind="l1")
    assert torch.equal(high.W, two.W) and high.n_iter == two.n_iter


def test_start_refit_runs_start_refit_iter_before_rounds_and_refit_iter_alone(monkeypatch):
    """The start's refit runs ``start_refit_iter`` CG iterations when rounds follow, ``refit_iter``
    when the start is the result; each round's refit runs ``refit_iter``."""
    import fistaopt.layer.prune as layer_prune

    prob, W0, X = layer_problem(24, 48, seed=4)
    warm = W0 * project(W0.abs() * X.norm(dim=0), parse_pattern("unstructured", 0.5))
    calls, real = [], layer_prune.refit

    def counting(problem, mask, W_init=None, *, max_iter=100, **kw):
        calls.append(max_iter)
        return real(problem, mask, W_init, max_iter=max_iter, **kw)

    monkeypatch.setattr(layer_prune, "refit", counting)
    alone = prune_layer(prob, "unstructured", sparsity=0.5, warm_start=warm, rounds=0, refit_iter=9)
    assert calls == [9]
    calls.clear()
    prune_layer(prob, "unstructured", sparsity=0.5, warm_start=warm, rounds=2, refit_iter=9, start_refit_iter=3)
    assert calls == [3, 9, 9]
    calls.clear()
    prune_layer(prob, "unstructured", sparsity=0.5, rounds=1, refit_iter=9, start_refit_iter=3)  # λ-search start
    assert calls == [3, 9]
    # by default: no start refit before the ℓ0-ADMM round, 5 CG iterations before ℓ1 rounds
    calls.clear()
    prune_layer(prob, "unstructured", sparsity=0.5, warm_start=warm, refit_iter=9)
    assert calls == [0, 9]
    calls.clear()
    prune_layer(prob, "unstructured", sparsity=0.5, warm_start=warm, refit_iter=9, round_kind="l1", rounds=1)
    assert calls == [5, 9]
    # without rounds the start is the result: refit as far as refit_iter says
    assert torch.allclose(alone.W, refit_mask(prob, warm != 0, warm, max_iter=9), atol=1e-6)


# ------------------------------------------------------------------ precision of the search
def test_bf16_refit_reports_ieee_residuals():
    """bfloat16 products in the CG steps; the result's residual energies come from a float64
    product, so they are the layer objective of the returned weights, and the refit is as good as fp32's."""
    from fistaopt.layer.refit import refit

    prob, W0, X = layer_problem(32, 64, seed=6)
    plain = prob.with_lam(0.0).to(dtype=torch.float32)
    mask = project(torch.rand(32, 64, generator=torch.Generator().manual_seed(3)), "unstructured", 0.5)
    fp32 = refit(plain, mask, W0.float(), max_iter=10)
    bf16 = refit(plain, mask, W0.float(), max_iter=10, precision="bf16")
    exact = fo.LassoProblem(plain.H.double(), plain.G.double(), plain.c.double())  # plain's numbers in float64
    torch.testing.assert_close(bf16.r2, 2 * exact.objective(bf16.W.double(), per_row=True), rtol=1e-10, atol=0)
    assert torch.equal(bf16.start_r2, fp32.start_r2)  # the start's residual is an IEEE product either way
    assert float(bf16.r2.sum()) <= 1.01 * float(fp32.r2.sum()) and (bf16.W[~mask] == 0).all()


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("2:4", None), ("unstructured", 0.7)])
def test_prune_layer_bf16_search_matches_ieee(pattern, sparsity):
    """The bfloat16 search ends on the exact pattern within 2% of the IEEE search's layer error and says
    which precision it used; the precision is the layer's, not a solver option."""
    from fistaopt.layer.options import check_solver_options

    prob, W0, X = layer_problem(48, 64, seed=2)
    prob32 = prob.to(dtype=torch.float32)
    ieee = prune_layer(prob32, pattern, sparsity=sparsity, precision="fp32")
    low = prune_layer(prob32, pattern, sparsity=sparsity, precision="bf16")
    assert ieee.info["precision"] == "fp32" and low.info["precision"] == "bf16"
    assert satisfies(low.mask, parse_pattern(pattern, sparsity)) and ((low.W != 0) <= low.mask).all()
    assert low.rel_error <= 1.02 * ieee.rel_error
    with pytest.raises(ValueError, match="precision: a layer option"):
        check_solver_options("fista", {"precision": "bf16"})


def test_precision_auto_resolves_by_device_and_dtype(monkeypatch):
    """``auto`` (the default): bf16 for float32 problems on a device with native bfloat16 products,
    IEEE otherwise; float64 problems keep IEEE; an explicit precision wins."""
    from fistaopt.layer import options
    from fistaopt.llm.config import PruneConfig

    assert LayerOptions().precision == "auto" and PruneConfig().settings()["layer"]["precision"] == "auto"
    assert PruneConfig.build(None, precision="fp32").layer.precision == "fp32"
    assert PruneConfig.build(None, stats_dtype="float64").search_precision("cpu") == "fp32"  # float64 keeps IEEE
    assert PruneConfig.build(None, method="sparsegpt").search_precision("cpu") is None  # no ℓ1 search
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True}, raising=False)
    assert options.resolve_precision("auto", "cpu", torch.float32) == "bf16"
    assert options.resolve_precision("auto", "cpu", torch.float64) == "fp32"
    assert options.resolve_precision("auto", "meta", torch.float32) == "fp32"
    assert options.resolve_precision("fp32", "cpu", torch.float32) == "fp32"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True}, raising=False)
    assert options.resolve_precision("auto", "cpu", torch.float32) == "bf16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False},
                        raising=False)
    assert options.resolve_precision("auto", "cpu", torch.float32) == "fp32"
    assert options.resolve_precision("bf16", "cpu", torch.float32) == "bf16"
    prob, _, _ = layer_problem(16, 32, seed=1)
    assert prune_layer(prob.to(dtype=torch.float32), "2:4").info["precision"] == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, tf32, bf16"):
        LayerOptions(precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, tf32, bf16"):
        options.resolve_precision("half", "cpu", torch.float32)


def test_bf16_search_refits_in_ieee(monkeypatch):
    """With a bfloat16 search the refits still run IEEE: every candidate is scored in the problem's precision."""
    from fistaopt.layer import prune as prune_module

    seen = []
    real = prune_module.refit

    def spy(*args, **kwargs):
        seen.append(kwargs.get("precision", "fp32"))
        return real(*args, **kwargs)

    monkeypatch.setattr(prune_module, "refit", spy)
    prob, _, _ = layer_problem(32, 64, seed=4)
    res = prune_layer(prob.to(dtype=torch.float32), "unstructured", sparsity=0.7, precision="bf16", round_kind="l1")
    assert res.info["precision"] == "bf16" and seen == ["fp32"] * 3


def test_refit_returns_the_gradient_everywhere():
    """The refit's residual ``G − WH`` is kept on every entry: the pruned entries' negative gradient too."""
    from fistaopt.layer.refit import refit

    prob, W0, _ = layer_problem(24, 48, seed=8)
    plain = prob.with_lam(0.0)
    mask = project(torch.rand(24, 48, generator=torch.Generator().manual_seed(1)), "unstructured", 0.6)
    r = refit(plain, mask, W0, max_iter=15)
    exact = plain.G - r.W @ plain.H
    torch.testing.assert_close(r.neg_gradient, exact, rtol=0, atol=1e-10 * float(plain.G.abs().max()))
    assert float(exact[~mask].abs().max()) > 1e-3 * float(plain.G.abs().max())  # off the mask it is not zero


def test_layer_residual_and_undamped_residual():
    """``LayerResult.residual`` is the damped problem's ``Σ r²``; removing the ridge gives the undamped one."""
    prob0, W0, _ = layer_problem(24, 48, seed=9, damp=0.0)
    for ridge in ("mean", "diagonal"):
        damped = prob0.with_damping(W0, 0.1, ridge)
        res = prune_layer(damped, "unstructured", sparsity=0.6)
        assert res.residual == pytest.approx(float(damped.error_parts(res.W)[0]), rel=1e-9)
        undamped = prob0.undamped_residual(res.W, W0, res.residual, 0.1, ridge)
        assert undamped == pytest.approx(float(prob0.error_parts(res.W)[0]), rel=1e-9)
        assert undamped < res.residual
    with pytest.raises(ValueError, match="damp must be >= 0"):
        prob0.undamped_residual(W0, W0, 1.0, -0.1)
    with pytest.raises(ValueError, match="ridge must be one of"):
        prob0.undamped_residual(W0, W0, 1.0, 0.1, "rows")
