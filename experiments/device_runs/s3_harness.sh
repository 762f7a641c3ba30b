# Session 3, call 2: the harness speed check in three processes (autotuned, heuristic, autotuned again: the
# second autotuned run is the reference for how much two autotuned runs of one architecture differ), then the
# GPU tests. Run after `source experiments/device_runs/setup.sh`.
P=experiments/bench_presets
N=${N:-12}
timeout 200 python3 $P/harness_speed.py --out $W/harness_a --n $N 2>&1 | grep -v Warning | tail -30; save harness_a
timeout 120 python3 $P/harness_speed.py --out $W/harness_h --n $N --no-cudnn-benchmark 2>&1 | grep -v Warning | tail -30; save harness_h
timeout 200 python3 $P/harness_speed.py --out $W/harness_b --n $N 2>&1 | grep -v Warning | tail -30; save harness_b
timeout 150 python3 -m pytest -q -m gpu tests/ -p no:cacheprovider 2>&1 | tail -5
