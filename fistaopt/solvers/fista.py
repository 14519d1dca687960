"""FISTA: accelerated proximal gradient with adaptive restart — the production solver.

Iteration (Beck & Teboulle 2009), all rows and all λ candidates in one GEMM::

    G_k   = Y_k H − G                                  (one GEMM, fused as addmm)
    W_k+1 = S_{λω/L}(Y_k − G_k / L) ⊙ mask              (soft threshold)
    t_k+1 = (1 + √(1 + 4 t_k²)) / 2
    Y_k+1 = W_k+1 + (t_k − 1)/t_k+1 · (W_k+1 − W_k)

Adaptive gradient restart (O'Donoghue & Candès 2015), per row and without a host
synchronisation: when ``⟨Y_k − W_k+1, W_k+1 − W_k⟩ > 0`` the row's momentum is reset
(``t = 1``).  ``precondition=True`` solves in Jacobi-scaled coordinates
(``H̃ = S⁻¹HS⁻¹``, ``S = diag(√H_jj)``), the cure for LLM outlier channels; the
certificate is invariant under that scaling.  Step ``1/L`` with ``L = λ_max(H)``.

Memory traffic per iteration (the GEMM aside) is kept low for the GPU: the soft
threshold and the mask are one ``clamp`` (``S(Z) = Z − Π_[−thr, thr](Z)``, ``thr = +inf``
off the mask) and the iterate buffers are recycled in place; a batch of λ candidates
``(K, d_out, d_in)`` is one ``(K·d_out) × d_in × d_in`` GEMM.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.solvers.base import SolveResult, Solver, _RunState
from fistaopt.solvers.prox import PRECISIONS, PrecisionWarning, matmul_precision, native_bf16, soft_threshold  # noqa: F401


@dataclass
class FISTA(Solver):
    """Accelerated proximal gradient (see module docstring).

    Options (besides the shared ones):
        restart: adaptive gradient restart of the momentum, per row.
        precondition: iterate in Jacobi-scaled coordinates.
        precision: ``fp32`` (IEEE, default), ``tf32`` (CUDA tensor cores; on CPU or with
            float64 iterates it has no effect: the GEMM stays IEEE, a
            :class:`~fistaopt.solvers.prox.PrecisionWarning` says so) or ``bf16`` (the
            GEMM in bfloat16, float32 accumulation; on a CPU too, fast with AVX512-BF16 or
            AMX; without them the products are emulated, many times slower than fp32, and
            the solve warns with :class:`PrecisionWarning`).  Set inside the solve and restored afterwards, also on
            error.  The certificate is always float64.
            ``SolveResult.options["effective_precision"]`` records what ran
            (``fp64``/``fp32``/``tf32``/``bf16``).  Accuracy bounds: docs/gpu.md.
    """

    name: ClassVar[str] = "fista"
    momentum: ClassVar[bool] = True

    restart: bool = True
    precondition: bool = True
    precision: str = "fp32"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def effective_precision(self, device: torch.device | str, dtype: torch.dtype) -> str:
        """What the iteration GEMM really runs in for this device and iterate dtype.

        ``tf32`` takes effect only on CUDA with float32 iterates; elsewhere it runs IEEE
        (``fp32``/``fp64``) and the solve warns with :class:`PrecisionWarning`.  ``bf16``
        runs everywhere (with the same code; on a CPU fast only with native bfloat16 products).
        """
        return effective_precision(self.precision, device, dtype)

    def solve(self, problem: LassoProblem, W0=None) -> SolveResult:  # type: ignore[override]
        if not isinstance(problem, LassoProblem):
            return super().solve(problem, W0=W0)  # raises the shared TypeError
        device = torch.device(self.device) if self.device is not None else problem.device
        dtype = self.dtype or problem.dtype
        eff = self.effective_precision(device, dtype)
        if self.precision == "tf32" and eff != "tf32":
            warnings.warn(
                f"{self.name}: precision='tf32' has no effect on {device.type} with {str(dtype).replace('torch.', '')} "
                f"iterates; the GEMM runs IEEE {eff} (see SolveResult.options['effective_precision'])",
                PrecisionWarning,
                stacklevel=2,
            )
        if self.precision == "bf16" and not native_bf16(device):
            warnings.warn(
                f"{self.name}: precision='bf16' on a {device.type} without native bfloat16 products (no AVX512-BF16 "
                f"or AMX here): the GEMMs are emulated and run many times slower than IEEE fp32 "
                f"(one AVX2 thread: 34x); use precision='fp32' (a prune's precision='auto' picks it here)",
                PrecisionWarning,
                stacklevel=2,
            )
        result = super().solve(problem, W0=W0)
        result.options["effective_precision"] = eff
        return result

    def _run(self, problem: LassoProblem, W: torch.Tensor, state: _RunState) -> tuple[torch.Tensor, int]:
        L = problem.lipschitz()
        if L <= 0:  # H = 0: f is linear; one prox step with unit step is exact when bounded
            L = 1.0
        step = 1.0 / L
        dtype = W.dtype
        d_in = W.shape[-1]
        H, G = problem.H.to(dtype), problem.G.to(dtype)
        # soft threshold + mask in one clamp (Moreau): S_thr(Z) = Z − Π_[lo, hi](Z) with
        # hi = λω/L on the mask and +inf off it (so Z − Z = 0 there), lo = −hi.  Bitwise
        # the same as sign(Z)·max(|Z| − thr, 0)·mask for finite Z.
        hi = problem.threshold(dtype) * step
        if problem.mask is not None:
            hi = torch.where(problem.mask, hi, torch.full_like(hi, float("inf")))
        hi = hi.expand(W.shape).contiguous()
        lo = -hi
        step_G = G * step
        H_step = H * step
        bf16 = self.precision == "bf16"
        if bf16:
            H_step_b = H_step.to(torch.bfloat16)
        rows = W.shape[:-1]
        t = torch.ones(*rows, 1, dtype=dtype, device=W.device)
        # buffers, recycled: Z (→ W_new), the old W_prev (→ diff → next Z), Y (→ Y − W_new → next Y)
        W_prev = W.contiguous()
        Y = W_prev.clone()
        Z = torch.empty_like(W_prev)
        C = torch.empty_like(W_prev)
        k = 0
        with matmul_precision(self.precision, W.device), torch.no_grad():
            for k in range(1, self.max_iter + 1):
                # Z = Y − step·(Y H − G): one GEMM over all rows and all λ candidates,
                # (K·d_out) × d_in × d_in, fused with the update
                Y2, Z2 = Y.view(-1, d_in), Z.view(-1, d_in)
                if bf16:
                    torch.sub(Y2, Y2.to(torch.bfloat16) @ H_step_b, out=Z2)
                else:
                    torch.addmm(Y2, Y2, H_step, alpha=-1.0, out=Z2)
                Z.add_(step_G)
                torch.clamp(Z, lo, hi, out=C)
                W_new = Z.sub_(C)  # soft threshold, masked
                diff = torch.sub(W_new, W_prev, out=W_prev)
                t_new = 0.5 * (1 + torch.sqrt(1 + 4 * t * t))
                beta = (t - 1) / t_new
                if self.momentum and self.restart:
                    dot = Y.sub_(W_new).mul_(diff).sum(-1, keepdim=True)  # ⟨Y − W_new, W_new − W_prev⟩
                    restart = dot > 0
                    beta = torch.where(restart, torch.zeros_like(beta), beta)
                    t_new = torch.where(restart, torch.ones_like(t_new), t_new)
                if self.momentum:
                    torch.addcmul(W_new, diff, beta, out=Y)
                else:
                    Y.copy_(W_new)
                t = t_new
                Z, W_prev = diff, W_new  # diff's buffer is free: next Z
                if state.done(k) and state.check(k, W_new if self.callback is None else W_new.clone()):
                    break
        return W_prev, k


def effective_precision(precision: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """The precision the FISTA GEMM really runs in: ``fp64``, ``fp32``, ``tf32`` or ``bf16``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        return "bf16"
    ieee = "fp64" if dtype == torch.float64 else "fp32"
    if precision == "tf32" and torch.device(device).type == "cuda" and dtype == torch.float32:
        return "tf32"
    return ieee
