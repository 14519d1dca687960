"""Non-uniform sparsity allocation: how many weights each operator loses, the total fixed.

``PruneConfig.allocation`` picks the rule (unstructured patterns only; N:M keeps its
fixed per-row pattern):

- ``"uniform"``: every operator at the target sparsity ``s`` (no pre-pass).
- ``"owl"`` (Yin et al., 2023, "Outlier Weighed Layerwise sparsity"; llm-compressor's
  ``sparsity_profile="owl"``): per decoder block ``b`` the outlier ratio
  ``D_b = #{A_ij > M · mean(A)} / #A`` of the Wanda scores ``A_ij = |W_ij| · ‖X_j‖₂`` of all
  the block's operators together (``M = owl_threshold``).  The published normalisation
  maps the ratios linearly onto ``[0, 2·max_deviation]`` (min → 0, max → 2·dev) and
  centres them, so ``s_b = s − (d_b − mean(d))``: blocks with more outliers are pruned
  less.  Here the mean is weighted by the blocks' parameter counts (OWL's plain mean when
  all blocks have the same size), so the weighted mean of ``s_b`` is ``s``.
- ``"convex"``: the ℓ1 problems choose.  Every operator ``o`` gets the relative problem
  ``½‖X(W − W₀)ᵀ‖²_F / ‖XW₀ᵀ‖²_F + λ Σ_ij ω_j |W_ij| / ‖ΩW₀‖₁`` with ``ω_j = √H_jj``
  (fistaopt's scaled penalty) and ONE ``λ`` shared by all operators of the model: both
  terms are relative (the penalty divided by ``‖ΩW₀‖₁ = Σ_ij ω_j|W₀_ij|``), so ``λ``
  compares operators of any scale, and an operator whose weights cost little output
  energy gets more zeros at the same ``λ``.  Each operator's non-zero fraction
  ``ν_o(λ)`` is measured on a grid of ``CONVEX_GRID`` values of ``λ`` (log-spaced over
  ``[1e-3, 1]·λ_max,o``) by ``CONVEX_ITERATIONS`` FISTA steps from ``W₀`` on
  ``CONVEX_ROWS`` evenly spaced rows (rows are independent problems given ``H``), all
  grid points in one batched solve; ``ν_o`` is interpolated linearly in ``log λ``, and
  ``λ`` is bisected so that ``Σ_o n_o · clip(1 − ν_o(λ), s ± max_deviation) = s · Σ_o n_o``.

What is exact and what is approximate: the TOTAL is exact — :func:`exact_counts` turns
the per-operator sparsities into integer per-row pruned counts (the unit a row-scope
pattern prunes in) whose sum equals, weight for weight, what the uniform allocation
prunes, every operator within ``s ± max_deviation`` (widened to the uniform count when
that band holds no integer).  The per-operator sparsities are as exact as the rule's
statistics: OWL's are exact given the calibration; the convex rule's ``ν_o(λ)`` are
approximate (fixed iteration budget, a row sample, interpolation between grid points),
so the allocation follows the ℓ1 path's ranking of the operators, not its exact values.

Both rules read the DENSE model: one forward of the calibration through the dense
blocks, block by block (:func:`dense_pass`), keeping per block only what the rule needs
(the column energies for OWL, ``H`` of one block for the convex rule, dropped after the
block's operators are summarised).  In low-memory mode the pass asks the block residency
for each block in turn (``load(i)``, forward, ``unload(i)``), so one block is resident
at a time, as in the prune loop.

With several ranks (:mod:`fistaopt.llm.distributed`, row shares) the pass is
data-parallel: every rank forwards its own calibration batches, and the statistics are
summed over the ranks before they are read — OWL's squared column sums ``Σ_t X_tj²``
(the norms ``‖X_j‖`` are their roots, taken after the sum), the convex rule's ``H``
(as the prune sums it).  The convex rule's non-zero curves, the costly part, are
computed by one rank each (operator ``k`` by rank ``k mod world_size``) and gathered.
Rank 0's per-operator figures are then shared, and every rank rounds them to the same
integer counts: the ranks agree bit for bit whether or not the backend's sums are
bit-identical on every rank.  Against one process, the sums only add the same terms in
another order: OWL's counts are the same (unless a Wanda score lies within rounding of
the outlier threshold); the convex rule's ``ν_o(λ)`` may move by an entry that sits at
the ℓ1 threshold, hence ``λ`` slightly and a count by a weight per row (measured on the
tiny models of ``tests/test_allocation_ranks.py``: the same counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from fistaopt.layer.lam import l1_solver
from fistaopt.llm.capture import BlockInputs, run_block
from fistaopt.llm.distributed import SINGLE, Communicator
from fistaopt.llm.model import Operator, discover_operators_with_inputs
from fistaopt.llm.streams import skip_tokens
from fistaopt.problems import LayerStatsAccumulator
from fistaopt.problems.lasso import LassoProblem

if TYPE_CHECKING:
    from fistaopt.llm.prune import BlockResidency


ALLOCATIONS = ("uniform", "owl", "convex")
CONVEX_GRID = 10  # λ values per operator
CONVEX_ITERATIONS = 40  # FISTA steps per λ, from W₀
CONVEX_ROWS = 128  # rows per operator whose non-zeros are counted
#: OWL's statistics come from the first calibration batches holding this many windows
#: (``PruneConfig.owl_windows``): on SmolLM2-135M at 70% the block sparsities from 8 windows
#: are those from 32 within 0.002, and the pre-pass takes 17.0 s instead of 59.8 s on one thread
#: (``benchmarks/owl_prepass.py``, docs/pruning.md).
OWL_WINDOWS = 8


@dataclass(frozen=True)
class Slot:
    """One operator to allocate: block index, name, ``d_out``, ``d_in``."""

    block: int
    name: str
    d_out: int
    d_in: int

    @property
    def size(self) -> int:
        return self.d_out * self.d_in


@dataclass
class Allocation:
    """Per-operator sparsities (``sparsities[k]`` for ``slots[k]``) and what the rule saw."""

    rule: str
    target: float
    slots: list[Slot]
    sparsities: list[float]
    info: dict[str, Any] = field(default_factory=dict)  # rule figures: λ, outlier ratios

    def for_block(self, index: int) -> dict[str, float]:
        """``{operator name: sparsity}`` of block ``index``."""
        return {s.name: v for s, v in zip(self.slots, self.sparsities) if s.block == index}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: rule, target, per-operator and per-block targets (parameter-weighted)."""
        ops = [{"block": s.block, "name": s.name, "shape": [s.d_out, s.d_in], "target": v}
               for s, v in zip(self.slots, self.sparsities)]
        return {"rule": self.rule, "target": self.target, **self.info, "operators": ops,
                "blocks": block_view(ops, "target")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Allocation":
        """The allocation :meth:`to_dict` wrote (a checkpoint's)."""
        ops = d["operators"]
        info = {k: v for k, v in d.items() if k not in ("rule", "target", "operators", "blocks")}
        return cls(d["rule"], float(d["target"]), [Slot(o["block"], o["name"], *o["shape"]) for o in ops],
                   [float(o["target"]) for o in ops], info)


def block_view(ops: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Per block: the parameter-weighted mean of ``op[key]`` over its operators."""
    sums: dict[int, list[float]] = {}
    for op in ops:
        n = op["shape"][0] * op["shape"][1]
        acc = sums.setdefault(op["block"], [0.0, 0.0])
        acc[0] += n * op[key]
        acc[1] += n
    return [{"block": b, key: v[0] / v[1]} for b, v in sorted(sums.items())]


# ---------------------------------------------------------------------- exact totals
def uniform_count(width: int, sparsity: float) -> int:
    """Pruned entries per unit (row) of ``width`` at ``sparsity``, as :func:`fistaopt.sparsity.project` keeps them."""
    return width - int(round((1.0 - sparsity) * width))


def exact_counts(units: Sequence[int], widths: Sequence[int], desired: Sequence[float], target: float,
                 max_deviation: float) -> list[int]:
    """Integer pruned counts per unit (``k_o`` of ``widths[o]`` in each of ``units[o]`` units).

    ``Σ_o units[o]·k_o`` equals the uniform total ``Σ_o units[o]·uniform_count(widths[o], target)``
    exactly; ``k_o / widths[o]`` stays within ``target ± max_deviation`` (or at the
    uniform count) and as close to ``desired[o]`` as the integers allow: the real counts
    are first shifted (water filling) to the exact total, then a knapsack over
    ``δ_o ∈ {−1, 0, 1, 2}`` around their floors minimises ``Σ units·(k − k*)²`` subject
    to the total (plain largest-remainder rounding cannot always hit a total made of
    ``units[o]``-sized steps).
    """
    u, w = np.asarray(units, dtype=np.int64), np.asarray(widths, dtype=np.int64)
    if not (len(u) == len(w) == len(desired)) or len(u) == 0:
        raise ValueError("units, widths and desired must be non-empty and of one length")
    uni = np.array([uniform_count(int(x), target) for x in w], dtype=np.int64)
    total = int((u * uni).sum())
    lo = np.minimum(np.ceil((target - max_deviation) * w - 1e-9).clip(0), uni).astype(np.int64)
    hi = np.maximum(np.floor((target + max_deviation) * w + 1e-9).clip(None, w - 1), uni).astype(np.int64)
    real = _water_fill(np.asarray(desired, dtype=np.float64) * w, u, w, lo, hi, total)
    base = np.floor(real).astype(np.int64)
    choice = _knapsack(u, base, real, lo, hi, total - int((u * base).sum()))
    return [int(x) for x in base + choice]


def _water_fill(real: np.ndarray, u: np.ndarray, w: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                total: int) -> np.ndarray:
    """``clip(real + c·w, lo, hi)`` with the shift ``c`` bisected so that ``Σ u·k`` is ``total``."""
    def count(c: float) -> float:
        return float((u * np.clip(real + c * w, lo, hi)).sum())

    a, b = -1.0, 1.0
    for _ in range(200):
        m = 0.5 * (a + b)
        a, b = (m, b) if count(m) < total else (a, m)
    return np.clip(real + b * w, lo, hi)


def _knapsack(u: np.ndarray, base: np.ndarray, real: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              residual: int) -> np.ndarray:
    """``δ_o ∈ {−1,0,1,2}`` (``lo ≤ base+δ ≤ hi``) with ``Σ u·δ = residual``, least ``Σ u·(base+δ−real)²``."""
    g = int(np.gcd.reduce(u))
    if residual % g:
        raise ValueError(f"cannot prune exactly {residual} more weights in steps of {g}")
    steps, deltas = u // g, np.array([-1, 0, 1, 2])
    offset = int(steps.sum())  # state = Σ steps·δ + offset, in [0, 3·offset]
    n_states = 3 * offset + 1
    cost = np.full(n_states, np.inf)
    cost[offset] = 0.0
    picks = np.zeros((len(u), n_states), dtype=np.int8)
    for o in range(len(u)):
        new = np.full(n_states, np.inf)
        for d in deltas:
            k = base[o] + d
            if k < lo[o] or k > hi[o]:
                continue
            shifted = np.full(n_states, np.inf)
            s = int(steps[o] * d)
            src = slice(max(0, -s), n_states - max(0, s))
            shifted[max(0, s): n_states - max(0, -s)] = cost[src]
            cand = shifted + u[o] * (k - real[o]) ** 2
            better = cand < new
            new[better], picks[o, better] = cand[better], d
        cost = new
    state = offset + residual // g
    if not 0 <= state < n_states or not math.isfinite(cost[state]):
        raise ValueError("no integer allocation meets the exact total within the deviation bounds")
    out = np.zeros(len(u), dtype=np.int64)
    for o in range(len(u) - 1, -1, -1):
        out[o] = picks[o, state]
        state -= int(steps[o] * out[o])
    return out


# ---------------------------------------------------------------------- the rules
def owl_block_sparsities(ratios: Sequence[float], params: Sequence[int], target: float,
                         max_deviation: float) -> list[float]:
    """OWL's block sparsities from the outlier ratios ``D_b`` (module docstring).

    ``d_b = 2·max_deviation·(D_b − min D)/(max D − min D)`` (0 when all ratios are equal),
    ``s_b = target − (d_b − Σ n_b d_b / Σ n_b)``.
    """
    r, n = np.asarray(ratios, dtype=np.float64), np.asarray(params, dtype=np.float64)
    span = float(r.max() - r.min())
    d = np.zeros_like(r) if span <= 0 else 2.0 * max_deviation * (r - r.min()) / span
    return [float(x) for x in target - (d - (n * d).sum() / n.sum())]


def outlier_ratio(weights: Sequence[torch.Tensor], norms: Sequence[torch.Tensor], threshold: float) -> float:
    """Fraction of Wanda scores ``|W_ij|·‖X_j‖`` above ``threshold`` × their mean, over all operators given."""
    scores = [W.abs().double() * n.double()[None, :] for W, n in zip(weights, norms)]
    mean = sum(float(a.sum()) for a in scores) / sum(a.numel() for a in scores)
    return sum(int((a > threshold * mean).sum()) for a in scores) / sum(a.numel() for a in scores)


def nonzero_curve(W0: torch.Tensor, H: torch.Tensor, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """``(λ grid, ν(λ))`` of one operator's relative ℓ1 problem (module docstring), ``W0 (d_out, d_in)``."""
    d_out = W0.shape[0]
    rows = torch.unique(torch.linspace(0, d_out - 1, min(CONVEX_ROWS, d_out)).round().long())
    omega = torch.sqrt(torch.diagonal(H)).clamp_min(1e-12)
    energy = float(((W0 @ H) * W0).sum())  # ‖XW₀ᵀ‖² per token
    mass = float((W0.abs() * omega[None, :]).sum())  # ‖ΩW₀‖₁
    problem = LassoProblem.from_layer_statistics(W0[rows], H, damp=damp).with_penalty_weights(omega)
    scale = energy / max(mass, 1e-30)  # shared λ → this operator's unscaled λ
    lam_max = float(problem.lam_max().max()) / scale
    grid = lam_max * np.logspace(-3.0, 0.0, CONVEX_GRID)
    lams = torch.tensor(grid * scale, dtype=problem.dtype)[:, None].expand(-1, len(rows))
    solver = l1_solver("fista", CONVEX_ITERATIONS, {})
    res = solver.solve(problem.with_lam(lams), W0=W0[rows].expand(CONVEX_GRID, -1, -1).clone())
    nu = (res.W != 0).double().mean(dim=(1, 2)).numpy()
    return grid, np.minimum.accumulate(nu)  # non-increasing in λ


def _nu_at(grid: np.ndarray, nu: np.ndarray, lam: float) -> float:
    if lam >= grid[-1]:
        return 0.0
    return float(np.interp(math.log(lam), np.log(grid), nu))


def convex_sparsities(curves: Sequence[tuple[np.ndarray, np.ndarray]], sizes: Sequence[int], target: float,
                      max_deviation: float) -> tuple[float, list[float]]:
    """The shared ``λ`` (bisected on ``log λ``) and the clipped sparsities ``1 − ν_o(λ)``."""
    n = np.asarray(sizes, dtype=np.float64)

    def at(lam: float) -> np.ndarray:
        s = np.array([1.0 - _nu_at(g, v, lam) for g, v in curves])
        return np.clip(s, target - max_deviation, target + max_deviation)

    a = math.log(min(g[0] for g, _ in curves)) - 1.0
    b = math.log(max(g[-1] for g, _ in curves)) + 1.0
    for _ in range(100):
        m = 0.5 * (a + b)
        a, b = (m, b) if float((n * at(math.exp(m))).sum()) < target * n.sum() else (a, m)
    lam = math.exp(b)
    return lam, [float(x) for x in at(lam)]


# ---------------------------------------------------------------------- the dense pre-pass
class ColumnEnergy:
    """``Σ_t X_tj²`` per input column: all OWL needs of an operator's input."""

    def __init__(self, d_in: int, *, dtype: torch.dtype = torch.float32, device: Any = None) -> None:
        self.sq = torch.zeros(d_in, dtype=dtype, device=device)

    def add(self, X: torch.Tensor) -> None:
        self.sq += X.reshape(-1, X.shape[-1]).to(self.sq.dtype).pow(2).sum(0)

    def column_norms(self) -> torch.Tensor:
        return self.sq.sqrt()


@torch.no_grad()
def dense_pass(blocks: nn.ModuleList, inputs: BlockInputs, selected: Sequence[int], device: torch.device,
               skip: int, make_acc: Callable[[int], Any], residency: BlockResidency | None = None,
               counted: int | None = None) -> Iterator[tuple[int, list[tuple[Operator, Any]]]]:
    """Run the calibration through the dense blocks ``0 … max(selected)``, in turn.

    Yields, for each selected block, ``(index, [(operator, acc)])`` where ``acc`` (from
    ``make_acc(d_in)``, shared by the operators of one input group) holds that group's
    input statistics.  The block is on ``device`` while the caller reads it.  With a
    ``residency`` (low-memory mode) block ``i`` is ``load``-ed before its forward and
    ``unload``-ed after it: one block resident at a time.

    ``counted``: the statistics take the first ``counted`` batches of ``inputs`` (all when
    None) and only those are forwarded; with ``counted=0`` the first batch is forwarded
    all the same (the operators are found by watching a forward) and adds nothing.  The
    forward of the first batch is the one that finds the operators: no batch runs twice.
    """
    n = len(inputs.hidden) if counted is None else min(counted, len(inputs.hidden))
    hidden = list(inputs.hidden[:max(n, 1)])
    for i in range(max(selected) + 1):
        if residency is not None:
            residency.load(i)
        block, calls = blocks[i], [c[i] for c in inputs.calls]
        home = next(block.parameters()).device
        block.to(device)
        try:
            ops: list[tuple[Operator, Any]] = []
            out: list[torch.Tensor] = []
            if i in selected:  # batch 0's forward finds the operators and their inputs
                [(groups, group_inputs)] = discover_operators_with_inputs(
                    [block], lambda: out.append(run_block(block, calls[0], hidden[0], device)))
                handles = []
                for g, x in zip(groups, group_inputs):
                    acc = make_acc(g.d_in)
                    if n > 0:
                        acc.add(skip_tokens(x, skip))
                    ops += [(op, acc) for op in g.operators]
                    handles.append(block.get_submodule(g.operators[0].name).register_forward_pre_hook(
                        lambda mod, args, acc=acc: acc.add(skip_tokens(args[0].detach(), skip))))
                del group_inputs
                try:
                    out += [run_block(block, calls[b], h, device) for b, h in enumerate(hidden) if b > 0]
                finally:
                    for handle in handles:
                        handle.remove()
                hidden = out
            else:
                hidden = [run_block(block, calls[b], h, device) for b, h in enumerate(hidden)]
            if i in selected:
                yield i, ops
        finally:
            block.to(home)
            if residency is not None:
                residency.unload(i)


def plan_allocation(blocks: nn.ModuleList, inputs: BlockInputs, selected: Sequence[int], config: Any,
                    device: torch.device, *, comm: Communicator = SINGLE,
                    residency: BlockResidency | None = None) -> Allocation | None:
    """The allocation ``config.allocation_rule`` asks for over the ``selected`` blocks (None for uniform).

    ``inputs`` holds this rank's calibration batches; ``comm`` the ranks whose batches make
    up the calibration (their statistics are summed; :data:`SINGLE` when ``inputs`` holds
    all of them).  ``residency``: where the blocks live when they are not in ``blocks``
    (low-memory mode; see :func:`dense_pass`).  Every rank returns the same allocation.
    """
    rule = config.allocation_rule
    if rule == "uniform":
        return None
    dtype = config.torch_stats_dtype
    slots: list[Slot] = []
    if rule == "owl":
        ratios = []
        counted, windows = owl_batches(inputs, config.owl_windows, comm)
        for i, ops in dense_pass(blocks, inputs, selected, device, config.skip_tokens,
                                 lambda d: ColumnEnergy(d, dtype=dtype, device=device), residency, counted):
            comm.sum_over_ranks([acc.sq for acc in _accumulators(ops)])
            slots += [Slot(i, op.name, op.d_out, op.d_in) for op, _ in ops]
            ratios.append(outlier_ratio([op.get_weight().to(device) for op, _ in ops],
                                        [acc.column_norms() for _, acc in ops], config.owl_threshold))
        params = [sum(s.size for s in slots if s.block == i) for i in selected]
        per_block = dict(zip(selected, owl_block_sparsities(ratios, params, config.sparsity, config.max_deviation)))
        desired = [per_block[s.block] for s in slots]
        info: dict[str, Any] = {"owl_threshold": config.owl_threshold, "owl_windows": windows,
                                "outlier_ratios": {str(i): r for i, r in zip(selected, ratios)}}
    else:
        mine: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # this rank's share of the curves, by slot
        for i, ops in dense_pass(blocks, inputs, selected, device, config.skip_tokens,
                                 lambda d: LayerStatsAccumulator(d, dtype=dtype, device=device), residency):
            for acc in _accumulators(ops):
                comm.reduce_statistics(acc)
            for op, acc in ops:
                if len(slots) % comm.world_size == comm.rank:
                    H = (acc.H / max(acc.n_tokens, 1)).to(torch.float32)
                    mine[len(slots)] = nonzero_curve(op.get_weight().to(device), H, config.damping)
                slots.append(Slot(i, op.name, op.d_out, op.d_in))
        curves = {k: c for part in comm.gather_objects(mine) for k, c in part.items()}
        lam, desired = convex_sparsities([curves[k] for k in range(len(slots))], [s.size for s in slots],
                                         config.sparsity, config.max_deviation)
        info = {"lam": lam}
    if comm.distributed:  # rank 0's figures, so that every rank rounds the same numbers
        desired, info = comm.gather_objects((desired, info))[0]
    return _exact(rule, config, slots, desired, info)


def owl_batches(inputs: BlockInputs, windows: int | None, comm: Communicator) -> tuple[int, int]:
    """How many of this rank's batches OWL counts, and the windows counted over all ranks.

    OWL counts the first batches of the whole calibration that hold ``windows`` windows
    (all when None).  The ranks hold contiguous shares of the batches in rank order
    (:meth:`Communicator.local_indices`), so a rank counts the part of that prefix it
    holds: the same windows whatever the number of ranks.
    """
    sizes = [int(h.shape[0]) for h in inputs.hidden]
    per_rank = comm.gather_objects(sizes)
    flat = [n for part in per_rank for n in part]
    take, total = 0, 0
    while take < len(flat) and (windows is None or total < windows):
        total += flat[take]
        take += 1
    offset = sum(len(part) for part in per_rank[:comm.rank])
    return max(0, min(take - offset, len(sizes))), total


def _accumulators(ops: Sequence[tuple[Operator, Any]]) -> list[Any]:
    """The distinct statistics of a block's operators (one per input group), in order."""
    return list({id(acc): acc for _, acc in ops}.values())


def _exact(rule: str, config: Any, slots: list[Slot], desired: list[float], info: dict[str, Any]) -> Allocation:
    """The allocation with :func:`exact_counts` (per row, or per operator for layer scope)."""
    layer = config.pattern_spec.scope == "layer"
    units = [1 if layer else s.d_out for s in slots]
    widths = [s.size if layer else s.d_in for s in slots]
    counts = exact_counts(units, widths, desired, config.sparsity, config.max_deviation)
    sparsities = [k / w for k, w in zip(counts, widths)]
    return Allocation(rule, config.sparsity, slots, sparsities, {"max_deviation": config.max_deviation, **info})
