"""The block loop: prune every linear operator of every decoder block, in forward order.

For each decoder block ``i`` (one at a time on ``device``; the rest of the model stays on
the CPU in its dtype):

1. The block's calibration input ``h`` (batch, seqlen, hidden) is known per batch:
   block 0's comes from the embedding layers (see :mod:`fistaopt.llm.capture`).
2. The operators are discovered by one forward pass and grouped by shared input.
3. For each group, in forward order, statistics are streamed per calibration batch into
   a :class:`fistaopt.problems.LayerStatsAccumulator`:

   - with ``error_correction=True``: ``X`` is the group's input in a dense deep copy of
     the block, ``X*`` its input in the block whose earlier groups are already pruned
     (both on the same block input; each forward stops as soon as the group's input is
     reached);
   - with ``error_correction=False``: ``X* = X`` from the dense block (one forward per
     batch serves all groups).

   Then every operator of the group is pruned (a solver via
   :func:`fistaopt.layer.prune_layer`, or a baseline from :mod:`fistaopt.llm.baselines`)
   and its weight overwritten.
4. The next block's input is the output of the pruned block (``block_inputs="pruned"``,
   the default and the SparseGPT/Wanda mode), of the dense block (``"dense"``, the
   paper's parallel mode), or both streams are carried (``"corrected"``: the target comes
   from the dense model).  Measured on SmolLM2-135M (docs/pruning.md): pruned < dense ≪
   corrected in perplexity.

With ``checkpoint_dir``, the pruned block's state and the next block's inputs are
saved atomically after every block; a rerun with the same settings resumes there and
reaches identical weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from fistaopt.llm import baselines
from fistaopt.llm.capture import BlockInputs, capture_block_inputs, input_of, inputs_of_many, run_block
from fistaopt.llm.model import OperatorGroup, block_operators, find_blocks, linear_modules

logger = logging.getLogger(__name__)

BLOCK_INPUT_MODES = ("dense", "pruned", "corrected")
WARM_STARTS = ("auto", "none", "magnitude", "wanda", "sparsegpt")
CHECKPOINT_VERSION = 1


# ------------------------------------------------------------------------- report
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


@dataclass
class PruneReport:
    """Settings, per-operator records and totals of one :func:`prune` run."""

    settings: dict[str, Any]
    records: list[OperatorRecord] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. perplexities, versions (CLI)

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
        return {
            "settings": self.settings,
            "totals": self.totals,
            "extra": self.extra,
            "records": [asdict(r) for r in self.records],
        }

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(path, json.dumps(self.to_dict(), indent=2, default=str))


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------- validation
def _calibration_batches(calibration: Any, batch_size: int, vocab_size: int | None) -> list[torch.Tensor]:
    """Split the calibration ids into batches of at most ``batch_size`` rows."""
    if isinstance(calibration, torch.Tensor):
        parts: Sequence[Any] = [calibration]
    elif isinstance(calibration, (list, tuple)):
        parts = calibration
    else:
        raise TypeError(
            f"calibration must be a LongTensor (nsamples, seqlen) or a list of them, got {type(calibration).__name__}"
        )
    if len(parts) == 0:
        raise ValueError("calibration is empty (an empty list)")
    batches = []
    for k, t in enumerate(parts):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"calibration[{k}] must be a LongTensor (nsamples, seqlen), got {type(t).__name__}")
        if t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"calibration must hold integer token ids (torch.long), got dtype {t.dtype}")
        if t.ndim != 2:
            raise ValueError(f"calibration tensors must have shape (nsamples, seqlen), got {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"calibration is empty: shape {tuple(t.shape)}")
        if int(t.min()) < 0 or (vocab_size is not None and int(t.max()) >= vocab_size):
            raise ValueError(
                f"calibration token ids must lie in [0, {vocab_size}), got range [{int(t.min())}, {int(t.max())}]"
            )
        batches.extend(t.long().split(batch_size))
    return batches


def _vocab_size(model: nn.Module) -> int | None:
    try:
        return int(model.get_input_embeddings().num_embeddings)
    except Exception:
        return None


def _resolve_pattern(pattern: str, sparsity: float | None) -> Any:
    from fistaopt.sparsity import parse_pattern

    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string like 'unstructured' or '2:4', got {type(pattern).__name__}")
    is_nm = ":" in pattern
    if not is_nm:
        if sparsity is None or isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
            raise TypeError(f"sparsity must be a float in [0, 1), got {sparsity!r}")
        if not 0.0 <= float(sparsity) < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        return parse_pattern(pattern, float(sparsity))
    return parse_pattern(pattern, None)


def _lam_summary(lam: Any) -> dict[str, float] | None:
    if lam is None:
        return None
    t = torch.as_tensor(lam, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        return None
    return {"min": float(t.min()), "mean": float(t.mean()), "max": float(t.max())}


# ----------------------------------------------------------------- checkpointing
class _Checkpoint:
    """``state.json`` (the commit point) + ``block_XXXX.pt`` + ``hidden_XXXX.pt`` in one folder."""

    def __init__(self, folder: str | os.PathLike[str], fingerprint: str) -> None:
        self.dir = Path(folder)
        self.fingerprint = fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    def load(self) -> dict[str, Any] | None:
        if not self.state_path.is_file():
            return None
        state = json.loads(self.state_path.read_text())
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"checkpoint_dir {self.dir} holds a checkpoint of a run with different settings, "
                f"model or calibration data; use another directory or delete it"
            )
        return state

    def save(self, block_index: int, block: nn.Module, hidden: list[torch.Tensor] | None, records: list[OperatorRecord]) -> None:
        nxt = block_index + 1
        _atomic_torch_save({k: v.detach().cpu() for k, v in block.state_dict().items()}, self.dir / f"block_{block_index:04d}.pt")
        if hidden is not None:
            _atomic_torch_save(hidden, self.dir / f"hidden_{nxt:04d}.pt")
        state = {
            "version": CHECKPOINT_VERSION,
            "fingerprint": self.fingerprint,
            "next_block": nxt,
            "records": [asdict(r) for r in records],
        }
        _atomic_write_text(self.state_path, json.dumps(state, indent=1))
        for old in self.dir.glob("hidden_*.pt"):
            if old.name != f"hidden_{nxt:04d}.pt":
                old.unlink(missing_ok=True)

    def restore(self, blocks: nn.ModuleList, state: dict[str, Any]) -> tuple[int, list[torch.Tensor] | None, list[OperatorRecord]]:
        nxt = int(state["next_block"])
        for j in range(nxt):
            sd = torch.load(self.dir / f"block_{j:04d}.pt", map_location="cpu", weights_only=True)
            blocks[j].load_state_dict(sd)
        hidden_path = self.dir / f"hidden_{nxt:04d}.pt"
        hidden = torch.load(hidden_path, map_location="cpu", weights_only=True) if hidden_path.is_file() else None
        records = []
        for r in state["records"]:
            r["shape"] = tuple(r["shape"])
            records.append(OperatorRecord(**r))
        return nxt, hidden, records


def _fingerprint(model: nn.Module, settings: dict[str, Any], batches: list[torch.Tensor]) -> str:
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


# --------------------------------------------------------------------- operators
def _prune_operator(
    W0: torch.Tensor,
    acc: Any,
    pattern: Any,
    method: str,
    *,
    damp: float,
    warm_start: str,
    refit: bool,
    solver_options: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Prune one weight ``W0 (d_out, d_in)`` given its accumulated statistics.

    Returns the pruned weight and the record fields (rel errors, λ, iterations).
    """
    if method in baselines.BASELINES:
        W = _baseline(method, W0, acc, pattern, damp)
        rel = float(acc.to_problem(W0, 0.0).relative_error(W))
        return W, {"rel_error": rel}

    from fistaopt.layer import prune_layer  # lazy: fistaopt.layer sits above problems/solvers

    problem = acc.to_problem(W0, solver_options.pop("lam", 0.0), damp=damp)
    warm = None if warm_start == "none" else _baseline(warm_start, W0, acc, pattern, damp)
    res = prune_layer(problem, pattern, solver=method, warm_start=warm, refit=refit, **solver_options)
    # report the error on the undamped statistics, exactly as for the baselines
    rel = float(acc.to_problem(W0, 0.0).relative_error(res.W))
    return res.W, {
        "rel_error": rel,
        "rel_error_before_rounding": None if res.rel_error_before_rounding is None else float(res.rel_error_before_rounding),
        "lam": _lam_summary(res.lam),
        "n_iter": None if res.n_iter is None else int(res.n_iter),
    }


def _baseline(method: str, W0: torch.Tensor, acc: Any, pattern: Any, damp: float) -> torch.Tensor:
    if method == "magnitude":
        return baselines.magnitude(W0, pattern)[0]
    if method == "wanda":
        return baselines.wanda(W0, acc.column_norms(), pattern)[0]
    if method == "sparsegpt":
        return baselines.sparsegpt(W0, acc.H, pattern, damp=damp)[0]
    raise ValueError(f"unknown baseline {method!r}; expected one of {baselines.BASELINES}")


# --------------------------------------------------------------------- the loop
def prune(
    model: nn.Module,
    calibration: torch.Tensor | Sequence[torch.Tensor],
    *,
    sparsity: float = 0.5,
    pattern: str = "unstructured",
    method: str = "fista",
    error_correction: bool = True,
    block_inputs: str = "pruned",
    device: torch.device | str | None = None,
    batch_size: int = 8,
    damp: float = 0.01,
    warm_start: str | None = "auto",
    refit: bool = True,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    stats_dtype: torch.dtype = torch.float32,
    callback: Callable[[int, PruneReport], None] | None = None,
    blocks: Sequence[int] | None = None,
    skip_tokens: int = 0,
    save_problems: str | os.PathLike[str] | None = None,
    **solver_options: Any,
) -> PruneReport:
    """Prune every linear operator in the decoder blocks of ``model`` in place.

    Args:
        model: a Hugging Face causal LM (on the CPU; only the current block is moved).
        calibration: LongTensor (nsamples, seqlen) of token ids, or a list of them.
        sparsity: fraction of zeros for ``pattern="unstructured"`` (in [0, 1)).
        pattern: ``"unstructured"`` (per row), ``"unstructured-layer"`` or ``"N:M"``
            (keep N of every M consecutive inputs; sparsity implied).
        method: a solver (``fista``, ``ista``, ``admm``, ``cvxpy``) or a baseline
            (``magnitude``, ``wanda``, ``sparsegpt``).
        error_correction: X* from the block with earlier operators pruned (else X* = X).
        block_inputs: ``"dense"`` (dense hidden states enter every block: the paper's
            parallel mode), ``"pruned"`` (the pruned model's hidden states, as SparseGPT
            and Wanda; the target is the dense *block* on those inputs) or ``"corrected"``
            (X* from the pruned model, the target X from the dense *model*: every operator
            also corrects the error accumulated in earlier blocks; needs error_correction).
        device: where the current block runs (default: the model's device).
        batch_size: calibration sequences per forward.
        damp: ridge ``damp · mean(diag H)`` for the solvers and SparseGPT.
        warm_start: for solvers: ``"auto"`` (SparseGPT for OPT, Wanda otherwise),
            ``"none"``/None, or a baseline name.
        refit: least-squares refit of the kept weights (solvers).
        checkpoint_dir: save/resume after every block here.
        progress: tqdm bar over operators.
        stats_dtype: accumulation dtype (float32; float64 for exactness).
        callback: ``callback(block_index, report)`` after each block (and its checkpoint).
        blocks: indices of the blocks to prune (default: all); the others stay dense, and
            the loop ends after the last selected block.
        skip_tokens: leave the first ``skip_tokens`` positions of every calibration
            sequence out of the statistics (the first token of a sequence carries the
            "attention sink" activations, orders of magnitude larger than the rest, which
            otherwise dominate ``H``); applies to every method.
        save_problems: a folder: every operator's layer problem (``H, G, c`` with the
            damping used, before pruning) is saved there as ``block<i>.<name>.pt``
            (:meth:`fistaopt.LassoProblem.save`, metadata block/operator/shape), for
            solver studies on real statistics (``fistaopt compare --problem-dir``).
        **solver_options: passed to :func:`fistaopt.layer.prune_layer`.

    Returns a :class:`PruneReport`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    method = method.lower()
    if method not in baselines.BASELINES:
        from fistaopt.solvers import available

        if method not in available():
            raise ValueError(
                f"unknown method {method!r}; expected a solver {available()} or a baseline {list(baselines.BASELINES)}"
            )
    if block_inputs not in BLOCK_INPUT_MODES:
        raise ValueError(f"block_inputs must be one of {BLOCK_INPUT_MODES}, got {block_inputs!r}")
    if block_inputs == "corrected" and not error_correction:
        raise ValueError("block_inputs='corrected' needs error_correction=True (X* and X come from different models)")
    warm_start = "none" if warm_start is None else str(warm_start).lower()
    if warm_start not in WARM_STARTS:
        raise ValueError(f"warm_start must be one of {WARM_STARTS} or None, got {warm_start!r}")
    if warm_start == "auto":
        model_type = getattr(getattr(model, "config", None), "model_type", "")
        warm_start = "sparsegpt" if model_type == "opt" else "wanda"
    if isinstance(skip_tokens, bool) or not isinstance(skip_tokens, int) or skip_tokens < 0:
        raise ValueError(f"skip_tokens must be an int >= 0, got {skip_tokens!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(damp, (int, float)) or damp < 0:
        raise ValueError(f"damp must be a float >= 0, got {damp!r}")
    if stats_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"stats_dtype must be torch.float32 or torch.float64, got {stats_dtype}")
    pat = _resolve_pattern(pattern, sparsity)
    batches = _calibration_batches(calibration, batch_size, _vocab_size(model))
    if skip_tokens >= min(int(b.shape[1]) for b in batches):
        raise ValueError(f"skip_tokens={skip_tokens} leaves no token of the calibration sequences "
                         f"(seqlen {min(int(b.shape[1]) for b in batches)})")

    selected_blocks = blocks
    _, blocks = find_blocks(model)
    if selected_blocks is None:
        selected = list(range(len(blocks)))
    else:
        selected = sorted({int(i) for i in selected_blocks})
        if not selected or selected[0] < 0 or selected[-1] >= len(blocks):
            raise ValueError(f"blocks must be a non-empty list of indices in [0, {len(blocks)}), got {selected_blocks!r}")
    if pat.kind == "nm":
        for i, block in enumerate(blocks):
            if i not in selected:
                continue
            for name, mod in linear_modules(block).items():
                d_in = mod.weight.shape[0] if not isinstance(mod, nn.Linear) else mod.weight.shape[1]
                if d_in % int(pat.m) != 0:
                    raise ValueError(
                        f"pattern {pattern!r} needs every d_in divisible by {pat.m}; "
                        f"block {i} operator {name!r} has d_in = {d_in}"
                    )
    exec_device = torch.device(device) if device is not None else next(model.parameters()).device

    settings = {
        "sparsity": float(pat.sparsity),
        "pattern": pattern,
        "method": method,
        "error_correction": bool(error_correction),
        "block_inputs": block_inputs,
        "batch_size": batch_size,
        "damp": float(damp),
        "skip_tokens": skip_tokens,
        "save_problems": None if save_problems is None else str(save_problems),
        "warm_start": warm_start if method not in baselines.BASELINES else None,
        "refit": bool(refit),
        "stats_dtype": str(stats_dtype),
        "solver_options": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)) for k, v in solver_options.items()},
        "nsamples": sum(int(b.shape[0]) for b in batches),
        "seqlen": sorted({int(b.shape[1]) for b in batches}),
        "n_blocks": len(blocks),
        "blocks": selected,
    }
    report = PruneReport(settings=settings)
    ckpt = _Checkpoint(checkpoint_dir, _fingerprint(model, settings, batches)) if checkpoint_dir is not None else None

    t_start = time.perf_counter()
    was_training = model.training
    model.eval()
    inputs = capture_block_inputs(model, batches)
    hidden: list[torch.Tensor] = inputs.hidden
    # the dense model's own hidden states, kept only when targets come from the dense model
    dense_hidden: list[torch.Tensor] | None = inputs.hidden if block_inputs == "corrected" else None
    start = 0
    if ckpt is not None:
        state = ckpt.load()
        if state is not None:
            start, saved_hidden, report.records = ckpt.restore(blocks, state)
            if isinstance(saved_hidden, dict):
                hidden, dense_hidden = saved_hidden["pruned"], saved_hidden["dense"]
            elif saved_hidden is not None:
                hidden = saved_hidden
            logger.info("resuming from checkpoint %s at block %d", ckpt.dir, start)

    total_ops = sum(len(linear_modules(blocks[i])) for i in selected if i >= start)
    bar = tqdm(total=total_ops, desc=f"prune {method}", unit="op", disable=not progress)
    try:
        on_cuda = exec_device.type == "cuda"
        for i in range(start, selected[-1] + 1):
            if on_cuda:
                torch.cuda.reset_peak_memory_stats(exec_device)
            if i not in selected:  # a dense block: just pass the calibration inputs through
                calls = [c[i] for c in inputs.calls]
                hidden = _pass_through(blocks[i], calls, hidden, exec_device)
                if dense_hidden is not None:
                    dense_hidden = _pass_through(blocks[i], calls, dense_hidden, exec_device)
            else:
                hidden, dense_hidden = _prune_block(
                    blocks[i], i, inputs, hidden, dense_hidden, pat, method,
                    error_correction=bool(error_correction), block_inputs=block_inputs, device=exec_device,
                    damp=float(damp), warm_start=warm_start, refit=bool(refit), stats_dtype=stats_dtype,
                    skip_tokens=skip_tokens,
                    solver_options=solver_options, report=report, bar=bar, last=(i == selected[-1]),
                )
            if on_cuda:  # what one block needed on the accelerator (weights, copies, statistics)
                peak = report.totals.setdefault("peak_device_bytes_per_block", {})
                peak[str(i)] = int(torch.cuda.max_memory_allocated(exec_device))
            if ckpt is not None:
                both = hidden if dense_hidden is None or hidden is None else {"pruned": hidden, "dense": dense_hidden}
                ckpt.save(i, blocks[i], both, report.records)
            if callback is not None:
                callback(i, report)
    finally:
        bar.close()
        model.train(was_training)
    report.summarize()
    report.totals["wall_seconds"] = time.perf_counter() - t_start
    return report


def _prune_block(
    block: nn.Module,
    index: int,
    inputs: BlockInputs,
    hidden: list[torch.Tensor],
    dense_hidden: list[torch.Tensor] | None,
    pat: Any,
    method: str,
    *,
    error_correction: bool,
    block_inputs: str,
    device: torch.device,
    damp: float,
    warm_start: str,
    refit: bool,
    stats_dtype: torch.dtype,
    solver_options: dict[str, Any],
    report: PruneReport,
    skip_tokens: int = 0,
    bar: Any,
    last: bool,
) -> list[torch.Tensor] | None:
    """Prune one block in place; return the next block's inputs (None after the last block).

    Returns ``(hidden, dense_hidden)`` for the next block; ``dense_hidden`` (the dense
    model's stream) is carried only in the ``"corrected"`` mode, else None.
    """
    from fistaopt.problems import LayerStatsAccumulator

    home = next(block.parameters()).device
    block.to(device)
    calls = [c[index] for c in inputs.calls]
    n_batches = len(hidden)
    try:
        groups: list[OperatorGroup] = block_operators(block, *_first_call(calls[0], hidden[0], device))
        modules = [block.get_submodule(g.operators[0].name) for g in groups]
        need_dense_copy = error_correction and (
            len(groups) > 1 or dense_hidden is not None or (block_inputs == "dense" and not last))
        dense = copy.deepcopy(block) if need_dense_copy else None
        next_hidden: list[torch.Tensor] | None = None if last else []

        def new_acc(g: OperatorGroup) -> Any:
            return LayerStatsAccumulator(g.d_in, dtype=stats_dtype, device=device)

        if not error_correction:
            # One dense forward per batch yields every group's X (and the dense block output).
            accs = [new_acc(g) for g in groups]
            for b in range(n_batches):
                if next_hidden is not None and block_inputs == "dense":
                    xs = _inputs_and_output(block, modules, calls[b], hidden[b], device, next_hidden)
                else:
                    xs = inputs_of_many(block, modules, calls[b], hidden[b], device)
                for acc, x in zip(accs, xs):
                    acc.add(_skip(x, skip_tokens))
                del xs
            for gi, (g, acc) in enumerate(zip(groups, accs)):
                _prune_group(g, gi, acc, index, pat, method, damp, warm_start, refit, solver_options, report, bar)
                accs[gi] = None
        else:
            for gi, g in enumerate(groups):
                acc = new_acc(g)
                for b in range(n_batches):
                    if dense_hidden is not None:
                        # target from the dense model's own stream, input from the pruned one
                        x = input_of(dense, dense.get_submodule(g.operators[0].name), calls[b], dense_hidden[b], device)
                        x_star = input_of(block, modules[gi], calls[b], hidden[b], device)
                        acc.add(_skip(x, skip_tokens), _skip(x_star, skip_tokens))
                        del x, x_star
                    elif gi == 0 or dense is None:
                        # Nothing of this block is pruned yet: X* = X.
                        acc.add(_skip(input_of(block, modules[gi], calls[b], hidden[b], device), skip_tokens))
                    else:
                        x = input_of(dense, dense.get_submodule(g.operators[0].name), calls[b], hidden[b], device)
                        x_star = input_of(block, modules[gi], calls[b], hidden[b], device)
                        acc.add(_skip(x, skip_tokens), _skip(x_star, skip_tokens))
                        del x, x_star
                _prune_group(g, gi, acc, index, pat, method, damp, warm_start, refit, solver_options, report, bar)
                del acc

        next_dense: list[torch.Tensor] | None = None
        if next_hidden is not None and not (not error_correction and block_inputs == "dense"):
            source = block if block_inputs in ("pruned", "corrected") else dense
            for b in range(n_batches):
                next_hidden.append(run_block(source, calls[b], hidden[b], device))
            if dense_hidden is not None:
                next_dense = [run_block(dense, calls[b], dense_hidden[b], device) for b in range(n_batches)]
        return next_hidden, next_dense
    finally:
        block.to(home)


def _skip(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x (batch, seq, d)`` without its first ``k`` positions (tokens) when ``k > 0``."""
    if k <= 0 or x.ndim < 3:
        return x
    if k >= x.shape[1]:
        raise ValueError(f"skip_tokens={k} leaves no token of a calibration sequence of length {x.shape[1]}")
    return x[:, k:]


@torch.no_grad()
def _pass_through(block: nn.Module, calls: list[Any], hidden: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    home = next(block.parameters()).device
    block.to(device)
    try:
        return [run_block(block, calls[b], hidden[b], device) for b in range(len(hidden))]
    finally:
        block.to(home)


def _first_call(call: Any, hidden: torch.Tensor, device: torch.device) -> tuple[tuple, dict[str, Any]]:
    from fistaopt.llm.capture import to_device

    return (hidden.to(device), *to_device(call.args, device)), to_device(call.kwargs, device)


@torch.no_grad()
def _inputs_and_output(
    block: nn.Module, modules: list[nn.Module], call: Any, hidden: torch.Tensor, device: torch.device, out: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Inputs of ``modules`` and the block output from one full dense forward (appends the output to ``out``)."""
    captured: dict[int, torch.Tensor] = {}

    def hook(mod: nn.Module, args: tuple) -> None:
        captured.setdefault(id(mod), args[0].detach())

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        out.append(run_block(block, call, hidden, device))
    finally:
        for h in handles:
            h.remove()
    return [captured[id(m)] for m in modules]


def _prune_group(
    group: OperatorGroup,
    group_index: int,
    acc: Any,
    block_index: int,
    pat: Any,
    method: str,
    damp: float,
    warm_start: str,
    refit: bool,
    solver_options: dict[str, Any],
    report: PruneReport,
    bar: Any,
) -> None:
    for op in group.operators:
        bar.set_postfix_str(f"block {block_index} {op.name}")
        W0 = op.get_weight().to(acc.H.device)
        folder = report.settings.get("save_problems")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            acc.to_problem(W0, 0.0, damp=damp).save(
                Path(folder) / f"block{block_index:02d}.{op.name}.pt",
                block=block_index, operator=op.name, shape=list(op.shape), damp=damp)
        t0 = time.perf_counter()
        W, info = _prune_operator(
            W0, acc, pat, method, damp=damp, warm_start=warm_start, refit=refit, solver_options=dict(solver_options)
        )
        seconds = time.perf_counter() - t0
        op.set_weight(W)
        n_zero = int((op.get_weight() == 0).sum())
        report.records.append(
            OperatorRecord(
                block=block_index, name=op.name, shape=op.shape, method=method,
                sparsity=n_zero / W0.numel(), seconds=seconds, group=group_index, **info,
            )
        )
        logger.debug("block %d %s: %s", block_index, op.name, info)
        bar.update(1)
