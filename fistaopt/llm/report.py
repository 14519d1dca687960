"""What a prune run reports: one record per operator, the settings and the totals."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from fistaopt import _io


@dataclass
class OperatorRecord:
    """What happened to one operator."""

    block: int
    name: str
    shape: tuple[int, int]  # (d_out, d_in)
    method: str
    sparsity: float  # fraction of zeros in the pruned weight
    rel_error: float | None  # ‖X*Wᵀ − XW₀ᵀ‖² / ‖XW₀ᵀ‖² on the calibration statistics
    rel_error_before_rounding: float | None = None
    lam: dict[str, float] | None = None  # min / mean / max of the (per-row) λ
    n_iter: int | None = None
    seconds: float = 0.0
    group: int = 0  # index of the operator's input group inside the block

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OperatorRecord":
        return cls(**{**data, "shape": tuple(data["shape"])})


@dataclass
class PruneReport:
    """Settings, per-operator records and totals of one :func:`fistaopt.llm.prune` run.

    ``settings`` is ``asdict`` of the run's :class:`~fistaopt.llm.config.PruneConfig`
    plus what the calibration data were (``nsamples``, ``seqlen``) and the model's
    ``n_blocks``; ``extra`` is free for callers (the CLI adds perplexities, versions),
    written at the top level of :meth:`to_dict`.  ``allocation`` is a non-uniform
    allocation's targets (:meth:`fistaopt.llm.allocation.Allocation.to_dict`), written with
    each operator's and block's realised sparsity from the records (None: uniform).
    ``tuning`` holds one entry per block whose kept weights were tuned
    (:class:`fistaopt.llm.block_tune.TuneRecord` as a dict; empty without ``tune_epochs``).
    """

    settings: dict[str, Any]
    records: list[OperatorRecord] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    allocation: dict[str, Any] | None = None
    tuning: list[dict[str, Any]] = field(default_factory=list)

    def summarize(self) -> dict[str, Any]:
        """Recompute ``totals`` from the records and return them."""
        n_params = sum(r.shape[0] * r.shape[1] for r in self.records)
        n_zero = sum(r.sparsity * r.shape[0] * r.shape[1] for r in self.records)
        errs = [r.rel_error for r in self.records if r.rel_error is not None]
        self.totals.update(
            n_operators=len(self.records),
            n_blocks=len({r.block for r in self.records}),
            n_params=n_params,
            sparsity=(n_zero / n_params) if n_params else 0.0,
            mean_rel_error=(sum(errs) / len(errs)) if errs else None,
            solve_seconds=sum(r.seconds for r in self.records),
        )
        return self.totals

    def to_dict(self) -> dict[str, Any]:
        """``settings``, ``totals``, the ``extra`` entries (at the top level) and ``records``."""
        clash = sorted(set(self.extra) & {"settings", "totals", "records", "allocation", "tuning"})
        if clash:
            raise ValueError(f"report extra entries may not be named {clash}")
        alloc = {} if self.allocation is None else {"allocation": self.realised_allocation()}
        tuning = {"tuning": self.tuning} if self.tuning else {}
        return {"settings": self.settings, "totals": self.totals, **self.extra, **alloc, **tuning,
                "records": [asdict(r) for r in self.records]}

    def realised_allocation(self) -> dict[str, Any]:
        """``allocation`` with ``realised`` (the pruned weight's sparsity) per operator and per block."""
        from fistaopt.llm.allocation import block_view

        done = {(r.block, r.name): r.sparsity for r in self.records}
        ops = [{**op, "realised": done.get((op["block"], op["name"]))} for op in self.allocation["operators"]]
        finished = [op for op in ops if op["realised"] is not None]
        realised = {b["block"]: b["realised"] for b in block_view(finished, "realised")}
        blocks = [{**b, "realised": realised.get(b["block"])} for b in self.allocation["blocks"]]
        return {**self.allocation, "operators": ops, "blocks": blocks}

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        _io.write_json(path, self.to_dict())
