"""Block/operator discovery and the Operator weight abstraction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fistaopt.llm.model import Operator, find_blocks, model_operators
from llm_fixtures import ARCHS, calib, tiny_model

EXPECTED = {
    "llama": ("model.layers", [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                               ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]),
    "qwen2": ("model.layers", [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                               ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]),
    "gemma3": ("model.layers", [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                                ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]),
    "opt": ("model.decoder.layers", [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                                     ["self_attn.out_proj"], ["fc1"], ["fc2"]]),
    "gpt2": ("transformer.h", [["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]]),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_and_operator_groups_in_forward_order(arch):
    model = tiny_model(arch)
    name, blocks = find_blocks(model)
    expected_name, expected_groups = EXPECTED[arch]
    assert name == expected_name and len(blocks) == 2
    groups = model_operators(model, calib(1, 8))
    assert len(groups) == 2
    for block_groups in groups:
        # order inside a group (q/k/v) is the call order; compare groups as sets, in order
        assert [sorted(g.names) for g in block_groups] == [sorted(g) for g in expected_groups]


def test_gqa_shapes_are_reported_as_d_out_d_in():
    model = tiny_model("llama")
    ops = {op.name: op for g in model_operators(model)[0] for op in g}
    assert ops["self_attn.q_proj"].shape == (32, 32)
    assert ops["self_attn.k_proj"].shape == (16, 32)  # 2 kv heads of dim 8
    assert ops["mlp.down_proj"].shape == (32, 64)


def test_conv1d_weight_round_trip():
    model = tiny_model("gpt2")
    op = {o.name: o for g in model_operators(model)[0] for o in g}["mlp.c_fc"]
    assert op.transposed and op.shape == (128, 32)  # GPT-2 MLP: 4 * n_embd
    W = op.get_weight()
    assert torch.equal(W, op.module.weight.detach().t())
    x = torch.randn(5, 32)
    assert torch.allclose(op.module(x), x @ W.t() + op.module.bias, atol=1e-6)
    W2 = torch.randn_like(W)
    op.set_weight(W2)
    assert torch.allclose(op.module(x), x @ W2.t() + op.module.bias, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        op.set_weight(W2.t())


def test_operator_rejects_non_linear_modules():
    with pytest.raises(TypeError, match="nn.Linear or Conv1D"):
        Operator("norm", nn.LayerNorm(4))


def test_find_blocks_rejects_models_without_blocks():
    with pytest.raises(ValueError, match="decoder blocks"):
        find_blocks(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError):
        find_blocks("model")
