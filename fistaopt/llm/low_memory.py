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
stored once) and one per decoder block, and ``report.json``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from fistaopt import _io
from fistaopt.llm.checkpoint import Checkpoint
from fistaopt.llm.config import PruneConfig
from fistaopt.llm.distributed import SINGLE
from fistaopt.llm.prune import BlockResidency, run_block_loop
from fistaopt.llm.report import PruneReport
from fistaopt.llm.shards import INDEX_FILE, ShardedModel, safetensors_folder
from fistaopt.problems import LayerStatsAccumulator

logger = logging.getLogger(__name__)


class ShardWriter:
    """The weights of an output folder: shard 0 for the non-block tensors, shard ``i + 1`` for block ``i``."""

    def __init__(self, folder: str | os.PathLike[str], n_blocks: int) -> None:
        self.folder = Path(folder)
        self.n_files = n_blocks + 1
        self.weight_map: dict[str, str] = {}
        self.total_size = 0

    def file_name(self, part: int) -> str:
        return f"model-{part + 1:05d}-of-{self.n_files:05d}.safetensors"

    def write(self, part: int, tensors: dict[str, torch.Tensor]) -> None:
        """Write ``tensors`` (qualified names) as shard ``part``."""
        from safetensors.torch import save_file

        name = self.file_name(part)
        data = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
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
    """Blocks read from ``sharded``'s shards when their turn comes and written by ``writer`` when final."""

    holds_blocks = False

    def __init__(self, sharded: ShardedModel, writer: ShardWriter) -> None:
        self.sharded = sharded
        self.writer = writer

    def load(self, index: int) -> None:
        self.sharded.load(index)

    def unload(self, index: int) -> None:
        self.sharded.release(index)  # only read (an allocation's dense pre-pass): nothing to write

    def finished(self, index: int) -> None:
        self._write(index, self.sharded.blocks[index].state_dict())
        self.sharded.release(index)

    def restored(self, index: int, ckpt: Checkpoint) -> None:
        self._write(index, ckpt.block_state(index))

    def copy_dense(self, index: int) -> None:
        """A block the loop never reaches (after the last selected one): shard to shard."""
        self._write(index, self.sharded.read_block(index))

    def _write(self, index: int, state: dict[str, torch.Tensor]) -> None:
        prefix = self.sharded.block_prefix(index)
        self.writer.write(index + 1, {prefix + k: t for k, t in state.items()})


def prune_into(
    sharded: ShardedModel, calibration: torch.Tensor | Sequence[torch.Tensor], folder: str | os.PathLike[str],
    config: PruneConfig | None = None, *, tokenizer: Any = None, device: torch.device | str | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None, progress: bool = True,
    callback: Callable[[int, PruneReport], None] | None = None, **overrides: Any,
) -> PruneReport:
    """Prune ``sharded`` block by block into the (new, private) folder ``folder``: weights, config, tokenizer.

    The building block of :func:`prune_from_pretrained` for callers that write more files
    into the same output folder (the CLI: report, figure, model card).  The report's
    totals add ``peak_resident_block_params``, the most block parameters materialised at once.
    """
    folder, n_blocks = Path(folder), len(sharded.blocks)
    config = PruneConfig.build(config, **overrides)
    writer = ShardWriter(folder, n_blocks)
    residency = ShardedBlocks(sharded, writer)
    report = run_block_loop(sharded.model, calibration, config, residency, device=device,
                            checkpoint_dir=checkpoint_dir, progress=progress, callback=callback,
                            accumulator=LayerStatsAccumulator, comm=SINGLE, parallel="rows")
    for i in range(config.check_blocks(n_blocks)[-1] + 1, n_blocks):  # blocks the loop never reached
        residency.copy_dense(i)
    writer.write(0, sharded.non_block_state())
    writer.finish()
    sharded.model.config.save_pretrained(folder)
    if sharded.model.can_generate() and sharded.model.generation_config is not None:
        sharded.model.generation_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    report.totals["peak_resident_block_params"] = sharded.peak_resident_block_params
    report.totals["low_memory"] = True
    return report


def prune_from_pretrained(
    model: str | os.PathLike[str] | None, calibration: torch.Tensor | Sequence[torch.Tensor],
    out_dir: str | os.PathLike[str], config: PruneConfig | None = None, *, device: torch.device | str | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None, progress: bool = True, overwrite: bool = False,
    dtype: torch.dtype = torch.float32, callback: Callable[[int, PruneReport], None] | None = None,
    **overrides: Any,
) -> PruneReport:
    """Prune a model that need not fit in memory, from its safetensors folder to ``out_dir``.

    Args:
        model: a Hugging Face folder with safetensors weights, a hub id in the local cache,
            a GGUF file (its cached safetensors conversion is used) or ``None`` (the default GGUF).
        calibration: LongTensor ``(nsamples, seqlen)`` of token ids, or a list of them.
        out_dir: the output folder, loadable with ``AutoModelForCausalLM.from_pretrained``;
            written atomically; a non-empty folder fistaopt did not write needs ``overwrite``.
        config, overrides, device, checkpoint_dir, progress, callback: as :func:`fistaopt.llm.prune`
            (one process; a killed run resumes from ``checkpoint_dir`` without redoing its blocks).
        dtype: the dtype the blocks are read and pruned in.

    The weights equal those of ``prune(load_model(model), calibration, ...)``; only one
    decoder block is in memory at a time.  Returns the :class:`PruneReport` (also saved as
    ``report.json``).
    """
    _io.check_output_dir(out_dir, overwrite=overwrite)  # before the model is read
    folder = safetensors_folder(model)
    sharded = ShardedModel(folder, dtype=dtype)
    with _io.atomic_dir(out_dir, overwrite=overwrite) as tmp:
        report = prune_into(sharded, calibration, tmp, config, tokenizer=_tokenizer(folder), device=device,
                            checkpoint_dir=checkpoint_dir, progress=progress, callback=callback, **overrides)
        report.extra["model"] = str(model) if model is not None else str(folder)
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
