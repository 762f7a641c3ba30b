#!/usr/bin/env bash
# Regenerates experiments/deploy_speed/results (and tau/ when missing) on one CUDA GPU; see README.md.
#   bash experiments/deploy_speed/run.sh            # from the repository root; about 6 minutes on an H200
# WORK: scratch folder for inductor's cache (default: a new temporary folder). PYTHON: the interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=experiments/deploy_speed
PY=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d)}
mkdir -p $D/results

"$PY" $D/chip.py --out $D/results
"$PY" $D/bench.py --models b1,b0,b15,b3 --batches 200,1 \
    --variants timm_graph,timm_compile_graph,ours_deploy \
    --profile b1:ours_deploy:1,b1:timm_compile_graph:1,b1:ours_deploy:200,b1:timm_compile_graph:200 \
    --parallel 8 --cache-dir "$WORK/cache" --out $D/results | tee $D/results/log.txt
"$PY" $D/roofline.py --results $D/results

# The deploy switches on all four presets (skipped when present); README.md, "Which switch to fuse next",
# states the rule, fixed before the run, that decides which ones become deploy()'s defaults
if [ ! -e $D/switches/results.json ]; then
    mkdir -p $D/switches
    "$PY" $D/bench.py --models b1,b0,b15,b3 --batches 200,1 \
        --variants ours_deploy,ours_deploy_gncl,ours_deploy_coop,ours_deploy_gncl_coop \
        --parallel 8 --cache-dir "$WORK/cache" --out $D/switches | tee $D/switches/log.txt
fi

# Cheap vs deploy protocol over the 20 random architectures of tau_configs/ (Kendall tau)
if [ ! -e $D/tau/tau_b200.json ]; then
    "$PY" $D/protocol_tau.py --configs $D/tau_configs --batches 200 --out $D/tau
fi
