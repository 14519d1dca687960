"""What every solver shares: options, the result type, the trace and the stopping rule.

Stopping rule (all solvers): stop when the certified relative duality gap
``Σ_i gap_i ≤ tol · P(W)`` (float64, see :meth:`LassoProblem.duality_gap`), checked every
``check_every`` iterations; or at ``max_iter``, ``time_limit`` seconds, on NaN/inf
(``diverged``) or when the ``callback`` returns ``True``.  The result's gap is always a
fresh float64 certificate of the returned ``W`` on the original problem.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar

import torch

from fistaopt.problems.lasso import GapInfo, LassoProblem

logger = logging.getLogger(__name__)

STOP_REASONS = ("converged", "max_iter", "time_limit", "diverged", "callback", "precision_limit")


class ConvergenceWarning(UserWarning):
    """The solver stopped before reaching the requested relative duality gap."""


@dataclass
class Trace:
    """Per-check history of a run: parallel lists, ready for plots and tables."""

    iteration: list[int] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    gap: list[float] = field(default_factory=list)
    rel_gap: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def append(self, iteration: int, objective: float, gap: float, rel_gap: float, seconds: float) -> None:
        self.iteration.append(int(iteration))
        self.objective.append(float(objective))
        self.gap.append(float(gap))
        self.rel_gap.append(float(rel_gap))
        self.seconds.append(float(seconds))

    def __len__(self) -> int:
        return len(self.iteration)

    def as_dict(self) -> dict[str, list]:
        return asdict(self)

    def rows(self) -> list[dict[str, float]]:
        """One dict per check (``iteration, objective, gap, rel_gap, seconds``)."""
        return [dict(zip(self.as_dict(), vals)) for vals in zip(*self.as_dict().values())]

    def first_reaching(self, rel_gap: float) -> tuple[int, float] | None:
        """``(iteration, seconds)`` of the first check with relative gap ≤ ``rel_gap``."""
        for it, g, s in zip(self.iteration, self.rel_gap, self.seconds):
            if g <= rel_gap:
                return it, s
        return None


@dataclass
class SolveResult:
    """What every solver returns.

    Attributes:
        W: the solution, shape of the problem's variable, on the solve device, float.
        converged: the certified relative gap reached ``tol``.
        stop_reason: one of ``converged, max_iter, time_limit, diverged, callback`` or
            ``precision_limit`` (the working-precision check passed, the float64 one did not;
            or iterates below float64 stopped improving the certified gap, see ``STALL_CHECKS``).
        n_iter: iterations run.
        seconds: wall-clock seconds of the solve.
        solver: registry name of the solver.
        options: the solver's options (plain values).
        trace: per-check history.
        gap: final total duality gap (float64 certificate on the original problem).
        rel_gap: final relative gap ``gap / objective``.
        objective: final objective ``P(W)``.
        gap_per_row: final per-row gaps (float64 tensor).

    A ``certify=False`` run has no certificate: ``gap``, ``rel_gap`` and ``objective``
    are NaN, ``gap_per_row`` is None and ``converged`` is False.
    """

    W: torch.Tensor
    converged: bool
    stop_reason: str
    n_iter: int
    seconds: float
    solver: str
    options: dict[str, Any]
    trace: Trace
    gap: float
    rel_gap: float
    objective: float
    gap_per_row: torch.Tensor | None = None

    def summary(self) -> str:
        return (
            f"{self.solver}: {self.stop_reason} after {self.n_iter} iterations, "
            f"{self.seconds:.3g} s, objective {self.objective:.6g}, relative gap {self.rel_gap:.2e}"
        )


CallbackFn = Callable[[int, torch.Tensor, dict[str, float]], Any]


@dataclass
class Solver:
    """Base class: hyper-parameters only; data arrive at :meth:`solve` (jaxopt style).

    Shared options:
        tol: target relative duality gap.
        max_iter: iteration budget.
        time_limit: seconds (None: no limit).
        check_every: iterations between certificate checks (each check costs one GEMM
            and a host synchronisation).
        device: where to iterate (``"cpu"``, ``"cuda"``, a torch.device; None: the problem's).
        dtype: iterate dtype (None: the problem's; float32 is the fast choice).
        callback: ``f(iteration, W, info) -> bool``; called at each check with
            ``info = {objective, gap, rel_gap, seconds}``; returning True stops the run.
        verbose: log each check at INFO level.
        warn: emit :class:`ConvergenceWarning` when ``tol`` was not reached.
        certify: False runs exactly ``max_iter`` iterations with no check and no final
            certificate (a fixed-budget inner solve, e.g. the ℓ1 rounds of
            :func:`fistaopt.layer.prune_layer`); the result's gap fields are then NaN.
    """

    name: ClassVar[str] = "base"

    tol: float = 1e-6
    max_iter: int = 1000
    time_limit: float | None = None
    check_every: int = 10
    device: Any = None
    dtype: torch.dtype | None = None
    callback: CallbackFn | None = None
    verbose: bool = False
    warn: bool = True
    certify: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0 and math.isfinite(self.tol)):
            raise ValueError(f"tol must be a finite number >= 0, got {self.tol!r}")
        if not (isinstance(self.max_iter, int) and self.max_iter >= 0):
            raise ValueError(f"max_iter must be an int >= 0, got {self.max_iter!r}")
        if not (isinstance(self.check_every, int) and self.check_every >= 1):
            raise ValueError(f"check_every must be an int >= 1, got {self.check_every!r}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be > 0 seconds or None, got {self.time_limit!r}")
        if self.dtype is not None and self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {self.dtype!r}")
        if self.callback is not None and not callable(self.callback):
            raise TypeError("callback must be callable")
        if not isinstance(self.certify, bool):
            raise TypeError(f"certify must be True or False, got {self.certify!r}")

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def options(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
        return out

    # ------------------------------------------------------------------ entry point
    def solve(self, problem: LassoProblem, W0: Any = None) -> SolveResult:
        """Solve ``problem`` from the warm start ``W0`` (zeros if None)."""
        if not isinstance(problem, LassoProblem):
            raise TypeError(f"problem must be a fistaopt.LassoProblem, got {type(problem).__name__}")
        device = torch.device(self.device) if self.device is not None else problem.device
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but CUDA is not available on this machine")
        dtype = self.dtype or problem.dtype
        work = problem.to(device=device, dtype=dtype)
        if dtype != problem.dtype:
            for name in ("H", "G", "c", "lam"):
                if not bool(torch.isfinite(getattr(work, name)).all()):
                    raise ValueError(
                        f"problem.{name} overflows in {dtype} (max |{name}| = "
                        f"{getattr(problem, name).abs().max().item():.3g}); solve in "
                        f"{problem.dtype} or rescale the data"
                    )
        if W0 is None:
            W = torch.zeros(work.w_shape, dtype=dtype, device=device)
        else:
            W = work.check_W(W0, "W0").clone()
        if work.mask is not None:
            W = W * work.mask
        start = time.perf_counter()
        scale = None
        if getattr(self, "precondition", False):
            work, scale = work.jacobi_scaled()
            W = W * scale
        state = _RunState(self, work, start)
        W, n_iter = self._run(work, W, state)
        if scale is not None:
            W = W / scale
        if not self.certify:
            return self._uncertified(W, n_iter, state, start)
        # final certificate: float64 on the original problem
        final = problem.to(device=device).duality_gap(W.to(problem.dtype))
        converged = final.relative <= self.tol
        reason = state.stop_reason or ("converged" if converged else "max_iter")
        if reason == "converged" and not converged:
            # the working-precision check passed but the float64 certificate on the
            # original problem does not: the iterate dtype cannot certify this tol
            reason = "max_iter" if n_iter >= self.max_iter else "precision_limit"
        if not state.trace.iteration or state.trace.iteration[-1] != n_iter:
            state.trace.append(n_iter, final.objective, final.total, final.relative, time.perf_counter() - start)
        seconds = time.perf_counter() - start
        result = SolveResult(
            W=W, converged=converged, stop_reason=reason, n_iter=n_iter, seconds=seconds,
            solver=self.name, options=self.options(), trace=state.trace, gap=final.total,
            rel_gap=final.relative, objective=final.objective, gap_per_row=final.per_row,
        )
        if not converged and self.warn and self.tol > 0:
            warnings.warn(
                f"{self.name} stopped ({reason}) after {n_iter} iterations at relative duality gap "
                f"{final.relative:.3e} > tol {self.tol:.1e}",
                ConvergenceWarning,
                stacklevel=2,
            )
        if self.verbose:
            logger.info(result.summary())
        return result

    def _uncertified(self, W: torch.Tensor, n_iter: int, state: "_RunState", start: float) -> SolveResult:
        """The result of a ``certify=False`` run: the iterate, no gap (NaN fields)."""
        nan = math.nan
        return SolveResult(
            W=W, converged=False, stop_reason=state.stop_reason or "max_iter", n_iter=n_iter,
            seconds=time.perf_counter() - start, solver=self.name, options=self.options(), trace=state.trace,
            gap=nan, rel_gap=nan, objective=nan, gap_per_row=None,
        )

    def _run(self, problem: LassoProblem, W: torch.Tensor, state: "_RunState") -> tuple[torch.Tensor, int]:
        raise NotImplementedError


#: Precision-limit rule for iterates below float64: stop with ``precision_limit`` when the
#: best certified relative gap has not dropped by ``STALL_MIN_DROP`` (relative) over the
#: last ``STALL_CHECKS`` checks.  A float32 FISTA run was seen stalled at 9.6e-6 for
#: 12,430 iterations until its time limit.  float64 runs are never stopped by this rule.
STALL_CHECKS = 50
STALL_MIN_DROP = 0.01


class _RunState:
    """Book-keeping for the checks: trace, time limit, callback, stop reason.

    ``last_info`` is the :class:`GapInfo` of the latest check (for screening and
    working sets).
    """

    def __init__(self, solver: Solver, problem: LassoProblem, start: float) -> None:
        self.solver = solver
        self.problem = problem
        self.start = start
        self.trace = Trace()
        self.stop_reason: str | None = None
        self.last_info: GapInfo | None = None
        self._best_history: list[float] = []

    def _stalled(self, rel_gap: float, dtype: torch.dtype) -> bool:
        """Whether low-precision iterates have stopped improving the certified gap."""
        best = min(rel_gap, self._best_history[-1]) if self._best_history else rel_gap
        self._best_history.append(best)
        if dtype == torch.float64 or len(self._best_history) <= STALL_CHECKS:
            return False
        return best > (1 - STALL_MIN_DROP) * self._best_history[-1 - STALL_CHECKS]

    def check(self, iteration: int, W: torch.Tensor, WH: torch.Tensor | None = None) -> bool:
        """Certify ``W`` (``WH = W @ H`` if already at hand); return True to stop.

        A check that passes on a reused low-precision product is confirmed with a
        float64 product before the run stops.
        """
        s = self.solver
        if not bool(torch.isfinite(W).all()):
            self.stop_reason = "diverged"
            return True
        info = self.problem.duality_gap(W, WH=WH)
        if WH is not None and W.dtype != torch.float64 and info.relative <= s.tol:
            info = self.problem.duality_gap(W)
        elapsed = time.perf_counter() - self.start
        if not math.isfinite(info.objective) or not math.isfinite(info.total):
            self.stop_reason = "diverged"
            return True
        self.trace.append(iteration, info.objective, info.total, info.relative, elapsed)
        self.last_info = info
        if s.verbose:
            logger.info("%s it=%d obj=%.8g gap=%.3e rel=%.3e t=%.2fs", s.name, iteration, info.objective,
                        info.total, info.relative, elapsed)
        if info.relative <= s.tol:
            self.stop_reason = "converged"
            return True
        if s.callback is not None and s.callback(
            iteration, W, {"objective": info.objective, "gap": info.total, "rel_gap": info.relative, "seconds": elapsed}
        ):
            self.stop_reason = "callback"
            return True
        if s.time_limit is not None and elapsed >= s.time_limit:
            self.stop_reason = "time_limit"
            return True
        if self._stalled(info.relative, W.dtype):
            logger.info("%s: %s iterates stopped improving at relative gap %.3e (iteration %d)",
                        s.name, str(W.dtype).replace("torch.", ""), info.relative, iteration)
            self.stop_reason = "precision_limit"
            return True
        return False

    def done(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (1-based count of iterations run) is a check point."""
        if not self.solver.certify:
            return False
        return iteration % self.solver.check_every == 0 or iteration == self.solver.max_iter
