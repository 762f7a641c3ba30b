"""Recipes: the paper's numbers per preset, YAML overrides, validation naming the field; weight-decay groups;
the lr schedule; EMA warmup; mixup on odd batches."""
import math

import pytest
import torch

from lowspace import ConfigError
from lowspace.arch import PRESET_NAMES, create_model, get_preset
from lowspace.train import RECIPE_NAMES, Recipe, get_recipe, load_recipe
from lowspace.train.ema import ModelEMA
from lowspace.train.losses import BatchMixer, classification_loss, soft_targets
from lowspace.train.optim import lr_at, no_decay_names, param_groups


def test_every_preset_names_a_recipe():
    assert set(RECIPE_NAMES) == set(PRESET_NAMES)
    for name in PRESET_NAMES:
        assert get_recipe(get_preset(name).recipe).name == name


def test_paper_numbers():
    b1, b3 = get_recipe("b1"), get_recipe("b3")
    assert (b1.epochs, b1.warmup_epochs, b1.batch_size, b1.base_lr) == (320, 20, 128, 2.5e-4)
    assert b1.betas == (0.9, 0.999) and b1.weight_decay == 0.1 and b1.clip_grad_value == 2.0
    assert b1.resolutions == (128, 160, 192, 224) and b1.crop_pct == 0.95 and b1.loss == "bce"
    assert b1.scaled_lr(8) == pytest.approx(2.0e-3)
    assert (b3.batch_size, b3.accumulation, b3.mesa, b3.drop_path_skip, b3.reprob) == (75, 4, 2.0, 2, 0.2)
    assert b3.scaled_lr(8) == pytest.approx(3.008e-3)
    assert get_recipe("b2").mesa == 0.0  # as written upstream
    assert get_recipe("b15").randaugment == "rand-m6-n2-mstd1.0-inc1"
    assert get_recipe("lowformer_b1.5").name == "b15"


def test_yaml_override_and_errors(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text("base: b3\nepochs: 12\nwarmup_epochs: 1\nresolutions: [64, 96]\nclip_grad_value: null\n")
    r = load_recipe(path, batch_size=20)
    assert (r.name, r.epochs, r.resolutions, r.clip_grad_value, r.batch_size, r.mesa) == \
        ("short", 12, (64, 96), None, 20, 2.0)
    path.write_text("epochs: 10\nmixup_alfa: 0.2\n")
    with pytest.raises(ConfigError, match=r"short.yaml: recipe.mixup_alfa.*did you mean 'mixup_alpha'"):
        load_recipe(path)
    with pytest.raises(ConfigError, match=r"recipe.warmup_epochs.*< epochs"):
        load_recipe("b1", epochs=10)
    with pytest.raises(ConfigError, match=r"recipe.resolutions: got 'big'"):
        load_recipe("b1", resolutions="big")
    with pytest.raises(ConfigError, match=r"recipe.precision.*allowed"):
        Recipe(precision="int8")
    with pytest.raises(ConfigError, match="known recipes"):
        get_recipe("b7")
    assert Recipe.__dataclass_fields__["epochs"].default == 320


def test_weight_decay_exclusions():
    model = create_model("b0", resolution=64)
    plain = set(no_decay_names(model, "norm_bias"))
    official = set(no_decay_names(model, "official"))
    assert "stages.2.blocks.0.attn_norm.weight" in plain and "head.norm.weight" in plain
    assert "stem.conv.bn.weight" in plain and "head.classifier.bias" in plain
    assert "stages.2.blocks.0.attn.proj.bn.weight" in plain
    # upstream's name rule decays exactly the GroupNorm weights and the attention-projection BN weights
    assert plain - official == {n for n in plain if n.endswith(("attn_norm.weight", "mlp_norm.weight",
                                                                "attn.proj.bn.weight"))}
    assert not any(n.endswith("conv.weight") or n == "head.fc.weight" for n in plain)
    groups = param_groups(model, 0.1, "norm_bias")
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0, 0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)


def test_ema_warmup_formula_and_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = ModelEMA(model, decay=0.9998, warmup_steps=2000)
    assert ema.decay_at(2000) == pytest.approx(0.9998 * (1 - math.exp(-1)))
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    before = ema.module[0].weight.clone()
    ema.update(model, step=1)
    d = ema.decay_at(1)
    assert torch.allclose(ema.module[0].weight, d * before + (1 - d) * model[0].weight)
    assert torch.allclose(ema.module[1].running_mean, torch.full((3,), 2.0 * (1 - d)))
    assert ema.module[1].num_batches_tracked.item() == 7


def test_mixup_odd_batch_and_losses():
    mixer = BatchMixer(5, mixup_alpha=0.2, cutmix_alpha=0.2, smoothing=0.1)
    x = torch.randn(7, 3, 8, 8)
    y = torch.arange(7) % 5
    a, ta = mixer(x.clone(), y, seed=3)
    b, tb = mixer(x.clone(), y, seed=3)
    assert torch.equal(a, b) and torch.equal(ta, tb) and ta.shape == (7, 5)
    assert torch.allclose(ta.sum(1), torch.ones(7))
    t = soft_targets(y, 5, 0.1)
    assert t[0, 0] == pytest.approx(0.92) and t[0, 1] == pytest.approx(0.02)
    logits = torch.randn(7, 5)
    assert classification_loss(logits, y, "ce", 0.1) == pytest.approx(
        classification_loss(logits, soft_targets(y, 5, 0.1), "ce").item(), rel=1e-5)
    bce = classification_loss(logits, y, "bce", 0.1)
    assert bce == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, t).item(), rel=1e-6)
