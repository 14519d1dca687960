"""Hooks that capture block inputs and stream per-operator statistics.

Two jobs:

1. :func:`capture_block_inputs` runs the model's embedding part on each calibration
   batch and records what every decoder block is called with: the hidden states
   entering block 0 (batch, seqlen, hidden) and, for every block, the remaining
   positional and keyword arguments (attention mask, position ids, rotary position
   embeddings, ...). Models such as Gemma3 or Qwen2 pass a different mask/rotary
   table to sliding-window layers, so the arguments are recorded per block: each
   block's ``forward`` is temporarily replaced by a recorder that returns its input
   unchanged, and the last one raises :class:`StopForward` so nothing after the blocks
   runs. Argument tensors shared between blocks are stored once (by reference).

2. :func:`input_of` runs a block until a given linear module is about to be called and
   returns that module's input, stopping the forward with :class:`StopForward` right
   there (so later parts of the block are never computed). The prune loop streams these
   inputs into :class:`fistaopt.problems.LayerStatsAccumulator` one calibration batch at a
   time; the activations of the whole calibration set are never held at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from fistaopt.llm.model import find_blocks

logger = logging.getLogger(__name__)


class StopForward(Exception):
    """Raised from a hook to end a forward pass early."""


def to_device(obj: Any, device: torch.device | str | None) -> Any:
    """Move every tensor inside ``obj`` (nested tuples/lists/dicts) to ``device``."""
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def block_output(out: Any) -> torch.Tensor:
    """The hidden states from a block's return value (a tensor, or a tuple starting with one)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot read hidden states from a block output of type {type(out).__name__}")


@dataclass
class BlockCall:
    """What a block is called with, apart from the hidden states: ``block(h, *args, **kwargs)``."""

    args: tuple
    kwargs: dict[str, Any]

    def run(self, block: nn.Module, hidden: torch.Tensor, device: torch.device | str | None = None) -> Any:
        return block(hidden, *to_device(self.args, device), **to_device(self.kwargs, device))


@dataclass
class BlockInputs:
    """Calibration inputs of the decoder blocks.

    Attributes:
        hidden: per calibration batch, the hidden states entering the current block,
            each (batch, seqlen, hidden), on the CPU.
        calls: ``calls[b][i]`` is the :class:`BlockCall` of block ``i`` for batch ``b``.
    """

    hidden: list[torch.Tensor]
    calls: list[list[BlockCall]]

    @property
    def n_batches(self) -> int:
        return len(self.hidden)


def _split_hidden(args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, tuple, dict[str, Any]]:
    if args:
        return args[0], tuple(args[1:]), dict(kwargs)
    kwargs = dict(kwargs)
    if "hidden_states" not in kwargs:
        raise TypeError("block was called without hidden states (no positional arg, no hidden_states=)")
    return kwargs.pop("hidden_states"), (), kwargs


@torch.no_grad()
def capture_block_inputs(model: nn.Module, batches: Iterable[torch.Tensor]) -> BlockInputs:
    """Hidden states entering block 0 and every block's call arguments, per batch.

    ``batches`` yields LongTensors (batch, seqlen) of token ids. The model runs where its
    parameters are (normally the CPU); the blocks themselves are never executed.
    """
    _, blocks = find_blocks(model)
    n_blocks = len(blocks)
    device = next(model.parameters()).device
    hidden: list[torch.Tensor] = []
    calls: list[list[BlockCall]] = []
    current: list[BlockCall] = []
    first_hidden: list[torch.Tensor] = []

    def make_recorder(i: int):
        def recorder(*args: Any, **kwargs: Any) -> torch.Tensor:
            h, rest, kw = _split_hidden(args, kwargs)
            if i == 0:
                first_hidden.append(h.detach().cpu())
            current.append(BlockCall(rest, kw))
            if i == n_blocks - 1:
                raise StopForward
            return h

        return recorder

    for i, block in enumerate(blocks):
        block.forward = make_recorder(i)  # instance attribute shadows the class method
    try:
        for ids in batches:
            current = []
            first_hidden.clear()
            try:
                model(ids.to(device), use_cache=False)
            except StopForward:
                pass
            if len(current) != n_blocks or len(first_hidden) != 1:
                raise RuntimeError(
                    f"expected each of the {n_blocks} blocks to be called once per forward, "
                    f"saw {len(current)} calls"
                )
            hidden.append(first_hidden[0])
            calls.append(current)
    finally:
        for block in blocks:
            del block.forward
    return BlockInputs(hidden=hidden, calls=calls)


@torch.no_grad()
def input_of(
    block: nn.Module,
    module: nn.Module,
    call: BlockCall,
    hidden: torch.Tensor,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The input tensor that ``module`` (a submodule of ``block``) receives when
    ``block(hidden, ...)`` runs; the block stops right before ``module`` is computed."""
    captured: list[torch.Tensor] = []

    def hook(mod: nn.Module, args: tuple) -> None:
        captured.append(args[0].detach())
        raise StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        call.run(block, hidden.to(device) if device is not None else hidden, device)
    except StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"module {type(module).__name__} was not called during the block forward")
    return captured[0]


@torch.no_grad()
def inputs_of_many(
    block: nn.Module,
    modules: Sequence[nn.Module],
    call: BlockCall,
    hidden: torch.Tensor,
    device: torch.device | str | None = None,
    outputs: list[torch.Tensor] | None = None,
    on_output: Mapping[nn.Module, Callable[[torch.Tensor], None]] | None = None,
) -> list[torch.Tensor]:
    """Inputs of several modules of ``block`` from one forward, stopping after the last is reached.

    Used without error correction, where all statistics of a block come from the dense block.
    With ``outputs`` (a list) the forward runs to its end and the block's output (on the
    CPU) is appended to it.  ``on_output`` maps modules to a function that receives the
    module's first output (detached); the forward then runs until each of them has run.
    """
    captured: dict[int, torch.Tensor] = {}
    wanted = {id(m) for m in modules}
    handed: set[int] = set()
    handlers = {id(m): fn for m, fn in (on_output or {}).items()}
    handles = []

    def done() -> bool:
        return outputs is None and wanted.issubset(captured) and handed.issuperset(handlers)

    def hook(mod: nn.Module, args: tuple) -> None:
        captured.setdefault(id(mod), args[0].detach())
        if done():
            raise StopForward

    def output_hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if id(mod) not in handed:
            handed.add(id(mod))
            handlers[id(mod)](out.detach())
        if done():
            raise StopForward

    for m in modules:
        handles.append(m.register_forward_pre_hook(hook))
    for m in (on_output or {}):
        handles.append(m.register_forward_hook(output_hook))
    try:
        out = call.run(block, hidden.to(device) if device is not None else hidden, device)
        if outputs is not None:
            outputs.append(block_output(out).detach().cpu())
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [type(m).__name__ for m in modules if id(m) not in captured]
    missing += [type(m).__name__ for m in (on_output or {}) if id(m) not in handed]
    if missing:
        raise RuntimeError(f"modules not called during the block forward: {missing}")
    return [captured[id(m)] for m in modules]


@torch.no_grad()
def run_block(block: nn.Module, call: BlockCall, hidden: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Full block forward; returns the output hidden states on the CPU."""
    out = call.run(block, hidden.to(device) if device is not None else hidden, device)
    return block_output(out).detach().cpu()


def calibration_batches(calibration: Any, batch_size: int, model: nn.Module | None = None) -> list[torch.Tensor]:
    """Split calibration token ids (a LongTensor ``(nsamples, seqlen)`` or a list of them)
    into batches of at most ``batch_size`` rows, checking them against the model's vocabulary."""
    if isinstance(calibration, torch.Tensor):
        parts: Sequence[Any] = [calibration]
    elif isinstance(calibration, (list, tuple)):
        parts = calibration
    else:
        raise TypeError(
            f"calibration must be a LongTensor (nsamples, seqlen) or a list of them, got {type(calibration).__name__}"
        )
    if len(parts) == 0:
        raise ValueError("calibration is empty (an empty list)")
    vocab = _vocab_size(model)
    batches = []
    for k, t in enumerate(parts):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"calibration[{k}] must be a LongTensor (nsamples, seqlen), got {type(t).__name__}")
        if t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"calibration must hold integer token ids (torch.long), got dtype {t.dtype}")
        if t.ndim != 2:
            raise ValueError(f"calibration tensors must have shape (nsamples, seqlen), got {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"calibration is empty: shape {tuple(t.shape)}")
        if int(t.min()) < 0 or (vocab is not None and int(t.max()) >= vocab):
            raise ValueError(f"calibration token ids must lie in [0, {vocab}), got range [{int(t.min())}, {int(t.max())}]")
        batches.extend(t.long().split(batch_size))
    return batches


def _vocab_size(model: nn.Module | None) -> int | None:
    try:
        return int(model.get_input_embeddings().num_embeddings)  # type: ignore[union-attr]
    except Exception:
        return None
