"""Our solvers against the Lasso solvers a user would pick instead, one referee for all.

Every solver solves every row of every problem to the same certified relative duality
gap (``--tol``, 1e-6), checked by :meth:`fistaopt.LassoProblem.duality_gap` in float64,
on one thread.  Peers get the Gram form through a Cholesky factor, ``H = RᵀR``:
``X = R``, ``y_i = R⁻ᵀ g_i`` (so ``½‖y_i − X w‖² = ½ wᵀHw − g_iᵀw + const``); their own
tolerance is tightened ×0.1 from 1e-6 until the referee certifies their answer, and the
table reports the time of the certified fit and the tolerance it needed.

- ``sklearn``: ``Lasso(precompute=True)`` (Gram coordinate descent), one fit for all rows
  (row ``i`` of ``Y`` scaled by ``1/λ_i``, ``α = 1/n``, coefficients scaled back).
- ``celer``, ``skglm``: one ``Lasso`` fit per row; run only when installed (a separate
  benchmark venv), otherwise their columns are skipped and the JSON says so.

Problems: real SmolLM2 block-3 statistics (``--problem-dir``, captured with
``llm.prune(..., save_problems=DIR)`` when the folder is missing) at each ``--ratios``
``λ/λ_max``, and the synthetic ``llm-like`` 256×512 problem.

    python benchmarks/solver_peers.py --out docs/results/solver-peers.json
    python benchmarks/solver_peers.py --table docs/results/solver-peers.json   # the table again
"""

from __future__ import annotations

import os

# one thread for every library (BLAS under numpy/scikit-learn too), set before they load
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fistaopt as fo  # noqa: E402
from fistaopt.problems.synthetic import PROBLEM_KINDS  # noqa: E402

OURS = ("fista", "admm", "cd", "auto")
PEERS = ("sklearn", "celer", "skglm")
OPERATORS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")


def capture(folder: Path) -> None:
    """Save block 3's layer problems of SmolLM2 (8 × 512 calibration tokens) into ``folder``."""
    from fistaopt import llm

    model, tok = llm.load_model()
    calib = llm.calibration_tokens(tok, nsamples=8, seqlen=512)
    llm.prune(model, calib, method="wanda", blocks=[3], save_problems=folder, progress=False)


def problems(folder: Path, ratios: list[float], synthetic: bool) -> list[tuple[str, float, fo.LassoProblem]]:
    out = []
    if synthetic:  # every synthetic kind of fistaopt.problems.PROBLEM_KINDS
        for kind in PROBLEM_KINDS:
            for r in ratios:
                out.append((f"{kind} 256x512", r, fo.make_problem(kind, 256, 512, lam_ratio=r)))
    if not any(folder.glob("block03.*.pt")):
        capture(folder)
    for op in OPERATORS:
        base = fo.LassoProblem.load(folder / f"block03.{op}.pt").to(dtype=torch.float64)
        for r in ratios:
            out.append((f"{op.split('.')[-1]} {base.d_out}x{base.d_in}", r, base.with_lam(r * base.lam_max())))
    return out


def run_ours(prob: fo.LassoProblem, name: str, tol: float, time_limit: float) -> dict:
    # outside the timed solve: cd's compiled kernel is built (or read from numba's cache)
    # at its first CPU solve, as the peers' first fit is done by _warm_up
    fo.solve(fo.make_problem("iid", 2, 4, lam_ratio=0.5), name, tol=tol, warn=False)
    t = time.perf_counter()
    res = fo.solve(prob, name, tol=tol, max_iter=10**6, time_limit=time_limit, warn=False)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "certified": res.rel_gap <= tol, "rel_gap": res.rel_gap,
            "iterations": res.n_iter, "stop_reason": res.stop_reason,
            "picked": res.options.get("picked") if name == "auto" else None}


def gram_data(prob: fo.LassoProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``X = R`` (``H = RᵀR``) and ``Y`` with ``Y[:, i] = R⁻ᵀ G_i / λ_i``; and ``λ``."""
    H = prob.H.double()
    R = torch.linalg.cholesky(H).T  # upper: H = RᵀR
    Y = torch.linalg.solve_triangular(R.T, prob.G.double().T, upper=False)  # (d_in, d_out)
    lam = torch.broadcast_to(prob.lam.double(), (prob.d_out,))
    return R.numpy(), Y.numpy(), lam.numpy()


def _fit_peer(name: str, X: np.ndarray, Y: np.ndarray, lam: np.ndarray, tol: float) -> np.ndarray:
    n = X.shape[0]
    if name == "sklearn":
        from sklearn.linear_model import Lasso

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = Lasso(alpha=1.0 / n, fit_intercept=False, precompute=True, tol=tol, max_iter=100_000)
            model.fit(X, Y / lam[None, :])
        return np.asarray(model.coef_).reshape(len(lam), -1) * lam[:, None]
    cls = importlib.import_module(name).Lasso
    W = np.zeros((len(lam), X.shape[1]))
    for i, li in enumerate(lam):
        if li >= np.abs(X.T @ Y[:, i]).max():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            W[i] = cls(alpha=li / n, fit_intercept=False, tol=tol, max_iter=100_000).fit(X, Y[:, i]).coef_
    return W


def _warm_up(name: str) -> None:
    """Import and fit a tiny problem outside the timed fits (the first scikit-learn import
    takes seconds; skglm compiles its kernels with numba at the first fit)."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 4)), rng.standard_normal(8)
    _fit_peer(name, X, y[:, None], np.array([0.1]), 1e-6)


def run_peer(prob: fo.LassoProblem, name: str, tol: float, time_limit: float) -> dict:
    _warm_up(name)
    X, Y, lam = gram_data(prob)
    tried = []
    for peer_tol in (10.0 ** -e for e in range(6, 15)):
        t = time.perf_counter()
        W = _fit_peer(name, X, Y, lam, peer_tol)
        seconds = time.perf_counter() - t
        rel = prob.duality_gap(torch.from_numpy(W)).relative
        tried.append({"tol": peer_tol, "seconds": seconds, "rel_gap": rel})
        if rel <= tol:
            return {"seconds": seconds, "certified": True, "rel_gap": rel, "peer_tol": peer_tol, "tried": tried}
        if seconds > time_limit:
            break
    return {"seconds": None, "certified": False, "rel_gap": tried[-1]["rel_gap"], "peer_tol": None,
            "tried": tried, "note": f"not certified within a {time_limit:.0f} s fit"}


def markdown(result: dict) -> str:
    """The comparison table: seconds per solver, the best of ours against the best peer."""
    names = [s for s in (*OURS, *PEERS) if any(s in row["results"] for row in result["rows"])]
    lines = ["| problem @ λ/λmax | " + " | ".join(names) + " | best ours / best peer | auto's pick is our best |",
             "|---" * (len(names) + 3) + "|"]
    for row in result["rows"]:
        cells, best, fastest = [], {}, None
        for name in names:
            r = row["results"].get(name)
            if r is None:
                cells.append("skipped")
                continue
            if not r["certified"]:
                cells.append(f"not certified ({r['rel_gap']:.1e})")
                continue
            text = f"{r['seconds']:.2f}"
            if name == "auto":
                text += f" ({r['picked']})"
            elif name in PEERS:
                text += f" (tol {r['peer_tol']:.0e})"
            cells.append(text)
            if name == "auto":  # a second run of one of ours: not a candidate of its own
                continue
            side = "peer" if name in PEERS else "ours"
            if side == "ours" and r["seconds"] < best.get("ours", float("inf")):
                fastest = name
            best[side] = min(best.get(side, float("inf")), r["seconds"])
        ratio = f"{best['ours'] / best['peer']:.2f}" if len(best) == 2 else "—"
        picked = row["results"].get("auto", {}).get("picked")
        agrees = "—" if picked is None or fastest is None else ("yes" if picked == fastest else f"no ({fastest})")
        lines.append(f"| {row['problem']} @ {row['lam_ratio']:g} | " + " | ".join(cells) + f" | {ratio} | {agrees} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem-dir", default="runs/peer-problems")
    ap.add_argument("--ratios", default="0.01,0.1")
    ap.add_argument("--solvers", default=",".join(OURS + PEERS))
    ap.add_argument("--only", default=None, help="comma-separated problem name prefixes")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--table", default=None, metavar="JSON", help="print the table of a saved result and exit")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return
    torch.set_num_threads(1)
    load_before = list(os.getloadavg())  # 1, 5, 15 min: other jobs on the machine
    ratios = [float(r) for r in args.ratios.split(",")]
    solvers = args.solvers.split(",")
    skipped = {p: "not installed" for p in PEERS if p in solvers and importlib.util.find_spec(p) is None}
    rows = []
    for name, ratio, prob in problems(Path(args.problem_dir), ratios, not args.no_synthetic):
        if args.only and not any(name.startswith(o) for o in args.only.split(",")):
            continue
        row = {"problem": name, "lam_ratio": ratio, "results": {}}
        for s in solvers:
            if s in skipped:
                continue
            run = run_peer if s in PEERS else run_ours
            row["results"][s] = run(prob, s, args.tol, args.time_limit)
            print(json.dumps({"problem": name, "lam_ratio": ratio, "solver": s,
                              **{k: v for k, v in row["results"][s].items() if k != "tried"}}), flush=True)
        rows.append(row)
    out = {"tol": args.tol, "threads": 1, "dtype": "float64", "time_limit": args.time_limit,
           "torch": torch.__version__, "numba": importlib.metadata.version("numba"),
           "machine": platform.machine(), "load_average_before": load_before,
           "load_average_after": list(os.getloadavg()), "skipped": skipped, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(markdown(out))
    if skipped:
        print(f"skipped (not installed): {', '.join(skipped)}")


if __name__ == "__main__":
    main()
