#!/usr/bin/env bash
# Regenerates experiments/train_speed/results on one CUDA GPU; README.md says what each part measures.
#   bash experiments/train_speed/run.sh                         # from the repository root
# A part whose results/part_<x>.json exists is skipped (delete it to measure it again). Parts c and d read
# Fashion-MNIST from FASHION_MNIST (a folder of the four IDX files; default: $LOWSPACE_FASHION_MNIST,
# /usr/share/datasets/fashion-mnist, then .fmnist/). PYTHON: the interpreter (python3). JPEG_DIR: part e's images.
set -euo pipefail
cd "$(dirname "$0")/../.."
T=experiments/train_speed
R=$T/results
PY=${PYTHON:-python3}
data=()
[ -n "${FASHION_MNIST:-}" ] && data=(--fmnist-root "$FASHION_MNIST")

for part in a b; do
    [ -e "$R/part_$part.json" ] || "$PY" $T/bench_train.py --part $part --out "$R"
done
for part in c d; do
    [ -e "$R/part_$part.json" ] || "$PY" $T/bench_train.py --part $part --out "$R" ${data[@]+"${data[@]}"}
done
# class folders: the CPU loader, the GPU loader and GPU-resident tensors feeding one B1 step; writes (or reuses)
# 10,000 synthetic JPEGs under JPEG_DIR (default: $TMPDIR/lowspace-jpegs-10000)
[ -e "$R/part_e.json" ] || "$PY" $T/bench_train.py --part e --out "$R" ${JPEG_DIR:+--jpeg-dir "$JPEG_DIR"}
# part e again, three times, every feed under a CUDA MPS server of its own (with_mps.sh)
for n in 1 2 3; do
    [ -e "$R/mps/run$n/part_e.json" ] || bash $T/with_mps.sh "$PY" $T/bench_train.py --part e --stage-batches 0 \
        --feeds resident,gpu_loader_processes_taps,cpu_loader --out "$R/mps/run$n" ${JPEG_DIR:+--jpeg-dir "$JPEG_DIR"}
done
"$PY" $T/render_curve.py "$R"    # curve.html / curve.png (no GPU needed; PNG export needs Chromium)
