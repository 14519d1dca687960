"""Block reconstruction: after a block's operators are pruned, tune its kept weights jointly.

Every operator was fitted alone, to its own output.  The block's output goes through
attention's softmax and the MLP's gate, which the operator problems do not see.  With the
masks fixed, a few passes of Adam over the calibration batches lower the block's error

    L(W) = Σ_b ‖f(h*_b; W ⊙ M) − f(h*_b; W₀)‖² / Σ_b ‖f(h*_b; W₀)‖²,

where ``h*_b (batch, seqlen, d)`` is the pruned model's input of the block for calibration
batch ``b``, ``f(·; W₀)`` the dense block (the target) and ``M`` the masks of the pruned
linear weights (zeros stay zeros).  Only the linear weights move (those of the operators
named, e.g. all but the q/k/v group, whose gradients would need attention's backward);
norms and biases keep their values.  Each batch is split into micro-batches of
``micro_batch`` sequences, one Adam step each.  Under ``autocast``
(``PruneConfig.tune_precision``) the training passes multiply in bfloat16 while the weights,
Adam's moments and the loss stay float32.  With ``tune_target="model"`` the target is the
dense model's hidden state after the block, ``f(h_b; W₀)`` on the dense model's own input
``h_b``, so the block also works against the error that reaches it from earlier blocks.

**Held inputs.**  Where every operator that moves lies in one submodule ``S`` of the block
(LLaMA's ``mlp`` with ``tune_skip_groups=2``) whose input is its first tuned operator's and
whose output adds to the block's, ``f(h; W) = r + S(z; W)``, with ``z`` and ``r`` fixed by
the frozen operators before ``S``.  The tuning then trains ``S`` alone on ``z`` (the ``X*``
the prune's forwards gave that operator, :class:`HeldInputs`):

    L(W) = Σ_b ‖S(z_b; W ⊙ M) − (t_b − r_b)‖²,   r_b = o_b − S(z_b; W_pruned),

the same loss without a forward of the rest of the block per step (SmolLM2-135M, one AMX
thread, a 512-token window: a bfloat16 step of 20.0 ms against 31.4 ms through the block,
``benchmarks/tune_step.py --operators mlp.gate_proj,mlp.up_proj,mlp.down_proj``).  The
tuned outputs are ``r_b + S(z_b)``; both products with ``S`` run in the tuning's products.
Where ``S`` returns the output of the operator that residual correction refit (LLaMA's
``mlp`` returns its ``down_proj``'s), the rest is that correction's ``R*`` (the block's output
with the operator's output zero, :mod:`fistaopt.llm.residual`): ``r_b = R*_b`` needs no
forward, nor do the untuned outputs ``o_b``.  Nor does the error before tuning,
``Σ_b ‖r_b + S(z_b; W_pruned) − t_b‖²``: that operator was fit to ``t_b − R*_b``, so it is
the operator's residual on its calibration statistics (IEEE arithmetic; the error after
tuning is formed with ``S``'s products in the tuning's).  ``o_b`` is recomputed only where
the tuning is undone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from fistaopt.llm.capture import BlockCall, block_output
from fistaopt.llm.model import linear_modules

logger = logging.getLogger(__name__)


@dataclass
class TuneRecord:
    """What a block's tuning did: its relative output error on the calibration batches
    before and after, the Adam steps taken, the seconds spent, the dtype of the training
    passes' products (``"bfloat16"`` under autocast, else the block's dtype), the submodule
    trained on its held inputs (None: the block) and Adam's step size."""

    block: int
    error_before: float
    error_after: float
    steps: int
    seconds: float
    products: str = "float32"
    held: str | None = None  # the submodule trained on its held inputs (module docstring), else None
    lr: float | None = None  # Adam's step size

    def to_dict(self) -> dict[str, Any]:
        return {"block": self.block, "error_before": self.error_before, "error_after": self.error_after,
                "steps": self.steps, "seconds": self.seconds, "products": self.products, "held": self.held,
                "lr": self.lr}


@dataclass
class HeldInputs:
    """The submodule ``module`` (named ``name`` in the block) that holds every tuned operator,
    and its input per calibration batch, ``(batch, seqlen, d_in)`` on the CPU; ``rests``: the
    block's output less the submodule's per batch (on the CPU), where the caller has it
    (``R*`` of residual correction; module docstring), else None."""

    name: str
    module: nn.Module
    inputs: list[torch.Tensor]
    rests: list[torch.Tensor] | None = None


def enclosing_module(operators: Sequence[str]) -> str | None:
    """The deepest submodule name that holds every one of ``operators`` (dotted names in the
    block): ``"mlp"`` for ``["mlp.gate_proj", "mlp.down_proj"]``; None when only the block does."""
    parts = [name.split(".") for name in operators]
    if not parts:
        return None
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common) or None


@torch.no_grad()
def _called_once_alike(block: nn.Module, name: str, operator: str, call: BlockCall, hidden: torch.Tensor,
                       device: torch.device, outputs: bool) -> bool:
    """Whether submodule ``name`` and its operator ``operator`` are called once each in a
    forward of ``block`` with the same first argument (``outputs``: return the same value)."""
    seen: dict[str, list[torch.Tensor]] = {name: [], operator: []}

    def recorder(key: str):
        def hook(mod: nn.Module, args: tuple, out: Any = None) -> None:
            value = out if outputs else (args[0] if args else None)
            if isinstance(value, torch.Tensor):
                seen[key].append(value.detach())
        return hook

    modules = [block.get_submodule(k) for k in (name, operator)]
    handles = [m.register_forward_hook(recorder(k)) if outputs else m.register_forward_pre_hook(recorder(k))
               for k, m in zip((name, operator), modules)]
    try:
        call.run(block, hidden.to(device), device)
    finally:
        for h in handles:
            h.remove()
    outer, inner = seen[name], seen[operator]
    return len(outer) == 1 and len(inner) == 1 and outer[0].shape == inner[0].shape and torch.equal(outer[0], inner[0])


def reads_input_of(block: nn.Module, name: str, operator: str, call: BlockCall, hidden: torch.Tensor,
                   device: torch.device) -> bool:
    """Whether submodule ``name`` is called once in a forward of ``block`` and receives exactly
    what its operator ``operator`` does (its first argument, the same values)."""
    return _called_once_alike(block, name, operator, call, hidden, device, outputs=False)


def returns_output_of(block: nn.Module, name: str, operator: str, call: BlockCall, hidden: torch.Tensor,
                      device: torch.device) -> bool:
    """Whether submodule ``name`` is called once in a forward of ``block`` and returns exactly
    what its operator ``operator`` does (the same values): zeroing the operator's output then
    zeroes the submodule's."""
    return _called_once_alike(block, name, operator, call, hidden, device, outputs=True)


def _split(value: Any, n: int, start: int, stop: int) -> Any:
    """``value`` cut to rows ``start:stop`` where its first dimension is the batch's ``n`` rows."""
    if isinstance(value, torch.Tensor):
        return value[start:stop] if value.ndim > 0 and value.shape[0] == n and n > 1 else value
    if isinstance(value, tuple):
        return tuple(_split(v, n, start, stop) for v in value)
    if isinstance(value, list):
        return [_split(v, n, start, stop) for v in value]
    if isinstance(value, dict):
        return {k: _split(v, n, start, stop) for k, v in value.items()}
    return value


def _micro_calls(call: BlockCall, hidden: torch.Tensor, size: int) -> list[tuple[BlockCall, slice]]:
    n = int(hidden.shape[0])
    return [(BlockCall(_split(call.args, n, s, min(s + size, n)), _split(call.kwargs, n, s, min(s + size, n))),
             slice(s, min(s + size, n))) for s in range(0, n, size)]


def _sq(a: torch.Tensor, b: torch.Tensor | None = None) -> float:
    """``‖a‖²`` or ``‖a − b‖²``, in float32 on ``a``'s device."""
    d = a.float() if b is None else a.float() - b.to(a.device).float()
    return float(d.pow(2).sum())


def _error_sums(outputs: Iterable[torch.Tensor], targets: list[torch.Tensor], device: torch.device) -> tuple[float, float]:
    """``(Σ_b ‖t_b‖², Σ_b ‖o_b − t_b‖²)``, one batch at a time on ``device`` (a GPU sums there
    what the host would sum on one core)."""
    den = err = 0.0
    for o, t in zip(outputs, targets):
        t = t.to(device)
        den += _sq(t)
        err += _sq(o.to(device), t)
    return den, err


def _fused_adam(weights: list[torch.Tensor]) -> bool:
    """Whether Adam's fused kernel takes ``weights`` (float32/16 on the CPU or a CUDA device): one
    kernel per step instead of a dozen element-wise passes (SmolLM2-135M, one thread: 7.8 → 2.3 ms per
    step; docs/pruning.md, "Block tuning, second pass")."""
    return all(w.device.type in ("cpu", "cuda") and w.dtype in (torch.float32, torch.float16, torch.bfloat16)
               for w in weights)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def train_step(block: nn.Module, call: BlockCall, hidden: torch.Tensor, target: torch.Tensor,
               opt: torch.optim.Optimizer, weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
               device: torch.device, autocast: torch.dtype | None = None, scale: float = 1.0) -> None:
    """One Adam step of the tuning on one micro-batch (``benchmarks/tune_step.py`` times it).

    The block's forward on ``hidden (batch, seqlen, d)`` under ``autocast`` (None: the
    block's dtype), the loss ``mean((out − target)²) / scale`` in float32, its backward, one
    step of ``opt`` on ``weights`` and the product with ``masks``, so that pruned entries stay zero.
    """
    with _autocast(device, autocast):
        out = block_output(call.run(block, hidden.to(device), device))
    loss = (out.float() - target.to(device).float()).pow(2).mean() / scale
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        for w, m in zip(weights, masks):
            w.mul_(m)


def tune_block(block: nn.Module, dense: nn.Module, calls: list[BlockCall], hidden: list[torch.Tensor],
               outputs: list[torch.Tensor] | None, device: torch.device,
               targets: list[torch.Tensor | None] | None = None,
               *, index: int, epochs: int, lr: float,
               micro_batch: int = 1, windows: int | None = None,
               operators: Sequence[str] | None = None,
               autocast: torch.dtype | None = None,
               held: HeldInputs | None = None,
               error_before: float | None = None) -> tuple[list[torch.Tensor] | None, TuneRecord]:
    """Tune ``block``'s kept linear weights in place toward ``dense``'s outputs (module docstring).

    ``hidden[b]`` is batch ``b``'s input ``(batch, seqlen, d)``, ``calls[b]`` its call
    arguments and ``outputs[b]`` the pruned block's output before tuning (on the CPU);
    ``targets[b]`` the dense block's output where the caller has it already (None: computed),
    or any other target of the same shape (the dense model's hidden states, ``tune_target="model"``).
    ``operators`` names the linear modules that move (None: every one).  ``autocast``: the
    dtype of the training passes' products under ``torch.autocast`` (None: the block's own);
    the error check before and after, and the returned outputs, use the block's dtype.
    ``held``: train that submodule alone on its inputs (module docstring; every operator
    named must lie in it); its outputs then come from the submodule's products under
    ``autocast``, added to the rest of the block's output (``held.rests``, or ``outputs`` less the
    submodule's untuned output).  ``outputs`` may be None only with ``held.rests``.
    ``error_before``: the untuned error ``Σ_b ‖o_b − t_b‖²`` where the caller knows it (with
    ``held.rests = R*``, the residual of the operator that residual correction fit to
    ``t − R*``, on its calibration statistics in IEEE arithmetic; module docstring); None:
    one forward per batch forms it.  Returns the
    block's outputs after tuning; where tuning did not lower the calibration error, the weights
    restored and ``outputs`` (None when not given: the caller recomputes them).
    """
    t0 = time.perf_counter()
    if outputs is None and (held is None or held.rests is None):
        raise ValueError("tune_block needs the untuned outputs unless the held inputs come with their rests")
    given = targets if targets is not None else [None] * len(calls)
    with torch.no_grad():
        targets = [t if t is not None else block_output(c.run(dense, h.to(device), device)).detach().cpu()
                   for t, c, h in zip(given, calls, hidden)]
    weights = [m.weight for name, m in linear_modules(block).items() if operators is None or name in operators]
    masks = [(w != 0).to(w.dtype) for w in weights]
    saved = [w.detach().clone() for w in weights]
    # the rest of the block's output, where the held submodule trains alone
    rests: list[torch.Tensor] = []
    if held is not None and held.rests is not None:
        rests = held.rests
    elif held is not None:
        assert outputs is not None
        with torch.no_grad(), _autocast(device, autocast):
            rests = [o - held.module(z.to(device)).to(o.dtype).cpu().reshape(o.shape)
                     for o, z in zip(outputs, held.inputs)]

    def held_output(b: int) -> torch.Tensor:
        """Batch ``b``'s block output ``r_b + S(z_b)`` at the current weights, in the hidden dtype."""
        assert held is not None
        with torch.no_grad(), _autocast(device, autocast):
            y = held.module(held.inputs[b].to(device))
        r = rests[b]
        return (r + y.to(r.dtype).cpu().reshape(r.shape)).to(hidden[b].dtype)

    if error_before is not None:
        den, before_sum = sum(_sq(t.to(device)) for t in targets), float(error_before)
    else:
        untuned = outputs if outputs is not None else (held_output(b) for b in range(len(calls)))
        den, before_sum = _error_sums(untuned, targets, device)
    before = before_sum / den
    flags = {id(p): p.requires_grad for p in block.parameters()}
    for p in block.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    opt = torch.optim.Adam(weights, lr=lr, fused=_fused_adam(weights))
    scale = den / sum(t.numel() for t in targets)
    # what a step runs, on what, toward what: the block on its inputs, or the held submodule
    # on its own inputs toward the target less the rest of the block's output
    trained, step_calls, step_inputs, step_targets = block, calls, hidden, targets
    if held is not None:
        trained, step_inputs = held.module, held.inputs
        step_calls = [BlockCall((), {}) for _ in calls]
        step_targets = [(t - r).reshape(*z.shape[:-1], -1) for t, r, z in zip(targets, rests, held.inputs)]
    steps = 0
    try:
        with torch.enable_grad():
            for _ in range(epochs):
                seen = 0
                for call, h, t in zip(step_calls, step_inputs, step_targets):
                    for mcall, rows in _micro_calls(call, h, micro_batch):
                        if windows is not None and seen >= windows:
                            break
                        seen += rows.stop - rows.start
                        train_step(trained, mcall, h[rows], t[rows], opt, weights, masks, device, autocast, scale)
                        steps += 1
    finally:
        for w in weights:
            w.requires_grad_(False)
        for p in block.parameters():
            p.requires_grad_(flags[id(p)])
    tuned: list[torch.Tensor] = []
    after_sum = 0.0
    with torch.no_grad():
        for b, (c, h, t) in enumerate(zip(calls, hidden, targets)):
            if held is not None:
                out = held_output(b)
            else:
                out = block_output(c.run(block, h.to(device), device))
            after_sum += _sq(out, t)
            tuned.append(out.detach().cpu())
    after = after_sum / den
    improved = after < before
    if not improved:
        with torch.no_grad():
            for w, s in zip(weights, saved):
                w.copy_(s)
        after = before
    handed_on = tuned if improved else outputs
    products = str(autocast if autocast is not None else weights[0].dtype).removeprefix("torch.")
    record = TuneRecord(index, before, after, steps, time.perf_counter() - t0, products,
                        held.name if held is not None else None, lr)
    logger.info("block %d tuned%s: output error %.5f -> %.5f (%d steps, %s products, %.1f s)", index,
                f" ({held.name} on its held inputs)" if held is not None else "", before, after, steps, products,
                record.seconds)
    return handed_on, record
