"""Proximal operators and precision control shared by the first-order solvers."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def soft_threshold(Z: torch.Tensor, thr: torch.Tensor | float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``S_thr(Z) = sign(Z) · max(|Z| − thr, 0)`` (the prox of ``thr·|·|``), zero outside ``mask``.

    ``thr`` broadcasts against ``Z``.  Moreau: ``Z = S_thr(Z) + Π_[−thr, thr](Z)``.
    """
    out = (Z.abs() - thr).clamp_(min=0).mul_(torch.sign(Z))
    if mask is not None:
        out.mul_(mask)
    return out


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Set float32 matmul precision for the duration of a solve, then restore it.

    ``fp32``: IEEE float32 (TF32 off); ``tf32``: TF32 tensor cores allowed (CUDA only;
    on CPU it has no effect and float32 is IEEE); ``bf16``: products in bfloat16 are
    done by the caller, here only TF32 is disabled.  Nothing global changes at import
    and the previous settings are restored even on error.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    old_prec = torch.get_float32_matmul_precision()
    old_cuda = torch.backends.cuda.matmul.allow_tf32
    old_cudnn = torch.backends.cudnn.allow_tf32
    try:
        allow = precision == "tf32"
        torch.set_float32_matmul_precision("high" if allow else "highest")
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
        yield
    finally:
        torch.set_float32_matmul_precision(old_prec)
        torch.backends.cuda.matmul.allow_tf32 = old_cuda
        torch.backends.cudnn.allow_tf32 = old_cudnn
