#!/usr/bin/env bash
# Regenerates experiments/deploy_speed (runs/*.json, results.json/.md, tau/) on one CUDA GPU; see README.md.
#   bash experiments/deploy_speed/run.sh                        # from the repository root
# A run whose file exists (runs/NAME.json, tau/tau_b200.json) is skipped: delete it to measure it again.
# WORK: scratch folder for inductor's cache and the runs in progress (default: a new temporary folder).
# PYTHON: the interpreter (python3). Each bench run takes about 10 minutes, the tau run about 5.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=experiments/deploy_speed
PY=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d)}
mkdir -p $D/runs

bench() {  # bench NAME ARGS...: one bench.py process -> runs/NAME.json
    local name=$1
    shift
    [ -e "$D/runs/$name.json" ] && return 0
    "$PY" $D/bench.py "$@" --cache-dir "$WORK/cache" --out "$WORK/$name"
    cp "$WORK/$name/results.json" "$D/runs/$name.json"
}

# B1 (every variant) and B3 at batch 200 and 1
bench b1_b3 --models b1,b3 --batches 200,1 \
    --variants timm_graph,timm_compile,ours_tuned,ours_tuned_triton \
    --only "b1:timm_graph+timm_compile+ours_tuned+ours_tuned_triton+ours_graph+ours_tuned_cdt+timm_maxautotune" \
    --profile b3:timm_compile:200,b3:ours_tuned:200,b3:ours_tuned_triton:200,b1:ours_tuned:200,b1:ours_tuned_triton:1 \
    --parallel 10 --cap 220 --cap-autotune 200
# B1.5 and B0 at both batch sizes, B3 at batch 200 again
bench b0_b15 --models b15,b0,b3 --batches 200,1 \
    --only "b15:timm_graph+timm_compile@200+ours_tuned+ours_tuned_triton@1;b0:timm_graph+timm_compile@200+ours_tuned+ours_tuned_triton@1;b3:timm_graph@1+ours_tuned+ours_tuned_triton" \
    --profile b0:ours_tuned:1,b3:ours_tuned_triton:200 --parallel 12 --cap 240
# B3 at batch 1
bench b3_batch1 --models b3 --batches 1 --variants timm_graph,ours_tuned,ours_tuned_triton --parallel 4
# B1.5 against timm compiled and captured, GEMM autotuning; the deploy protocol of every preset
bench presets_deploy --models b15,b0,b1,b3,e1,e2,e3 --batches 200,1 \
    --only "b15:timm_graph+timm_compile@200+timm_compile_graph@200+ours_deploy+ours_autotune@200;b0:ours_deploy;b1:ours_deploy;b3:ours_deploy;e1:ours_deploy;e2:ours_deploy;e3:ours_deploy" \
    --profile b15:ours_deploy:200,b15:timm_compile:200,b15:timm_compile_graph:200 --parallel 12 --cap 240 \
    --cap-autotune 200
"$PY" $D/collect.py

# Cheap vs deploy protocol over the 20 random architectures of tau_configs/ (Kendall tau)
if [ ! -e $D/tau/tau_b200.json ]; then
    "$PY" $D/protocol_tau.py --configs $D/tau_configs --batches 200 --out $D/tau
fi
