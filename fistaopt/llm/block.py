"""Prune one decoder block: its operator groups in forward order, each from streamed statistics.

The block runs on the execution device.  Its linear operators are discovered by one
forward and grouped by shared input (:func:`fistaopt.llm.model.block_operators`).  With
error correction, each group's statistics are streamed after the groups before it are
pruned (``X*`` from the partly pruned block, whose forward per batch pauses before each
group, :mod:`fistaopt.llm.stepped_forward`; ``X`` from a dense copy); without, one
dense forward per batch serves every group (``X* = X``).  Each operator is then pruned
by :func:`fistaopt.llm.methods.prune_weight` and its weight overwritten.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from fistaopt.layer.l0_admm import shared_eigh
from fistaopt.llm.block_tune import HeldInputs, TuneRecord, enclosing_module, tune_block
from fistaopt.llm.capture import BlockCall, to_device
from fistaopt.llm.config import PruneConfig
from fistaopt.llm.distributed import SINGLE, Communicator, prune_weight_sharded
from fistaopt.llm.model import OperatorGroup, block_operators
from fistaopt.llm.report import OperatorRecord
from fistaopt.llm.residual import last_operator
from fistaopt.llm.streams import BlockWork, PrunedStream
from fistaopt.problems import LayerStatsAccumulator
from fistaopt.problems.accumulate import targets_pay

logger = logging.getLogger(__name__)

#: Makes the statistics accumulator of one group: ``(d_in, dtype=, device=, targets=, output_rows=) -> accumulator``.
AccumulatorFactory = Callable[..., LayerStatsAccumulator]


def _groups(block: nn.Module, call: BlockCall, hidden: torch.Tensor, device: torch.device) -> list[OperatorGroup]:
    args = (hidden.to(device), *to_device(call.args, device))
    return block_operators(block, args, to_device(call.kwargs, device))


def prune_block(
    block: nn.Module, index: int, calls: list[BlockCall], stream: PrunedStream, config: PruneConfig, *,
    device: torch.device, last: bool, on_operator: Callable[[OperatorRecord], None],
    accumulator: AccumulatorFactory = LayerStatsAccumulator, comm: Communicator = SINGLE,
    sparsities: Mapping[str, float] | None = None,
) -> TuneRecord | None:
    """Prune ``block`` (decoder block ``index``) in place and advance ``stream`` past it.

    ``on_operator`` receives each operator's record as soon as it is pruned;
    ``accumulator`` makes the statistics accumulators (tests inject a recording one).
    With a distributed ``comm`` the stream holds this rank's batches: each group's
    statistics are summed over the ranks and its rows solved in shares
    (:mod:`fistaopt.llm.distributed`).  ``sparsities`` maps operator names to their own
    sparsity (a non-uniform allocation, :mod:`fistaopt.llm.allocation`); None: ``config.sparsity``.
    With ``config.residual_correction`` the block's last operator also absorbs the residual
    error of the groups before it, where its output adds to the block's (:mod:`fistaopt.llm.residual`).
    Where ``config.tunes(index)`` the block's kept weights are then tuned toward the dense
    block's outputs (:mod:`fistaopt.llm.block_tune`); returns that tuning's record (else None).
    A block left untuned (``tune_blocks``) still advances the dense model's hidden states that
    ``tune_target="model"`` carries from the first pruned block on.
    """
    config = config.for_device(device, distributed=comm.distributed)  # tune_epochs="auto", where prune did not
    home = next(block.parameters()).device
    block.to(device)
    work: BlockWork | None = None
    record: TuneRecord | None = None
    try:
        groups = _groups(block, calls[0], stream.hidden[0], device)
        tune = config.tunes(index)
        # the dense model's hidden states, for a later block's tuning: carried from the first pruned block
        carries_model = config.tune_epochs > 0 and config.tune_target == "model" and not last
        skipped = config.skipped_groups(device, len(groups))
        if tune and skipped >= len(groups):
            raise ValueError(f"tune_skip_groups={skipped} leaves nothing to tune: block {index} has "
                             f"{len(groups)} operator groups")
        work = BlockWork(block, calls, device, skip=config.skip_tokens, cache_bytes=config.cache_bytes)
        if tune or carries_model or stream.needs_dense_copy(config.error_correction, len(groups), last):
            work.dense = copy.deepcopy(block)
            work.keep_dense_outputs = tune and config.tune_target == "block"

        tuned_ops = [op.name for g in groups[skipped:] for op in g]
        held_name = None  # the tuned operators' submodule, trained alone on its kept inputs (block_tune)
        if tune and work.skip == 0:  # tuning implies error correction (PruneConfig)
            first_tuned = tuned_ops[0]
            name = enclosing_module(tuned_ops)
            if name is not None and stream.holds_tuned_input(work, name, first_tuned, comm):
                work.keep_inputs_of, held_name = first_tuned, name

        def new_acc(g: OperatorGroup, targets: bool = False, takes_c: bool = False) -> LayerStatsAccumulator:
            weights = [op.get_weight() for op in g] if targets else None
            rows = [op.d_out for op in g] if takes_c else None
            return accumulator(g.d_in, dtype=config.torch_stats_dtype, device=device, targets=weights,
                               output_rows=rows)

        residuals: dict[str, float] = {}  # each pruned operator's residual on the calibration statistics
        if config.error_correction:
            last_name = last_operator(groups)
            if (config.residual_correction and stream.corrects_residual and work.dense is not None
                    and last_name is not None and stream.adds_to_output(work, last_name, comm)):
                work.residual_of = last_name
            stream.start_pruned_forwards(work, groups)
            # the last group's X is not needed when its operator absorbs the residual error
            stream.share_dense_forward(work, groups[1:-1] if work.residual_of is not None else groups[1:])
            # the groups after the first stream G and c from their targets where that pays, else
            # C and c (from the shared forward's outputs where it computes them: no D = XᵀX)
            absorbs = [work.residual_of is not None and gi == len(groups) - 1 for gi in range(len(groups))]
            targets = [a or (gi > 0 and targets_pay(g.d_in, [op.d_out for op in g]))
                       for gi, (g, a) in enumerate(zip(groups, absorbs))]
            work.c_groups = [g for gi, g in enumerate(groups) if gi > 0 and not targets[gi]]
            work.stats_dtype = config.torch_stats_dtype
            for gi, g in enumerate(groups):
                acc = new_acc(g, targets=targets[gi], takes_c=gi > 0 and not targets[gi])
                if absorbs[gi]:
                    stream.residual_statistics(work, g, acc)
                else:
                    stream.group_statistics(work, g, gi == 0, acc)
                comm.reduce_statistics(acc)
                residuals.update(_prune_group(g, gi, acc, index, config, on_operator, comm, sparsities))
        else:
            accs = [new_acc(g) for g in groups]
            stream.dense_statistics(work, groups, accs)
            for gi, (g, acc) in enumerate(zip(groups, accs)):
                comm.reduce_statistics(acc)
                _prune_group(g, gi, acc, index, config, on_operator, comm, sparsities)
        if tune:  # the dense copy is there (made above); tuning needs it
            assert work.dense is not None
            held = None
            if held_name is not None and len(work.kept_inputs) == len(calls):
                held = HeldInputs(held_name, block.get_submodule(held_name), work.kept_inputs,
                                  stream.held_rests(work, held_name, comm))
            # the untuned outputs, unless the held module's rest is known (then recomputed if tuning is undone)
            before = stream.block_outputs(work) if held is None or held.rests is None else None
            targets: list[torch.Tensor | None]
            error_before = None
            if config.tune_target == "model":
                targets = list(stream.dense_model_outputs(work.dense, calls, device))
            else:
                targets = [work.dense_outputs.get(b) for b in range(len(calls))]
                if held is not None and held.rests is not None:
                    # rest R*: the residual operator's targets were t − R* (less its bias), so its
                    # residual is the untuned error Σ_b ‖R*_b + S(z_b) − t_b‖², with no forward
                    assert work.residual_of is not None
                    error_before = residuals[work.residual_of]
            tuned, record = tune_block(block, work.dense, calls, stream.hidden, before, device, targets,
                                       index=index, epochs=config.tune_epochs,
                                       lr=config.step_size(len(groups), skipped),
                                       micro_batch=config.tune_micro_batch, windows=config.tune_windows,
                                       operators=tuned_ops,
                                       autocast=config.tune_autocast(device, next(block.parameters()).dtype),
                                       held=held, error_before=error_before)
            stream.hidden = tuned if tuned is not None else stream.block_outputs(work)
        elif not last:
            if carries_model:  # before the stream advances: the first pruned block reads the dense input from it
                assert work.dense is not None
                stream.dense_model_outputs(work.dense, calls, device)
            stream.advance(work)
    finally:
        if work is not None:
            work.close()
        block.to(home)
    return record


def _save_problem(stats: Any, W0: torch.Tensor, index: int, name: str, shape: Any, config: PruneConfig) -> None:
    folder = Path(str(config.save_problems))
    stats.to_problem(W0, 0.0).with_damping(W0, config.damping, config.ridge).save(
        folder / f"block{index:02d}.{name}.pt", block=index, operator=name, shape=list(shape), damp=config.damping,
        ridge=config.ridge)


def _prune_group(group: OperatorGroup, group_index: int, acc: LayerStatsAccumulator, index: int, config: PruneConfig,
                 on_operator: Callable[[OperatorRecord], None], comm: Communicator,
                 sparsities: Mapping[str, float] | None = None) -> dict[str, float]:
    """Prune ``group``'s operators in place; returns each one's residual ``Σ_i ‖X* wᵢᵀ − Y_i‖²``
    by name (undamped, from the calibration statistics, summed over their tokens)."""
    residuals: dict[str, float] = {}
    with shared_eigh():  # the group's operators read one input: one eigendecomposition for the ℓ0-ADMM rounds
        for k, op in enumerate(group.operators):
            W0 = op.get_weight().to(acc.H.device)
            stats = acc.for_operator(k)
            if config.save_problems and comm.is_main:
                _save_problem(stats, W0, index, op.name, op.shape, config)
            op_config = config if sparsities is None else config.for_operator(sparsities[op.name])
            t0 = time.perf_counter()
            pruned = prune_weight_sharded(comm, W0, stats, op_config)
            seconds = time.perf_counter() - t0
            op.set_weight(pruned.W)
            n_zero = int((op.get_weight() == 0).sum())
            record = OperatorRecord(
                block=index, name=op.name, shape=op.shape, method=config.method, sparsity=n_zero / W0.numel(),
                rel_error=pruned.rel_error, rel_error_before_rounding=pruned.rel_error_before_rounding, lam=pruned.lam,
                n_iter=pruned.n_iter, seconds=seconds, group=group_index,
            )
            logger.debug("block %d %s: rel. error %.4g", index, op.name, pruned.rel_error)
            on_operator(record)
            residuals[op.name] = pruned.residual * stats.n_tokens  # the problems are per token
    return residuals
