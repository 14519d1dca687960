"""Parallel blocks: with ``block_inputs="dense"`` every block is its own problem, pruned by one rank.

Under ``block_inputs="dense"`` the inputs of block ``i`` are the *dense* model's hidden
states, which do not depend on how any block is pruned.  So the blocks are independent
(the paper's parallel mode): block ``i`` goes to rank ``owner(i)`` (round robin over the
selected blocks), which prunes it alone on all the calibration batches — the same
computation as one process, so the same result — while running the blocks it does not
own densely to carry the dense hidden states forward.  At the end every pruned block is
broadcast from its owner and the operator records are gathered, so every rank holds the
whole pruned model and the same report.

Compared with the row-sharded mode of :mod:`fistaopt.llm.distributed`: no collective per
operator, but every rank holds the hidden states of all calibration batches, and the
work is balanced only when the number of blocks is a multiple of the world size.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from fistaopt.llm.block import AccumulatorFactory, prune_block
from fistaopt.llm.capture import BlockInputs
from fistaopt.llm.config import PruneConfig
from fistaopt.llm.distributed import Communicator
from fistaopt.llm.report import OperatorRecord
from fistaopt.llm.streams import make_stream


def owner(index: int, selected: Sequence[int], world_size: int) -> int:
    """The rank that prunes block ``index`` (round robin over the ``selected`` blocks)."""
    return list(selected).index(index) % world_size


def check_parallel_blocks(config: PruneConfig, checkpoint_dir: Any) -> None:
    """Refuse the settings parallel blocks cannot honour."""
    if config.block_inputs != "dense":
        raise ValueError(f"parallel='blocks' needs block_inputs='dense' (independent blocks), got {config.block_inputs!r}")
    if checkpoint_dir is not None:
        raise ValueError("parallel='blocks' does not write checkpoints (every rank is at another block); "
                         "use parallel='rows' to checkpoint")


def prune_owned_blocks(
    blocks: nn.ModuleList, inputs: BlockInputs, selected: list[int], config: PruneConfig, comm: Communicator, *,
    device: torch.device, on_operator: Callable[[OperatorRecord], None], run_dense: Callable[[int, Any], None],
    accumulator: AccumulatorFactory, sparsities: Callable[[int], Mapping[str, float] | None],
) -> list[OperatorRecord]:
    """Prune this rank's blocks (dense inputs of all batches), then share blocks and records.

    ``run_dense(i, stream)`` carries the stream through block ``i`` unpruned;
    ``sparsities(i)`` is block ``i``'s per-operator targets (None: ``config.sparsity``).
    Returns the records of every block, in block order, on every rank.
    """
    mine = [i for i in selected if owner(i, selected, comm.world_size) == comm.rank]
    records: list[OperatorRecord] = []

    def record(r: OperatorRecord) -> None:
        records.append(r)
        on_operator(r)

    stream = make_stream("dense", inputs.hidden)
    for i in range(mine[-1] + 1 if mine else 0):
        if i in mine:
            calls = [c[i] for c in inputs.calls]
            prune_block(blocks[i], i, calls, stream, config, device=device, last=i == mine[-1], on_operator=record,
                        accumulator=accumulator, sparsities=sparsities(i))
        else:
            run_dense(i, stream)
    _share_blocks(blocks, selected, comm)
    everyone = comm.gather_objects(records)
    return sorted((r for part in everyone for r in part), key=lambda r: r.block)


def _share_blocks(blocks: nn.ModuleList, selected: list[int], comm: Communicator) -> None:
    """Every selected block's weights from its owner to every rank (in place)."""
    for i in selected:
        src = owner(i, selected, comm.world_size)
        for t in blocks[i].state_dict().values():
            buf = t.detach().to(comm.device)
            comm.traffic.add("broadcast", buf.numel() * buf.element_size() if comm.rank == src else 0, 0.0)
            dist.broadcast(buf, src=src)
            if comm.rank != src:
                t.copy_(buf.to(t.device))
