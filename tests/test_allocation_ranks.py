"""Non-uniform allocation with several ranks (gloo, CPU) and in low-memory mode equals the one-process one.

Two ranks sum the pre-pass statistics of their calibration shares (OWL's squared column
sums, the convex rule's ``H``); the sums add the same per-batch terms in another order,
so OWL's counts are identical and the convex rule's within ``CONVEX_LAM_RTOL`` and
``CONVEX_ROW_SLACK`` (module docstring of :mod:`fistaopt.llm.allocation`); with the same
counts the prune is the one of ``tests/test_distributed.py`` (same masks, ``WEIGHT_RTOL``).
Low-memory mode reads the same dense blocks from the shards: the same allocation, the
same weights, one block resident at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fistaopt.cli import main
from fistaopt.llm import PruneConfig, prune, prune_from_pretrained
from fistaopt.llm.allocation import plan_allocation, uniform_count
from fistaopt.llm.capture import calibration_batches, capture_block_inputs
from fistaopt.llm.distributed import Communicator, launch
from fistaopt.llm.low_memory import ShardWriter, ShardedBlocks
from fistaopt.llm.model import find_blocks
from fistaopt.llm.shards import ShardedModel
from llm_fixtures import calib, char_tokenizer, tiny_model, write_text
from test_distributed import WEIGHT_RTOL, _weights_agree

CASES = {  # two model families, both rules, row shares and whole blocks per rank
    "llama-owl-fista": ("llama", dict(allocation="owl", method="fista")),
    "opt-owl-sparsegpt": ("opt", dict(allocation="owl", method="sparsegpt")),
    "llama-convex-wanda": ("llama", dict(allocation="convex", method="wanda")),
    "opt-convex-magnitude": ("opt", dict(allocation="convex", method="magnitude")),
    "opt-owl-wanda-parallel-blocks": ("opt", dict(allocation="owl", method="wanda", block_inputs="dense",
                                                  parallel="blocks")),
    # OWL's window prefix across the ranks' shares (batches 0, 1 | 2, 3): 3 batches, then rank 0's only
    "llama-owl-prefix-across-ranks": ("llama", dict(allocation="owl", method="wanda", owl_windows=5)),
    "opt-owl-prefix-on-rank0": ("opt", dict(allocation="owl", method="magnitude", owl_windows=3)),
}
COMMON = dict(sparsity=0.6, max_deviation=0.1, stats_dtype="float64", batch_size=2, progress=False)
#: The convex rule with 2 ranks against 1: λ within this relative difference, each operator's pruned count
#: per row within CONVEX_ROW_SLACK.  Its curves count FISTA's non-zeros on ``H`` summed in another order, so an
#: entry at the ℓ1 threshold may flip and move ``ν_o(λ)`` by one entry; measured on these cases: identical λ and
#: counts with float64 statistics, λ within 3e-8 and identical counts with float32 statistics.
CONVEX_LAM_RTOL = 1e-6
CONVEX_ROW_SLACK = 1
SHARDED_SETTINGS = dict(allocation="owl", method="wanda", sparsity=0.6, max_deviation=0.1, batch_size=2)


def _pruned(arch: str, comm: Communicator | None = None, **kwargs):
    model = tiny_model(arch, scale=3.0)
    report = prune(model, calib(8, 16), **({"comm": comm} if comm is not None else {}), **COMMON, **kwargs)
    return model, report.to_dict()


def _run_cases(comm: Communicator, out: str) -> None:
    torch.set_num_threads(1)
    for name, (arch, kwargs) in CASES.items():
        model, report = _pruned(arch, comm, **kwargs)
        torch.save({"state": model.state_dict(), "allocation": report["allocation"]},
                   Path(out) / f"{name}-rank{comm.rank}.pt")


def _counts(alloc: dict) -> dict[tuple[int, str], int]:
    """Pruned weights per row of every operator (the unit the row patterns prune in)."""
    return {(op["block"], op["name"]): round(op["target"] * op["shape"][1]) for op in alloc["operators"]}


def _check_total(alloc: dict) -> None:
    shapes = {(op["block"], op["name"]): op["shape"] for op in alloc["operators"]}
    pruned = sum(shapes[k][0] * c for k, c in _counts(alloc).items())
    assert pruned == sum(d_out * uniform_count(d_in, alloc["target"]) for d_out, d_in in shapes.values())


def _load(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_two_ranks_allocate_as_one(tmp_path, one_thread):
    launch(_run_cases, 2, (str(tmp_path),), timeout_s=300)
    for name, (arch, kwargs) in CASES.items():
        model, report = _pruned(arch, **kwargs)
        ranks = [torch.load(tmp_path / f"{name}-rank{r}.pt", weights_only=False) for r in range(2)]
        assert ranks[0]["allocation"] == ranks[1]["allocation"], f"{name}: the ranks disagree"
        got, want = ranks[0]["allocation"], report["allocation"]
        _check_total(got)
        if kwargs["allocation"] == "owl":
            assert got["outlier_ratios"] == want["outlier_ratios"], name
            assert _counts(got) == _counts(want), name
        else:
            assert got["lam"] == pytest.approx(want["lam"], rel=CONVEX_LAM_RTOL), name
            diffs = [abs(c - _counts(want)[k]) for k, c in _counts(got).items()]
            assert max(diffs) <= CONVEX_ROW_SLACK, (name, diffs)
        if _counts(got) == _counts(want):  # the same targets: the prune itself as in test_distributed
            tol = 0.0 if kwargs.get("parallel") == "blocks" else WEIGHT_RTOL
            assert _weights_agree(ranks[0]["state"], model.state_dict()) <= tol, name
        assert len({round(op["target"], 6) for op in got["operators"]}) > 1, f"{name}: uniform in disguise"


@pytest.mark.parametrize("arch,rule", [("llama", "owl"), ("opt", "convex")])
def test_low_memory_allocation_equals_in_memory(arch, rule, tmp_path, one_thread):
    folder = tmp_path / "model"
    tiny_model(arch, scale=3.0).save_pretrained(folder, max_shard_size="20KB")  # several shards
    char_tokenizer().save_pretrained(folder)
    settings = dict(SHARDED_SETTINGS, allocation=rule, progress=False)
    reference = _load(folder)  # as the shards' skeleton is built (its attention implementation)
    want = prune(reference, calib(8, 16), **settings).to_dict()
    report = prune_from_pretrained(folder, calib(8, 16), tmp_path / "out", **settings).to_dict()
    assert report["allocation"] == want["allocation"]
    _check_total(report["allocation"])
    pruned = _load(tmp_path / "out").state_dict()
    assert [k for k, w in reference.state_dict().items() if not torch.equal(pruned[k], w)] == []
    one_block = sum(p.numel() for p in find_blocks(reference)[1][0].parameters())
    assert report["totals"]["peak_resident_block_params"] == one_block  # the pre-pass too: one block at a time


def _allocate_from_shards(comm: Communicator, folder: str, out: str) -> None:
    """This rank's allocation of the sharded model: its calibration share, one block resident at a time."""
    torch.set_num_threads(1)
    sharded = ShardedModel(folder)
    config = PruneConfig(**SHARDED_SETTINGS).for_model(sharded.model.config.model_type)
    batches = calibration_batches(calib(8, 16), config.batch_size, sharded.model)
    inputs = capture_block_inputs(sharded.model, comm.local_batches(batches))
    residency = ShardedBlocks(sharded, ShardWriter(out, len(sharded.blocks)))  # the writer is never used here
    alloc = plan_allocation(sharded.blocks, inputs, [0, 1], config, torch.device("cpu"), comm=comm, residency=residency)
    torch.save({"allocation": alloc.to_dict(), "peak": sharded.peak_resident_block_params,
                "resident": sharded.resident_block_params()}, Path(out) / f"rank{comm.rank}.pt")


def test_two_ranks_allocate_from_shards_as_one_process(tmp_path, one_thread):
    """What low-memory mode with several ranks runs first: the pre-pass from the shards, statistics summed."""
    folder = tmp_path / "model"
    tiny_model("llama", scale=3.0).save_pretrained(folder, max_shard_size="20KB")
    launch(_allocate_from_shards, 2, (str(folder), str(tmp_path)), timeout_s=300)
    reference = _load(folder)
    want = prune(reference, calib(8, 16), **SHARDED_SETTINGS, progress=False).to_dict()["allocation"]
    one_block = sum(p.numel() for p in find_blocks(reference)[1][0].parameters())
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert _counts(got["allocation"]) == _counts(want) and got["allocation"]["rule"] == "owl"
        assert got["allocation"]["outlier_ratios"] == want["outlier_ratios"]
        assert got["peak"] == one_block and got["resident"] == 0


def _owl_cli_args(tmp_path: Path) -> list[str]:
    """``fistaopt prune`` arguments for a tiny Llama saved under ``tmp_path``: Wanda, OWL at 60%, no evaluation."""
    folder = tmp_path / "llama"
    tiny_model("llama", scale=3.0).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return ["prune", str(folder), "--method", "wanda", "--nsamples", "4", "--batch-size", "2", "--seqlen", "16",
            "--calib", str(write_text(tmp_path / "calib.txt")), "--eval-tokens", "0", "--no-progress", "--threads", "1",
            "--sparsity", "0.6", "--allocation", "owl", "--max-deviation", "0.1"]


def test_cli_owl_with_two_ranks_equals_one_process(tmp_path, one_thread):
    from safetensors.torch import load_file

    args = _owl_cli_args(tmp_path)
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--nproc", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("one", "two"))
    assert two["totals"]["distributed"]["world_size"] == 2
    assert _counts(two["allocation"]) == _counts(one["allocation"])
    assert [b["realised"] for b in two["allocation"]["blocks"]] == [b["realised"] for b in one["allocation"]["blocks"]]
    want = load_file(tmp_path / "one" / "model.safetensors")
    got = load_file(tmp_path / "two" / "model.safetensors")
    assert _weights_agree(got, want) == 0.0  # Wanda: the same masks, the same weights


def test_cli_low_memory_owl_with_two_ranks_equals_one_in_memory_process(tmp_path, one_thread):
    """The three together: the pre-pass reads the shards on each rank, the prune shards the rows, rank 0 writes."""
    from test_low_memory_ranks import _weights

    args = _owl_cli_args(tmp_path)
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--low-memory", "--nproc", "2", "--out", str(tmp_path / "low2")]) == 0
    one, low2 = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("one", "low2"))
    assert low2["totals"]["distributed"]["world_size"] == 2 and low2["totals"]["low_memory"] is True
    assert _counts(low2["allocation"]) == _counts(one["allocation"])
    assert _weights_agree(_weights(tmp_path / "low2"), _weights(tmp_path / "one")) == 0.0  # Wanda: exact
