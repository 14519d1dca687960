"""Reference rows from llm-compressor: its SparseGPT and Wanda on the benchmark's own windows.

``benchmarks/prune_quality.py`` runs a method named ``llmcompressor-sparsegpt`` or
``llmcompressor-wanda`` through llm-compressor's ``oneshot`` (``SparseGPTModifier`` /
``WandaPruningModifier``, every ``Linear`` but ``lm_head``, its sequential pipeline: each
block calibrated on the outputs of the blocks already pruned) with the same calibration
windows, in their order, as every other row, and scores it with the same perplexity code.
So the row says whether our SparseGPT and Wanda match the tool users would pick instead.

llm-compressor is an optional dependency of this benchmark, never of the package: install
it into a benchmark environment (``python -m venv .venv-bench && .venv-bench/bin/pip install
torch==2.13.0 -e . llmcompressor``). Options in brackets go to the modifier as they are
(``llmcompressor-sparsegpt[dampening_frac=0.1]``); its OWL profile
(``[sparsity_profile=owl,owl_m=5,owl_lmbda=0.08]``) fails in 0.14.0.1 with "Cannot invoke
event before initializing" (docs/pruning.md, "Against llm-compressor").
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping

import torch

from fistaopt.sparsity import parse_pattern

PREFIX = "llmcompressor-"
#: the row name's algorithm → llm-compressor's modifier class
MODIFIERS = {"sparsegpt": "SparseGPTModifier", "wanda": "WandaPruningModifier"}


def is_external(name: str) -> bool:
    """Whether a method name is an llm-compressor row (``llmcompressor-…``)."""
    return name.startswith(PREFIX)


def installed() -> bool:
    """Whether llm-compressor can be imported here (without importing it)."""
    return importlib.util.find_spec("llmcompressor") is not None


def check(rows: list[tuple[Any, Mapping[str, Any]]]) -> None:
    """Refuse, in one line and before any work, an llm-compressor row that cannot run here.

    ``rows`` are (method :class:`fistaopt.study.specs.Spec`, ``pattern_args``) pairs; the
    others are skipped.  Each llm-compressor row's modifier is built once, so a bad option
    fails here rather than in a worker halfway through the run.

    Raises:
        ValueError: an unknown algorithm after the prefix, llm-compressor not installed, or
            options its modifier refuses.
    """
    external = [(spec, pattern) for spec, pattern in rows if is_external(spec.name)]
    for spec, _ in external:
        if spec.name[len(PREFIX):] not in MODIFIERS:
            raise ValueError(f"method {spec.label!r}: llm-compressor rows are "
                             f"{', '.join(PREFIX + a for a in MODIFIERS)}")
    if external and not installed():
        raise ValueError(f"method {external[0][0].label!r} needs llmcompressor in this environment (an "
                         "optional benchmark dependency: pip install llmcompressor into a benchmark venv)")
    for spec, pattern in external:
        try:
            modifier(spec.name, pattern, spec.options)
        except Exception as e:  # pydantic's ValidationError, or a TypeError for an unknown field
            reason = " ".join(str(e).split())
            raise ValueError(f"method {spec.label!r}: llm-compressor refuses its options: {reason}") from None


def mask_structure(pattern: Mapping[str, Any]) -> tuple[float, str]:
    """``prune_quality.pattern_args`` output → llm-compressor's ``sparsity`` and ``mask_structure``."""
    spec = parse_pattern(**pattern)
    return spec.sparsity, f"{spec.n}:{spec.m}" if spec.kind == "nm" else "0:0"


def quiet() -> None:
    """llm-compressor logs to stdout (where prune_quality prints its JSON), from its import on
    and three lines per operator: errors only, unless the environment says otherwise (its switch
    ``LLM_COMPRESSOR_LOG_DISABLED`` breaks 0.14, whose METRIC level is then never registered)."""
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")


def modifier(name: str, pattern: Mapping[str, Any], options: Mapping[str, Any]) -> Any:
    """llm-compressor's modifier for the row ``name`` at ``pattern``: every ``Linear`` but
    ``lm_head``, with ``options`` on top."""
    quiet()
    from llmcompressor.modifiers import pruning

    sparsity, structure = mask_structure(pattern)
    return getattr(pruning, MODIFIERS[name[len(PREFIX):]])(
        **{"sparsity": sparsity, "mask_structure": structure, "targets": ["Linear"],
           "ignore": ["re:.*lm_head"], **options})


def prune(model: torch.nn.Module, windows: torch.Tensor, name: str, pattern: Mapping[str, Any],
          options: Mapping[str, Any]) -> float:
    """Prune ``model`` in place with llm-compressor's ``name`` algorithm on ``windows``
    ``(nsamples, seqlen)`` token ids, unshuffled, one window per calibration batch; return the
    fraction of zeros in the linear weights it targeted (all but ``lm_head``)."""
    from datasets import Dataset

    recipe = modifier(name, pattern, options)  # first: it quiets llm-compressor before its import
    from llmcompressor import oneshot

    ids = windows.tolist()
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(w) for w in ids]})
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=len(ids),
            max_seq_length=int(windows.shape[1]), shuffle_calibration_samples=False)
    weights = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
