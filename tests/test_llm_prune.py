"""The block loop on tiny random models: patterns, error correction, resume, save/load, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import fistaopt
import fistaopt.problems
from fistaopt.llm import find_blocks, prune, save_pruned
from fistaopt.llm.model import linear_modules, model_operators
from llm_fixtures import ARCHS, Interrupt, calib, stop_after_block, tiny_model


def _block_weights(model):
    """(block index, name, W (d_out, d_in)) for every linear operator of every block."""
    out = []
    for i, groups in enumerate(model_operators(model)):
        for g in groups:
            for op in g:
                out.append((i, op.name, op.get_weight()))
    return out


def _recording_accumulator(captured):
    """An accumulator class that also keeps every (X, X*) batch it is given, in ``captured``."""

    class Recording(fistaopt.problems.LayerStatsAccumulator):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.xs, self.x_stars, self.ys = [], [], []
            captured.append(self)

        def add(self, X, X_star=None, c=None):
            self.xs.append(X.detach().clone())
            self.x_stars.append(None if X_star is None else X_star.detach().clone())
            super().add(X, X_star, c=c)

        def add_targets(self, Y, X_star):
            self.ys.append(Y.detach().clone())
            self.x_stars.append(X_star.detach().clone())
            super().add_targets(Y, X_star)

    return Recording


def _operator_input(model, name, ids):
    """The input of submodule ``name`` in a plain forward of ``model`` on ``ids``, as (tokens, d_in)."""
    seen = []
    h = model.get_submodule(name).register_forward_pre_hook(lambda mod, a: seen.append(a[0]))
    with torch.no_grad():
        model(ids, use_cache=False)
    h.remove()
    return seen[0].reshape(-1, seen[0].shape[-1])


def _prune_recording(model, ids, **kwargs):
    """``prune(model, ids, **kwargs)`` with a recording accumulator injected: ``(accumulators, report)``."""
    captured = []
    report = prune(model, ids, progress=False, accumulator=_recording_accumulator(captured), **kwargs)
    return captured, report


def _stacked(batches):
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in batches])


def _check_pattern(model, pattern):
    weights = _block_weights(model)
    assert weights
    for _, _, W in weights:
        nz = W != 0
        if pattern == "2:4":
            assert torch.all(nz.view(W.shape[0], -1, 4).sum(-1) <= 2)
        else:
            assert torch.all(nz.sum(1) <= W.shape[1] // 2)
            # random dense weights are nonzero a.s.: the count is exact
            assert torch.all(nz.sum(1) == W.shape[1] // 2)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_baselines_give_exact_patterns(arch, method, pattern):
    model = tiny_model(arch)
    embeddings = model.get_input_embeddings().weight.detach().clone()
    report = prune(model, calib(4, 16), method=method, pattern=pattern, progress=False, batch_size=2)
    _check_pattern(model, pattern)
    n_ops = sum(len(linear_modules(b)) for b in find_blocks(model)[1])
    assert len(report.records) == n_ops
    assert report.totals["sparsity"] == pytest.approx(0.5)
    assert all(r.rel_error is not None and 0 <= r.rel_error < 1.5 for r in report.records)
    # embeddings and lm_head stay dense
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
    assert (model.get_output_embeddings().weight != 0).float().mean() > 0.9


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_fista_gives_exact_patterns_and_beats_magnitude(pattern):
    model = tiny_model("llama")
    report = prune(model, calib(4, 16), method="fista", pattern=pattern, progress=False)
    _check_pattern(model, pattern)
    mag = prune(tiny_model("llama"), calib(4, 16), method="magnitude", pattern=pattern, progress=False)
    # compare block 0 (same inputs in dense mode), operator by operator
    errs = {r.name: r.rel_error for r in report.records if r.block == 0}
    mag_errs = {r.name: r.rel_error for r in mag.records if r.block == 0}
    assert sum(errs.values()) < sum(mag_errs.values())
    assert all(r.n_iter is not None and r.lam is not None for r in report.records)


@pytest.mark.parametrize("block_inputs", ["dense", "pruned"])
def test_wanda_and_sparsegpt_reconstruct_better_than_magnitude(block_inputs):
    totals = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = tiny_model("opt")
        r = prune(model, calib(8, 16), method=method, block_inputs=block_inputs, progress=False)
        totals[method] = sum(rec.rel_error for rec in r.records)
    assert totals["sparsegpt"] < totals["magnitude"]
    assert totals["wanda"] < totals["magnitude"]


def test_error_corrected_statistics_of_o_proj():
    """X* of o_proj is its input computed with pruned q/k/v; X the dense input."""
    dense = tiny_model("llama", scale=5.0)
    model = copy.deepcopy(dense)
    ids = calib(4, 16)
    captured, _ = _prune_recording(model, ids, method="wanda", error_correction=True, batch_size=2)
    acc = captured[1]  # block 0, group 1 = o_proj
    X, X_star = _stacked(acc.xs), _stacked(acc.x_stars)

    def o_proj_input(m):
        return _operator_input(m, "model.layers.0.self_attn.o_proj", ids)

    # independent computation: dense model with only block 0's q/k/v replaced by the pruned ones
    hybrid = copy.deepcopy(dense)
    for name in ("q_proj", "k_proj", "v_proj"):
        getattr(hybrid.model.layers[0].self_attn, name).weight.data.copy_(
            getattr(model.model.layers[0].self_attn, name).weight.data)
    torch.testing.assert_close(X, o_proj_input(dense), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(X_star, o_proj_input(hybrid), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(X, X_star)
    # group 0 (q,k,v) has nothing pruned before it: dense statistics only
    assert all(x is None for x in captured[0].x_stars)


@pytest.mark.parametrize("arch, skip", [("llama", 0), ("llama", 1), ("opt", 0), ("gpt2", 0)])
def test_c_of_the_later_groups_comes_from_the_dense_forwards_outputs(arch, skip, monkeypatch):
    """With error correction the groups after the first (not streaming targets) take
    ``cᵢ = ‖X w₀ᵢᵀ‖²`` from the shared dense forward's outputs (bias excluded, the same tokens
    as ``X``) instead of ``D = XᵀX``; the prune matches the one that streams ``D``."""
    dense = tiny_model(arch, scale=5.0)
    ids = calib(4, 16)
    kw = dict(method="sparsegpt", error_correction=True, batch_size=2, skip_tokens=skip)
    captured, report = _prune_recording(copy.deepcopy(dense), ids, **kw)
    groups = [(gi, g) for block in model_operators(dense) for gi, g in enumerate(block)]
    assert len(captured) == len(groups)
    given = [(acc, g) for acc, (_, g) in zip(captured, groups) if acc.takes_c]
    # every group after a block's first whose d_out sum is not below d_in (else it streams targets)
    assert [acc for acc, _ in given] == [acc for acc, (gi, g) in zip(captured, groups)
                                         if gi > 0 and sum(op.d_out for op in g) >= g.d_in]
    for acc, g in given:
        assert acc.D is None and acc.c is not None
        W0 = torch.cat([op.get_weight() for op in g]).to(torch.float64)
        expected = (_stacked(acc.xs).to(torch.float64) @ W0.T).square().sum(0)
        torch.testing.assert_close(acc.c, expected, rtol=1e-5, atol=1e-8)
    # the same prune with D streamed (no shared dense forward): the same errors
    monkeypatch.setattr("fistaopt.llm.streams.DENSE_INPUT_CACHE_BYTES", 0)
    d_captured, d_report = _prune_recording(copy.deepcopy(dense), ids, **kw)
    assert all(acc.D is not None for acc in d_captured if acc.takes_c)
    for a, b in zip(report.records, d_report.records):
        assert a.rel_error == pytest.approx(b.rel_error, rel=1e-4, abs=1e-7)


def test_the_down_projection_absorbs_attentions_residual_error():
    """Residual correction: the down projection's targets are its dense output ``X W₀ᵀ`` plus
    ``R − R*``, the dense minus the pruned residual stream entering the MLP (attention pruned)."""
    dense = tiny_model("llama", scale=5.0)
    model = copy.deepcopy(dense)
    ids = calib(4, 16)
    captured, _ = _prune_recording(model, ids, method="wanda", error_correction=True, batch_size=2)
    acc = captured[3]  # block 0, group 3 = down_proj
    assert not any(a.ys for a in captured[:3]) and not acc.xs  # given targets: no X for down_proj
    hybrid = copy.deepcopy(dense)  # block 0's attention pruned, its MLP dense
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        getattr(hybrid.model.layers[0].self_attn, name).weight.data.copy_(
            getattr(model.model.layers[0].self_attn, name).weight.data)

    def residual(m):
        return _operator_input(m, "model.layers.0.post_attention_layernorm", ids)

    down_dense = dense.model.layers[0].mlp.down_proj
    expected = down_dense(_operator_input(dense, "model.layers.0.mlp.down_proj", ids)).detach()
    error = residual(dense) - residual(hybrid)
    assert float(error.abs().max()) > 1e-3
    torch.testing.assert_close(_stacked(acc.ys), expected + error, rtol=1e-4, atol=1e-4)
    plain, _ = _prune_recording(copy.deepcopy(dense), ids, method="wanda", error_correction=True, batch_size=2,
                                residual_correction=False)
    assert not any(a.ys for a in plain)


def test_no_error_correction_uses_dense_statistics():
    """Without error correction, o_proj (group 1) sees the dense input although q/k/v are pruned."""
    dense = tiny_model("llama", scale=5.0)
    ids = calib(4, 16)
    off, r_off = _prune_recording(copy.deepcopy(dense), ids, method="wanda", error_correction=False, batch_size=2)
    on, r_on = _prune_recording(copy.deepcopy(dense), ids, method="wanda", error_correction=True, batch_size=2)
    assert r_off.settings["error_correction"] is False and r_on.settings["error_correction"] is True
    o_proj_dense = _operator_input(dense, "model.layers.0.self_attn.o_proj", ids)
    # without: X* = X = the dense input of o_proj (no X* stream at all)
    assert all(x is None for acc in off for x in acc.x_stars)
    torch.testing.assert_close(_stacked(off[1].xs), o_proj_dense, rtol=1e-5, atol=1e-6)
    # with: the same X, but X* differs (it comes through the pruned q/k/v)
    torch.testing.assert_close(_stacked(on[1].xs), o_proj_dense, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(_stacked(on[1].x_stars), o_proj_dense, rtol=1e-3, atol=1e-4)
    o_proj = [(a.rel_error, b.rel_error) for a, b in zip(r_off.records, r_on.records) if a.name == "self_attn.o_proj"]
    assert o_proj and o_proj[0][0] != o_proj[0][1]


@pytest.mark.parametrize("block_inputs", ["dense", "pruned", "corrected"])
def test_resume_after_interruption_gives_identical_weights(tmp_path, block_inputs):
    ids = calib(4, 16)
    kw = dict(method="sparsegpt", block_inputs=block_inputs, progress=False, batch_size=2)
    reference = tiny_model("llama", scale=3.0)
    prune(reference, ids, **kw)

    ckpt = tmp_path / "ckpt"
    interrupted = tiny_model("llama", scale=3.0)
    with pytest.raises(Interrupt):
        prune(interrupted, ids, checkpoint_dir=ckpt, callback=stop_after_block(0), **kw)
    assert (ckpt / "state.json").is_file() and json.loads((ckpt / "state.json").read_text())["next_block"] == 1

    resumed = tiny_model("llama", scale=3.0)  # a fresh dense model, as after a crash
    report = prune(resumed, ids, checkpoint_dir=ckpt, **kw)
    assert len(report.records) == 14 and {r.block for r in report.records} == {0, 1}
    for (k, v), (k2, v2) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    # different settings on the same checkpoint are refused
    with pytest.raises(ValueError, match="different settings"):
        prune(tiny_model("llama", scale=3.0), ids, checkpoint_dir=ckpt, **{**kw, "method": "wanda"})


def test_masks_survive_save_and_load(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("gpt2")
    report = prune(model, calib(4, 16), method="sparsegpt", pattern="2:4", progress=False)
    out = save_pruned(model, None, tmp_path / "pruned", report)
    assert not list(tmp_path.glob(".pruned.tmp-*"))
    loaded = AutoModelForCausalLM.from_pretrained(out)
    for (_, name, W), (_, _, W2) in zip(_block_weights(model), _block_weights(loaded)):
        assert torch.equal(W == 0, W2 == 0), name
        assert torch.equal(W, W2)
    _check_pattern(loaded, "2:4")
    data = json.loads((out / "report.json").read_text())
    assert data["settings"]["pattern"] == "2:4" and len(data["records"]) == 8


def test_report_to_json(tmp_path):
    model = tiny_model("opt")
    report = prune(model, calib(2, 16), method="magnitude", progress=False)
    report.save_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    n_params = sum(W.numel() for _, _, W in _block_weights(model))
    n_zero = sum(int((W == 0).sum()) for _, _, W in _block_weights(model))
    assert data["totals"]["n_operators"] == 12 and data["totals"]["n_params"] == n_params
    assert data["totals"]["sparsity"] == pytest.approx(n_zero / n_params)
    assert data["settings"] == json.loads(json.dumps(report.settings))
    assert data["settings"]["method"] == "magnitude" and data["settings"]["sparsity"] == 0.5
    assert data["settings"]["layer"]["rounds"] == 1 and data["settings"]["nsamples"] == 2  # auto_rounds at 50%
    for rec, saved in zip(report.records, data["records"]):
        assert saved["name"] == rec.name and saved["block"] == rec.block and tuple(saved["shape"]) == rec.shape
        assert saved["rel_error"] == pytest.approx(rec.rel_error) and saved["sparsity"] == pytest.approx(0.5)
    assert data["totals"]["mean_rel_error"] == pytest.approx(sum(r["rel_error"] for r in data["records"]) / 12)


def test_tol_given_to_prune_is_refused_not_ignored():
    """The layer prune runs a fixed number of iterations per solve: a tol would be ignored, so it is refused."""
    model = tiny_model("llama")
    for key, value in (("tol", 1e-8), ("max_iter", 10)):
        with pytest.raises(ValueError, match=f"{key}: set by the layer prune itself"):
            prune(model, calib(2, 8), method="fista", progress=False, **{key: value})
    with pytest.raises(ValueError, match="valid layer options: refit, round_kind, rounds"):
        prune(model, calib(2, 8), method="fista", progress=False, roundz=3)
    with pytest.raises(ValueError, match="unknown option"):
        prune(model, calib(2, 8), method="wanda", progress=False, rounds=3, precondition=False)


def test_layer_and_solver_options_reach_prune_layer(monkeypatch):
    import fistaopt.llm.methods as methods

    seen = []
    real = methods.prune_layer

    def spy(problem, pattern, **kwargs):
        seen.append(kwargs)
        return real(problem, pattern, **kwargs)

    monkeypatch.setattr(methods, "prune_layer", spy)
    report = prune(tiny_model("llama"), calib(2, 8), method="fista", rounds=1, precondition=False, progress=False)
    assert seen and all(k["options"].rounds == 1 and k["precondition"] is False for k in seen)
    assert report.settings["layer"]["rounds"] == 1 and report.settings["solver_options"] == {"precondition": False}


def test_config_object_and_overrides_agree():
    from fistaopt.llm import PruneConfig

    config = PruneConfig(method="sparsegpt", pattern="2:4")
    a, b = tiny_model("llama"), tiny_model("llama")
    ra = prune(a, calib(2, 8), config, progress=False)
    rb = prune(b, calib(2, 8), method="sparsegpt", pattern="2:4", progress=False)
    assert ra.settings == rb.settings and ra.settings["sparsity"] == 0.5
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="cvxpy is a verifier"):
        PruneConfig(method="cvxpy")
    assert PruneConfig.build(config, pattern="2:8").sparsity == 0.75  # the implied sparsity follows the pattern


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(method="obs"), ValueError, "unknown method"),
        (dict(sparsity=1.0), ValueError, "sparsity"),
        (dict(sparsity=-0.1), ValueError, "sparsity"),
        (dict(pattern="2:5"), ValueError, "divisible by 5"),
        (dict(pattern="bogus"), ValueError, "pattern"),
        (dict(block_inputs="mixed"), ValueError, "block_inputs"),
        (dict(block_inputs="corrected", error_correction=False), ValueError, "error_correction"),
        (dict(skip_tokens=-1), ValueError, "skip_tokens"),
        (dict(skip_tokens=8), ValueError, "skip_tokens"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(cache_bytes=-1), ValueError, "cache_bytes"),
        (dict(cache_bytes=1.5), ValueError, "cache_bytes"),
        (dict(warm_start="obs"), ValueError, "warm_start"),
        (dict(method="cvxpy"), ValueError, "verifier"),
        (dict(blocks=[5]), ValueError, "blocks"),
        (dict(stats_dtype="float16"), ValueError, "stats_dtype"),
    ],
)
def test_bad_settings(kwargs, exc, match):
    model = tiny_model("llama")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(exc, match=match):
        prune(model, calib(2, 8), progress=False, **{"method": "wanda", **kwargs})
    for k, v in model.state_dict().items():  # nothing was touched
        assert torch.equal(v, before[k])


@pytest.mark.parametrize(
    "calibration,exc,match",
    [
        (calib(2, 8).float(), TypeError, "dtype"),
        (calib(2, 8)[0], ValueError, "shape"),
        (torch.zeros(0, 8, dtype=torch.long), ValueError, "empty"),
        ([], ValueError, "empty"),
        (calib(2, 8) + 1000, ValueError, "token ids"),
        ("some text", TypeError, "LongTensor"),
    ],
)
def test_bad_calibration(calibration, exc, match):
    with pytest.raises(exc, match=match):
        prune(tiny_model("llama"), calibration, method="wanda", progress=False)


def test_calibration_list_of_batches():
    model = tiny_model("qwen2")
    report = prune(model, [calib(2, 16), calib(3, 8, seed=1)], method="wanda", progress=False, batch_size=2)
    assert report.settings["nsamples"] == 5 and report.settings["seqlen"] == [8, 16]
    _check_pattern(model, "unstructured")


def test_corrected_mode_targets_the_dense_model():
    """In block 1, X is the dense model's input of the operator and X* the pruned model's."""
    dense = tiny_model("llama", scale=5.0)
    model = copy.deepcopy(dense)
    ids = calib(4, 16)
    captured, report = _prune_recording(model, ids, method="wanda", block_inputs="corrected", batch_size=4)
    _check_pattern(model, "unstructured")
    assert report.settings["block_inputs"] == "corrected"
    n_groups = len(captured) // 2
    acc = captured[n_groups]  # block 1, group 0 (q, k, v)

    def q_input(m):
        return _operator_input(m, "model.layers.1.self_attn.q_proj", ids)

    hybrid = copy.deepcopy(dense)  # block 0 pruned, block 1 dense: the pruned model's stream into block 1
    hybrid.model.layers[0].load_state_dict(model.model.layers[0].state_dict())
    X, X_star = _stacked(acc.xs), _stacked(acc.x_stars)
    torch.testing.assert_close(X, q_input(dense), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(X_star, q_input(hybrid), rtol=1e-5, atol=1e-5)


def test_skip_tokens_leaves_first_positions_out_of_the_statistics():
    captured, report = _prune_recording(tiny_model("llama"), calib(4, 16), method="wanda", skip_tokens=2, batch_size=4)
    assert report.settings["skip_tokens"] == 2
    assert all(x.shape[1] == 14 for acc in captured for x in acc.xs)
    assert all(acc.n_tokens == 4 * 14 for acc in captured)


def test_save_problems_writes_loadable_layer_problems(tmp_path):
    model = tiny_model("llama")
    prune(model, calib(4, 16), method="wanda", save_problems=tmp_path / "probs", progress=False)
    files = sorted((tmp_path / "probs").glob("*.pt"))
    assert len(files) == 14  # 2 blocks x 7 operators
    prob = fistaopt.LassoProblem.load(files[0])
    assert prob.metadata["block"] in (0, 1) and prob.H.shape[0] == prob.d_in
    prob64 = prob.to(dtype=torch.float64)  # float32 statistics: certify in float64
    res = fistaopt.solve(prob64.with_lam(0.1 * prob64.lam_max()), "fista", tol=1e-6, max_iter=3000)
    assert res.converged


@pytest.mark.parametrize(
    "pattern, model_type, expected",
    [
        ("unstructured", "llama", "sparsegpt"),  # measured: 55.31 (SparseGPT start) vs 56.46 (Wanda) at 50%
        ("unstructured-layer", "qwen2", "sparsegpt"),
        ("2:4", "llama", "sparsegpt"),  # measured at damping 0.1: 87.25 (SparseGPT start) vs 88.78 (Wanda) at 2:4
        ("2:4", "opt", "sparsegpt"),  # the paper's start for OPT
        ("unstructured", "opt", "sparsegpt"),
    ],
)
def test_auto_warm_start_is_the_measured_best(pattern, model_type, expected):
    from fistaopt.llm.config import PruneConfig

    assert PruneConfig(pattern=pattern, method="fista").for_model(model_type).warm_start == expected
    assert PruneConfig(pattern=pattern, method="fista", warm_start="wanda").for_model(model_type).warm_start == "wanda"
    assert PruneConfig(pattern=pattern, method="sparsegpt").for_model(model_type).warm_start == "none"


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_shared_dense_forward_gives_the_same_weights_with_fewer_forwards(arch, monkeypatch):
    """Error correction reads every later group's X from one dense forward per batch: same result."""
    import fistaopt.llm.streams as streams

    calls = {"n": 0}
    single = streams.input_of

    def counting(*a, **k):
        calls["n"] += 1
        return single(*a, **k)

    monkeypatch.setattr(streams, "input_of", counting)
    ids = calib(nsamples=4, seqlen=16)
    results = {}
    for budget in (0, streams.DENSE_INPUT_CACHE_BYTES):
        monkeypatch.setattr(streams, "DENSE_INPUT_CACHE_BYTES", budget)
        model = tiny_model(arch)
        calls["n"] = 0
        prune(model, ids, method="wanda", sparsity=0.5, batch_size=2, progress=False)
        results[budget] = ([W for _, _, W in _block_weights(model)], calls["n"])
    (w_single, n_single), (w_shared, n_shared) = results[0], results[streams.DENSE_INPUT_CACHE_BYTES]
    assert all(torch.equal(a, b) for a, b in zip(w_single, w_shared))
    assert n_shared < n_single


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_targets_streamed_for_narrow_outputs_give_the_same_prune(arch, monkeypatch):
    """Where Σ d_out < d_in (the down projection) G and c come from Y = X W₀ᵀ instead of C and D:
    the same problems, so the same masks and (float64 statistics) the same weights."""
    import fistaopt.llm.block as block_mod

    ids = calib(nsamples=4, seqlen=16)
    results = {}
    for streamed in (False, True):
        if not streamed:
            monkeypatch.setattr(block_mod, "targets_pay", lambda d_in, d_outs: False)
        else:
            monkeypatch.undo()
        model = tiny_model(arch)
        captured, _ = _prune_recording(model, ids, method="fista", sparsity=0.5, batch_size=2, stats_dtype="float64",
                                       residual_correction=False)  # it streams targets for its operator
        assert any(acc.W_targets is not None for acc in captured) == streamed
        results[streamed] = [W for _, _, W in _block_weights(model)]
    for a, b in zip(results[False], results[True]):
        assert torch.equal(a != 0, b != 0)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_default_damping_is_the_methods_and_an_explicit_one_is_kept():
    from fistaopt.llm.config import DEFAULT_DAMP, PruneConfig

    assert PruneConfig().damping == DEFAULT_DAMP["solver"] == 0.1
    assert PruneConfig(method="sparsegpt").damping == DEFAULT_DAMP["baseline"] == 0.01
    # the default follows the method, also when the method is changed after construction
    assert PruneConfig.build(PruneConfig(), method="wanda").damping == 0.01
    assert PruneConfig.build(PruneConfig(damp=0.3), method="wanda").damping == 0.3
    assert PruneConfig(damp=0).damping == 0.0
    assert PruneConfig().settings()["damp"] == 0.1
    # solvers: lighter above 50% unstructured; N:M and 50% keep 0.1; an explicit damp wins
    assert PruneConfig(sparsity=0.7).damping == DEFAULT_DAMP["solver_sparse"] == 0.03
    assert PruneConfig(sparsity=0.7, pattern="unstructured-layer").settings()["damp"] == 0.03
    assert PruneConfig(pattern="2:4").damping == PruneConfig(sparsity=0.5).damping == 0.1
    assert PruneConfig(sparsity=0.7, damp=0.1).damping == 0.1
    assert PruneConfig(sparsity=0.7, method="sparsegpt").damping == 0.01
    # an allocated operator keeps the model's damping, on either side of 50%
    assert PruneConfig(sparsity=0.5, allocation="owl").for_operator(0.56).damping == 0.1
    assert PruneConfig(sparsity=0.7, allocation="owl").for_operator(0.45).damping == 0.03
    with pytest.raises(ValueError, match="damp must be a number >= 0"):
        PruneConfig(damp=-0.1)
