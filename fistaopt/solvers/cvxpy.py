"""cvxpy reference verifier: an interior-point answer to check the other solvers against.

Posed with a factor ``F`` of ``H = F Fᵀ`` (from a float64 eigendecomposition), not
``quad_form``::

    minimize ½ ‖W F‖²_F − ⟨G, W⟩ + ½ Σc + Σ_ij λ_i ω_j |W_ij|    s.t. W_ij = 0 off the mask

solved by CLARABEL with tight tolerances (1e-10).  The solver status is checked and our
own float64 duality gap is recomputed on its answer (that is the result's certificate).
It is slow beyond a few thousand variables: above ``max_variables`` it refuses with a
clear error unless ``force=True``.  Measured here: ~0.1–1 s for 24×24, ~30 s for 128×256.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.solvers.base import Solver, _RunState


@dataclass
class CVXPY(Solver):
    """Ground-truth verifier (see module docstring).

    Options (besides the shared ones; ``max_iter``/``check_every`` do not apply):
        backend: cvxpy solver name (CLARABEL default; OSQP/SCS are inaccurate by default).
        eps: absolute/relative gap and feasibility tolerance passed to CLARABEL.
        max_variables: refuse larger problems unless ``force``.
        force: solve even above ``max_variables``.
    """

    name: ClassVar[str] = "cvxpy"

    backend: str = "CLARABEL"
    eps: float = 1e-10
    max_variables: int = 4096
    force: bool = False

    def _run(self, problem: LassoProblem, W: torch.Tensor, state: _RunState) -> tuple[torch.Tensor, int]:
        try:
            cp = importlib.import_module("cvxpy")
        except ImportError as exc:  # pragma: no cover - cvxpy is a dependency
            raise ImportError("the cvxpy solver needs the cvxpy package: pip install cvxpy clarabel") from exc
        n_var = int(np.prod(problem.w_shape))
        if n_var > self.max_variables and not self.force:
            raise ValueError(
                f"cvxpy would solve {n_var} variables (shape {problem.w_shape}), above max_variables="
                f"{self.max_variables}; it would take minutes to hours. Pass force=True to solve anyway."
            )
        H = problem.H.detach().cpu().to(torch.float64).numpy()
        e, Q = np.linalg.eigh(H)
        F = Q * np.sqrt(np.clip(e, 0, None))[None, :]
        keep = e > max(e.max(initial=0.0), 0.0) * 1e-14
        F = F[:, keep] if keep.any() else np.zeros((H.shape[0], 1))
        G = problem.G.detach().cpu().to(torch.float64).numpy()
        c = problem.c.detach().cpu().to(torch.float64).numpy()
        thr_all = problem.threshold(torch.float64).expand(problem.w_shape).cpu().numpy()
        mask = None if problem.mask is None else problem.mask.expand(problem.w_shape).cpu().numpy()
        W0 = W.detach().cpu().to(torch.float64).numpy()
        out = np.zeros(problem.w_shape)
        batch = problem.batch_shape
        slices = [()] if not batch else [(k,) for k in range(batch[0])]
        for idx in slices:
            thr = thr_all[idx]
            X = cp.Variable(G.shape)
            X.value = W0[idx]
            obj = 0.5 * cp.sum_squares(X @ F) - cp.sum(cp.multiply(G, X)) + 0.5 * c.sum() \
                + cp.sum(cp.multiply(thr, cp.abs(X)))
            cons = [] if mask is None else [cp.multiply(~mask[idx], X) == 0]
            prob = cp.Problem(cp.Minimize(obj), cons)
            kwargs = {}
            if self.backend.upper() == "CLARABEL":
                kwargs = dict(tol_gap_abs=self.eps, tol_gap_rel=self.eps, tol_feas=self.eps, max_iter=500)
            try:
                prob.solve(solver=self.backend, **kwargs)
            except cp.error.SolverError as exc:
                raise RuntimeError(f"cvxpy/{self.backend} failed: {exc}") from None
            if prob.status not in ("optimal", "optimal_inaccurate") or X.value is None:
                raise RuntimeError(f"cvxpy/{self.backend} returned status {prob.status!r}")
            sol = np.asarray(X.value)
            if mask is not None:
                sol = sol * mask[idx]
            out[idx] = sol
        W_out = torch.from_numpy(out).to(device=W.device, dtype=W.dtype)
        state.check(1, W_out)
        return W_out, 1
