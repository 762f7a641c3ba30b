"""experiments/deploy_speed/bench.py on the CPU: the reference table and the timm variants' inductor settings."""
import pytest


@pytest.fixture(scope="module")
def bench(load_experiment):
    return load_experiment("deploy_speed/bench.py")


def _row(variant, batch, ms, impl=None):
    return dict(model="b1", variant=variant, batch=batch, status="ok", check_ok=True, ms=ms,
                img_s=batch * 1000 / ms, implementation=impl or variant.split("_")[0], build_s=1.0)


@pytest.mark.parametrize("pdl_ms, picked", [(0.9, "0.900 ms (PDL)"), (1.1, "1.000 ms |")])
def test_reference_two_is_the_faster_compiled_timm_run(bench, pdl_ms, picked):
    rows = [_row("timm_graph", 1, 2.0), _row("timm_compile_graph", 1, 1.0), _row("timm_compile_graph_pdl", 1, pdl_ms),
            _row("ours_deploy", 1, 0.56)]
    line = bench._goal_line(rows, "b1", 1)[0]
    assert picked in line
    ratio = 0.56 / min(1.0, pdl_ms)  # 0.62x missed against PDL, 0.56x met without
    assert f"| {ratio:.2f}x |" in line and ("met" in line) == (ratio <= 0.6)


def test_a_timm_variant_compiles_under_its_inductor_settings(bench):
    from torch._inductor import config
    options = bench.VARIANTS["timm_compile_graph_pdl"][3]
    with bench.timm_inductor(options):
        assert config.triton.enable_pdl is True
    assert config.triton.enable_pdl is False
    with bench.timm_inductor(bench.VARIANTS["timm_compile_graph"][3]):
        assert config.triton.enable_pdl is False


def test_every_variant_of_ours_names_valid_deploy_options(bench):
    from lowspace.errors import ConfigError
    from lowspace.runtime import DeployOptions
    ours = {name: v for name, v in bench.VARIANTS.items() if v[0] == "ours"}
    assert "ours_deploy_im2col" in ours
    for name, (*_, options) in ours.items():
        try:  # a misspelt switch or value fails here, not on the GPU
            DeployOptions.from_dict(options)
        except ConfigError as err:
            pytest.fail(f"{name}: {err}")
