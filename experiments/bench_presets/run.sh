#!/usr/bin/env bash
# Regenerates experiments/bench_presets/results on one CUDA GPU; README.md says what each step measures.
#   bash experiments/bench_presets/run.sh                        # from the repository root
# RESULTS: output folder (default experiments/bench_presets/results). A step whose output file exists is
# skipped and the speed matrix resumes from RESULTS/matrix.jsonl, so a stopped run continues where it left
# off; point RESULTS at an empty folder to measure everything again. PYTHON: the interpreter (python3).
# The last step (counts, charts, summary) needs no GPU, and PNG export needs Chromium for kaleido.
set -euo pipefail
cd "$(dirname "$0")/../.."
P=experiments/bench_presets
RESULTS=${RESULTS:-$P/results}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS/harness" "$RESULTS/build_profile" "$RESULTS/search_latency"

harness() {  # harness NAME ARGS...: one harness_speed.py process -> RESULTS/harness/NAME.json
    local name=$1
    shift
    [ -e "$RESULTS/harness/$name.json" ] && return 0
    local tmp
    tmp=$(mktemp -d)
    "$PY" $P/harness_speed.py --out "$tmp" "$@"
    mv "$tmp/harness_speed.json" "$RESULTS/harness/$name.json"
}

profile() {  # profile VARIANT [TAG]: one build_profile.py process -> RESULTS/build_profile/
    [ -e "$RESULTS/build_profile/build_profile_$1${2:-}.json" ] && return 0
    "$PY" $P/build_profile.py --variant "$1" --tag "${2:-}" --out "$RESULTS/build_profile"
}

# 1. Harness speed: 12 never-seen architectures per run, each run in its own process (cuDNN keeps its
#    autotuning results per process). Autotuned twice, to see how much two autotuned runs differ.
harness autotuned_a --n 12
harness heuristic --n 12 --no-cudnn-benchmark
harness autotuned_b --n 12
harness deploy_autotuned --n 12 --precisions fp16 --deploy
harness deploy_heuristic --n 12 --precisions fp16 --deploy --no-cudnn-benchmark
harness no_warm_up --n 2 --no-warm-up

# 2. Where a new architecture's build time goes, per cuDNN setting (and under the old cuDNN API).
profile default
profile limit1
profile off
TORCH_CUDNN_V8_API_DISABLED=1 profile default _envv8off

# 3. The speed matrix: 8 presets (lowspace and timm) and 9 peers x 2 backends x 2 precisions x 2 batch sizes.
"$PY" $P/run_matrix.py --out "$RESULTS"

# 4. The search's latency stage: two short studies of one seed, cuDNN heuristic choice vs autotuning. The
#    search config reads Fashion-MNIST from .fmnist/ (copied from FASHION_MNIST, a folder of the IDX files).
db=$RESULTS/search_latency/studies.db
if [ ! -e "$RESULTS/search_latency/summary.md" ]; then
    if [ ! -d .fmnist ]; then
        mkdir -p .fmnist && cp "${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"/*.gz .fmnist/
    fi
    for setting in heuristic autotuned; do
        bench=false
        [ "$setting" = autotuned ] && bench=true
        "$PY" -m lowspace search --config experiments/bench_presets/search_latency.yaml --storage "sqlite:///$db" \
            --study-name "$setting" --workers 1 --no-presets --n-trials 40 --timeout 150 \
            --set protocol.deploy=true --set protocol.cudnn_benchmark=$bench --set report.png=false
    done
    "$PY" $P/search_latency.py "$db"
fi

# 5. Counts, charts and summary.md (no GPU needed).
"$PY" $P/render.py --results "$RESULTS"
