"""The built model: exact parity with timm's LowFormer (params, logits, intermediates), timm's model interface
(forward_intermediates, prune_intermediate_layers, features_only, reset_classifier, pretrained_cfg), init,
drop path."""
import json
from pathlib import Path

import pytest
import timm
import torch

import lowspace
from lowspace.errors import ConfigError
from lowspace.arch import PRESET_NAMES, LowFormer, create_model, get_preset, load_checkpoint, pretrained_cfg_for
from lowspace.arch.model import residual_branches, set_drop_path

from helpers import randomize

# Exact parameter counts and MACs measured from timm (== the official code); a copy of the reference file.
REFERENCE = json.loads((Path(__file__).parent / "data" / "presets.json").read_text())["presets"]
PARAMS = {name: entry["params"] for name, entry in REFERENCE.items()}
B3_SLOW = [pytest.param(n, marks=pytest.mark.slow) if n == "b3" else n for n in PRESET_NAMES]


def timm_twin(name: str, seed: int = 0):
    """(ours, timm's) for a preset, with the same random weights (BN statistics included), in eval mode."""
    ref = randomize(timm.create_model(f"lowformer_{name}"), seed=seed).eval()
    ours = create_model(name)
    assert load_checkpoint(ours, ref.state_dict()).ok
    return ours.eval(), ref


@pytest.mark.parametrize("name", B3_SLOW)
def test_preset_parity_with_timm(name):
    ours = create_model(name).eval()
    assert sum(p.numel() for p in ours.parameters()) == PARAMS[name]
    ref = randomize(timm.create_model(f"lowformer_{name}")).eval()
    report = load_checkpoint(ours, ref.state_dict())
    assert report.ok and report.format == "timm"
    torch.manual_seed(1)
    for size in (224, 199):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            a, b = ours(x), ref(x)
        assert a.shape == (2, 1000)
        assert b.abs().max() > 1e-2  # a meaningful comparison, not two near-zero outputs
        assert (a - b).abs().max().item() <= 1e-5


def test_interface_features_head_and_classifier():
    model = create_model("b0", resolution=96).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 256, 3, 3)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size) == (2, 1600)
        final, maps = model.forward_intermediates(x)
    assert torch.equal(final, feats)
    assert [m.shape[1] for m in maps] == [i["num_chs"] for i in model.feature_info] == [32, 64, 128, 256]
    assert [96 // m.shape[-1] for m in maps] == [i["reduction"] for i in model.feature_info] == [4, 8, 16, 32]
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.cfg.num_classes == 7 == model.pretrained_cfg["num_classes"]
    model.reset_classifier(0, global_pool="avg")
    assert model(x).shape == (2, 1600)
    with pytest.raises(lowspace.ConfigError, match="global_pool"):
        model.reset_classifier(3, global_pool="max")


@pytest.mark.parametrize("kwargs", [dict(), dict(indices=2), dict(indices=[0, -1]), dict(indices=[1], stop_early=True),
                                    dict(indices=3, intermediates_only=True)])
def test_forward_intermediates_match_timm(kwargs):
    ours, ref = timm_twin("b1", seed=2)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        got, want = ours.forward_intermediates(x, **kwargs), ref.forward_intermediates(x, **kwargs)
    if not kwargs.get("intermediates_only"):
        assert torch.allclose(got[0], want[0], atol=1e-5)
        got, want = got[1], want[1]
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    with pytest.raises(lowspace.ConfigError, match="output_fmt"):
        ours.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("indices, prune_head", [(1, True), ([0, 2], True), ([0, 2], False), (4, False)])
def test_prune_intermediate_layers_matches_timm(indices, prune_head):
    ours, ref = timm_twin("b0", seed=4)
    kept = ours.prune_intermediate_layers(indices, prune_head=prune_head)
    assert kept == ref.prune_intermediate_layers(indices, prune_head=prune_head)
    assert len(ours.stages) == len(ref.stages) and ours.num_features == ref.num_features
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, want = ours(x), ref(x)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    rebuilt = LowFormer(ours.cfg)  # cfg describes the pruned network
    shapes = [(k, tuple(v.shape)) for k, v in ours.state_dict().items()]
    assert [(k, tuple(v.shape)) for k, v in rebuilt.state_dict().items()] == shapes


def test_features_only_gives_timm_stage_outputs():
    ours, ref = timm_twin("b15", seed=6)
    features = create_model("b15", features_only=True, out_indices=(1, 3))
    missing, _ = features.model.load_state_dict(ours.state_dict(), strict=False)  # ours has a head, it has none
    assert not missing and not any(k.startswith("head.") for k in features.model.state_dict())
    assert features.feature_info.channels() == [80, 320] and features.feature_info.reduction() == [8, 32]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = features.eval()(x)
        want = ref.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))
    assert features.pretrained_cfg["mean"] == ref.pretrained_cfg["mean"] and "classifier" not in features.pretrained_cfg


def test_stage_indices_read_none_last_n_and_negative_indices_as_timm_does():
    from lowspace.arch.model import stage_indices
    assert stage_indices(4, None) == ([0, 1, 2, 3], 3)
    assert stage_indices(4, 2) == ([2, 3], 3)
    assert stage_indices(4, (-1, 1)) == ([3, 1], 3)
    for bad in (0, 5, (4,), (-5,), ()):
        with pytest.raises(ConfigError, match="indices"):
            stage_indices(4, bad)
    features = create_model("b0", features_only=True, out_indices=2)
    assert features.out_indices == [2, 3] and features.feature_info.channels() == [128, 256]


def test_pretrained_cfg_matches_timm_and_follows_the_config():
    ours, ref = create_model("b1"), timm.create_model("lowformer_b1")
    def plain(v):
        return tuple(v) if isinstance(v, (tuple, list)) else v

    for key in ("input_size", "interpolation", "crop_pct", "mean", "std", "num_classes"):
        assert plain(ours.pretrained_cfg[key]) == plain(ref.pretrained_cfg[key]), key
    named = dict(ours.named_modules())
    assert isinstance(named[ours.pretrained_cfg["first_conv"]], torch.nn.Conv2d)
    assert named[ours.pretrained_cfg["classifier"]] is ours.get_classifier()
    grey = pretrained_cfg_for(get_preset("b0").replace(in_chans=1, resolution=28, num_classes=10))
    assert grey["input_size"] == (1, 28, 28) and grey["mean"] == (0.449,) and grey["std"] == (0.226,)
    data = timm.data.resolve_data_config({}, model=create_model("b0", resolution=160))
    assert data["input_size"] == (3, 160, 160) and data["crop_pct"] == 0.95 and data["interpolation"] == "bicubic"


def test_in_chans_and_num_classes_overrides():
    model = create_model("b0", in_chans=1, num_classes=10, resolution=64)
    assert model(torch.randn(3, 1, 64, 64)).shape == (3, 10)


def test_official_init_zeroes_last_gammas():
    for name, expected in (("b1", 10), ("b3", 16)):
        model = create_model(name)
        zero = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.any()]
        assert len(zero) == expected
        linear = model.head.fc.weight
        assert abs(linear.std().item() - 0.02) < 0.002 and not model.head.classifier.bias.any()


def test_drop_path_schedule_matches_official_counts():
    counts = {"b0": 21, "b1": 30, "b15": 36, "b3": 39}
    for name, n in counts.items():
        assert len(residual_branches(create_model(name))) == n
    model = create_model("b3")
    rates = set_drop_path(model, 0.1, skip=2)
    # the official numbering restarts after the skipped branches: 37 active, the first at 0.1 / 37
    assert rates[:2] == [0.0, 0.0] and rates[-1] == pytest.approx(0.1) and rates[2] == pytest.approx(0.1 / 37)
    assert residual_branches(model)[-1].drop_prob == pytest.approx(0.1)


def test_create_model_rejects_unknown_names(tmp_path):
    with pytest.raises(lowspace.ConfigError, match="did you mean 'b1'"):
        create_model("b11")
    with pytest.raises(lowspace.ConfigError, match="no such file"):
        create_model(str(tmp_path / "nope.yaml"))


def test_create_model_from_config_objects(tmp_path):
    cfg = get_preset("e1")
    path = tmp_path / "e1.yaml"
    cfg.to_yaml(path)
    for spec in (cfg, str(path), path, cfg.to_dict()):
        assert create_model(spec, resolution=32).cfg.replace(resolution=224) == cfg
