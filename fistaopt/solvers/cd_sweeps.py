"""The coordinate-descent sweeps of :mod:`fistaopt.solvers.cd`, on a group of rows.

Both update one coordinate of every row of the group at once (exact minimisation along
the coordinate, ``g = W H − G`` kept up to date)::

    W_ij ← S_{λ_i ω_j / H_jj}(W_ij − g_ij / H_jj),      g_i ← g_i + ΔW_ij H_j

and hold the group in coordinate-major layout ``(s, R_b)`` (a coordinate of all rows is
contiguous).  Entries fixed at zero (mask, screened, ``H_jj = 0``) get the threshold
``+inf`` and never move.

- :class:`RowSweep`: every row on its *own* ``s`` columns (its working set), ``H``
  gathered per row into ``(s, s, R_b)``; an epoch is ``s`` vector steps and ``R_b s²``
  flops, whatever ``d_in`` is.  For sparse solutions.
- :class:`ColumnSweep`: all rows on the same ``m`` columns, shared ``H``, in blocks of
  ``block_size`` columns: sequential rank-1 updates inside a block, then one GEMM
  ``g += H_{:,b} ΔW_b`` (``(m, B)·(B, R_b)``); an epoch is ``m`` vector steps and about
  ``R_b m²`` flops.  Coordinates that are a no-op for every row are skipped.

Anderson acceleration (as skglm's AndersonCD, Bertrand & Massias 2021): after every
``K`` epochs, per row, the last ``K + 1`` iterates ``w⁰…w^K`` with differences
``U = [w¹−w⁰ … w^K−w^{K−1}]`` give weights ``c = z / Σz``, ``(UᵀU) z = 1``, and the
extrapolation ``Σ_k c_k w^k``; a row takes it only if it lowers that row's objective
(costs two products with ``H`` per ``K`` epochs).  Rows whose support and signs held
over those ``K`` epochs are then offered the exact minimiser on that support (a batched
Cholesky solve of the support blocks; taken on the same condition), which ends the
slow linear tail of coordinate descent on ill-conditioned rows once the support is found.
"""

from __future__ import annotations

import torch


def _thresholds(thr: torch.Tensor, fixed: torch.Tensor, diag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inv_diag, hi)``: ``1/H_jj`` (0 where ``H_jj = 0``) and ``λω/H_jj`` (+inf where fixed)."""
    live = diag > 0
    inv = torch.where(live, 1.0 / torch.where(live, diag, 1.0), torch.zeros_like(diag))
    hi = torch.where(fixed | ~live, torch.full_like(thr, float("inf")), thr * inv)
    return inv, hi


class _Sweep:
    """Shared state of a group: ``Wt, gt, Gt`` and the ℓ1 weights ``pen``, all ``(s, R_b)``.

    Subclasses set ``rows``, those arrays, ``anderson`` (``K``, 0: off) and ``_history``,
    and implement :meth:`_sweep` (one epoch), :meth:`_times_H` and :meth:`write`.
    """

    rows: torch.Tensor
    Wt: torch.Tensor
    gt: torch.Tensor
    Gt: torch.Tensor
    pen: torch.Tensor
    anderson: int

    def epoch(self) -> None:
        self._sweep()
        if self.anderson:
            self._history.append(self.Wt.clone())
            if len(self._history) == self.anderson + 1:
                self._extrapolate()
                self._history = [self.Wt.clone()]

    def _objective(self, Wt: torch.Tensor, HW: torch.Tensor) -> torch.Tensor:
        """Per-row objective up to the constant ``½ c``: ``½ wᵀHw − ⟨G, w⟩ + Σ λω|w|``, ``(R_b,)``."""
        return (Wt * (0.5 * HW - self.Gt) + self.pen * Wt.abs()).sum(0)

    def _extrapolate(self) -> None:
        """Anderson extrapolation of the last ``K + 1`` iterates, then the support solve."""
        X = torch.stack(self._history)  # (K + 1, s, R_b)
        U = X[1:] - X[:-1]
        C = torch.einsum("ksr,lsr->rkl", U, U)
        reg = 1e-10 * C.diagonal(dim1=1, dim2=2).amax(1).clamp_min(torch.finfo(C.dtype).tiny)
        C = C + reg[:, None, None] * torch.eye(C.shape[1], dtype=C.dtype, device=C.device)
        z, info = torch.linalg.solve_ex(C, torch.ones(C.shape[:2], dtype=C.dtype, device=C.device))
        c = z / z.sum(1, keepdim=True)
        self._take_if_better(torch.einsum("rk,ksr->sr", c, X[1:]), (info == 0) & torch.isfinite(c).all(1))
        support_point = self._support_solve()
        if support_point is not None:
            self._take_if_better(*support_point)

    def _take_if_better(self, candidate: torch.Tensor, valid: torch.Tensor) -> None:
        """Move each row to ``candidate`` (``(s, R_b)``) where it is valid and lowers the objective."""
        HW = self._times_H(candidate)
        better = valid & (self._objective(candidate, HW) < self._objective(self.Wt, self.gt + self.Gt))
        if bool(better.any()):
            self.Wt[:, better] = candidate[:, better]
            self.gt[:, better] = HW[:, better] - self.Gt[:, better]

    def _support_solve(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per row whose support and signs did not change over the last ``K`` epochs, the
        exact minimiser on that support ``S``, ``w_S = H_SS⁻¹ (G_S − λω_S sign(w_S))``
        (one batched Cholesky of the ``(k, k)`` support blocks); None if no row is ready."""
        signs = torch.sign(self.Wt)
        ready = (signs == torch.sign(self._history[0])).all(0) & (signs != 0).any(0)
        if not bool(ready.any()):
            return None
        group_rows = torch.nonzero(ready).flatten()
        on = signs[:, group_rows].T != 0  # (R_r, s)
        k = int(on.sum(1).max())
        # support coordinates first (stable sort keeps their order), padded with others
        idx = torch.argsort((~on).to(torch.int8), dim=1, stable=True)[:, :k]
        real = torch.gather(on, 1, idx)
        both = real[:, :, None] & real[:, None, :]
        A = torch.where(both, self._local_H(idx, group_rows), torch.zeros((), dtype=self.Wt.dtype))
        A = A + torch.diag_embed((~real).to(A.dtype))
        pick = (idx.T, group_rows[None, :])  # (k, R_r) entries of the group's arrays
        b = torch.where(real.T, self.Gt[pick] - self.pen[pick] * signs[pick], torch.zeros((), dtype=A.dtype))
        L, info = torch.linalg.cholesky_ex(A)
        x = torch.cholesky_solve(b.T[..., None], L)[..., 0]
        candidate = self.Wt.clone()
        candidate[:, group_rows] = 0
        candidate[pick] = torch.where(real.T, x.T, torch.zeros((), dtype=x.dtype))
        valid = torch.zeros_like(ready)
        valid[group_rows] = (info == 0) & torch.isfinite(x).all(1)
        return candidate, valid

    def _local_H(self, idx: torch.Tensor, group_rows: torch.Tensor) -> torch.Tensor:
        """``(R_r, k, k)``: the ``H`` entries between the group's coordinates ``idx`` of each row."""
        raise NotImplementedError

    def _sweep(self) -> None:
        raise NotImplementedError

    def _times_H(self, Wt: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class RowSweep(_Sweep):
    """Rows ``rows`` (``(R_b,)``), row ``rows[r]`` on its columns ``cols[r]`` (``(R_b, s)``, distinct).

    ``W, grad, G, thr, fixed`` are the full ``(R, d_in)`` arrays of the problem.
    """

    def __init__(self, H: torch.Tensor, W: torch.Tensor, grad: torch.Tensor, G: torch.Tensor, thr: torch.Tensor,
                 fixed: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, anderson: int) -> None:
        self.rows, self.cols, self.anderson = rows, cols, anderson
        ct = cols.T  # (s, R_b)
        self.Hs = H[ct[:, None, :], ct[None, :, :]]  # Hs[t, u, r] = H[cols[r, t], cols[r, u]]
        pick = (rows[None, :], ct)
        self.Wt, self.gt, self.Gt = W[pick].contiguous(), grad[pick].contiguous(), G[pick]
        self.inv, self.hi = _thresholds(thr[pick], fixed[pick], torch.diagonal(H)[ct])
        self.lo = -self.hi
        self.pen = torch.where(fixed[pick], torch.zeros_like(self.Gt), thr[pick])
        self._history = [self.Wt.clone()] if anderson else []
        # one view per coordinate, made once: indexing costs as much as a small kernel
        self._steps = list(zip(self.Wt, self.gt, self.inv, self.lo, self.hi, self.Hs))
        self._clamped = torch.empty_like(self.Wt[0]) if len(ct) else None

    def _sweep(self) -> None:
        c, gt = self._clamped, self.gt
        for w, g, inv, lo, hi, H_t in self._steps:
            z = torch.addcmul(w, g, inv, value=-1.0)
            torch.clamp(z, lo, hi, out=c)
            delta = z.sub_(c).sub_(w)  # soft threshold, minus the old value
            gt.addcmul_(H_t, delta)
            w.add_(delta)

    def _times_H(self, Wt: torch.Tensor) -> torch.Tensor:
        return torch.einsum("tur,ur->tr", self.Hs, Wt)

    def _local_H(self, idx: torch.Tensor, group_rows: torch.Tensor) -> torch.Tensor:
        return self.Hs[idx[:, :, None], idx[:, None, :], group_rows[:, None, None]]

    def write(self, W: torch.Tensor) -> None:
        W[self.rows[:, None], self.cols] = self.Wt.T


class ColumnSweep(_Sweep):
    """Rows ``rows`` (``(R_b,)``) on the shared columns ``cols`` (``(m,)``), blocked (see module doc)."""

    def __init__(self, H: torch.Tensor, W: torch.Tensor, grad: torch.Tensor, G: torch.Tensor, thr: torch.Tensor,
                 fixed: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, anderson: int, block_size: int) -> None:
        self.rows, self.cols, self.anderson, self.block_size = rows, cols, anderson, block_size
        self.Ht = H[cols][:, cols].contiguous()
        pick = (rows[None, :], cols[:, None])
        self.Wt, self.gt, self.Gt = W[pick].contiguous(), grad[pick].contiguous(), G[pick]
        inv, self.hi = _thresholds(thr[pick], fixed[pick], torch.diagonal(self.Ht)[:, None])
        self.inv = inv.flatten().tolist()
        self.lo = -self.hi
        self.pen = torch.where(fixed[pick], torch.zeros_like(self.Gt), thr[pick])
        self._history = [self.Wt.clone()] if anderson else []
        self._clamped = torch.empty_like(self.Wt[0]) if len(cols) else None

    def _sweep(self) -> None:
        for s in range(0, len(self.cols), self.block_size):
            e = min(s + self.block_size, len(self.cols))
            Wb, gb = self.Wt[s:e], self.gt[s:e]
            inv_b = torch.tensor(self.inv[s:e], dtype=Wb.dtype, device=Wb.device)
            moving = ((Wb != 0) | (gb.abs() * inv_b[:, None] > self.hi[s:e])).any(dim=1)
            active = torch.nonzero(moving).flatten().tolist()
            if not active:
                continue
            W_block = Wb.clone()
            self._block(Wb, gb.clone(), s, e, active)
            self.gt.addmm_(self.Ht[:, s:e], Wb - W_block)

    def _block(self, Wb: torch.Tensor, gb: torch.Tensor, s: int, e: int, active: list[int]) -> None:
        """Sequential exact updates of the block's ``active`` coordinates (``gb`` updated in place)."""
        Hbb, c, last = self.Ht[s:e, s:e], self._clamped, active[-1]
        for t in active:
            w = Wb[t]
            z = torch.add(w, gb[t], alpha=-self.inv[s + t])
            torch.clamp(z, self.lo[s + t], self.hi[s + t], out=c)
            delta = z.sub_(c).sub_(w)
            if t != last:
                gb.addr_(Hbb[:, t], delta)
            w.add_(delta)

    def _times_H(self, Wt: torch.Tensor) -> torch.Tensor:
        return self.Ht @ Wt

    def _local_H(self, idx: torch.Tensor, group_rows: torch.Tensor) -> torch.Tensor:
        return self.Ht[idx[:, :, None], idx[:, None, :]]

    def write(self, W: torch.Tensor) -> None:
        W[self.rows[:, None], self.cols[None, :]] = self.Wt.T
