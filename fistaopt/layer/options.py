"""The options of :func:`fistaopt.layer.prune_layer`: defaults and checks, once.

Two kinds of options reach a layer prune:

- :class:`LayerOptions`: how the layer is pruned (refit, ℓ1 rounds, λ rule, ...);
- solver options: passed to the ℓ1 solver (``precondition``, ``device``, ``dtype``,
  ``rho`` ...), checked against the solver's own option names by
  :func:`check_solver_options`.  The iteration budget and the stopping rule
  (``tol``, ``max_iter``, ``check_every``, ``warn``, ``callback``) belong to the layer
  prune (``round_iter``, ``search_iter``: a fixed number of iterations per solve), so
  passing them is an error rather than being silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Mapping

import torch

from fistaopt.solvers.prox import PRECISIONS, native_bf16

if TYPE_CHECKING:
    from fistaopt.sparsity import Pattern

#: Solver options that :func:`~fistaopt.layer.prune_layer` sets itself.
LAYER_CONTROLLED = ("tol", "max_iter", "check_every", "warn", "callback", "time_limit", "certify")
PENALTIES = ("l1", "scaled")
LAM_RULES = ("quantile", "xi")
#: :attr:`LayerOptions.round_kind` choices: the ℓ1 solver's rounds, or ℓ0-constrained ADMM.
ROUND_KINDS = ("l1", "l0-admm")
#: :attr:`LayerOptions.precision` choices: ``auto`` or one of the solvers' PRECISIONS.
LAYER_PRECISIONS = ("auto", *PRECISIONS)
#: Solvers that certify but are too slow to prune (verifiers).
VERIFIERS = ("cvxpy",)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class LayerOptions:
    """How one layer is pruned (see :func:`fistaopt.layer.prune_layer`).

    Attributes:
        refit: masked least-squares refit of the kept weights after each rounding.
        round_kind: what a round solves: ``"l0-admm"`` (default; ℓ0-constrained ADMM on the
            pattern itself, :mod:`fistaopt.layer.l0_admm`; the ℓ1 solver then runs only in the
            λ search that replaces a missing warm start) or ``"l1"`` (the ℓ1 solver from a
            per-row λ, then rounded to the pattern: FISTAPruner's rounds, the default before
            the nineteenth session).  Measured on SmolLM2-135M (docs/pruning.md, "ℓ0-ADMM
            rounds"): block 3's layer errors 9%, 7% and 5% lower at 50%, 70% and 2:4; WikiText-2 /
            held-out perplexity 48.25 / 28.71 at 50% (three seeds) against 50.59 / 29.78,
            83.23 / 42.26 at 2:4 and 152.84 / 65.80 at 70% against 86.95 / 44.75 and 176.28 / 76.34.
        rounds: rounds (solve → round → refit), each from the best point so far; None
            (default): :func:`auto_rounds` for the pattern and ``round_kind`` (ℓ1: 1 for
            unstructured patterns up to 50% sparsity, 2 otherwise; ℓ0-ADMM: 1).
        round_iter: solver iterations per round.
        quantiles: per round, the quantile of the pruned-entry gradient that sets λ_i.
        refit_iter: conjugate-gradient iterations per refit (10: the layer errors of 25 or 50
            to 0.1% on SmolLM2 block 3 at 50%, 70% and 2:4, at 35–40% less layer time).
        start_refit_iter: conjugate-gradient iterations of the start's refit when rounds
            follow it (without rounds the start is the result and gets ``refit_iter``); None
            (default): :meth:`start_refit_for` (ℓ1 rounds 5: on SmolLM2 block 3 the layer
            errors rose 0.03–0.14% at 50%, 2:4 and 70% for 10–14% less layer time,
            docs/pruning.md, "Speed, sixth pass"; ℓ0-ADMM 0).
        search_steps, search_iter: λ-search steps and iterations (no warm start only).
        penalty: ``"l1"`` (plain ``λ‖W‖₁``) or ``"scaled"`` (``λ Σ_j ‖X*_j‖ |W_ij|``).
        lam_rule: ``"quantile"`` or ``"xi"`` (the paper's rounding-error criterion).
        xi, xi_grid: the ``xi`` rule's target ratio and candidate quantiles.
        l0_rho, l0_max_iter, l0_min_iter, l0_update_every: the ℓ0-ADMM round's first ρ (scaled
            coordinates, unit diagonal), iteration bounds and iterations between ρ updates
            (:func:`fistaopt.layer.l0_admm.l0_admm`).  The defaults (ρ updated after every
            iteration, at least 6; 11–15 iterations on SmolLM2) cost 1.79–1.86× SparseGPT's
            prune time at 50%, 1.71× at 2:4 and 1.96× at 70% (1db7c54, the main table);
            ``l0_update_every=2, l0_min_iter=10`` (20–24 iterations) gave 48.64 / 28.44 at 50%
            and 82.60 / 42.03 at 2:4 (seed 0) in 2.02× and 1.96× at 92c1c18, against the
            default's 48.63 / 28.65 and 82.45 / 42.06: no gain for the time
            (docs/pruning.md, "ℓ0-ADMM rounds").
        precision: the products of the ℓ1 solver's iterations (its ``precision`` option,
            so it is not a solver option here): ``"fp32"`` (IEEE, of the problem's dtype),
            ``"tf32"`` (CUDA), ``"bf16"`` (bfloat16 products, float32 accumulation) or
            ``"auto"`` (default, :func:`resolve_precision`: bf16 where the device multiplies
            bfloat16 natively).  The refits always run IEEE, so every candidate is refit and
            compared in the problem's precision, and a row keeps its start unless that
            comparison favours the ℓ1 candidate (a bfloat16 refit once read a diverged fit as
            a good one: docs/pruning.md, "Speed, fourth pass").
        l0_precision: the products of the ℓ0-ADMM round's iterations, with the same choices
            (:func:`fistaopt.layer.l0_admm.l0_admm`); ``"fp32"`` (default, IEEE).  ``"auto"``
            (bfloat16 on a device that multiplies it natively) kept SmolLM2's mean layer
            errors within 0.01% of IEEE's at 50%, 2:4 and 70% in ~0.85× the layer time, but
            whole-model prunes were not shorter where two prunes shared the cores (50%, seed 0
            beside each other: 410.1 s against 413.6 s), and WikiText-2 moved from 152.36 to
            159.11 at 70% and 45.51 to 45.96 at 50% on seed 0 (docs/pruning.md, "Speed, eighth
            pass" and "tenth pass").
    """

    refit: bool = True
    round_kind: str = "l0-admm"
    rounds: int | None = None
    round_iter: int = 15
    quantiles: tuple[float, ...] = (0.9, 0.6)
    refit_iter: int = 10
    start_refit_iter: int | None = None
    search_steps: int = 8
    search_iter: int = 20
    penalty: str = "scaled"
    lam_rule: str = "quantile"
    xi: float = 0.3
    xi_grid: tuple[float, ...] = (0.5, 0.7, 0.85, 0.95)
    l0_rho: float = 0.1
    l0_max_iter: int = 300
    l0_min_iter: int = 6
    l0_update_every: int = 1
    precision: str = "auto"
    l0_precision: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))
        object.__setattr__(self, "xi_grid", tuple(float(q) for q in self.xi_grid))
        if not isinstance(self.refit, bool):
            raise ValueError(f"refit must be True or False, got {self.refit!r}")
        if self.round_kind not in ROUND_KINDS:
            raise ValueError(f"round_kind must be one of {', '.join(ROUND_KINDS)}; got {self.round_kind!r}")
        if not (isinstance(self.l0_rho, (int, float)) and not isinstance(self.l0_rho, bool) and self.l0_rho > 0):
            raise ValueError(f"l0_rho must be a number > 0, got {self.l0_rho!r}")
        if not _is_int(self.l0_update_every) or self.l0_update_every < 1:
            raise ValueError(f"l0_update_every must be an int >= 1, got {self.l0_update_every!r}")
        for name in ("rounds", "round_iter", "refit_iter", "start_refit_iter", "search_steps", "search_iter",
                     "l0_max_iter", "l0_min_iter"):
            value = getattr(self, name)
            if name in ("rounds", "start_refit_iter") and value is None:
                continue
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {self.penalty!r}")
        if self.lam_rule not in LAM_RULES:
            raise ValueError(f"lam_rule must be one of {LAM_RULES}, got {self.lam_rule!r}")
        if not 0.0 < float(self.xi) < 1.0:
            raise ValueError(f"xi must be in (0, 1), got {self.xi!r}")
        for name in ("precision", "l0_precision"):
            value = getattr(self, name)
            if value not in LAYER_PRECISIONS:
                raise ValueError(f"{name} must be one of {', '.join(LAYER_PRECISIONS)}; got {value!r}")
        if not self.xi_grid or not self.quantiles:
            raise ValueError("xi_grid and quantiles must not be empty")
        if not all(0.0 <= q <= 1.0 for q in (*self.xi_grid, *self.quantiles)):
            raise ValueError(f"xi_grid and quantiles must hold values in [0, 1], got {self.xi_grid}, {self.quantiles}")

    def rounds_for(self, pattern: "Pattern") -> int:
        """The rounds for ``pattern``: :attr:`rounds`, or :func:`auto_rounds` when None."""
        if self.rounds is not None:
            return self.rounds
        return 1 if self.round_kind == "l0-admm" else auto_rounds(pattern)

    def start_refit_for(self) -> int:
        """The start's refit iterations when rounds follow: :attr:`start_refit_iter`, or when
        None 5 before ℓ1 rounds (their λ comes from the refit start's gradient) and 0 before
        an ℓ0-ADMM round, whose first iterations refit on their own: on SmolLM2 block 3 the
        layer errors moved by at most 0.02% at 50%, 2:4 and 70% (0.03206, 0.05252, 0.09409
        against 0.03206, 0.05251, 0.09410) for 10–14% less layer time in single runs (docs/pruning.md,
        "Speed, seventh pass")."""
        if self.start_refit_iter is not None:
            return self.start_refit_iter
        return 0 if self.round_kind == "l0-admm" else 5

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def auto_rounds(pattern: "Pattern") -> int:
    """The ℓ1 rounds of ``rounds=None``: 1 for unstructured patterns up to 50% sparsity, else 2.

    Measured on SmolLM2-135M (32 × 512 calibration tokens, damping 0.1, WikiText-2 /
    held-out perplexity; docs/pruning.md, "One ℓ1 round at 50%"): at 50% one round gave
    50.82 / 29.90, 49.81 / 29.72 and 52.24 / 30.17 (seeds 0, 1, 2) against two rounds'
    51.12 / 29.71, 50.64 / 29.57 and 51.62 / 30.09, in 0.8× the prune time; at 70% one
    round lost (199.68 / 87.28 against 193.50 / 85.63), and at 2:4 too (90.43 / 49.53
    against 88.78 / 48.41).
    """
    return 2 if pattern.unstructured_above_half or pattern.kind == "nm" else 1


def resolve_precision(precision: str, device: Any, dtype: torch.dtype) -> str:
    """The precision that ``precision`` (the ℓ1 solver's, or the ℓ0-ADMM round's) stands for on
    ``device`` with iterates of ``dtype``.

    ``auto``: ``bf16`` for float32 iterates on a device that multiplies bfloat16 natively
    (:func:`native_bf16`), ``fp32`` (IEEE) otherwise; float64 problems keep IEEE.  Measured
    on SmolLM2-135M block 3 with IEEE refits (docs/pruning.md, "Speed, fifth pass"): layer
    errors within 0.04% of the IEEE search's, in 0.77–0.85× the time.  Others as given.
    """
    if precision not in LAYER_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(LAYER_PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if dtype == torch.float32 and native_bf16(device) else "fp32"


def check_solver_options(solver: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` for the ℓ1 solver ``solver`` inside a layer prune, checked.

    Raises:
        ValueError: ``solver`` is unknown or a verifier (cvxpy), an option is controlled
            by the layer prune, or the solver has no such option (the valid ones listed).
    """
    from fistaopt.solvers import solver_class

    if solver in VERIFIERS:
        raise ValueError(f"solver {solver!r} is a verifier, too slow to prune with; use another solver")
    owned = (*LAYER_CONTROLLED, *LayerOptions.names())
    valid = [n for n in solver_class(solver).option_names() if n not in owned]
    fixed = sorted(set(options) & set(LAYER_CONTROLLED))
    if fixed:
        raise ValueError(
            f"{', '.join(fixed)}: set by the layer prune itself (a fixed number of iterations per solve: "
            f"round_iter, search_iter), not a solver option here; valid solver options: {', '.join(valid)}"
        )
    layer_owned = sorted(set(options) & set(LayerOptions.names()))
    if layer_owned:
        raise ValueError(f"{', '.join(layer_owned)}: a layer option (LayerOptions) that the layer prune passes on to "
                         f"the solver, not a solver option here")
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)}; valid layer options: {', '.join(LayerOptions.names())}; "
            f"valid {solver} options: {', '.join(valid)}"
        )
    return dict(options)


def split_options(solver: str, options: Mapping[str, Any]) -> tuple[LayerOptions, dict[str, Any]]:
    """Route flat keyword options: :class:`LayerOptions` fields, the rest to the solver (checked)."""
    layer_keys = set(LayerOptions.names())
    layer = LayerOptions(**{k: v for k, v in options.items() if k in layer_keys})
    return layer, check_solver_options(solver, {k: v for k, v in options.items() if k not in layer_keys})
