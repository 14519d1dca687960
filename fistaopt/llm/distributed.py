"""Prune across processes with ``torch.distributed``: data-parallel capture, sharded solves.

The layer problem of one operator is made for it.  Its statistics are sums over
calibration tokens, and its rows are independent problems that share one Gram matrix:

    H = Σ_r H_r        C = Σ_r C_r        D = Σ_r D_r        (d_in, d_in), r = rank
    c = Σ_r c_r        G = Σ_r G_r                           (where c or G are streamed)
    W = [W_0; W_1; …]  rank r solves rows W_r (d_out_r, d_in) against the summed H

So every rank holds its share of the calibration batches (hidden states never leave
their rank), accumulates the statistics of one operator group on them, and the sums are
all-reduced once per group (:meth:`Communicator.reduce_statistics`).  Each operator's
rows are split into balanced contiguous shares (:func:`row_shares`); each rank prunes
its rows with the chosen method, and the pruned rows are all-gathered
(:meth:`Communicator.all_gather_rows`) so every rank writes identical weights before the
next group (intra-block error correction stays exact).  A pattern whose rows share one
budget (``unstructured-layer``) is solved whole by rank 0 and gathered the same way.

A :class:`Communicator` of world size 1 calls no collective: the single-process path
is the same code, bit for bit.  Processes come from ``torchrun`` (:func:`from_env`) or
from :func:`launch` (``torch.multiprocessing``, one machine); gloo on the CPU, NCCL on
CUDA.  Every collective runs under the process group's timeout, so a rank that dies
makes the others fail instead of hanging; :func:`launch` also stops the other ranks as
soon as one raises.
"""

from __future__ import annotations

import datetime
import logging
import os
import resource
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fistaopt.llm.methods import PrunedWeight, prune_weight
from fistaopt.problems import LayerStatsAccumulator

logger = logging.getLogger(__name__)

#: Seconds a collective may wait for the other ranks before the run fails.
DEFAULT_TIMEOUT_S = 1800.0
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def row_shares(n: int, world_size: int) -> list[int]:
    """Balanced contiguous shares of ``n`` items over ``world_size`` ranks (the first get one more)."""
    base, extra = divmod(int(n), int(world_size))
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def _offsets(shares: Sequence[int]) -> list[int]:
    out = [0]
    for s in shares:
        out.append(out[-1] + s)
    return out


@dataclass
class TrafficCounter:
    """Bytes this rank sent into collectives, by kind, and the seconds it waited in them."""

    bytes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, kind: str, n_bytes: int, seconds: float) -> None:
        self.bytes[kind] = self.bytes.get(kind, 0) + int(n_bytes)
        self.seconds += seconds


class Communicator:
    """The ranks of one prune run; world size 1 is the single process (no collective).

    Args:
        rank, world_size: this process and the number of processes.
        device: where collective tensors must live (CUDA for NCCL, else the CPU).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu") -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size), got rank {rank}, world_size {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = torch.device(device)
        self.traffic = TrafficCounter()

    @classmethod
    def from_default_group(cls) -> "Communicator":
        """The communicator of the initialized default process group."""
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed has no initialized process group")
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes outputs, reports and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ data sharding
    def local_indices(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items (calibration batches, rows)."""
        offsets = _offsets(row_shares(n, self.world_size))
        return range(offsets[self.rank], offsets[self.rank + 1])

    def local_batches(self, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's calibration batches; every rank needs at least one."""
        if len(batches) < self.world_size:
            raise ValueError(f"{len(batches)} calibration batches cannot feed {self.world_size} ranks; "
                             f"use more samples or a smaller batch_size")
        return [batches[i] for i in self.local_indices(len(batches))]

    # ------------------------------------------------------------------ collectives
    def _timed(self, kind: str, n_bytes: int, op: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = op()
        self.traffic.add(kind, n_bytes, time.perf_counter() - t0)
        return out

    def reduce_statistics(self, acc: LayerStatsAccumulator) -> None:
        """Sum ``H`` (and with error correction ``C`` and ``D`` or ``c``, or the targets' ``G`` and
        ``c``) and the token count over the ranks, in place."""
        if not self.distributed:
            return
        self.sum_over_ranks(acc.sums())
        count = torch.tensor([float(acc.n_tokens)], dtype=torch.float64, device=acc.H.device)
        self.sum_over_ranks([count] + ([acc.c] if acc.c is not None else []))  # float64, one all-reduce
        acc.n_tokens = int(count.item())

    def all_agree(self, flag: bool) -> bool:
        """True where every rank's ``flag`` is True (one all-reduce): a decision each rank
        takes from its own data (as whether an operator adds to its block's output, checked on
        the rank's first batch) must be the same on all, or their statistics would not match."""
        if not self.distributed:
            return bool(flag)
        dissent = torch.tensor([0.0 if flag else 1.0], dtype=torch.float64)
        self.sum_over_ranks([dissent])
        return bool(dissent.item() == 0.0)

    def sum_over_ranks(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each of ``tensors`` (one dtype) by its sum over the ranks, in place (one all-reduce)."""
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(self.device)
        self._timed("all_reduce", flat.numel() * flat.element_size(), lambda: dist.all_reduce(flat))
        flat = flat.to(tensors[0].device)
        start = 0
        for t in tensors:
            t.copy_(flat[start:start + t.numel()].view_as(t))
            start += t.numel()

    def all_gather_rows(self, local: torch.Tensor, shares: Sequence[int]) -> torch.Tensor:
        """The full ``(Σ shares, d_in)`` matrix from each rank's ``local`` rows (``shares[r]`` of them)."""
        if not self.distributed:
            return local
        d_in, most = local.shape[-1], max(shares)
        padded = torch.zeros(most, d_in, dtype=local.dtype, device=self.device)
        padded[: local.shape[0]] = local.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._timed("all_gather", padded.numel() * padded.element_size(), lambda: dist.all_gather(parts, padded))
        return torch.cat([p[:s] for p, s in zip(parts, shares)]).to(local.device)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._timed("objects", 0, lambda: dist.all_gather_object(out, obj))
        return out

    def settle(self, failure: BaseException | None) -> None:
        """End a stretch of work that rank 0 does alone (writing the output): every rank learns its outcome.

        Every rank calls it once rank 0's stretch is over, rank 0 with its exception
        (``None``: success), the others with ``None``.  A barrier: no rank returns before
        rank 0 has called it.  On the other ranks it raises ``RuntimeError`` when rank 0
        failed, so they stop with an error instead of reporting success or waiting.
        Rank 0 must not call it when it failed before the stretch (the others are then in
        another collective): they fail there, by the timeout or when :func:`launch` stops them.
        """
        if not self.distributed:
            return
        outcomes = self.gather_objects(None if failure is None else f"{type(failure).__name__}: {failure}")
        if not self.is_main and outcomes[0] is not None:
            raise RuntimeError(f"rank 0 failed while writing the output: {outcomes[0]}")

    # ------------------------------------------------------------------ checkpoints
    def gather_stream(self, state: dict[str, list[torch.Tensor]], n_batches: int) -> dict[str, list[torch.Tensor]] | None:
        """The stream state of all ``n_batches`` batches in batch order on rank 0 (None elsewhere).

        A checkpoint thus holds the same stream whatever the world size, and any number
        of ranks can resume it (:meth:`local_stream`).
        """
        if not self.distributed:
            return state
        out: list[Any] = [None] * self.world_size
        n_bytes = sum(t.numel() * t.element_size() for hs in state.values() for t in hs)
        self._timed("gather_stream", n_bytes, lambda: dist.gather_object(state, out if self.is_main else None, dst=0))
        if not self.is_main:
            return None
        full = {k: [t for part in out for t in part[k]] for k in state}
        assert all(len(v) == n_batches for v in full.values())
        return full

    def local_stream(self, state: dict[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
        """This rank's batches of a checkpointed stream state (all batches, batch order)."""
        return {k: [v[i] for i in self.local_indices(len(v))] for k, v in state.items()}

    def summary(self, seconds: float) -> dict[str, Any]:
        """World size, per-rank seconds, peak host memory and bytes sent, gathered from every rank."""
        mine = {"seconds": seconds, "collective_seconds": self.traffic.seconds, "bytes": dict(self.traffic.bytes),
                "peak_host_bytes": peak_host_bytes()}
        ranks = self.gather_objects(mine)
        kinds = sorted({k for r in ranks for k in r["bytes"]})
        return {"world_size": self.world_size, "backend": dist.get_backend() if self.distributed else None,
                "rank_seconds": [r["seconds"] for r in ranks],
                "rank_collective_seconds": [r["collective_seconds"] for r in ranks],
                "rank_peak_host_bytes": [r["peak_host_bytes"] for r in ranks],
                "bytes_sent": {k: sum(r["bytes"].get(k, 0) for r in ranks) for k in kinds}}


SINGLE = Communicator()


class MainWrites:
    """The end of a run that rank 0 finishes alone (writing the output), closed by :meth:`Communicator.settle`.

        with MainWrites(comm) as writes:
            report = run_block_loop(...)   # collectives on every rank
            writes.begin()                 # from here on rank 0 works alone
            if comm.is_main:
                ...                        # write, commit

    Leaving the ``with`` settles on every rank (a barrier; rank 0 shares its exception,
    the others then raise), except after an exception raised before :meth:`begin`:
    the other ranks are in another collective then and fail there.
    """

    def __init__(self, comm: Communicator) -> None:
        self.comm, self.begun = comm, False

    def begin(self) -> None:
        self.begun = True

    def __enter__(self) -> "MainWrites":
        return self

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if error is None or (self.begun and isinstance(error, Exception)):
            self.comm.settle(error)


def peak_host_bytes() -> int:
    """Peak resident memory of this process (``ru_maxrss``; KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


# ---------------------------------------------------------------------- sharded prune
def _rows_independent(config: Any) -> bool:
    return config.pattern_spec.scope != "layer"


def prune_weight_sharded(comm: Communicator, W0: torch.Tensor, stats: LayerStatsAccumulator, config: Any) -> PrunedWeight:
    """:func:`~fistaopt.llm.methods.prune_weight` with the rows of ``W0 (d_out, d_in)`` split over the ranks.

    Every rank returns the same full weight.  The relative error is the sum of the shares'
    residual energies over the sum of their target energies (the single process's two sums,
    split by rows: no rank repeats a product with the full weight); the error before rounding
    is the rows' energy-weighted mean of the shares', λ the min / row-weighted mean / max,
    ``n_iter`` the most of any rank.
    """
    if not comm.distributed:
        return prune_weight(config.method, W0, stats, config)
    d_out = W0.shape[0]
    shares = row_shares(d_out, comm.world_size) if _rows_independent(config) else [d_out] + [0] * (comm.world_size - 1)
    rows = range(_offsets(shares)[comm.rank], _offsets(shares)[comm.rank + 1])
    part: dict[str, Any] = {"rows": len(rows)}
    if len(rows):
        mine = prune_weight(config.method, W0[rows.start:rows.stop], stats.rows(rows.start, rows.stop), config)
        W_mine = mine.W
        part.update(residual=mine.residual, energy=mine.energy, before=mine.rel_error_before_rounding,
                    lam=mine.lam, n_iter=mine.n_iter)
    else:
        W_mine = W0.new_zeros(0, W0.shape[1])
    W = comm.all_gather_rows(W_mine.to(W0.dtype), shares)
    parts = [p for p in comm.gather_objects(part) if p["rows"]]
    residual, energy = sum(p["residual"] for p in parts), sum(p["energy"] for p in parts)
    return PrunedWeight(W, residual / energy if energy > 0 else residual,
                        rel_error_before_rounding=_weighted(parts, "before", "energy"),
                        residual=residual, energy=energy,
                        lam=_merged_lam(parts), n_iter=max((p["n_iter"] for p in parts if p["n_iter"] is not None),
                                                           default=None))


def _weighted(parts: list[dict[str, Any]], key: str, weight: str) -> float | None:
    if any(p[key] is None for p in parts):
        return None
    total = sum(p[weight] for p in parts)
    return sum(p[key] * p[weight] for p in parts) / total if total > 0 else parts[0][key]


def _merged_lam(parts: list[dict[str, Any]]) -> dict[str, float] | None:
    lams = [(p["lam"], p["rows"]) for p in parts if p["lam"] is not None]
    if not lams:
        return None
    n = sum(r for _, r in lams)
    return {"min": min(l["min"] for l, _ in lams), "mean": sum(l["mean"] * r for l, r in lams) / n,
            "max": max(l["max"] for l, _ in lams)}


# ---------------------------------------------------------------------- process groups
def under_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) with a world of > 1."""
    return all(v in os.environ for v in TORCHRUN_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def backend_for(device: torch.device | str | None) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if device is not None and torch.device(device).type == "cuda" else "gloo"


def init_process_group(backend: str, *, rank: int | None = None, world_size: int | None = None,
                       timeout_s: float = DEFAULT_TIMEOUT_S) -> Communicator:
    """Join the default process group (the ``env://`` rendezvous of ``torchrun``) and return its communicator."""
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank or 0)))
    given = {} if rank is None else {"rank": rank, "world_size": world_size}  # else from the environment
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout_s)), **given)
    comm = Communicator.from_default_group()
    logger.info("rank %d of %d joined (%s, timeout %.0f s)", comm.rank, comm.world_size, backend, timeout_s)
    return comm


def from_env(device: torch.device | str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Communicator:
    """The communicator of a ``torchrun`` world (initialized once), or :data:`SINGLE` outside one."""
    if dist.is_initialized():
        return Communicator.from_default_group()
    if not under_torchrun():
        return SINGLE
    return init_process_group(backend_for(device), timeout_s=timeout_s)


def free_port() -> int:
    """A TCP port free on this machine now (for the rendezvous of :func:`launch`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, fn: Callable[..., Any], nproc: int, port: int, backend: str, timeout_s: float,
               args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc))
    comm = init_process_group(backend, rank=rank, world_size=nproc, timeout_s=timeout_s)
    ok = False
    try:
        fn(comm, *args)
        ok = True
    finally:
        _leave(ok)


def launch(fn: Callable[..., Any], nproc: int, args: tuple = (), *, backend: str = "gloo",
           timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Run ``fn(comm, *args)`` in ``nproc`` new processes on this machine, one per rank.

    ``fn`` must be importable (a module-level function).  Returns when every rank is
    done; when one raises, the others are stopped and
    ``torch.multiprocessing.ProcessRaisedException`` carries its traceback.
    """
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive int, got {nproc!r}")
    mp.start_processes(_rank_main, args=(fn, nproc, free_port(), backend, timeout_s, args), nprocs=nproc,
                       join=True, start_method="spawn")


def rank_device(device: torch.device | str | None, comm: Communicator) -> torch.device | str | None:
    """The execution device of this rank: its own GPU (``cuda:LOCAL_RANK``) when ``device`` is CUDA."""
    if device is None or not comm.distributed or torch.device(device).type != "cuda":
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", comm.rank)))


def close(comm: Communicator, ok: bool = True) -> None:
    """Leave the process group of a distributed ``comm`` (nothing for a single process).

    ``ok``: this rank finished its work without an error; it then waits for the others
    before the group is torn down (see :func:`_leave`).
    """
    if comm.distributed and dist.is_initialized():
        _leave(ok)


def _leave(ok: bool) -> None:
    """Destroy the default process group; after a barrier when this rank succeeded.

    Without the barrier a rank that finishes first tears its gloo connections down while
    the others still use theirs, and a gloo worker thread can abort the process
    ("terminate called without an active exception").  A rank that failed skips the
    barrier: the others are stopped by the launcher or by the collective timeout.
    """
    try:
        if ok:
            dist.barrier()
    finally:
        dist.destroy_process_group()
