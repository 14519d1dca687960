"""Seconds of a prune's parts, variants alternated in one process: what a change saves.

Loads the model and one calibration set, then prunes a fresh copy of the dense model for
each ``--methods`` entry in turn, ``--repeats`` times round, so that a drift of the
machine's speed falls on every variant alike::

    python benchmarks/prune_parts.py --blocks 0-5 --repeats 2 --methods 'fista;fista[l0_precision="bf16"]'

Per prune: the wall seconds; the layer prunes' (the report's per-operator seconds); the
tuning's; the rest (statistics, forwards, everything else); the mean layer error and each
tuned block's output error before and after.  Unlike ``profile_prune.py`` nothing is
instrumented, so the parts are the seconds a user waits.  Whole-model seconds differ between
invocations of this machine by 10–15%; compare variants of one invocation only, and run it alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from typing import Any

import torch

from fistaopt.study.specs import Spec
from profile_prune import load_with_calibration, method_specs, prune_parser, write_result  # beside this script


def prune_parts(model: Any, calib: torch.Tensor, spec: Spec, args: argparse.Namespace) -> dict[str, Any]:
    """Prune a copy of ``model`` as ``spec`` says; its seconds by part and its errors."""
    from fistaopt import llm

    pruned = copy.deepcopy(model)
    t0 = time.perf_counter()
    report = llm.prune(pruned, calib, method=spec.name, sparsity=args.sparsity, pattern=args.pattern,
                       blocks=args.blocks, batch_size=args.batch_size, progress=False, **spec.options)
    seconds = time.perf_counter() - t0
    layers = sum(r.seconds for r in report.records)
    tuning = sum(t["seconds"] for t in report.tuning)
    return {"method": spec.label, "seconds": round(seconds, 2), "layer_seconds": round(layers, 2),
            "tune_seconds": round(tuning, 2), "rest_seconds": round(seconds - layers - tuning, 2),
            "mean_rel_error": report.totals.get("mean_rel_error"),
            "tune_error_before": [t["error_before"] for t in report.tuning],
            "tune_error_after": [t["error_after"] for t in report.tuning]}


def main(argv: list[str] | None = None) -> int:
    ap = prune_parser(__doc__, blocks="0-5", nsamples=64)
    ap.add_argument("--repeats", type=int, default=2, help="rounds over the variants")
    args = ap.parse_args(argv)
    specs = method_specs(ap, args)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")

    model, calib = load_with_calibration(args)
    runs = []
    for _ in range(args.repeats):
        for spec in specs:
            runs.append(prune_parts(model, calib, spec, args))
            print(json.dumps({k: v for k, v in runs[-1].items() if not k.startswith("tune_error")}), file=sys.stderr)
    write_result("prune_parts.py", argv, args, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
