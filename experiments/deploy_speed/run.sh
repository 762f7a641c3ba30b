#!/usr/bin/env bash
# Regenerates experiments/deploy_speed/results (and switches/, switches_project/, switches_project_tiles/,
# switches_attention/, switches_pdl/, switches_eager/, tau/ when missing) on one CUDA GPU; see README.md.
#   bash experiments/deploy_speed/run.sh   # from the repository root; on an H200 about 6 minutes for results/,
#                                          # 6 for switches/, about 4 for switches_project/, 6 for
#                                          # switches_project_tiles/, about 4 for switches_attention/,
#                                          # about 7 for switches_pdl/, 2 for switches_eager/
#                                          # and 8 for tau/
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
    --profile "$(for m in b1 b0 b15 b3; do for b in 1 200; do printf '%s:ours_deploy:%s,%s:timm_compile_graph:%s,' \
        $m $b $m $b; done; done)" \
    --parallel 8 --cache-dir "$WORK/cache" --out $D/results
"$PY" $D/roofline.py --results $D/results

# The deploy switches on all four presets (skipped when present); README.md, "Which switch to fuse next",
# states the rule, fixed before the run, that decides which ones become deploy()'s defaults
if [ ! -e $D/switches/results.json ]; then
    mkdir -p $D/switches
    "$PY" $D/bench.py --models b1,b0,b15,b3 --batches 200,1 \
        --variants ours_deploy,ours_deploy_gncl,ours_deploy_coop,ours_deploy_gncl_coop \
        --parallel 8 --cache-dir "$WORK/cache" --out $D/switches | tee $D/switches/log.txt
fi
# The Triton project kernel on all four presets (README.md, "The project kernel", states the rule, fixed before
# the run, that decides whether it becomes a default)
if [ ! -e $D/switches_project/results.json ]; then
    mkdir -p $D/switches_project
    "$PY" $D/bench.py --models b1,b0,b15,b3 --batches 200,1 --variants ours_deploy,ours_deploy_project \
        --parallel 8 --cache-dir "$WORK/cache" --out $D/switches_project | tee $D/switches_project/log.txt
fi
# The project kernel again after its first run: programs sharing rows run together, tiles that fill the GPU at
# batch 1, and a form whose tiles are measured per shape (README.md, "The kernel since", states the rule)
if [ ! -e $D/switches_project_tiles/results.json ]; then
    mkdir -p $D/switches_project_tiles
    "$PY" $D/bench.py --models b1,b0,b15,b3 --batches 200,1 \
        --variants ours_deploy,ours_deploy_project,ours_deploy_project_tuned \
        --parallel 8 --cache-dir "$WORK/cache" --out $D/switches_project_tiles | tee $D/switches_project_tiles/log.txt
fi
# The attention's depthwise projection and QKV conv as one Triton kernel (README.md, "The attention kernel",
# states the rule, fixed before the run)
if [ ! -e $D/switches_attention/results.json ]; then
    mkdir -p $D/switches_attention
    "$PY" $D/bench.py --models b1,b0,b15,b3 --batches 200,1 --variants ours_deploy,ours_deploy_attn \
        --parallel 8 --cache-dir "$WORK/cache" --out $D/switches_attention | tee $D/switches_attention/log.txt
fi
# Programmatic dependent launch for inductor's kernels, on ours and on timm compiled + graph (README.md,
# "Programmatic dependent launch", states the rule, fixed before the run)
if [ ! -e $D/switches_pdl/results.json ]; then
    mkdir -p $D/switches_pdl
    "$PY" $D/bench.py --models b1,b0,b15,b3 --batches 200,1 \
        --variants timm_compile_graph,timm_compile_graph_pdl,ours_deploy,ours_deploy_pdl \
        --parallel 11 --cache-dir "$WORK/cache" --out $D/switches_pdl | tee $D/switches_pdl/log.txt
fi
# The channels-last GroupNorm with eager kernels in a CUDA graph (the cheap protocol's backend)
if [ ! -e $D/switches_eager/results.json ]; then
    mkdir -p $D/switches_eager
    "$PY" $D/bench.py --models b1,b0,b15,b3 --batches 200,1 --variants ours_graph,ours_graph_gncl \
        --parallel 8 --out $D/switches_eager | tee $D/switches_eager/log.txt
fi

# Cheap vs deploy protocol over the 20 random architectures of tau_configs/ (Kendall tau), both GroupNorm
# forms of the cheap protocol against the deploy defaults in one run (README.md states the rule that picks one)
if [ ! -e $D/tau/tau_b200_ours_graph_gncl_vs_ours_deploy.json ] || [ ! -e $D/tau/tau_b200_ours_graph_vs_ours_deploy.json ]; then
    mkdir -p $D/tau
    "$PY" $D/protocol_tau.py --configs $D/tau_configs --batches 200 --cheap ours_graph,ours_graph_gncl \
        --parallel 14 --out $D/tau | tee $D/tau/log.txt
fi
