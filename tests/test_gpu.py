"""The production GPU path: precision modes, batched λ candidates, device placement.

The CPU tests run the same code paths as the CUDA ones (``device="cpu"``, float32
iterates); the CUDA tests skip cleanly without a GPU.  Accuracy bounds are ~3× the value
measured on CPU (torch 2.13, see docs/gpu.md) on ``make_problem("llm-like", 64, 128,
lam_ratio=1e-3, seed=0)`` after 1000 FISTA iterations with float32 iterates, against a
float64 reference solved to relative gap 1e-12:

    mode   certified rel. gap   objective excess   ‖W − W*‖/‖W*‖   support flips
    fp32   2.72e-4              5.8e-11            3.8e-6          0
    tf32   1.57e-1 (emulated)   2.7e-5             4.0e-3          0.2%
    bf16   5.03e-1              1.6e-3             3.0e-2          1.1%

(tf32 was emulated on CPU by rounding both GEMM operands to a 10-bit mantissa; on CPU
the tf32 mode itself runs IEEE fp32.)
"""

from __future__ import annotations

import warnings

import pytest
import torch

import fistaopt as fo
from fistaopt.layer import prune_layer
from fistaopt.solvers.fista import effective_precision
from fistaopt.solvers.prox import PrecisionWarning, matmul_precision

f32, f64 = torch.float32, torch.float64
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# bounds: ~3× the CPU measurement (module docstring)
BOUNDS = {
    "fp32": dict(rel_gap=8e-4, obj_excess=2e-10, w_err=1.2e-5),
    "tf32": dict(rel_gap=0.5, obj_excess=1e-4, w_err=1.2e-2),
    "bf16": dict(rel_gap=1.5, obj_excess=5e-3, w_err=9e-2),
}
ITERS = 1000


@pytest.fixture(scope="module")
def llm():
    """The LLM-like problem and its float64 reference solution."""
    p = fo.make_problem("llm-like", 64, 128, lam_ratio=1e-3, seed=0)
    ref = fo.solve(p, "fista", tol=1e-12, max_iter=50_000, warn=False)
    assert ref.rel_gap <= 1e-11
    return p, ref


def _check_bounds(p, ref, r, mode, same_problem=True):
    """``r`` meets ``mode``'s bounds, certified in float64 on the float64 problem ``p``."""
    b = BOUNDS[mode]
    W = r.W.double().cpu()
    cert = p.duality_gap(W)
    w_err = float((W - ref.W).norm() / ref.W.norm())
    excess = (cert.objective - ref.objective) / ref.objective
    assert cert.relative <= b["rel_gap"], (mode, cert.relative)
    assert -1e-12 <= excess <= b["obj_excess"], (mode, excess)
    assert w_err <= b["w_err"], (mode, w_err)
    if same_problem:  # the reported certificate is a fresh float64 one of the returned W
        assert cert.relative == pytest.approx(r.rel_gap, rel=1e-6)


def _flags() -> dict:
    b = torch.backends
    out = {"prec": torch.get_float32_matmul_precision(), "cuda_tf32": b.cuda.matmul.allow_tf32,
           "cudnn_tf32": b.cudnn.allow_tf32}
    for name, obj in (("cuda_mm", b.cuda.matmul), ("mkldnn_mm", getattr(b.mkldnn, "matmul", None))):
        if hasattr(obj, "fp32_precision"):
            out[name] = obj.fp32_precision
    return out


# ---------------------------------------------------------------------------- precision state
@pytest.mark.parametrize("mode", ["fp32", "tf32", "bf16"])
def test_precision_flags_restored_after_solve_and_after_error(mode):
    p = fo.make_problem("iid", 4, 6, seed=0)
    before = _flags()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrecisionWarning)
        fo.solve(p, "fista", precision=mode, dtype=f32, max_iter=20, warn=False)
        assert _flags() == before

        def boom(*_):
            raise RuntimeError("callback failed")

        with pytest.raises(RuntimeError, match="callback failed"):
            fo.solve(p, "fista", precision=mode, tol=0.0, max_iter=20, check_every=5, callback=boom)
    assert _flags() == before


def test_matmul_precision_restores_a_non_default_state():
    before = _flags()
    try:
        torch.set_float32_matmul_precision("high")
        state = _flags()
        for mode in ("fp32", "tf32", "bf16"):
            with matmul_precision(mode, "cuda"):
                pass
            assert _flags() == state
    finally:
        torch.set_float32_matmul_precision(before["prec"])
        torch.backends.cuda.matmul.allow_tf32 = before["cuda_tf32"]
        for name in ("cuda_mm", "mkldnn_mm"):
            if name in before:
                obj = torch.backends.cuda.matmul if name == "cuda_mm" else torch.backends.mkldnn.matmul
                obj.fp32_precision = before[name]
    assert _flags() == before


def test_effective_precision_table():
    assert effective_precision("fp32", "cpu", f32) == "fp32"
    assert effective_precision("tf32", "cpu", f32) == "fp32"
    assert effective_precision("tf32", "cuda", f32) == "tf32"
    assert effective_precision("tf32", "cuda", f64) == "fp64"
    assert effective_precision("fp32", "cpu", f64) == "fp64"
    assert effective_precision("bf16", "cpu", f32) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        effective_precision("fp16", "cpu", f32)
    with pytest.raises(ValueError, match="precision must be one of"):
        fo.solvers.get("fista", precision="fp16")


def test_bf16_without_native_products_warns(monkeypatch):
    """An explicit ``bf16`` on a CPU without AVX512-BF16/AMX runs emulated bfloat16 GEMMs (34× slower
    than fp32 on one AVX2 thread): the solve says so; with native products it stays quiet."""
    prob = fo.make_problem("llm-like", 16, 32, lam_ratio=1e-2, seed=0).to(dtype=f32)
    solver = fo.solvers.get("fista", precision="bf16", max_iter=5, tol=0.0)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False},
                        raising=False)
    with pytest.warns(PrecisionWarning, match="precision='bf16' on a cpu without native bfloat16 products"):
        solver.solve(prob)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True}, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        assert solver.solve(prob).options["effective_precision"] == "bf16"


# ---------------------------------------------------------------------------- CPU bounds
@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_precision_bounds_cpu(llm, mode):
    p, ref = llm
    r = fo.solve(p, "fista", tol=0.0, max_iter=ITERS, check_every=ITERS, dtype=f32, device="cpu",
                 precision=mode, warn=False)
    assert r.W.dtype == f32 and r.options["effective_precision"] == mode
    _check_bounds(p, ref, r, mode)


def test_tf32_on_cpu_says_it_runs_fp32(llm):
    p, _ = llm
    with pytest.warns(PrecisionWarning, match="tf32.*no effect on cpu.*IEEE fp32"):
        r = fo.solve(p, "fista", tol=0.0, max_iter=200, dtype=f32, device="cpu", precision="tf32", warn=False)
    assert r.options["precision"] == "tf32" and r.options["effective_precision"] == "fp32"
    r32 = fo.solve(p, "fista", tol=0.0, max_iter=200, dtype=f32, device="cpu", precision="fp32", warn=False)
    assert torch.equal(r.W, r32.W)  # the same IEEE computation, bit for bit


def test_float32_cpu_matches_float64(llm):
    """The CPU twin of the CUDA test below: same code path, ``device="cpu"``, float32."""
    p, ref = llm
    r = fo.solve(p.to(dtype=f32), "fista", tol=0.0, max_iter=ITERS, check_every=100, device="cpu", warn=False)
    assert r.W.dtype == f32
    _check_bounds(p, ref, r, "fp32", same_problem=False)  # data rounded to float32 too


# ---------------------------------------------------------------------------- batched λ
@pytest.mark.parametrize("precondition", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_batched_lam_equals_separate_solves_float64(precondition, masked):
    p = fo.make_problem("llm-like", 12, 24, lam_ratio=1e-2, seed=4)
    if masked:
        p = p.with_mask(torch.rand(12, 24, generator=torch.Generator().manual_seed(0)) > 0.3)
    lm = p.lam_max()
    lam = torch.tensor([1e-3, 1e-2, 0.1, 0.5], dtype=f64)[:, None] * lm[None, :]
    lam[2, 3] = 0.9 * lm[3]
    opts = dict(tol=0.0, max_iter=300, check_every=50, precondition=precondition, warn=False)
    rb = fo.solve(p.with_lam(lam), "fista", **opts)
    assert rb.W.shape == (4, 12, 24)
    nnz = set()
    for k in range(4):
        rk = fo.solve(p.with_lam(lam[k]), "fista", **opts)
        torch.testing.assert_close(rb.W[k], rk.W, rtol=0, atol=1e-10)
        torch.testing.assert_close(rb.gap_per_row[k], rk.gap_per_row, rtol=1e-6, atol=1e-14)
        nnz.add(int((rk.W != 0).sum()))
        if masked:
            assert not rb.W[k][~p.mask].any()
    assert len(nnz) > 1  # the candidates really are different problems


# ---------------------------------------------------------------------------- prune_layer
def test_prune_layer_cpu_float32():
    p = fo.make_problem("llm-like", 16, 64, lam_ratio=1e-3, seed=1)
    res = prune_layer(p, "unstructured", sparsity=0.5, device="cpu", dtype=f32, search_steps=3,
                      search_iter=10, rounds=1, round_iter=10)
    assert res.W.shape == (16, 64) and res.W.device.type == "cpu"
    assert float((res.W != 0).double().mean()) <= 0.5 + 1e-9
    assert 0 <= res.rel_error < 1


# ---------------------------------------------------------------------------- CUDA
@cuda
def test_cuda_fista_matches_cpu_float64(llm):
    p, ref = llm
    r = fo.solve(p, "fista", tol=0.0, max_iter=ITERS, check_every=100, dtype=f32, device="cuda", warn=False)
    assert r.W.device.type == "cuda" and r.options["effective_precision"] == "fp32"
    _check_bounds(p, ref, r, "fp32")


@cuda
@pytest.mark.parametrize("mode", ["fp32", "tf32", "bf16"])
def test_cuda_precision_bounds(llm, mode):
    p, ref = llm
    before = _flags()
    r = fo.solve(p, "fista", tol=0.0, max_iter=ITERS, check_every=ITERS, dtype=f32, device="cuda",
                 precision=mode, warn=False)
    assert r.options["effective_precision"] == mode
    _check_bounds(p, ref, r, mode)
    assert _flags() == before


@cuda
def test_cuda_batched_equals_separate():
    p = fo.make_problem("llm-like", 12, 24, lam_ratio=1e-2, seed=4)
    lam = torch.tensor([1e-3, 0.1], dtype=f64)[:, None] * p.lam_max()[None, :]
    opts = dict(tol=0.0, max_iter=300, check_every=50, device="cuda", warn=False)
    rb = fo.solve(p.with_lam(lam), "fista", **opts)
    for k in range(2):
        rk = fo.solve(p.with_lam(lam[k]), "fista", **opts)
        torch.testing.assert_close(rb.W[k], rk.W, rtol=0, atol=1e-9)


@cuda
def test_cuda_prune_layer_runs():
    from fistaopt.llm.baselines import sparsegpt
    from fistaopt.sparsity import parse_pattern

    p = fo.make_problem("llm-like", 32, 128, lam_ratio=1e-3, seed=2)
    W_dense = torch.linalg.solve(p.H, p.G.T).T  # G = W₀ H (no perturbation)
    ws, _ = sparsegpt(W_dense, p.H, parse_pattern("unstructured", 0.5))
    res = prune_layer(p, "unstructured", sparsity=0.5, warm_start=ws, device="cuda", dtype=f32)
    assert res.W.device.type == "cuda"
    assert float((res.W != 0).double().mean()) <= 0.5 + 1e-9
    assert res.rel_error <= float(p.relative_error(ws)) + 1e-9


@cuda
def test_cuda_stepped_forwards_prune_like_recomputed_inputs(monkeypatch):
    """On CUDA the paused block forwards (threads, per-thread current device) give the masks
    of recomputing every group's input; the weights agree to float32 rounding."""
    import fistaopt.llm.streams as streams
    from fistaopt.llm import prune
    from fistaopt.llm.model import model_operators
    from llm_fixtures import calib, tiny_model

    ids = calib(nsamples=4, seqlen=16)
    weights = {}
    for stepped in (False, True):
        if not stepped:
            monkeypatch.setattr(streams, "stepped_forward_budget", lambda device, cache_bytes=None: 0)
        else:
            monkeypatch.undo()
        model = tiny_model("llama")
        prune(model, ids, method="fista", sparsity=0.5, batch_size=2, tune_epochs=0, progress=False, device="cuda")
        weights[stepped] = [op.get_weight().cpu() for gs in model_operators(model) for g in gs for op in g]
    for a, b in zip(weights[False], weights[True]):
        assert torch.equal(a != 0, b != 0)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@cuda
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_cuda_default_prune_tunes_the_blocks_and_keeps_the_pattern(pattern):
    """On a CUDA device the default ``tune_epochs="auto"`` tunes every block once (the
    report says 1 and holds a record per block), in bfloat16 products from compute capability
    8 (``tune_precision="auto"``); the masks keep the exact pattern."""
    from fistaopt.llm import prune
    from fistaopt.llm.model import model_operators
    from fistaopt.solvers.prox import native_bf16
    from llm_fixtures import calib, tiny_model

    model = tiny_model("llama")
    report = prune(model, calib(nsamples=4, seqlen=16), method="fista", sparsity=0.5, pattern=pattern,
                   batch_size=2, progress=False, device="cuda")
    assert report.settings["tune_epochs"] == 1
    assert [t["block"] for t in report.tuning] == list(range(model.config.num_hidden_layers))
    assert {t["products"] for t in report.tuning} == {"bfloat16" if native_bf16("cuda") else "float32"}
    assert all(t["error_after"] <= t["error_before"] for t in report.tuning)
    for op in (op for gs in model_operators(model) for g in gs for op in g):
        w = op.get_weight()
        if pattern == "2:4":
            assert int((w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max()) <= 2
        else:
            assert int((w == 0).sum(1).min()) >= w.shape[1] // 2
