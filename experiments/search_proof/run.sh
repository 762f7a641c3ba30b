#!/usr/bin/env bash
# Regenerates experiments/search_proof on one CUDA GPU; README.md says what each step does.
#   bash experiments/search_proof/run.sh                        # from the repository root
# Every step resumes: a study continues until it has n_trials complete trials (100; one that has them starts
# no new trial), retrain.py skips the rows it finds. The search configs read Fashion-MNIST from .fmnist/
# (copied here from FASHION_MNIST, a folder of the four IDX files). PYTHON: the interpreter (python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
S=experiments/search_proof
PY=${PYTHON:-python3}
if [ ! -d .fmnist ]; then
    mkdir -p .fmnist && cp "${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"/*.gz .fmnist/
fi
mkdir -p $S/studies

# 1. The Pareto search and the random baseline side by side on one GPU, 3 workers each (a worker times a
#    latency only while no other worker trains or builds).
"$PY" -m lowspace search --config $S/pareto.yaml &
pareto=$!
"$PY" -m lowspace search --config $S/random.yaml &
random=$!
wait $pareto
wait $random

# 2. The picks (presets, Pareto front, random quantiles) trained on the full proxy schedule, then every
#    architecture timed alone on the idle GPU.
"$PY" $S/retrain.py --out $S/results/retrain --resume $S/results/retrain/rows.jsonl --jobs 5

# 3. Tables and plots (no GPU needed; PNG export needs Chromium for kaleido).
"$PY" $S/analyze.py
