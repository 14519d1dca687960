"""Perplexity of a model that is never materialised: the evaluation windows stream through the blocks.

:func:`llm.perplexity <fistaopt.llm.evaluate.perplexity>` runs the whole model on one
batch of windows after another.  Here the order is turned around, so that each decoder
block is read from its shard once: the hidden states of *all* windows are kept
(``n_windows × seqlen × hidden`` floats), block ``i`` is loaded, run on every batch
and released, and then the model's head (final norm, ``lm_head``) runs on the last
hidden states.  That last step goes through :func:`~fistaopt.llm.evaluate.perplexity`
itself, with a stand-in model (:class:`_Head`) whose blocks return the precomputed
states, so the windows, the loss and the reduction are the very same code; the stand-in
checks that it is asked for the windows it prepared.  On the same device the result
equals ``perplexity`` of the in-memory model.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from fistaopt.llm.capture import block_output, capture_block_inputs
from fistaopt.llm.evaluate import PerplexityResult, perplexity
from fistaopt.llm.shards import ShardedModel, safetensors_folder


def evaluation_windows(tokens: torch.Tensor, seqlen: int, max_tokens: int | None,
                       bos_token_id: int | None) -> torch.Tensor:
    """The windows ``(n_windows, seqlen)`` that :func:`~fistaopt.llm.evaluate.perplexity` cuts from ``tokens``."""
    flat = tokens.reshape(-1)[:max_tokens]
    text_len = seqlen if bos_token_id is None else seqlen - 1
    n = flat.numel() // text_len
    windows = flat[: n * text_len].long().view(n, text_len)
    if bos_token_id is None:
        return windows
    return torch.cat([torch.full((n, 1), bos_token_id, dtype=torch.long), windows], dim=1)


class _Head(nn.Module):
    """The model with its blocks replaced by precomputed outputs: ``forward`` gives the logits of batch ``k``."""

    def __init__(self, sharded: ShardedModel, batches: list[torch.Tensor], final: list[torch.Tensor],
                 tuple_output: bool) -> None:
        super().__init__()
        self.lm = sharded.model
        self.blocks = sharded.blocks
        self.batches, self.final, self.tuple_output = batches, final, tuple_output
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> Any:
        k = self.calls
        if k >= len(self.batches) or not torch.equal(input_ids.cpu(), self.batches[k]):
            raise RuntimeError(f"streamed perplexity: batch {k} is not one of the prepared evaluation windows")
        self.calls += 1
        hidden = self.final[k].to(input_ids.device)

        def first(*args: Any, **kwargs: Any) -> Any:
            return (hidden,) if self.tuple_output else hidden

        def identity(h: Any = None, *args: Any, **kwargs: Any) -> Any:
            h = kwargs["hidden_states"] if h is None else h
            return (h,) if self.tuple_output else h

        for i, block in enumerate(self.blocks):
            block.forward = first if i == 0 else identity  # instance attribute shadows the class method
        try:
            return self.lm(input_ids=input_ids, use_cache=use_cache)
        finally:
            for block in self.blocks:
                del block.forward


@torch.no_grad()
def _final_hidden(sharded: ShardedModel, batches: list[torch.Tensor], device: torch.device) -> tuple[list[torch.Tensor], bool]:
    """The last block's output for every batch, one block resident at a time; and whether blocks return tuples."""
    inputs = capture_block_inputs(sharded.model, batches)
    hidden, tuple_output = inputs.hidden, False
    for i, block in enumerate(sharded.blocks):
        sharded.load(i)
        block.to(device)
        try:
            outs = [inputs.calls[b][i].run(block, h.to(device), device) for b, h in enumerate(hidden)]
            tuple_output = not isinstance(outs[0], torch.Tensor)
            hidden = [block_output(o).detach().cpu() for o in outs]
            del outs
        finally:
            sharded.release(i)
    return hidden, tuple_output


def streamed_perplexity(sharded: ShardedModel, tokens: torch.Tensor, *, seqlen: int = 512,
                        max_tokens: int | None = None, batch_size: int = 1, device: torch.device | str | None = None,
                        progress: bool = False, bos_token_id: int | None = None) -> PerplexityResult:
    """:func:`~fistaopt.llm.evaluate.perplexity` of ``sharded`` (arguments as there), block by block.

    The blocks run on ``device`` (default: the CPU); embeddings and the head stay on the CPU.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"tokens must be a LongTensor, got {getattr(tokens, 'dtype', type(tokens).__name__)}")
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise ValueError(f"seqlen must be an int >= 2, got {seqlen!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    windows = evaluation_windows(tokens, seqlen, max_tokens, bos_token_id)
    if windows.shape[0] == 0:  # let perplexity word the refusal
        return perplexity(sharded.model, tokens, seqlen=seqlen, max_tokens=max_tokens, bos_token_id=bos_token_id)
    batches = list(windows.split(batch_size))
    was_training = sharded.model.training
    sharded.model.eval()
    try:
        final, tuple_output = _final_hidden(sharded, batches, torch.device(device) if device is not None else torch.device("cpu"))
        head = _Head(sharded, batches, final, tuple_output)
        result = perplexity(head, tokens, seqlen=seqlen, max_tokens=max_tokens, batch_size=batch_size,
                            progress=progress, bos_token_id=bos_token_id)
    finally:
        sharded.model.train(was_training)
    if head.calls != len(batches):
        raise RuntimeError(f"streamed perplexity: {head.calls} of {len(batches)} prepared batches were evaluated")
    return result


def perplexity_from_pretrained(model: str | os.PathLike[str] | None, tokens: torch.Tensor, *, seqlen: int = 512,
                               max_tokens: int | None = None, batch_size: int = 1,
                               device: torch.device | str | None = None, progress: bool = False,
                               bos_token_id: int | None = None, dtype: torch.dtype = torch.float32) -> PerplexityResult:
    """Perplexity of a safetensors folder (or GGUF file, or ``None`` for the default) without loading it whole.

    Arguments as :func:`~fistaopt.llm.evaluate.perplexity`; one decoder block is in memory at a time.
    """
    return streamed_perplexity(ShardedModel(safetensors_folder(model), dtype=dtype), tokens, seqlen=seqlen,
                               max_tokens=max_tokens, batch_size=batch_size, device=device, progress=progress,
                               bos_token_id=bos_token_id)


__all__ = ["perplexity_from_pretrained", "streamed_perplexity", "evaluation_windows"]
