"""``--tasks``: zero-shot accuracy through lm-evaluation-harness, shared by ``eval`` and ``prune``.

The options are checked before anything is loaded (:func:`check_zero_shot`: the ``eval``
extra is installed, the task names exist); the scores come from
:func:`fistaopt.llm.zeroshot.zero_shot` on the model in memory.
"""

from __future__ import annotations

import argparse
from typing import Any

from fistaopt.cli.common import UsageError, positive_int


def _task_list(text: str) -> list[str]:
    from fistaopt.llm.zeroshot import ZeroShotError, parse_tasks

    try:
        return parse_tasks(text)
    except ZeroShotError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_zero_shot_arguments(p: argparse.ArgumentParser) -> None:
    """``--tasks`` and its options."""
    p.add_argument("--tasks", type=_task_list, default=None,
                   help="lm-eval tasks for zero-shot accuracy, comma-separated, e.g. arc_easy,hellaswag "
                        "(needs pip install 'fistaopt[eval]'; fistaopt_arith is built in and needs no download)")
    p.add_argument("--include-path", default=None, help="folder of extra lm-eval task YAML files")
    p.add_argument("--tasks-limit", type=positive_int, default=None, help="items per task (a smoke test, not a score)")
    p.add_argument("--tasks-batch-size", type=positive_int, default=8, help="sequences per forward in lm-eval")


def check_zero_shot(args: argparse.Namespace) -> None:
    """Before loading anything: the extra is installed, the task names and ``--include-path`` exist."""
    if not args.tasks:
        return
    from fistaopt.llm.zeroshot import ZeroShotError, check_tasks

    try:
        check_tasks(args.tasks, args.include_path)
    except ZeroShotError as e:
        raise UsageError(f"--tasks: {e}") from None


def zero_shot_scores(model: Any, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    """Zero-shot scores of the model in memory on ``--tasks`` (None without ``--tasks``)."""
    if not args.tasks:
        return None
    from fistaopt.llm.zeroshot import ZeroShotError, zero_shot

    try:
        return zero_shot(model, tokenizer, args.tasks, include_path=args.include_path,
                         batch_size=args.tasks_batch_size, limit=args.tasks_limit, device=args.device)
    except ZeroShotError as e:
        raise UsageError(f"--tasks: {e}") from None


def zero_shot_rows(scores: dict[str, Any] | None, label: str = "") -> list[tuple[str, str]]:
    """Table rows ``(task acc, value ± stderr)`` of :func:`zero_shot_scores`."""
    rows = []
    for task, row in (scores or {}).get("tasks", {}).items():
        if row.get("acc") is not None:
            err = row.get("acc_stderr")
            rows.append((f"{task} acc{label}", f"{row['acc']:.4f}" + (f" ± {err:.4f}" if err is not None else "")))
    return rows
