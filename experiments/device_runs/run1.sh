# H100 call 1: harness speed + the cuda_graph part of the bench matrix (issue 3), training throughput at
# 64 px and one Fashion-MNIST epoch (issue 4).
source experiments/device_runs/setup.sh
timeout 60 python3 experiments/bench_presets/harness_speed.py --out $W/bench_presets; save bench_presets
timeout 230 python3 experiments/bench_presets/run_matrix.py --out $W/bench_presets --parts graph --budget-s 200; save bench_presets
timeout 130 python3 experiments/train_speed/bench_train.py --part a --out $W/train_a; save train_a
timeout 90 python3 experiments/train_speed/bench_train.py --part c --out $W/train_c --fmnist-root .fmnist; save train_c
