"""Where one step of the block tuning goes on the CPU: milliseconds per calibration window; prints JSON.

The block tuning (:mod:`fistaopt.llm.block_tune`) costs, per window and pruned block, one
training step (forward and backward under the tuning's products, then Adam) and one forward
in the block's own dtype for the tuned outputs.  This times those pieces on one decoder
block of the model, on real calibration windows of ``--seqlen`` tokens (the block's input
is the embedding output; the time depends on the shapes, not on the values), one window at
a time as ``tune_micro_batch=1`` runs them, so that the cost can be set against
SparseGPT's per-window cost of a whole prune:

- ``forward_fp32``, ``forward_bf16``: the block's forward without autograd, in float32 and
  under ``torch.autocast(bfloat16)``;
- ``train_step_fp32``, ``train_step_bf16``: the tuning's own step
  (:func:`fistaopt.llm.block_tune.train_step`: forward, the loss, backward, one fused Adam
  step on the block's linear weights, the masks' product);
- ``top_ops``: the torch operators with the most own time in ``--profile-steps`` bf16 steps.

``--operators`` names the linear modules that train (default all), as ``tune_skip_groups``
leaves the first groups out: without q/k/v nothing needs attention's backward.  Where they
all lie in one submodule (``mlp.*``: ``tune_skip_groups=2``), ``held`` also times what the
tuning runs there instead (the held inputs of :mod:`fistaopt.llm.block_tune`): that module's
forwards and its training step on its own input, toward the block's target less the rest.

    python benchmarks/tune_step.py --threads 1 --out docs/results/tune-step-smollm2-amx.json

Run it alone on the machine: other processes on the cores change every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fistaopt import _io, llm  # noqa: E402
from fistaopt.llm.block_tune import enclosing_module, train_step  # noqa: E402
from fistaopt.llm.capture import BlockCall, block_output, capture_block_inputs, input_of  # noqa: E402
from fistaopt.llm.model import find_blocks, linear_modules  # noqa: E402


def per_call_ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Mean milliseconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return round((time.perf_counter() - t0) / repeats * 1000, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder or GGUF (default: the shipped SmolLM2)")
    ap.add_argument("--block", type=int, default=0, help="the decoder block timed")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=8, help="timed calls per figure")
    ap.add_argument("--profile-steps", type=int, default=4, help="bf16 steps under torch.profiler")
    ap.add_argument("--top", type=int, default=12, help="operators listed")
    ap.add_argument("--operators", default=None,
                    help="comma-separated linear modules that train, e.g. 'mlp.down_proj,mlp.up_proj' (default: all)")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.profile_steps < 0 or args.seqlen < 1 or args.threads < 1:
        ap.error("--repeats, --seqlen and --threads must be >= 1, --profile-steps >= 0")

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    model, tok = llm.load_model(args.model)
    _, blocks = find_blocks(model)
    if not 0 <= args.block < len(blocks):
        ap.error(f"--block must be in [0, {len(blocks)}), got {args.block}")
    windows = llm.calibration_tokens(tok, nsamples=1, seqlen=args.seqlen, seed=0)
    inputs = capture_block_inputs(model, [windows])
    hidden, call = inputs.hidden[0], inputs.calls[0][args.block]
    block = blocks[args.block]
    linears = linear_modules(block)
    named = [] if args.operators is None else [n.strip() for n in args.operators.split(",") if n.strip()]
    trained = list(linears) if args.operators is None else list(dict.fromkeys(named))  # each weight once for Adam
    unknown = sorted(set(trained) - set(linears))
    if unknown or not trained:
        ap.error(f"--operators must name linear modules of block {args.block} ({', '.join(linears)}); "
                 f"got {unknown or 'none'}")
    weights = [linears[n].weight for n in trained]
    for p in block.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        target = block_output(call.run(block, hidden)).detach()
    for w in weights:
        w.requires_grad_(True)
    masks = [torch.ones_like(w) for w in weights]  # the tuning keeps pruned entries at zero this way
    opt = torch.optim.Adam(weights, lr=1e-12, fused=True)  # a step that leaves the weights as they are
    cpu = torch.device("cpu")

    def forward(autocast: bool) -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            block_output(call.run(block, hidden))

    def step(autocast: bool) -> None:
        train_step(block, call, hidden, target, opt, weights, masks, cpu, torch.bfloat16 if autocast else None)

    def timings(forward: Callable[[bool], None], step: Callable[[bool], None]) -> dict[str, float]:
        return {"forward_fp32": per_call_ms(lambda: forward(False), args.repeats),
                "forward_bf16": per_call_ms(lambda: forward(True), args.repeats),
                "train_step_fp32": per_call_ms(lambda: step(False), args.repeats),
                "train_step_bf16": per_call_ms(lambda: step(True), args.repeats)}

    result: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/tune_step.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model or "SmolLM2-135M-Instruct (default)", "block": args.block, "seqlen": args.seqlen,
        "trained": trained, "threads": args.threads, "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
        "ms_per_window": timings(forward, step),
    }
    held = enclosing_module(trained)
    if held is not None:
        module = block.get_submodule(held)
        # the module's input, and its own output as the target: the tuning's is t − r, but the
        # values do not change the time
        with torch.no_grad():
            z = input_of(block, module, call, hidden)
            held_target = module(z)
        no_args = BlockCall((), {})

        def held_forward(autocast: bool) -> None:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                module(z)

        def held_step(autocast: bool) -> None:
            train_step(module, no_args, z, held_target, opt, weights, masks, cpu, torch.bfloat16 if autocast else None)

        result["held"] = {"module": held, "ms_per_window": timings(held_forward, held_step)}
    if args.profile_steps:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile_steps):
                step(True)
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:args.top]
        result["top_ops"] = [{"op": e.key, "calls_per_step": e.count / args.profile_steps,
                              "self_ms_per_step": round(e.self_cpu_time_total / 1000 / args.profile_steps, 2)}
                             for e in ops]
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        _io.write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
