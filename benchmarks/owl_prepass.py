"""OWL's dense pre-pass: its seconds and block sparsities for several ``owl_windows``.

Times :func:`fistaopt.llm.allocation.plan_allocation` on SmolLM2 (or ``--model``) with
the benchmark protocol's calibration (``--nsamples`` windows of ``--seqlen`` tokens of the
non-held-out articles, seed 0), once per ``--windows`` value (``all`` = every window), and
prints one JSON line each: the seconds and the per-block target sparsities::

    python benchmarks/owl_prepass.py --sparsity 0.7 --windows all,8 --threads 1

The seconds depend on the machine's load; run it alone.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def parse_windows(text: str) -> list[int | None]:
    """``"all,8"`` → ``[None, 8]`` (one-line ValueError on anything else)."""
    out: list[int | None] = []
    for item in text.split(","):
        item = item.strip()
        if item == "all":
            out.append(None)
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise ValueError(f"--windows entries are 'all' or a positive int, got {item!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF folder or GGUF file (default: SmolLM2-135M)")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", default="all,8", help="owl_windows values, comma-separated ('all' = every window)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        windows = parse_windows(args.windows)
    except ValueError as e:
        ap.error(str(e))

    from fistaopt import llm
    from fistaopt.llm.allocation import plan_allocation
    from fistaopt.llm.capture import calibration_batches, capture_block_inputs
    from fistaopt.llm.model import find_blocks

    torch.set_num_threads(args.threads)
    model, tok = llm.load_model(args.model)
    calib = llm.calibration_tokens(tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=0, heldout=True)
    _, blocks = find_blocks(model)
    for w in windows:
        config = llm.PruneConfig(method="fista", sparsity=args.sparsity, allocation="owl", owl_windows=w)
        config = config.for_model(model.config.model_type)
        inputs = capture_block_inputs(model, calibration_batches(calib, config.batch_size, model))
        t0 = time.perf_counter()
        allocation = plan_allocation(blocks, inputs, list(range(len(blocks))), config, torch.device("cpu"))
        seconds = time.perf_counter() - t0
        assert allocation is not None
        print(json.dumps({"owl_windows": w, "windows_counted": allocation.info["owl_windows"],
                          "seconds": round(seconds, 1), "threads": args.threads,
                          "block_targets": [round(b["target"], 4) for b in allocation.to_dict()["blocks"]]}),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
