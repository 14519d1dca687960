"""Paused block forwards (fistaopt.llm.stepped_forward): same inputs as recomputing, fewer forwards, clean ends."""

from __future__ import annotations

import threading

import pytest
import torch

from fistaopt.llm import find_blocks, prune
from fistaopt.llm.capture import input_of, run_block
from fistaopt.llm.model import model_operators
from fistaopt.llm.stepped_forward import SteppedForwards, held_bytes
from llm_fixtures import ARCHS, calib, first_block, tiny_model


def _live_threads():
    return [t for t in threading.enumerate() if t.name == "fistaopt-stepped-forward"]


def _hooks(block):
    return sum(len(m._forward_pre_hooks) for m in block.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_stepped_inputs_and_outputs_equal_the_recomputed_ones(arch):
    """Weights changed between steps are seen by the rest of every forward, as if it were rerun."""
    block, groups, calls, hidden = first_block(arch)
    cpu = torch.device("cpu")
    forwards = SteppedForwards(block, [g.operators[0].module for g in groups], calls, hidden, cpu)
    try:
        for k, g in enumerate(groups):
            stepped = forwards.step()
            for b, h in enumerate(hidden):
                assert torch.equal(stepped[b], input_of(block, g.operators[0].module, calls[b], h, cpu)), (k, b)
            with torch.no_grad():  # "prune" the group: the later steps must see it
                for op in g:
                    W = op.get_weight()
                    op.set_weight(W * (torch.rand_like(W) > 0.5))
        outputs = forwards.finish()
    finally:
        forwards.close()
    for b, h in enumerate(hidden):
        assert torch.equal(outputs[b], run_block(block, calls[b], h, cpu))
    assert not _live_threads() and _hooks(block) == 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["fista", "sparsegpt"])
def test_prune_gives_the_same_weights_stepped_or_recomputed(arch, method, monkeypatch):
    import fistaopt.llm.streams as streams

    ids = calib(nsamples=4, seqlen=16)
    forwards = {"n": 0}
    weights = {}
    for budget in (0, streams.STEPPED_FORWARD_BYTES):
        monkeypatch.setattr(streams, "STEPPED_FORWARD_BYTES", budget)
        model = tiny_model(arch)
        handles = [blk.register_forward_pre_hook(lambda *a: forwards.__setitem__("n", forwards["n"] + 1))
                   for blk in find_blocks(model)[1]]
        forwards["n"] = 0
        prune(model, ids, method=method, sparsity=0.5, batch_size=2, progress=False)
        for h in handles:
            h.remove()
        weights[budget] = ([op.get_weight() for gs in model_operators(model) for g in gs for op in g], forwards["n"])
    (w_re, n_re), (w_step, n_step) = weights[0], weights[streams.STEPPED_FORWARD_BYTES]
    assert all(torch.equal(a, b) for a, b in zip(w_re, w_step))
    assert n_step < n_re
    assert not _live_threads()


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_cache_bytes_bounds_what_error_correction_holds(arch, monkeypatch):
    """``cache_bytes`` replaces both budgets: 0 holds nothing (every group recomputes its
    inputs), a budget that fits the paused forwards but not the dense inputs as well holds
    only the former, the default holds both; the weights are the same every time."""
    import fistaopt.llm.streams as streams

    ids = calib(nsamples=4, seqlen=16)
    seen: dict = {}
    start = streams.PrunedStream.start_pruned_forwards

    def recording(self, work, groups):
        start(self, work, groups)
        seen["held"] = work.held
    monkeypatch.setattr(streams.PrunedStream, "start_pruned_forwards", recording)
    share = streams.PrunedStream.share_dense_forward

    def recording_share(self, work, groups):
        share(self, work, groups)
        seen.setdefault("stepped", []).append(work.pruned_forwards is not None)
        seen.setdefault("cached", []).append(bool(work.cached_groups))
    monkeypatch.setattr(streams.PrunedStream, "share_dense_forward", recording_share)

    def run(cache_bytes):
        seen.clear()
        model = tiny_model(arch)
        prune(model, ids, method="fista", sparsity=0.5, batch_size=2, progress=False, cache_bytes=cache_bytes)
        return [op.get_weight() for gs in model_operators(model) for g in gs for op in g], dict(seen)

    w_default, default = run(None)
    assert all(default["stepped"]) and all(default["cached"])
    w_zero, zero = run(0)
    assert not any(zero["stepped"]) and not any(zero["cached"])
    w_forwards, only_forwards = run(default["held"])  # room for the paused forwards, none left
    assert all(only_forwards["stepped"]) and not any(only_forwards["cached"])
    assert all(torch.equal(a, b) for a, b in zip(w_default, w_zero))
    assert all(torch.equal(a, b) for a, b in zip(w_default, w_forwards))
    assert not _live_threads()


def test_an_error_in_a_forward_reaches_the_caller_and_ends_every_thread():
    block, groups, calls, hidden = first_block("llama")

    def fail(mod, args):
        raise ValueError("boom in the forward")

    last = groups[-1].operators[0].module
    forwards = SteppedForwards(block, [g.operators[0].module for g in groups[:-1]], calls, hidden, torch.device("cpu"))
    handle = last.register_forward_pre_hook(fail)
    try:
        for _ in groups[:-1]:
            forwards.step()
        with pytest.raises(ValueError, match="boom"):
            forwards.finish()
    finally:
        handle.remove()
        forwards.close()
    assert not _live_threads() and _hooks(block) == 0


def test_close_before_the_end_ends_the_paused_forwards():
    block, groups, calls, hidden = first_block("llama")
    forwards = SteppedForwards(block, [g.operators[0].module for g in groups], calls, hidden, torch.device("cpu"))
    forwards.step()
    assert len(_live_threads()) == len(hidden)
    forwards.close()
    forwards.close()  # idempotent
    assert not _live_threads() and _hooks(block) == 0
    with pytest.raises(RuntimeError):
        forwards.finish()


def test_a_module_never_called_is_named():
    block, groups, calls, hidden = first_block("llama")
    stray = torch.nn.Linear(4, 4)
    forwards = SteppedForwards(block, [groups[0].operators[0].module, stray], calls, hidden, torch.device("cpu"))
    try:
        forwards.step()
        with pytest.raises(RuntimeError, match="Linear was not called"):
            forwards.step()
    finally:
        forwards.close()
    assert not _live_threads()


def test_held_bytes_counts_tokens_hidden_and_group_widths():
    hidden = [torch.zeros(2, 16, 32), torch.zeros(1, 16, 32)]
    assert held_bytes(hidden, [32, 64]) == 3 * 48 * (32 + 96) * 4
    assert held_bytes([], [32]) == 0


def test_cuda_device_without_index_is_the_callers_current(monkeypatch):
    """``torch.cuda.set_device`` refuses a bare ``cuda``: the forward threads get the caller's index."""
    from fistaopt.llm.stepped_forward import with_index

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert with_index(torch.device("cuda")) == torch.device("cuda", 3)
    assert with_index(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert with_index(torch.device("cpu")) == torch.device("cpu")
