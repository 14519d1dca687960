"""GPU benchmark of the production FISTA path; prints JSON and writes it to ``--out``.

One prepared script (≤ 5 minutes on an H200) for the figures issue 5 asks for:

1. For LLaMA-7B/13B operator shapes ``d_out × d_in`` = 4096×4096, 11008×4096,
   4096×11008, 5120×5120, 13824×5120, with synthetic LLM-like statistics built ON the
   device (``H = XᵀX / n`` from a low-rank-plus-outlier ``X`` of ``--tokens`` tokens;
   ``make_problem`` is not used at these sizes):

   - seconds per FISTA iteration (fistaopt's own loop, Jacobi-scaled problem, restart on,
     ``check_every = max_iter``; per-iteration time is ``(t(n2) − t(n1)) / (n2 − n1)`` so
     set-up and the final float64 certificate cancel) divided by seconds per plain GEMM
     ``(d_out × d_in)·(d_in × d_in)`` of the same shape in the same precision, in the
     same run; CUDA events, warm-up, median of ``--repeats``.  Target ≤ 1.15 in fp32;
   - achieved TFLOP/s (``2·d_out·d_in² / s``) of FISTA and of the GEMM, per precision
     mode ``fp32`` (IEEE), ``tf32``, ``bf16``;
   - seconds for a whole ``prune_layer`` (50% unstructured, warm-started from SparseGPT)
     next to SparseGPT itself (``fistaopt.llm.baselines.sparsegpt``) on the same operator;
   - peak GPU memory of the shape's measurements;
   - on the first shape: per-iteration seconds of a batch of ``--batch-k`` λ candidates
     (one ``(K·d_out) × d_in × d_in`` GEMM) over ``K ×`` the single solve (≈ 1 expected).

2. The whole-model and 7B-block figures come from ``benchmarks/gpu_checks.sh`` (which also
   runs this script) and ``benchmarks/gpu_block.py``.

Usage::

    python benchmarks/gpu.py                      # → docs/results/gpu-<device-name>.json
    python benchmarks/gpu.py --quick --device cpu # small shapes, runs anywhere (CPU check)
                                                  # → docs/results/gpu-cpu-quick.json

On CPU, ``tf32`` has no effect (the GEMM stays IEEE; ``effective_precision`` says so)
and ``bf16`` runs slowly with the same code: CPU numbers only check that the script works.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fistaopt as fo  # noqa: E402
from fistaopt import _io  # noqa: E402
from fistaopt.layer import prune_layer  # noqa: E402
from fistaopt.solvers.fista import effective_precision  # noqa: E402
from fistaopt.solvers.prox import matmul_precision  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (5120, 5120), (13824, 5120)]
QUICK_SHAPES = [(512, 512), (1024, 512), (512, 1024)]
MODES = ("fp32", "tf32", "bf16")


class Timer:
    """Elapsed seconds of a callable: CUDA events on CUDA, perf_counter elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b) / 1e3
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


def llm_like_problem(d_out: int, d_in: int, n: int, device: torch.device, seed: int = 0) -> fo.LassoProblem:
    """LLM-like layer statistics generated on ``device`` in float32 (fast at 13824×5120).

    ``X = (Z + 0.5·U V) · scales``: Gaussian tokens plus a shared rank-``d_in/16``
    component, column scales spread over 2 decades and 2% outlier channels ×20 (the
    statistics of ``make_problem("llm-like")``); ``H = XᵀX/n``, dense ``W₀``, target
    ``X W₀ᵀ``, ``λ = 1e-3·λ_max`` per row (``prune_layer`` sets its own λ).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    kw = dict(generator=g, device=device, dtype=torch.float32)
    scales = 10 ** (torch.rand(d_in, **kw) * 2 - 1.5)
    out = torch.randperm(d_in, generator=g, device=device)[: max(1, d_in // 50)]
    scales[out] *= 20
    rank = max(1, d_in // 16)
    X = torch.randn(n, d_in, **kw).add_(0.5 * (torch.randn(n, rank, **kw) @ torch.randn(rank, d_in, **kw)))
    X.mul_(scales)
    with matmul_precision("fp32", device):
        H = X.T @ X / n
        del X
        H = 0.5 * (H + H.T)
        W0 = torch.randn(d_out, d_in, **kw) / math.sqrt(d_in)
        G = W0 @ H
        c = (G * W0).sum(1).clamp_min(0)
    prob = fo.LassoProblem(H, G, c, check_symmetry=False)
    prob = prob.with_lam(1e-3 * prob.lam_max().to(torch.float32))
    prob.W0 = W0
    return prob


def time_gemm(A: torch.Tensor, B: torch.Tensor, mode: str, timer: Timer, reps: int) -> float:
    """Seconds of one ``A @ B`` in ``mode`` (median of ``reps`` timed batches)."""
    if mode == "bf16":
        A, B = A.to(torch.bfloat16), B.to(torch.bfloat16)
    out = torch.empty(A.shape[0], B.shape[1], dtype=A.dtype, device=A.device)
    with matmul_precision(mode, A.device):
        for _ in range(3):  # warm-up (first calls pick kernels / allocate)
            torch.mm(A, B, out=out)
        inner = 5 if A.device.type == "cuda" else 2
        times = [timer(lambda: [torch.mm(A, B, out=out) for _ in range(inner)]) / inner for _ in range(reps)]
    return statistics.median(times)


def time_fista(prob: fo.LassoProblem, mode: str, n1: int, n2: int, timer: Timer, reps: int) -> float:
    """Seconds per FISTA iteration: ``(t(n2) − t(n1)) / (n2 − n1)``, median of ``reps``."""
    def run(n: int) -> None:
        fo.solve(prob, "fista", tol=0.0, max_iter=n, check_every=n, precondition=False, restart=True,
                 dtype=torch.float32, precision=mode, warn=False)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(n1)  # warm-up
        per = []
        for _ in range(reps):
            t1 = timer(lambda: run(n1))
            t2 = timer(lambda: run(n2))
            per.append(max(t2 - t1, 0.0) / (n2 - n1))
    return statistics.median(per)


def bench_shape(d_out: int, d_in: int, args: argparse.Namespace, device: torch.device, timer: Timer) -> dict:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    prob = llm_like_problem(d_out, d_in, args.tokens, device)
    W0 = prob.W0
    scaled, _ = prob.jacobi_scaled()  # production coordinates; L cached once
    scaled.lipschitz()
    row: dict = {"d_out": d_out, "d_in": d_in, "tokens": args.tokens,
                 "setup_seconds": round(time.perf_counter() - t0, 3), "modes": {}}
    flops = 2.0 * d_out * d_in * d_in
    g = torch.Generator(device=device).manual_seed(1)
    A = torch.randn(d_out, d_in, generator=g, device=device)
    B = scaled.H.to(torch.float32)
    for mode in MODES:
        mm = time_gemm(A, B, mode, timer, args.repeats)
        it = time_fista(scaled, mode, args.n1, args.n2, timer, args.repeats)
        row["modes"][mode] = {
            "effective_precision": effective_precision(mode, device, torch.float32),
            "seconds_per_iteration": it, "seconds_per_gemm": mm, "ratio": it / mm if mm > 0 else None,
            "fista_tflops": flops / it / 1e12 if it > 0 else None, "gemm_tflops": flops / mm / 1e12,
        }
    del A, B
    if args.batch_k and (d_out, d_in) == args.batch_shape:
        # K λ candidates in one (K·d_out) × d_in × d_in GEMM: cost per iteration vs K × single
        K = args.batch_k
        lam = scaled.lam.expand(scaled.d_out) * torch.logspace(-1, 1, K, device=device)[:, None]
        kb = time_fista(scaled.with_lam(lam), "fp32", args.n1, args.n2, timer, args.repeats)
        one = row["modes"]["fp32"]["seconds_per_iteration"]
        row["batched"] = {"K": K, "seconds_per_iteration": kb, "over_K_times_single": kb / (K * one) if one else None}
    # whole layer: SparseGPT warm start, then prune_layer on the same operator
    try:
        from fistaopt.llm.baselines import sparsegpt
        from fistaopt.sparsity import parse_pattern
    except ImportError as exc:  # pragma: no cover - baselines are part of the package
        row["sparsegpt_seconds"] = None
        row["note"] = f"no SparseGPT baseline: {exc}"
        sparsegpt = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W_ws = None
        if sparsegpt is not None:
            holder = {}
            row["sparsegpt_seconds"] = timer(lambda: holder.update(
                r=sparsegpt(W0, prob.H, parse_pattern("unstructured", 0.5))))
            W_ws = holder["r"][0]
            row["sparsegpt_rel_error"] = float(prob.relative_error(W_ws))
        holder = {}
        row["prune_layer_seconds"] = timer(lambda: holder.update(r=prune_layer(
            prob, "unstructured", sparsity=0.5, warm_start=W_ws, device=device, dtype=torch.float32)))
        res = holder["r"]
        row["prune_layer_rel_error"] = res.rel_error
        row["prune_layer_warm_start"] = "sparsegpt" if W_ws is not None else "none (λ search)"
    row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (a CPU check of the script)")
    ap.add_argument("--out", default=None, help="JSON file (default docs/results/gpu-<device-name>.json)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=None, help="calibration tokens of the synthetic X")
    ap.add_argument("--budget", type=float, default=280.0, help="seconds; later shapes are skipped past it")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--batch-k", type=int, default=4, help="λ candidates of the batched timing (0: skip)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    shapes = QUICK_SHAPES if args.quick else SHAPES
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.tokens = args.tokens or (1024 if args.quick else 4096)
    args.n1, args.n2 = (5, 35) if args.quick else (10, 60)
    args.batch_shape = shapes[0]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    out: dict = {
        "device": str(device), "device_name": name, "label": "GPU" if device.type == "cuda" else "CPU",
        "quick": args.quick, "torch": torch.__version__, "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(), "repeats": args.repeats, "iterations_timed": [args.n1, args.n2],
        "shapes": [],
    }
    timer = Timer(device)
    start = time.perf_counter()
    for d_out, d_in in shapes:
        if time.perf_counter() - start > args.budget:
            out["shapes"].append({"d_out": d_out, "d_in": d_in, "skipped": f"past --budget {args.budget:g} s"})
            continue
        out["shapes"].append(bench_shape(d_out, d_in, args, device, timer))
        print(json.dumps(out["shapes"][-1]), file=sys.stderr, flush=True)
    fp32 = [s["modes"]["fp32"]["ratio"] for s in out["shapes"] if "modes" in s]
    out["fp32_ratio_max"] = max(fp32) if fp32 else None
    out["fp32_ratio_target"] = 1.15
    out["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(out, indent=1)
    print(text)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") + ("-quick" if args.quick else "")
    path = Path(args.out or f"docs/results/gpu-{slug}.json")
    _io.write_text(path, text + "\n")
    return out


if __name__ == "__main__":
    main()
