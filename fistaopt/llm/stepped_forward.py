"""One forward of a block per calibration batch, paused before each operator group.

With intra-block error correction, group ``k``'s statistics need ``X*_k``: its input in
the block whose groups ``0..k-1`` are already pruned.  Recomputing it (:func:`input_of`)
runs the block from its start once per group, and once more for the block's output:
for a LLaMA block about 3.5 block forwards per batch.  :class:`SteppedForwards` runs
each batch's forward once and pauses it right before the first operator of each group:

    forwards = SteppedForwards(block, [g.operators[0].module for g in groups], calls, hidden, device)
    try:
        for group in groups:
            xs = forwards.step()            # X*_k of every batch, with groups < k as they are now
            ...                             # accumulate, prune group k (its weights change)
        outputs = forwards.finish()        # the block's outputs, every group pruned
    finally:
        forwards.close()

A weight is read when its operator runs, after the pause, so a group pruned between two
steps is used pruned by everything after it: the inputs are exactly those of the
recomputing path, in a fraction of the time.  Each forward runs in a thread of its own,
but only one runs at a time (the caller resumes them in batch order and waits for each
to pause), so the arithmetic and its thread use are those of a sequential loop.

The paused forwards hold their activations until they finish: about
:func:`held_bytes`; the caller falls back to recomputing above a budget.
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from fistaopt.llm.capture import BlockCall, StopForward, block_output


def held_bytes(hidden: Sequence[torch.Tensor], d_ins: Sequence[int]) -> int:
    """Estimated bytes the paused forwards of ``hidden`` hold: per token, three times the
    hidden size plus the groups' input widths (the pause inputs and twice as much again in
    intermediates).  SmolLM2-135M, 32 × 512 tokens: 755 MB estimated; the peak resident
    memory of a prune rose by 600 MB against recomputing the inputs."""
    if not hidden:
        return 0
    tokens = sum(h.numel() // h.shape[-1] for h in hidden)
    return 3 * tokens * (hidden[0].shape[-1] + sum(d_ins)) * hidden[0].element_size()


@dataclass(eq=False)
class _Forward:
    """One batch's forward: the thread, its two hand-over semaphores and what it last reported."""

    call: BlockCall
    hidden: torch.Tensor
    go: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    reported: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    next_pause: int = 0  # the index of the next pause point this forward may stop at
    report: tuple[str, Any] = ("waiting", None)  # ("pause", (k, x)), ("done", out), ("error", exc)
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def with_index(device: torch.device) -> torch.device:
    """``device`` with its index: ``cuda`` is the calling thread's current CUDA device.

    The forward threads must run on the device the caller meant, and ``torch.cuda.set_device``
    refuses a ``cuda`` device without an index.
    """
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class SteppedForwards:
    """``block(hidden[b], *calls[b])`` for every batch ``b``, paused before each of ``pause_at``.

    Args:
        block: the block; its operators may change between steps.
        pause_at: the first operator of each group, in forward order.
        calls: per batch, the block's call arguments.
        hidden: per batch, the hidden states entering the block (moved to ``device``).
        device: where the block runs.
    """

    def __init__(self, block: nn.Module, pause_at: Sequence[nn.Module], calls: Sequence[BlockCall],
                 hidden: Sequence[torch.Tensor], device: torch.device) -> None:
        if len(calls) != len(hidden):
            raise ValueError(f"one call per batch: {len(calls)} calls for {len(hidden)} batches")
        self._block, self._device = block, with_index(device)
        self._names = [type(m).__name__ for m in pause_at]
        self._index = {id(m): k for k, m in enumerate(pause_at)}
        self._steps = 0
        self._cancelled = False
        self._by_thread: dict[int, _Forward] = {}
        self._forwards = [_Forward(c, h) for c, h in zip(calls, hidden)]
        self._handles = [m.register_forward_pre_hook(self._pause) for m in pause_at]
        for f in self._forwards:
            context = contextvars.copy_context()
            f.thread = threading.Thread(target=context.run, args=(self._run, f), daemon=True,
                                        name="fistaopt-stepped-forward")
            f.thread.start()

    # ------------------------------------------------------------------ the forward threads
    def _run(self, f: _Forward) -> None:
        self._by_thread[threading.get_ident()] = f
        try:
            f.go.acquire()
            if self._cancelled:
                f.report = ("cancelled", None)
                return
            if self._device.type == "cuda":
                torch.cuda.set_device(self._device)  # the current device is per thread, the caller's here
            with torch.no_grad():  # grad mode is per thread too
                out = f.call.run(self._block, f.hidden.to(self._device), self._device)
            f.report = ("done", block_output(out).detach().cpu())
        except StopForward:
            f.report = ("cancelled", None)
        except BaseException as exc:  # handed to the caller, raised there
            f.report = ("error", exc)
        finally:
            f.hidden = torch.empty(0)
            f.reported.release()

    def _pause(self, module: nn.Module, args: tuple) -> None:
        f = self._by_thread.get(threading.get_ident())
        k = self._index[id(module)]
        if f is None or k < f.next_pause or not args:  # not one of ours, or a later call of a module
            return
        f.next_pause = k + 1
        f.report = ("pause", (k, args[0].detach()))
        f.reported.release()
        f.go.acquire()
        if self._cancelled:
            raise StopForward

    def _resume(self, f: _Forward) -> tuple[str, Any]:
        f.go.release()
        f.reported.acquire()
        kind, value = f.report
        f.report = ("waiting", None)
        if kind == "error":
            self.close()
            raise value
        return kind, value

    # ------------------------------------------------------------------ the caller's side
    def step(self) -> list[torch.Tensor]:
        """Resume every forward to the next pause; the inputs there, one per batch."""
        k = self._steps
        if k >= len(self._names):
            raise RuntimeError(f"all {len(self._names)} pauses were stepped through already")
        self._steps += 1
        inputs = []
        for f in self._forwards:
            kind, value = self._resume(f)
            if kind != "pause" or value[0] != k:
                self.close()
                raise RuntimeError(f"module {self._names[k]} was not called during the block forward")
            inputs.append(value[1])
        return inputs

    def finish(self) -> list[torch.Tensor]:
        """Run every forward to its end; the block outputs (on the CPU), one per batch."""
        if self._steps != len(self._names):
            raise RuntimeError(f"finish() after {self._steps} of {len(self._names)} steps")
        outputs = []
        for f in self._forwards:
            kind, value = self._resume(f)
            if kind != "done":
                self.close()
                raise RuntimeError("the block forward paused again after its last group (data-dependent calls)")
            outputs.append(value)
        self.close()
        return outputs

    def close(self) -> None:
        """End every forward still paused (or not started) and remove the hooks; idempotent."""
        self._cancelled = True
        for f in self._forwards:
            if f.running:
                f.go.release()
        for f in self._forwards:
            if f.thread is not None:
                f.thread.join()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._by_thread.clear()
