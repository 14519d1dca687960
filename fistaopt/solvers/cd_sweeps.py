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

    Subclasses set ``rows``, those arrays, ``anderson`` (``K``, 0: off), ``_history`` and
    ``_failed``, and implement :meth:`_sweep` (one epoch), :meth:`_times_H` and :meth:`write`.
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

    def _objective(self, Wt: torch.Tensor, HW: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        """Objective of rows ``sel`` up to the constant ``½ c``: ``½ wᵀHw − ⟨G, w⟩ + Σ λω|w|``."""
        return (Wt * (0.5 * HW - self.Gt[:, sel]) + self.pen[:, sel] * Wt.abs()).sum(0)

    def _extrapolate(self) -> None:
        """Anderson extrapolation of the last ``K + 1`` iterates, then the support solves."""
        X = torch.stack(self._history)  # (K + 1, s, R_b)
        U = X[1:] - X[:-1]
        C = torch.einsum("ksr,lsr->rkl", U, U)
        reg = 1e-10 * C.diagonal(dim1=1, dim2=2).amax(1).clamp_min(torch.finfo(C.dtype).tiny)
        C = C + reg[:, None, None] * torch.eye(C.shape[1], dtype=C.dtype, device=C.device)
        z, info = torch.linalg.solve_ex(C, torch.ones(C.shape[:2], dtype=C.dtype, device=C.device))
        c = z / z.sum(1, keepdim=True)
        ok = (info == 0) & torch.isfinite(c).all(1)
        every = torch.arange(self.Wt.shape[1], device=self.Wt.device)
        self._take_if_better(torch.einsum("rk,ksr->sr", c, X[1:]), every, ok)
        self._support_solves()

    def _take_if_better(self, candidate: torch.Tensor, sel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Move the rows ``sel`` of the group to ``candidate`` (``(s, len(sel))``) where it is
        valid and lowers their objective; returns which of them moved."""
        HW = self._times_H(candidate, sel)
        now = self._objective(self.Wt[:, sel], self.gt[:, sel] + self.Gt[:, sel], sel)
        better = valid & (self._objective(candidate, HW, sel) < now)
        moved = sel[better]
        if len(moved):
            self.Wt[:, moved] = candidate[:, better]
            self.gt[:, moved] = HW[:, better] - self.Gt[:, moved]
        return better

    def _support_solves(self) -> None:
        """Per row whose support and signs held over the last ``K`` epochs (and that did not
        already fail with them), the exact minimiser on that support ``S``,
        ``w_S = H_SS⁻¹ (G_S − λω_S sign(w_S))``: batched Cholesky solves of the ``(k, k)``
        support blocks, rows grouped by ``k`` rounded up to a power of two."""
        signs = torch.sign(self.Wt)
        ready = (signs == torch.sign(self._history[0])).all(0) & (signs != 0).any(0)
        if self._failed is not None:
            ready &= ~(signs == self._failed).all(0)
        size = (signs != 0).sum(0)
        bucket = torch.pow(2, torch.ceil(torch.log2(size.clamp_min(1).double()))).long()
        for k in torch.unique(bucket[ready]).tolist():
            sel = torch.nonzero(ready & (bucket == k)).flatten()
            candidate, valid = self._support_point(signs[:, sel], sel, min(k, self.Wt.shape[0]))
            better = self._take_if_better(candidate, sel, valid)
            failed = sel[~better]
            if len(failed):
                if self._failed is None:
                    self._failed = torch.zeros_like(signs)
                self._failed[:, failed] = signs[:, failed]

    def _support_point(self, signs: torch.Tensor, sel: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, len(sel))`` minimisers on the supports of ``signs`` (at most ``k`` each), and validity."""
        on = signs.T != 0  # (R_r, s)
        # support coordinates first (stable sort keeps their order), padded with others
        idx = torch.argsort((~on).to(torch.int8), dim=1, stable=True)[:, :k]
        real = torch.gather(on, 1, idx)
        A = self._local_H(idx, sel) * (real[:, :, None] & real[:, None, :])
        A.diagonal(dim1=1, dim2=2).add_((~real).to(A.dtype))
        pick = (idx.T, sel[None, :])  # (k, R_r) entries of the group's arrays
        b = (self.Gt[pick] - self.pen[pick] * torch.gather(signs, 0, idx.T)) * real.T
        L, info = torch.linalg.cholesky_ex(A)
        x = torch.cholesky_solve(b.T[..., None], L)[..., 0] * real
        candidate = torch.zeros_like(signs)
        candidate.scatter_(0, idx.T, x.T)
        return candidate, (info == 0) & torch.isfinite(x).all(1)

    def _local_H(self, idx: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        """``(R_r, k, k)``: the ``H`` entries between the group's coordinates ``idx`` of rows ``sel``."""
        raise NotImplementedError

    def _sweep(self) -> None:
        raise NotImplementedError

    def _times_H(self, Wt: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        """``H w`` for the rows ``sel`` of the group, ``Wt`` of shape ``(s, len(sel))``."""
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
        self._failed: torch.Tensor | None = None  # signs of rows whose support solve was refused
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

    def _times_H(self, Wt: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        Hs = self.Hs if len(sel) == self.Hs.shape[2] else self.Hs[:, :, sel]
        return torch.einsum("tur,ur->tr", Hs, Wt)

    def _local_H(self, idx: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        return self.Hs[idx[:, :, None], idx[:, None, :], sel[:, None, None]]

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
        self._failed: torch.Tensor | None = None  # signs of rows whose support solve was refused
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

    def _times_H(self, Wt: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        return self.Ht @ Wt

    def _local_H(self, idx: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        return self.Ht[idx[:, :, None], idx[:, None, :]]

    def write(self, W: torch.Tensor) -> None:
        W[self.rows[:, None], self.cols[None, :]] = self.Wt.T
