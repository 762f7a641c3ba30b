"""The built model: exact parity with timm's LowFormer (params and logits), interface, init, drop path."""
import json
from pathlib import Path

import pytest
import timm
import torch

import lowspace
from lowspace.arch import PRESET_NAMES, create_model, get_preset, load_checkpoint
from lowspace.arch.model import residual_branches, set_drop_path

from helpers import randomize

# Exact parameter counts and MACs measured from timm (== the official code); a copy of the reference file.
REFERENCE = json.loads((Path(__file__).parent / "data" / "presets.json").read_text())["presets"]
PARAMS = {name: entry["params"] for name, entry in REFERENCE.items()}


def test_reference_covers_every_preset():
    assert set(PARAMS) == set(PRESET_NAMES) and PARAMS["b1"] == 17_936_312


@pytest.mark.parametrize("name", PRESET_NAMES)
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
        assert model.forward_head(feats, pre_logits=True).shape == (2, 1600)
        maps = model.forward_intermediates(x)
    assert [m.shape[1] for m in maps] == [i["num_chs"] for i in model.feature_info] == [16, 32, 64, 128, 256]
    assert [96 // m.shape[-1] for m in maps] == [i["reduction"] for i in model.feature_info]
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.cfg.num_classes == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, 1600)


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


def test_public_api_names():
    for name in ("ArchConfig", "ConfigError", "create_model", "load_checkpoint", "export_state_dict"):
        assert hasattr(lowspace, name)


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
