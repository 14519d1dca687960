"""A small multiple-choice task in lm-evaluation-harness's YAML format, written by us.

These machines reach no dataset hub, so zero-shot evaluation is tested (and can be
demonstrated) on a task whose data the project generates itself: ``fistaopt_arith``,
48 questions "What is a plus b?" with four numeric choices, one of them the sum.
The items are a pure function of a fixed seed, so every run sees the same data.

:func:`write_local_task` writes two files into a folder:

- ``fistaopt_arith.jsonl``: one item per line, ``{"question", "choices", "label"}``;
- ``fistaopt_arith.yaml``: the task definition (``output_type: multiple_choice``,
  metrics ``acc`` and ``acc_norm``), whose ``data_files`` points at the JSONL file by
  absolute path (``datasets`` resolves relative paths against the working directory,
  not the YAML file).

The folder is then passed to lm-eval as ``include_path``; :func:`fistaopt.llm.zeroshot.zero_shot`
does that by itself when the task name is requested.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

LOCAL_TASK = "fistaopt_arith"
N_ITEMS = 48
N_CHOICES = 4
SEED = 1234


def local_task_items(n_items: int = N_ITEMS, seed: int = SEED) -> list[dict[str, Any]]:
    """The task's items: ``{"question": str, "choices": list[str] (4), "label": int}``.

    Deterministic in ``(n_items, seed)``; the correct sum sits at a uniformly drawn
    position, the three distractors are distinct nearby wrong sums.
    """
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise ValueError(f"n_items must be a positive int, got {n_items!r}")
    rng = random.Random(seed)
    items = []
    for _ in range(n_items):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        answer = a + b
        wrong = rng.sample([answer + d for d in (-3, -2, -1, 1, 2, 3, 10) if answer + d > 0], N_CHOICES - 1)
        label = rng.randrange(N_CHOICES)
        choices = [str(w) for w in wrong]
        choices.insert(label, str(answer))
        items.append({"question": f"What is {a} plus {b}?", "choices": choices, "label": label})
    return items


def _task_yaml(data_file: Path) -> str:
    # JSON strings are valid YAML scalars: json.dumps quotes the path and the templates safely.
    return "\n".join([
        f"task: {LOCAL_TASK}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data_file))}",
        "output_type: multiple_choice",
        "test_split: test",
        f"doc_to_text: {json.dumps('Question: {{question}}' + chr(10) + 'Answer:')}",
        'doc_to_choice: "{{choices}}"',
        'doc_to_target: "{{label}}"',
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "  - metric: acc_norm",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
        "",
    ])


def write_local_task(folder: str | os.PathLike[str]) -> Path:
    """Write ``fistaopt_arith.{jsonl,yaml}`` into ``folder`` (created if needed); return the folder.

    Pass the returned folder to lm-eval as ``include_path``.
    """
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data_file = folder / f"{LOCAL_TASK}.jsonl"
    data_file.write_text("".join(json.dumps(item) + "\n" for item in local_task_items()))
    (folder / f"{LOCAL_TASK}.yaml").write_text(_task_yaml(data_file))
    return folder
