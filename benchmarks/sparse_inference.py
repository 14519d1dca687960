"""2:4 inference, measured: semi-structured sparse linears against the masked dense model.

For each model (built from a config, random weights, every decoder-block linear
projected to 2:4 by magnitude: the layout ``fistaopt prune --pattern 2:4`` saves):

1. check that every block linear is exactly 2:4 (at most 2 non-zeros in every 4
   consecutive inputs);
2. the low-precision check: the masked dense model in ``--dtype`` (bf16/fp16) against
   the same model in fp32; relative Frobenius error of the logits and top-1 agreement.
   This is the rounding the low precision itself costs, the yardstick for step 3;
3. where a speed-up path exists (CUDA, compute capability ≥ 8.0, fp16/bf16): convert
   the block linears to semi-structured sparse tensors
   (``torch.sparse.to_sparse_semi_structured``; cuSPARSELt or CUTLASS kernels), check
   the logits against the masked dense model in the same dtype (``ok`` when the error is
   at most twice the low-precision error of step 2, or 1e-3), and time:

   - every distinct linear shape on ``--tokens`` rows (dense vs sparse, median of ``--repeats``),
   - a whole forward: prefill of ``--batch × --seqlen`` tokens, and decode (one token per
     step with the KV cache, ``--new-tokens`` steps), dense vs sparse.

On a CPU there is no speed-up path: PyTorch's 2:4 kernels exist only for CUDA (sparse
tensor cores, Ampere or newer), ``to_sparse_semi_structured`` refuses CPU tensors, and
a 2:4 weight stored dense runs as a dense GEMM that multiplies its zeros.  The CPU run
says so in its JSON, still does steps 1–2, and times dense against masked-dense linears
(the zeros buy nothing: ratio ≈ 1).

Usage (prints JSON; writes it with ``--out``)::

    python benchmarks/sparse_inference.py --device cpu                 # tiny model, the CPU verdict
    python benchmarks/sparse_inference.py --out docs/results/sparse-inference-h200.json
                                                                       # CUDA: smollm2-135m and llama-1b, bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fistaopt.llm.model import find_blocks, linear_modules  # noqa: E402
from fistaopt.sparsity import project, satisfies  # noqa: E402

#: Llama configs: SmolLM2-135M's shapes, a Llama-3.2-1B-class model, and a tiny one for CPU checks.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
NO_CPU_PATH = (
    "no speed-up path on CPU: PyTorch's 2:4 semi-structured kernels (cuSPARSELt / CUTLASS) run only on CUDA "
    "GPUs with sparse tensor cores (compute capability >= 8.0, Ampere or newer); to_sparse_semi_structured "
    "refuses CPU tensors, and a 2:4 weight stored dense runs as a dense GEMM that multiplies its zeros"
)


# ---------------------------------------------------------------------- the verdict
KERNELS = ("auto", "cutlass")


def speedup_path(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether 2:4 semi-structured kernels can run here, and the reason in words."""
    if device.type != "cuda":
        return False, NO_CPU_PATH
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return False, f"sparse tensor cores need compute capability >= 8.0 (Ampere); this GPU is sm{major}{minor}"
    if dtype not in DTYPES.values():
        return False, f"the benchmark times fp16/bf16 semi-structured kernels; got {dtype}"
    backend = "cuSPARSELt" if torch.backends.cusparselt.is_available() else "CUTLASS"
    return True, f"CUDA sm{major}{minor}: 2:4 semi-structured kernels via {backend}"


# ---------------------------------------------------------------------- models
def build_model(name: str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """A Llama model from :data:`MODEL_CONFIGS` with random weights, in eval mode."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_CONFIGS)}")
    torch.manual_seed(seed)
    config = LlamaConfig(max_position_embeddings=4096, **MODEL_CONFIGS[name])
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def block_linears(model: nn.Module) -> list[nn.Linear]:
    """The linear layers of every decoder block, in block order."""
    _, blocks = find_blocks(model)
    return [m for block in blocks for m in linear_modules(block).values()]


@torch.no_grad()
def apply_two_four_(model: nn.Module) -> int:
    """Keep the 2 largest-magnitude weights of every 4 consecutive inputs; returns the operator count."""
    linears = block_linears(model)
    for linear in linears:
        linear.weight.mul_(project(linear.weight.abs(), "2:4").to(linear.weight.dtype))
    return len(linears)


def all_two_four(model: nn.Module) -> bool:
    """Whether every block linear is exactly 2:4."""
    return all(satisfies(linear.weight, "2:4") for linear in block_linears(model))


@torch.no_grad()
def to_semi_structured_(model: nn.Module, kernels: str = "auto") -> str:
    """Replace every block linear's weight by a semi-structured sparse tensor (CUDA only).

    ``kernels``: ``auto`` is PyTorch's choice (cuSPARSELt where it is available), ``cutlass``
    forces the CUTLASS kernels.  Returns the sparse tensor class(es) used.
    """
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    saved = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = saved if kernels == "auto" else True
    used = set()
    try:
        for linear in block_linears(model):
            weight = to_sparse_semi_structured(linear.weight.detach().contiguous())
            linear.weight = nn.Parameter(weight, requires_grad=False)
            used.add(type(weight).__name__)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = saved
    return ", ".join(sorted(used))


# ---------------------------------------------------------------------- checks
@torch.no_grad()
def compare_logits(model: nn.Module, reference: nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Relative Frobenius error of ``model``'s logits against ``reference``'s, and top-1 agreement."""
    got, ref = model(ids).logits.double(), reference(ids).logits.double()
    return {
        "rel_error": float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref)),
        "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).double().mean()),
    }


# ---------------------------------------------------------------------- timing
def seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up (CUDA-synchronized)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _pair(dense_s: float, other_s: float, other: str) -> dict[str, float]:
    return {"dense_ms": dense_s * 1e3, f"{other}_ms": other_s * 1e3, "speedup": dense_s / other_s}


@torch.no_grad()
def time_linears(dense: nn.Module, other: nn.Module, other_name: str, tokens: int, device: torch.device,
                 repeats: int) -> list[dict[str, Any]]:
    """Per distinct ``(d_out, d_in)``: one linear of ``dense`` vs the same one of ``other`` on ``tokens`` rows."""
    rows, seen = [], set()
    for a, b in zip(block_linears(dense), block_linears(other)):
        shape = tuple(a.weight.shape)
        if shape in seen:
            continue
        seen.add(shape)
        x = torch.randn(tokens, shape[1], device=device, dtype=a.weight.dtype)
        row = _pair(seconds(lambda: a(x), device, repeats), seconds(lambda: b(x), device, repeats), other_name)
        rows.append({"shape": list(shape), "tokens": tokens, **row})
    return rows


@torch.no_grad()
def decode_seconds_per_token(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> float:
    """Seconds per greedy decode step (one token, KV cache) after a prefill of ``ids``."""
    out = model(ids, use_cache=True)
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    if ids.device.type == "cuda":
        torch.cuda.synchronize(ids.device)
    return (time.perf_counter() - t0) / new_tokens


# ---------------------------------------------------------------------- one model
def bench_model(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    t0 = time.perf_counter()
    fp32 = build_model(name, torch.float32, seed=args.seed)
    n_ops = apply_two_four_(fp32)
    row: dict[str, Any] = {"model": name, "config": MODEL_CONFIGS[name], "operators": n_ops,
                           "exact_two_four": all_two_four(fp32)}
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, fp32.config.vocab_size, (args.batch, args.seqlen), generator=gen).to(device)
    dense = build_model(name, dtype, seed=args.seed)
    dense.load_state_dict(fp32.state_dict())
    dense.to(device)
    row["low_precision_check"] = compare_logits(dense, fp32.to(device), ids)  # masked dense: dtype vs fp32
    del fp32
    possible, _ = speedup_path(device, dtype)
    if not possible:  # the zeros of a dense weight buy nothing: dense vs masked dense
        plain = build_model(name, dtype, seed=args.seed).to(device)
        row["linears_masked_vs_dense"] = time_linears(plain, dense, "masked", args.tokens, device, args.repeats)
        row["seconds"] = time.perf_counter() - t0
        return row
    sparse = build_model(name, dtype, seed=args.seed)
    sparse.load_state_dict(dense.state_dict())
    row["sparse_tensor"] = to_semi_structured_(sparse.to(device), args.kernels)
    check = compare_logits(sparse, dense, ids)
    check["ok"] = check["rel_error"] <= max(2 * row["low_precision_check"]["rel_error"], 1e-3)
    row["sparse_check"] = check
    row["linears"] = time_linears(dense, sparse, "sparse", args.tokens, device, args.repeats)
    with torch.no_grad():
        prefill = [seconds(lambda m=m: m(ids, use_cache=False), device, args.repeats) for m in (dense, sparse)]
    row["prefill"] = {"batch": args.batch, "seqlen": args.seqlen, **_pair(*prefill, "sparse")}
    one = ids[:1]
    decode = [min(decode_seconds_per_token(m, one, args.new_tokens) for _ in range(2)) for m in (dense, sparse)]
    row["decode_per_token"] = {"prompt": args.seqlen, "new_tokens": args.new_tokens, **_pair(*decode, "sparse")}
    row["seconds"] = time.perf_counter() - t0
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--models", default=None,
                    help=f"comma-separated, from {', '.join(MODEL_CONFIGS)} (default: smollm2-135m,llama-1b on CUDA, tiny on CPU)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16")
    ap.add_argument("--kernels", choices=KERNELS, default="auto",
                    help="2:4 kernels: PyTorch's choice (cuSPARSELt where available) or CUTLASS")
    ap.add_argument("--batch", type=int, default=None, help="prefill batch (default 4; 1 on CPU)")
    ap.add_argument("--seqlen", type=int, default=None, help="prefill length (default 512; 32 on CPU)")
    ap.add_argument("--tokens", type=int, default=None, help="rows of the linear timings (default 4096; 512 on CPU)")
    ap.add_argument("--new-tokens", type=int, default=32, help="decode steps")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    cpu = device.type != "cuda"
    models = (args.models or ("tiny" if cpu else "smollm2-135m,llama-1b")).split(",")
    unknown = [m for m in models if m not in MODEL_CONFIGS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; expected {', '.join(MODEL_CONFIGS)}")
    args.batch, args.seqlen = args.batch or (1 if cpu else 4), args.seqlen or (32 if cpu else 512)
    args.tokens, args.repeats = args.tokens or (512 if cpu else 4096), args.repeats or 10
    dtype = DTYPES[args.dtype]
    possible, reason = speedup_path(device, dtype)
    out: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if not cpu else (platform.processor() or "cpu"),
        "torch": torch.__version__, "cuda": torch.version.cuda, "dtype": args.dtype, "threads": torch.get_num_threads(),
        "speedup_path": possible, "reason": reason, "kernels": args.kernels, "models": [],
    }
    for name in models:
        out["models"].append(bench_model(name, args, device, dtype))
        print(json.dumps(out["models"][-1]), file=sys.stderr, flush=True)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
