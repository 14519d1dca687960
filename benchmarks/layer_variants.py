"""Layer prune variants on real operators: capture once, then compare settings per operator.

Step 1 (``capture``) runs the default prune of SmolLM2 (or ``--model``) up to the last
block asked for and saves, for every operator of those blocks, its dense weight ``W0``
and the streamed statistics it was pruned from (``H = X*ᵀX*``, ``C = XᵀX*`` and ``D = XᵀX``
or its rows of ``c = ‖XW₀ᵀ‖²``, or for an operator with streamed targets its rows of
``G = YᵀX*`` and ``c = ‖Y‖²``; the token count), as they were with the default settings (error correction, pruned
block inputs)::

    python benchmarks/layer_variants.py capture --blocks 3 --sparsity 0.5 --out runs/ops50

Step 2 (``compare``) prunes every saved operator with each variant (``NAME=SPEC``, a
spec in fistaopt's one syntax: ``fista[refit_iter=10]``, ``sparsegpt``...; options are
:class:`fistaopt.llm.PruneConfig` fields and layer options) and prints, per variant,
the mean relative error ``‖X*Wᵀ − XW₀ᵀ‖² / ‖XW₀ᵀ‖²`` over the operators, each
operator's error and the seconds::

    python benchmarks/layer_variants.py compare runs/ops50 --pattern 50% \\
        'default=fista' 'refit10=fista[refit_iter=10]' 'sparsegpt=sparsegpt'

Every variant is deterministic; the seconds depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fistaopt.problems import LayerStatsAccumulator
from fistaopt.problems.accumulate import OperatorStats
from fistaopt.study.specs import Spec


def capture(args: argparse.Namespace) -> int:
    """Prune blocks ``0..max(blocks)`` with the default settings, saving the chosen blocks' operators."""
    from fistaopt import llm
    from fistaopt.llm import block as block_module
    from fistaopt.llm.model import model_operators

    model, tok = llm.load_model(args.model)
    calib = llm.calibration_tokens(tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    wanted = {int(b) for b in args.blocks.split(",")}
    owners = [(i, op.name) for i, groups in enumerate(model_operators(model)) for g in groups for op in g]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inner, calls = block_module.prune_weight_sharded, iter(owners)

    def recording(comm, W0, stats, config):  # same signature as distributed.prune_weight_sharded
        index, name = next(calls)
        if index in wanted:
            if isinstance(stats, OperatorStats) and stats.G is not None:  # streamed targets: G and c of its rows
                sums = {"G": stats.G, "c": stats.c}
            elif isinstance(stats, OperatorStats):  # C, and c from the dense forward: its rows
                sums = {"C": stats.C, "c": stats.c}
            else:
                sums = {"C": stats.C, "D": stats.D}
            torch.save({"W0": W0, "H": stats.H, **sums, "n_tokens": stats.n_tokens,
                        "block": index, "name": name}, out / f"block{index:02d}.{name}.pt")
        return inner(comm, W0, stats, config)

    block_module.prune_weight_sharded = recording
    try:
        llm.prune(model, calib, sparsity=args.sparsity, blocks=list(range(max(wanted) + 1)), progress=False)
    finally:
        block_module.prune_weight_sharded = inner
    print(json.dumps({"saved": sorted(p.name for p in out.glob("*.pt"))}))
    return 0


def load_operator(path: Path) -> tuple[torch.Tensor, LayerStatsAccumulator | OperatorStats, str]:
    """``(W0, statistics, name)`` of one saved operator."""
    saved = torch.load(path)
    W0, H = saved["W0"], saved["H"]
    targets = [W0] if "G" in saved else None
    rows = [W0.shape[0]] if "G" not in saved and "c" in saved else None
    acc = LayerStatsAccumulator(H.shape[0], dtype=H.dtype, targets=targets, output_rows=rows)
    acc.H, acc.n_tokens = H, saved["n_tokens"]
    if targets is not None:
        acc.G, acc.c = saved["G"], saved["c"]
    elif rows is not None:
        acc.C, acc.c = saved["C"], saved["c"]
    else:
        acc.C, acc.D = saved["C"], saved["D"]
    return W0, acc.for_operator(0), f"block{saved['block']:02d}.{saved['name']}"


def compare(args: argparse.Namespace) -> int:
    """Each variant on every saved operator: mean and per-operator relative errors, seconds."""
    from fistaopt.llm.config import PruneConfig
    from fistaopt.llm.methods import prune_weight

    paths = sorted(Path(args.folder).glob("*.pt"))
    if not paths:
        raise SystemExit(f"error: no saved operators (*.pt) in {args.folder}; run the capture step first")
    operators = [load_operator(p) for p in paths]
    pattern = {"sparsity": float(args.pattern[:-1]) / 100} if args.pattern.endswith("%") else {"pattern": args.pattern}
    for item in args.variants:
        label, _, text = item.partition("=")
        spec = Spec.parse(text or label)
        config = PruneConfig.build(None, method=spec.name, **pattern, **spec.options).for_model(args.model_type)
        errors, seconds = {}, 0.0
        for W0, stats, name in operators:
            t0 = time.perf_counter()
            errors[name] = prune_weight(config.method, W0, stats, config).rel_error
            seconds += time.perf_counter() - t0
        print(json.dumps({"variant": label, "spec": spec.label, "pattern": args.pattern, "seconds": round(seconds, 2),
                          "mean_rel_error": sum(errors.values()) / len(errors), "rel_error": errors}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    cap = sub.add_parser("capture", help="prune with the defaults and save the chosen blocks' operators")
    cap.add_argument("--model", default=None, help="HF folder or GGUF file (default: SmolLM2-135M)")
    cap.add_argument("--blocks", required=True, help="comma-separated block indices, e.g. 3,11")
    cap.add_argument("--sparsity", type=float, default=0.5)
    cap.add_argument("--nsamples", type=int, default=32)
    cap.add_argument("--seqlen", type=int, default=512)
    cap.add_argument("--seed", type=int, default=0)
    cap.add_argument("--out", required=True, help="folder for the saved operators")
    cmp_ = sub.add_parser("compare", help="prune the saved operators with each variant")
    cmp_.add_argument("folder")
    cmp_.add_argument("variants", nargs="+", help="NAME=SPEC, e.g. refit10=fista[refit_iter=10]")
    cmp_.add_argument("--pattern", default="50%", help="50%% (unstructured) or N:M")
    cmp_.add_argument("--model-type", default="llama", help="resolves warm_start='auto' (docs/pruning.md)")
    cmp_.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(getattr(args, "threads", 1))
    return capture(args) if args.step == "capture" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
