"""``fistaopt compare``: solvers × problems under one budget → tables and convergence plots."""

from __future__ import annotations

import argparse
import logging
import re
from typing import Any

from fistaopt.cli.common import UsageError, csv_list, nonneg_int, number, output_folder, positive_int, set_threads

logger = logging.getLogger(__name__)

EPILOG = """examples:
  fistaopt compare --problems iid,llm-like --solvers fista,ista,admm,cvxpy --d-out 32 --d-in 64 --out out/study
  fistaopt compare --problem-dir out/problems --solvers "fista,fista[restart=False],admm[rho=1]" --out out/real
"""


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be comma-separated integers, got {text!r}") from None


def safe_name(name: str) -> str:
    """A file-name-safe version of a problem name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "problem"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from fistaopt.problems.synthetic import PROBLEM_KINDS
    from fistaopt.solvers import available

    p = sub.add_parser("compare", help="compare solvers on synthetic and/or saved layer problems",
                       description="Every solver on every problem under the same budget and stopping rule.",
                       epilog=EPILOG)
    p.add_argument("--problems", default=None,
                   help=f"comma-separated synthetic kinds: {','.join(PROBLEM_KINDS)} "
                        "(default: all, or none when --problem-dir is given)")
    p.add_argument("--problem-dir", default=None, help="folder of *.pt problems saved by LassoProblem.save (default: none)")
    p.add_argument("--solvers", default=",".join(available()),
                   help="comma-separated solvers, each NAME or NAME[option=value,...], e.g. fista[restart=False]")
    p.add_argument("--d-out", type=positive_int, default=32, help="rows of W (outputs) of the synthetic problems")
    p.add_argument("--d-in", type=positive_int, default=64, help="columns of W (inputs) of the synthetic problems")
    p.add_argument("--seeds", type=_seeds, default="0", help="comma-separated seeds, one problem per kind and seed")
    p.add_argument("--lam-ratio", type=number, default=0.1,
                   help="λ = ratio · λ_max per row (synthetic problems, and saved layer problems with λ = 0)")
    p.add_argument("--tol", type=number, default=1e-8, help="target relative duality gap")
    p.add_argument("--max-iter", type=nonneg_int, default=2000, help="iteration budget per solve")
    p.add_argument("--time-limit", type=number, default=None, help="seconds per solve (default: none)")
    p.add_argument("--reference", default="best", help="'best' or a solver label whose objective is P_ref")
    p.add_argument("--format", choices=("png", "svg"), default="png", help="figure format")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads, 1 gives steadier timings (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _inputs(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """The problems and solver specs, every name and budget checked."""
    from fistaopt.problems.synthetic import PROBLEM_KINDS
    from fistaopt.solvers import available
    from fistaopt.study import load_problem_dir, problem_set, solver_spec, split_specs

    names = split_specs(args.solvers)
    if not names:
        raise UsageError(f"--solvers is empty; valid solvers: {', '.join(available())}")
    try:
        specs = [solver_spec(s) for s in names]
    except ValueError as e:
        raise UsageError(str(e)) from None
    kinds = ([] if args.problem_dir else list(PROBLEM_KINDS)) if args.problems is None else csv_list(args.problems)
    bad = [k for k in kinds if k not in PROBLEM_KINDS]
    if bad:
        raise UsageError(f"unknown problem kind(s) {', '.join(map(repr, bad))}; valid kinds: {', '.join(PROBLEM_KINDS)}")
    if not kinds and not args.problem_dir:
        raise UsageError(f"no problems: give --problems (valid kinds: {', '.join(PROBLEM_KINDS)}) or --problem-dir")
    if not args.tol >= 0:
        raise UsageError(f"--tol must be >= 0, got {args.tol}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise UsageError(f"--time-limit must be > 0, got {args.time_limit}")
    labels = [s.label for s in specs]
    if args.reference != "best" and args.reference not in labels:
        raise UsageError(f"--reference {args.reference!r} must be 'best' or one of the solvers: {', '.join(labels)}")
    problems: list[Any] = []
    try:
        if kinds:
            problems += problem_set(kinds, d_out=args.d_out, d_in=args.d_in, seeds=args.seeds, lam_ratio=args.lam_ratio)
        if args.problem_dir:
            problems += load_problem_dir(args.problem_dir, lam_ratio=args.lam_ratio)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return problems, specs


def run(args: argparse.Namespace) -> int:
    """Body of ``fistaopt compare``; returns the exit code."""
    from fistaopt import _io, plots
    from fistaopt.study import compare

    out = output_folder(args.out, overwrite=True)
    problems, specs = _inputs(args)
    set_threads(args.threads)
    result = compare(problems, specs, tol=args.tol, max_iter=args.max_iter, time_limit=args.time_limit,
                     reference=args.reference, progress=not args.no_progress)
    with _io.atomic_dir(out, overwrite=True) as tmp:
        result.save(tmp)
        for name in result.problem_names:
            if not result.traces(name):
                logger.warning("no trace to plot for %s (every solver raised)", name)
                continue
            plots.save_figure(plots.plot_convergence(result, name), tmp / f"convergence-{safe_name(name)}.{args.format}")
    print(result.to_markdown())
    print(f"\nwrote {out}/results.json, results.csv, results.md, traces.json and convergence plots")
    return 0
