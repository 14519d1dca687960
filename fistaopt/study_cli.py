"""Bodies of the ``fistaopt compare`` and ``fistaopt plot`` subcommands.

    fistaopt compare --problems iid,llm-like --solvers fista,ista,admm,cvxpy \\
        --d-out 32 --d-in 64 --seeds 0 --tol 1e-8 --max-iter 2000 --out DIR
    fistaopt plot PRUNED_MODEL/report.json --out DIR     # prune report → prune-report.png
    fistaopt plot COMPARE_DIR --out DIR                  # redraw convergence-<problem>.png

They are registered in :mod:`fistaopt.cli` through ``register_cli`` of
:mod:`fistaopt.study` and :mod:`fistaopt.plots`; ``python -m fistaopt.study_cli
compare|plot ...`` runs them without the rest of the CLI.  Bad names exit with code 2
and one line on stderr; outputs are written to a temporary folder and published only
when everything succeeded.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

DEFAULT_SOLVERS = "fista,ista,admm,cvxpy"


class StudyUsageError(Exception):
    """A bad name or setting: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be comma-separated integers, got {text!r}") from None


def safe_name(name: str) -> str:
    """A file-name-safe version of a problem name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "problem"


# ---------------------------------------------------------------------- compare
def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``compare`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("compare", help="compare solvers on synthetic and/or saved layer problems")
    p.add_argument("--problems", default=None,
                   help="comma-separated synthetic kinds: iid,correlated,llm-like "
                        "(default: all, or none when --problem-dir is given)")
    p.add_argument("--problem-dir", default=None, help="folder of *.pt problems saved by LassoProblem.save")
    p.add_argument("--solvers", default=DEFAULT_SOLVERS,
                   help="comma-separated solvers, optionally with options: fista[restart=False,precondition=False]")
    p.add_argument("--d-out", type=int, default=32)
    p.add_argument("--d-in", type=int, default=64)
    p.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds (default 0)")
    p.add_argument("--lam-ratio", type=float, default=0.1, help="λ = ratio · λ_max per row (synthetic problems, and saved layer problems with λ = 0)")
    p.add_argument("--tol", type=float, default=1e-8, help="target relative duality gap")
    p.add_argument("--max-iter", type=int, default=2000)
    p.add_argument("--time-limit", type=float, default=None, help="seconds per solve")
    p.add_argument("--reference", default="best", help="'best' or a solver label whose objective is P_ref")
    p.add_argument("--format", choices=("png", "svg"), default="png", help="figure format")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 gives steadier timings)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_compare)
    return p


def _build_compare_inputs(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    from fistaopt.problems.synthetic import PROBLEM_KINDS
    from fistaopt.solvers import available
    from fistaopt.study import SolverSpec, load_problem_dir, problem_set, split_solver_list

    solver_names = split_solver_list(args.solvers)
    if not solver_names:
        raise StudyUsageError(f"--solvers is empty; valid solvers: {', '.join(available())}")
    specs = []
    for s in solver_names:
        try:
            specs.append(SolverSpec.parse(s))
        except ValueError as e:
            raise StudyUsageError(str(e)) from None
    if args.problems is None:
        kinds = [] if args.problem_dir else list(PROBLEM_KINDS)
    else:
        kinds = _csv(args.problems)
    bad = [k for k in kinds if k not in PROBLEM_KINDS]
    if bad:
        raise StudyUsageError(f"unknown problem kind(s) {', '.join(map(repr, bad))}; valid kinds: {', '.join(PROBLEM_KINDS)}")
    if not kinds and not args.problem_dir:
        raise StudyUsageError(f"no problems: give --problems (valid kinds: {', '.join(PROBLEM_KINDS)}) or --problem-dir")
    if args.d_out < 1 or args.d_in < 1:
        raise StudyUsageError(f"--d-out and --d-in must be positive, got {args.d_out} and {args.d_in}")
    if args.max_iter < 0:
        raise StudyUsageError(f"--max-iter must be >= 0, got {args.max_iter}")
    if not args.tol >= 0:
        raise StudyUsageError(f"--tol must be >= 0, got {args.tol}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise StudyUsageError(f"--time-limit must be > 0, got {args.time_limit}")
    labels = [s.label for s in specs]
    if args.reference != "best" and args.reference not in labels:
        raise StudyUsageError(f"--reference {args.reference!r} must be 'best' or one of the solvers: {', '.join(labels)}")
    problems: list[Any] = []
    try:
        if kinds:
            problems += problem_set(kinds, d_out=args.d_out, d_in=args.d_in, seeds=args.seeds, lam_ratio=args.lam_ratio)
        if args.problem_dir:
            problems += load_problem_dir(args.problem_dir, lam_ratio=args.lam_ratio)
    except ValueError as e:
        raise StudyUsageError(str(e)) from None
    return problems, specs


def _exit_code(command: str, body: Any, args: argparse.Namespace) -> int:
    """Run ``body(args)``; a :class:`StudyUsageError` becomes one line on stderr and exit code 2."""
    try:
        return body(args)
    except StudyUsageError as e:
        print(f"fistaopt {command}: error: {e}", file=sys.stderr)
        return 2


def run_compare(args: argparse.Namespace) -> int:
    """Body of ``fistaopt compare``; returns the exit code."""
    return _exit_code("compare", _run_compare, args)


def _run_compare(args: argparse.Namespace) -> int:
    from fistaopt import plots
    from fistaopt.study import atomic_output_dir, compare

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise StudyUsageError(f"--out {str(out)!r} exists and is not a directory")
    problems, specs = _build_compare_inputs(args)
    if args.threads is not None:
        if args.threads < 1:
            raise StudyUsageError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    result = compare(problems, specs, tol=args.tol, max_iter=args.max_iter, time_limit=args.time_limit,
                     reference=args.reference, progress=not args.no_progress)
    with atomic_output_dir(out) as tmp:
        result.save(tmp)
        for name in result.problem_names:
            if not result.traces(name):
                logger.warning("no trace to plot for %s (every solver raised)", name)
                continue
            fig = plots.plot_convergence(result, name)
            plots.save_figure(fig, tmp / f"convergence-{safe_name(name)}.{args.format}")
    print(result.to_markdown())
    print(f"\nwrote {out}/results.json, results.csv, results.md, traces.json and convergence plots")
    return 0


# ---------------------------------------------------------------------- plot
def add_plot_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``plot`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("plot", help="draw a prune report.json, or redraw a compare folder")
    p.add_argument("source", help="report.json of `fistaopt prune` (or its folder), or a `fistaopt compare` folder")
    p.add_argument("--out", required=True, help="output folder (files are added/replaced atomically)")
    p.add_argument("--format", choices=("png", "svg"), default="png")
    p.set_defaults(func=run_plot)
    return p


def run_plot(args: argparse.Namespace) -> int:
    """Body of ``fistaopt plot``; returns the exit code."""
    return _exit_code("plot", _run_plot, args)


def _run_plot(args: argparse.Namespace) -> int:
    from fistaopt import plots
    from fistaopt.study import StudyResult, atomic_output_dir

    src = Path(args.source)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise StudyUsageError(f"--out {str(out)!r} exists and is not a directory")
    figures: dict[str, Any] = {}
    if src.is_dir() and (src / "traces.json").is_file():
        try:
            study = StudyResult.load(src)
        except (ValueError, KeyError) as e:
            raise StudyUsageError(f"cannot read study folder {str(src)!r}: {e}") from None
        for name in study.problem_names:
            if study.traces(name):
                figures[f"convergence-{safe_name(name)}"] = plots.plot_convergence(study, name)
    else:
        try:
            report = plots.load_report(src)
            figures["prune-report"] = plots.plot_prune_report(report)
        except ValueError as e:
            raise StudyUsageError(str(e)) from None
    with atomic_output_dir(out) as tmp:
        for stem, fig in figures.items():
            plots.save_figure(fig, tmp / f"{stem}.{args.format}")
    for stem in figures:
        print(out / f"{stem}.{args.format}")
    return 0


# ---------------------------------------------------------------------- stand-alone entry points
def _standalone(argv: Sequence[str] | None) -> int:
    parser = _Parser(prog="fistaopt")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_compare_parser(sub)
    add_plot_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


def main_compare(argv: Sequence[str] | None = None) -> int:
    """``fistaopt compare`` with arguments ``argv`` (without the command name)."""
    return _standalone(["compare", *(sys.argv[1:] if argv is None else argv)])


def main_plot(argv: Sequence[str] | None = None) -> int:
    """``fistaopt plot`` with arguments ``argv`` (without the command name)."""
    return _standalone(["plot", *(sys.argv[1:] if argv is None else argv)])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fistaopt.study_cli compare|plot ...``."""
    return _standalone(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
