# Sourced at the start of every H100 command: installs the carried wheels (the machine has no network)
# and sets up the environment. Wheels: see README.md in this folder.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
W=/tmp/work; mkdir -p $W
# save DIR: append a finished step's output folder to $OUT/results.tar (what comes back even if a later step is killed)
save() { tar rf "$OUT/results.tar" -C "$W" "$1"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, timm, optuna, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'timm', timm.__version__, 'optuna', optuna.__version__, 'triton', triton.__version__)"
