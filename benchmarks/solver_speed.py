"""Solver speed benchmark; prints JSON (and writes it with ``--out FILE``).

1. FISTA per-iteration cost relative to one plain GEMM of the same shape
   ``(d_out × d_in)·(d_in × d_in)`` in float32: fistaopt's actual FISTA loop is run for
   ``n1`` and ``n2`` iterations with ``check_every = max_iter`` (one certificate at the end)
   and the per-iteration time is ``(t(n2) − t(n1)) / (n2 − n1)`` (setup and the final
   certificate cancel); GEMM and FISTA measurements are interleaved and the median of the
   repeats is reported, because a shared machine is noisy.  Target ≤ 1.3 on CPU.
2. Per solver: iterations and seconds to relative duality gap 1e-6 on an LLM-like problem.

    python benchmarks/solver_speed.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings

import torch

import fistaopt as fo


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_gemm(A: torch.Tensor, B: torch.Tensor, reps: int) -> float:
    out = torch.empty(A.shape[0], B.shape[1], dtype=A.dtype, device=A.device)
    torch.mm(A, B, out=out)
    _sync(A.device)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(A, B, out=out)
    _sync(A.device)
    return (time.perf_counter() - t) / reps


def _time_fista(prob: fo.LassoProblem, n_iter: int, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fo.solve(prob, "fista", tol=0.0, max_iter=n_iter, check_every=n_iter, precondition=False,
             dtype=torch.float32, device=device, warn=False)
    _sync(device)
    return time.perf_counter() - t


def per_iteration(d_out: int, d_in: int, device: torch.device, repeats: int, n1: int, n2: int) -> dict:
    prob = fo.make_problem("iid", d_out, d_in, n=d_in + 64, lam_ratio=0.1, seed=0, dtype=torch.float32)
    prob = prob.to(device=device)
    prob.lipschitz()  # cached: not part of the loop
    g = torch.Generator().manual_seed(1)
    A = torch.randn(d_out, d_in, generator=g).to(device)
    B = torch.randn(d_in, d_in, generator=g).to(device)
    _time_fista(prob, n1, device)  # warm-up
    gemm_reps = max(3, n2 - n1)
    ratios, it_s, mm_s = [], [], []
    for _ in range(repeats):
        mm_a = _time_gemm(A, B, gemm_reps)
        t1 = _time_fista(prob, n1, device)
        t2 = _time_fista(prob, n2, device)
        mm_b = _time_gemm(A, B, gemm_reps)
        it = max(t2 - t1, 0.0) / (n2 - n1)
        mm = 0.5 * (mm_a + mm_b)
        it_s.append(it)
        mm_s.append(mm)
        ratios.append(it / mm)
    return {
        "d_out": d_out, "d_in": d_in, "device": str(device), "dtype": "float32",
        "seconds_per_iteration": statistics.median(it_s), "seconds_per_mm": statistics.median(mm_s),
        "ratio_median": statistics.median(ratios), "ratios": [round(r, 3) for r in ratios],
        "iterations_timed": [n1, n2],
    }


def to_gap(prob: fo.LassoProblem, solver: str, dtype: torch.dtype, max_iter: int, tol: float = 1e-6, **kw) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fo.solve(prob, solver, tol=tol, max_iter=max_iter, check_every=10, dtype=dtype, **kw)
        reached = r.trace.first_reaching(tol)
    return {
        "solver": solver, "dtype": str(dtype).replace("torch.", ""), "d_out": prob.d_out, "d_in": prob.d_in,
        "converged": r.converged, "stop_reason": r.stop_reason, "iterations": r.n_iter,
        "seconds": round(r.seconds, 4), "rel_gap": r.rel_gap,
        "first_check_at_tol": None if reached is None else {"iteration": reached[0], "seconds": round(reached[1], 4)},
        "zeros": float((r.W == 0).double().mean()),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and iterations")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    cpu = torch.device("cpu")
    shapes = [(576, 576), (1536, 576), (576, 1536), (2048, 2048)]
    out: dict = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
        "per_iteration_vs_mm": [],
        "to_rel_gap_1e-6": [],
    }
    for d_out, d_in in shapes:
        n1, n2 = (5, 25) if d_in >= 2048 else (10, 60)
        if args.quick:
            n1, n2 = n1, n1 + (n2 - n1) // 2
        out["per_iteration_vs_mm"].append(per_iteration(d_out, d_in, cpu, repeats, n1, n2))
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        for d_out, d_in in shapes + [(4096, 4096), (11008, 4096), (4096, 11008)]:
            out["per_iteration_vs_mm"].append(per_iteration(d_out, d_in, cuda, repeats, 20, 220))
    big = fo.make_problem("llm-like", 256, 512, lam_ratio=1e-4, seed=0)
    e = torch.linalg.eigvalsh(big.H)
    out["llm_problem"] = {"d_out": 256, "d_in": 512, "lam_ratio": 1e-4, "condition_number": float(e[-1] / e[0])}
    for dtype in (torch.float64, torch.float32):
        for solver, budget in (("fista", 5000), ("admm", 5000), ("ista", 3000)):
            out["to_rel_gap_1e-6"].append(to_gap(big, solver, dtype, budget))
    small = fo.make_problem("llm-like", 16, 48, lam_ratio=1e-4, seed=0)
    for solver in ("cvxpy", "fista", "admm"):
        row = to_gap(small, solver, torch.float64, 5000)
        row["note"] = "small instance (16×48) so that cvxpy answers"
        out["to_rel_gap_1e-6"].append(row)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return out


if __name__ == "__main__":
    main()
