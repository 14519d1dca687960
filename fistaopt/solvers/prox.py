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


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bfloat16 natively: a CUDA device of compute capability 8.0
    or later, or a CPU with AVX512-BF16 or AMX-BF16.  One thread of an AMD EPYC with
    AVX512-BF16 ran a 576 × 576 × 576 bfloat16 GEMM in 1.82 ms against 4.16 ms in float32; one
    with AVX2 only ran 1536 × 576 × 576 in 415 ms against 12.3 ms (the products are emulated)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    capabilities = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    caps = capabilities() if capabilities is not None else {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


class PrecisionWarning(UserWarning):
    """A requested reduced-precision mode does not take effect here (``tf32`` on a CPU), or runs
    slower than IEEE float32 (``bf16`` on a device without native bfloat16 products)."""


def _new_api() -> bool:
    """torch ≥ 2.9 has per-backend ``fp32_precision`` flags (mixing them with the legacy
    ``allow_tf32`` / ``set_float32_matmul_precision`` API raises on some reads)."""
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(
        getattr(torch.backends, "mkldnn", None), "matmul"
    ) and hasattr(torch.backends.mkldnn.matmul, "fp32_precision")


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device | str | None = None) -> Iterator[None]:
    """Set float32 matmul precision for the duration of a solve, then restore it exactly.

    ``fp32``: IEEE float32 everywhere (TF32 off on CUDA, and oneDNN on CPU kept IEEE);
    ``tf32``: TF32 tensor cores for CUDA matmuls when ``device`` is CUDA — on CPU it has
    no effect, the CPU GEMM is kept IEEE (FISTA reports ``effective_precision`` and
    warns); ``bf16``: the products in bfloat16 are done by the caller, here float32
    matmuls are kept IEEE.  Nothing global changes at import; the previous settings —
    on torch ≥ 2.9 the per-backend ``fp32_precision`` strings, else the legacy
    ``float32_matmul_precision`` / ``allow_tf32`` flags — are restored, also on error.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    on_cuda = device is None or torch.device(device).type == "cuda"
    allow = precision == "tf32" and on_cuda
    if _new_api():
        cuda_mm, mkl_mm = torch.backends.cuda.matmul, torch.backends.mkldnn.matmul
        old = (cuda_mm.fp32_precision, mkl_mm.fp32_precision)
        try:
            cuda_mm.fp32_precision = "tf32" if allow else "ieee"
            mkl_mm.fp32_precision = "ieee"
            yield
        finally:
            cuda_mm.fp32_precision, mkl_mm.fp32_precision = old
        return
    old_prec = torch.get_float32_matmul_precision()
    old_cuda = torch.backends.cuda.matmul.allow_tf32
    old_cudnn = torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("high" if allow else "highest")
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
        yield
    finally:
        torch.set_float32_matmul_precision(old_prec)
        torch.backends.cuda.matmul.allow_tf32 = old_cuda
        torch.backends.cudnn.allow_tf32 = old_cudnn
