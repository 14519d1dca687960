"""Seeded synthetic layer problems for tests, studies and benchmarks.

Kinds (``d_out × d_in`` weight, ``n`` tokens):

- ``iid``: ``X`` with i.i.d. standard normal entries (well conditioned when n ≫ d_in).
- ``correlated``: rows of ``X`` drawn from a Toeplitz covariance ``Σ_jk = ρ^|j−k|``
  (ρ = 0.9), the classic hard case for coordinate methods.
- ``llm-like``: what LLM activations look like: column scales spread over three
  decades, a few outlier channels 50× larger, and a shared low-rank component; the
  Gram matrix has condition number ≥ 1e5.

The target is ``Y = X W₀ᵀ`` for a random dense ``W₀``; with ``perturb > 0`` the input
is ``X* = X + perturb · noise`` (an error-corrected layer problem).  ``λ`` is
``lam_ratio · λ_max`` per row.
"""

from __future__ import annotations

import math

import torch

from fistaopt.problems.lasso import LassoProblem

PROBLEM_KINDS = ("iid", "correlated", "llm-like")


def _inputs(kind: str, n: int, d_in: int, gen: torch.Generator) -> torch.Tensor:
    Z = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    if kind == "iid":
        return Z
    if kind == "correlated":
        rho = 0.9
        idx = torch.arange(d_in, dtype=torch.float64)
        cov = rho ** (idx[:, None] - idx[None, :]).abs()
        return Z @ torch.linalg.cholesky(cov).T
    if kind == "llm-like":
        scales = 10 ** (torch.rand(d_in, generator=gen, dtype=torch.float64) * 2 - 1.5)
        n_out = max(1, d_in // 50)
        outliers = torch.randperm(d_in, generator=gen)[:n_out]
        scales[outliers] *= 20
        rank = max(1, d_in // 16)
        shared = torch.randn(n, rank, generator=gen, dtype=torch.float64) @ torch.randn(
            rank, d_in, generator=gen, dtype=torch.float64
        )
        return (Z + 0.5 * shared) * scales
    raise ValueError(f"unknown problem kind {kind!r}; valid kinds: {', '.join(PROBLEM_KINDS)}")


def make_problem(
    kind: str = "llm-like",
    d_out: int = 64,
    d_in: int = 128,
    *,
    n: int | None = None,
    lam_ratio: float = 0.1,
    perturb: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> LassoProblem:
    """A seeded synthetic :class:`LassoProblem` (statistics normalized per token).

    Args:
        kind: one of :data:`PROBLEM_KINDS`.
        d_out, d_in: weight shape.
        n: number of tokens (default ``4 · d_in``).
        lam_ratio: ``λ_i = lam_ratio · λ_max,i``.
        perturb: relative noise on the input (``X* ≠ X``) for an error-corrected problem.
        seed: random seed (the problem is a pure function of its arguments).
    """
    if kind not in PROBLEM_KINDS:
        raise ValueError(f"unknown problem kind {kind!r}; valid kinds: {', '.join(PROBLEM_KINDS)}")
    if d_out <= 0 or d_in <= 0:
        raise ValueError(f"d_out and d_in must be positive, got {d_out}, {d_in}")
    if not (math.isfinite(lam_ratio) and lam_ratio >= 0):
        raise ValueError(f"lam_ratio must be finite and >= 0, got {lam_ratio}")
    n = n or 4 * d_in
    gen = torch.Generator().manual_seed(seed)
    X = _inputs(kind, n, d_in, gen)
    W0 = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64) / math.sqrt(d_in)
    X_star = X + perturb * X.std(0) * torch.randn(n, d_in, generator=gen, dtype=torch.float64) if perturb else None
    prob = LassoProblem.from_layer(W0, X, X_star, lam=0.0)
    prob = LassoProblem(H=prob.H / n, G=prob.G / n, c=prob.c / n)
    prob = prob.with_lam(lam_ratio * prob.lam_max())
    prob.metadata = {"kind": kind, "d_out": d_out, "d_in": d_in, "n": n, "lam_ratio": lam_ratio,
                     "perturb": perturb, "seed": seed}
    return prob.to(dtype=dtype)
