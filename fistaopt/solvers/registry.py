"""The solver registry: one name per solver file."""

from __future__ import annotations

import difflib
from typing import Any

from fistaopt.solvers.base import Solver

_REGISTRY: dict[str, str] = {
    "admm": "fistaopt.solvers.admm:ADMM",
    "auto": "fistaopt.solvers.auto:Auto",
    "cd": "fistaopt.solvers.cd:CD",
    "cvxpy": "fistaopt.solvers.cvxpy:CVXPY",
    "fista": "fistaopt.solvers.fista:FISTA",
    "ista": "fistaopt.solvers.ista:ISTA",
}


def available() -> list[str]:
    """Names of the registered solvers, sorted."""
    return sorted(_REGISTRY)


def solver_class(name: str) -> type[Solver]:
    if not isinstance(name, str) or name not in _REGISTRY:
        hint = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown solver {name!r}{extra}; available solvers: {', '.join(available())}")
    module, cls = _REGISTRY[name].split(":")
    import importlib

    return getattr(importlib.import_module(module), cls)


def get(name: str, **options: Any) -> Solver:
    """A configured solver object: ``get("admm", rho=1.0).solve(problem, W0=None)``."""
    cls = solver_class(name)
    valid = cls.option_names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for solver {name!r}; valid options: {', '.join(valid)}")
    return cls(**options)
