#!/usr/bin/env bash
# The GPU checks the issues name (5: solver and prune on a GPU; 9: the single-GPU and NCCL
# case; 12: 2:4 inference; one GPU cannot run NCCL with two ranks), as one prepared script for a lent GPU machine.
#
#   benchmarks/gpu_checks.sh OUTDIR [STAGE ...]
#
# Stages (default: env tests block solver sparse):
#   env      nvidia-smi, torch / transformers versions
#   tests    pytest tests/test_gpu.py tests/test_sparse_inference.py (the CUDA tests)
#   block    benchmarks/gpu_block.py: one LLaMA-2-7B-shaped block, 128 x 2048 tokens, SparseGPT and fista
#   solver   benchmarks/gpu.py: FISTA iteration / GEMM ratios, precision modes, prune_layer vs SparseGPT
#   sparse   benchmarks/sparse_inference.py: 2:4 semi-structured linears, prefill and decode
#   smollm2  SmolLM2-135M at 50% on the GPU, fista (the default: tuned on a GPU) and SparseGPT,
#            with `make demo`'s settings (the CPU reference is in docs/gpu.md);
#            needs SMOLLM2_GGUF=path/to/SmolLM2-135M-Instruct.Q4_1.gguf
#   tune     the block tuning against the 2x budget on the GPU: SmolLM2 at 50% untuned
#            (--tune-epochs 0, after the smollm2 stage, whose SparseGPT and default fista
#            reports it is compared with), and the LLaMA-2-7B-shaped block with sparsegpt, the
#            untuned fista and the default (tuned) fista; needs SMOLLM2_GGUF
#   quality  issue 11's table on the GPU: benchmarks/prune_quality.py --device cuda, the main
#            table's protocol (32 x 512 windows, held-out split), dense, SparseGPT, the untuned
#            fista (tune_epochs=0) and the default fista (tuned on a GPU) at 2:4 (seed 0) and
#            50% (SparseGPT and the default fista over seeds 0-2); rows are logged one JSON
#            line each as they finish; needs SMOLLM2_GGUF (QUALITY_ARGS: more arguments)
#
# Every stage has its own time limit and appends to OUTDIR/checks.log; the JSON files land
# in OUTDIR. A failing stage does not stop the next one.
set -u
out=${1:?usage: benchmarks/gpu_checks.sh OUTDIR [STAGE ...]}
shift
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log="$out/checks.log"

stage() {  # stage NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local t0
    t0=$(date +%s)
    echo "=== $name (limit ${limit} s): $*" | tee -a "$log"
    timeout "$limit" "$@" >>"$log" 2>&1
    local rc=$?
    echo "=== $name: rc=$rc in $(($(date +%s) - t0)) s" | tee -a "$log"
}

smollm2() {  # fista and SparseGPT at 50% on cuda
    local gguf=${SMOLLM2_GGUF:?set SMOLLM2_GGUF}
    local common=(--device "${GPU_DEVICE:-cuda}" --sparsity 0.5 --nsamples 32 --eval-tokens 32768 --no-progress)
    # shellcheck disable=SC2206  # SMOLLM2_EXTRA: extra CLI arguments, for a quick run of this stage
    common+=(${SMOLLM2_EXTRA:-})
    local work  # the pruned models (not kept): a fresh folder of this stage's own
    work=$(mktemp -d)
    for method in fista sparsegpt; do
        "$py" -m fistaopt.cli prune "$gguf" --method "$method" "${common[@]}" --out "$work/$method" \
            && cp "$work/$method/report.json" "$out/smollm2-$method-50-cuda.json"
    done
    rm -rf "$work"
}

tune() {  # the untuned fista on cuda: SmolLM2 at 50%, then one 7B-shaped block: sparsegpt, untuned and tuned fista
    local gguf=${SMOLLM2_GGUF:?set SMOLLM2_GGUF}
    local work
    work=$(mktemp -d)
    # shellcheck disable=SC2086
    "$py" -m fistaopt.cli prune "$gguf" --method fista --tune-epochs 0 --device "${GPU_DEVICE:-cuda}" \
        --sparsity 0.5 --nsamples 32 --eval-tokens 32768 --no-progress ${SMOLLM2_EXTRA:-} --out "$work/untuned" \
        && cp "$work/untuned/report.json" "$out/smollm2-fista-untuned-50-cuda.json"
    rm -rf "$work"
    "$py" benchmarks/gpu_block.py --preset llama-7b --methods 'sparsegpt,fista[tune_epochs=0],fista,fista[tune_skip_groups=2]' \
        --out "$out/gpu-block-llama-7b-tune.json"
}

quality() {  # the quality table's rows on cuda; the JSON lines of finished rows are in the log
    local gguf=${SMOLLM2_GGUF:?set SMOLLM2_GGUF}
    # shellcheck disable=SC2086
    "$py" benchmarks/prune_quality.py --model "$gguf" --device "${GPU_DEVICE:-cuda}" --threads 8 \
        --nsamples 32 --eval-tokens 16384 --heldout-tokens 8192 --patterns '2:4;50%' --seeds 0,1,2 \
        --methods 'sparsegpt;fista[tune_epochs=0];fista' \
        --seeded-rows 'sparsegpt@50%;fista@50%' ${QUALITY_ARGS:-} \
        --out "$out/quality-smollm2-cuda.json" >/dev/null
}

export py out
export -f smollm2 tune quality
for s in ${*:-env tests block solver sparse}; do
    case $s in
        env) stage env 60 bash -c "nvidia-smi; $py -c 'import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__, torch.cuda.get_device_name())'" ;;
        tests) stage tests 100 "$py" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_sparse_inference.py -rs ;;
        block) stage block 200 "$py" benchmarks/gpu_block.py --preset llama-7b --out "$out/gpu-block-llama-7b.json" ;;
        solver) stage solver 120 "$py" benchmarks/gpu.py --budget 60 --repeats 3 --out "$out/gpu-solver.json" ;;
        # shellcheck disable=SC2086  # SPARSE_ARGS: more arguments, e.g. --models llama-1b --kernels cutlass
        sparse) stage sparse 100 "$py" benchmarks/sparse_inference.py ${SPARSE_ARGS:-} --out "$out/sparse-inference-cuda.json" ;;
        smollm2) stage smollm2 420 bash -c smollm2 ;;
        tune) stage tune 400 bash -c tune ;;
        quality) stage quality "${QUALITY_LIMIT:-520}" bash -c quality ;;
        *) echo "unknown stage $s" | tee -a "$log" ;;
    esac
done
