"""Residual correction (fistaopt.llm.residual): the last operator fits the dense block's output."""

from __future__ import annotations

import copy

import pytest
import torch

from fistaopt.llm import PruneConfig, prune
from fistaopt.llm.block import prune_block
from fistaopt.llm.capture import run_block
from fistaopt.llm.model import model_operators
from fistaopt.llm.residual import adds_to_output, last_operator, recorded_calls
from fistaopt.llm.streams import make_stream
from fistaopt.problems import LayerStatsAccumulator
from llm_fixtures import ARCHS, calib, first_block, tiny_model

CPU = torch.device("cpu")
ADDITIVE = [a for a in ARCHS if a != "gemma3"]  # Gemma's MLP output passes a norm before the residual add


def _prunefirst_block(arch, residual_correction, pattern="unstructured", budget=None, monkeypatch=None):
    """Block 0 of a tiny model pruned by fista; its dense copy, calls, inputs and the stream's outputs."""
    if budget is not None:
        import fistaopt.llm.streams as streams
        monkeypatch.setattr(streams, "STEPPED_FORWARD_BYTES", budget)
    block, _, calls, hidden = first_block(arch)
    dense = copy.deepcopy(block)
    stream = make_stream("pruned", list(hidden))
    config = PruneConfig(sparsity=0.5, pattern=pattern, residual_correction=residual_correction,
                         tune_epochs=0).for_model(arch)
    prune_block(block, 0, calls, stream, config, device=CPU, last=False, on_operator=lambda r: None)
    return block, dense, calls, hidden, stream.hidden


def _error(block, dense, calls, hidden):
    out = [run_block(block, c, h, CPU) for c, h in zip(calls, hidden)]
    ref = [run_block(dense, c, h, CPU) for c, h in zip(calls, hidden)]
    return sum(float((o - r).pow(2).sum()) for o, r in zip(out, ref)) / sum(float(r.pow(2).sum()) for r in ref)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_last_operator_adds_to_the_output_except_behind_gemmas_post_norm(arch):
    block, groups, calls, hidden = first_block(arch)
    name = last_operator(groups)
    assert name is not None and name == groups[-1].operators[0].name
    assert adds_to_output(block, name, calls[0], hidden[0], CPU) == (arch != "gemma3")


def test_an_operator_whose_output_is_scaled_does_not_add_to_the_output():
    """A gate on the last operator's output (a mixture of experts' routing weight) fails the check."""
    block, groups, calls, hidden = first_block("llama")
    name = last_operator(groups)
    mlp = block.mlp
    ungated = mlp.forward
    mlp.forward = lambda x: 0.5 * ungated(x)  # instance attribute shadows the class method
    try:
        assert not adds_to_output(block, name, calls[0], hidden[0], CPU)
    finally:
        del mlp.forward
    assert adds_to_output(block, name, calls[0], hidden[0], CPU)


def test_no_operator_to_correct_when_the_last_group_is_the_first_or_holds_several():
    block, groups, _, _ = first_block("llama")
    assert last_operator(groups[:1]) is None
    assert last_operator([groups[0], groups[2]]) is None  # gate and up share the last group


@pytest.mark.parametrize("arch", ADDITIVE)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_residual_correction_lowers_the_block_output_error(arch, pattern):
    """Fitted to the dense block's output, the down projection also cancels attention's error."""
    errors = {}
    for rc in (False, True):
        block, dense, calls, hidden, _ = _prunefirst_block(arch, rc, pattern)
        errors[rc] = _error(block, dense, calls, hidden)
    assert errors[True] < errors[False]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("budget", [0, None])
def test_the_next_blocks_inputs_are_the_pruned_blocks_outputs(arch, budget, monkeypatch):
    """``R* + x* Wᵀ`` (paused forwards, or ``X*`` recomputed) is a forward of the pruned block."""
    block, _, calls, hidden, outputs = _prunefirst_block(arch, True, budget=budget, monkeypatch=monkeypatch)
    for c, h, o in zip(calls, hidden, outputs):
        torch.testing.assert_close(o, run_block(block, c, h, CPU), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_stepped_or_recomputed_forwards_give_the_same_weights(arch):
    import fistaopt.llm.streams as streams

    weights = []
    saved = streams.STEPPED_FORWARD_BYTES
    try:
        for budget in (0, saved):
            streams.STEPPED_FORWARD_BYTES = budget
            model = tiny_model(arch)
            prune(model, calib(nsamples=4, seqlen=16), method="fista", sparsity=0.5, batch_size=2, progress=False)
            weights.append([op.get_weight() for gs in model_operators(model) for g in gs for op in g])
    finally:
        streams.STEPPED_FORWARD_BYTES = saved
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_gemma_keeps_the_plain_target():
    weights = []
    for rc in (False, True):
        model = tiny_model("gemma3")
        prune(model, calib(nsamples=4, seqlen=16), method="fista", sparsity=0.5, batch_size=2, progress=False,
              residual_correction=rc)
        weights.append([op.get_weight() for gs in model_operators(model) for g in gs for op in g])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_the_report_records_the_setting():
    model = tiny_model("llama")
    report = prune(model, calib(nsamples=4, seqlen=16), method="fista", sparsity=0.5, batch_size=2, progress=False,
                   residual_correction=False)
    assert report.settings["residual_correction"] is False


def test_residual_correction_must_be_a_bool():
    with pytest.raises(ValueError, match="residual_correction must be True or False"):
        PruneConfig(residual_correction="yes")


def test_recorded_calls_records_inputs_and_outputs_and_removes_its_hook():
    lin = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with recorded_calls(lin) as calls:
        y = lin(x)
    assert len(calls) == 1 and torch.equal(calls[0][0], x) and torch.equal(calls[0][1], y)
    assert not lin._forward_hooks


def test_given_targets_make_the_target_side():
    """``add_targets(Y, X*)``: ``G = Yᵀ X*``, ``c = ‖Y‖²`` per row, ``H = X*ᵀ X*``; what ``add``
    makes from ``Y = X W₀ᵀ``."""
    g = torch.Generator().manual_seed(0)
    X, Xs = torch.randn(2, 5, 6, generator=g, dtype=torch.float64), torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    W0, E = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    given = LayerStatsAccumulator(6, dtype=torch.float64, targets=[W0])
    plain = LayerStatsAccumulator(6, dtype=torch.float64, targets=[W0])
    for b in range(2):
        given.add_targets(X[b] @ W0.T + E[b], Xs[b])
        plain.add(X[b], Xs[b])
    Y = (X @ W0.T + E).reshape(-1, 3)
    torch.testing.assert_close(given.G, Y.T @ Xs.reshape(-1, 6))
    torch.testing.assert_close(given.c, Y.square().sum(0))
    torch.testing.assert_close(given.H, plain.H)
    assert given.n_tokens == plain.n_tokens == 10
    given_w0 = LayerStatsAccumulator(6, dtype=torch.float64, targets=[W0])
    given_w0.add_targets(X[0] @ W0.T, Xs[0])
    plain_w0 = LayerStatsAccumulator(6, dtype=torch.float64, targets=[W0])
    plain_w0.add(X[0], Xs[0])
    torch.testing.assert_close(given_w0.G, plain_w0.G)


def test_given_targets_need_an_accumulator_with_targets_and_their_width():
    with pytest.raises(ValueError, match="given targets need an accumulator with targets"):
        LayerStatsAccumulator(4).add_targets(torch.randn(5, 2), torch.randn(5, 4))
    acc = LayerStatsAccumulator(4, targets=[torch.randn(2, 4)])
    with pytest.raises(ValueError, match="Y must have last dimension Σ d_out = 2"):
        acc.add_targets(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="Y and X_star must hold the same tokens"):
        acc.add_targets(torch.randn(5, 2), torch.randn(4, 4))
