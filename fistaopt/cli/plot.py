"""``fistaopt plot``: draw a prune ``report.json``, or redraw the convergence plots of a compare folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fistaopt.cli.common import UsageError, output_folder
from fistaopt.cli.compare import safe_name

EPILOG = """examples:
  fistaopt plot out/smollm2-fista-50/report.json --out out/figures     # → prune-report.png (+ allocation.png)
  fistaopt plot out/study --out out/study-svg --format svg             # → convergence-<problem>.svg
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("plot", help="draw a prune report.json, or redraw a compare folder",
                       description="Figures from the outputs of `fistaopt prune` and `fistaopt compare`.",
                       epilog=EPILOG)
    p.add_argument("source", help="report.json of `fistaopt prune` (or its folder), or a `fistaopt compare` folder")
    p.add_argument("--out", required=True, help="output folder (figures are added or replaced atomically)")
    p.add_argument("--format", choices=("png", "svg"), default="png", help="figure format")
    p.set_defaults(func=run)
    return p


def _figures(src: Path) -> dict[str, Any]:
    from fistaopt import plots
    from fistaopt.study import StudyResult

    if src.is_dir() and (src / "traces.json").is_file():
        try:
            study = StudyResult.load(src)
        except (ValueError, KeyError) as e:
            raise UsageError(f"cannot read study folder {str(src)!r}: {e}") from None
        return {f"convergence-{safe_name(name)}": plots.plot_convergence(study, name)
                for name in study.problem_names if study.traces(name)}
    try:
        report = plots.load_report(src)
        figures = {"prune-report": plots.plot_prune_report(report)}
        if report.get("allocation"):
            figures["allocation"] = plots.plot_allocation(report)
        return figures
    except ValueError as e:
        raise UsageError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    """Body of ``fistaopt plot``; returns the exit code."""
    from fistaopt import _io, plots

    out = output_folder(args.out, overwrite=True)
    figures = _figures(Path(args.source))
    with _io.atomic_dir(out, overwrite=True) as tmp:
        for stem, fig in figures.items():
            plots.save_figure(fig, tmp / f"{stem}.{args.format}")
    for stem in figures:
        print(out / f"{stem}.{args.format}")
    return 0
