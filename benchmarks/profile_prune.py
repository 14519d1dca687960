"""Where the time of one ``fistaopt.llm.prune`` goes: cProfile of a prune, printed as JSON.

Loads the model, draws the calibration windows, then profiles ``llm.prune`` alone (not
the load) for each ``--methods`` entry, in this process, one after the other::

    python benchmarks/profile_prune.py --blocks 0-2 --methods 'sparsegpt;fista' --out runs/profile.json

Per method: the prune's wall seconds under the profiler, and the functions with the most
own time (``tottime``) and the most cumulative time, so a change can be judged by what
it removed.  The profiler adds overhead to Python calls; the torch kernels (GEMMs,
factorizations), which hold most of the time, are measured as they are.  Run it alone
on the machine: other processes on the cores change every figure.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import platform
import pstats
import sys
import time
from typing import Any

import torch

from fistaopt import _io
from fistaopt.cli.common import block_list
from fistaopt.study.specs import Spec


def _rows(stats: pstats.Stats, key: str, top: int) -> list[dict[str, Any]]:
    """The ``top`` functions by ``key`` (``"tottime"`` or ``"cumtime"``): name, calls and seconds."""
    entries = []
    for (path, line, name), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = name if path == "~" else f"{os.path.basename(path)}:{line}({name})"
        entries.append({"function": where, "calls": int(nc), "tottime": round(tt, 3), "cumtime": round(ct, 3)})
    entries.sort(key=lambda e: e[key], reverse=True)
    return entries[:top]


def profile_one(model_name: str, calib: torch.Tensor, spec: Spec, args: argparse.Namespace) -> dict[str, Any]:
    from fistaopt import llm

    model, _ = llm.load_model(model_name)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    report = llm.prune(model, calib, method=spec.name, sparsity=args.sparsity, pattern=args.pattern,
                       blocks=args.blocks, batch_size=args.batch_size, progress=False, **spec.options)
    profiler.disable()
    seconds = time.perf_counter() - t0
    stats = pstats.Stats(profiler)
    return {"method": spec.label, "seconds": round(seconds, 2),
            "mean_rel_error": report.totals.get("mean_rel_error"),
            "top_tottime": _rows(stats, "tottime", args.top), "top_cumtime": _rows(stats, "cumtime", args.top)}


def prune_parser(doc: str | None, *, blocks: str, nsamples: int) -> argparse.ArgumentParser:
    """A parser with the arguments of prunes of the shipped model that this script and
    ``prune_parts.py`` share (``doc``: the script's docstring, whose first line describes it)."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder or GGUF (default: the shipped SmolLM2)")
    ap.add_argument("--methods", default="sparsegpt;fista", help="';'-separated method specs, e.g. 'fista[rounds=1]'")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--blocks", type=_blocks, default=blocks, help=f"blocks to prune, e.g. '{blocks}' (default) or 'all'")
    ap.add_argument("--nsamples", type=int, default=nsamples)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the JSON here too")
    return ap


def method_specs(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[Spec]:
    """``--methods`` parsed (a parse error is the parser's one-line error)."""
    try:
        specs = [Spec.parse(s) for s in args.methods.split(";") if s.strip()]
    except ValueError as e:
        ap.error(str(e))
    if not specs:
        ap.error("--methods names no method")
    return specs


def load_with_calibration(args: argparse.Namespace) -> tuple[Any, torch.Tensor]:
    """The model and ``--nsamples`` calibration windows, in ``--threads`` threads."""
    from fistaopt import llm

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tok = llm.load_model(args.model)
    return model, llm.calibration_tokens(tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)


def write_result(script: str, argv: list[str] | None, args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    """Print the JSON of ``runs`` with the command and the machine (and write it to ``--out``)."""
    result = {"command": " ".join(["python", f"benchmarks/{script}", *(argv or sys.argv[1:])]),
              "threads": args.threads, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "load_average": os.getloadavg(), "torch": torch.__version__, "runs": runs}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        _io.write_text(args.out, text + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = prune_parser(__doc__, blocks="0-2", nsamples=32)
    ap.add_argument("--top", type=int, default=25, help="functions listed per ranking")
    args = ap.parse_args(argv)
    specs = method_specs(ap, args)

    _, calib = load_with_calibration(args)
    runs = [profile_one(args.model, calib, spec, args) for spec in specs]
    write_result("profile_prune.py", argv, args, runs)
    return 0


def _blocks(text: str) -> list[int] | None:
    """argparse type: ``all`` (None) or block indices as :func:`fistaopt.cli.common.block_list` reads them."""
    return None if text == "all" else block_list(text)


if __name__ == "__main__":
    sys.exit(main())
