"""Residual correction: a block's last operator also absorbs its block's residual-stream error.

With intra-block error correction every operator is fitted to its own dense output,
``‖X* Wᵀ − X W₀ᵀ‖²``.  In a pre-norm block (LLaMA, OPT, GPT-2, Falcon, Phi) the last
operator (the MLP's down projection) writes straight into the block's output,
``out = R + x Wᵀ (+ b)``, where ``R`` (the residual stream plus everything else) does not
depend on ``W``.  The pruned block's ``R*`` differs from the dense block's ``R`` by the
error that the groups before (attention's q/k/v and o projections) leave in the residual
stream.  Fitting the last operator to the dense block's *output* instead,

    min_W ‖X* Wᵀ − (X W₀ᵀ + R − R*)‖²,

lets it cancel what it can of that error; the layer problem keeps its form (only the
target side ``G = Yᵀ X*``, ``c = ‖Y‖²`` changes:
:meth:`~fistaopt.problems.LayerStatsAccumulator.add_targets`), and so do the damping toward
``W₀`` and the solvers.  The target is read from forwards that error correction runs
anyway, with one extra product (the dense copy's last operator): ``Y = out − R* − b``
(``X W₀ᵀ + b + R = out``), with ``out`` the dense copy's output (its shared forward, run to
its end instead of stopping at the last operator's input) and ``R*`` the pruned block's
output with the last operator's output set to zero (:func:`zero_output`; the block's
forwards end there, before that operator is pruned).  The block's pruned output is then
``R* + x* Wᵀ + b``, one product as before.

:func:`adds_to_output` checks the form ``out = R + y`` on one batch (a block whose last
operator feeds a norm, as Gemma's post-feed-forward norm, or a gate, as a mixture of
experts' routing weights, fails it and keeps the plain target).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from fistaopt.llm.capture import BlockCall, block_output
from fistaopt.llm.model import OperatorGroup

#: Relative tolerance of :func:`adds_to_output`: ``‖Δout − Δy‖ ≤ tol · ‖Δy‖``.
ADDITIVE_RTOL = 1e-3


def last_operator(groups: list[OperatorGroup]) -> str | None:
    """The name of the operator that residual correction refits: the block's last group when
    it holds one operator and is not the first group (which has nothing before it); else None."""
    if len(groups) < 2 or len(groups[-1].operators) != 1:
        return None
    return groups[-1].operators[0].name


@contextmanager
def recorded_calls(module: nn.Module) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Records ``(input, output)`` of every call of ``module`` while the context is open."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        calls.append((args[0].detach(), out.detach()))

    handle = module.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@contextmanager
def zero_output(module: nn.Module, d_out: int) -> Iterator[None]:
    """``module`` returns zeros ``(..., d_out)`` (its input's dtype and device) without computing
    its product, while the context is open; hooks still run."""
    def zeros(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], d_out)

    module.forward = zeros  # instance attribute shadows the class method
    try:
        yield
    finally:
        del module.forward


@torch.no_grad()
def adds_to_output(block: nn.Module, name: str, call: BlockCall, hidden: torch.Tensor,
                   device: torch.device) -> bool:
    """Whether operator ``name``'s output enters ``block``'s output as a plain sum,
    ``out = R + y``: doubling ``y`` (a forward hook) must move the output by ``y``."""
    module = block.get_submodule(name)
    outputs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for scale in (1.0, 2.0):
        def hook(mod: nn.Module, args: tuple, out: torch.Tensor, scale: float = scale) -> torch.Tensor:
            if scale == 1.0:
                ys.append(out.detach())
            return out * scale

        handle = module.register_forward_hook(hook)
        try:
            outputs.append(block_output(call.run(block, hidden.to(device), device)).detach())
        finally:
            handle.remove()
    if len(ys) != 1 or outputs[0].numel() != ys[0].numel():
        return False  # called more than once, or its output is not the block's size
    y = ys[0].double().reshape(outputs[0].shape)  # OPT runs its MLP on (tokens, d)
    moved = outputs[1].double() - outputs[0].double()
    return bool(torch.linalg.vector_norm(moved - y) <= ADDITIVE_RTOL * torch.linalg.vector_norm(y))
