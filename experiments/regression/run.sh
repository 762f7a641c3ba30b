#!/usr/bin/env bash
# Deploy and training hot paths of two source trees, side by side on one GPU (see README.md).
#   experiments/regression/run.sh BASE_TREE [OUT]
# BASE_TREE: a checkout of the commit to compare with (e.g. `git worktree add /tmp/base <commit>`).
# STEPS: which of "deploy train_a train_c" to run (default all); ROUNDS: deploy rounds, alternating the
# trees (default 1); BATCHES: deploy batch sizes (default 200,1).
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
steps=${STEPS:-deploy train_a train_c}
wants() { [[ " $steps " == *" $1 "* ]]; }
if wants deploy; then
    for round in $(seq 1 "${ROUNDS:-1}"); do
        for tag in base new; do
            step "$tag" "deploy_$round" python3 experiments/deploy_speed/bench.py --models b1 \
                --batches "${BATCHES:-200,1}" --variants ours_deploy --profile b1:ours_deploy:1 --parallel 2 \
                --cache-dir "/tmp/lowspace_regression_$tag"
        done
    done
fi
if wants train_a; then
    for tag in base new; do
        step "$tag" train_a python3 experiments/train_speed/bench_train.py --part a
    done
fi
if wants train_c; then
    for tag in base new; do
        step "$tag" train_c python3 experiments/train_speed/bench_train.py --part c --fmnist-root "$fmnist"
    done
fi
python3 "$new/experiments/regression/compare.py" "$results"
