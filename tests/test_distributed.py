"""Pruning with 2 processes (gloo, CPU) equals pruning in one; resume across world sizes; failures stop all.

Why the weights may differ at all: the distributed sums ``H = Σ_r H_r`` add the same
per-batch terms in another order (float rounding), and the refit's conjugate gradients
(:mod:`fistaopt.layer.refit`) stop when the worst row *of the rows they are given*
converges, so a shard of rows may stop at another iteration than the whole operator.
Measured on these tiny models (docs/scaling.md): identical masks everywhere; Wanda
weights bit-identical, SparseGPT within 7e-6 and FISTA within 4e-4 of the largest
weight of the operator — as much as running one process with 2 threads instead of 1
changes FISTA's weights.  The tests ask for identical masks and ``WEIGHT_RTOL``; whole
blocks per rank (``parallel="blocks"``) compute what one process computes: bit-identical.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing import ProcessRaisedException

from fistaopt.llm import prune
from fistaopt.llm.distributed import Communicator, launch, row_shares
from llm_fixtures import calib, tiny_model

#: Largest weight difference between 1 and 2 ranks, relative to the operator's largest weight.
WEIGHT_RTOL = 1e-3

CASES = {  # two model families; solver and baselines; patterns; modes
    "llama-fista": ("llama", dict(method="fista")),
    "opt-fista": ("opt", dict(method="fista")),
    # outputs in the statistics' dtype: the later groups take c from the shared forward (no D)
    "llama-fista-float64-model": ("llama", dict(method="fista", model_dtype=torch.float64)),
    "opt-sparsegpt-2:4": ("opt", dict(method="sparsegpt", pattern="2:4")),
    "llama-wanda-dense-noec": ("llama", dict(method="wanda", block_inputs="dense", error_correction=False)),
    "opt-fista-layer": ("opt", dict(method="fista", pattern="unstructured-layer", block_inputs="dense")),
    "llama-fista-parallel-blocks": ("llama", dict(method="fista", block_inputs="dense", parallel="blocks")),
    "opt-sparsegpt-parallel-blocks": ("opt", dict(method="sparsegpt", block_inputs="dense", parallel="blocks")),
}
COMMON = dict(stats_dtype="float64", batch_size=2, progress=False, tune_epochs=0)  # the tuning runs in one process


def _ids() -> torch.Tensor:
    return calib(nsamples=8, seqlen=16)


def _pruned(arch: str, comm: Communicator | None = None, model_dtype: torch.dtype | None = None, **kwargs):
    model = tiny_model(arch, scale=3.0)
    if model_dtype is not None:
        model.to(model_dtype)
    report = prune(model, _ids(), **({"comm": comm} if comm is not None else {}), **COMMON, **kwargs)
    return model, report


def _run_cases(comm: Communicator, out: str) -> None:
    torch.set_num_threads(1)
    for name, (arch, kwargs) in CASES.items():
        model, report = _pruned(arch, comm, **kwargs)
        if comm.is_main:
            torch.save({"state": model.state_dict(), "report": report.to_dict()}, Path(out) / f"{name}.pt")


def _weights_agree(got: dict, want: dict) -> float:
    """Same zeros in every 2-D weight; returns the largest difference relative to the weight's largest entry."""
    worst = 0.0
    for key, w in want.items():
        if w.ndim != 2 or not w.is_floating_point():
            continue
        assert torch.equal(got[key] == 0, w == 0), f"masks differ in {key}"
        worst = max(worst, float((got[key] - w).abs().max() / w.abs().max()))
    return worst


def test_row_shares_are_balanced_and_cover_all_rows():
    assert row_shares(10, 3) == [4, 3, 3]
    assert row_shares(2, 4) == [1, 1, 0, 0]
    comm = Communicator(1, 3)
    assert comm.local_indices(10) == range(4, 7)
    with pytest.raises(ValueError, match="2 calibration batches cannot feed 3 ranks"):
        comm.local_batches([torch.zeros(1, 4)] * 2)


def test_two_ranks_prune_as_one(tmp_path, one_thread):
    launch(_run_cases, 2, (str(tmp_path),), timeout_s=120)
    reference = {name: _pruned(arch, **kwargs) for name, (arch, kwargs) in CASES.items()}
    for name, (arch, kwargs) in CASES.items():
        model, report = reference[name]
        got = torch.load(tmp_path / f"{name}.pt", weights_only=False)
        # whole blocks per rank compute exactly what one process computes
        tol = 0.0 if kwargs.get("parallel") == "blocks" else WEIGHT_RTOL
        assert _weights_agree(got["state"], model.state_dict()) <= tol, name
        dist_totals = got["report"]["totals"]
        assert dist_totals["sparsity"] == pytest.approx(report.totals["sparsity"], abs=1e-12)
        assert dist_totals["mean_rel_error"] == pytest.approx(report.totals["mean_rel_error"], rel=1e-6)
        info = dist_totals["distributed"]
        assert info["world_size"] == 2 and len(info["rank_seconds"]) == 2
        kinds = ("broadcast",) if kwargs.get("parallel") == "blocks" else ("all_reduce", "all_gather")
        assert all(info["bytes_sent"][k] > 0 for k in kinds), info["bytes_sent"]
        assert [(r["block"], r["name"]) for r in got["report"]["records"]] == [(r.block, r.name) for r in report.records]
        assert "distributed" not in report.totals


def test_parallel_blocks_needs_dense_inputs_and_no_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="parallel='blocks' needs block_inputs='dense'"):
        _pruned("llama", method="wanda", parallel="blocks")
    with pytest.raises(ValueError, match="does not write checkpoints"):
        _pruned("llama", method="wanda", block_inputs="dense", parallel="blocks", checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="parallel must be 'rows' or 'blocks'"):
        _pruned("llama", method="wanda", parallel="layers")


def _agree_and_dissent(comm: Communicator, out: str) -> None:
    """Rank 1 finds the down projection not additive: no rank may use residual correction."""
    import fistaopt.llm.streams as streams

    results = [comm.all_agree(True), comm.all_agree(comm.rank == 0)]
    if comm.rank == 1:
        streams.adds_to_output = lambda *args, **kwargs: False  # this spawned process only
    torch.set_num_threads(1)
    model, _ = _pruned("llama", comm, method="fista")
    if comm.is_main:
        torch.save({"agree": results, "state": model.state_dict()}, Path(out) / "agree.pt")


def test_ranks_agree_on_residual_correction(tmp_path, one_thread):
    """Each rank checks additivity on its own first batch; one dissent turns it off on all
    (else rank 0 would sum targets' statistics with rank 1's cross statistics)."""
    assert Communicator().all_agree(True) and not Communicator().all_agree(False)
    launch(_agree_and_dissent, 2, (str(tmp_path),), timeout_s=120)
    got = torch.load(tmp_path / "agree.pt", weights_only=False)
    assert got["agree"] == [True, False]
    plain, _ = _pruned("llama", method="fista", residual_correction=False)
    corrected, _ = _pruned("llama", method="fista")
    assert _weights_agree(got["state"], plain.state_dict()) <= WEIGHT_RTOL
    downs = [k for k in plain.state_dict() if k.endswith("down_proj.weight")]
    assert downs and any(not torch.allclose(got["state"][k], corrected.state_dict()[k]) for k in downs)


def _interrupted(comm: Communicator, ckpt: str) -> None:
    torch.set_num_threads(1)

    def stop_after_block_0(i, report):
        if i == 0:
            raise RuntimeError("stopped after block 0")

    _pruned("llama", comm, method="fista", checkpoint_dir=ckpt, callback=stop_after_block_0)


def test_resume_with_another_world_size(tmp_path):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(ProcessRaisedException, match="stopped after block 0"):
        launch(_interrupted, 2, (str(ckpt),), timeout_s=120)
    assert sorted(p.name for p in ckpt.iterdir()) == ["block_0000.pt", "state.json", "stream_0001.pt"]
    resumed, report = _pruned("llama", method="fista", checkpoint_dir=ckpt)  # one rank now
    reference, _ = _pruned("llama", method="fista")
    assert _weights_agree(resumed.state_dict(), reference.state_dict()) <= WEIGHT_RTOL
    assert [r.block for r in report.records].count(0) == len([r for r in report.records if r.block == 1])


def _rank_1_raises(comm: Communicator) -> None:
    if comm.rank == 1:
        raise ValueError("rank 1 failed on purpose")
    _pruned("llama", comm, method="wanda")  # rank 0 waits in the first all-reduce


def test_a_failing_rank_stops_every_rank(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ProcessRaisedException, match="rank 1 failed on purpose"):
        launch(_rank_1_raises, 2, timeout_s=600)
    assert time.perf_counter() - t0 < 120  # not the collective timeout: rank 0 was stopped


def _rank_1_leaves(comm: Communicator) -> None:
    if comm.rank == 0:
        dist.all_reduce(torch.ones(3))  # rank 1 never joins


def test_a_collective_without_partner_times_out():
    t0 = time.perf_counter()
    with pytest.raises(ProcessRaisedException):
        launch(_rank_1_leaves, 2, timeout_s=3)
    assert time.perf_counter() - t0 < 120


def _run_and_reap(cmd: list[str], timeout: float) -> tuple[int, str]:
    """Run ``cmd`` in its own session; on timeout kill the whole session (torchrun's workers too)."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])} ... did not finish in {timeout} s: {err[-2000:]}")
    return proc.returncode, err


def run_cli_three_ways(args: list[str], tmp_path: Path) -> None:
    """``fistaopt *args`` in this process, with ``--nproc 2`` and under torchrun with 2 ranks:
    the outputs ``tmp_path/one``, ``nproc`` and ``torchrun``."""
    import sys

    from fistaopt.cli import main

    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--nproc", "2", "--out", str(tmp_path / "nproc")]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "fistaopt.cli", *args, "--out", str(tmp_path / "torchrun")]
    rc, err = _run_and_reap(torchrun, timeout=300)
    assert rc == 0, err[-3000:]


def test_cli_nproc_and_torchrun_prune_as_one_process(tmp_path):
    import json

    from safetensors.torch import load_file

    from llm_fixtures import char_tokenizer, write_text

    folder = tmp_path / "llama"
    tiny_model("llama", scale=3.0).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    args = ["prune", str(folder), "--method", "wanda", "--nsamples", "4", "--batch-size", "2", "--seqlen", "16",
            "--calib", str(write_text(tmp_path / "calib.txt")), "--eval-tokens", "0", "--no-progress", "--threads", "1"]
    run_cli_three_ways(args, tmp_path)
    want = load_file(tmp_path / "one" / "model.safetensors")
    for name in ("nproc", "torchrun"):
        assert _weights_agree(load_file(tmp_path / name / "model.safetensors"), want) == 0.0, name
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert report["totals"]["distributed"]["world_size"] == 2, name
    assert "distributed" not in json.loads((tmp_path / "one" / "report.json").read_text())["totals"]


def test_cli_refuses_more_ranks_than_calibration_batches(tmp_path, capsys):
    from fistaopt.cli import main

    rc = main(["prune", "--nsamples", "2", "--batch-size", "2", "--nproc", "2", "--out", str(tmp_path / "o")])
    assert rc == 2 and "2 ranks need at least 2 calibration batches" in capsys.readouterr().err
    rc = main(["prune", "--nproc", "2", "--parallel", "blocks", "--out", str(tmp_path / "o")])
    assert rc == 2 and "--parallel blocks needs block_inputs='dense'" in capsys.readouterr().err
