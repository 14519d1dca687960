"""Streaming accumulation of the sufficient statistics ``H, G, c``.

Activations are never stored: each batch of tokens updates ``d_in × d_in`` sums.
"""

from __future__ import annotations

from typing import Any

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.problems.validation import as_tensor, check_finite


def _tokens(x: Any, name: str, d_in: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
    x = as_tensor(x, name)
    if x.shape[-1] != d_in:
        raise ValueError(f"{name} must have last dimension d_in = {d_in}, got shape {tuple(x.shape)}")
    x = x.reshape(-1, d_in).to(device=device, dtype=dtype)
    check_finite(x, name)
    return x


class LayerStatsAccumulator:
    """Streams ``H = X*ᵀX*``, ``C = XᵀX*`` and ``D = XᵀX`` for one linear operator.

    ``X`` is the operator's input in the dense model, ``X*`` the input with earlier
    operators pruned (intra-block error correction).  When ``X*`` is never given
    (``X* = X``) only ``H`` is kept and ``C = D = H``.

    Args:
        d_in: input dimension.
        dtype: accumulation dtype (float32 default; float64 for exactness).
        device: where the sums live.
    """

    def __init__(self, d_in: int, *, dtype: torch.dtype = torch.float32, device: Any = None) -> None:
        if int(d_in) <= 0:
            raise ValueError(f"d_in must be positive, got {d_in}")
        self.d_in = int(d_in)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.H = torch.zeros(self.d_in, self.d_in, dtype=dtype, device=self.device)
        self.C: torch.Tensor | None = None
        self.D: torch.Tensor | None = None
        self.n_tokens = 0

    def add(self, X: Any, X_star: Any = None) -> None:
        """Add a batch: ``X`` and ``X_star`` of shape ``(..., d_in)`` (same token count)."""
        X = _tokens(X, "X", self.d_in, self.dtype, self.device)
        if X_star is None:
            if self.C is not None:
                raise ValueError("this accumulator received X_star before; pass X_star for every batch")
            self.H.addmm_(X.T, X)
        else:
            Xs = _tokens(X_star, "X_star", self.d_in, self.dtype, self.device)
            if Xs.shape[0] != X.shape[0]:
                raise ValueError(
                    f"X and X_star must hold the same tokens: {X.shape[0]} vs {Xs.shape[0]} rows"
                )
            if self.C is None:
                if self.n_tokens > 0:
                    raise ValueError("this accumulator received batches without X_star before")
                self.C = torch.zeros_like(self.H)
                self.D = torch.zeros_like(self.H)
            self.H.addmm_(Xs.T, Xs)
            self.C.addmm_(X.T, Xs)
            self.D.addmm_(X.T, X)
        self.n_tokens += X.shape[0]

    @property
    def error_corrected(self) -> bool:
        return self.C is not None

    def column_norms(self) -> torch.Tensor:
        """``‖X*_j‖₂`` per input column (Wanda's activation norm), shape ``(d_in,)``."""
        return torch.sqrt(torch.diagonal(self.H).clamp_min(0))

    def to_problem(
        self, W0: Any, lam: Any = 0.0, *, damp: float = 0.0, normalize: bool = True, **kwargs: Any
    ) -> LassoProblem:
        """The layer problem for dense weight ``W0 (d_out, d_in)``.

        See :meth:`LassoProblem.from_layer_statistics` (``G = W₀ C``, ``c_i = w₀ᵢ D w₀ᵢᵀ``,
        the damping); with ``normalize`` every statistic is divided by the token count (a
        per-token objective, so ``λ`` does not depend on the calibration size).
        """
        if self.n_tokens == 0:
            raise ValueError("no tokens were accumulated; call add() before to_problem()")
        scale = 1.0 / self.n_tokens if normalize else 1.0
        H = self.H * scale
        C = None if self.C is None else self.C * scale
        D = None if self.D is None else self.D * scale
        return LassoProblem.from_layer_statistics(W0, H, lam, C=C, D=D, damp=damp, **kwargs)


class DataStatsAccumulator:
    """Streams ``H = XᵀX``, ``G = YᵀX`` and ``c = ‖Y_{:,i}‖²`` from batches ``(X, Y)``."""

    def __init__(self, d_in: int, d_out: int, *, dtype: torch.dtype = torch.float64, device: Any = None) -> None:
        if int(d_in) <= 0 or int(d_out) <= 0:
            raise ValueError(f"d_in and d_out must be positive, got {d_in}, {d_out}")
        self.d_in, self.d_out, self.dtype = int(d_in), int(d_out), dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.H = torch.zeros(self.d_in, self.d_in, dtype=dtype, device=self.device)
        self.G = torch.zeros(self.d_out, self.d_in, dtype=dtype, device=self.device)
        self.c = torch.zeros(self.d_out, dtype=dtype, device=self.device)
        self.n_tokens = 0

    def add(self, X: Any, Y: Any) -> None:
        """Add a batch ``X (..., d_in)``, ``Y (..., d_out)``."""
        X = _tokens(X, "X", self.d_in, self.dtype, self.device)
        Y = _tokens(Y, "Y", self.d_out, self.dtype, self.device)
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X and Y must have the same number of rows: {X.shape[0]} vs {Y.shape[0]}")
        self.H.addmm_(X.T, X)
        self.G.addmm_(Y.T, X)
        self.c += (Y * Y).sum(0)
        self.n_tokens += X.shape[0]

    def to_problem(self, lam: Any = 0.0, *, normalize: bool = False, **kwargs: Any) -> LassoProblem:
        if self.n_tokens == 0:
            raise ValueError("no tokens were accumulated; call add() before to_problem()")
        s = 1.0 / self.n_tokens if normalize else 1.0
        return LassoProblem(H=self.H * s, G=self.G * s, c=self.c * s, lam=lam, **kwargs)
