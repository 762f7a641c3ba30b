"""Property test: any config dict either builds and runs at its resolution, or raises ConfigError."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowspace import ArchConfig, ConfigError
from lowspace.arch import LowFormer


def mostly(valid, invalid, one_in=25):
    """Usually a valid value, about once in ``one_in`` draws an invalid one."""
    return st.integers(0, one_in - 1).flatmap(lambda i: invalid if i == 0 else valid)


widths = mostly(st.integers(4, 48), st.sampled_from([0, -8, 3.5, "32"]))
small_ints = mostly(st.integers(0, 2), st.sampled_from([-1, 99]))
kernels = mostly(st.sampled_from([1, 3, 5]), st.sampled_from([4, 0]))
ratios = mostly(st.sampled_from([1.0, 2, 4.0, 0.5]), st.sampled_from([0, -1.0, 50.0, float("nan")]))
placements = mostly(st.one_of(st.sampled_from(["all", "none", "last:1", "every:2"]),
                              st.lists(st.integers(0, 1), max_size=2)),
                    st.one_of(st.sampled_from(["last:3", "every:0", "most"]), st.lists(st.integers(-1, 5), max_size=3)))
attention = st.fixed_dictionaries({}, optional={
    "placement": placements, "stride": mostly(st.sampled_from([1, 2, 4]), st.just(3)), "kernel_size": kernels,
    "heads": mostly(st.one_of(st.just("auto"), st.integers(1, 4)), st.sampled_from([0, "many"])),
    "head_dim": mostly(st.one_of(st.just("auto"), st.integers(1, 16)), st.just(0)),
    "upsample": mostly(st.sampled_from(["conv_transpose", "interpolate"]), st.just("pixelshuffle")),
    "norm": mostly(st.sampled_from(["groupnorm", "none"]), st.just("layernorm")),
})
downsample = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "block": mostly(st.sampled_from(["fused_mbconv", "mbconv"]), st.just("conv")),
    "stride": mostly(st.sampled_from([1, 2]), st.just(3)),
    "expand_ratio": ratios, "kernel_size": kernels}))
stage = st.fixed_dictionaries({"width": widths, "depth": small_ints}, optional={
    "block": mostly(st.sampled_from(["fused_mbconv", "mbconv", "lowformer", "lowformer"]), st.just("attention")),
    "expand_ratio": ratios, "kernel_size": kernels, "downsample": downsample,
    "attention": st.one_of(st.none(), attention), "mlp_ratio": mostly(st.sampled_from([0, 1.0, 2]), st.just(-1)),
    "local": mostly(st.sampled_from(["auto", "fused_mbconv", "mbconv"]), st.just("dense")),
    "typo_key": mostly(st.nothing(), st.just(1), one_in=40),
})
configs = st.fixed_dictionaries({"stages": mostly(st.lists(stage, min_size=1, max_size=4), st.just([]))}, optional={
    "resolution": mostly(st.integers(8, 40), st.sampled_from([0, 5])),
    "in_chans": mostly(st.sampled_from([1, 3]), st.just(0)),
    "num_classes": mostly(st.sampled_from([0, 5]), st.just(-2)),
    "stem": st.fixed_dictionaries({}, optional={
        "width": widths, "depth": small_ints, "expand_ratio": ratios,
        "block": mostly(st.sampled_from(["fused_mbconv", "mbconv"]), st.just("x"))}),
    "head": st.fixed_dictionaries({}, optional={
        "widths": mostly(st.lists(st.integers(1, 32), max_size=2),
                         st.lists(st.integers(1, 32), min_size=3, max_size=3)),
        "dropout": mostly(st.sampled_from([0.0, 0.5]), st.just(1.5))}),
    "act": mostly(st.sampled_from(["hardswish", "relu", "silu"]), st.just("swish")),
    "mlp_act": mostly(st.sampled_from(["gelu", "gelu_tanh"]), st.just("tanh")),
})

def check_config(data, outcomes: dict) -> None:
    """The property for one drawn dict; counts which way it went."""
    try:
        cfg = ArchConfig.from_dict(data)
    except ConfigError:
        outcomes["rejected"] += 1
        return
    model = LowFormer(cfg).eval()
    x = torch.randn(1, cfg.in_chans, cfg.resolution, cfg.resolution)
    with torch.no_grad():
        out = model(x)
        maps = model.forward_intermediates(x, intermediates_only=True)
    expected = cfg.num_classes or model.head.num_features
    assert out.shape == (1, expected) and torch.isfinite(out).all()
    assert [m.shape[1] for m in maps] == [i["num_chs"] for i in model.feature_info]
    assert ArchConfig.from_dict(cfg.to_dict()).arch_id == cfg.arch_id
    outcomes["built"] += 1


@pytest.mark.slow
def test_random_configs_build_and_run_or_raise_config_error():
    outcomes = {"built": 0, "rejected": 0}

    @settings(max_examples=250, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(configs)
    def run(data):
        check_config(data, outcomes)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny models: threads only add overhead
    try:
        run()
    finally:
        torch.set_num_threads(threads)
    # A generator that only ever produced invalid (or only valid) configs would make the property vacuous.
    assert outcomes["built"] >= 40 and outcomes["rejected"] >= 40, outcomes
