#!/usr/bin/env bash
# Runs a command as a client of a CUDA MPS (Multi-Process Service) server of its own, started here and stopped
# when the command ends. Without MPS, CUDA kernels of different processes take turns on the GPU; under MPS they
# run side by side, so the GPU loader's processes no longer hold the training step back while they work.
#   bash experiments/train_speed/with_mps.sh python3 experiments/train_speed/bench_train.py --part e \
#       --stage-batches 0 --feeds resident,gpu_loader_processes_taps,cpu_loader \
#       --out experiments/train_speed/results/mps
# The server changes no GPU setting (the compute mode stays as it is); it serves only the processes that see
# this script's CUDA_MPS_PIPE_DIRECTORY.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: with_mps.sh COMMAND [ARGS...]" >&2; exit 2; }
command -v nvidia-cuda-mps-control > /dev/null || {
    echo "with_mps.sh: nvidia-cuda-mps-control not found (it comes with the NVIDIA driver)" >&2; exit 2; }
CUDA_MPS_PIPE_DIRECTORY=$(mktemp -d)
CUDA_MPS_LOG_DIRECTORY=$(mktemp -d)
export CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
nvidia-cuda-mps-control -d
stop() {
    echo quit | nvidia-cuda-mps-control || true
    cat "$CUDA_MPS_LOG_DIRECTORY"/*.log >&2 2>/dev/null || true
}
trap stop EXIT
"$@"
