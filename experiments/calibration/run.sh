#!/usr/bin/env bash
# The GPU run of experiments/calibration (see README.md): 24 architectures drawn from search_spaces/lowformer.yaml
# plus the 7 published presets, the full schedule (full.yaml) with two seeds and 8 candidate short schedules,
# on Fashion-MNIST with 1,000 training images per class held out for validation.
#
# Re-running continues: runs already in $RESULTS/rows.jsonl are skipped. TIME_LIMIT=S starts no run after S
# seconds (runs in flight finish), so the whole thing can be done in several shorter runs.
#   DATA     Fashion-MNIST: fashion_mnist (the Debian package's files) or a folder holding the IDX files
#   WORKERS  training processes, spread over the visible GPUs (default 8)
#   RESULTS  output folder (default experiments/calibration/results)
set -euo pipefail
cd "$(dirname "$0")/../.."
RESULTS=${RESULTS:-experiments/calibration/results}
${PYTHON:-python3} -m lowspace calibrate experiments/calibration/full.yaml \
  --n 24 --presets all --seed 0 --val-per-class 1000 \
  --schedule e2-n1500=epochs=2,train_per_class=1500 \
  --schedule e5-n1000=epochs=5,train_per_class=1000 \
  --target 0.85 --max-cost-share 0.2 \
  --data "${DATA:-fashion_mnist}" --device cuda --workers "${WORKERS:-8}" \
  --out "$RESULTS" ${TIME_LIMIT:+--time-limit "$TIME_LIMIT"} "$@"
