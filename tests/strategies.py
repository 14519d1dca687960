"""Hypothesis strategies that draw a *recipe* (seed + small dimensions + flags) and build
the data from the seed, instead of drawing raw floats.

A :class:`Spec` is hashable, so expensive oracle answers (cvxpy) can be cached per spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

import fistaopt as fo


@dataclass(frozen=True)
class Spec:
    seed: int
    n: int
    d_in: int
    d_out: int
    decades: float        # column scales spread over this many decades (0: none)
    rank_deficient: bool  # X = A B with rank < min(n, d_in)
    zero_cols: bool       # some columns of X are exactly zero (dead input channels)
    zero_rows: bool       # some rows (tokens) of X are exactly zero
    per_row: bool         # λ per row (else a scalar)
    rho: float            # λ = rho · λ_max (per row, or of the whole problem for a scalar)

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """``X (n, d_in)``, ``Y (n, d_out)`` in float64, a pure function of the spec."""
        rng = np.random.default_rng(self.seed)
        n, d_in, d_out = self.n, self.d_in, self.d_out
        if self.rank_deficient and min(n, d_in) > 1:
            r = int(rng.integers(1, min(n, d_in)))
            X = rng.standard_normal((n, r)) @ rng.standard_normal((r, d_in))
        else:
            X = rng.standard_normal((n, d_in))
        if self.decades > 0:
            X = X * 10.0 ** (-self.decades * rng.random(d_in))
        if self.zero_cols and d_in > 1:
            X[:, rng.random(d_in) < 0.25] = 0.0
        if self.zero_rows and n > 1:
            X[rng.random(n) < 0.25, :] = 0.0
        W0 = rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)
        Y = X @ W0.T + 0.1 * rng.standard_normal((n, d_out)) * (np.abs(X).max() + 1e-3)
        return X, Y

    def lam(self, lam_max: np.ndarray) -> np.ndarray | float:
        return self.rho * lam_max if self.per_row else float(self.rho * lam_max.max())

    def problem(self, **kwargs) -> fo.LassoProblem:
        X, Y = self.data()
        p = fo.LassoProblem.from_data(X, Y, **kwargs)
        return p.with_lam(_as_lam(self.lam(p.lam_max().numpy())))


def _as_lam(lam):
    import torch

    return lam if isinstance(lam, float) else torch.as_tensor(lam, dtype=torch.float64)


# λ/λ_max drawn log-uniformly over (1e-3, 1.2]
rhos = st.floats(min_value=-3.0, max_value=np.log10(1.2)).map(lambda e: float(10.0 ** e))


@st.composite
def specs(
    draw,
    max_d: int = 24,
    max_n: int = 64,
    max_decades: float = 3.0,
    allow_degenerate: bool = True,
    rho=rhos,
) -> Spec:
    d_in = draw(st.integers(1, max_d))
    d_out = draw(st.integers(1, max_d))
    # n < d_in sometimes (under-determined), otherwise up to max_n
    n = draw(st.one_of(st.integers(1, max(1, d_in)), st.integers(d_in, max(d_in, max_n))))
    return Spec(
        seed=draw(st.integers(0, 2**31 - 1)),
        n=n,
        d_in=d_in,
        d_out=d_out,
        decades=draw(st.sampled_from([0.0, 1.0, 2.0, 3.0]).filter(lambda x: x <= max_decades)),
        rank_deficient=draw(st.booleans()) if allow_degenerate else False,
        zero_cols=draw(st.booleans()) if allow_degenerate else False,
        zero_rows=draw(st.booleans()) if allow_degenerate else False,
        per_row=draw(st.booleans()),
        rho=draw(rho),
    )


@st.composite
def well_conditioned_specs(draw, max_d: int = 16, rho=st.floats(0.05, 0.9)) -> Spec:
    """Full column rank, unit column scales, n ≥ 2 d_in: H is well conditioned and W* unique."""
    d_in = draw(st.integers(1, max_d))
    d_out = draw(st.integers(1, max_d))
    return Spec(
        seed=draw(st.integers(0, 2**31 - 1)), n=draw(st.integers(2 * d_in + 4, 2 * d_in + 40)),
        d_in=d_in, d_out=d_out, decades=0.0, rank_deficient=False, zero_cols=False,
        zero_rows=False, per_row=draw(st.booleans()), rho=draw(rho),
    )
