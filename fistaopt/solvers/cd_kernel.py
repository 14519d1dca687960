"""Compiled coordinate descent on the Gram form, one row per thread (numba).

Row ``i`` of the problem (``H`` of shape ``(d, d)`` shared, symmetric, ``H_jj > 0`` on
every free coordinate)::

    min_w  ½ wᵀHw − g_iᵀw + Σ_j t_ij |w_j|,        t_ij = λ_i ω_j,   w_j = 0 where fixed_ij

Coordinate update (exact minimisation along ``j``; ``q = H w`` kept up to date, as
scikit-learn's ``enet_coordinate_descent_gram``)::

    z = w_j − (q_j − g_ij) / H_jj,     w_j' = sign(z) · max(|z| − t_ij / H_jj, 0),
    δ = w_j' − w_j,                    q ← q + δ H_{:,j}      (only when δ ≠ 0: O(d))

so a coordinate that stays zero costs O(1).  Per row (:func:`_solve_row`), up to
``max_full`` rounds of

1. a *full sweep*: every free coordinate in cyclic order (fixed ones skipped);
   the row is done when it changed no coordinate by more than ``tol · max_j |w_j|`` and
   no coordinate entered the support;
2. an *active phase* on the support ``S`` (non-zero coordinates after the sweep):
   cyclic sweeps over ``S`` only, with ``q`` updated on ``S`` only (``O(|S|)`` per
   change), until a sweep changes nothing by more than ``tol · max_j |w_j|`` (at most
   ``max_active`` sweeps); then ``q`` is brought up to date on the other coordinates,
   ``q_c += Σ_{a∈S} Δw_a H_ac`` (``O(|S| d)`` once).

Rows are independent problems and run in parallel (``numba.prange``; the caller sets the
thread count; one thread runs :data:`solve_rows_serial`).  The kernels compile on their first call, for the dtype they get (float64
or float32); the on-disk cache is used only where numba can write one (:data:`CACHE`).
This module is imported on the first CPU solve of ``cd``, not with :mod:`fistaopt`.
"""

from __future__ import annotations

import os

import numba
import numpy as np


def _probe() -> None:  # pragma: no cover - never called, only decorated
    return None


def _cache_works() -> bool:
    """Whether numba can keep an on-disk cache for this module (next to it or in the
    user's cache folder); a read-only install without either gets no cache."""
    try:
        numba.njit(cache=True)(_probe)
    except RuntimeError:
        return False
    return True


#: ``cache=`` of every kernel below.
CACHE = _cache_works()

# numba's OpenMP layer leaves its threads spinning after a parallel region, which slowed
# PyTorch's own CPU kernels 10-20x here (torch.isfinite on 576x576: 3.8 ms -> 65 ms);
# the workqueue layer does not.  A layer chosen by the user (environment) is kept.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


@numba.njit(cache=CACHE, nogil=True)
def _step(j, H, inv, g, t, w, q):  # pragma: no cover - compiled
    """The update of coordinate ``j`` (module docstring) without touching ``q``; returns ``δ``."""
    old = w[j]
    z = old - (q[j] - g[j]) * inv[j]
    cut = t[j] * inv[j]
    new = z - cut if z > cut else (z + cut if z < -cut else 0.0 * z)
    w[j] = new
    return w[j] - old  # the change actually stored (float32 iterates round ``new``)


@numba.njit(cache=CACHE, nogil=True)
def _zero_sweep(H, inv, g, t, fixed, w, q):  # pragma: no cover - compiled
    """One cyclic pass over the free coordinates that are zero; returns how many entered."""
    d = w.shape[0]
    entered = 0
    for j in range(d):
        if fixed[j] or w[j] != 0:
            continue
        delta = _step(j, H, inv, g, t, w, q)
        if delta != 0:
            Hj = H[j]
            for c in range(d):
                q[c] += delta * Hj[c]
            entered += 1
    return entered


@numba.njit(cache=CACHE, nogil=True)
def _active_phase(H, inv, g, t, w, q, S, k, tol, max_active):  # pragma: no cover - compiled
    """Sweeps over the support ``S[:k]`` (module docstring, step 1) on a gathered copy
    ``H_SS`` (contiguous rows, so each change is one short axpy); returns the sweeps run."""
    Hs = np.empty((k, k), dtype=H.dtype)
    local = np.empty((5, k), dtype=w.dtype)
    ws, qs, gs, iv, ts = local[0], local[1], local[2], local[3], local[4]
    for a in range(k):
        j = S[a]
        ws[a], qs[a], gs[a], iv[a], ts[a] = w[j], q[j], g[j], inv[j], t[j]
        for b in range(k):
            Hs[a, b] = H[j, S[b]]
    sweeps = 0
    while sweeps < max_active:
        sweeps += 1
        dmax, wmax = 0.0, 0.0
        for a in range(k):
            delta = _step(a, Hs, iv, gs, ts, ws, qs)
            if delta != 0:
                Ha = Hs[a]
                for b in range(k):
                    qs[b] += delta * Ha[b]
                dmax = max(dmax, abs(delta))
            wmax = max(wmax, abs(ws[a]))
        if dmax <= tol * wmax:
            break
    for a in range(k):  # the whole of q: q += H_{:,S} Δw_S
        j = S[a]
        delta = ws[a] - w[j]
        if delta != 0:
            w[j] = ws[a]
            Hj = H[j]
            for c in range(w.shape[0]):
                q[c] += delta * Hj[c]
    return sweeps


@numba.njit(cache=CACHE, nogil=True)
def _solve_row(H, inv, g, t, fixed, w, q, tol, max_full, max_active, S):  # pragma: no cover - compiled
    """Active phases and zero sweeps of one row (module docstring); returns the rounds run."""
    for n in range(max_full):
        k = 0
        for j in range(w.shape[0]):
            if w[j] != 0:
                S[k] = j
                k += 1
        if k:
            _active_phase(H, inv, g, t, w, q, S, k, tol, max_active)
        if _zero_sweep(H, inv, g, t, fixed, w, q) == 0:
            return n + 1
    return max_full


def _rows(H, G, T, fixed, W, Q, rows, tol, max_full, max_active):  # pragma: no cover - compiled
    """Coordinate descent on the rows ``rows`` of ``W`` (in place, ``Q = W H`` kept with it).

    Shapes: ``H (d, d)``; ``G, T, W, Q (R, d)`` of one float dtype, ``fixed (R, d)`` bool,
    all C-contiguous; ``rows (n,)`` int64; ``tol (n,)`` the relative change that ends a
    row's sweeps.  ``Q[rows]`` must equal ``W[rows] H`` on entry.  Returns ``(n,)`` int64,
    the rounds each row ran (at most ``max_full``).
    """
    d = H.shape[0]
    inv = np.zeros(d, dtype=H.dtype)
    for j in range(d):
        if H[j, j] > 0:
            inv[j] = 1.0 / H[j, j]
    used = np.zeros(rows.shape[0], dtype=np.int64)
    for r in numba.prange(rows.shape[0]):
        i = rows[r]
        S = np.empty(d, dtype=np.int64)
        used[r] = _solve_row(H, inv, G[i], T[i], fixed[i], W[i], Q[i], tol[r], max_full, max_active, S)
    return used


#: One row after the other (``prange`` is ``range``): the one-thread kernel, which starts no
#: thread pool at all.
solve_rows_serial = numba.njit(cache=CACHE)(_rows)
#: Rows in parallel on ``numba.get_num_threads()`` threads.
solve_rows = numba.njit(cache=CACHE, parallel=True)(_rows)
