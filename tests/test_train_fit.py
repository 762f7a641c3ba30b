"""The training engine on CPU: exact resume after an interruption, metrics and checkpoint files, gradient
accumulation as the official trainer (un-divided loss, clip by value), MESA + CE, BatchNorm re-estimation
into the EMA through the training transform, the auto-restart from the best epoch, the training step's
snapshot / restore; the CUDA-graph step on a GPU."""
import json

import pytest
import torch
from safetensors.torch import load_file

from lowspace.arch import create_model
from lowspace.data import get_dataset
from lowspace.train import TrainingError, fit, load_recipe
from lowspace.train import engine
from lowspace.train.distributed import DistInfo
from lowspace.train.evaluate import reestimate_bn
from lowspace.train.optim import create_optimizer
from lowspace.train.step import TrainStep, step_errors

TINY = dict(name="tiny", resolution=16, stem=dict(width=8),
            stages=[dict(width=16, depth=1, downsample=dict(stride=2)),
                    dict(width=24, depth=2, block="lowformer", attention=dict(stride=1))],
            head=dict(widths=[32]))


@pytest.fixture(scope="module")
def data():
    """24 training images per class: 8 of each are held out for validation (``small_recipe``), 64 trained on."""
    return get_dataset("synthetic", num_classes=4, train_size=96, val_size=32, image_size=16)


def small_recipe(**changes):
    base = dict(epochs=2, warmup_epochs=0.5, batch_size=8, resolutions=[16, 20], eval_resolution=16,
                bn_reestimate_images=32, bn_reestimate_batch=16, eval_batch_size=16, save_every_steps=4,
                ema_warmup_steps=5, drop_path=0.2, mixup_alpha=0.2, cutmix_alpha=0.2, base_lr=2e-3, log_every=5,
                workers=0, auto_restart=None, val_per_class=8)
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
    state = torch.load(out / "checkpoints" / "step_00000016" / "state.pt", weights_only=True)
    assert state["step"] == 16 and "optimizer" in state and "torch" in state["ranks"][0]["rng"]
    assert {p.name for p in (out / "checkpoints").iterdir()} <= {"step_00000016", state["progress"]["best_checkpoint"]
                                                                  .split("/")[-1]}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]
    assert any(r["kind"] == "train" and "loss" in r and "lr" in r for r in rows)
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("kind,epoch,step,train_loss") and len(csv_lines) == 3
    assert "top1" in csv_lines[0] and "top5" in csv_lines[0]
    result = json.loads((out / "result.json").read_text())
    assert set(result["provenance"]) == {"lowspace", "commit", "source"} and result["provenance"]["source"]


def test_accumulation_mesa_ce(data, tmp_path):
    recipe = small_recipe(epochs=1, accumulation=2, mesa=2.0, mesa_start=0.0, loss="ce", mixup_alpha=0.0,
                          cutmix_alpha=0.0, eval_model="model", save_every_steps=0)
    result = run(data, tmp_path / "acc", recipe)
    assert result.steps == 4 and result.info["images_per_step"] == 16
    assert result.info["lr"] == pytest.approx(4e-3)  # base lr x accumulation
    assert all(r["train_loss"] == r["train_loss"] for r in result.history)  # finite, not NaN


def test_accumulated_gradients_are_summed_then_clipped_by_value():
    torch.manual_seed(0)
    model = create_model(TINY, num_classes=4, init="torch")
    batches = [(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])) for _ in range(2)]

    def loss_fn(logits, target, x):
        return torch.nn.functional.cross_entropy(logits, target) * 50  # large gradients: clipping matters

    grads = []
    for x, y in batches:  # the gradient of each micro-batch's own (un-divided) loss
        model.zero_grad()
        loss_fn(model(x), y, x).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves the weights, we read the grads
    TrainStep(model, opt, loss_fn, clip_value=0.5)(batches)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, (grads[0][name] + grads[1][name]).clamp(-0.5, 0.5), atol=1e-6), name
    assert any((grads[0][n] + grads[1][n]).abs().max() > 0.5 for n in grads[0])


def test_bn_reestimation_uses_the_train_transform_and_writes_into_the_ema(data, tmp_path):
    recipe = small_recipe(epochs=1, translate=0.25, scale=[0.3, 1.0])
    prepared = engine.prepare_data(data, recipe)
    runtime = engine.resolve_runtime(recipe, DistInfo())
    setup = engine.build(TINY, prepared, recipe, runtime, None)
    bn = setup.loaders.bn
    assert bn.augment is not None and bn.resolution == 16 and setup.eval_model is setup.ema.module
    first, again = next(iter(bn.epoch(0)))[0], next(iter(bn.epoch(0)))[0]
    assert torch.equal(first, again) and first.shape[-1] == 16  # the same augmented images at every evaluation
    reference = engine.build(TINY, prepared, recipe.replace(bn_reestimate_transform="eval"), runtime, None)
    assert reference.loaders.bn.augment is None and not torch.equal(first, next(iter(reference.loaders.bn.epoch(0)))[0])
    expected = create_model(TINY, num_classes=4)
    expected.load_state_dict(setup.ema.module.state_dict())
    reestimate_bn(expected, bn.epoch(0))
    engine.evaluate(setup)  # re-estimates in place: the EMA weights now hold the statistics
    for (name, a), b in zip(setup.ema.module.state_dict().items(), expected.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_auto_restart_goes_back_to_the_best_epoch(data, tmp_path, monkeypatch):
    scripted = iter([60.0, 70.0, 50.0, 72.0, 73.0])  # epoch 3 drops 20 points: restart from epoch 2

    def fake_evaluate(setup):
        return dict(top1=next(scripted), top5=100.0, loss=1.0, images=32)
    monkeypatch.setattr(engine, "evaluate", fake_evaluate)
    out = tmp_path / "run"
    result = run(data, out, small_recipe(epochs=4, save_every_steps=0, keep_checkpoints=1, auto_restart=1.0))
    assert result.info["restarts"] == 1 and result.steps == 32
    assert [(r["epoch"], r["top1"]) for r in result.history] == [(1, 60.0), (2, 70.0), (3, 72.0), (4, 73.0)]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    restart = next(r for r in rows if r["kind"] == "restart")
    assert (restart["epoch"], restart["step"], restart["dropped_epoch"], restart["dropped_top1"]) == (2, 16, 3, 50.0)
    assert [r["top1"] for r in rows if r["kind"] == "epoch"] == [60.0, 70.0, 72.0, 73.0]


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



def test_step_errors_are_the_relative_l2_errors_of_loss_gradients_and_update():
    torch.manual_seed(0)
    initial = [torch.randn(3, 4), torch.randn(5)]
    ref_params = [p + 0.1 * torch.randn_like(p) for p in initial]
    ref_grads = [torch.randn(3, 4), None]
    grads = [g + 0.01 * torch.randn_like(g) if g is not None else torch.randn(5) for g in ref_grads]
    params = [p + 0.001 * torch.randn_like(p) for p in ref_params]
    ref_loss, loss = torch.tensor(2.0), torch.tensor(2.02, dtype=torch.bfloat16)
    errors = step_errors(ref_loss, ref_grads, ref_params, loss, grads, params, initial)
    update = torch.cat([(p - r).flatten() for p, r in zip(params, ref_params)])
    ref_update = torch.cat([(r - p0).flatten() for r, p0 in zip(ref_params, initial)])
    expected = ((loss.float() - ref_loss).abs().item() / 2.0,  # the parameter without a reference gradient
                ((grads[0] - ref_grads[0]).norm() / ref_grads[0].norm()).item(),  # is left out of the gradients
                (update.norm() / ref_update.norm()).item())
    assert errors == pytest.approx(expected, rel=1e-5)
    assert step_errors(ref_loss, ref_grads, ref_params, ref_loss, ref_grads, ref_params, initial) == (0.0, 0.0, 0.0)

@pytest.mark.gpu
@pytest.mark.parametrize("drop_path", [0.0, 0.2])
def test_fit_with_cuda_graph_step(data, tmp_path, drop_path):
    recipe = small_recipe(cuda_graph=True, drop_path=drop_path, save_every_steps=0)
    result = fit(TINY, data, recipe, tmp_path / "graph", device="cuda", progress=False)
    assert result.info["cuda_graph"] == "on", result.info
    checks = result.info["graph_checks"]
    if drop_path == 0:  # deterministic step: every captured graph was compared with an eager step
        assert checks and all(isinstance(c, (list, tuple)) for c in checks)
    else:  # rates grow from 0 after warmup: graphs captured at rate 0 are compared, later ones cannot be
        skipped = [c for c in checks if c == "skipped (stochastic layers)"]
        assert skipped and all(isinstance(c, (list, tuple)) for c in checks if c not in skipped), checks
    parts = result.info["capture_parts_s"]
    assert all(v >= 0 for v in parts.values()) and sum(parts.values()) <= result.info["capture_s"]
    assert parts["warmup"] > 0 and parts["capture"] > 0
    assert result.best_top1 > 40


def test_a_batch_larger_than_the_training_set_shrinks_to_fit(data, tmp_path, capsys):
    result = run(data, tmp_path / "big", small_recipe(epochs=1, batch_size=256))
    assert "training with batch_size 64" in capsys.readouterr().out  # 96 - 4 x 8 held out
    assert result.info["train_images"] == 64
