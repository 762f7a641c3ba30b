#!/usr/bin/env bash
# The tests marked `gpu` (CUDA paths the CPU run of CI cannot reach) on this machine's GPU, with the
# environment and the lowspace commit recorded beside the log. See README.md.
#   RESULTS  output folder (default experiments/gpu_tests/results)
set -euo pipefail
cd "$(dirname "$0")/../.."
RESULTS=${RESULTS:-experiments/gpu_tests/results}
mkdir -p "$RESULTS"
${PYTHON:-python3} - "$RESULTS/env.json" <<'PY'
import json, sys
import torch
from lowspace.cost.fingerprint import fingerprint
from lowspace.provenance import provenance
json.dump(dict(provenance=provenance(), env=fingerprint("cuda" if torch.cuda.is_available() else "cpu")),
          open(sys.argv[1], "w"), indent=2)
PY
${PYTHON:-python3} -m pytest -m gpu -rA -p no:cacheprovider tests "$@" 2>&1 | tee "$RESULTS/pytest_gpu.txt"
