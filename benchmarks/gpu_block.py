"""Seconds and peak device memory of one LLaMA-class decoder block pruned on a GPU; prints JSON.

The figures docs/scaling.md predicts for a GPU, measured: a model with the block shapes
of LLaMA-2-7B (hidden 4096, MLP 11008, 32 heads) or 13B (5120, 13824, 40 heads) and
``--layers`` decoder blocks, randomly initialised (the prune's time depends on the
shapes and the iteration counts, not on what the weights learnt), is pruned by
:func:`fistaopt.llm.prune` at 50% with each of ``--methods`` on the same random
calibration tokens (``--nsamples × --seqlen``, default the paper's 128 × 2048).  Per
method: the prune's wall seconds (``totals.wall_seconds``), seconds per block, the
solve seconds per operator (``records[].seconds``), the peak device memory per block,
and the seconds per block docs/scaling.md's time model predicts for the same shapes at
``--tflops`` sustained.

    python benchmarks/gpu_block.py --preset llama-7b --out docs/results/gpu-block-llama-7b.json
    python benchmarks/gpu_block.py --preset tiny --device cpu      # a CPU check of the script
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fistaopt import _io, llm  # noqa: E402
from fistaopt.study.specs import Spec, split_specs  # noqa: E402

PRESETS = {  # hidden, MLP, heads, key/value heads
    "llama-7b": (4096, 11008, 32, 32),
    "llama-13b": (5120, 13824, 40, 40),
    "tiny": (256, 688, 8, 8),
}


def build_model(preset: str, layers: int, vocab: int, seed: int) -> torch.nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` with ``preset``'s block shapes, float32, on the CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d, f, heads, kv = PRESETS[preset]
    config = LlamaConfig(hidden_size=d, intermediate_size=f, num_attention_heads=heads,
                         num_key_value_heads=kv, num_hidden_layers=layers, vocab_size=vocab,
                         max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float().eval()


def predicted_block_seconds(d: int, f: int, n_tokens: int, tflops: float, paused: bool) -> dict[str, float]:
    """docs/scaling.md's time model for one block: statistics, forwards and FISTA's solve (K = 65)."""
    params = 4 * d * d + 3 * d * f
    stats = 2 * n_tokens * (d * d + 2 * 3 * d * d + f * f + 2 * d * f)
    forwards = 2 * params * n_tokens * (2 if paused else 4)
    ops = [(d, d)] * 4 + [(f, d)] * 2 + [(d, f)]
    solve = 2 * 65 * sum(o * i * i for o, i in ops)
    return {"statistics_and_forwards": (stats + forwards) / (tflops * 1e12),
            "fista_solve": solve / (tflops * 1e12),
            "fista_total": (stats + forwards + solve) / (tflops * 1e12)}


def run_method(model: torch.nn.Module, calib: torch.Tensor, spec: Spec, args: argparse.Namespace) -> dict:
    """Prune a fresh copy of ``model`` with the method ``spec``; seconds, memory and per-operator solve seconds."""
    work = copy.deepcopy(model)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    report = llm.prune(work, calib, method=spec.name, sparsity=0.5, device=args.device,
                       batch_size=args.batch_size, progress=False, **spec.options)
    wall = time.perf_counter() - t0
    totals = report.totals
    peaks = totals.get("peak_device_bytes_per_block", {})
    per_op: dict[str, float] = {}
    for r in report.records:
        per_op[r.name] = per_op.get(r.name, 0.0) + r.seconds / args.layers
    return {
        "method": spec.label, "wall_seconds": round(wall, 2),
        "prune_wall_seconds": round(totals["wall_seconds"], 2),
        "seconds_per_block": round(totals["wall_seconds"] / args.layers, 2),
        "solve_seconds_per_block": round(sum(per_op.values()), 2),
        "solve_seconds_per_operator": {k: round(v, 3) for k, v in per_op.items()},
        "peak_device_gib_per_block": {k: round(v / 2**30, 2) for k, v in peaks.items()},
        "peak_host_gib": round(totals.get("peak_host_bytes", 0) / 2**30, 2),
        "sparsity": round(totals.get("sparsity", float("nan")), 4),
        "mean_rel_error": round(sum(r.rel_error or 0.0 for r in report.records) / max(len(report.records), 1), 6),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llama-7b", choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--methods", default="sparsegpt,fista",
                    help="method specs, separated by commas outside brackets, e.g. "
                         "'sparsegpt,fista[tune_epochs=0],fista' (fista tunes on a GPU by default)")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--tflops", type=float, default=20.0, help="sustained rate of docs/scaling.md's prediction")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON output path")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    d, f, _, _ = PRESETS[args.preset]
    t0 = time.perf_counter()
    model = build_model(args.preset, args.layers, args.vocab, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    calib = torch.randint(args.vocab, (args.nsamples, args.seqlen), generator=g)
    out: dict = {
        "preset": args.preset, "hidden": d, "mlp": f, "layers": args.layers, "nsamples": args.nsamples,
        "seqlen": args.seqlen, "batch_size": args.batch_size, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "build_seconds": round(time.perf_counter() - t0, 1),
        "predicted_seconds_per_block": {
            f"{args.tflops:g}_tflops_recomputed_inputs": predicted_block_seconds(
                d, f, args.nsamples * args.seqlen, args.tflops, paused=False)},
        "runs": [],
    }
    try:
        specs = [Spec.parse(s) for s in split_specs(args.methods)]
    except ValueError as exc:
        ap.error(str(exc))
    for spec in specs:
        out["runs"].append(run_method(model, calib, spec, args))
        print(json.dumps(out["runs"][-1]), file=sys.stderr, flush=True)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        _io.write_text(Path(args.out), text + "\n")
    return out


if __name__ == "__main__":
    main()
