"""The block loop: prune every linear operator of every decoder block, in forward order.

Each decoder block in turn runs on the execution device (the rest of the model stays on
the CPU): the calibration inputs entering it come from the block-input stream
(:mod:`fistaopt.llm.streams`), its operators are pruned group by group
(:mod:`fistaopt.llm.block`, methods in :mod:`fistaopt.llm.methods`), and the stream
advances to the next block.  With a checkpoint folder the run commits after every block
and resumes there (:mod:`fistaopt.llm.checkpoint`).  Settings: :mod:`fistaopt.llm.config`.
With a distributed communicator every rank runs this loop on its share of the
calibration batches (:mod:`fistaopt.llm.distributed`); rank 0 alone writes checkpoints.
The same loop serves the low-memory mode (:mod:`fistaopt.llm.low_memory`): a
:class:`BlockResidency` loads each block before its turn and writes it out after.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from fistaopt.llm.allocation import Allocation, plan_allocation
from fistaopt.llm.block import AccumulatorFactory, prune_block
from fistaopt.llm.capture import calibration_batches, capture_block_inputs
from fistaopt.llm.checkpoint import Checkpoint, fingerprint
from fistaopt.llm.config import PruneConfig
from fistaopt.llm.distributed import SINGLE, Communicator, peak_host_bytes
from fistaopt.llm.model import find_blocks, linear_modules, operator_widths
from fistaopt.llm.parallel_blocks import check_parallel_blocks, prune_owned_blocks
from fistaopt.llm.report import PruneReport
from fistaopt.llm.streams import make_stream
from fistaopt.problems import LayerStatsAccumulator

logger = logging.getLogger(__name__)


def prune(
    model: nn.Module,
    calibration: torch.Tensor | Sequence[torch.Tensor],
    config: PruneConfig | None = None,
    *,
    device: torch.device | str | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    callback: Callable[[int, PruneReport], None] | None = None,
    accumulator: AccumulatorFactory = LayerStatsAccumulator,
    comm: Communicator = SINGLE,
    parallel: str = "rows",
    **overrides: Any,
) -> PruneReport:
    """Prune every linear operator in the decoder blocks of ``model`` in place.

    Args:
        model: a Hugging Face causal LM (on the CPU; only the current block is moved).
        calibration: LongTensor ``(nsamples, seqlen)`` of token ids, or a list of them.
        config: a :class:`PruneConfig`; ``overrides`` (its fields, ``LayerOptions`` fields
            or solver options, routed by :meth:`PruneConfig.build`) apply over it, e.g.
            ``prune(model, ids, sparsity=0.5, method="sparsegpt")``.
        device: where the current block runs (default: the model's device).
        checkpoint_dir: commit after every block here, and resume from it.
        progress: a tqdm bar over operators.
        callback: ``callback(block_index, report)`` after each block (and its checkpoint).
        accumulator: the statistics accumulator class (instrumentation, tests).
        comm: the ranks of a distributed run (every rank calls ``prune`` with the same
            arguments; :mod:`fistaopt.llm.distributed`); default: this process alone.
        parallel: how a distributed run splits the work: ``"rows"`` (every block on every
            rank, calibration batches and rows in shares) or ``"blocks"`` (whole blocks per
            rank, :mod:`fistaopt.llm.parallel_blocks`; ``block_inputs="dense"`` only, no
            checkpoints, no ``callback``).

    Returns a :class:`PruneReport` whose settings are the (model-resolved) config; its
    totals hold ``peak_host_bytes`` (this process), and a distributed run adds
    ``totals["distributed"]`` (world size, per-rank seconds and peak host memory, bytes sent).
    A model larger than memory: :func:`fistaopt.llm.prune_from_pretrained`.
    """
    return run_block_loop(model, calibration, PruneConfig.build(config, **overrides), IN_MEMORY, device=device,
                          checkpoint_dir=checkpoint_dir, progress=progress, callback=callback,
                          accumulator=accumulator, comm=comm, parallel=parallel)


class BlockResidency:
    """Where the blocks live between their turns; this base class: in the model, all along (:func:`prune`).

    :func:`run_block_loop` calls ``load(i)`` before block ``i`` runs, ``finished(i)`` once
    it is final (pruned or passed through, and committed) and ``restored(i, ckpt)`` for
    each block a checkpoint already holds.  A non-uniform allocation's dense pre-pass
    (:func:`fistaopt.llm.allocation.dense_pass`) reads each block first: ``load(i)``,
    then ``unload(i)`` with the block unchanged.  The low-memory mode
    (:class:`fistaopt.llm.low_memory.ShardedBlocks`) reads blocks from safetensors shards
    and writes them out instead; here every block is already in place.
    """

    holds_blocks: bool = True  # a checkpoint restores its finished blocks into the model

    def load(self, index: int) -> None:
        """Block ``index`` is about to run."""

    def unload(self, index: int) -> None:
        """Block ``index`` was only read (unchanged); it is not needed until its next ``load``."""

    def finished(self, index: int) -> None:
        """Block ``index`` is final."""

    def restored(self, index: int, ckpt: Checkpoint) -> None:
        """Block ``index`` was finished by an earlier run (``ckpt`` holds it)."""


IN_MEMORY = BlockResidency()


def run_block_loop(
    model: nn.Module, calibration: torch.Tensor | Sequence[torch.Tensor], config: PruneConfig, residency: BlockResidency, *,
    device: torch.device | str | None, checkpoint_dir: str | os.PathLike[str] | None, progress: bool,
    callback: Callable[[int, PruneReport], None] | None, accumulator: AccumulatorFactory, comm: Communicator,
    parallel: str,
) -> PruneReport:
    """The block loop of :func:`prune` (arguments as there), with ``residency`` saying where blocks live."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = config.for_model(getattr(getattr(model, "config", None), "model_type", ""))
    batches = calibration_batches(calibration, config.batch_size, model)
    config.check_seqlen(min(int(b.shape[1]) for b in batches))
    _, blocks = find_blocks(model)
    selected = config.check_blocks(len(blocks))
    config.check_widths({f"block {i} {name}": d for i in selected for name, d in operator_widths(blocks[i]).items()})
    exec_device = torch.device(device) if device is not None else next(model.parameters()).device
    config = config.for_device(exec_device, distributed=comm.distributed)
    if config.tune_epochs and comm.distributed:
        raise ValueError("tune_epochs needs a single process (the tuning steps are not shared between ranks)")
    by_blocks = _parallel_blocks(parallel, config, checkpoint_dir) and comm.distributed
    if by_blocks and not residency.holds_blocks:
        raise ValueError("parallel='blocks' needs the whole model in memory; use parallel='rows' in low-memory mode")

    report = _new_report(config, batches, len(blocks), exec_device)
    ckpt = Checkpoint(checkpoint_dir, fingerprint(model, report.settings, batches)) if checkpoint_dir else None
    t_start, was_training = time.perf_counter(), model.training
    model.eval()
    inputs = capture_block_inputs(model, batches if by_blocks else comm.local_batches(batches))
    saved = ckpt.load() if ckpt is not None else None
    if saved is not None and saved.get("allocation") is not None:  # resumed: the allocation its blocks had
        allocation: Allocation | None = Allocation.from_dict(saved["allocation"])
    else:
        allocation = plan_allocation(blocks, inputs, selected, config, exec_device, residency=residency,
                                     comm=SINGLE if by_blocks else comm)  # by blocks: every rank has all batches
    report.allocation = None if allocation is None else allocation.to_dict()
    if report.allocation is not None and comm.is_main:
        logger.info("allocation %s: block sparsities %s", config.allocation_rule,
                    [round(b["target"], 4) for b in report.allocation["blocks"]])
    stream = make_stream(config.block_inputs, inputs.hidden)
    start = 0
    if ckpt is not None and saved is not None:
        start = _resume(ckpt, saved, blocks, stream, report, comm, residency)
    bar, on_operator = _progress(report, sum(len(linear_modules(blocks[i])) for i in selected if i >= start),
                                 config.method, progress and comm.is_main)

    def sparsities(i: int) -> dict[str, float] | None:
        return None if allocation is None else allocation.for_block(i)

    def run_dense(i: int, s: Any) -> None:  # a block that stays dense: pass the calibration inputs through
        _run_dense(blocks[i], lambda: s.pass_through(blocks[i], [c[i] for c in inputs.calls], exec_device), exec_device)

    def prune_one(i: int) -> None:
        calls, last = [c[i] for c in inputs.calls], i == selected[-1]
        residency.load(i)
        with _peak_memory(exec_device, report, i):
            if i in selected:
                tuned = prune_block(blocks[i], i, calls, stream, config, device=exec_device, last=last,
                                    on_operator=on_operator, accumulator=accumulator, comm=comm,
                                    sparsities=sparsities(i))
                if tuned is not None:
                    report.tuning.append(tuned.to_dict())
            else:
                run_dense(i, stream)
        if ckpt is not None:
            _commit(ckpt, comm, i, blocks[i], None if last else stream.state(), len(batches), report)
        residency.finished(i)
        if callback is not None:
            callback(i, report)

    try:
        if by_blocks:
            report.records = prune_owned_blocks(blocks, inputs, selected, config, comm, device=exec_device,
                                                on_operator=on_operator, run_dense=run_dense, accumulator=accumulator,
                                                sparsities=sparsities)
        else:
            for i in range(start, selected[-1] + 1):
                prune_one(i)
    finally:
        bar.close()
        model.train(was_training)
    return _finish(report, comm, t_start)


def _finish(report: PruneReport, comm: Communicator, t_start: float) -> PruneReport:
    """The totals: summary of the records, wall seconds, peak host memory, and the ranks' figures."""
    report.summarize()
    report.totals["wall_seconds"] = time.perf_counter() - t_start
    report.totals["peak_host_bytes"] = peak_host_bytes()
    if comm.distributed:
        report.totals["distributed"] = comm.summary(report.totals["wall_seconds"])
    return report


def _progress(report: PruneReport, total: int, method: str, enabled: bool) -> tuple[Any, Callable[[Any], None]]:
    """A tqdm bar over ``total`` operators and the callback that records an operator and advances it."""
    bar = tqdm(total=total, desc=f"prune {method}", unit="op", disable=not enabled)

    def on_operator(record: Any) -> None:
        report.records.append(record)
        bar.set_postfix_str(f"block {record.block} {record.name}")
        bar.update(1)

    return bar, on_operator


def _parallel_blocks(parallel: str, config: PruneConfig, checkpoint_dir: Any) -> bool:
    """Whether ``parallel`` asks for whole blocks per rank (checked against the settings)."""
    if parallel not in ("rows", "blocks"):
        raise ValueError(f"parallel must be 'rows' or 'blocks', got {parallel!r}")
    if parallel == "blocks":
        check_parallel_blocks(config, checkpoint_dir)
    return parallel == "blocks"


def _new_report(config: PruneConfig, batches: list[torch.Tensor], n_blocks: int, device: torch.device) -> PruneReport:
    """An empty report: the config's settings (with the precision the ℓ1 solver's products run in
    on ``device``) plus the calibration's shape and the model's block count."""
    settings = config.settings()
    if not config.is_baseline:
        settings["layer"]["precision_used"] = config.search_precision(device)
    return PruneReport(settings={**settings, "nsamples": sum(int(b.shape[0]) for b in batches),
                                 "seqlen": sorted({int(b.shape[1]) for b in batches}), "n_blocks": n_blocks})


def _resume(ckpt: Checkpoint, state: dict[str, Any], blocks: nn.ModuleList, stream: Any, report: PruneReport,
            comm: Communicator, residency: BlockResidency) -> int:
    """Restore the committed ``state`` of ``ckpt`` (blocks, this rank's stream, records); the block to continue with.

    The stream is saved for all batches, so a run resumes with any number of ranks.  The
    finished blocks are loaded into ``blocks`` when the residency holds them there, else
    handed to it one at a time.
    """
    start, saved, report.records = ckpt.restore(blocks if residency.holds_blocks else None, state)
    report.tuning = list(state.get("tuning") or [])
    for j in range(start):
        residency.restored(j, ckpt)
    if saved is not None:
        stream.restore(comm.local_stream(saved))
    return start


def _commit(ckpt: Checkpoint, comm: Communicator, index: int, block: nn.Module, stream: Any, n_batches: int,
            report: PruneReport) -> None:
    """Rank 0 commits block ``index`` with the stream of every rank's batches (gathered)."""
    full = None if stream is None else comm.gather_stream(stream, n_batches)
    if comm.is_main:
        ckpt.save(index, block, full, report.records, report.allocation, report.tuning)


@contextmanager
def _peak_memory(device: torch.device, report: PruneReport, index: int) -> Iterator[None]:
    """Record in the report what block ``index`` needed on an accelerator (weights, copies, statistics)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.reset_peak_memory_stats(device)
    yield
    peak = report.totals.setdefault("peak_device_bytes_per_block", {})
    peak[str(index)] = int(torch.cuda.max_memory_allocated(device))


@torch.no_grad()
def _run_dense(block: nn.Module, step: Callable[[], None], device: torch.device) -> None:
    home = next(block.parameters()).device
    block.to(device)
    try:
        step()
    finally:
        block.to(home)
