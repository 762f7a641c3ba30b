#!/usr/bin/env bash
# Regenerates experiments/deploy_speed/results (and each switches*/ folder and tau/ when missing) on one CUDA
# GPU; see README.md.
#   bash experiments/deploy_speed/run.sh   # from the repository root; on an H200 about 6 minutes for results/,
#                                          # 6 for switches/, about 4 for switches_project/, 6 for
#                                          # switches_project_tiles/, about 4 for switches_attention/,
#                                          # about 7 for switches_pdl/, about 4 for switches_chain/,
#                                          # about 4 for switches_im2col/,
#                                          # 2 for switches_eager/
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

# One folder of deploy switches on all four presets at batch 200 and 1, measured only when it has no results:
# switches NAME VARIANTS [bench.py options]
switches() {
    local name=$1 variants=$2
    shift 2
    [ -e $D/$name/results.json ] && return 0
    mkdir -p $D/$name
    "$PY" $D/bench.py --models b1,b0,b15,b3 --batches 200,1 --variants "$variants" --parallel 8 "$@" \
        --out $D/$name | tee $D/$name/log.txt
}
# Each README.md section named below states the rule, fixed before the run, that decides whether its switch
# becomes one of deploy()'s defaults.
# "Which switch to fuse next": the inductor switches and the channels-last GroupNorm
switches switches ours_deploy,ours_deploy_gncl,ours_deploy_coop,ours_deploy_gncl_coop --cache-dir "$WORK/cache"
# "The project kernel": the Triton project kernel
switches switches_project ours_deploy,ours_deploy_project --cache-dir "$WORK/cache"
# "The kernel since": programs sharing rows run together, tiles that fill the GPU at batch 1, and a form whose
# tiles are measured per shape
switches switches_project_tiles ours_deploy,ours_deploy_project,ours_deploy_project_tuned --cache-dir "$WORK/cache"
# "The attention kernel": the attention's depthwise projection and QKV conv as one Triton kernel
switches switches_attention ours_deploy,ours_deploy_attn --cache-dir "$WORK/cache"
# "Programmatic dependent launch": inductor's PDL on ours and on timm compiled + graph
switches switches_pdl timm_compile_graph,timm_compile_graph_pdl,ours_deploy,ours_deploy_pdl --parallel 11 \
    --cache-dir "$WORK/cache"
# "The fused MBConv kernels": each fused MBConv, and each MBConv on a small map, as one Triton kernel
switches switches_chain ours_deploy,ours_deploy_chain --cache-dir "$WORK/cache"
# "Dense convs as one matmul": every dense k x k conv as its shifted views and one matmul
switches switches_im2col ours_deploy,ours_deploy_im2col --cache-dir "$WORK/cache"
# The channels-last GroupNorm with eager kernels in a CUDA graph (the cheap protocol's backend)
switches switches_eager ours_graph,ours_graph_gncl

# Cheap vs deploy protocol over the 20 random architectures of tau_configs/ (Kendall tau), both GroupNorm
# forms of the cheap protocol against the deploy defaults in one run (README.md states the rule that picks one)
if [ ! -e $D/tau/tau_b200_ours_graph_gncl_vs_ours_deploy.json ] || [ ! -e $D/tau/tau_b200_ours_graph_vs_ours_deploy.json ]; then
    mkdir -p $D/tau
    "$PY" $D/protocol_tau.py --configs $D/tau_configs --batches 200 --cheap ours_graph,ours_graph_gncl \
        --parallel 14 --out $D/tau | tee $D/tau/log.txt
fi
