# Session 3, call 4: the search's latency stage under its new default (deploy build, cuDNN heuristic choice)
# and under autotuning: two short studies of the same seed (so TPE's random start samples the same
# architectures), one worker each, no presets. Run after `source experiments/device_runs/setup.sh`.
T=${T:-150}
C="--config experiments/search_proof/pareto.yaml --storage sqlite:///$W/s3_search/s3.db --workers 1 --no-presets --n-trials 40 --timeout $T --set protocol.deploy=true --set report.png=false"
mkdir -p $W/s3_search
timeout $((T + 60)) python3 -m lowspace search $C --study-name heuristic --set protocol.cudnn_benchmark=false > $W/s3_search/heuristic.log 2>&1; tail -3 $W/s3_search/heuristic.log
timeout $((T + 60)) python3 -m lowspace search $C --study-name autotuned --set protocol.cudnn_benchmark=true > $W/s3_search/autotuned.log 2>&1; tail -3 $W/s3_search/autotuned.log
save s3_search
