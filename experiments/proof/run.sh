#!/usr/bin/env bash
# The proof (README.md): every phase from one command, resumable. Each phase skips what its results already hold,
# so the same command continues after an interruption or a TIME_LIMIT.
#   PHASES      phases to run, in order (default: "speed train search front report")
#   RESULTS     output folder (default experiments/proof/results; SMOKE=1: a new temporary folder)
#   DATA        Fashion-MNIST: fashion_mnist (the Debian package's files) or a folder holding the IDX files
#   TIME_LIMIT  seconds after which no new bench row, training run or search trial starts (work in flight finishes)
#   SHARD       K/N: this process takes every N-th training run of phases train and front and every N-th study
#               of phase search (one process per GPU, each with CUDA_VISIBLE_DEVICES set); run the other phases
#               in one process
#   SMOKE=1     every phase at toy scale on the CPU (rules.yaml's smoke section), a few minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
PHASES=${PHASES:-speed train search front report}
args=()
if [[ "${SMOKE:-0}" == 1 ]]; then
  RESULTS=${RESULTS:-$(mktemp -d "${TMPDIR:-/tmp}/proof-smoke.XXXXXX")}
  args+=(--smoke
         --search-set space=demo --search-set device=cpu --search-set protocol.device=cpu
         --search-set protocol.batch_size=1 --search-set protocol.precision=fp32 --search-set protocol.backend=eager
         --search-set protocol.channels_last=false --search-set protocol.deploy=false
         --search-set "protocol.options={max_time_s: 0.2, target_spread: 0.5}"
         --search-set "proxy={epochs: 1, warmup_epochs: 0.5, resolutions: [16], batch_size: 64, base_lr: 0.002, val_per_class: 8, bn_reestimate_images: 32}"
         --search-set "promotion.rungs=[{train_per_class: 20}, {}]" --search-set promotion.eta=2
         --search-set heartbeat.heartbeat_interval=5 --search-set presets=false)
else
  RESULTS=${RESULTS:-experiments/proof/results}
fi
[[ -n "${DATA:-}" ]] && args+=(--data "$DATA")
[[ -n "${TIME_LIMIT:-}" ]] && args+=(--deadline "$(( $(date +%s) + TIME_LIMIT ))")
mkdir -p "$RESULTS"
echo "[proof] results in $RESULTS"
for phase in $PHASES; do
  echo "[proof] phase $phase"
  $PYTHON experiments/proof/proof.py "$phase" --results "$RESULTS" --shard "${SHARD:-0/1}" "${args[@]}"
done
