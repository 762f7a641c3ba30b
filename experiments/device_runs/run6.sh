# H100 (issue 6): finish the Pareto study (it stopped at 98 complete trials), then retrain the picks of the
# final studies with the full proxy schedule and time every architecture alone on the idle GPU.
# R = seconds for the retraining step (rerun with the returned rows.jsonl as --resume to continue).
source experiments/device_runs/setup.sh
mkdir -p $W/studies $W/retrain
if [ -z "$SKIP_SEARCH" ]; then
  timeout 200 python3 -m lowspace search --config experiments/search_proof/pareto.yaml --timeout 100 > $W/studies/pareto_finish.log 2>&1
  cp experiments/search_proof/studies/*.db $W/studies/; save studies; tail -n 3 $W/studies/pareto_finish.log
fi
timeout ${R:-330} python3 experiments/search_proof/retrain.py --out $W/retrain --jobs 5 \
    --resume experiments/search_proof/results/retrain/rows.jsonl > $W/retrain/retrain.log 2>&1
save retrain; tail -n 25 $W/retrain/retrain.log
