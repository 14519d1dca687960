"""Magnitude, Wanda and SparseGPT on single weight matrices."""

from __future__ import annotations

import pytest
import torch

from fistaopt.llm.baselines import magnitude, sparsegpt, wanda
from fistaopt.sparsity import parse_pattern


def _problem(d_out=12, d_in=16, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    # LLM-like inputs: per-feature scales (a few large ones) and a shared component
    scales = torch.rand(d_in, generator=g) * 3
    X = torch.randn(n, d_in, generator=g) * scales + 0.3 * torch.randn(n, 1, generator=g)
    W = torch.randn(d_out, d_in, generator=g)
    return W, X


def _err(W, W0, X):
    return float(((X @ W.T - X @ W0.T) ** 2).sum() / ((X @ W0.T) ** 2).sum())


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.3), ("unstructured-layer", 0.6), ("2:4", None), ("4:8", None)])
def test_exact_patterns(pattern, sparsity):
    W, X = _problem()
    pat = parse_pattern(pattern, sparsity)
    for Wp, mask in (magnitude(W, pat), wanda(W, X.norm(dim=0), pat), sparsegpt(W, X.T @ X, pat, blocksize=8)):
        assert mask.dtype == torch.bool and mask.shape == W.shape
        assert torch.all(Wp[~mask] == 0)
        if pat.kind == "nm":
            assert torch.all(mask.view(W.shape[0], -1, pat.m).sum(-1) == pat.n)
        elif pat.scope == "row":
            assert torch.all(mask.sum(1) == round((1 - sparsity) * W.shape[1]))
        else:
            assert int(mask.sum()) == round((1 - sparsity) * W.numel())


def test_wanda_with_unit_norms_is_magnitude_and_keeps_weights():
    W, _ = _problem()
    pat = parse_pattern("unstructured", 0.5)
    Wm, mm = magnitude(W, pat)
    Ww, mw = wanda(W, torch.ones(W.shape[1]), pat)
    assert torch.equal(mm, mw) and torch.equal(Wm, Ww)
    assert torch.equal(Ww[mw], W[mw])  # no weight update


def test_sparsegpt_with_identity_hessian_is_magnitude():
    W, _ = _problem()
    pat = parse_pattern("unstructured", 0.5)
    Ws, ms = sparsegpt(W, torch.eye(W.shape[1]), pat, damp=0.0, blocksize=W.shape[1])
    Wm, mm = magnitude(W, pat)
    assert torch.equal(ms, mm)
    assert torch.allclose(Ws, Wm, atol=1e-6)


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("2:4", None)])
def test_reconstruction_error_ordering(pattern, sparsity):
    W, X = _problem(d_out=32, d_in=32, n=400)
    pat = parse_pattern(pattern, sparsity)
    e_mag = _err(magnitude(W, pat)[0], W, X)
    e_wanda = _err(wanda(W, X.norm(dim=0), pat)[0], W, X)
    e_sgpt = _err(sparsegpt(W, X.T @ X, pat)[0], W, X)
    assert e_sgpt < e_wanda < 0.8 * e_mag


def test_sparsegpt_dead_columns():
    W, X = _problem()
    X[:, 3] = 0
    Wp, mask = sparsegpt(W, X.T @ X, parse_pattern("unstructured", 0.5))
    assert torch.all(Wp[:, 3] == 0)
    assert torch.isfinite(Wp).all()


def test_bad_inputs():
    W, X = _problem(d_in=18)
    pat = parse_pattern("2:4", None)
    with pytest.raises(ValueError, match="divisible"):
        magnitude(W, pat)
    with pytest.raises(ValueError, match="col_norms"):
        wanda(W, torch.ones(5), parse_pattern("unstructured", 0.5))
    with pytest.raises(ValueError, match="H must have shape"):
        sparsegpt(W, torch.eye(5), parse_pattern("unstructured", 0.5))
    with pytest.raises(TypeError, match="W must be"):
        magnitude(W.numpy(), parse_pattern("unstructured", 0.5))
    with pytest.raises(TypeError, match="Pattern"):
        magnitude(W, "unstructured")


def test_solver_warm_start_target_least_squares_or_dense():
    """baseline_target='least-squares': with X* ≠ X the warm start prunes W̃ = G H⁻¹; 'dense' (default): W₀."""
    from fistaopt.llm import baselines as bl
    from fistaopt.llm.config import PruneConfig
    from fistaopt.llm.methods import prune_weight
    from fistaopt.problems import LayerStatsAccumulator

    g = torch.Generator().manual_seed(3)
    X = torch.randn(256, 16, generator=g)
    Xs = X + 0.3 * torch.randn(256, 16, generator=g)
    W0 = torch.randn(6, 16, generator=g)
    acc = LayerStatsAccumulator(16)
    acc.add(X, Xs)
    config = PruneConfig.build(None, sparsity=0.5, warm_start="sparsegpt", rounds=0, refit=False,
                               baseline_target="least-squares")
    damped = acc.to_problem(W0, 0.0, damp=config.damping)
    target = damped.least_squares()
    expected = bl.sparsegpt(target, acc.H, config.pattern_spec, damp=config.damping)[0]
    got = prune_weight("fista", W0, acc, config).W
    assert torch.equal(got != 0, expected != 0)
    torch.testing.assert_close(got, expected)
    dense = bl.sparsegpt(W0, acc.H, config.pattern_spec, damp=config.damping)[0]
    assert not torch.equal(expected != 0, dense != 0)
    default = PruneConfig.build(None, sparsity=0.5, warm_start="sparsegpt", rounds=0, refit=False)
    assert default.baseline_target == "dense"
    torch.testing.assert_close(prune_weight("fista", W0, acc, default).W, dense)
    torch.testing.assert_close(prune_weight("sparsegpt", W0, acc, default).W, dense)
    with pytest.raises(ValueError, match="baseline_target must be one of dense, least-squares"):
        PruneConfig.build(None, baseline_target="w0")
