"""Checks that run before anything expensive: the model source, its widths, the input files.

The model's operator widths are read from its configuration alone (``config.json`` of
a folder, or the metadata of a GGUF file), so an N:M pattern that does not fit is
refused before the weights are loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fistaopt.cli.common import UsageError


def model_source(model: str | None) -> Path | str:
    """The model folder, GGUF file or cached hub id behind the ``MODEL`` argument."""
    from fistaopt.llm.loading import default_model_path, resolve_model_source

    try:
        return default_model_path() if model is None else resolve_model_source(model)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None


@dataclass(frozen=True)
class ModelShape:
    """What a model's configuration says about its operators: input widths and block count."""

    widths: dict[str, int]
    n_blocks: int | None


def _gguf_shape(path: Path) -> ModelShape:
    """Operator input widths and block count from the metadata of a GGUF file (llama-style keys)."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields

    def value(key: str) -> Any:
        field = fields.get(key)
        return None if field is None else field.contents()

    arch = value("general.architecture")
    hidden = value(f"{arch}.embedding_length")
    heads = value(f"{arch}.attention.head_count")
    head_dim = value(f"{arch}.attention.key_length") or (hidden // heads if hidden and heads else None)
    widths = {"hidden_size": hidden, "attention output (num_heads * head_dim)": heads * head_dim if heads and head_dim else None,
              "intermediate_size": value(f"{arch}.feed_forward_length")}
    blocks = value(f"{arch}.block_count")
    return ModelShape({k: int(v) for k, v in widths.items() if isinstance(v, int) and v > 0},
                      int(blocks) if isinstance(blocks, int) else None)


def model_shape(source: Path | str) -> ModelShape:
    """The model's operator widths and block count, from its configuration only (no weights)."""
    from fistaopt.llm.model import config_widths

    if isinstance(source, Path) and source.suffix.lower() == ".gguf":
        try:
            return _gguf_shape(source)
        except Exception as e:  # noqa: BLE001 - an unreadable file is a usage error, in one line
            raise UsageError(f"cannot read GGUF metadata of {source}: {str(e).splitlines()[0]}") from None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the model configuration of {source}: {str(e).splitlines()[0]}") from None
    blocks = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    return ModelShape(config_widths(config), int(blocks) if blocks else None)


def text_file(path: str | os.PathLike[str] | None, option: str) -> Path | None:
    """``path`` as a readable regular file (None passes through), else a usage error naming ``option``."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{option}: no such file: {p}")
    if not p.is_file():
        raise UsageError(f"{option}: {p} is not a regular file")
    return p


def load_model(source: Path | str, *, progress: bool = True) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in float32 on the CPU; loading failures become usage errors.

    ``progress=False`` also silences the progress bars of ``transformers`` (for this process).
    """
    import torch
    from transformers.utils import logging as hf_logging

    from fistaopt.llm.loading import load_model as load

    if not progress:
        hf_logging.disable_progress_bar()

    try:
        return load(source, dtype=torch.float32)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"cannot load model {str(source)!r}: {str(e).splitlines()[0]}") from None
