"""Parameter and MAC counts: exact parity with presets.json, SDPA counted, fvcore cross-check, bad input."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lowspace import ArchConfig, ConfigError
from lowspace.arch import LowFormer, get_preset
from lowspace.cost import count_all, count_macs, count_params, fvcore_macs
from lowspace.cost.count import sdpa_macs

# presets.json (the reference): exact params, and MACs (LowFormer convention) at RESOLUTIONS
RESOLUTIONS = (128, 160, 192, 224, 256, 288)
PRESETS_JSON = {
    "b0": (14100472, (310247936, 482796800, 693999616, 944042240, 1233144320, 1561559296)),
    "b1": (17936312, (462447104, 720723200, 1036816384, 1410980096, 1843513856, 2334763264)),
    "b15": (33982028, (844579840, 1315546240, 1891805440, 2573737600, 3361792000, 4256487040)),
    "b2": (44986912, (1208510464, 1884317440, 2711064064, 3689206528, 4819283968, 6101918464)),
    "b3": (57086920, (1991707136, 3110796800, 4479586816, 6098685440, 7968811520, 10090794496)),
    "e1": (18896268, (445911040, 691978240, 992727040, 1348157440, 1758269440, 2223063040)),
    "e2": (22750664, (1240066560, 1935321600, 2785077760, 3789335040, 4948093440, 6261352960)),
    "e3": (41316808, (1589053952, 2481651200, 3573617152, 4865560064, 6358198784, 8052362752)),
}
REF = {k: (p, dict(zip(RESOLUTIONS, m))) for k, (p, m) in PRESETS_JSON.items()}

TINY = dict(name="tiny", resolution=32, num_classes=10, stem=dict(width=8),
            stages=[dict(width=16, depth=1, block="lowformer", attention=dict(stride=1)),
                    dict(width=32, depth=1, block="lowformer", attention=dict(stride=2, kernel_size=3))],
            head=dict(widths=[32, 32]))


@pytest.mark.parametrize("preset", sorted(REF))
def test_preset_params_and_macs_match_reference_exactly(preset):
    params, macs = REF[preset]
    with torch.device("meta"):
        model = LowFormer(get_preset(preset), init="torch")
    assert count_params(model) == params
    assert count_params(preset) == params
    for res in RESOLUTIONS:
        assert count_macs(model, res) == macs[res], (preset, res)


def test_config_and_name_inputs_agree_and_resolution_overrides():
    params, macs = REF["b0"]
    cfg = get_preset("b0")
    assert count_macs("b0") == macs[224]  # contract default: 224
    assert count_macs(cfg, 160) == macs[160]
    # a config whose own resolution differs: None means "the config's", an int overrides it
    cfg160 = cfg.replace(resolution=160)
    assert count_macs(cfg160, None) == macs[160]
    assert count_macs(cfg160, 288) == macs[288]
    assert count_macs(cfg.to_dict(), 128) == macs[128]
    # non-square input
    assert macs[128] < count_macs(cfg, (128, 160)) < macs[160]


def test_yaml_path_input(tmp_path):
    path = tmp_path / "tiny.yaml"
    cfg = ArchConfig.from_dict(TINY)
    cfg.to_yaml(path)
    assert count_macs(path, 32) == count_macs(cfg, 32) > 0
    assert count_params(str(path)) == count_params(cfg) == sum(p.numel() for p in LowFormer(cfg).parameters())


def test_real_cpu_model_counts_like_meta():
    """A model with real weights on CPU (SDPA takes a CPU kernel there) gives the reference number."""
    params, macs = REF["b0"]
    model = LowFormer(get_preset("b0"), init="torch").train()
    assert count_macs(model, 128) == macs[128]
    assert model.training, "counting must restore the training flag"


class _Attention(nn.Module):
    """Contiguous q/k/v on CPU: the case FlopCounterMode alone counts as 0 (CPU flash kernel)."""

    in_chans = 8

    def forward(self, x):
        b, c, h, w = x.shape
        q = x.reshape(b, 2, c // 2, h * w).transpose(-1, -2).contiguous()
        return F.scaled_dot_product_attention(q, q, q)


def test_sdpa_cpu_kernel_is_counted_analytically():
    expected = 1 * 2 * 36 * 36 * (4 + 4)  # batch * heads * Nq * Nk * (d_qk + d_v)
    assert sdpa_macs((1, 2, 36, 4), (1, 2, 36, 4), (1, 2, 36, 4)) == expected
    assert count_macs(_Attention(), (6, 6)) == expected
    assert fvcore_macs(_Attention(), (6, 6)) == expected


def test_timm_twin_counts_equal_ours():
    params, macs = REF["b1"]
    assert count_params("timm:lowformer_b1") == params
    assert count_macs("timm:lowformer_b1", 160) == macs[160]


def test_timm_peer_and_plain_module():
    import timm
    peer = timm.create_model("efficientvit_b0")
    assert count_params("efficientvit_b0") == sum(p.numel() for p in peer.parameters())
    assert count_macs("efficientvit_b0", 128) == count_macs(peer, 128) > 0
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    assert count_macs(conv, 8) == 3 * 4 * 9 * 64 + 4 * 64 * 5
    assert count_params(conv) == 3 * 4 * 9 + 4 * 64 * 5 + 5


def test_fvcore_cross_check():
    """fvcore's total = our count + norms + pooling (0.1-0.6 % more); timm's B0 at 224 px, pinned."""
    assert fvcore_macs("timm:lowformer_b0", 224) == 948_051_776
    ours = count_macs("b0", 128)
    fv = fvcore_macs("b0", 128)
    assert ours < fv < ours * 1.006
    counts = count_all(ArchConfig.from_dict(TINY), 32)
    assert counts["params"] > 0 and counts["macs"] < counts["fvcore_macs"]
    assert count_all(ArchConfig.from_dict(TINY), 32, fvcore=False)["fvcore_macs"] is None


@pytest.mark.parametrize("bad", ["no_such_model_xyz", "b9", "timm:no_such_model"])
def test_unknown_names_raise_config_error(bad):
    with pytest.raises(ConfigError) as info:
        count_macs(bad)
    assert bad in str(info.value)


def test_bad_resolution_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="resolution"):
        count_macs("b0", 0)
    with pytest.raises(ConfigError, match="resolution"):
        count_macs("b0", "224px")
    with pytest.raises(ConfigError, match="no such file"):
        count_params(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError):
        count_params(3.5)
