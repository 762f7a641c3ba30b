# H100 call 3 (issue 6): the Pareto search and the random baseline, run side by side on one GPU (3 workers
# each; every latency measurement waits for an idle GPU: lowspace.cost.locks.DeviceGate). Resumable.
source experiments/device_runs/setup.sh
T=${T:-470}   # seconds of searching (no new trial starts after it)
mkdir -p experiments/search_proof/studies $W/studies
( timeout $((T + 75)) python3 -m lowspace search --config experiments/search_proof/pareto.yaml --timeout $T > $W/studies/pareto.log 2>&1 ) &
( timeout $((T + 75)) python3 -m lowspace search --config experiments/search_proof/random.yaml --timeout $T > $W/studies/random.log 2>&1 ) &
wait
cp experiments/search_proof/studies/*.db $W/studies/; save studies
tail -n 5 $W/studies/pareto.log $W/studies/random.log
