#!/usr/bin/env bash
# The GPU check: everything oocstore should verify on a CUDA machine, in one run.
#
#   OUT=/path/to/results bash tools/gpu_check.sh
#
# Run from the repository root of a working tree. Environment:
#   OUT                  where results go (required; created)
#   PYTHON               the interpreter (default: python3 from PATH)
#   GPU_CHECK_BUDGET_S   the whole run's time limit in seconds (default 390); each step
#                        gets min(its own cap, what is left), a step with < 15 s left is
#                        skipped
#   GPU_CHECK_WORK       scratch folder for generated stores (default /tmp/oocstore-gpu-check)
#   GPU_CHECK_STEPS      comma-separated steps to run (default: all), e.g. "env,pytest,gs"
#
# Wheels the machine lacks (lmdb, zarr and their dependencies, gsplat) are installed from
# .whl/ (git-ignored, carried along with the tree) into /tmp/site with --no-deps, never
# over the machine's torch; skipped when lmdb and zarr import already.
#
# Steps, in order; a failed or timed-out step does not stop the next:
#   1 env      nvidia-smi, python / torch / CUDA / library versions        (cap  30 s)
#   2 pytest   the tests that exercise CUDA (tests/test_loader_cuda.py, the
#              packer's GPU tier on CUDA, and the loader / train tests with
#              cuda or gpu in their names)                                   (cap 120 s)
#   3 loader   bench/gpu_loader_check.py --json: exact batches vs the CPU
#              oracle, peak device memory vs the gpu charges, stream order,
#              prefetch overlap under GraphSAGE, H2D bandwidth by host memory
#              kind                                                          (cap 150 s)
#   4 train    `oocstore train --device cuda --json`, 2 epochs, on the demo-size
#              generated store (2 M nodes x 128 float32) with a GPU and a CPU
#              cache                                                         (cap 150 s)
#   5 gs       bench/gs_gpu_check.py (gsplat vs the reference rasterizer; gsplat
#              JIT-builds in about a minute) with --train on a generated
#              100 k-Gaussian scene (gs-train --mode stream within a gpu budget) (cap 170 s)
# Without CUDA (a dry run) steps 3-5 say so and exit 0; step 4 then runs its commands
# on a 20 k-node store on the CPU so that they are still exercised.
#
# Files under $OUT (six at most):
#   gpu_check.log          every step's output, then a summary table
#   steps.json             per step: exit status, seconds, timeout, whether it timed out
#   gpu_loader_check.json  step 3's result (names the card)
#   train_cuda.json        step 4's `oocstore train --json` summary
#   gs_gpu_check.json      step 5's result (names the card)

set -u
cd "$(dirname "$0")/.." || exit 1

: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT" || exit 1
export OUT
export PY="${PYTHON:-python3}"
export WORK="${GPU_CHECK_WORK:-/tmp/oocstore-gpu-check}"
BUDGET="${GPU_CHECK_BUDGET_S:-390}"
LOG="$OUT/gpu_check.log"
START=$SECONDS
mkdir -p "$WORK"
: >"$LOG"

log() { echo "$*" | tee -a "$LOG"; }

log "oocstore GPU check: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), budget ${BUDGET} s, python $PY"

# -- wheels ------------------------------------------------------------------------------
if "$PY" -c 'import lmdb, zarr' 2>/dev/null; then
    log "lmdb and zarr import: no wheels to install"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    log "installing .whl/*.whl into /tmp/site"
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 || { log "wheel install failed"; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD"
fi

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>>"$LOG"; then
    export HAVE_CUDA=1
else
    export HAVE_CUDA=0
    log "torch.cuda.is_available() is False: a dry run (CUDA steps say so and exit 0)"
fi

# -- steps -------------------------------------------------------------------------------
step_env() {
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current \
            --format=csv
        nvidia-smi
    else
        echo "nvidia-smi: not found"
    fi
    echo "cpus: $(nproc), memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}')"
    df -h /tmp | tail -n 1
    "$PY" - <<'EOF'
import importlib, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", torch.cuda.get_device_name(0), f"{p.total_memory / 2**30:.1f} GiB",
          f"capability {p.major}.{p.minor}", f"{p.multi_processor_count} SMs")
for mod in ("numpy", "numba", "scipy", "torch_geometric", "lmdb", "zarr", "gsplat", "psutil",
            "pytest", "hypothesis"):
    try:
        m = importlib.import_module(mod)
        print(mod, getattr(m, "__version__", "?"))
    except Exception as err:  # noqa: BLE001
        print(mod, "NOT IMPORTABLE:", type(err).__name__, err)
EOF
}

step_pytest() {
    "$PY" -m pytest -x -q -rs -p no:cacheprovider \
        tests/pack/test_packer.py tests/test_loader.py tests/train/test_run.py \
        tests/test_loader_cuda.py -k "cuda or gpu"
}

step_loader() {
    "$PY" bench/gpu_loader_check.py --json --dir "$WORK/loader" --out "$OUT/gpu_loader_check.json"
}

step_train() {
    local nodes=2000000 device=cuda
    if [ "$HAVE_CUDA" != 1 ]; then
        nodes=20000 device=cpu
        echo "no CUDA: the same commands on a ${nodes}-node store on the CPU"
    fi
    local s="$WORK/demo-$nodes/synthetic"
    mkdir -p "$WORK/demo-$nodes"
    set -x
    "$PY" -m oocstore ingest synthetic "$s" --nodes "$nodes" --avg-degree 16 --feat-dim 128 \
        --classes 8 --seed 0 --split 0.1,0.02,0.02 --overwrite --quiet || return 1
    "$PY" -m oocstore sample "$s" --fanouts 5,5 --batch-size 1024 --epochs 2 --seed 0 --quiet \
        || return 1
    "$PY" -m oocstore pack "$s" --cpu-cache 128MiB --gpu-cache 256MiB --max-disk-blowup 5 \
        --quiet || return 1
    "$PY" -m oocstore train "$s" --epochs 2 --hidden 64 --lr 0.01 --seed 0 --device "$device" \
        --cpu-budget 256MiB --gpu-budget 1GiB --json --quiet >"$WORK/train.out" || return 1
    set +x
    tail -n 1 "$WORK/train.out" | tee "$OUT/train_cuda.json"
}

step_gs() {
    export MAX_JOBS=16
    local scene="$WORK/gs-scene" rc
    "$PY" -c "from oocstore.gs.synthetic import random_scene
random_scene('$scene', 100_000, 3, block_size=4096, views=16, seed=0, overwrite=True).close()" \
        || echo "generating the scene failed: gs_gpu_check runs without --train"
    if [ -d "$scene" ]; then
        "$PY" bench/gs_gpu_check.py --train "$scene" --steps 100 --gpu-budget 256MiB \
            --out "$OUT/gs_gpu_check.json"
        rc=$?
    else
        rc=1
    fi
    if [ "$rc" -ne 0 ] && [ ! -s "$OUT/gs_gpu_check.json" ]; then
        echo "-- again without --train, for the rasterizer comparison's JSON"
        "$PY" bench/gs_gpu_check.py --out "$OUT/gs_gpu_check.json"
    fi
    return "$rc"
}

export -f step_env step_pytest step_loader step_train step_gs

if [ -n "${GPU_CHECK_STEPS:-}" ]; then
    for s in ${GPU_CHECK_STEPS//,/ }; do
        case "$s" in
            env|pytest|loader|train|gs) ;;
            *) log "GPU_CHECK_STEPS=$GPU_CHECK_STEPS: unknown step '$s'; choose from env, pytest, loader, train, gs"
               exit 2 ;;
        esac
    done
fi

RESULTS=()
run_step() {  # run_step NAME CAP FUNCTION
    local name=$1 cap=$2 fn=$3
    if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ ",$GPU_CHECK_STEPS," != *",$name,"* ]]; then
        log "== $name: not selected (GPU_CHECK_STEPS=$GPU_CHECK_STEPS)"
        return
    fi
    local left=$((BUDGET - (SECONDS - START)))
    local t=$((cap < left ? cap : left))
    if [ "$t" -lt 15 ]; then
        log "== $name: skipped ($left s of the run's budget left)"
        RESULTS+=("{\"step\": \"$name\", \"rc\": null, \"seconds\": 0, \"timeout_s\": 0, \"skipped\": true}")
        return
    fi
    log "== $name (timeout $t s) at +$((SECONDS - START)) s"
    local t0=$SECONDS
    timeout -k 10 "$t" bash -c "$fn" >>"$LOG" 2>&1
    local rc=$? took=$((SECONDS - t0)) timed_out=false
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then timed_out=true; fi
    log "== $name: exit $rc after $took s$([ "$timed_out" = true ] && echo ' (TIMED OUT)')"
    RESULTS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $took, \"timeout_s\": $t, \"timed_out\": $timed_out}")
}

run_step env 30 step_env
run_step pytest 120 step_pytest
run_step loader 150 step_loader
run_step train 150 step_train
run_step gs 170 step_gs

# -- summary -----------------------------------------------------------------------------
{
    printf '{"total_seconds": %d, "have_cuda": %s, "steps": [' "$((SECONDS - START))" \
        "$([ "$HAVE_CUDA" = 1 ] && echo true || echo false)"
    sep=""
    for r in "${RESULTS[@]}"; do printf '%s\n  %s' "$sep" "$r"; sep=","; done
    printf '\n]}\n'
} >"$OUT/steps.json"
log "== summary (total $((SECONDS - START)) s):"
cat "$OUT/steps.json" | tee -a "$LOG"
log "files in $OUT:"
ls -la "$OUT" | tee -a "$LOG"
