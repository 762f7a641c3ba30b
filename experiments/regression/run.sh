#!/usr/bin/env bash
# Deploy and training hot paths of two source trees, side by side on one GPU (see README.md).
#   experiments/regression/run.sh BASE_TREE [OUT]
# BASE_TREE: a checkout of the commit to compare with (e.g. `git worktree add /tmp/base <commit>`).
# Steps whose output exists are skipped, so an interrupted run resumes.
set -uo pipefail
new=$(cd "$(dirname "$0")/../.." && pwd)
base=$(cd "$1" && pwd)
results=$(mkdir -p "${2:-$new/experiments/regression/results}" && cd "${2:-$new/experiments/regression/results}" && pwd)
fmnist=${FMNIST_ROOT:-/usr/share/datasets/fashion-mnist}

step() {  # step TAG NAME COMMAND...: run COMMAND in the TAG tree unless RESULTS/TAG/NAME exists
    local tag=$1 name=$2; shift 2
    local tree=$new; [ "$tag" = base ] && tree=$base
    [ -e "$results/$tag/$name/done" ] && return 0
    mkdir -p "$results/$tag/$name"
    echo "== $tag $name" >&2
    (cd "$tree" && PYTHONPATH="$tree:${PYTHONPATH:-}" "$@" --out "$results/$tag/$name") >"$results/$tag/$name/log" 2>&1 \
        && touch "$results/$tag/$name/done" || echo "   failed: see $results/$tag/$name/log" >&2
}

# Alternate the trees so that a drift of the machine's speed hits both alike.
for tag in base new; do
    step "$tag" deploy python3 experiments/deploy_speed/bench.py --models b1 --batches 200,1 \
        --variants ours_deploy --parallel 2 --cache-dir "/tmp/lowspace_regression_$tag"
done
for tag in base new; do
    step "$tag" train_a python3 experiments/train_speed/bench_train.py --part a
done
for tag in base new; do
    step "$tag" train_c python3 experiments/train_speed/bench_train.py --part c --fmnist-root "$fmnist"
done
python3 "$new/experiments/regression/compare.py" "$results"
