"""``fistaopt eval``: the perplexity of a model; and the evaluation step ``prune`` shares."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fistaopt.cli.common import UsageError, add_model_arguments, positive_int, set_threads, table
from fistaopt.cli.preflight import load_model, model_source, text_file
from fistaopt.cli.zeroshot import add_zero_shot_arguments, check_zero_shot, zero_shot_rows, zero_shot_scores

EPILOG = """examples:
  fistaopt eval                                   # the default model on WikiText-2
  fistaopt eval out/smollm2-fista-50 --seqlen 512 --max-tokens 16384 --json
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    e = sub.add_parser("eval", help="perplexity of a model", description="Perplexity on non-overlapping windows.",
                       epilog=EPILOG)
    add_model_arguments(e)
    e.add_argument("--seqlen", type=positive_int, default=512, help="evaluation window (tokens)")
    e.add_argument("--max-tokens", type=positive_int, default=None, help="use only the first tokens (default: all)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    add_zero_shot_arguments(e)
    e.set_defaults(func=run)
    return e


def evaluation_tokens(tokenizer: Any, path: Path | None) -> Any:
    """The evaluation text (default: the shipped WikiText-2 test) as token ids."""
    from fistaopt.llm.data import evaluation_tokens as tokens

    try:
        return tokens(tokenizer, path)
    except (FileNotFoundError, UnicodeDecodeError) as e:
        raise UsageError(f"--eval-text: {str(e).splitlines()[0]}") from None


def resolve_bos(tokenizer: Any, bos: str) -> int | None:
    """The BOS id every window starts with under ``--bos`` (None: no BOS), or a usage error."""
    from fistaopt.llm.data import bos_token_id

    try:
        return bos_token_id(tokenizer, bos)
    except ValueError as e:
        raise UsageError(f"--bos: {e}") from None


def measure(model: Any, tokenizer: Any, tokens: Any, seqlen: int, max_tokens: int | None, device: str | None,
            bos: str, progress: bool) -> dict[str, Any]:
    """Perplexity (with seconds) under the BOS rule ``bos``, as a plain dict."""
    from fistaopt.llm.evaluate import perplexity

    bos_id = resolve_bos(tokenizer, bos)
    t0 = time.perf_counter()
    try:
        res = perplexity(model, tokens, seqlen=seqlen, max_tokens=max_tokens, device=device, progress=progress,
                         bos_token_id=bos_id)
    except ValueError as e:  # e.g. a text shorter than one window
        raise UsageError(f"evaluation: {e}") from None
    return {**res.to_dict(), "bos_token_id": bos_id, "seconds": time.perf_counter() - t0}


def run(args: argparse.Namespace) -> int:
    """Body of ``fistaopt eval``; returns the exit code."""
    if args.max_tokens is not None and args.max_tokens < args.seqlen:
        raise UsageError(f"--max-tokens ({args.max_tokens}) must be at least --seqlen ({args.seqlen})")
    eval_text = text_file(args.eval_text, "--eval-text")
    check_zero_shot(args)
    source = model_source(args.model)
    set_threads(args.threads)
    model, tokenizer = load_model(source, progress=not args.no_progress)
    ids = evaluation_tokens(tokenizer, eval_text)
    res = measure(model, tokenizer, ids, args.seqlen, args.max_tokens, args.device, args.bos, not args.no_progress)
    model.to("cpu")
    scores = zero_shot_scores(model, tokenizer, args)
    if scores is not None:
        res["zero_shot"] = scores
    if args.json:
        print(json.dumps(res))
    else:
        print(table([("perplexity", f"{res['ppl']:.3f}"), ("predicted tokens", str(res["n_tokens"])),
                     ("seqlen", str(res["seqlen"])), ("seconds", f"{res['seconds']:.1f}"), *zero_shot_rows(scores)]))
    return 0
