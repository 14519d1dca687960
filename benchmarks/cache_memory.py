"""What error correction's caches cost: peak memory and seconds of a prune per ``cache_bytes``.

Prunes the ``--blocks`` decoder blocks of SmolLM2 (or ``--model``) with the benchmark
protocol's calibration (``--nsamples`` windows of ``--seqlen`` tokens of the non-held-out
articles, seed 0), once per ``--cache-gib`` value, each in a fresh process (so each peak is
its own), and prints one JSON line per value: the prune's seconds, the process's peak
resident memory before and after the prune, and whether the weights equal the first
value's (they must: the caches only save forwards)::

    python benchmarks/cache_memory.py --nsamples 128 --blocks 0-1 --cache-gib default,0,1

``default`` is ``cache_bytes=None`` (4 GiB of paused forwards and 1 GiB of dense inputs on
the CPU).  The seconds depend on the machine's load; run it alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import resource
import time

from fistaopt.cli.common import block_list


def parse_budgets(text: str) -> list[float | None]:
    """``"default,0,1.5"`` → ``[None, 0.0, 1.5]`` (one-line ValueError on anything else)."""
    out: list[float | None] = []
    for item in text.split(","):
        item = item.strip()
        if item == "default":
            out.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            value = -1.0
        if not value >= 0:
            raise ValueError(f"--cache-gib entries are 'default' or a number of GiB >= 0, got {item!r}")
        out.append(value)
    return out


def one_prune(args: argparse.Namespace, gib: float | None) -> dict:
    """Run in a fresh process: load, prune the blocks with this cache budget, report."""
    import torch

    from fistaopt import llm

    torch.set_num_threads(args.threads)
    model, tok = llm.load_model(args.model)
    calib = llm.calibration_tokens(tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=0, heldout=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cache_bytes = None if gib is None else int(gib * 2**30)
    t0 = time.perf_counter()
    llm.prune(model, calib, method=args.method, sparsity=args.sparsity, blocks=args.blocks, progress=False,
              cache_bytes=cache_bytes)
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(p.detach().contiguous().numpy().tobytes())
    return {"cache_gib": "default" if gib is None else gib, "prune_seconds": round(seconds, 1),
            "peak_rss_gib_before_prune": round(before / 2**20, 3),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "weights_sha256": digest.hexdigest()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF folder or GGUF file (default: SmolLM2-135M)")
    ap.add_argument("--method", default="fista")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--blocks", type=block_list, default=[0, 1], help="the blocks to prune, e.g. 0-1 or 0,2,5")
    ap.add_argument("--cache-gib", default="default,0", help="cache_bytes values in GiB, comma-separated")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        budgets = parse_budgets(args.cache_gib)
    except ValueError as e:
        ap.error(str(e))
    ctx = mp.get_context("spawn")
    first = None
    for gib in budgets:
        with ctx.Pool(1) as pool:
            row = pool.apply(one_prune, (args, gib))
        first = first or row["weights_sha256"]
        row["same_weights_as_first"] = row["weights_sha256"] == first
        row.update(nsamples=args.nsamples, seqlen=args.seqlen, blocks=args.blocks, method=args.method,
                   sparsity=args.sparsity, threads=args.threads)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
