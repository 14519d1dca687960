"""Baseline pruners: magnitude, Wanda and SparseGPT, from the math.

All three take a dense weight ``W (d_out, d_in)`` (PyTorch ``nn.Linear`` layout), the
statistics they need and a :class:`fistaopt.sparsity.Pattern`, and return
``(W_pruned, mask)`` with ``mask`` a bool tensor of shape ``(d_out, d_in)``,
True = kept, exactly following the pattern, and ``W_pruned`` zero outside ``mask``.

- magnitude: keep the largest ``|W_ij|``. No data.
- Wanda (Sun et al., 2023): keep the largest ``|W_ij| · ‖X_j‖₂`` where ``‖X_j‖₂`` is the
  norm of input column ``j`` over the calibration tokens; no weight update.
- SparseGPT (Frantar & Alistarh, 2023): with ``H = XᵀX`` (damped), process the columns
  left to right in blocks of ``blocksize``; inside a block, choose the mask adaptively
  by the OBS saliency ``w_ij² / [H⁻¹]_jj²`` (computed on the already-updated weights),
  then zero each pruned weight and spread its error over the not-yet-processed columns
  with the rows of the upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = UᵀU``):
  ``W[:, j:] -= ((w_j - q_j) / U_jj) ⊗ U[j, j:]``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

BASELINES = ("magnitude", "wanda", "sparsegpt")


def _check_weight(W: Any) -> torch.Tensor:
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"W must be a torch.Tensor (d_out, d_in), got {type(W).__name__}")
    if W.ndim != 2:
        raise ValueError(f"W must have shape (d_out, d_in), got {tuple(W.shape)}")
    if not torch.is_floating_point(W):
        raise TypeError(f"W must be a floating-point tensor, got dtype {W.dtype}")
    return W


def _check_pattern(pattern: Any, d_in: int) -> None:
    kind = getattr(pattern, "kind", None)
    if kind not in ("unstructured", "nm"):
        raise TypeError(f"pattern must be a fistaopt.sparsity.Pattern, got {pattern!r}")
    if kind == "nm" and d_in % int(pattern.m) != 0:
        raise ValueError(f"{pattern.n}:{pattern.m} sparsity needs d_in divisible by {pattern.m}, got d_in = {d_in}")


def magnitude(W: torch.Tensor, pattern: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the largest ``|W_ij|`` under ``pattern``. Returns ``(W * mask, mask)``."""
    from fistaopt.sparsity import project

    W = _check_weight(W)
    _check_pattern(pattern, W.shape[1])
    mask = project(W.abs(), pattern)
    return W * mask, mask


def wanda(W: torch.Tensor, col_norms: torch.Tensor, pattern: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the largest ``|W_ij| · ‖X_j‖₂`` under ``pattern`` (per row / per N:M group).

    Args:
        W: dense weight (d_out, d_in).
        col_norms: ``‖X_j‖₂`` of shape (d_in,), e.g. ``sqrt(diag(XᵀX))``.
    """
    from fistaopt.sparsity import project

    W = _check_weight(W)
    if not isinstance(col_norms, torch.Tensor) or col_norms.shape != (W.shape[1],):
        shape = tuple(col_norms.shape) if isinstance(col_norms, torch.Tensor) else type(col_norms).__name__
        raise ValueError(f"col_norms must have shape (d_in,) = ({W.shape[1]},), got {shape}")
    _check_pattern(pattern, W.shape[1])
    scores = W.abs().to(torch.float32) * col_norms.to(device=W.device, dtype=torch.float32).unsqueeze(0)
    mask = project(scores, pattern)
    return W * mask, mask


def _prune_counts(pattern: Any, d_out: int, d_in: int) -> int:
    """How many weights the pattern prunes: per row (row scope) or in total (layer scope).

    Asks :func:`fistaopt.sparsity.project` itself, so the counts match it exactly.
    """
    from fistaopt.sparsity import project

    if pattern.scope == "layer":
        return int((~project(torch.rand(d_out, d_in), pattern)).sum())
    return int((~project(torch.rand(1, d_in), pattern)).sum())


def sparsegpt(
    W: torch.Tensor,
    H: torch.Tensor,
    pattern: Any,
    *,
    damp: float = 0.01,
    blocksize: int = 128,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT: adaptive OBS mask selection with weight updates.

    Args:
        W: dense weight (d_out, d_in).
        H: ``XᵀX`` (d_in, d_in), any positive scale (un-normalized sums are fine).
        pattern: unstructured (row or layer scope) or N:M.
        damp: ``damp · mean(diag H)`` is added to the diagonal (SparseGPT's ``percdamp``).
        blocksize: columns per lazy-update block (rounded down to a multiple of M for N:M).
        dtype: computation dtype.

    Dead inputs (``H_jj = 0``) get ``H_jj = 1`` and their weight column set to 0.
    Exact counts: for row scope, each row prunes exactly as many weights as
    ``fistaopt.sparsity.project`` would, spread over the column blocks in proportion to
    their width (cumulative rounding); for layer scope the same holds for the total,
    chosen across all rows of each column block (SparseGPT's original selection).
    """
    W0 = _check_weight(W)
    d_out, d_in = W0.shape
    if not isinstance(H, torch.Tensor) or H.shape != (d_in, d_in):
        shape = tuple(H.shape) if isinstance(H, torch.Tensor) else type(H).__name__
        raise ValueError(f"H must have shape (d_in, d_in) = ({d_in}, {d_in}), got {shape}")
    _check_pattern(pattern, d_in)
    if damp < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    if int(blocksize) < 1:
        raise ValueError(f"blocksize must be >= 1, got {blocksize}")

    W, U = _inverse_hessian_factor(W0.detach().to(dtype).clone(), H, damp)
    nm = pattern.kind == "nm"
    if nm:
        blocksize = max(int(pattern.m), (int(blocksize) // int(pattern.m)) * int(pattern.m))
    total_prune = 0 if nm else _prune_counts(pattern, d_out, d_in)
    row_scope = not nm and pattern.scope != "layer"

    pruned = torch.zeros(d_out, d_in, dtype=torch.bool, device=W.device)
    done_prune = 0  # prunes allotted to the blocks so far (per row, or total for layer scope)
    for i1 in range(0, d_in, blocksize):
        i2 = min(i1 + blocksize, d_in)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        mask1 = torch.zeros_like(W1, dtype=torch.bool)  # True = pruned
        if not nm:
            upto = (total_prune * i2) // d_in
            _select_unstructured(mask1, W1, torch.diagonal(U1), upto - done_prune, row_scope)
            done_prune = upto
        Q1, Err1 = _prune_columns(W1, U1, mask1, pattern if nm else None)
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    mask = ~pruned
    W = (W * mask).to(W0.dtype)
    return W, mask


def _inverse_hessian_factor(W: torch.Tensor, H: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, U)``: ``U`` the upper Cholesky factor of the damped ``H⁻¹ = UᵀU`` ``(d_in, d_in)``.

    Dead inputs (``H_jj = 0``) get ``H_jj = 1`` and their column of ``W`` is zeroed (in place).
    """
    H = H.detach().to(device=W.device, dtype=W.dtype).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    diag = torch.arange(H.shape[0], device=W.device)
    H[diag, diag] += damp * torch.diagonal(H).mean()
    L = torch.linalg.cholesky(H)
    return W, torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


def _select_unstructured(mask1: torch.Tensor, W1: torch.Tensor, d1: torch.Tensor, k: int, row_scope: bool) -> None:
    """Mark (in ``mask1``) the ``k`` lowest OBS saliencies ``w²/[U]_jj²`` of a column block: per row or overall."""
    if k <= 0:
        return
    saliency = W1**2 / d1.unsqueeze(0) ** 2
    if row_scope:
        mask1.scatter_(1, torch.topk(saliency, k, dim=1, largest=False).indices, True)
    else:
        mask1.view(-1)[torch.topk(saliency.flatten(), k, largest=False).indices] = True


def _prune_columns(W1: torch.Tensor, U1: torch.Tensor, mask1: torch.Tensor, nm: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune a column block left to right, spreading each column's error over the later ones.

    ``W1 (d_out, b)`` is updated in place; for an N:M pattern ``nm`` the mask of each
    group of M columns is chosen when the group is reached (on the updated weights).
    Returns the pruned block ``Q1`` and the scaled errors ``Err1`` (both ``(d_out, b)``).
    """
    Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
    d1 = torch.diagonal(U1)
    for i in range(W1.shape[1]):
        w = W1[:, i]
        if nm is not None and i % nm.m == 0:
            saliency = W1[:, i : i + nm.m] ** 2 / d1[i : i + nm.m].unsqueeze(0) ** 2
            idx = torch.topk(saliency, nm.m - nm.n, dim=1, largest=False).indices
            mask1[:, i : i + nm.m].scatter_(1, idx, True)
        q = w.clone()
        q[mask1[:, i]] = 0
        Q1[:, i] = q
        err = (w - q) / U1[i, i]
        W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
        Err1[:, i] = err
    return Q1, Err1
