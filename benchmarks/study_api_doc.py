"""Write docs/api.md from the docstrings of the public API.

    python benchmarks/study_api_doc.py > docs/api.md

Only what users call is listed: the package face (``fistaopt``), the solvers and their
options, studies, pruning (one layer, a model) and plots.  Rerun after changing a public docstring.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from typing import Any

SECTIONS: list[tuple[str, str, list[str]]] = [
    ("Problems", "fistaopt", ["LassoProblem", "GapInfo", "make_problem", "LayerStatsAccumulator",
                              "DataStatsAccumulator"]),
    ("Solving", "fistaopt.solvers", ["solve", "available", "get", "SolveResult", "Trace", "ConvergenceWarning"]),
    ("Solver classes and their options", "fistaopt.solvers", []),
    ("Studies (`fistaopt.study`)", "fistaopt.study", ["problem_set", "load_problem_dir", "NamedProblem", "compare",
                                                     "StudyResult", "Spec", "solver_spec", "split_specs",
                                                     "lambda_path", "LambdaPath",
                                                     "sparsity"]),
    ("Pruning one layer (`fistaopt.layer`)", "fistaopt.layer", ["prune_layer", "LayerOptions", "LayerResult",
                                                               "refit", "Refit", "masked_refit"]),
    ("Pruning a model (`fistaopt.llm`)", "fistaopt.llm", ["prune", "PruneConfig", "PruneReport", "OperatorRecord"]),
    ("Plots (`fistaopt.plots`)", "fistaopt.plots", ["plot_gap", "plot_suboptimality", "plot_convergence",
                                                   "plot_sparsity_path", "plot_prune_report", "operator_records",
                                                   "load_report", "save_figure"]),
]
SOLVER_CLASSES = ["fistaopt.solvers.base:Solver", "fistaopt.solvers.fista:FISTA", "fistaopt.solvers.ista:ISTA",
                  "fistaopt.solvers.admm:ADMM", "fistaopt.solvers.cvxpy:CVXPY"]


def _sig(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__ or "(no docstring)")


def _block(text: str) -> str:
    return "```text\n" + text + "\n```"


def _member(qual: str, obj: Any, level: int = 3) -> list[str]:
    out = [f"{'#' * level} `{qual}{_sig(obj) if callable(obj) and not inspect.isclass(obj) else ''}`", ""]
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj) and "Solver" not in [b.__name__ for b in obj.__mro__[1:]] \
                and obj.__name__ != "Solver":
            out += [f"`{obj.__name__}{_sig(obj)}`", ""]
        out += [_block(_doc(obj)), ""]
        for name, m in inspect.getmembers(obj):
            if name.startswith("_") or name not in obj.__dict__:
                continue
            attr = obj.__dict__[name]
            if isinstance(attr, property):
                out += [f"- property `{name}`" + (f": {_doc(attr).splitlines()[0]}" if attr.__doc__ else "")]
            elif inspect.isfunction(m) or inspect.ismethod(m):
                out += [f"- `{name}{_sig(m)}`", ""]
                if m.__doc__:
                    out += [_indent(_block(_doc(m))), ""]
        out.append("")
    else:
        out += [_block(_doc(obj)), ""]
    return out


def _indent(text: str) -> str:
    return "\n".join("  " + ln if ln else ln for ln in text.splitlines())


def main() -> None:
    lines = ["# API reference", "",
             "Generated from the docstrings by `python benchmarks/study_api_doc.py > docs/api.md`; "
             "see [math.md](math.md) for the notation.", ""]
    for title, module_name, names in SECTIONS:
        module = importlib.import_module(module_name)
        lines += [f"## {title}", ""]
        if title.startswith("Solver classes"):
            for spec in SOLVER_CLASSES:
                mod, cls = spec.split(":")
                c = getattr(importlib.import_module(mod), cls)
                opts = [f"`{f.name}={f.default!r}`" for f in dataclasses.fields(c)
                        if f.default is not dataclasses.MISSING]
                lines += [f"### `{cls}`" + (f" (registry name `{c.name}`)" if c.name != "base" else ""), "",
                          _block(_doc(c)), "", "Options and defaults: " + ", ".join(opts), ""]
            continue
        for name in names:
            lines += _member(f"{module_name}.{name}", getattr(module, name))
    sys.stdout.write("\n".join(lines).rstrip() + "\n")


if __name__ == "__main__":
    main()
