"""Low-memory pruning: a model larger than host memory, one decoder block resident at a time.

:func:`prune_from_pretrained` opens the model as a :class:`~fistaopt.llm.shards.ShardedModel`
(skeleton on ``meta``, non-block weights on the CPU) and runs the block loop of
:func:`fistaopt.llm.prune` — the same loop, streams and checkpoints — with a
:class:`ShardedBlocks` residency: block ``i`` is read from the input shards when its
turn comes, pruned (or passed through), written to the output folder as its own
safetensors shard and put back on ``meta``.  Blocks after the last selected one are
copied shard to shard.  What is resident at once:

    one block's weights (+ its dense copy under error correction)
    + the non-block weights (embeddings, final norm, lm_head)
    + the calibration hidden states, (nsamples, seqlen, hidden) per stream
    + one operator group's statistics (Gram matrices, d_in x d_in).

The output folder (written through :mod:`fistaopt._io`: atomic, with a manifest, never
deleting files it did not write) is a Hugging Face folder: ``config.json``,
``generation_config.json``, the tokenizer files when the source has a tokenizer,
``model.safetensors.index.json`` with one shard for the non-block weights (tied weights
stored once) and one per decoder block, and ``report.json``.  The weights are written in the
source checkpoint's floating dtype by default (pruning computes in ``dtype``, float32 by
default): ``save_dtype`` chooses another.

Several ranks (``comm``, :mod:`fistaopt.llm.distributed`): every rank opens the same
input shards and reads each block when its turn comes; the loop captures on each rank's
share of the calibration batches and shards the solves, as in memory.  Rank 0 alone
creates the output folder and writes it (and the checkpoints); the run ends with a
barrier after rank 0's commit (:class:`~fistaopt.llm.distributed.MainWrites`), so no
rank returns before the folder is published, and a failure of rank 0 while writing
makes the other ranks raise.
"""

from __future__ import annotations

import copy
import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from fistaopt import _io
from fistaopt.llm.checkpoint import Checkpoint
from fistaopt.llm.config import PruneConfig
from fistaopt.llm.distributed import SINGLE, Communicator, MainWrites
from fistaopt.llm.loading import cast_for_saving, dtype_name, resolve_save_dtype
from fistaopt.llm.prune import BlockResidency, run_block_loop
from fistaopt.llm.report import PruneReport
from fistaopt.llm.shards import INDEX_FILE, ShardedModel, safetensors_folder, stored_dtype
from fistaopt.problems import LayerStatsAccumulator

logger = logging.getLogger(__name__)


class ShardWriter:
    """The weights of an output folder: shard 0 for the non-block tensors, shard ``i + 1`` for block ``i``.

    Floating tensors are written in ``dtype``; ``rounded_to_zero`` counts the non-zero
    values that the cast made zero (:func:`~fistaopt.llm.loading.cast_for_saving`).
    """

    def __init__(self, folder: str | os.PathLike[str], n_blocks: int, dtype: torch.dtype = torch.float32) -> None:
        self.folder = Path(folder)
        self.n_files = n_blocks + 1
        self.dtype = dtype
        self.weight_map: dict[str, str] = {}
        self.total_size = 0
        self.rounded_to_zero = 0

    def file_name(self, part: int) -> str:
        return f"model-{part + 1:05d}-of-{self.n_files:05d}.safetensors"

    def write(self, part: int, tensors: dict[str, torch.Tensor]) -> None:
        """Write ``tensors`` (qualified names) as shard ``part``."""
        from safetensors.torch import save_file

        name = self.file_name(part)
        data = {}
        for key, t in tensors.items():
            cast, n_rounded = cast_for_saving(t.detach().to("cpu"), self.dtype, key)
            data[key] = cast.contiguous()
            self.rounded_to_zero += n_rounded
        save_file(data, str(self.folder / name), metadata={"format": "pt"})
        self.weight_map.update({k: name for k in data})
        self.total_size += sum(t.numel() * t.element_size() for t in data.values())

    def finish(self) -> None:
        """Write the index json (every shard must have been written)."""
        written = set(self.weight_map.values())
        missing = [self.file_name(k) for k in range(self.n_files) if self.file_name(k) not in written]
        if missing:
            raise RuntimeError(f"output shards never written: {missing}")
        _io.write_json(self.folder / INDEX_FILE, {"metadata": {"total_size": self.total_size},
                                                 "weight_map": dict(sorted(self.weight_map.items()))})


class ShardedBlocks(BlockResidency):
    """Blocks read from ``sharded``'s shards when their turn comes and written by ``writer`` when final.

    ``writer=None`` (the ranks other than 0): blocks are read and released, never written.
    """

    holds_blocks = False

    def __init__(self, sharded: ShardedModel, writer: ShardWriter | None) -> None:
        self.sharded = sharded
        self.writer = writer

    def load(self, index: int) -> None:
        self.sharded.load(index)

    def unload(self, index: int) -> None:
        self.sharded.release(index)  # only read (an allocation's dense pre-pass): nothing to write

    def finished(self, index: int) -> None:
        if self.writer is not None:
            self._write(index, self.sharded.blocks[index].state_dict())
        self.sharded.release(index)

    def restored(self, index: int, ckpt: Checkpoint) -> None:
        if self.writer is not None:
            self._write(index, ckpt.block_state(index))

    def copy_dense(self, index: int) -> None:
        """A block the loop never reaches (after the last selected one): shard to shard."""
        if self.writer is not None:
            self._write(index, self.sharded.read_block(index))

    def _write(self, index: int, state: dict[str, torch.Tensor]) -> None:
        prefix = self.sharded.block_prefix(index)
        self.writer.write(index + 1, {prefix + k: t for k, t in state.items()})


def prune_into(
    sharded: ShardedModel, calibration: torch.Tensor | Sequence[torch.Tensor], folder: str | os.PathLike[str] | None,
    config: PruneConfig | None = None, *, tokenizer: Any = None, device: torch.device | str | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None, progress: bool = True,
    callback: Callable[[int, PruneReport], None] | None = None, comm: Communicator = SINGLE,
    save_dtype: str | torch.dtype = "source", **overrides: Any,
) -> PruneReport:
    """Prune ``sharded`` block by block into the (new, private) folder ``folder``: weights, config, tokenizer.

    The building block of :func:`prune_from_pretrained` for callers that write more files
    into the same output folder (the CLI: report, figure, model card).  Every rank of
    ``comm`` calls it with the same arguments; rank 0 writes into ``folder``, the others
    write nothing (their ``folder`` is ignored and may be ``None``); it returns on every
    rank once rank 0 has written its files, and raises on every rank when that failed.

    The weights are written in ``save_dtype``: ``"source"`` (the floating dtype the input
    shards store, :func:`~fistaopt.llm.shards.stored_dtype`), ``"float32"``, ``"bfloat16"``
    or ``"float16"`` (or that torch dtype); ``config.json`` says the same.  A pruned weight
    keeps every zero in any dtype.  ``totals["sparsity"]`` is that of the masks the method
    chose (computed in ``sharded.dtype``); a kept weight too small for the save dtype is
    written as zero, is *not* added to it and is counted in
    ``totals["written_rounded_to_zero"]`` (rank 0).  The totals add ``save_dtype``,
    ``low_memory`` and ``peak_resident_block_params``, the most block parameters
    materialised at once on any rank (per rank: ``totals["distributed"]["rank_peak_resident_block_params"]``).
    """
    config = PruneConfig.build(config, **overrides)
    dtype = resolve_save_dtype(save_dtype, lambda: stored_dtype(sharded.folder))
    if comm.is_main and folder is None:
        raise ValueError("prune_into: rank 0 needs the output folder")
    n_blocks = len(sharded.blocks)
    writer = ShardWriter(folder, n_blocks, dtype) if comm.is_main else None
    residency = ShardedBlocks(sharded, writer)
    with MainWrites(comm) as writes:
        report = run_block_loop(sharded.model, calibration, config, residency, device=device,
                                checkpoint_dir=checkpoint_dir, progress=progress, callback=callback,
                                accumulator=LayerStatsAccumulator, comm=comm, parallel="rows")
        peaks = comm.gather_objects(sharded.peak_resident_block_params)
        writes.begin()
        report.totals.update(peak_resident_block_params=max(peaks), low_memory=True, save_dtype=dtype_name(dtype))
        if comm.distributed:
            report.totals["distributed"]["rank_peak_resident_block_params"] = peaks
        if writer is not None:
            for i in range(config.check_blocks(n_blocks)[-1] + 1, n_blocks):  # blocks the loop never reached
                residency.copy_dense(i)
            writer.write(0, sharded.non_block_state())
            writer.finish()
            _write_config(sharded, Path(folder), dtype)
            if tokenizer is not None:
                tokenizer.save_pretrained(folder)
            report.totals["written_rounded_to_zero"] = writer.rounded_to_zero
    return report


def _write_config(sharded: ShardedModel, folder: Path, dtype: torch.dtype) -> None:
    """``config.json`` (saying ``dtype``, the dtype the weights are written in) and the generation config."""
    config = copy.deepcopy(sharded.model.config)
    config.dtype = dtype
    config.save_pretrained(folder)
    if sharded.model.can_generate() and sharded.model.generation_config is not None:
        sharded.model.generation_config.save_pretrained(folder)


def prune_from_pretrained(
    model: str | os.PathLike[str] | None, calibration: torch.Tensor | Sequence[torch.Tensor],
    out_dir: str | os.PathLike[str], config: PruneConfig | None = None, *, device: torch.device | str | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None, progress: bool = True, overwrite: bool = False,
    dtype: torch.dtype = torch.float32, save_dtype: str | torch.dtype = "source", comm: Communicator = SINGLE,
    callback: Callable[[int, PruneReport], None] | None = None, **overrides: Any,
) -> PruneReport:
    """Prune a model that need not fit in memory, from its safetensors folder to ``out_dir``.

    Args:
        model: a Hugging Face folder with safetensors weights, a hub id in the local cache,
            a GGUF file (its cached safetensors conversion is used) or ``None`` (the default GGUF).
        calibration: LongTensor ``(nsamples, seqlen)`` of token ids, or a list of them.
        out_dir: the output folder, loadable with ``AutoModelForCausalLM.from_pretrained``;
            written atomically by rank 0; a non-empty folder fistaopt did not write needs ``overwrite``.
        config, overrides, device, checkpoint_dir, progress, callback: as :func:`fistaopt.llm.prune`
            (a killed run resumes from ``checkpoint_dir`` without redoing its blocks, with
            any number of ranks).
        dtype: the dtype the blocks are read and pruned in.
        save_dtype: the dtype the weights are written in (default: the source's); see :func:`prune_into`.
        comm: the ranks (:mod:`fistaopt.llm.distributed`; every rank calls this with the same
            arguments); default: this process alone.

    The weights equal those of ``prune(load_model(model), calibration, ...)`` (cast to
    ``save_dtype``); only one decoder block is in memory at a time, on every rank.  Returns
    the :class:`PruneReport` (also saved as ``report.json``) on every rank, once rank 0 has
    published the folder.
    """
    if comm.is_main:
        _io.check_output_dir(out_dir, overwrite=overwrite)  # before the model is read
    folder = safetensors_folder(model)
    sharded = ShardedModel(folder, dtype=dtype)
    tokenizer = _tokenizer(folder) if comm.is_main else None
    with MainWrites(comm) as writes:
        with _io.atomic_dir(out_dir, overwrite=overwrite) if comm.is_main else nullcontext(None) as tmp:
            report = prune_into(sharded, calibration, tmp, config, tokenizer=tokenizer, device=device,
                                checkpoint_dir=checkpoint_dir, progress=progress, callback=callback, comm=comm,
                                save_dtype=save_dtype, **overrides)
            writes.begin()
            report.extra["model"] = str(model) if model is not None else str(folder)
            if tmp is not None:
                report.save_json(tmp / "report.json")
    return report


def _tokenizer(folder: Path) -> Any:
    """The tokenizer of ``folder``, or None when it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError):
        logger.info("%s has no tokenizer; the output folder will have none", folder)
        return None


__all__ = ["prune_from_pretrained", "prune_into", "ShardedBlocks", "ShardWriter"]
