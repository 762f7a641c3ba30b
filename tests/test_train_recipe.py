"""Recipes and the pieces that follow the official training code: the paper's numbers per preset, YAML
overrides and the search's proxy mapping with errors naming the field; weight-decay groups; the lr / EMA /
MESA / drop-path clock in micro-batches; mixup and cutmix; the losses."""
import dataclasses
import math
import typing

import pytest
import torch

from lowspace import ConfigError
from lowspace.arch import PRESET_NAMES, create_model, get_preset
from lowspace.arch.model import residual_branches
from lowspace.config import field_info
from lowspace.train import RECIPE_NAMES, Recipe, get_recipe, load_recipe, proxy_recipe
from lowspace.train.ema import WarmupEMA
from lowspace.train.engine import DropPathSchedule
from lowspace.train.losses import BatchMixer, TrainLoss
from lowspace.train.optim import StepClock, create_scheduler, no_decay_names, param_groups


def test_every_preset_names_a_recipe():
    assert set(RECIPE_NAMES) == set(PRESET_NAMES)
    for name in PRESET_NAMES:
        assert get_recipe(get_preset(name).recipe).name == name


def test_paper_numbers():
    b1, b3 = get_recipe("b1"), get_recipe("b3")
    assert (b1.epochs, b1.warmup_epochs, b1.batch_size, b1.base_lr) == (320, 20, 128, 2.5e-4)
    assert b1.scaled_lr(8) == pytest.approx(2.0e-3)
    assert (b3.batch_size, b3.accumulation, b3.mesa, b3.drop_path_skip, b3.reprob) == (75, 4, 2.0, 2, 0.2)
    assert b3.scaled_lr(8) == pytest.approx(3.008e-3)
    assert get_recipe("b2").mesa == 0.0  # as written in the official config
    assert get_recipe("lowformer_b1.5").name == "b15"


def test_yaml_override_and_errors(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text("base: b3\nepochs: 12\nwarmup_epochs: 1\nresolutions: [64, 96]\nclip_grad_value: null\n"
                    "classes: [cat, dog]\n")
    r = load_recipe(path, batch_size=20)
    assert (r.name, r.epochs, r.resolutions, r.clip_grad_value, r.batch_size, r.mesa, r.classes) == \
        ("short", 12, (64, 96), None, 20, 2.0, ("cat", "dog"))
    path.write_text("epochs: 10\nmixup_alfa: 0.2\n")
    with pytest.raises(ConfigError, match=r"short.yaml, line 2: mixup_alfa.*did you mean 'mixup_alpha'"):
        load_recipe(path)
    path.write_text("base: b7\n")
    with pytest.raises(ConfigError, match=r"short.yaml, line 1: base: got 'b7'; known recipes"):
        load_recipe(path)
    path.write_text("epochs: 10\nwarmup_epochs: 12\n")
    with pytest.raises(ConfigError, match=r"short.yaml, line 2: warmup_epochs: got 12.0; must be < epochs"):
        load_recipe(path)
    path.write_text("epochs: 10\nepochs: 12\n")
    with pytest.raises(ConfigError, match=r"short.yaml, line 2: got 'epochs'; duplicate key"):
        load_recipe(path)
    with pytest.raises(ConfigError, match=r"^warmup_epochs.*< epochs"):
        load_recipe("b1", epochs=10)
    with pytest.raises(ConfigError, match=r"^resolutions: got 'big'"):
        load_recipe("b1", resolutions="big")
    with pytest.raises(ConfigError, match=r"^classes: got True"):
        load_recipe("b1", classes=True)
    with pytest.raises(ConfigError, match=r"^precision.*allowed"):
        Recipe(precision="int8")
    with pytest.raises(ConfigError, match="known recipes.*proxy"):
        get_recipe("b7")


@pytest.mark.parametrize("field, value, message", [
    ("base_lr", float("nan"), "base_lr: got nan; a finite number"),
    ("base_lr", 0.0, "base_lr: got 0.0; must be a number > 0"),
    ("epochs", 10**6, "epochs: got 1000000; must be an integer between 1 and 100000"),
    ("seed", 2**40, "seed: .* between 0 and 4_294_967_295"),
    ("betas", (0.9, 1.0), "betas.1: got 1.0; must be a number >= 0 and < 1"),
    ("resolutions", (), "resolutions: got \\[\\]; at least one resolution"),
    ("resolutions", (64, 5000), "resolutions.1: got 5000"),
    ("scale", (0.5, 0.2), "scale: .*min <= max"),
    ("interpolation", "bicubic ", "interpolation: .*without surrounding whitespace"),
    ("classes", ("cat", ""), "classes.1: got ''"),
    ("randaugment", "m9-n2", "randaugment: .*RandAugment string"),
])
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match="^" + message):
        get_recipe("b1").replace(**{field: value})


def _numeric(tp) -> bool:
    return tp in (int, float) or any(_numeric(a) for a in typing.get_args(tp))


def test_every_numeric_field_is_bounded():
    hints = typing.get_type_hints(Recipe)
    numeric = [f for f in dataclasses.fields(Recipe) if _numeric(hints[f.name])]
    assert len(numeric) > 30
    assert [f.name for f in numeric if not field_info(Recipe, f.name).constraint.bounded] == []


def test_recipe_round_trips_through_dict_and_yaml(tmp_path):
    b3 = get_recipe("b3").replace(classes=("cat", "dog"), clip_grad_value=None)
    assert load_recipe(b3.to_dict()) == b3
    b3.to_yaml(tmp_path / "b3.yaml")
    assert load_recipe(tmp_path / "b3.yaml") == b3
    assert load_recipe({"base": "b1.5", "epochs": 30}).name == "b15-custom"


def test_proxy_mapping_takes_recipe_fields_and_names_renamed_keys():
    r = proxy_recipe({"epochs": 4, "resolutions": [32], "base_lr": 3e-3, "train_per_class": 200})
    assert (r.name, r.epochs, r.resolutions, r.base_lr, r.train_per_class) == ("proxy", 4, (32,), 3e-3, 200)
    assert r.scaled_lr(8) == 3e-3  # the proxy's lr is not scaled
    with pytest.raises(ConfigError, match=r"proxy.lr: got 0.1; no longer a field; use base_lr"):
        proxy_recipe({"lr": 0.1})
    with pytest.raises(ConfigError, match=r"proxy.resolution: .*use resolutions: \[R\]"):
        proxy_recipe({"resolution": 64})
    with pytest.raises(ConfigError, match=r"proxy.batchsize.*did you mean 'batch_size'"):
        proxy_recipe({"batchsize": 3})
    with pytest.raises(ConfigError, match=r"proxy.epochs: got 0"):
        proxy_recipe({"epochs": 0})


def test_paper_recipes_decay_weights_as_the_official_name_rule():
    model = create_model("b0", resolution=64)
    groups = param_groups(model, get_recipe("b1").weight_decay, get_recipe("b1").no_decay)
    decayed = {id(p) for p in groups[0]["params"]}
    named = dict(model.named_parameters())
    # GroupNorm pre-norms and the attention projection's BatchNorm are decayed officially; other norms are not
    assert id(named["stages.2.blocks.0.attn_norm.weight"]) in decayed
    assert id(named["stages.2.blocks.0.attn.proj.bn.weight"]) in decayed
    assert id(named["stem.conv.bn.weight"]) not in decayed and id(named["head.norm.weight"]) not in decayed
    assert id(named["head.classifier.bias"]) not in decayed and id(named["head.fc.weight"]) in decayed
    plain, official = set(no_decay_names(model, "norm_bias")), set(no_decay_names(model, "official"))
    assert plain - official == {n for n in plain if n.endswith(("attn_norm.weight", "mlp_norm.weight",
                                                                "attn.proj.bn.weight"))}


def test_lr_schedule_is_a_torch_scheduler_on_the_micro_batch_clock():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    clock = StepClock(micro_per_epoch=10, epochs=10, warmup_epochs=1, accumulation=1)
    sched = create_scheduler(opt, clock, 1.0, min_lr=0.01)
    lrs = []
    for _ in range(clock.total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # warm-up: (t + 1) / W
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] > 0.01
    assert lrs[55] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    # resumed at step 55: the same lr
    fresh = torch.optim.AdamW([param], lr=1.0)
    create_scheduler(fresh, clock, 1.0, 0.01, step=55)
    assert fresh.param_groups[0]["lr"] == pytest.approx(lrs[55])
    # accumulation 4: step k uses the lr of its last micro-batch, 4k + 3 (the official scheduler steps per micro-batch)
    acc = StepClock(micro_per_epoch=40, epochs=10, warmup_epochs=1, accumulation=4)
    assert acc.total_steps == 100 and acc.lr_factor(0) == pytest.approx(4 / 40) and acc.lr_factor(9) == 1.0


def test_mesa_starts_a_quarter_into_training_after_warmup():
    # B3: 300 + 20 epochs, accumulation 4; MESA from progress 0.25, where progress excludes the warm-up
    b3 = get_recipe("b3")
    clock = StepClock(micro_per_epoch=8, epochs=b3.epochs, warmup_epochs=b3.warmup_epochs, accumulation=4)
    first = next(step for step in range(clock.total_steps) if clock.progress(step) >= b3.mesa_start)
    assert first == 95 * clock.steps_per_epoch  # epoch 95 of 320 (20 + 75), not 80


def test_drop_path_rates_with_skip_and_the_progress_schedule():
    model = create_model("b3", resolution=64)
    clock = StepClock(micro_per_epoch=4, epochs=30, warmup_epochs=10, accumulation=1)
    schedule = DropPathSchedule(model, get_recipe("b3"), clock, levels=None)
    branches = residual_branches(model)
    assert schedule.update(20) and all(b.drop_prob == 0 for b in branches)  # warm-up
    schedule.update(clock.total_steps - 1)
    scale = clock.progress(clock.total_steps - 1)
    assert [b.drop_prob for b in branches[:2]] == [0.0, 0.0]  # skip 2
    assert branches[2].drop_prob == pytest.approx(0.1 / 37 * scale)  # 0.0027 at the end, not 0.0077
    assert branches[-1].drop_prob == pytest.approx(0.1 * scale)
    quantized = DropPathSchedule(model, get_recipe("b3"), clock, levels=7)
    quantized.update(80)  # progress 0.5
    assert branches[-1].drop_prob == pytest.approx(0.1 * 3 / 7)
    assert not quantized.update(81)  # same level: nothing to rebuild


def test_ema_is_timms_with_the_official_warmup_in_micro_batches():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = WarmupEMA(model, decay=0.9998, warmup_steps=2000)
    assert ema.get_decay(2000) == pytest.approx(0.9998 * (1 - math.exp(-1)))
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    before = ema.module[0].weight.clone()
    clock = StepClock(micro_per_epoch=40, epochs=2, warmup_epochs=0, accumulation=4)
    ema.update(model, clock.micro(1))  # after the first optimizer step: 4 micro-batches, as global_step
    d = 0.9998 * (1 - math.exp(-4 / 2000))
    assert torch.allclose(ema.module[0].weight, d * before + (1 - d) * model[0].weight)
    assert torch.allclose(ema.module[1].running_mean, torch.full((3,), 2.0 * (1 - d)))
    assert ema.module[1].num_batches_tracked.item() == 7


def test_cutmix_pastes_one_box_per_image_and_targets_follow_the_area():
    mixer = BatchMixer(5, mixup_alpha=0.0, cutmix_alpha=1.0, smoothing=0.0)
    n = 7  # odd batch sizes work
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, 16, 16).clone()
    labels = torch.arange(n) % 5
    a, ta = mixer(x.clone(), labels, seed=3)
    b, tb = mixer(x.clone(), labels, seed=3)
    assert torch.equal(a, b) and torch.equal(ta, tb)  # seeded
    pasted = a[:, 0] != x[:, 0]  # pixels taken from the partner image (image n-1-i)
    assert torch.equal(a[pasted.unsqueeze(1).expand_as(a)], x.flip(0)[pasted.unsqueeze(1).expand_as(a)])
    boxes = {tuple(p.nonzero().min(0).values.tolist() + p.nonzero().max(0).values.tolist()) for p in pasted if p.any()}
    assert len(boxes) > 1  # a box per image, not one for the batch
    lam = 1 - pasted.flatten(1).float().mean(1)
    for i in range(n):
        if i != n // 2:  # the middle image is its own partner
            assert ta[i, labels[i]] == pytest.approx(lam[i].item() + (labels[i] == labels[n - 1 - i]) * (1 - lam[i]))
    assert torch.allclose(ta.sum(1), torch.ones(n))


def test_mixup_and_losses():
    mixer = BatchMixer(5, mixup_alpha=0.4, cutmix_alpha=0.0, smoothing=0.1)
    x, y = torch.randn(6, 3, 4, 4), torch.arange(6) % 5
    mixed, target = mixer(x.clone(), y, seed=1)
    lam = ((mixed - x.flip(0)) / (x - x.flip(0)))[0, 0, 0, 0].item()
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-5)
    assert torch.allclose(target.sum(1), torch.ones(6)) and 0 < lam < 1
    logits = torch.randn(6, 5)
    bce = TrainLoss("bce", smoothing=0.1)
    smooth = torch.full((6, 5), 0.02).scatter_(1, y.view(-1, 1), 0.92)
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits, smooth)
    assert bce(logits, y, x) == pytest.approx(want.item())
    ce = TrainLoss("ce", smoothing=0.1)
    assert ce(logits, y, x) == pytest.approx(ce(logits, smooth, x).item(), rel=1e-5)
    mesa = TrainLoss("bce", smoothing=0.1, mesa=2.0, teacher=lambda images: logits.flip(0))
    mesa.mesa_on = True
    extra = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.sigmoid(logits.flip(0)))
    assert mesa(logits, y, x) == pytest.approx(bce(logits, y, x).item() + 2.0 * extra.item())
