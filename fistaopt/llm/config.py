"""The prune configuration: every default and every check of a prune run, once.

    config = PruneConfig(sparsity=0.5, method="fista", warm_start="sparsegpt")
    config = PruneConfig.build(pattern="2:4", rounds=3, precondition=False)   # flat keys, routed
    report = llm.prune(model, calibration, config)

A :class:`PruneConfig` is frozen and valid once built: the pattern is parsed, the
method is one that can prune (a solver other than a verifier, or a baseline), and the
options are split into :class:`~fistaopt.layer.LayerOptions` (how one layer is pruned)
and the solver options (checked against the solver's own option names).  What can be
checked only against a model (N:M widths, block indices, the calibration length) is
checked by :meth:`PruneConfig.check_widths`, :meth:`check_blocks` and
:meth:`check_seqlen`, before any weight changes.  The report's settings are
:meth:`PruneConfig.settings` (the fields, with the damping used).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

import torch

from fistaopt.layer.options import LayerOptions, check_solver_options, resolve_precision
from fistaopt.llm.allocation import ALLOCATIONS, OWL_WINDOWS
from fistaopt.llm.data import BOS_CHOICES
from fistaopt.llm.methods import BASELINES, available_methods, is_baseline
from fistaopt.llm.streams import BLOCK_INPUT_MODES
from fistaopt.problems.lasso import RIDGES
from fistaopt.sparsity import Pattern, parse_pattern

WARM_STARTS = ("auto", "none", *BASELINES)
BASELINE_TARGETS = ("dense", "least-squares")
#: :attr:`PruneConfig.tune_target` choices (:mod:`fistaopt.llm.block_tune`).
TUNE_TARGETS = ("block", "model")
#: :attr:`PruneConfig.tune_precision` choices: the products of the tuning's forward and backward passes.
TUNE_PRECISIONS = ("auto", "fp32", "bf16")
STATS_DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_SPARSITY = 0.5
#: The damping when none is given: SparseGPT's own for the baselines; for solver methods
#: (their layer problems and their warm start) the best measured on SmolLM2-135M
#: (docs/pruning.md, "The damping"): 0.1 at 50% (WikiText-2 perplexity, seed 0: 0.01 52.68,
#: 0.03 52.27, 0.1 51.12, 0.3 51.49, 1.0 56.66) and at 2:4 (0.05 82.83 against 0.1 82.43, three
#: seeds at the l0-ADMM default); 0.03 for unstructured patterns
#: above 50% (at 70% WikiText-2 perplexity within the prune's rounding noise, held-out
#: perplexity 77.7 against 85.0 with seed 0): :meth:`PruneConfig.damping`.
DEFAULT_DAMP = {"baseline": 0.01, "solver": 0.1, "solver_sparse": 0.03}
#: The block tuning's epochs where ``tune_epochs="auto"`` tunes (:meth:`PruneConfig.for_device`):
#: on one H200, SmolLM2-135M, one epoch lowered WikiText-2 perplexity 48.38 → 47.32 at 50%
#: (three seeds, lower with each) and 83.25 → 78.07 at 2:4 (seed 0), at 1.5-1.6x SparseGPT's
#: prune time against 1.0-1.3x untuned; a second epoch gave 47.29 (docs/pruning.md,
#: "Block tuning on a GPU").  With the CLI's 64 windows (float32 products) it cut SparseGPT's
#: excess by 41.7% at 50% but took 2.04-2.35x SparseGPT's time, and 2.36x on a
#: LLaMA-2-7B-shaped block ("Block tuning on a GPU, second pass"; bfloat16 products since).
#: On a CPU the tuned prune took 2.2-2.9x SparseGPT's time: an epoch costs about a SparseGPT prune
#: there (benchmarks/tune_step.py; docs/pruning.md, "Block tuning on a CPU").
AUTO_TUNE_EPOCHS = 1
#: ``tune_lr="auto"``: Adam's step size when the whole block trains (the best of 3e-5 to 3e-3 on
#: SmolLM2-135M's blocks 0–5 at 50%; at 70%, 1e-4 was 0.9 lower on WikiText-2 and 2.4 higher on
#: the held-out text), and when only the block's last two operator groups (the MLP) train:
#: 1e-3 lowered WikiText-2 perplexity to 46.07 against 46.43 with 6e-4 and 47.04 with 3e-4 (one
#: epoch, 64 windows, seed 0; untuned 47.68; docs/pruning.md, "The MLP on its held inputs").
TUNE_LR = {"block": 3e-4, "mlp": 1e-3}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _one_of(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


#: :attr:`PruneConfig.allocation` choices: ``"auto"`` (:func:`auto_allocation`) or a rule.
ALLOCATION_CHOICES = ("auto", *ALLOCATIONS)


#: The sparsity from which ``allocation="auto"`` is OWL for solver methods (unstructured
#: patterns); the measurements behind it are in :func:`auto_allocation`.
OWL_FROM_SPARSITY = 0.65


def auto_allocation(method: str, pattern: Pattern, max_deviation: float) -> str:
    """The rule ``allocation="auto"`` stands for: OWL for solver methods at unstructured
    sparsities from :data:`OWL_FROM_SPARSITY` (65%), uniform otherwise (below it, N:M, the
    baselines in their published protocol, and where ``sparsity + max_deviation`` would reach 1).

    Measured on SmolLM2-135M, fista, OWL (8 windows) against uniform (WikiText-2 / held-out
    perplexity; docs/pruning.md, "OWL from 65%"): at 70% (calibration seeds 0, 1, 2) 168.56 /
    79.68, 171.96 / 82.93, 177.97 / 82.89 against 191.93 / 77.99, 191.72 / 80.66, 193.11 /
    82.09; at 65% 122.38 / 59.26 against 126.87 / 58.19 (seed 0) and 117.24 / 59.72 against
    130.73 / 57.62 (seed 1); at 60% 86.92 / 45.47 against 86.00 / 43.71 (seed 0) and 86.20 /
    44.71 against 86.10 / 44.18 (seed 1); at 50% 52.30 / 29.89 against 50.87 / 30.04 (seed 0).
    """
    if (is_baseline(method) or pattern.kind == "nm" or pattern.sparsity < OWL_FROM_SPARSITY
            or pattern.sparsity + max_deviation >= 1):
        return "uniform"
    return "owl"


#: The warm start ``"auto"`` resolves to for solver methods, at every pattern and on every
#: model: SparseGPT.  Measured on SmolLM2-135M (32 × 512 calibration tokens, WikiText-2 /
#: held-out perplexity, damping 0.1; docs/pruning.md): at 2:4 a SparseGPT start gives
#: 87.25 / 46.31 and a Wanda start 88.78 / 48.41 (Wanda won at damping 0.01 in the earlier
#: protocol, 99.71 against 102.48); at 50% SparseGPT 55.31, Wanda 56.46 (earlier protocol).
#: OPT models start from SparseGPT as in the paper.
AUTO_WARM_START = "sparsegpt"


def block_indices(text: str) -> list[int]:
    """Block indices written as ``0-3``, ``5`` or ``0,2,5-7`` (the CLI's and method specs' form).

    Raises:
        ValueError: a part is not an index or a range of them.
    """
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            lo, dash, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    return out


@dataclass(frozen=True)
class PruneConfig:
    """How a model is pruned (see :func:`fistaopt.llm.prune`).

    Attributes:
        sparsity: fraction of zeros for unstructured patterns, in [0, 1) (default 0.5);
            for N:M it is implied (``1 − N/M``) and filled in.
        pattern: ``"unstructured"`` (per row), ``"unstructured-layer"`` or ``"N:M"``.
        method: a solver of :func:`fistaopt.solvers.available` (not a verifier) or a
            baseline (``magnitude``, ``wanda``, ``sparsegpt``).
        warm_start: for solvers: ``"auto"`` (resolved by :meth:`for_model` with
            :data:`AUTO_WARM_START`: SparseGPT, the better start measured on SmolLM2 at 50%
            and 2:4, see docs/pruning.md), ``"none"`` or a baseline.
        error_correction: ``X*`` from the block with earlier operators pruned (else ``X* = X``).
        baseline_target: with error correction, the dense weight that Wanda and SparseGPT
            (alone or as a warm start) prune: ``"dense"`` (``W₀``, default) or
            ``"least-squares"`` (``W̃ = G H⁻¹``, whose ``X*``-distance is the layer loss; lower
            layer errors but measured worse perplexity on SmolLM2, docs/pruning.md).
        block_inputs: ``"pruned"``, ``"dense"`` or ``"corrected"`` (:mod:`fistaopt.llm.streams`).
        residual_correction: with error correction, the block's last operator (a down
            projection) is fitted to the dense block's output rather than to its own: it also
            absorbs the error the groups before it leave in the residual stream
            (:mod:`fistaopt.llm.residual`; the ``pruned`` and ``dense`` block inputs, blocks
            whose last operator adds to the output: not Gemma's post-norm MLP).  Default True.
            Its operator's ``rel_error`` is then measured against that target.
        damp: ridge ``damp · mean(diag H)`` toward the dense weight (solvers and SparseGPT);
            None (default): :data:`DEFAULT_DAMP` for the method's kind (0.01 for the
            baselines, SparseGPT's own; for solvers, where the ridge toward ``W₀``
            generalises better than fitting the calibration set more closely, 0.1, and 0.03
            for unstructured sparsities above 50%).  The value used is :attr:`damping`.
        ridge: how the damping spreads over the input channels (solver methods):
            ``"mean"`` (``δ = damp · mean(diag H)`` on every column, SparseGPT's; default) or
            ``"diagonal"`` (``δ_j = damp · H_jj``, the same relative pull on every channel;
            :meth:`fistaopt.problems.LassoProblem.with_damping`).  SparseGPT, alone or as a
            warm start, always damps its own way.
        batch_size: calibration sequences per forward.
        skip_tokens: leading positions of every sequence left out of the statistics.
        cache_bytes: how much error correction may keep between the operator groups of a
            block (the block's paused forwards first, the dense copy's inputs in what is
            left; :mod:`fistaopt.llm.streams`): under it a group's ``X*`` and ``X`` come
            from one forward per batch, above it each group recomputes them.  None
            (default): 4 GiB of paused forwards and 1 GiB of dense inputs on the CPU, half
            the free memory on a GPU.  ``0`` holds nothing: least memory, most forwards.
            The pruned weights are the same at every value.
        stats_dtype: ``"float32"`` or ``"float64"`` accumulation of ``H, G, c``.
        blocks: indices of the blocks to prune (None: all); the others stay dense.
        save_problems: a folder where every operator's layer problem is saved (or None).
        bos: how calibration windows start (``auto``/``always``/``never``,
            :mod:`fistaopt.llm.data`); used where the windows are built, recorded here.
        allocation: how the sparsity is spread over the operators (unstructured patterns):
            ``"uniform"`` (every operator at ``sparsity``), ``"owl"`` (per block, from the
            outlier ratios) or ``"convex"`` (per operator, by one λ shared by the ℓ1
            problems); the total number of pruned weights is the uniform one exactly
            (:mod:`fistaopt.llm.allocation`).  ``"auto"`` (default): :attr:`allocation_rule`
            resolves it with :func:`auto_allocation` (OWL for solver methods from 65%
            unstructured sparsity, uniform otherwise), whatever fields a ``replace`` or
            :meth:`build` changes later; the report's settings record the rule used.
        owl_threshold: OWL's ``M``: a Wanda score is an outlier above ``M`` × the block's mean.
        max_deviation: how far an operator's sparsity may move from ``sparsity`` (OWL's λ).
        owl_windows: OWL reads its statistics from the first calibration batches that hold
            this many windows (None: all of them); :data:`fistaopt.llm.allocation.OWL_WINDOWS`
            by default, where SmolLM2-135M's block sparsities are those of 32 windows to 0.002.
        tune_epochs: after each block is pruned, passes of Adam over the calibration windows
            that tune the block's kept linear weights (masks fixed) toward the dense block's
            output on the same input (:mod:`fistaopt.llm.block_tune`); 0: none.
            Needs error correction and ``block_inputs="pruned"``, one process.  ``"auto"``
            (default): :meth:`for_device` resolves it where the blocks run, to
            :data:`AUTO_TUNE_EPOCHS` for solver methods in one process at 50% or less
            unstructured sparsity or N:M (with error correction and pruned block inputs) on a
            CUDA device or a CPU that multiplies bfloat16 natively, else 0; the report's
            settings record the value used.  On SmolLM2-135M with 64 calibration windows, one
            epoch of the whole block lowered WikiText-2 perplexity 47.41 → 45.38 at 50% on an
            H200 (2.0–2.4× SparseGPT's time, float32 products), and one epoch of the MLP alone
            (the CPU's ``"auto"`` groups) 47.68 → 46.34 on an AMX CPU at 1.93× (seed 0;
            docs/pruning.md, "Block tuning" and "The MLP on its held inputs"); at 70% tuning did
            not lower WikiText-2 on the CPU.
        tune_lr: Adam's step size for the tuning; ``"auto"`` (default): :data:`TUNE_LR`, 3e-4
            where the whole block trains and 1e-3 where only its MLP does (:meth:`step_size`).
        tune_micro_batch: calibration windows per Adam step.
        tune_windows: windows per tuning epoch, the first ones (None: all).
        tune_target: what the tuned block's output is pulled toward: ``"block"`` (default)
            the dense block's output on the same (pruned-model) input; ``"model"`` the dense
            model's own hidden states after the block (the block also undoes the error that
            reaches it from earlier blocks; one more dense forward per block).
        tune_precision: the products of the tuning's forward and backward passes: ``"fp32"``
            (IEEE float32), ``"bf16"`` (``torch.autocast`` to bfloat16; the weights, Adam's
            state and the loss stay float32), or ``"auto"`` (default): ``bf16`` for float32
            blocks on a device that multiplies bfloat16 natively
            (:func:`fistaopt.solvers.prox.native_bf16`), ``fp32`` elsewhere
            (:meth:`tune_autocast`).  The before/after check of the block's output error, the
            tuned block's outputs and the targets are computed in the block's own dtype,
            except the MLP's part of the outputs where it trains on its held inputs
            (:mod:`fistaopt.llm.block_tune`).
        tune_skip_groups: the block's first operator groups (in forward order, e.g. ``1``:
            q/k/v) keep their pruned weights, so the backward pass stops before them
            (``1`` skips attention's backward on LLaMA-like blocks; ``2``: the MLP only).
            Where the operators left all lie in one submodule whose input is fixed by the
            frozen ones and whose output adds to the block's (``2`` on LLaMA, Qwen2, GPT-2),
            that submodule trains alone on its inputs from the prune's forwards, with no
            forward of the rest of the block per step (:mod:`fistaopt.llm.block_tune`).
            ``"auto"`` (default): none on a CUDA device, all but the last two (the MLP)
            elsewhere (:meth:`skipped_groups`).
        tune_blocks: indices of the pruned blocks that are tuned (None: every one).  The
            tuning's cost is per block; on SmolLM2-135M at 50% the first third of the blocks
            gave 0.90 of the 2.07 perplexity points that tuning all 30 gave, the middle and
            last thirds 0.25 and 0.45 (docs/pruning.md, "Block tuning, third pass").
        layer: how one layer is pruned (solver methods).
        solver_options: options of the ℓ1 solver (e.g. ``precondition``, ``device``).
    """

    sparsity: float | None = None
    pattern: str = "unstructured"
    method: str = "fista"
    warm_start: str = "auto"
    error_correction: bool = True
    baseline_target: str = "dense"
    block_inputs: str = "pruned"
    residual_correction: bool = True
    damp: float | None = None
    ridge: str = "mean"
    batch_size: int = 8
    skip_tokens: int = 0
    cache_bytes: int | None = None
    stats_dtype: str = "float32"
    blocks: tuple[int, ...] | None = None
    save_problems: str | None = None
    bos: str = "auto"
    allocation: str = "auto"
    owl_threshold: float = 5.0
    max_deviation: float = 0.08
    owl_windows: int | None = OWL_WINDOWS
    tune_epochs: int | str = "auto"
    tune_lr: float | str = "auto"
    tune_micro_batch: int = 1
    tune_windows: int | None = None
    tune_target: str = "block"
    tune_precision: str = "auto"
    tune_skip_groups: int | str = "auto"
    tune_blocks: tuple[int, ...] | None = None
    layer: LayerOptions = field(default_factory=LayerOptions)
    solver_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.method, str):
            raise ValueError(f"method must be a string; valid methods: {', '.join(available_methods())}")
        set_(self, "method", self.method.lower())
        if self.method not in available_methods():
            hint = " (cvxpy is a verifier, too slow to prune a model)" if self.method == "cvxpy" else ""
            raise ValueError(f"unknown method {self.method!r}{hint}; valid methods: {', '.join(available_methods())}")
        set_(self, "_pattern", self._parse_pattern())
        set_(self, "sparsity", float(self._pattern.sparsity))
        set_(self, "warm_start", _one_of("warm_start", "none" if self.warm_start is None else str(self.warm_start).lower(),
                                         WARM_STARTS))
        if not isinstance(self.error_correction, bool):
            raise ValueError(f"error_correction must be True or False, got {self.error_correction!r}")
        _one_of("baseline_target", self.baseline_target, BASELINE_TARGETS)
        _one_of("block_inputs", self.block_inputs, BLOCK_INPUT_MODES)
        if not isinstance(self.residual_correction, bool):
            raise ValueError(f"residual_correction must be True or False, got {self.residual_correction!r}")
        if self.block_inputs == "corrected" and not self.error_correction:
            raise ValueError("block_inputs='corrected' needs error_correction=True (X* and X come from different models)")
        if self.damp is not None:
            if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not self.damp >= 0:
                raise ValueError(f"damp must be a number >= 0 (or None: the method's default), got {self.damp!r}")
            set_(self, "damp", float(self.damp))
        _one_of("ridge", self.ridge, RIDGES)
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not _is_int(self.skip_tokens) or self.skip_tokens < 0:
            raise ValueError(f"skip_tokens must be an int >= 0, got {self.skip_tokens!r}")
        if self.cache_bytes is not None and (not _is_int(self.cache_bytes) or self.cache_bytes < 0):
            raise ValueError(f"cache_bytes must be an int >= 0 (or None: the default budgets), got {self.cache_bytes!r}")
        dtype = self.stats_dtype
        names = {v: k for k, v in STATS_DTYPES.items()}
        set_(self, "stats_dtype", _one_of("stats_dtype", names.get(dtype, dtype), STATS_DTYPES))
        self._check_blocks_value()
        if self.save_problems is not None:
            set_(self, "save_problems", str(self.save_problems))
        _one_of("bos", self.bos, BOS_CHOICES)
        self._check_allocation()
        if self.tune_epochs != "auto" and (not _is_int(self.tune_epochs) or self.tune_epochs < 0):
            raise ValueError(f"tune_epochs must be an int >= 0 or 'auto', got {self.tune_epochs!r}")
        if self.tune_lr != "auto":
            if isinstance(self.tune_lr, bool) or not isinstance(self.tune_lr, (int, float)) or not self.tune_lr > 0:
                raise ValueError(f"tune_lr must be a number > 0 or 'auto', got {self.tune_lr!r}")
            object.__setattr__(self, "tune_lr", float(self.tune_lr))
        if not _is_int(self.tune_micro_batch) or self.tune_micro_batch < 1:
            raise ValueError(f"tune_micro_batch must be a positive int, got {self.tune_micro_batch!r}")
        explicit_tuning = self.tune_epochs != "auto" and self.tune_epochs > 0
        if explicit_tuning and not self.error_correction:
            raise ValueError("tune_epochs needs error_correction=True (the dense block's copy gives the targets)")
        if explicit_tuning and self.block_inputs != "pruned":
            raise ValueError(f"tune_epochs needs block_inputs='pruned', got {self.block_inputs!r}")
        set_(self, "tune_target", _one_of("tune_target", str(self.tune_target).lower(), TUNE_TARGETS))
        set_(self, "tune_precision", _one_of("tune_precision", str(self.tune_precision).lower(), TUNE_PRECISIONS))
        if self.tune_skip_groups != "auto" and (not _is_int(self.tune_skip_groups) or self.tune_skip_groups < 0):
            raise ValueError(f"tune_skip_groups must be an int >= 0 or 'auto', got {self.tune_skip_groups!r}")
        if self.tune_windows is not None and (not _is_int(self.tune_windows) or self.tune_windows < 1):
            raise ValueError(f"tune_windows must be a positive int (or None: every window), got {self.tune_windows!r}")
        if not isinstance(self.layer, LayerOptions):
            raise ValueError(f"layer must be a LayerOptions, got {type(self.layer).__name__}")
        if is_baseline(self.method):
            if self.solver_options:
                raise ValueError(f"method {self.method!r} is a baseline and takes no solver options, "
                                 f"got {sorted(self.solver_options)}")
        else:
            set_(self, "solver_options", check_solver_options(self.method, dict(self.solver_options)))

    def _parse_pattern(self) -> Pattern:
        if not isinstance(self.pattern, str):
            raise ValueError(f"pattern must be a string like 'unstructured' or '2:4', got {self.pattern!r}")
        s = self.sparsity
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float))):
            raise ValueError(f"sparsity must be a number in [0, 1), got {s!r}")
        if ":" in self.pattern:
            return parse_pattern(self.pattern, s)
        return parse_pattern(self.pattern, DEFAULT_SPARSITY if s is None else float(s))

    def _check_allocation(self) -> None:
        _one_of("allocation", self.allocation, ALLOCATION_CHOICES)
        for name in ("owl_threshold", "max_deviation"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.owl_threshold <= 0:
            raise ValueError(f"owl_threshold must be > 0, got {self.owl_threshold}")
        if self.owl_windows is not None and (not _is_int(self.owl_windows) or self.owl_windows < 1):
            raise ValueError(f"owl_windows must be a positive int (or None: every window), got {self.owl_windows!r}")
        if self.allocation_rule == "uniform":
            return
        if self._pattern.kind == "nm":  # type: ignore[attr-defined]
            raise ValueError(f"allocation={self.allocation!r} needs an unstructured pattern; "
                             f"N:M ({self.pattern}) keeps its fixed per-row pattern")
        s, dev = self.sparsity, self.max_deviation
        if not (0 <= dev and s - dev >= 0 and s + dev < 1):
            raise ValueError(f"max_deviation must keep sparsity ± max_deviation inside [0, 1); "
                             f"got {dev} at sparsity {s}")

    def _check_blocks_value(self) -> None:
        for name in ("blocks", "tune_blocks"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                blocks = tuple(sorted({int(i) for i in (block_indices(value) if isinstance(value, str) else value)}))
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a list of block indices, got {value!r}") from None
            if not blocks or blocks[0] < 0:
                raise ValueError(f"{name} must be a non-empty list of indices >= 0, got {value!r}")
            object.__setattr__(self, name, blocks)
        if self.tune_blocks is not None and (self.tune_epochs == "auto" or not self.tune_epochs):
            raise ValueError(f"tune_blocks={list(self.tune_blocks)} needs tune_epochs >= 1, got {self.tune_epochs!r}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, config: "PruneConfig | None" = None, **overrides: Any) -> "PruneConfig":
        """``config`` (default: the defaults) with flat ``overrides``, each routed once.

        A key is a :class:`PruneConfig` field, else a :class:`LayerOptions` field, else a
        solver option (checked against the method's solver).  Unknown keys raise
        ``ValueError`` listing the valid ones.
        """
        base = config if config is not None else cls()
        if not isinstance(base, cls):
            raise TypeError(f"config must be a PruneConfig, got {type(base).__name__}")
        own = {f.name for f in fields(cls)}
        layer_keys = set(LayerOptions.names())
        top = {k: v for k, v in overrides.items() if k in own}
        layer = {k: v for k, v in overrides.items() if k in layer_keys and k not in own}
        rest = {k: v for k, v in overrides.items() if k not in own and k not in layer_keys}
        method = str(top.get("method", base.method)).lower()
        if rest and is_baseline(method):
            raise ValueError(f"unknown option(s) {', '.join(sorted(rest))}; valid options: "
                             f"{', '.join(sorted(own))}; layer options: {', '.join(LayerOptions.names())}")
        if "pattern" in top and "sparsity" not in top:  # an N:M sparsity was implied, not chosen
            top["sparsity"] = None if ":" in str(top["pattern"]) + base.pattern else base.sparsity
        if layer:
            top["layer"] = replace(top.get("layer", base.layer), **layer)
        if rest:
            top["solver_options"] = {**(top.get("solver_options", base.solver_options)), **rest}
        return replace(base, **top)

    # ------------------------------------------------------------------ derived values
    @property
    def pattern_spec(self) -> Pattern:
        """The parsed pattern."""
        return self._pattern  # type: ignore[attr-defined]

    @property
    def torch_stats_dtype(self) -> torch.dtype:
        return STATS_DTYPES[self.stats_dtype]

    @property
    def allocation_rule(self) -> str:
        """The allocation rule used: :attr:`allocation`, with ``"auto"`` resolved by
        :func:`auto_allocation` for this method, pattern and ``max_deviation``."""
        if self.allocation != "auto":
            return self.allocation
        return auto_allocation(self.method, self.pattern_spec, self.max_deviation)

    @property
    def is_baseline(self) -> bool:
        return is_baseline(self.method)

    def for_model(self, model_type: str) -> "PruneConfig":
        """This config with ``warm_start="auto"`` resolved for ``model_type`` (``"none"`` for baselines).

        Since issue 11's measurements ``"auto"`` is :data:`AUTO_WARM_START` on every model;
        ``model_type`` is where a model-dependent rule would read the model.
        """
        if self.is_baseline:
            return replace(self, warm_start="none")
        if self.warm_start == "auto":
            return replace(self, warm_start=AUTO_WARM_START)
        return self

    def for_device(self, device: torch.device | str, *, distributed: bool = False) -> "PruneConfig":
        """This config with ``tune_epochs="auto"`` resolved for blocks that run on ``device``
        (in several processes when ``distributed``): :data:`AUTO_TUNE_EPOCHS` where the
        tuning was measured inside 2× SparseGPT's prune time and lowered perplexity, else 0:
        solver methods in one process at 50% or less unstructured sparsity or N:M, with error
        correction and pruned block inputs, on a CUDA device (the whole block) or on a CPU
        whose tuning products run in bfloat16 (the MLP, :meth:`skipped_groups`)."""
        if self.tune_epochs != "auto":
            return self
        device = torch.device(device)
        where = device.type == "cuda" or (device.type == "cpu" and self.tune_autocast(device, torch.float32) is not None)
        tunes = (not self.is_baseline and where and not distributed
                 and not self.pattern_spec.unstructured_above_half and self.error_correction
                 and self.block_inputs == "pruned")
        return replace(self, tune_epochs=AUTO_TUNE_EPOCHS if tunes else 0)

    def skipped_groups(self, device: torch.device | str, n_groups: int) -> int:
        """The operator groups, of a block's ``n_groups``, that the tuning leaves as pruned:
        ``tune_skip_groups``, or for ``"auto"`` none on a CUDA device and all but the last two
        elsewhere (the MLP of a LLaMA, GPT-2 or OPT block; trained alone on its held inputs
        where it is a module of its own, :mod:`fistaopt.llm.block_tune`; on SmolLM2-135M on
        an AMX CPU an epoch costs about a third of SparseGPT's prune, the whole block's about
        one; docs/pruning.md)."""
        if self.tune_skip_groups != "auto":
            return int(self.tune_skip_groups)
        return 0 if torch.device(device).type == "cuda" else max(n_groups - 2, 0)

    def step_size(self, n_groups: int, skipped: int) -> float:
        """Adam's step size: ``tune_lr``, or for ``"auto"`` :data:`TUNE_LR` by what trains (the
        block's last two groups or fewer: ``"mlp"``, else ``"block"``)."""
        if self.tune_lr != "auto":
            return float(self.tune_lr)
        return TUNE_LR["mlp" if n_groups - skipped <= 2 else "block"]

    def tune_autocast(self, device: torch.device | str, dtype: torch.dtype) -> torch.dtype | None:
        """The dtype the block tuning's forward and backward products run in under
        ``torch.autocast`` on ``device`` for a block of ``dtype`` (None: no autocast, the
        block's own dtype): :attr:`tune_precision` resolved by the search's rule,
        :func:`fistaopt.layer.options.resolve_precision`."""
        return torch.bfloat16 if resolve_precision(self.tune_precision, device, dtype) == "bf16" else None

    def search_precision(self, device: torch.device | str) -> str | None:
        """What the layer's ``precision`` resolves to for the ℓ1 solver on the device the layer
        problems are solved on (the solver's ``device`` option, else ``device``) with their dtype
        (the solver's ``dtype``, else :attr:`stats_dtype`); None for baselines.  See
        :func:`fistaopt.layer.options.resolve_precision`."""
        if self.is_baseline:
            return None
        where = self.solver_options.get("device") or device
        dtype = self.solver_options.get("dtype") or STATS_DTYPES[self.stats_dtype]
        return resolve_precision(self.layer.precision, where, dtype)

    @property
    def damping(self) -> float:
        """The damping used: ``damp``, or :data:`DEFAULT_DAMP` for the method's kind and the
        pattern when None (solvers: ``solver_sparse`` for unstructured patterns above 50%)."""
        if self.damp is not None:
            return self.damp
        if self.is_baseline:
            return DEFAULT_DAMP["baseline"]
        pattern = self.pattern_spec
        return DEFAULT_DAMP["solver_sparse" if pattern.unstructured_above_half else "solver"]

    def for_operator(self, sparsity: float) -> "PruneConfig":
        """This config at an operator's own (allocated) ``sparsity``, the pattern's scope and
        the model's damping kept (the default damping follows the model's target sparsity,
        not each operator's)."""
        return replace(self, sparsity=sparsity, allocation="uniform", damp=self.damping)

    def settings(self) -> dict[str, Any]:
        """The config as plain JSON values (the report's settings), with the damping, the
        allocation rule and the rounds used."""
        out = {**asdict(self), "damp": self.damping, "allocation": self.allocation_rule}
        out["layer"]["rounds"] = self.layer.rounds_for(self.pattern_spec)
        return out

    # ------------------------------------------------------------------ model checks
    def check_widths(self, widths: Mapping[str, int]) -> None:
        """Refuse an N:M pattern whose ``M`` does not divide an operator's ``d_in``.

        ``widths`` maps an operator (or kind of operator) name to its input width.
        """
        pat = self.pattern_spec
        if pat.kind != "nm":
            return
        for name, d_in in widths.items():
            if int(d_in) % int(pat.m) != 0:
                raise ValueError(f"pattern {self.pattern!r} needs every d_in divisible by {pat.m}; "
                                 f"operator {name!r} has d_in = {d_in}")

    def check_blocks(self, n_blocks: int) -> list[int]:
        """The selected block indices, checked against a model with ``n_blocks`` blocks (and
        ``tune_blocks`` against them: only a pruned block can be tuned)."""
        if self.blocks is not None and self.blocks[-1] >= n_blocks:
            raise ValueError(f"blocks must be indices in [0, {n_blocks}), got {list(self.blocks)}")
        selected = list(range(n_blocks)) if self.blocks is None else list(self.blocks)
        if self.tune_blocks is not None:
            untuned = sorted(set(self.tune_blocks) - set(selected))
            if untuned and self.blocks is None:
                raise ValueError(f"tune_blocks must be indices in [0, {n_blocks}), got {list(self.tune_blocks)}")
            if untuned:
                raise ValueError(f"tune_blocks must be among the pruned blocks {selected}; "
                                 f"{untuned} {'is' if len(untuned) == 1 else 'are'} not")
        return selected

    def tunes(self, index: int) -> bool:
        """Whether block ``index``, once pruned, is tuned (``tune_epochs``, ``tune_blocks``)."""
        if self.tune_epochs == "auto":
            raise ValueError("tune_epochs='auto' is resolved by for_device before blocks are pruned")
        return self.tune_epochs > 0 and (self.tune_blocks is None or index in self.tune_blocks)

    def check_seqlen(self, seqlen: int) -> None:
        """Refuse ``skip_tokens`` that leave no token of a calibration sequence of ``seqlen``."""
        if self.skip_tokens >= seqlen:
            raise ValueError(f"skip_tokens={self.skip_tokens} leaves no token of the calibration sequences "
                             f"(seqlen {seqlen})")
