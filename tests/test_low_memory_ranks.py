"""Low-memory pruning with 2 ranks (gloo, CPU), and the dtype the output is written in.

The 2-rank runs are compared with the 1-rank low-memory run under the tolerance of
``tests/test_distributed.py`` (identical masks, weights within ``WEIGHT_RTOL`` of the
operator's largest weight; its docstring says why they may differ at all).  Each rank
is told a different output folder, so a folder from rank 1 would show that it wrote.
The model: a tiny random Llama with 3 blocks saved in several shards, in float32 and
in bfloat16.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fistaopt import _io
from fistaopt.cli import main
from fistaopt.llm import prune_from_pretrained, save_pruned
from fistaopt.llm.distributed import Communicator, launch
from fistaopt.llm.loading import cast_for_saving
from fistaopt.llm.shards import source_dtype, stored_dtype, weight_map
from llm_fixtures import calib, char_tokenizer, tiny_model, write_text
from test_distributed import WEIGHT_RTOL, _weights_agree, run_cli_three_ways
from test_low_memory import N_BLOCKS, _tiny

SETTINGS = dict(method="fista", stats_dtype="float64", batch_size=2, progress=False, tune_epochs=0)  # one process tunes


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: other thread counts round differently
    yield
    torch.set_num_threads(threads)


def _ids() -> torch.Tensor:
    return calib(nsamples=8, seqlen=16)


def _save_tiny(folder: Path, dtype: torch.dtype) -> Path:
    _tiny("llama").to(dtype).save_pretrained(folder, max_shard_size="20KB")
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """The tiny Llama in float32, in several shards."""
    folder = _save_tiny(tmp_path_factory.mktemp("f32") / "model", torch.float32)
    assert len(list(folder.glob("*.safetensors"))) > N_BLOCKS
    return folder


@pytest.fixture(scope="module")
def saved_bf16(tmp_path_factory) -> Path:
    """The same model stored in bfloat16."""
    return _save_tiny(tmp_path_factory.mktemp("bf16") / "model", torch.bfloat16)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors folder (one file or an index and shards), as stored."""
    files = weight_map(folder)
    out = {}
    for file in sorted(set(files.values())):
        with safe_open(str(folder / file), framework="pt", device="cpu") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def _dtypes(folder: Path) -> set[torch.dtype]:
    return {t.dtype for t in _weights(folder).values()}


# ---------------------------------------------------------------------- rank functions (spawned)
def _prune_per_rank(comm: Communicator, model: str, base: str, ckpt: str | None) -> None:
    """Rank r prunes into ``base/out-r`` (only rank 0 may create it); in ``base/side`` it notes every block
    it finishes (``blocks.txt``) and the report it returned (``rank{r}.json``)."""
    torch.set_num_threads(1)
    side = Path(base) / "side"
    side.mkdir(exist_ok=True)

    def note(i: int, report) -> None:
        with open(side / "blocks.txt", "a") as f:
            f.write(f"{i}\n")

    report = prune_from_pretrained(model, _ids(), Path(base) / f"out-{comm.rank}", checkpoint_dir=ckpt,
                                   comm=comm, callback=note, **SETTINGS)
    (side / f"rank{comm.rank}.json").write_text(json.dumps(report.to_dict(), default=str))


def _stop_after_block_0(i: int, report) -> None:
    if i == 0:
        raise KeyboardInterrupt


class _FailingTokenizer:
    def save_pretrained(self, folder) -> None:
        raise OSError("disk full (on purpose)")


def _rank_0_fails_to_write(comm: Communicator, model: str, base: str) -> None:
    """Two runs where rank 0 fails while writing (the tokenizer, then the report); every rank notes its error."""
    import fistaopt.llm.low_memory as low_memory
    from fistaopt.llm.report import PruneReport

    torch.set_num_threads(1)
    if comm.is_main:
        low_memory._tokenizer = lambda folder: _FailingTokenizer()
    outcomes = []
    for stage in ("tokenizer", "report"):
        if comm.is_main and stage == "report":
            low_memory._tokenizer = lambda folder: None

            def fail(self, path):
                raise OSError("report not written (on purpose)")

            PruneReport.save_json = fail
        try:
            prune_from_pretrained(model, _ids(), Path(base) / f"out-{stage}", method="wanda", batch_size=2,
                                  progress=False, comm=comm)
            outcomes.append("returned")
        except Exception as e:  # noqa: BLE001 - the test reads every rank's outcome
            outcomes.append(f"{type(e).__name__}: {e}")
    (Path(base) / f"rank{comm.rank}.json").write_text(json.dumps(outcomes))


# ---------------------------------------------------------------------- tests
def test_two_ranks_prune_as_one_and_only_rank_0_writes(saved, tmp_path):
    launch(_prune_per_rank, 2, (str(saved), str(tmp_path), None), timeout_s=300)
    reference = prune_from_pretrained(saved, _ids(), tmp_path / "one", **SETTINGS)

    assert not (tmp_path / "out-1").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "out-0", "side"]  # no temporary folder left
    assert sorted((tmp_path / "side" / "blocks.txt").read_text().split()) == ["0", "0", "1", "1", "2", "2"]
    names = {p.name for p in (tmp_path / "out-0").iterdir()}
    assert set(json.loads((tmp_path / "out-0" / _io.MANIFEST).read_text())) == names - {_io.MANIFEST}
    assert _weights_agree(_weights(tmp_path / "out-0"), _weights(tmp_path / "one")) <= WEIGHT_RTOL

    totals = json.loads((tmp_path / "out-0" / "report.json").read_text())["totals"]
    block = reference.totals["peak_resident_block_params"]
    assert totals["distributed"]["world_size"] == 2
    assert totals["distributed"]["rank_peak_resident_block_params"] == [block, block]
    assert totals["peak_resident_block_params"] == block and totals["save_dtype"] == "float32"
    assert totals["sparsity"] == pytest.approx(reference.totals["sparsity"], abs=1e-12)
    assert "distributed" not in reference.totals
    for rank in (0, 1):  # every rank returned the run's records
        returned = json.loads((tmp_path / "side" / f"rank{rank}.json").read_text())
        assert [(r["block"], r["name"]) for r in returned["records"]] == [(r.block, r.name) for r in reference.records]


def test_a_one_rank_checkpoint_resumes_with_two_ranks(saved, tmp_path):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        prune_from_pretrained(saved, _ids(), tmp_path / "out-0", checkpoint_dir=ckpt, callback=_stop_after_block_0,
                              **SETTINGS)
    assert not (tmp_path / "out-0").exists()
    launch(_prune_per_rank, 2, (str(saved), str(tmp_path), str(ckpt)), timeout_s=300)
    assert not (tmp_path / "out-1").exists()
    assert sorted((tmp_path / "side" / "blocks.txt").read_text().split()) == ["1", "1", "2", "2"]  # block 0 not redone
    prune_from_pretrained(saved, _ids(), tmp_path / "whole", **SETTINGS)
    assert _weights_agree(_weights(tmp_path / "out-0"), _weights(tmp_path / "whole")) <= WEIGHT_RTOL
    records = json.loads((tmp_path / "out-0" / "report.json").read_text())["records"]
    assert sorted({r["block"] for r in records}) == list(range(N_BLOCKS))


def test_rank_0_failing_to_write_stops_rank_1_with_an_error(saved, tmp_path):
    t0 = time.perf_counter()
    launch(_rank_0_fails_to_write, 2, (str(saved), str(tmp_path)), timeout_s=300)
    assert time.perf_counter() - t0 < 120  # not the collective timeout
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 == ["OSError: disk full (on purpose)", "OSError: report not written (on purpose)"]
    assert rank1 == [f"RuntimeError: rank 0 failed while writing the output: {e}" for e in rank0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.json", "rank1.json"]  # nothing published


def test_a_bf16_source_is_written_in_bf16_with_the_masks_of_the_float32_output(saved_bf16, tmp_path):
    ids = calib(4, 16)
    assert stored_dtype(saved_bf16) == torch.bfloat16
    report = prune_from_pretrained(saved_bf16, ids, tmp_path / "bf16", method="fista", progress=False)
    prune_from_pretrained(saved_bf16, ids, tmp_path / "f32", method="fista", progress=False, save_dtype="float32")
    assert _dtypes(tmp_path / "bf16") == {torch.bfloat16} and _dtypes(tmp_path / "f32") == {torch.float32}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "f32" / "config.json").read_text())["dtype"] == "float32"
    low, high = _weights(tmp_path / "bf16"), _weights(tmp_path / "f32")
    for key, w in high.items():  # the same masks; bf16 = the float32 result rounded
        assert torch.equal(low[key] == 0, w == 0), key
        assert torch.equal(low[key], w.to(torch.bfloat16)), key
    written = json.loads((tmp_path / "bf16" / "report.json").read_text())["totals"]
    assert written["save_dtype"] == "bfloat16" and written["written_rounded_to_zero"] == 0
    assert report.totals["sparsity"] == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match=r"save_dtype must be 'source' or one of .*got 'int8'"):
        prune_from_pretrained(saved_bf16, ids, tmp_path / "bad", progress=False, save_dtype="int8")
    assert not (tmp_path / "bad").exists()


def test_the_cast_keeps_zeros_counts_kept_weights_that_round_to_zero_and_refuses_overflow():
    w = torch.tensor([[0.0, 1e-9, 0.5], [-0.0, 2.0, -1e-10]])
    cast, rounded = cast_for_saving(w, torch.float16, "w")
    assert cast.dtype == torch.float16 and rounded == 2
    assert torch.equal(cast != 0, torch.tensor([[False, False, True], [False, True, False]]))
    assert cast_for_saving(torch.arange(3), torch.float16, "ids")[0].dtype == torch.int64  # integers as they are
    with pytest.raises(ValueError, match="layers.0.mlp.up_proj.weight has values beyond the range of float16"):
        cast_for_saving(torch.tensor([1e6]), torch.float16, "layers.0.mlp.up_proj.weight")


def test_the_source_dtype_of_a_folder_without_safetensors_is_its_configs(saved_bf16, tmp_path):
    config = json.loads((saved_bf16 / "config.json").read_text())
    for named, want in (("bfloat16", torch.bfloat16), (None, torch.float32)):
        folder = tmp_path / str(named)
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**config, "dtype": named}))
        (folder / "pytorch_model.bin").write_bytes(b"")
        assert source_dtype(folder) == want
    assert source_dtype(saved_bf16) == torch.bfloat16 and source_dtype(tmp_path / "x.gguf") == torch.float32


def test_save_pruned_writes_the_asked_dtype_and_leaves_the_model_as_it_was(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("opt", scale=3.0)  # tied embeddings
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = {"settings": {}, "records": [], "totals": {"sparsity": 0.0}}
    save_pruned(model, None, tmp_path / "out", report, save_dtype="bfloat16")
    assert model.dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    written = _weights(tmp_path / "out")
    assert {t.dtype for t in written.values()} == {torch.bfloat16}
    assert "lm_head.weight" not in written  # the tied weight is stored once
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert loaded.dtype == torch.bfloat16
    assert torch.equal(loaded.model.decoder.layers[0].fc1.weight, before["model.decoder.layers.0.fc1.weight"].bfloat16())
    totals = json.loads((tmp_path / "out" / "report.json").read_text())["totals"]
    assert totals == {"sparsity": 0.0, "save_dtype": "bfloat16", "written_rounded_to_zero": 0}
    assert report["totals"] == {"sparsity": 0.0}  # the caller's dict is not changed


def _cli_args(folder: Path, tmp_path: Path, *extra: str) -> list[str]:
    text = write_text(tmp_path / "text.txt")
    return ["prune", str(folder), "--nsamples", "4", "--batch-size", "2", "--seqlen", "16", "--calib", str(text),
            "--eval-text", str(text), "--eval-tokens", "256", "--method", "wanda", "--no-progress", "--threads", "1",
            *extra]


def test_cli_low_memory_with_two_ranks_and_torchrun_prunes_as_one(saved_bf16, tmp_path):
    run_cli_three_ways(_cli_args(saved_bf16, tmp_path, "--low-memory"), tmp_path)
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    for name in ("nproc", "torchrun"):
        assert _weights_agree(_weights(tmp_path / name), _weights(tmp_path / "one")) == 0.0, name  # Wanda: exact
        assert _dtypes(tmp_path / name) == {torch.bfloat16}, name
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert report["totals"]["distributed"]["world_size"] == 2, name
        assert report["totals"]["save_dtype"] == "bfloat16", name
        assert report["perplexity_after"]["ppl"] == one["perplexity_after"]["ppl"], name  # rank 0 measured it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nproc", "one", "text.txt", "torchrun"]


def test_cli_save_dtype_float32_keeps_float32_in_both_modes(saved_bf16, tmp_path):
    args = _cli_args(saved_bf16, tmp_path, "--eval-tokens", "0", "--save-dtype", "float32")
    assert main([*args, "--low-memory", "--out", str(tmp_path / "low")]) == 0
    assert main([*args, "--out", str(tmp_path / "mem")]) == 0
    assert _dtypes(tmp_path / "mem") == _dtypes(tmp_path / "low") == {torch.float32}
    for name in ("low", "mem"):
        assert json.loads((tmp_path / name / "report.json").read_text())["totals"]["save_dtype"] == "float32"
    assert main([*_cli_args(saved_bf16, tmp_path, "--eval-tokens", "0"), "--out", str(tmp_path / "mem-source")]) == 0
    assert _dtypes(tmp_path / "mem-source") == {torch.bfloat16}  # in memory too: the source's dtype
