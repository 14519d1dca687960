"""Perplexity on non-overlapping windows (the SparseGPT/Wanda/FISTAPruner protocol).

The token stream is cut into ``n_windows = n_tokens // seqlen`` windows of ``seqlen``
tokens (the remainder is dropped); inside each window every token but the first is
predicted from its prefix, and

    ppl = exp( Σ_windows Σ_t NLL_t  /  (n_windows · (seqlen − 1)) ),

the exponential of the mean negative log-likelihood over all predicted tokens.

Models trained with a BOS token at the start of every sequence (Llama 2/3, Gemma,
Mistral) are evaluated with ``bos_token_id`` set: each window is then BOS followed by
``seqlen − 1`` text tokens, so a window still holds ``seqlen`` tokens and ``seqlen − 1``
predictions (BOS itself is never predicted), and ``n_windows = n_tokens // (seqlen − 1)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclass
class PerplexityResult:
    """``ppl``; ``nll`` the mean NLL (nats); ``n_tokens`` predicted tokens; windows used."""

    ppl: float
    nll: float
    n_tokens: int
    seqlen: int
    n_windows: int

    def __float__(self) -> float:
        return self.ppl

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def perplexity(
    model: Any,
    tokens: torch.Tensor,
    *,
    seqlen: int = 512,
    max_tokens: int | None = None,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = False,
    bos_token_id: int | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``tokens`` (1-D LongTensor, or (1, n)).

    Args:
        seqlen: window length.
        max_tokens: only use the first ``max_tokens`` tokens.
        batch_size: windows per forward.
        device: where to run (default: where the model is). The model is moved there.
        progress: show a tqdm bar over batches.
        bos_token_id: when given, every window starts with this token followed by
            ``seqlen − 1`` text tokens (see :func:`fistaopt.llm.data.bos_token_id`).

    Returns a :class:`PerplexityResult` (``float(result)`` is the perplexity).
    """
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a LongTensor, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
    if tokens.ndim == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.ndim != 1:
        raise ValueError(f"tokens must have shape (n_tokens,) or (1, n_tokens), got {tuple(tokens.shape)}")
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise ValueError(f"seqlen must be an int >= 2, got {seqlen!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        tokens = tokens[:max_tokens]
    if bos_token_id is not None and (isinstance(bos_token_id, bool) or not isinstance(bos_token_id, int) or bos_token_id < 0):
        raise ValueError(f"bos_token_id must be a non-negative int or None, got {bos_token_id!r}")
    text_len = seqlen if bos_token_id is None else seqlen - 1
    n_windows = tokens.numel() // text_len
    if n_windows == 0:
        raise ValueError(f"need at least {text_len} tokens for one window of seqlen {seqlen}, got {tokens.numel()}")
    windows = tokens[: n_windows * text_len].long().view(n_windows, text_len)
    if bos_token_id is not None:
        windows = torch.cat([torch.full((n_windows, 1), bos_token_id, dtype=torch.long), windows], dim=1)

    if device is not None:
        model.to(device)
    run_device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll = 0.0
    try:
        for b in tqdm(range(0, n_windows, batch_size), desc="perplexity", disable=not progress, leave=False):
            ids = windows[b : b + batch_size].to(run_device)
            logits = model(input_ids=ids, use_cache=False).logits
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                ids[:, 1:].reshape(-1),
                reduction="sum",
            )
            total_nll += float(nll)
    finally:
        model.train(was_training)
    n_pred = n_windows * (seqlen - 1)
    mean_nll = total_nll / n_pred
    return PerplexityResult(ppl=math.exp(mean_nll), nll=mean_nll, n_tokens=n_pred, seqlen=seqlen, n_windows=n_windows)
