"""The results tables of README.md and docs/pruning.md, generated from one prune_quality JSON.

    python benchmarks/quality_table.py docs/results/quality-smollm2.json README.md docs/pruning.md

rewrites, in each file, what lies between ``<!-- quality-table:start -->`` and
``<!-- quality-table:end -->`` (each marker exactly once, on its own line): a WikiText-2
table and a held-out-articles table (method × pattern, perplexity; ``mean ± std`` over the
calibration seeds where a row ran several; the best pruned mean of each column in bold),
prune seconds per pattern, the protocol, and the exact command that reproduces it.
Without files it prints the block.  ``--name NAME`` uses the markers
``<!-- quality-table-NAME:start -->`` / ``<!-- quality-table-NAME:end -->`` instead, for a
second table from another invocation in the same files.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence

from fistaopt import _io

START = "<!-- quality-table:start -->"
END = "<!-- quality-table:end -->"
#: the files the main table is written into (the reproducing command's default)
FILES = ("README.md", "docs/pruning.md")
TEXT_TITLES = {"wikitext2": "WikiText-2", "heldout": "the held-out Wikipedia articles, never calibrated on"}


def markers(name: str | None = None) -> tuple[str, str]:
    """The start and end markers of the block called ``name`` (None: the main table)."""
    if name is None:
        return START, END
    return f"<!-- quality-table-{name}:start -->", f"<!-- quality-table-{name}:end -->"


def patterns_of(rows: list[dict]) -> list[str]:
    """The pruning patterns in first-seen order (the dense row's ``-`` is not one)."""
    return list(dict.fromkeys(r["pattern"] for r in rows if r["method"] != "dense"))


def methods_of(rows: list[dict]) -> list[str]:
    """The methods in first-seen order, dense first when present."""
    return list(dict.fromkeys(r["method"] for r in rows))


def cell(stats: dict | None, bold: bool = False, digits: int = 2) -> str:
    """``59.46``, or ``59.46 ± 0.31`` when the row ran several seeds; ``–`` when missing."""
    if stats is None:
        return "–"
    text = f"{stats['mean']:.{digits}f}"
    if stats.get("n", 1) > 1 and stats.get("std") is not None:
        text += f" ± {stats['std']:.{digits}f}"
    return f"**{text}**" if bold else text


def lookup(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """``(method, pattern) → row``; the dense row stands in every pattern."""
    table = {}
    patterns = patterns_of(rows)
    for r in rows:
        for p in patterns if r["method"] == "dense" else [r["pattern"]]:
            table[(r["method"], p)] = r
    return table


def perplexity_table(rows: list[dict], text: str) -> list[str]:
    """One markdown table: method × pattern perplexity on ``text``, then prune seconds per pattern."""
    patterns, methods, table = patterns_of(rows), methods_of(rows), lookup(rows)
    key = f"ppl_{text}"
    best = {}
    for p in patterns:
        pruned = [table[(m, p)]["summary"][key]["mean"] for m in methods if m != "dense" and (m, p) in table]
        best[p] = min(pruned) if pruned else None
    head = ["method", *patterns, f"prune s ({' / '.join(patterns)})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [m]
        for p in patterns:
            stats = table[(m, p)]["summary"][key] if (m, p) in table else None
            cells.append(cell(stats, bold=m != "dense" and stats is not None and stats["mean"] == best[p]))
        seconds = [table[(m, p)]["summary"]["prune_seconds"]["mean"] if (m, p) in table else None for p in patterns]
        cells.append("–" if m == "dense" else " / ".join("–" if s is None else f"{s:.0f}" for s in seconds))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(result: dict, source: str | None = None, name: str | None = None,
           files: Sequence[str] = FILES) -> str:
    """The generated block (no markers): both tables, the protocol and the reproducing command
    (which rewrites ``files``)."""
    rows, proto = result["rows"], result["protocol"]
    out = []
    for text, title in TEXT_TITLES.items():
        out += [f"Perplexity on {title} ({proto['evaluation'][text]}):", "", *perplexity_table(rows, text), ""]
    seeded = sorted({f"{r['method']}@{r['pattern']}" for r in rows if len(r["seeds"]) > 1})
    if seeded:
        seeds = ", ".join(str(s) for s in max((r["seeds"] for r in rows), key=len))
        out.append(f"`mean ± std` over calibration seeds {seeds} for {', '.join(seeded)} "
                   "(min and max in the JSON); one seed (the first) elsewhere.")
    load = ", ".join(f"{a:.1f}→{b:.1f}" for a, b in zip(proto["loadavg_start"], proto["loadavg_end"]))
    out.append(f"Model {proto['model']}; calibration {proto['calibration']}; {proto['jobs']} worker process(es) "
               f"× {proto['threads']} thread(s) on {proto['cpu_count']} CPUs, load average (1/5/15 min) {load}; "
               f"blocks {proto['blocks']}.")
    where = f" (JSON: `{source}`)" if source else ""
    out += ["", f"Reproduce{where}:", "", "```bash", proto["command"],
            shlex.join(["python", "benchmarks/quality_table.py", source or "RESULT.json", *files,
                        *([] if name is None else ["--name", name])]), "```"]
    return "\n".join(out) + "\n"


def replace_block(document: str, block: str, name: str = "the document", table: str | None = None) -> str:
    """``document`` with the text between the markers of ``table`` (:func:`markers`) replaced by ``block``."""
    start, end = markers(table)
    starts, ends = document.count(start), document.count(end)
    if starts != 1 or ends != 1:
        raise ValueError(f"{name} must hold {start} and {end} once each; found {starts} and {ends}")
    head, rest = document.split(start)
    if end not in rest:
        raise ValueError(f"{name}: {end} comes before {start}")
    _, tail = rest.split(end)
    return f"{head}{start}\n{block.rstrip()}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", help="JSON written by benchmarks/prune_quality.py --out")
    ap.add_argument("files", nargs="*", help="markdown files to rewrite between the markers")
    ap.add_argument("--name", default=None, help="the markers quality-table-NAME:start/end (default: quality-table)")
    args = ap.parse_args(argv)
    if args.name is not None and not args.name.replace("-", "").isalnum():
        ap.error(f"--name must be letters, digits and '-', got {args.name!r}")
    result = json.loads(Path(args.result).read_text(encoding="utf-8"))
    block = render(result, source=args.result, name=args.name, files=args.files or FILES)
    if not args.files:
        sys.stdout.write(block)
    rewritten = {name: replace_block(Path(name).read_text(encoding="utf-8"), block, name, args.name)
                 for name in args.files}
    for name, text in rewritten.items():  # every file checked before any is written
        _io.write_text(Path(name), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
