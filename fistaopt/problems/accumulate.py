"""Streaming accumulation of the sufficient statistics ``H, G, c``.

Activations are never stored: each batch of tokens updates ``d_in × d_in`` sums.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.problems.validation import as_tensor, check_finite


def _tokens(x: Any, name: str, d_in: int, dtype: torch.dtype, device: Any, width: str = "d_in") -> torch.Tensor:
    x = as_tensor(x, name)
    if x.shape[-1] != d_in:
        raise ValueError(f"{name} must have last dimension {width} = {d_in}, got shape {tuple(x.shape)}")
    x = x.reshape(-1, d_in).to(device=device, dtype=dtype)
    check_finite(x, name)
    return x


class LayerStatsAccumulator:
    """Streams ``H = X*ᵀX*``, ``C = XᵀX*`` and ``D = XᵀX`` for the operators reading one input.

    ``X`` is the operators' input in the dense model, ``X*`` the input with earlier
    operators pruned (intra-block error correction).  When ``X*`` is never given
    (``X* = X``) only ``H`` is kept and ``C = D = H``.

    ``D`` serves only ``cᵢ = w₀ᵢ D w₀ᵢᵀ = ‖X w₀ᵢᵀ‖²``, the squared norms of the dense
    outputs.  A caller whose forward computes those outputs anyway (the dense block's, with
    error correction) passes each batch's ``c`` to :meth:`add` instead: ``T·Σd_out``
    element-wise work against ``2·T·d_in²`` multiply-adds for ``D``.  That needs the operators'
    output widths (``output_rows``), and each operator's statistics are then
    :meth:`for_operator`'s (``H`` and ``C`` shared, ``c`` its rows).

    With ``targets`` (the dense weights ``W₀ₖ (d_outₖ, d_in)`` of the operators) the target
    side is streamed per operator instead: ``Yₖ = X W₀ₖᵀ``, ``Gₖ = Yₖᵀ X*`` and
    ``cₖ = ‖Yₖ‖²`` per row (``c`` summed in float64).  That costs ``2·N·d_in·Σd_out``
    multiply-adds against ``2·N·d_in²`` for ``C`` and ``D``: the cheaper way when
    ``Σ d_out < d_in`` (a down projection; :func:`targets_pay`).  Each operator's
    statistics are then :meth:`for_operator`'s.

    Args:
        d_in: input dimension.
        dtype: accumulation dtype (float32 default; float64 for exactness).
        device: where the sums live.
        targets: the operators' dense weights, in order (see above), or None.
        output_rows: the operators' output widths ``d_outₖ``, in order, for a ``c`` given to
            :meth:`add` (see above); None: ``D`` is streamed.
    """

    def __init__(self, d_in: int, *, dtype: torch.dtype = torch.float32, device: Any = None,
                 targets: Sequence[Any] | None = None, output_rows: Sequence[int] | None = None) -> None:
        if int(d_in) <= 0:
            raise ValueError(f"d_in must be positive, got {d_in}")
        self.d_in = int(d_in)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.H = torch.zeros(self.d_in, self.d_in, dtype=dtype, device=self.device)
        self.C: torch.Tensor | None = None
        self.D: torch.Tensor | None = None
        self.n_tokens = 0
        self.W_targets: torch.Tensor | None = None  # (Σ d_out, d_in): the targets' weights, stacked
        self.G: torch.Tensor | None = None  # (Σ d_out, d_in)
        self.c: torch.Tensor | None = None  # (Σ d_out,) float64
        self.target_rows: list[int] = []
        if targets is not None:
            Ws = [as_tensor(W, f"targets[{k}]") for k, W in enumerate(targets)]
            if not Ws or any(W.ndim != 2 or W.shape[1] != self.d_in for W in Ws):
                raise ValueError(f"targets must be weights of shape (d_out, d_in = {self.d_in}), got "
                                 f"{[tuple(W.shape) for W in Ws]}")
            self.W_targets = torch.cat([W.to(device=self.device, dtype=dtype) for W in Ws])
            check_finite(self.W_targets, "targets")
            self.target_rows = [W.shape[0] for W in Ws]
            self.G = torch.zeros_like(self.W_targets)
            self.c = torch.zeros(self.W_targets.shape[0], dtype=torch.float64, device=self.device)
        if output_rows is not None:
            if targets is not None:
                raise ValueError("give targets or output_rows, not both (targets set the rows)")
            rows = [int(r) for r in output_rows]
            if not rows or any(r <= 0 for r in rows):
                raise ValueError(f"output_rows must be positive output widths, got {list(output_rows)}")
            self.target_rows = rows

    def add(self, X: Any, X_star: Any = None, c: Any = None) -> None:
        """Add a batch: ``X`` and ``X_star`` of shape ``(..., d_in)`` (same token count).

        ``c``: with ``X_star``, this batch's ``Σ_t (X W₀ᵀ)²_ti`` per output row ``(Σ d_outₖ,)``
        (the operators' dense outputs, bias excluded, over the same tokens), which then stands
        for ``D``: give it for every batch or for none (needs ``output_rows``).
        """
        X = _tokens(X, "X", self.d_in, self.dtype, self.device)
        if c is not None and (X_star is None or self.W_targets is not None):
            raise ValueError("c is taken only with X_star, by an accumulator without targets")
        if self.W_targets is not None:
            Xs = X if X_star is None else _tokens(X_star, "X_star", self.d_in, self.dtype, self.device)
            _same_tokens(X, Xs)
            self._add_targets(X @ self.W_targets.T, Xs)
        elif X_star is None:
            if self.C is not None:
                raise ValueError("this accumulator received X_star before; pass X_star for every batch")
            self.H.addmm_(X.T, X)
        else:
            Xs = _tokens(X_star, "X_star", self.d_in, self.dtype, self.device)
            _same_tokens(X, Xs)
            if self.C is None:
                if self.n_tokens > 0:
                    raise ValueError("this accumulator received batches without X_star before")
                self.C = torch.zeros_like(self.H)
                if c is None:
                    self.D = torch.zeros_like(self.H)
                else:
                    if not self.target_rows:
                        raise ValueError("c needs an accumulator with output_rows (the operators' output widths)")
                    self.c = torch.zeros(sum(self.target_rows), dtype=torch.float64, device=self.device)
            if (c is None) != (self.c is None):
                raise ValueError("give c with every batch or with none")
            if c is not None:
                assert self.c is not None
                c = as_tensor(c, "c").reshape(-1).to(device=self.device, dtype=torch.float64)
                if c.shape != self.c.shape:
                    raise ValueError(f"c must have one entry per output row ({self.c.numel()}), got {c.numel()}")
                check_finite(c, "c")
                self.c += c
            else:
                assert self.D is not None
                self.D.addmm_(X.T, X)
            self.H.addmm_(Xs.T, Xs)
            self.C.addmm_(X.T, Xs)
        self.n_tokens += X.shape[0]

    def add_targets(self, Y: Any, X_star: Any) -> None:
        """Add a batch whose targets are given: ``Y (..., Σ d_out)``, the outputs the operators'
        ``X_star (..., d_in)`` are to produce (same token count), instead of ``X W₀ᵀ``
        (a block's last operator fitted to the block's output, :mod:`fistaopt.llm.residual`).
        Needs an accumulator with ``targets`` (they set the operators' rows)."""
        if self.W_targets is None:
            raise ValueError("given targets need an accumulator with targets (the operators' dense weights)")
        Xs = _tokens(X_star, "X_star", self.d_in, self.dtype, self.device)
        Y = _tokens(Y, "Y", self.W_targets.shape[0], self.dtype, self.device, width="Σ d_out")
        _same_tokens(Y, Xs, "Y")
        self._add_targets(Y, Xs)
        self.n_tokens += Xs.shape[0]

    def _add_targets(self, Y: torch.Tensor, Xs: torch.Tensor) -> None:
        assert self.G is not None and self.c is not None
        self.H.addmm_(Xs.T, Xs)
        self.G.addmm_(Y.T, Xs)
        self.c += Y.to(torch.float64).square().sum(0)

    @property
    def error_corrected(self) -> bool:
        return self.C is not None or self.W_targets is not None

    @property
    def takes_c(self) -> bool:
        """Whether :meth:`add` takes a batch's ``c`` (made with ``output_rows``)."""
        return self.W_targets is None and bool(self.target_rows)

    def sums(self) -> list[torch.Tensor]:
        """The summed statistics in the accumulation dtype (``c``, float64, is not among them)."""
        return [t for t in (self.H, self.C, self.D, self.G) if t is not None]

    def column_norms(self) -> torch.Tensor:
        """``‖X*_j‖₂`` per input column (Wanda's activation norm), shape ``(d_in,)``."""
        return torch.sqrt(torch.diagonal(self.H).clamp_min(0))

    def for_operator(self, k: int) -> "LayerStatsAccumulator | OperatorStats":
        """The statistics of the group's operator ``k``: this accumulator itself, or with
        ``targets`` (or a given ``c``) the operator's rows of ``G`` and ``c``."""
        if self.W_targets is None and self.c is None:
            return self
        start = sum(self.target_rows[:k])
        return OperatorStats(self, start, start + self.target_rows[k])

    def rows(self, start: int, stop: int) -> "LayerStatsAccumulator":
        """The statistics of rows ``start:stop`` of a weight: the same (``H, C, D`` hold no rows)."""
        if self.c is not None:
            raise ValueError("an accumulator with targets or a given c holds rows per operator: "
                             "use for_operator(k).rows(...)")
        return self

    def to_problem(
        self, W0: Any, lam: Any = 0.0, *, damp: float = 0.0, normalize: bool = True, **kwargs: Any
    ) -> LassoProblem:
        """The layer problem for dense weight ``W0 (d_out, d_in)``.

        See :meth:`LassoProblem.from_layer_statistics` (``G = W₀ C``, ``c_i = w₀ᵢ D w₀ᵢᵀ``,
        the damping); with ``normalize`` every statistic is divided by the token count (a
        per-token objective, so ``λ`` does not depend on the calibration size).
        """
        if self.c is not None:
            raise ValueError("an accumulator with targets or a given c makes each operator's problem: "
                             "use for_operator(k)")
        scale = self._scale(normalize)
        H = self.H * scale
        C = None if self.C is None else self.C * scale
        D = None if self.D is None else self.D * scale
        return LassoProblem.from_layer_statistics(W0, H, lam, C=C, D=D, damp=damp, **kwargs)

    def _scale(self, normalize: bool) -> float:
        if self.n_tokens == 0:
            raise ValueError("no tokens were accumulated; call add() before to_problem()")
        return 1.0 / self.n_tokens if normalize else 1.0


def _same_tokens(X: torch.Tensor, Xs: torch.Tensor, name: str = "X") -> None:
    if Xs.shape[0] != X.shape[0]:
        raise ValueError(f"{name} and X_star must hold the same tokens: {X.shape[0]} vs {Xs.shape[0]} rows")


def targets_pay(d_in: int, d_outs: Sequence[int]) -> bool:
    """Whether streaming ``G, c`` from the targets (``2·N·d_in·Σd_out``) is cheaper than ``C, D`` (``2·N·d_in²``)."""
    return sum(d_outs) < d_in


class OperatorStats:
    """One operator's rows of a :class:`LayerStatsAccumulator` with targets (``H`` shared, ``G``
    and ``c`` its own) or with a given ``c`` (``H`` and ``C`` shared, ``c`` its own)."""

    def __init__(self, acc: LayerStatsAccumulator, start: int, stop: int) -> None:
        self.acc, self.start, self.stop = acc, start, stop

    @property
    def H(self) -> torch.Tensor:
        return self.acc.H

    @property
    def n_tokens(self) -> int:
        return self.acc.n_tokens

    @property
    def C(self) -> torch.Tensor | None:
        """``C = XᵀX*`` ``(d_in, d_in)`` where ``G = W₀C`` (a given ``c``); None with targets."""
        return self.acc.C

    @property
    def G(self) -> torch.Tensor | None:
        """This operator's rows of ``G = YᵀX*`` ``(d_out, d_in)`` (summed, not normalised); None
        where ``G = W₀C`` (a given ``c``: :meth:`to_problem` forms it)."""
        return None if self.acc.G is None else self.acc.G[self.start:self.stop]

    @property
    def c(self) -> torch.Tensor:
        """This operator's rows of ``c = ‖Y‖²`` ``(d_out,)``, float64 (summed, not normalised)."""
        assert self.acc.c is not None
        return self.acc.c[self.start:self.stop]

    @property
    def error_corrected(self) -> bool:
        return True

    def column_norms(self) -> torch.Tensor:
        return self.acc.column_norms()

    def rows(self, start: int, stop: int) -> "OperatorStats":
        """Rows ``start:stop`` of this operator's weight."""
        if not 0 <= start <= stop <= self.stop - self.start:
            raise ValueError(f"rows {start}:{stop} outside the operator's {self.stop - self.start} rows")
        return OperatorStats(self.acc, self.start + start, self.start + stop)

    def to_problem(
        self, W0: Any, lam: Any = 0.0, *, damp: float = 0.0, normalize: bool = True, **kwargs: Any
    ) -> LassoProblem:
        """The layer problem for this operator's dense weight ``W0 (d_out, d_in)`` (as
        :meth:`LayerStatsAccumulator.to_problem`, with ``G`` from the targets or ``G = W₀C``,
        and ``c`` its rows)."""
        acc = self.acc
        assert acc.c is not None
        W0 = as_tensor(W0, "W0", dtype=acc.dtype, device=acc.device)
        if W0.ndim != 2 or W0.shape != (self.stop - self.start, acc.d_in):
            raise ValueError(f"W0 must have this operator's shape ({self.stop - self.start}, {acc.d_in}), "
                             f"got {tuple(W0.shape)}")
        scale = acc._scale(normalize)
        if self.G is not None:
            G = self.G * scale
        else:  # a given c: G = W₀C, as LassoProblem.from_layer_statistics forms it
            assert acc.C is not None
            check_finite(W0, "W0")
            G = W0 @ (acc.C * scale)
        problem = LassoProblem(H=acc.H * scale, G=G, c=(self.c * scale).to(acc.dtype), lam=lam, **kwargs)
        return problem.with_damping(W0, damp) if damp > 0 else problem


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
