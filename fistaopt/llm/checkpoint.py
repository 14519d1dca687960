"""Resume a prune run after any block.

A checkpoint folder holds ``block_XXXX.pt`` (the pruned state of every finished block),
``stream_XXXX.pt`` (the block-input stream entering block ``XXXX``: always a dict of
named lists of hidden states, see :meth:`fistaopt.llm.streams.PrunedStream.state`) and
``state.json``, the commit point, written last: ``next_block``, the records so far and
a fingerprint of the settings, model and calibration data.  A rerun with the same
fingerprint restores the blocks and the stream and continues; a different one is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fistaopt import _io
from fistaopt.llm.report import OperatorRecord

CHECKPOINT_VERSION = 2


def fingerprint(model: nn.Module, settings: dict[str, Any], batches: list[torch.Tensor]) -> str:
    """SHA-256 of the settings, the model class and config, and the calibration ids."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    for b in batches:
        h.update(str(tuple(b.shape)).encode())
        h.update(b.contiguous().numpy().tobytes())
    return h.hexdigest()


class Checkpoint:
    """One checkpoint folder of the run with ``fingerprint`` (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str], fingerprint: str) -> None:
        self.dir = Path(folder)
        self.fingerprint = fingerprint

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    def load(self) -> dict[str, Any] | None:
        """The committed state, None when there is none; raises for another run's checkpoint."""
        if not self.state_path.is_file():
            return None
        state = json.loads(self.state_path.read_text())
        if state.get("fingerprint") != self.fingerprint or state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"checkpoint_dir {self.dir} holds a checkpoint of a run with different settings, "
                f"model or calibration data; use another directory or delete it"
            )
        return state

    def save(self, index: int, block: nn.Module, stream: dict[str, list[torch.Tensor]] | None,
             records: list[OperatorRecord], allocation: dict[str, Any] | None = None,
             tuning: list[dict[str, Any]] | None = None) -> None:
        """Commit block ``index`` (its state, the stream entering the next block, the records, the
        blocks' tuning records and the run's non-uniform allocation, which a resumed run takes
        instead of recomputing it)."""
        nxt = index + 1
        state_dict = {k: v.detach().cpu() for k, v in block.state_dict().items()}
        _io.write_with(self.dir / f"block_{index:04d}.pt", lambda p: torch.save(state_dict, p))
        if stream is not None:
            _io.write_with(self.dir / f"stream_{nxt:04d}.pt", lambda p: torch.save(stream, p))
        state = {"version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "next_block": nxt,
                 "records": [r.__dict__ for r in records], "allocation": allocation, "tuning": tuning or []}
        _io.write_json(self.state_path, state, indent=1)
        for old in self.dir.glob("stream_*.pt"):
            if old.name != f"stream_{nxt:04d}.pt":
                old.unlink(missing_ok=True)

    def block_state(self, index: int) -> dict[str, torch.Tensor]:
        """The committed state dict of block ``index`` (on the CPU)."""
        return torch.load(self.dir / f"block_{index:04d}.pt", map_location="cpu", weights_only=True)

    def restore(self, blocks: nn.ModuleList | None,
                state: dict[str, Any]) -> tuple[int, dict[str, Any] | None, list[OperatorRecord]]:
        """Load the finished blocks into ``blocks`` (``None``: leave them to :meth:`block_state`):
        ``(next block, stream state or None, records)``."""
        nxt = int(state["next_block"])
        for j in range(nxt if blocks is not None else 0):
            blocks[j].load_state_dict(self.block_state(j))
        path = self.dir / f"stream_{nxt:04d}.pt"
        stream = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
        return nxt, stream, [OperatorRecord.from_dict(r) for r in state["records"]]
