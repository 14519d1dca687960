"""benchmarks/sparse_inference.py: the 2:4 projection, the logits check, and the CPU verdict.

The semi-structured sparse path itself needs CUDA (compute capability >= 8.0); its test
skips elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "sparse_inference.py"
_spec = importlib.util.spec_from_file_location("sparse_inference", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

sparse_kernels = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
    reason="2:4 semi-structured kernels need a CUDA GPU with compute capability >= 8.0",
)


def test_two_four_projection_keeps_the_two_largest_of_every_four():
    model = bench.build_model("tiny", torch.float32)
    before = [linear.weight.clone() for linear in bench.block_linears(model)]
    assert not bench.all_two_four(model)
    assert bench.apply_two_four_(model) == len(before) == 14
    assert bench.all_two_four(model)
    for w0, linear in zip(before, bench.block_linears(model)):
        w = linear.weight
        assert float((w == 0).double().mean()) == 0.5
        groups0, groups = w0.reshape(w0.shape[0], -1, 4), w.reshape(w.shape[0], -1, 4)
        kept = groups != 0
        assert torch.equal(groups[kept], groups0[kept])  # kept weights unchanged
        # every dropped weight is no larger than every kept one of its group
        smallest_kept = groups0.abs().masked_fill(~kept, float("inf")).amin(-1)
        largest_dropped = groups0.abs().masked_fill(kept, -1.0).amax(-1)
        assert bool((largest_dropped <= smallest_kept).all())


def test_compare_logits_sees_a_difference_and_no_difference():
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(0))
    a = bench.build_model("tiny", torch.float32, seed=0)
    same = bench.compare_logits(a, a, ids)
    assert same == {"rel_error": 0.0, "top1_agreement": 1.0}
    b = bench.build_model("tiny", torch.float32, seed=0)
    bench.apply_two_four_(b)
    differs = bench.compare_logits(b, a, ids)
    assert differs["rel_error"] > 1e-3 and 0.0 <= differs["top1_agreement"] <= 1.0


def test_no_speedup_path_on_cpu_and_why():
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        possible, reason = bench.speedup_path(torch.device("cpu"), dtype)
        assert possible is False
        assert "no speed-up path on CPU" in reason and "CUDA" in reason and "compute capability >= 8.0" in reason
    with pytest.raises(RuntimeError, match="CUDA"):  # the reason, as PyTorch itself gives it
        bench.to_semi_structured_(bench.build_model("tiny", torch.bfloat16))


def test_cpu_run_reports_the_verdict_and_the_masked_dense_check(tmp_path, capsys):
    out_file = tmp_path / "sparse.json"
    out = bench.main(["--device", "cpu", "--models", "tiny", "--repeats", "1", "--tokens", "64",
                      "--seqlen", "16", "--out", str(out_file)])
    assert json.loads(out_file.read_text()) == json.loads(capsys.readouterr().out) == json.loads(json.dumps(out))
    assert out["speedup_path"] is False and out["reason"] == bench.NO_CPU_PATH
    (row,) = out["models"]
    assert row["model"] == "tiny" and row["exact_two_four"] is True and row["operators"] == 14
    check = row["low_precision_check"]  # bf16 masked dense vs fp32 masked dense
    assert 0.0 < check["rel_error"] < 0.05 and check["top1_agreement"] >= 0.9
    shapes = {tuple(r["shape"]) for r in row["linears_masked_vs_dense"]}
    assert shapes == {(128, 128), (64, 128), (256, 128), (128, 256)}
    assert all(r["dense_ms"] > 0 and r["masked_ms"] > 0 for r in row["linears_masked_vs_dense"])
    assert "sparse_check" not in row and "prefill" not in row


def test_unknown_model_is_a_usage_error():
    with pytest.raises(SystemExit) as err:
        bench.main(["--device", "cpu", "--models", "tiny,gpt-9"])
    assert err.value.code == 2


@sparse_kernels
def test_semi_structured_matches_masked_dense_on_cuda():
    out = bench.main(["--device", "cuda", "--models", "tiny", "--repeats", "2", "--tokens", "256",
                      "--seqlen", "64", "--new-tokens", "4"])
    assert out["speedup_path"] is True
    (row,) = out["models"]
    assert row["sparse_check"]["ok"], row["sparse_check"]
    assert {"prefill", "decode_per_token", "linears"} <= set(row)


@pytest.mark.parametrize("method", ["fista", "sparsegpt"])
def test_a_model_pruned_two_four_stays_exactly_two_four_after_saving(method, tmp_path):
    """What `fistaopt prune --pattern 2:4` saves is what the semi-structured conversion needs."""
    from transformers import AutoModelForCausalLM

    from fistaopt.llm import prune
    from llm_fixtures import calib, tiny_model

    model = tiny_model("llama", scale=4.0)
    prune(model, calib(), pattern="2:4", method=method, progress=False)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert bench.all_two_four(reloaded)
    for linear in bench.block_linears(reloaded):
        assert float((linear.weight == 0).double().mean()) >= 0.5
