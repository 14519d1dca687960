"""Sparsity along a λ path (warm-started FISTA) on the three synthetic kinds → one figure.

    python benchmarks/study_lambda_path.py --out docs/figures/sparsity-path.png

Prints a JSON object ``{kind: {"lam_ratio": [...], "sparsity": [...], "n_iter": [...]}}``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import fistaopt as fo
from fistaopt import plots, study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--d-out", type=int, default=64)
    ap.add_argument("--d-in", type=int, default=128)
    args = ap.parse_args()
    ratios = list(np.geomspace(1e-3, 1.0, 13))
    fig, ax = None, None
    out = {}
    for kind in fo.problems.PROBLEM_KINDS:
        prob = fo.make_problem(kind, args.d_out, args.d_in, seed=0)
        path = study.lambda_path(prob, ratios, "fista", relative=True, tol=1e-8, max_iter=5000)
        path.solver = kind
        fig = plots.plot_sparsity_path(path, ax=ax, title=f"sparsity vs λ/λ_max ({args.d_out}×{args.d_in}, fista)")
        ax = fig.axes[0]
        out[kind] = {"lam_ratio": ratios, "sparsity": path.sparsity, "n_iter": path.n_iter,
                     "converged": path.converged}
    plots.save_figure(fig, args.out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
