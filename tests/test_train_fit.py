"""The full training loop on CPU: exact resume after an interruption, metrics and checkpoint files,
gradient accumulation + MESA + CE, the drop-path schedule, the training step's snapshot / restore."""
import json

import pytest
import torch
from safetensors.torch import load_file

from lowspace.arch import create_model
from lowspace.arch.model import residual_branches
from lowspace.data import get_dataset
from lowspace.train import TrainingError, fit, load_recipe
from lowspace.train.fit import _DropPathSchedule
from lowspace.train.optim import create_optimizer
from lowspace.train.step import TrainStep

TINY = dict(name="tiny", resolution=16, stem=dict(width=8),
            stages=[dict(width=16, depth=1, downsample=dict(stride=2)),
                    dict(width=24, depth=2, block="lowformer", attention=dict(stride=1))],
            head=dict(widths=[32]))


@pytest.fixture(scope="module")
def data():
    return get_dataset("synthetic", num_classes=4, train_size=64, val_size=32, image_size=16)


def small_recipe(**changes):
    base = dict(epochs=2, warmup_epochs=0.5, batch_size=8, resolutions=[16, 20], eval_resolution=16,
                bn_reestimate_images=32, bn_reestimate_batch=16, eval_batch_size=16, save_every_steps=4,
                ema_warmup_steps=5, drop_path=0.2, mixup_alpha=0.2, cutmix_alpha=0.2, base_lr=2e-3, log_every=5,
                workers=0)
    base.update(changes)
    return load_recipe("b1", **base)


def run(data, out, recipe, **kw):
    return fit(TINY, data, recipe, out, device="cpu", progress=False, **kw)


def test_interrupted_then_resumed_run_ends_with_identical_weights(data, tmp_path):
    recipe = small_recipe()
    full = run(data, tmp_path / "full", recipe)
    assert full.steps == 16 and full.epochs_run == 2 and not full.interrupted
    part = run(data, tmp_path / "resumed", recipe, max_steps=11)  # stops mid-epoch 2
    assert part.interrupted and part.steps == 11
    assert json.loads((tmp_path / "resumed" / "latest.json").read_text())["step"] == 11
    with pytest.raises(TrainingError, match="already holds a run"):
        run(data, tmp_path / "resumed", recipe)
    rest = run(data, tmp_path / "resumed", recipe, resume=True)
    assert rest.steps == 16 and not rest.interrupted
    for name in ("model.safetensors", "ema.safetensors", "best.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "resumed" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    strip = [{k: v for k, v in row.items() if not k.endswith("_s")} for row in full.history]
    assert strip == [{k: v for k, v in row.items() if not k.endswith("_s")} for row in rest.history]
    # the weights really moved, and the (learnable) task was learned above chance
    start = create_model(TINY, num_classes=4).state_dict()
    final = load_file(tmp_path / "full" / "model.safetensors")
    assert not torch.equal(start["head.classifier.weight"], final["head.classifier.weight"])
    assert full.best_top1 > 40  # 4 classes: chance is 25%


def test_run_directory_files(data, tmp_path):
    out = tmp_path / "run"
    run(data, out, small_recipe(epochs=2, save_every_steps=0, keep_checkpoints=1))
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "recipe.yaml", "metrics.jsonl", "metrics.csv", "latest.json", "result.json",
            "model.safetensors", "ema.safetensors", "best.safetensors", "checkpoints"} <= names
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000016"]
    state = torch.load(out / "checkpoints" / "step_00000016" / "state.pt", weights_only=True)
    assert state["step"] == 16 and "optimizer" in state and "torch" in state["ranks"][0]["rng"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]
    assert any(r["kind"] == "train" and "loss" in r and "lr" in r for r in rows)
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("kind,epoch,step,train_loss") and len(csv_lines) == 3
    assert "top1" in csv_lines[0] and "top5" in csv_lines[0]


def test_accumulation_mesa_ce(data, tmp_path):
    recipe = small_recipe(epochs=1, accumulation=2, mesa=2.0, mesa_start=0.0, loss="ce", mixup_alpha=0.0,
                          cutmix_alpha=0.0, eval_model="model", save_every_steps=0)
    result = run(data, tmp_path / "acc", recipe)
    assert result.steps == 4 and result.info["images_per_step"] == 16
    assert result.info["lr"] == pytest.approx(4e-3)  # base lr x accumulation
    assert all(r["train_loss"] == r["train_loss"] for r in result.history)  # finite, not NaN


def test_drop_path_progress_schedule():
    model = create_model(TINY, num_classes=4)
    recipe = small_recipe(drop_path=0.3, drop_path_skip=1)
    schedule = _DropPathSchedule(model, recipe, warmup_steps=10, total_steps=110, levels=None)
    branches = residual_branches(model)
    assert schedule.update(5) and all(b.drop_prob == 0 for b in branches)
    schedule.update(60)
    assert branches[0].drop_prob == 0 and branches[-1].drop_prob == pytest.approx(0.3 * 0.5)
    quantized = _DropPathSchedule(model, recipe, 10, 110, levels=7)
    quantized.update(60)
    assert branches[-1].drop_prob == pytest.approx(0.3 * 3 / 7)
    assert not quantized.update(61)  # same level: nothing to rebuild


def test_step_snapshot_restore_is_exact():
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=4)
    opt = create_optimizer(model, 1e-2, 0.1)
    step = TrainStep(model, opt, lambda logits, t, x: torch.nn.functional.cross_entropy(logits, t), clip_value=2.0)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    step([(x, y)])
    snap = step._snapshot()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_a = step([(x, y)])
    after_a = {k: v.clone() for k, v in model.state_dict().items()}
    step._restore(snap)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    loss_b = step([(x, y)])
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(after_a[k], v) for k, v in model.state_dict().items())


@pytest.mark.gpu
@pytest.mark.parametrize("drop_path", [0.0, 0.2])
def test_fit_with_cuda_graph_step(data, tmp_path, drop_path):
    recipe = small_recipe(cuda_graph=True, drop_path=drop_path, save_every_steps=0)
    result = fit(TINY, data, recipe, tmp_path / "graph", device="cuda", progress=False)
    step_info = result.info["train_step"]
    assert step_info["cuda_graph"] == "on", step_info
    checks = step_info["graph_checks"]
    if drop_path == 0:  # deterministic step: every captured graph was compared with an eager step
        assert checks and all(isinstance(c, (list, tuple)) for c in checks)
    else:  # rates grow from 0 after warmup: graphs captured at rate 0 are compared, later ones cannot be
        skipped = [c for c in checks if c == "skipped (stochastic layers)"]
        assert skipped and all(isinstance(c, (list, tuple)) for c in checks if c not in skipped), checks
    assert result.best_top1 > 40
