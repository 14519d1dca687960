#!/usr/bin/env bash
# Regenerates the measured tables and figures of docs/solvers.md (about 1-2 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fistaopt-study}
python -m fistaopt.cli compare --problems iid,correlated,llm-like \
  --solvers "fista,ista,admm,cvxpy,fista[restart=False,precondition=False]" \
  --d-out 32 --d-in 64 --seeds 0 --tol 1e-8 --max-iter 2000 --threads 1 --no-progress --out "$OUT/small"
python -m fistaopt.cli compare --problems iid,correlated,llm-like \
  --solvers "fista,ista,admm,cvxpy,fista[restart=False,precondition=False]" \
  --d-out 128 --d-in 256 --seeds 0 --tol 1e-8 --max-iter 5000 --threads 1 --no-progress --out "$OUT/medium"
python -m fistaopt.cli compare --problems llm-like \
  --solvers "fista,fista[restart=False],fista[precondition=False],fista[restart=False,precondition=False]" \
  --d-out 128 --d-in 256 --seeds 0,1 --tol 1e-8 --max-iter 5000 --threads 1 --no-progress --out "$OUT/ablation"
python benchmarks/study_lambda_path.py --out docs/figures/sparsity-path.png
for d in small medium ablation; do
  for f in "$OUT/$d"/convergence-*.png; do cp "$f" "docs/figures/$d-$(basename "$f")"; done
done
# pruning-like sparsity (~55 %) on LLM-like statistics: lam_ratio 1e-3
python -m fistaopt.cli compare --problems llm-like --lam-ratio 1e-3 \
  --solvers "fista,ista,admm,fista[restart=False],fista[precondition=False],fista[restart=False,precondition=False]" \
  --d-out 128 --d-in 256 --seeds 0 --tol 1e-8 --max-iter 5000 --threads 1 --no-progress --out "$OUT/llm50"
for f in "$OUT/llm50"/convergence-*.png; do cp "$f" "docs/figures/llm50-$(basename "$f")"; done
