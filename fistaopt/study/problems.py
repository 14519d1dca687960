"""Problem sets of a solver study: synthetic problems and saved layer problems, named."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from fistaopt.problems.lasso import LassoProblem
from fistaopt.problems.synthetic import PROBLEM_KINDS, make_problem


@dataclass
class NamedProblem:
    """A problem with a name (the row key of a study) and free-form metadata.

    Attributes:
        name: unique within a study, e.g. ``"llm-like-32x64-s0"`` or a file stem.
        problem: the :class:`~fistaopt.LassoProblem`.
        metadata: e.g. ``kind, d_out, d_in, seed`` or ``block, operator`` for captured layers.
    """

    name: str
    problem: LassoProblem
    metadata: dict[str, Any] = field(default_factory=dict)


def problem_set(
    kinds: Iterable[str],
    *,
    d_out: int,
    d_in: int,
    seeds: Iterable[int] = (0,),
    lam_ratio: float = 0.1,
    dtype: torch.dtype = torch.float64,
) -> list[NamedProblem]:
    """Synthetic problems, one per ``kind × seed``, named ``"<kind>-<d_out>x<d_in>-s<seed>"``.

    Args:
        kinds: names from :data:`fistaopt.problems.PROBLEM_KINDS` (``iid, correlated, llm-like``).
        d_out, d_in: weight shape ``(d_out, d_in)``; ``H`` is ``(d_in, d_in)``.
        seeds: one problem per seed.
        lam_ratio: ``λ_i = lam_ratio · λ_max,i`` (``λ_max,i = ‖G_i‖_∞``).
        dtype: dtype of the statistics (float64 for studies).

    Raises:
        ValueError: an unknown kind (the message lists the valid kinds), or bad sizes.
    """
    kinds = list(kinds)
    seeds = list(seeds)
    if not kinds:
        raise ValueError("kinds must name at least one problem kind; valid kinds: " + ", ".join(PROBLEM_KINDS))
    bad = [k for k in kinds if k not in PROBLEM_KINDS]
    if bad:
        raise ValueError(f"unknown problem kind(s) {bad}; valid kinds: {', '.join(PROBLEM_KINDS)}")
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    out = []
    for kind in kinds:
        for seed in seeds:
            prob = make_problem(kind, d_out, d_in, lam_ratio=lam_ratio, seed=int(seed), dtype=dtype)
            meta = dict(getattr(prob, "metadata", {}) or {})
            out.append(NamedProblem(f"{kind}-{d_out}x{d_in}-s{seed}", prob, meta))
    return out


def load_problem_dir(
    path: str | os.PathLike, *, pattern: str = "*.pt", lam_ratio: float | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> list[NamedProblem]:
    """Every problem saved by :meth:`LassoProblem.save` in ``path`` (sorted by file name).

    The name of each problem is its file stem; its metadata is what was saved with it
    (for captured layers e.g. ``block``, ``operator``).  Captured layer statistics carry
    ``λ = 0``; with ``lam_ratio`` such problems get ``λ_i = lam_ratio · λ_max,i`` (a
    problem saved with a non-zero λ keeps it).  ``dtype`` (float64 by default) is the
    dtype the statistics are studied in: float32 statistics certify only to ~1e-4.

    Raises:
        ValueError: ``path`` is not a directory or holds no matching file.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"problem directory {str(root)!r} does not exist or is not a directory")
    files = sorted(root.glob(pattern))
    if not files:
        raise ValueError(f"problem directory {str(root)!r} holds no {pattern} files")
    out = []
    for f in files:
        prob = LassoProblem.load(f)
        meta = dict(getattr(prob, "metadata", {}) or {})
        if dtype is not None:
            prob = prob.to(dtype=dtype)
        if lam_ratio is not None and not bool((prob.lam != 0).any()):
            prob = prob.with_lam(lam_ratio * prob.lam_max())
            meta["lam_ratio"] = lam_ratio
        prob.metadata = meta
        out.append(NamedProblem(f.stem, prob, meta))
    return out
