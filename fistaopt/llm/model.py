"""Find the decoder blocks of a causal LM and the linear operators inside each block.

Nothing here hard-codes module names:

- the *blocks* are the longest ``nn.ModuleList`` whose entries all have the same class
  (``model.model.layers`` for Llama/Qwen2/Mistral/Gemma3, ``model.model.decoder.layers``
  for OPT, ``model.transformer.h`` for GPT-2, ...);
- the *operators* of a block are its linear modules (``nn.Linear`` and GPT-2's
  ``Conv1D``) in the order in which one real forward pass calls them, found with
  forward pre-hooks, and grouped by shared input (q,k,v; gate,up; ...): operators whose
  input tensor is the same object, or equal, form one :class:`OperatorGroup`.

Embeddings and ``lm_head`` live outside the blocks and therefore stay dense.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _conv1d_class() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # pragma: no cover - transformers without Conv1D
        return None
    return Conv1D


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and ``transformers``' ``Conv1D`` (GPT-2)."""
    conv1d = _conv1d_class()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


@dataclass(eq=False)
class Operator:
    """One linear operator ``y = x Wᵀ + b`` inside a decoder block.

    Attributes:
        name: dotted module name relative to the block (``"self_attn.q_proj"``).
        module: the ``nn.Linear`` or ``Conv1D`` module itself.

    ``get_weight``/``set_weight`` always speak ``W`` of shape ``(d_out, d_in)``, even for
    ``Conv1D``, which stores its weight transposed as ``(d_in, d_out)``.
    """

    name: str
    module: nn.Module

    def __post_init__(self) -> None:
        if not is_linear(self.module):
            raise TypeError(f"operator {self.name!r} must be nn.Linear or Conv1D, got {type(self.module).__name__}")

    @property
    def transposed(self) -> bool:
        """True when the module stores ``Wᵀ`` (GPT-2's ``Conv1D``)."""
        return not isinstance(self.module, nn.Linear)

    @property
    def d_in(self) -> int:
        w = self.module.weight
        return int(w.shape[0] if self.transposed else w.shape[1])

    @property
    def d_out(self) -> int:
        w = self.module.weight
        return int(w.shape[1] if self.transposed else w.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(d_out, d_in)``."""
        return (self.d_out, self.d_in)

    def get_weight(self) -> torch.Tensor:
        """A float32 copy of ``W`` with shape ``(d_out, d_in)``."""
        w = self.module.weight.detach()
        w = w.t() if self.transposed else w
        return w.to(torch.float32).clone()

    def set_weight(self, W: torch.Tensor) -> None:
        """Overwrite the module's weight with ``W (d_out, d_in)`` (cast to the module's dtype/device)."""
        if not isinstance(W, torch.Tensor):
            raise TypeError(f"W must be a torch.Tensor, got {type(W).__name__}")
        if tuple(W.shape) != self.shape:
            raise ValueError(f"W for operator {self.name!r} must have shape (d_out, d_in) = {self.shape}, got {tuple(W.shape)}")
        param = self.module.weight
        W = W.t() if self.transposed else W
        with torch.no_grad():
            param.copy_(W.to(device=param.device, dtype=param.dtype))

    def __repr__(self) -> str:
        return f"Operator({self.name!r}, {type(self.module).__name__}, d_out={self.d_out}, d_in={self.d_in})"


@dataclass
class OperatorGroup:
    """Operators that read the same input tensor, e.g. ``(q_proj, k_proj, v_proj)``."""

    operators: list[Operator] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [op.name for op in self.operators]

    @property
    def d_in(self) -> int:
        return self.operators[0].d_in

    def __iter__(self):
        return iter(self.operators)

    def __len__(self) -> int:
        return len(self.operators)


# ---------------------------------------------------------------------------- blocks
def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks: the longest ``nn.ModuleList`` of modules of one class.

    Returns ``(qualified_name, module_list)``. Ties are broken by the first found in
    ``named_modules`` order. Raises ``ValueError`` when the model has no such list.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(m) for m in module}
        if len(classes) != 1:
            continue
        if not any(is_linear(m) for m in module[0].modules()):
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise ValueError(
            f"could not find the decoder blocks of {type(model).__name__}: no nn.ModuleList of "
            f"identical modules containing linear layers"
        )
    return best


def linear_modules(block: nn.Module) -> dict[str, nn.Module]:
    """All linear modules of a block by dotted name (in registration order)."""
    return {name: m for name, m in block.named_modules() if name and is_linear(m)}


def operator_widths(block: nn.Module) -> dict[str, int]:
    """The input width ``d_in`` of every linear module of a block, by dotted name."""
    return {name: Operator(name, m).d_in for name, m in linear_modules(block).items()}


def config_widths(config: Any) -> dict[str, int]:
    """Input widths of a model's operators read from its configuration alone (no weights).

    ``config`` is a ``transformers`` config (or anything with the same attributes).  The
    widths are the hidden size (attention and MLP inputs), the attention output's input
    ``num_heads · head_dim`` and the MLP's intermediate size, under the names the common
    architectures use; an attribute a config does not have is left out.
    """
    def get(*names: str) -> Any:
        return next((getattr(config, n) for n in names if getattr(config, n, None)), None)

    hidden = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head")
    head_dim = get("head_dim") or (hidden // heads if hidden and heads else None)
    widths = {
        "hidden_size": hidden,
        "attention output (num_heads * head_dim)": heads * head_dim if heads and head_dim else None,
        "intermediate_size": get("intermediate_size", "ffn_dim", "n_inner") or (4 * hidden if hidden else None),
    }
    return {k: int(v) for k, v in widths.items() if v}


def _same_input(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    return bool(torch.equal(a, b))


def discover_operators(
    blocks: Sequence[nn.Module], run: Callable[[], Any]
) -> list[list[OperatorGroup]]:
    """Operators of each block in forward order, grouped by shared input.

    Registers a forward pre-hook on every linear module of ``blocks``, calls ``run()``
    (which must perform one forward pass through the blocks), and returns for each block
    its :class:`OperatorGroup` list in call order. A module called more than once
    counts at its first call; linear modules never called are left out (with a warning).
    """
    return [groups for groups, _ in discover_operators_with_inputs(blocks, run)]


def discover_operators_with_inputs(
    blocks: Sequence[nn.Module], run: Callable[[], Any]
) -> list[tuple[list[OperatorGroup], list[torch.Tensor]]]:
    """:func:`discover_operators`, with each group's input in the forward of ``run()``.

    Per block: ``(groups, inputs)``, ``inputs[k]`` the tensor group ``k`` was called with
    (so a caller that needs the inputs' statistics needs no second forward).
    """
    per_block: list[list[tuple[Operator, torch.Tensor]]] = [[] for _ in blocks]
    seen: set[int] = set()
    handles = []

    def make_hook(b: int, name: str, module: nn.Module):
        def hook(mod: nn.Module, args: tuple) -> None:
            if id(mod) in seen or not args:
                return
            seen.add(id(mod))
            per_block[b].append((Operator(name, module), args[0].detach()))

        return hook

    for b, block in enumerate(blocks):
        for name, module in linear_modules(block).items():
            handles.append(module.register_forward_pre_hook(make_hook(b, name, module)))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()

    result: list[tuple[list[OperatorGroup], list[torch.Tensor]]] = []
    for b, block in enumerate(blocks):
        groups: list[OperatorGroup] = []
        inputs: list[torch.Tensor] = []
        for op, x in per_block[b]:
            for g, gx in zip(groups, inputs):
                if _same_input(x, gx):
                    g.operators.append(op)
                    break
            else:
                groups.append(OperatorGroup([op]))
                inputs.append(x)
        called = {op.name for g in groups for op in g}
        missing = [n for n in linear_modules(block) if n not in called]
        if missing:
            logger.warning("block %d: linear modules never called in the forward pass, left dense: %s", b, missing)
        result.append((groups, inputs))
    return result


def block_operators(block: nn.Module, args: tuple, kwargs: dict[str, Any]) -> list[OperatorGroup]:
    """Operator groups of one block, found by running ``block(*args, **kwargs)`` once."""
    return discover_operators([block], lambda: block(*args, **kwargs))[0]


def model_operators(model: nn.Module, input_ids: torch.Tensor | None = None) -> list[list[OperatorGroup]]:
    """Operator groups of every block, found with one forward pass of the whole model.

    ``input_ids`` (batch, seqlen) defaults to 8 tokens of id 1.
    """
    _, blocks = find_blocks(model)
    if input_ids is None:
        input_ids = torch.ones(1, 8, dtype=torch.long)
    device = next(model.parameters()).device
    return discover_operators(list(blocks), lambda: model(input_ids.to(device), use_cache=False))
