"""How much of each operator's Gram matrix the first position of the calibration windows holds.

For every linear operator of the chosen blocks of the dense model, over the calibration
windows ``(nsamples, seqlen)``: the share of ``tr(XᵀX) = Σ_t ‖x_t‖²`` that comes from
position 0 (the attention sink, whose hidden state can be tens of times larger than the
others'), and the ratio of position 0's mean input norm to the other positions'.  Printed
as JSON, one line per operator::

    python benchmarks/sink_share.py --blocks 1,3,15,28
"""

from __future__ import annotations

import argparse
import json

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="HF folder or GGUF file (default: SmolLM2-135M)")
    ap.add_argument("--blocks", default="0,1,3,15,28,29", help="comma-separated block indices")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    from fistaopt import llm
    from fistaopt.llm.model import find_blocks, linear_modules

    torch.set_num_threads(args.threads)
    model, tok = llm.load_model(args.model)
    windows = llm.calibration_tokens(tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, heldout=True)
    _, blocks = find_blocks(model)
    sums: dict[str, list[float]] = {}

    def record(name: str):
        def hook(module: torch.nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach().to(torch.float64)  # (batch, seq, d_in)
            norms = x.norm(dim=-1)
            s = sums.setdefault(name, [0.0, 0.0, 0.0, 0.0])
            s[0] += float(norms[:, 0].square().sum())
            s[1] += float(norms.square().sum())
            s[2] += float(norms[:, 0].sum())
            s[3] += float(norms[:, 1:].mean(dim=1).sum())
        return hook

    try:
        chosen = [int(i) for i in args.blocks.split(",")]
    except ValueError:
        ap.error(f"--blocks must be comma-separated block indices, got {args.blocks!r}")
    if any(not 0 <= b < len(blocks) for b in chosen):
        ap.error(f"--blocks {args.blocks}: the model has blocks 0-{len(blocks) - 1}")
    handles = []
    for b in chosen:
        for name, module in linear_modules(blocks[b]).items():
            handles.append(module.register_forward_pre_hook(record(f"block{b:02d}.{name}")))
    with torch.no_grad():
        for start in range(0, windows.shape[0], 8):
            model(windows[start:start + 8])
    for h in handles:
        h.remove()
    for name, (first_sq, all_sq, first_norm, rest_norm) in sums.items():
        print(json.dumps({"operator": name, "position0_share_of_trace": round(first_sq / all_sq, 4),
                          "position0_norm_ratio": round(first_norm / rest_norm, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
