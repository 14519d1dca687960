"""Block-input modes: where a block's ``X`` and ``X*`` come from, and what enters the next block.

A stream holds, per calibration batch, the hidden states ``(batch, seqlen, hidden)``
entering the current decoder block (on the CPU).  For one operator group of the block
being pruned it streams the statistics: ``X`` (the group's input in the *dense* block,
the target side) and ``X*`` (its input in the block whose earlier groups are already
pruned, with intra-block error correction; ``X* = X`` without).  After the block it
computes the next block's inputs.

=============  ==========================================  ==============================
mode           X (target) from                             next block's input
=============  ==========================================  ==============================
``pruned``     the dense block on the pruned stream        the pruned block's output
``dense``      the dense block on the dense stream         the dense block's output
``corrected``  the dense block on the dense model's stream both streams are carried
=============  ==========================================  ==============================

``pruned`` is SparseGPT's and Wanda's protocol and the default; ``dense`` the paper's
parallel mode; ``corrected`` lets every operator also correct the error of earlier
blocks (measured worst on SmolLM2-135M, docs/pruning.md).  The mode is decoded once:
by choosing the class (:func:`make_stream`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator

import torch
from torch import nn

from fistaopt.llm.block_tune import reads_input_of, returns_output_of
from fistaopt.llm.capture import BlockCall, input_of, inputs_of_many, run_block
from fistaopt.llm.distributed import SINGLE, Communicator
from fistaopt.llm.model import OperatorGroup
from fistaopt.llm.residual import adds_to_output, recorded_calls, zero_output
from fistaopt.llm.stepped_forward import SteppedForwards, held_bytes
from fistaopt.problems import LayerStatsAccumulator

Hidden = list[torch.Tensor]


def skip_tokens(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x (batch, seq, d)`` without its first ``k`` positions (tokens) when ``k > 0``."""
    return x[:, k:] if k > 0 and x.ndim >= 3 else x


#: Tokens per chunk of :func:`squared_outputs` (a chunk's square stays in the CPU's cache).
_SQUARE_CHUNK = 128


def squared_outputs(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``Σ_t (out − bias)²_t`` per output column of ``out (..., d_out)``: ``(d_out,)`` float64.

    ``out − bias = X W₀ᵀ`` for a linear operator's output, so this is one batch's ``c`` of its
    rows; the squares are summed in ``out``'s dtype over chunks of :data:`_SQUARE_CHUNK`
    tokens, the chunks' sums in float64.
    """
    y = out.reshape(-1, out.shape[-1])
    c = torch.zeros(y.shape[-1], dtype=torch.float64, device=y.device)
    for chunk in y.split(_SQUARE_CHUNK):
        if bias is not None:
            chunk = chunk - bias
        c += chunk.square().sum(0)
    return c


#: Largest total size of the dense copy's group inputs kept between the groups of one
#: block (all calibration batches).  Under it, error correction reads every later group's
#: ``X`` from ONE forward of the dense copy per batch instead of one per group.
DENSE_INPUT_CACHE_BYTES = 1 << 30

#: On the CPU, the largest estimated size (:func:`~fistaopt.llm.stepped_forward.held_bytes`)
#: of the pruned block's paused forwards.  Under it, error correction reads every group's
#: ``X*`` and the block's output from ONE forward per batch, paused before each group
#: (:class:`~fistaopt.llm.stepped_forward.SteppedForwards`); above it, one forward per group.
STEPPED_FORWARD_BYTES = 4 << 30


def stepped_forward_budget(device: torch.device, cache_bytes: int | None = None) -> int:
    """Bytes the paused forwards may hold on ``device``: :data:`STEPPED_FORWARD_BYTES` on the
    CPU, half the free memory of a CUDA device (their activations live there); at most
    ``cache_bytes`` when given (``PruneConfig.cache_bytes``), which replaces the CPU default."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 2 if cache_bytes is None else min(int(free) // 2, cache_bytes)
    return STEPPED_FORWARD_BYTES if cache_bytes is None else cache_bytes


@dataclass
class BlockWork:
    """The block being pruned (in place, on ``device``), its dense copy and its call arguments.

    ``cached_groups`` names the groups whose dense inputs are captured together, from one
    forward of the dense copy per batch (:meth:`dense_input`); empty: one forward each.
    """

    block: nn.Module
    calls: list[BlockCall]  # per calibration batch
    device: torch.device
    skip: int = 0  # leading positions left out of the statistics
    cache_bytes: int | None = None  # PruneConfig.cache_bytes: None, the module's budgets
    held: int = 0  # estimated bytes of the paused forwards, once started
    dense: nn.Module | None = None  # an unpruned copy, when the stream needs one
    outputs: Hidden = field(default_factory=list)  # dense outputs captured on the way (dense mode)
    cached_groups: list[OperatorGroup] = field(default_factory=list)
    #: groups whose ``c`` (the squared norms of their dense outputs) the shared forward gives,
    #: where those outputs are in ``stats_dtype`` (:meth:`dense_c`; their accumulators then skip ``D``)
    c_groups: list[OperatorGroup] = field(default_factory=list)
    stats_dtype: torch.dtype = torch.float32
    pruned_forwards: SteppedForwards | None = None  # the block's paused forwards, when they fit
    keep_dense_outputs: bool = False  # the shared dense forward's outputs are kept (block tuning's targets)
    dense_outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # by batch, from the shared forward
    residual_of: str | None = None  # the last operator, when it absorbs the residual error (residual.py)
    residual_parts: tuple[Hidden | None, Hidden] | None = None  # its X* (if held) and R* per batch
    keep_inputs_of: str | None = None  # an operator whose X* is kept per batch (block tuning's held inputs)
    kept_inputs: Hidden = field(default_factory=list)  # that operator's X*, per batch (on the CPU)
    _dense_inputs: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    _dense_c: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def input_of(self, dense: bool, group: OperatorGroup, b: int, hidden: torch.Tensor) -> torch.Tensor:
        """The input of ``group`` for batch ``b`` in the dense copy or the (partly pruned) block."""
        module = self.dense if dense else self.block
        assert module is not None
        x = input_of(module, module.get_submodule(group.operators[0].name), self.calls[b], hidden, self.device)
        return skip_tokens(x, self.skip)

    def cache_dense_inputs(self, groups: list[OperatorGroup], hidden: Hidden) -> None:
        """Capture ``groups``' dense inputs together when they fit :data:`DENSE_INPUT_CACHE_BYTES`
        (with ``cache_bytes``: what the paused forwards leave of it)."""
        tokens = sum(h.numel() // h.shape[-1] for h in hidden)
        size = hidden[0].element_size() if hidden else 4
        budget = DENSE_INPUT_CACHE_BYTES if self.cache_bytes is None else self.cache_bytes - self.held
        if groups and tokens * sum(g.d_in for g in groups) * size <= budget:
            self.cached_groups = list(groups)

    def dense_input(self, group: OperatorGroup, b: int, hidden: torch.Tensor) -> torch.Tensor:
        """``X`` of ``group`` for batch ``b`` in the dense copy (from the shared forward when cached)."""
        if not any(g is group for g in self.cached_groups):
            return self.input_of(True, group, b, hidden)
        assert self.dense is not None
        if b not in self._dense_inputs:
            names = [g.operators[0].name for g in self.cached_groups]
            modules = [self.dense.get_submodule(n) for n in names]
            to_end = self.keep_dense_outputs or self.residual_of is not None
            outputs: list[torch.Tensor] | None = [] if to_end else None
            c_groups = [g for g in self.c_groups if any(g is cached for cached in self.cached_groups)]
            squares: dict[str, torch.Tensor] = {}  # by operator
            self._dense_inputs[b] = dict(zip(names, inputs_of_many(self.dense, modules, self.calls[b], hidden,
                                                                    self.device, outputs,
                                                                    self._square_hooks(c_groups, squares))))
            self._dense_c[b] = {g.operators[0].name: torch.cat([squares[op.name] for op in g])
                                for g in c_groups if all(op.name in squares for op in g)}
            if outputs:
                self.dense_outputs[b] = outputs[0]
        return skip_tokens(self._dense_inputs[b].pop(group.operators[0].name), self.skip)

    def _square_hooks(self, groups: list[OperatorGroup], squares: dict[str, torch.Tensor]
                      ) -> dict[nn.Module, Callable[[torch.Tensor], None]]:
        """Output hooks on the dense copy's operators of ``groups``: each puts its output's
        :func:`squared_outputs` (bias excluded, over the statistics' tokens) in ``squares`` by
        operator name, where the output is in :attr:`stats_dtype`."""
        assert self.dense is not None

        def keeper(name: str, bias: torch.Tensor | None) -> Callable[[torch.Tensor], None]:
            def keep(out: torch.Tensor) -> None:
                if out.dtype == self.stats_dtype:
                    squares[name] = squared_outputs(skip_tokens(out, self.skip), bias)
            return keep

        hooks = {}
        for g in groups:
            for op in g:
                module = self.dense.get_submodule(op.name)
                bias = getattr(module, "bias", None)
                hooks[module] = keeper(op.name, None if bias is None else bias.detach())
        return hooks

    def dense_c(self, group: OperatorGroup, b: int) -> torch.Tensor | None:
        """Batch ``b``'s ``c`` of ``group`` (``Σ_t (X W₀ᵀ)²`` per output row of its operators, in
        order) from the shared forward, once :meth:`dense_input` ran it; None where it was not
        computed (the group's accumulator then streams ``D = XᵀX``)."""
        return self._dense_c.get(b, {}).pop(group.operators[0].name, None)

    def dense_output(self, b: int, hidden: torch.Tensor) -> torch.Tensor:
        """The dense copy's output for batch ``b`` (on the CPU): from the shared forward (kept
        for tuning, else handed over once), or one forward of its own."""
        if b in self.dense_outputs:
            return self.dense_outputs[b] if self.keep_dense_outputs else self.dense_outputs.pop(b)
        assert self.dense is not None
        return run_block(self.dense, self.calls[b], hidden, self.device)

    def pruned_inputs(self, group: OperatorGroup, hidden: Hidden) -> Iterator[torch.Tensor]:
        """``X*`` of ``group`` batch by batch: the next pause of the stepped forwards (held there
        already), or recomputed one batch at a time (never all batches at once)."""
        if self.pruned_forwards is not None:
            return (skip_tokens(x, self.skip) for x in self.pruned_forwards.step())
        return (self.input_of(False, group, b, h) for b, h in enumerate(hidden))

    def keep(self, group: OperatorGroup, x_star: torch.Tensor) -> None:
        """Keep ``x_star`` (one batch's ``X*`` of ``group``) where ``group`` reads the input kept
        for the block tuning (:attr:`keep_inputs_of`)."""
        if self.keep_inputs_of is not None and group.operators[0].name == self.keep_inputs_of:
            self.kept_inputs.append(x_star.detach().cpu())

    def close(self) -> None:
        """End the paused forwards (a block whose output is not needed, or an error)."""
        if self.pruned_forwards is not None:
            self.pruned_forwards.close()
            self.pruned_forwards = None
        self.residual_parts = None


class PrunedStream:
    """``block_inputs="pruned"``: the pruned model's hidden states enter every block."""

    mode: ClassVar[str] = "pruned"
    #: Whether residual correction applies (:mod:`fistaopt.llm.residual`): ``X`` and ``X*`` come
    #: from the same hidden states, so ``R − R*`` is the block's own residual error.
    corrects_residual: ClassVar[bool] = True

    def __init__(self, hidden: Hidden) -> None:
        self.hidden = hidden
        self.model_targets: Hidden | None = None  # the dense model's hidden states, once carried
        self._additive: dict[str, bool] = {}  # adds_to_output / reads_input_of / returns_output_of, by block class and module

    def dense_model_outputs(self, dense: nn.Module, calls: list[BlockCall], device: torch.device) -> Hidden:
        """The dense model's hidden states after this block: ``dense`` (the block's unpruned
        copy) run on the dense model's hidden states entering it, which the stream carries
        from here on (block tuning's ``tune_target="model"``).  The first pruned block asks
        (tuned or not, before the stream advances), so until then nothing is pruned and the
        pruned stream is the dense model's."""
        entering = self.hidden if self.model_targets is None else self.model_targets
        self.model_targets = [run_block(dense, calls[b], h, device) for b, h in enumerate(entering)]
        return self.model_targets

    def needs_dense_copy(self, error_correction: bool, n_groups: int, last: bool) -> bool:
        return error_correction and n_groups > 1

    def share_dense_forward(self, work: BlockWork, groups: list[OperatorGroup]) -> None:
        """Let ``groups`` (the groups after the first) read ``X`` from one dense forward per batch."""
        if work.dense is not None:
            work.cache_dense_inputs(groups, self.hidden)

    def start_pruned_forwards(self, work: BlockWork, groups: list[OperatorGroup]) -> None:
        """With error correction: one forward of the block per batch, paused before each of
        ``groups``, when it fits :func:`stepped_forward_budget` (else ``X*`` is recomputed per group)."""
        held = held_bytes(self.hidden, [g.d_in for g in groups])
        if held <= stepped_forward_budget(work.device, work.cache_bytes):
            work.pruned_forwards = SteppedForwards(work.block, [g.operators[0].module for g in groups], work.calls,
                                                   self.hidden, work.device)
            work.held = held

    def group_statistics(self, work: BlockWork, group: OperatorGroup, first: bool, acc: LayerStatsAccumulator) -> None:
        """Stream ``X`` and ``X*`` of one group (error correction; the first group has ``X* = X``),
        and ``c`` where the shared dense forward gives it (:meth:`BlockWork.dense_c`)."""
        for b, (h, x_star) in enumerate(zip(self.hidden, work.pruned_inputs(group, self.hidden))):
            work.keep(group, x_star)
            if first or work.dense is None:  # nothing of this block is pruned yet
                acc.add(x_star)
            else:
                x = work.dense_input(group, b, h)  # first: its shared forward makes what dense_c reads
                acc.add(x, x_star, c=work.dense_c(group, b) if acc.takes_c else None)

    def adds_to_output(self, work: BlockWork, name: str, comm: Communicator = SINGLE) -> bool:
        """Whether the block's operator ``name`` adds its output to the block's
        (:func:`~fistaopt.llm.residual.adds_to_output` on the dense copy and the first batch;
        checked once per block class and operator, and agreed over ``comm``'s ranks, which
        check their own first batch)."""
        assert work.dense is not None
        key = f"{type(work.dense).__qualname__}.{name}"
        if key not in self._additive:
            adds = adds_to_output(work.dense, name, work.calls[0], self.hidden[0], work.device)
            self._additive[key] = comm.all_agree(adds)
        return self._additive[key]

    def holds_tuned_input(self, work: BlockWork, name: str, operator: str, comm: Communicator = SINGLE) -> bool:
        """Whether the block tuning may train submodule ``name`` alone on the ``X*`` of its
        ``operator`` (:mod:`fistaopt.llm.block_tune`, held inputs): ``name`` is called once,
        its input is ``operator``'s and its output adds to the block's (checked on the dense
        copy and the first batch, once per block class; agreed over ``comm``'s ranks)."""
        assert work.dense is not None
        key = f"{type(work.dense).__qualname__}.{name}<{operator}"
        if key not in self._additive:
            reads = reads_input_of(work.dense, name, operator, work.calls[0], self.hidden[0], work.device)
            self._additive[key] = comm.all_agree(reads)
        # agreed by every rank, so every rank takes the same branch (adds_to_output agrees over them too)
        return self._additive[key] and self.adds_to_output(work, name, comm)

    def held_rests(self, work: BlockWork, name: str, comm: Communicator = SINGLE) -> Hidden | None:
        """Residual correction's ``R*`` per batch as the rest of the block's output beside
        submodule ``name`` (:mod:`fistaopt.llm.block_tune`, held inputs), where ``name`` holds
        the operator that absorbed the residual error and returns exactly its output (checked
        on the dense copy and the first batch, once per block class; agreed over ``comm``'s
        ranks); else None.  Taken, the parts are dropped: :meth:`block_outputs` then recomputes."""
        op = work.residual_of
        if work.residual_parts is None or op is None or not op.startswith(name + "."):
            return None
        assert work.dense is not None
        key = f"{type(work.dense).__qualname__}.{name}>{op}"
        if key not in self._additive:
            returns = returns_output_of(work.dense, name, op, work.calls[0], self.hidden[0], work.device)
            self._additive[key] = comm.all_agree(returns)
        if not self._additive[key]:
            return None
        _, rests = work.residual_parts
        work.residual_parts = None
        return rests

    def residual_statistics(self, work: BlockWork, group: OperatorGroup, acc: LayerStatsAccumulator) -> None:
        """Stream the last group's ``X*`` and the targets ``Y = out − R* − b`` that make the
        pruned block's output the dense block's (``work.residual_of``; :mod:`fistaopt.llm.residual`).
        ``R*`` is the block's output with that operator's output zero: the paused forwards end
        here (their outputs later ``R* + x* Wᵀ + b``), else one forward per batch gives ``X*``
        and ``R*`` (``R*`` is kept, and :meth:`block_outputs` recomputes ``X*``: the same
        outputs, bit for bit)."""
        assert work.residual_of is not None
        op = group.operators[0]
        module = work.block.get_submodule(work.residual_of)
        bias = getattr(module, "bias", None)
        xs: Hidden | None = None
        rests: Hidden = []
        if work.pruned_forwards is not None:
            # in place before the forwards resume: a forward looks up ``module.forward`` as it
            # enters the module, before the pause there
            with zero_output(module, op.d_out):
                xs = work.pruned_forwards.step()
                rests = [o.float() for o in work.pruned_forwards.finish()]
            work.pruned_forwards = None
        for b, h in enumerate(self.hidden):
            if xs is not None:
                x_star, rest = xs[b], rests[b]
            else:
                with zero_output(module, op.d_out), recorded_calls(module) as calls:
                    rest = run_block(work.block, work.calls[b], h, work.device).float()
                x_star = calls[0][0]
                rests.append(rest)
            work.keep(group, x_star)
            Y = work.dense_output(b, h).float() - rest
            if bias is not None:
                Y -= bias.detach().float().cpu()
            Y = Y.reshape(*x_star.shape[:-1], op.d_out)  # x*'s token layout (OPT: (tokens, d))
            acc.add_targets(skip_tokens(Y, work.skip), skip_tokens(x_star, work.skip))
        work.residual_parts = (xs, rests)

    def dense_statistics(self, work: BlockWork, groups: list[OperatorGroup], accs: list[LayerStatsAccumulator]) -> None:
        """Every group's ``X* = X`` from one dense forward per batch (no error correction)."""
        modules = [work.block.get_submodule(g.operators[0].name) for g in groups]
        for b, h in enumerate(self.hidden):
            for acc, x in zip(accs, inputs_of_many(work.block, modules, work.calls[b], h, work.device)):
                acc.add(skip_tokens(x, work.skip))

    def block_outputs(self, work: BlockWork) -> Hidden:
        """The pruned block's outputs, one per batch (``R* + x* Wᵀ`` after residual correction,
        the stepped forwards' ends, or recomputed)."""
        if work.residual_parts is not None:
            assert work.residual_of is not None
            module = work.block.get_submodule(work.residual_of)
            xs, rests = work.residual_parts
            work.residual_parts = None
            outputs = []
            with torch.no_grad():
                for b, (rest, h) in enumerate(zip(rests, self.hidden)):
                    x = xs[b] if xs is not None else input_of(work.block, module, work.calls[b], h, work.device)
                    outputs.append((rest + module(x).float().cpu().reshape(rest.shape)).to(h.dtype))
            return outputs
        if work.pruned_forwards is not None:
            out = work.pruned_forwards.finish()
            work.pruned_forwards = None
            return out
        return [run_block(work.block, work.calls[b], h, work.device) for b, h in enumerate(self.hidden)]

    def advance(self, work: BlockWork) -> None:
        """The next block's inputs: the pruned block's outputs."""
        self.hidden = self.block_outputs(work)

    def pass_through(self, block: nn.Module, calls: list[BlockCall], device: torch.device) -> None:
        """Run a block that stays dense."""
        self.hidden = [run_block(block, calls[b], h, device) for b, h in enumerate(self.hidden)]
        if self.model_targets is not None:
            self.model_targets = [run_block(block, calls[b], h, device) for b, h in enumerate(self.model_targets)]

    def state(self) -> dict[str, Hidden]:
        state = {"pruned": self.hidden}
        if self.model_targets is not None:
            state["model"] = self.model_targets
        return state

    def restore(self, state: dict[str, Hidden]) -> None:
        self.hidden = state["pruned"]
        self.model_targets = state.get("model")


class DenseStream(PrunedStream):
    """``block_inputs="dense"``: the dense model's hidden states enter every block (the paper)."""

    mode: ClassVar[str] = "dense"

    def needs_dense_copy(self, error_correction: bool, n_groups: int, last: bool) -> bool:
        return error_correction and (n_groups > 1 or not last)

    def dense_statistics(self, work: BlockWork, groups: list[OperatorGroup], accs: list[LayerStatsAccumulator]) -> None:
        """As the base class, but each forward runs to the end and keeps the dense block output."""
        modules = [work.block.get_submodule(g.operators[0].name) for g in groups]
        captured: dict[int, torch.Tensor] = {}

        def hook(mod: nn.Module, args: tuple) -> None:
            captured.setdefault(id(mod), args[0].detach())

        handles = [m.register_forward_pre_hook(hook) for m in modules]
        try:
            for b, h in enumerate(self.hidden):
                captured.clear()
                work.outputs.append(run_block(work.block, work.calls[b], h, work.device))
                for acc, m in zip(accs, modules):
                    acc.add(skip_tokens(captured[id(m)], work.skip))
        finally:
            for handle in handles:
                handle.remove()

    def advance(self, work: BlockWork) -> None:
        """The next block's inputs: the dense block's outputs (captured already, or from the copy)."""
        if work.outputs:
            self.hidden = work.outputs
        else:
            assert work.dense is not None
            self.hidden = [run_block(work.dense, work.calls[b], h, work.device) for b, h in enumerate(self.hidden)]


class CorrectedStream(PrunedStream):
    """``block_inputs="corrected"``: ``X*`` from the pruned model's stream, ``X`` from the dense model's."""

    mode: ClassVar[str] = "corrected"
    corrects_residual: ClassVar[bool] = False  # X comes from another stream than X*

    def __init__(self, hidden: Hidden) -> None:
        super().__init__(hidden)
        self.dense_hidden = hidden

    def needs_dense_copy(self, error_correction: bool, n_groups: int, last: bool) -> bool:
        return True

    def share_dense_forward(self, work: BlockWork, groups: list[OperatorGroup]) -> None:
        """Nothing: here ``X`` comes from the dense stream, one forward per group."""

    def start_pruned_forwards(self, work: BlockWork, groups: list[OperatorGroup]) -> None:
        """Nothing: here ``X*`` is recomputed per group."""

    def group_statistics(self, work: BlockWork, group: OperatorGroup, first: bool, acc: LayerStatsAccumulator) -> None:
        for b, (h, dh) in enumerate(zip(self.hidden, self.dense_hidden)):
            acc.add(work.input_of(True, group, b, dh), work.input_of(False, group, b, h))

    def dense_statistics(self, work: BlockWork, groups: list[OperatorGroup], accs: list[LayerStatsAccumulator]) -> None:
        raise ValueError("block_inputs='corrected' needs error_correction=True")

    def advance(self, work: BlockWork) -> None:
        assert work.dense is not None
        super().advance(work)
        self.dense_hidden = [run_block(work.dense, work.calls[b], h, work.device) for b, h in enumerate(self.dense_hidden)]

    def pass_through(self, block: nn.Module, calls: list[BlockCall], device: torch.device) -> None:
        super().pass_through(block, calls, device)
        self.dense_hidden = [run_block(block, calls[b], h, device) for b, h in enumerate(self.dense_hidden)]

    def state(self) -> dict[str, Hidden]:
        return {"pruned": self.hidden, "dense": self.dense_hidden}

    def restore(self, state: dict[str, Hidden]) -> None:
        self.hidden, self.dense_hidden = state["pruned"], state["dense"]


STREAMS: dict[str, type[PrunedStream]] = {s.mode: s for s in (PrunedStream, DenseStream, CorrectedStream)}
BLOCK_INPUT_MODES: tuple[str, ...] = tuple(STREAMS)


def make_stream(mode: str, hidden: Hidden) -> PrunedStream:
    """The stream of block-input mode ``mode`` starting from block 0's inputs ``hidden``."""
    return STREAMS[mode](hidden)
