"""lowspace.runtime: the deployed module computes the eval-mode model's function (fp32, CPU), for every preset,
random generator configs and every rewrite switch; the blocks' reparameterize(); build cache, errors, ONNX export,
Triton kernel."""
import gc
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lowspace
from lowspace import ArchConfig, ConfigError, create_model
from lowspace.arch import PRESET_NAMES, LowFormer
from lowspace.arch.blocks import inference_rewrites
from lowspace.runtime import DeployedModel, DeployOptions, Runner, clear_cache, deploy, export_onnx, reparameterize
from lowspace.runtime._fold import conv_transpose_as_conv, conv_transpose_as_subpixel, fold_bn

from helpers import hopper_spills, randomize

TOL = 1e-4  # max |deployed - eval model| / max |eval model|, fp32


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def check_equal(model, resolution, batch=2, **options):
    d = deploy(model, precision="fp32", batch_size=batch, resolution=resolution, backend="eager", device="cpu",
               **options)
    x = torch.randn(batch, model.cfg.in_chans, resolution, resolution, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
    got = d(x)
    assert got.shape == want.shape and got.dtype == x.dtype
    err = rel_err(got, want)
    assert err <= TOL, (err, options)
    return d


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def presets_b3_slow():
    return [pytest.param(n, marks=pytest.mark.slow) if n == "b3" else n for n in PRESET_NAMES]


@pytest.mark.parametrize("name", presets_b3_slow())
def test_every_preset_deploys_exactly(name):
    model = randomize(create_model(name, init="torch"), seed=len(name))
    d = check_equal(model, 64)
    assert "fold_bn" in d.info["rewrites"] and d.info["check_error"] <= TOL
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.module.modules())
    assert type(d.module) is LowFormer and d.module.cfg == model.cfg  # the model's own classes, rewritten


def test_public_names():
    assert lowspace.deploy is lowspace.runtime.deploy and callable(lowspace.deploy)
    assert not callable(lowspace.runtime)  # a plain package, not a callable module
    with pytest.raises(ModuleNotFoundError):
        __import__("lowspace.deploy")
    with pytest.raises(ModuleNotFoundError):
        __import__("lowspace.backends")


def test_timm_reparameterize_model_walks_our_blocks():
    from timm.models import reparameterize_model
    model = randomize(create_model(SWITCH_CFG, init="torch"), seed=9)
    fused = reparameterize_model(model)  # a copy; every block's reparameterize() with the default options
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert all(m.stride != (1, 1) for m in fused.modules() if isinstance(m, nn.ConvTranspose2d))
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(2, 3, 45, 45)
    with torch.no_grad():
        want = model(x)
        assert rel_err(fused(x), want) <= TOL
        reparameterize(fused, DeployOptions(conv1x1="linear"))  # a second pass adds rewrites, never re-folds
        assert rel_err(fused(x), want) <= TOL
    assert inference_rewrites(fused) == ["fold_bn", "fuse_attention", "conv1x1_as_linear"]


def random_config(seed: int) -> ArchConfig:
    """A small random valid architecture exercising the generator's switches."""
    rng = random.Random(seed)
    while True:
        w = rng.choice([8, 12, 16])
        stages = [{"width": 2 * w, "depth": rng.choice([0, 1]), "block": rng.choice(["fused_mbconv", "mbconv"]),
                   "downsample": {"stride": 2, "expand_ratio": rng.choice([2, 4]), "kernel_size": rng.choice([3, 5])}}]
        for i in range(2):
            stages.append({
                "width": (4 + 4 * i) * w, "depth": rng.choice([1, 2]), "block": "lowformer",
                "expand_ratio": rng.choice([2, 4]), "kernel_size": rng.choice([3, 5]),
                "local": rng.choice(["auto", "fused_mbconv", "mbconv"]),
                "downsample": {"stride": rng.choice([1, 2]), "block": rng.choice(["fused_mbconv", "mbconv"])},
                "attention": {"placement": rng.choice(["all", "last:1", [0]]), "stride": rng.choice([1, 2, 4]),
                              "kernel_size": rng.choice([3, 5]), "heads": rng.choice(["auto", 1, 2]),
                              "upsample": rng.choice(["conv_transpose", "conv_transpose", "interpolate"]),
                              "norm": rng.choice(["groupnorm", "none"])},
                "mlp_ratio": rng.choice([0, 2, 4]),
            })
        data = {"stages": stages, "stem": {"width": w, "depth": rng.choice([0, 1])},
                "resolution": rng.choice([33, 40, 47, 64]), "num_classes": rng.choice([10, 0]),
                "act": rng.choice(["hardswish", "relu", "silu"]), "mlp_act": rng.choice(["gelu", "gelu_tanh"]),
                "head": {"widths": rng.choice([[32, 48], [40], []])}}
        try:
            return ArchConfig.from_dict(data)
        except ConfigError:
            continue


CONFIGS = [random_config(s) for s in range(10)]


def test_random_configs_cover_the_switches():
    atts = [st.attention for c in CONFIGS for st in c.stages if st.block == "lowformer"]
    assert {a.stride for a in atts} == {1, 2, 4}
    assert {a.upsample for a in atts} == {"conv_transpose", "interpolate"}
    assert {a.norm for a in atts} == {"groupnorm", "none"}
    assert 0 in {st.mlp_ratio for c in CONFIGS for st in c.stages if st.block == "lowformer"}
    assert any(c.resolution % 2 for c in CONFIGS)


@pytest.mark.parametrize("seed", range(len(CONFIGS)))
def test_random_configs_deploy_exactly(seed):
    cfg = CONFIGS[seed]
    model = randomize(create_model(cfg, init="torch"), seed=seed)
    check_equal(model, cfg.resolution)


# Every attention stride (1, 2, 4), MBConv and FusedMBConv locals, a two-layer head.
SWITCH_CFG = ArchConfig.from_dict({
    "resolution": 45, "num_classes": 7, "stem": {"width": 8, "depth": 1},
    "stages": [{"width": 16, "depth": 1, "block": "mbconv"},
               {"width": 32, "depth": 2, "block": "lowformer", "attention": {"stride": 2, "kernel_size": 5}},
               {"width": 48, "depth": 1, "block": "lowformer", "local": "mbconv", "attention": {"stride": 4}},
               {"width": 64, "depth": 1, "block": "lowformer", "attention": {"stride": 1}}],
    "head": {"widths": [64, 80]}})
SWITCHES = [dict(fold_bn=False), dict(fuse_attention=False), dict(upsample="subpixel"), dict(conv1x1="linear"),
            dict(groupnorm="decomposed"), dict(groupnorm="channels_last"), dict(sdpa="math"), dict(triton=True),
            dict(triton_stem=True), dict(triton_project=True), dict(triton_project=True, channels_last=False),
            dict(triton_attention=True), dict(triton_attention=True, triton=True, conv1x1="linear"),
            dict(triton_chain=True), dict(triton_chain=True, triton_project=True, triton=True),
            dict(upsample="subpixel", conv1x1="linear", groupnorm="decomposed", channels_last=False),
            dict(convkxk="im2col"), dict(convkxk="im2col", upsample="subpixel", channels_last=False)]


@pytest.mark.parametrize("options", SWITCHES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_rewrite_switch_is_exact(options):
    model = randomize(create_model(SWITCH_CFG, init="torch"), seed=3)
    options = dict(options)
    channels_last = options.pop("channels_last", True)
    d = deploy(model, precision="fp32", batch_size=2, resolution=45, backend="eager", device="cpu",
               channels_last=channels_last, **options)
    x = torch.randn(2, 3, 45, 45)
    with torch.no_grad():
        assert rel_err(d(x), model(x)) <= TOL
    expected = {"upsample": "subpixel_upsample", "conv1x1": "conv1x1_as_linear", "convkxk": "convkxk_as_im2col",
                "groupnorm": f"groupnorm_{options.get('groupnorm')}", "sdpa": "sdpa_math", "triton": "triton_depthwise",
                "triton_stem": "triton_stem", "triton_project": "triton_project", "fuse_attention": "fuse_attention",
                "triton_attention": "triton_attention", "triton_chain": "triton_chain"}
    for name, value in options.items():
        if name in expected:
            assert (expected[name] in d.info["rewrites"]) == (value not in (False, "conv_transpose")), name
    if options.get("fold_bn") is False:
        assert any(isinstance(m, nn.BatchNorm2d) for m in d.module.modules())


@pytest.mark.parametrize("kernel, stride, padding, size", [(3, 1, 1, (9, 7)), (3, 2, 1, (10, 11)), (5, 2, 2, (11, 11)),
                                                         (3, 2, 0, (8, 9)), (3, 1, 1, (1, 1))])
def test_kxk_conv_as_one_matmul_equals_the_conv(kernel, stride, padding, size):
    from lowspace.arch.blocks import ConvIm2colLinear
    conv = nn.Conv2d(5, 7, kernel, stride, padding, bias=True).double()
    as_matmul = ConvIm2colLinear(conv)
    for channels_last in (False, True):
        x = torch.randn(2, 5, *size, dtype=torch.float64)
        x = x.to(memory_format=torch.channels_last) if channels_last else x
        with torch.no_grad():
            torch.testing.assert_close(as_matmul(x), F.conv2d(x, conv.weight, conv.bias, stride, padding))
    assert not ConvIm2colLinear.applies(nn.Conv2d(4, 4, 3, groups=4))  # depthwise: not a dense conv
    assert not ConvIm2colLinear.applies(nn.Conv2d(4, 4, 1))  # 1x1: conv1x1's
    assert not ConvIm2colLinear.applies(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))


def test_fold_bn_matches_conv_then_bn():
    conv = nn.Conv2d(6, 10, 3, padding=1, bias=True)
    bn = randomize(nn.Sequential(nn.BatchNorm2d(10)))[0]
    w, b = fold_bn(conv.weight, conv.bias, bn)
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        assert rel_err(F.conv2d(x, w, b, padding=1), bn(conv(x))) <= 1e-5
    assert fold_bn(conv.weight, None, None) == (conv.weight, None)


@pytest.mark.parametrize("stride,size", [(1, 7), (2, 7), (2, 6), (4, 5)])
def test_transposed_conv_rewrites(stride, size):
    k, p = (3, 1) if stride == 1 else (2 * stride, stride // 2)
    up = nn.ConvTranspose2d(8, 5, k, stride, p)
    x = torch.randn(2, 8, size, size)
    with torch.no_grad():
        want = up(x)
        if stride == 1:
            w, pad = conv_transpose_as_conv(up.weight, p)
            got = F.conv2d(x, w, up.bias, padding=pad)
        else:
            w, b = conv_transpose_as_subpixel(up.weight, up.bias, stride, p)
            got = F.pixel_shuffle(F.conv2d(x, w, b, padding=1), stride)
    assert got.shape == want.shape and rel_err(got, want) <= 1e-5
    if stride > 1:
        with pytest.raises(ValueError, match="sub-pixel"):
            conv_transpose_as_subpixel(up.weight, up.bias, stride, p + 1)


def test_compile_backend_runner_and_info():
    model = randomize(create_model(CONFIGS[0], init="torch"))
    d = deploy(model, precision="fp32", batch_size=2, resolution=40, backend="compile", device="cpu",
               compile_backend="eager", compile_mode="default")
    assert isinstance(d, DeployedModel) and isinstance(d, nn.Module)
    assert d.info["backend"] == "compile" and d.info["precision"] == "fp32" and d.info["compile_mode"] == "default"
    assert d.build_s > 0 and d.info["cache"] == "miss"
    runner = d.runner()
    assert isinstance(runner, Runner) and runner.input.shape == (2, 3, 40, 40)
    with torch.no_grad():
        assert rel_err(runner(), model(runner.input)) <= TOL
        x = torch.randn(3, 3, 40, 40)  # another batch size: the eager module runs it
        assert rel_err(d(x), model(x)) <= TOL


def test_memory_cache_reuses_and_never_mixes_weights():
    cfg = CONFIGS[1]
    m1 = randomize(create_model(cfg, init="torch"), seed=1)
    m2 = randomize(create_model(cfg, init="torch"), seed=2)
    kw = dict(precision="fp32", batch_size=1, resolution=cfg.resolution, backend="eager", device="cpu")
    x = torch.randn(1, 3, cfg.resolution, cfg.resolution)
    d1 = deploy(m1, **kw)
    d1b = deploy(m1, **kw)
    assert d1b.info["cache"] == "memory" and d1b._core is d1._core
    d2 = deploy(m2, **kw)  # d1 is alive: its weights must not change
    assert d2._core is not d1._core and d2.info["cache"] == "miss"
    with torch.no_grad():
        assert rel_err(d1(x), m1(x)) <= TOL and rel_err(d2(x), m2(x)) <= TOL
    del d1, d1b
    gc.collect()
    d3 = deploy(m1, **kw)  # the cached core of m2 is free again only once d2 is gone
    assert d3.info["cache"] == "miss"
    del d2, d3
    gc.collect()
    d4 = deploy(m2, **kw)
    assert d4.info["cache"] == "memory (weights reloaded)"
    with torch.no_grad():
        assert rel_err(d4(x), m2(x)) <= TOL
    d5 = deploy(m2, cache=False, **kw)
    assert d5._core is not d4._core


def test_bad_arguments_raise_config_errors():
    model = create_model(CONFIGS[2])
    kw = dict(precision="fp32", resolution=40, device="cpu", backend="eager")
    with pytest.raises(ConfigError, match="fold_bnn.*fold_bn"):
        deploy(model, fold_bnn=True, **kw)
    with pytest.raises(ConfigError, match="deploy.upsample"):
        deploy(model, upsample="nearest", **kw)
    with pytest.raises(ConfigError, match="deploy.cudnn_benchmark: got 0; must be an integer between 1 and 1000"):
        deploy(model, cudnn_benchmark=0, **kw)
    with pytest.raises(ConfigError, match="deploy.triton: got 'yes'"):
        deploy(model, triton="yes", **kw)
    with pytest.raises(ConfigError, match="deploy.inductor.max_autotune: got nan"):
        deploy(model, inductor={"max_autotune": float("nan")}, **kw)
    with pytest.raises(ConfigError, match="deploy.compile_backend: got ' inductor'"):
        deploy(model, compile_backend=" inductor", **kw)
    with pytest.raises(ConfigError, match="batch_size"):
        deploy(model, batch_size=0, **kw)
    with pytest.raises(ConfigError, match="CUDA graphs need a CUDA device"):
        deploy(model, precision="fp32", resolution=40, device="cpu", backend="cuda_graph")
    with pytest.raises(ConfigError, match="precision"):
        deploy(model, precision="fp8", resolution=40, device="cpu", backend="eager")


def test_a_protocol_checks_its_deploy_options_when_built():
    from lowspace.cost.protocol import Protocol
    with pytest.raises(ConfigError, match="^deploy_options.sdpa: got 'fast'; allowed: auto, flash"):
        Protocol(deploy=True, deploy_options={"sdpa": "fast"})
    assert Protocol(deploy=True, deploy_options={"sdpa": "math"}).deploy_options == {"sdpa": "math"}


def test_auto_switches_are_decided_by_the_protocol():
    from lowspace.runtime._options import DeployOptions, resolve_options
    auto = DeployOptions()
    assert auto.groupnorm == "auto" and auto.triton == "auto"
    compiled = resolve_options(auto, 200, "cuda", "compile_cuda_graph")
    assert compiled.groupnorm == "channels_last"
    assert resolve_options(auto, 200, "cuda", "compile").groupnorm == "channels_last"
    assert resolve_options(auto, 200, "cuda", "cuda_graph").groupnorm == "channels_last"  # the cheap protocol
    assert resolve_options(auto, 200, "cuda", "eager").groupnorm == "native"
    assert resolve_options(auto, 1, "cpu", "compile").groupnorm == "native"
    assert resolve_options(auto, 1, "cpu", "eager").triton is False
    chosen = DeployOptions.from_dict(dict(groupnorm="decomposed"))
    assert resolve_options(chosen, 200, "cuda", "compile_cuda_graph").groupnorm == "decomposed"  # given: kept


def test_an_unresolved_auto_groupnorm_computes_the_plain_way():
    from lowspace.arch.blocks import GroupNorm1
    norm = GroupNorm1(8)
    norm.reparameterize()
    assert norm.mode == "native"


def test_other_modules_get_cast_and_captured_without_rewrites():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4))
    randomize(net)
    d = deploy(net, precision="fp32", batch_size=2, resolution=16, backend="eager", device="cpu")
    x = torch.randn(2, 3, 16, 16)
    assert d.info["rewrites"] == [] and rel_err(d(x), net(x)) <= TOL


def test_deploy_accepts_a_preset_name():
    d = deploy("b0", precision="fp32", batch_size=1, resolution=32, backend="eager", device="cpu", check=False)
    assert d.info["resolution"] == 32 and d.info["check_error"] is None


def test_onnx_export_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    cfg = CONFIGS[3]
    model = randomize(create_model(cfg, init="torch"), seed=4)
    d = deploy(model, precision="fp32", batch_size=1, resolution=cfg.resolution, backend="eager", device="cpu",
               upsample="subpixel")
    path = export_onnx(d, tmp_path / "m.onnx")  # checks onnxruntime vs torch itself, raises if off
    assert onnx.load(str(path)).opset_import[0].version >= 17
    import onnxruntime as ort
    x = torch.randn(3, 3, cfg.resolution, cfg.resolution)  # dynamic batch
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert rel_err(torch.from_numpy(got), model(x)) <= 1e-4
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(d, tmp_path / "old.onnx", opset=13)


TRITON_SCRIPT = r"""
import torch, torch.nn.functional as F
from lowspace.runtime._triton import _launch, _launch_stem
from lowspace.arch.blocks import make_act
g = torch.Generator().manual_seed(0)
for n, c, h, k, s, act, fmt in [(2, 24, 9, 3, 1, "hardswish", 1), (1, 40, 13, 5, 2, None, 1),
                                (2, 8, 7, 3, 4, "gelu", 0), (1, 70, 6, 7, 1, "silu", 1)]:
    x = torch.randn(n, c, h, h, generator=g)
    x = x.contiguous(memory_format=torch.channels_last) if fmt else x
    w, b = torch.randn(c, 1, k, k, generator=g), torch.randn(c, generator=g)
    y = _launch(x, w, b, s, k // 2, act)
    ref = make_act(act)(F.conv2d(x, w, b, s, k // 2, 1, c))
    assert y.shape == ref.shape and (y - ref).abs().max() < 1e-4, (n, c, h, k, s, act)
for n, cin, c, h, k, s, act, fmt in [(2, 3, 16, 11, 3, 2, "hardswish", 1), (1, 1, 24, 9, 3, 1, None, 1),
                                     (2, 4, 70, 8, 5, 2, "relu", 0), (1, 3, 8, 7, 7, 4, "gelu", 1)]:
    x = torch.randn(n, cin, h, h, generator=g)
    x = x.contiguous(memory_format=torch.channels_last) if fmt else x
    w, b = torch.randn(c, cin, k, k, generator=g), torch.randn(c, generator=g)
    y = _launch_stem(x, w, b, s, k // 2, act)
    ref = make_act(act)(F.conv2d(x, w, b, s, k // 2))
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert (y - ref).abs().max() < 1e-4, (n, cin, c, h, k, s, act)
y = _launch_stem(x, w, None, 1, 0, None)
assert (y - F.conv2d(x, w, None, 1, 0)).abs().max() < 1e-4
print("ok")
"""


PROJECT_SCRIPT = r"""
import torch, torch.nn.functional as F
from lowspace.runtime._triton import _launch_project
from lowspace.arch.blocks import make_act
g = torch.Generator().manual_seed(0)
for n, k, c, hh, ww, act, pre, bias, res, fmt in [(2, 40, 24, 5, 7, "hardswish", True, True, True, 1),
                                                  (1, 16, 16, 4, 4, None, False, False, False, 0),
                                                  (3, 70, 130, 3, 11, "gelu", True, False, True, 1),
                                                  (1, 8, 5, 2, 3, "silu", True, True, False, 1)]:
    h = torch.randn(n, k, hh, ww, generator=g)
    h = h.contiguous(memory_format=torch.channels_last) if fmt else h
    w_t = torch.randn(k, c, generator=g)
    pb = torch.randn(k, generator=g) if pre else None
    b = torch.randn(c, generator=g) if bias else None
    r = torch.randn(n, c, hh, ww, generator=g) if res else None
    y = _launch_project(h, pb, w_t, b, r, act)
    a = h if pb is None else h + pb.view(1, -1, 1, 1)
    want = F.conv2d(make_act(act)(a), w_t.t().reshape(c, k, 1, 1), b)
    want = want if r is None else want + r
    assert y.shape == want.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert (y - want).abs().max() < 1e-3, (n, k, c, act)
from lowspace.runtime._triton import _launch_dw_qkv
for n, c, out, hh, ww, k, s, bias, fmt in [(2, 24, 40, 9, 11, 3, 2, True, 1), (1, 70, 130, 7, 7, 5, 1, False, 1),
                                           (3, 16, 48, 12, 10, 3, 4, True, 0)]:
    x = torch.randn(n, c, hh, ww, generator=g)
    x = x.contiguous(memory_format=torch.channels_last) if fmt else x
    dw, w_t = torch.randn(c, 1, k, k, generator=g), torch.randn(c, out, generator=g)
    b = torch.randn(out, generator=g) if bias else None
    y = _launch_dw_qkv(x, dw, s, k // 2, w_t, b)
    want = F.conv2d(F.conv2d(x, dw, None, s, k // 2, 1, c), w_t.t().reshape(out, c, 1, 1), b)
    assert y.shape == want.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert (y - want).abs().max() < 1e-3 * want.abs().max(), (n, c, out, k, s)
from lowspace.runtime._triton import _launch_fused_mbconv, fused_mbconv_rows
# residual, stride 2, 1x1 and 5x5 convs, NCHW input, an output wider than one column block (300 > 256)
for n, cin, hid, out, hh, ww, k, s, act, b1, b2, res, fmt in [
        (2, 24, 40, 24, 9, 11, 3, 1, "hardswish", True, True, True, 1),
        (1, 70, 130, 20, 7, 7, 3, 2, "gelu", True, False, False, 1),
        (3, 16, 96, 300, 6, 5, 1, 1, None, False, True, False, 0),
        (1, 8, 16, 8, 4, 4, 5, 2, "relu", False, False, False, 1)]:
    x = torch.randn(n, cin, hh, ww, generator=g)
    x = x.contiguous(memory_format=torch.channels_last) if fmt else x
    w1 = torch.randn(hid, cin, k, k, generator=g) / (cin * k * k) ** 0.5
    bb1 = torch.randn(hid, generator=g) if b1 else None
    w2_t = torch.randn(hid, out, generator=g) / hid ** 0.5
    bb2 = torch.randn(out, generator=g) if b2 else None
    want = F.conv2d(make_act(act)(F.conv2d(x, w1, bb1, s, k // 2)), w2_t.t().reshape(out, hid, 1, 1), bb2)
    r = torch.randn_like(want) if res else None
    want = want if r is None else want + r
    y = _launch_fused_mbconv(x, fused_mbconv_rows(w1), bb1, k, s, k // 2, act, w2_t, bb2, r)
    assert y.shape == want.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert (y - want).abs().max() < 1e-3 * want.abs().max(), (n, cin, hid, out, k, s)
from lowspace.runtime._triton import _launch_mbconv
# maps up to 8 x 8 and 1 x 1, stride 2, a 5x5 depthwise conv, NCHW input, 300 outputs (two column blocks)
for n, cin, hid, out, hh, ww, k, s, a1, a2, b1, bd, b2, res, fmt in [
        (2, 24, 40, 24, 7, 7, 3, 1, "hardswish", "hardswish", True, True, True, True, 1),
        (1, 70, 130, 300, 8, 8, 5, 2, "gelu", "relu", True, False, False, False, 1),
        (3, 16, 96, 20, 5, 6, 3, 1, None, "silu", False, True, True, False, 0),
        (1, 8, 16, 8, 1, 1, 3, 1, "relu", None, False, False, False, True, 1)]:
    x = torch.randn(n, cin, hh, ww, generator=g)
    x = x.contiguous(memory_format=torch.channels_last) if fmt else x
    w1 = torch.randn(hid, cin, generator=g) / cin ** 0.5
    bb1 = torch.randn(hid, generator=g) if b1 else None
    wd = torch.randn(hid, 1, k, k, generator=g) / k
    bbd = torch.randn(hid, generator=g) if bd else None
    w2 = torch.randn(out, hid, generator=g) / hid ** 0.5
    bb2 = torch.randn(out, generator=g) if b2 else None
    h = make_act(a2)(F.conv2d(make_act(a1)(F.conv2d(x, w1[:, :, None, None], bb1)), wd, bbd, s, k // 2, 1, hid))
    want = F.conv2d(h, w2[:, :, None, None], bb2)
    r = torch.randn_like(want) if res else None
    want = want if r is None else want + r
    y = _launch_mbconv(x, w1.t(), bb1, a1, wd.reshape(hid, k * k).t(), bbd, k, s, k // 2, a2, w2.t(), bb2, r)
    assert y.shape == want.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert (y - want).abs().max() < 1e-3 * want.abs().max(), (n, cin, hid, out, k, s)
print("ok")
"""


def test_triton_project_op_falls_back_and_traces_on_cpu():
    from lowspace.runtime._triton import project_conv
    h = torch.randn(2, 12, 5, 7).contiguous(memory_format=torch.channels_last)
    pre, w_t, b, r = torch.randn(12), torch.randn(12, 9), torch.randn(9), torch.randn(2, 9, 5, 7)
    want = F.conv2d(F.hardswish(h + pre.view(1, -1, 1, 1)), w_t.t().reshape(9, 12, 1, 1), b) + r
    assert rel_err(project_conv(h, pre, w_t, b, r, "hardswish"), want) <= 1e-6
    f = torch.compile(lambda t: project_conv(t, None, w_t, None, None, None), backend="eager", fullgraph=True)
    assert rel_err(f(h), F.conv2d(h, w_t.t().reshape(9, 12, 1, 1))) <= 1e-6
    with pytest.raises(ValueError, match="gelu_tanh"):
        project_conv(h, pre, w_t, b, r, "gelu_tanh")


def test_triton_dw_qkv_op_falls_back_traces_and_replaces_each_attentions_projection_on_cpu():
    from lowspace.arch.blocks import LowFormerAttention, TritonDwQkv
    from lowspace.runtime._triton import dw_qkv
    x = torch.randn(2, 12, 9, 11).contiguous(memory_format=torch.channels_last)
    dw, w_t, b = torch.randn(12, 1, 5, 5), torch.randn(12, 18), torch.randn(18)
    want = F.conv2d(F.conv2d(x, dw, None, 2, 2, 1, 12), w_t.t().reshape(18, 12, 1, 1), b)
    got = dw_qkv(x, dw, 2, 2, w_t, b)
    assert got.is_contiguous(memory_format=torch.channels_last) and rel_err(got, want) <= 1e-6
    f = torch.compile(lambda t: dw_qkv(t, dw, 2, 2, w_t, None), backend="eager", fullgraph=True)
    assert rel_err(f(x), want - b.view(1, -1, 1, 1)) <= 1e-6
    model = randomize(create_model(SWITCH_CFG, init="torch"), seed=3)
    d = deploy(model, precision="fp32", batch_size=2, resolution=45, backend="eager", device="cpu",
               triton_attention=True)
    attns = [m for m in d.module.modules() if isinstance(m, LowFormerAttention)]
    assert attns and all(isinstance(a.qkv, TritonDwQkv) and isinstance(a.proj, nn.Identity) for a in attns)
    reparameterize(d.module, DeployOptions(triton_attention=True))  # a second pass leaves the fused form alone
    assert all(isinstance(a.qkv, TritonDwQkv) for a in attns)
    # without fuse_attention (which moves the projection's bias into the QKV conv) nothing is fused
    d = deploy(model, precision="fp32", batch_size=2, resolution=45, backend="eager", device="cpu",
               triton_attention=True, fuse_attention=False)
    assert "triton_attention" not in d.info["rewrites"]


def test_fused_mbconv_op_falls_back_traces_and_replaces_each_plain_fused_mbconv_on_cpu():
    from lowspace.arch.blocks import FusedMBConv, TritonFusedMBConv
    from lowspace.runtime._triton import fused_mbconv, fused_mbconv_rows
    x = torch.randn(2, 12, 9, 11).contiguous(memory_format=torch.channels_last)
    w1, b1, w2_t, b2 = torch.randn(20, 12, 3, 3), torch.randn(20), torch.randn(20, 12), torch.randn(12)
    want = F.conv2d(F.hardswish(F.conv2d(x, w1, b1, 1, 1)), w2_t.t().reshape(12, 20, 1, 1), b2) + x
    got = fused_mbconv(x, fused_mbconv_rows(w1), b1, 3, 1, 1, "hardswish", w2_t, b2, x)
    assert got.is_contiguous(memory_format=torch.channels_last) and rel_err(got, want) <= 1e-6
    f = torch.compile(lambda t: fused_mbconv(t, fused_mbconv_rows(w1), None, 3, 2, 1, None, w2_t, None),
                      backend="eager", fullgraph=True)
    assert rel_err(f(x), F.conv2d(F.conv2d(x, w1, None, 2, 1), w2_t.t().reshape(12, 20, 1, 1))) <= 1e-6
    with pytest.raises(ValueError, match="gelu_tanh"):
        fused_mbconv(x, fused_mbconv_rows(w1), b1, 3, 1, 1, "gelu_tanh", w2_t, b2)
    model = randomize(create_model("b3", init="torch"), seed=2)  # residual fused MBConvs in stem and stages 1-2
    blocks = [m for m in model.modules() if isinstance(m, FusedMBConv)]
    d = deploy(model, precision="fp32", batch_size=2, resolution=64, backend="eager", device="cpu",
               triton_chain=True)
    fused = [m for m in d.module.modules() if isinstance(m, FusedMBConv)]
    assert len(fused) == len(blocks) and all(isinstance(m.chain, TritonFusedMBConv) for m in fused)
    assert any(m.chain.residual for m in fused)
    # a second pass, with any switches, leaves the fused forms alone
    d = deploy(model, precision="fp32", batch_size=2, resolution=64, backend="eager", device="cpu",
               triton_chain=True, triton_project=True)
    chains = [m.chain for m in d.module.modules() if isinstance(m, FusedMBConv)]
    reparameterize(d.module, DeployOptions(triton_chain=True, triton_project=True))
    assert [m.chain for m in d.module.modules() if isinstance(m, FusedMBConv)] == chains
    # the kernel is made from the folded convs, whatever the other switches make of them; without folding,
    # nothing is fused
    d = deploy(model, precision="fp32", batch_size=2, resolution=64, backend="eager", device="cpu",
               triton_chain=True, conv1x1="linear", triton=True)
    assert {"triton_chain", "conv1x1_as_linear"} <= set(d.info["rewrites"])
    d = deploy(model, precision="fp32", batch_size=2, resolution=64, backend="eager", device="cpu",
               triton_chain=True, fold_bn=False)
    assert "triton_chain" not in d.info["rewrites"]


def test_mbconv_op_falls_back_traces_and_replaces_each_plain_mbconv_on_cpu():
    from lowspace.arch.blocks import MBConv, TritonMBConv
    from lowspace.runtime._triton import MBCONV_MAX_POSITIONS, mbconv
    x = torch.randn(2, 12, 7, 7).contiguous(memory_format=torch.channels_last)
    w1_t, b1, dw, bd = torch.randn(12, 30), torch.randn(30), torch.randn(30, 1, 3, 3), torch.randn(30)
    w2_t, b2 = torch.randn(30, 12), torch.randn(12)
    h = F.hardswish(F.conv2d(x, w1_t.t()[:, :, None, None], b1))
    want = F.conv2d(F.gelu(F.conv2d(h, dw, bd, 1, 1, 1, 30)), w2_t.t()[:, :, None, None], b2) + x
    got = mbconv(x, w1_t, b1, "hardswish", dw.flatten(1).t(), bd, 3, 1, 1, "gelu", w2_t, b2, x)
    assert got.is_contiguous(memory_format=torch.channels_last) and rel_err(got, want) <= 1e-6
    f = torch.compile(lambda t: mbconv(t, w1_t, None, None, dw.flatten(1).t(), None, 3, 2, 1, None, w2_t, None),
                      backend="eager", fullgraph=True)
    expanded = F.conv2d(x, w1_t.t()[:, :, None, None])
    want = F.conv2d(F.conv2d(expanded, dw, None, 2, 1, 1, 30), w2_t.t()[:, :, None, None])
    assert rel_err(f(x), want) <= 1e-6
    with pytest.raises(ValueError, match="gelu_tanh"):
        mbconv(x, w1_t, b1, "gelu_tanh", dw.flatten(1).t(), bd, 3, 1, 1, None, w2_t, b2)
    model = randomize(create_model(SWITCH_CFG, init="torch"), seed=3)  # MBConv stage and MBConv locals
    d = deploy(model, precision="fp32", batch_size=2, resolution=45, backend="eager", device="cpu",
               triton_chain=True)
    blocks = [m for m in d.module.modules() if isinstance(m, MBConv)]
    assert blocks and all(isinstance(m.chain, TritonMBConv) for m in blocks)
    x = torch.randn(2, 3, 45, 45)
    with torch.no_grad():
        assert rel_err(d(x), model(x)) <= TOL
    # on CUDA the kernel takes maps up to its size and the block's own layers run larger ones; elsewhere any
    from types import SimpleNamespace
    on_cuda = [SimpleNamespace(is_cuda=True, shape=(1, 1) + hw) for hw in ((8, 8), (9, 8), (7, 7))]
    assert [TritonMBConv.takes(t) for t in on_cuda] == [True, False, True] and MBCONV_MAX_POSITIONS == 64
    assert TritonMBConv.takes(torch.empty(1, 1, 99, 99))


def test_triton_project_takes_over_each_block_whose_previous_conv_is_plain():
    from lowspace.arch.blocks import FusedMBConv, MBConv, TritonConvAct, TritonProject
    model = randomize(create_model(SWITCH_CFG, init="torch"), seed=3)
    blocks = [m for m in model.modules() if isinstance(m, (FusedMBConv, MBConv))]
    assert {type(b) for b in blocks} == {FusedMBConv, MBConv}
    d = deploy(model, precision="fp32", batch_size=2, resolution=45, backend="eager", device="cpu",
               triton_project=True)
    fused = [m for m in d.module.modules() if isinstance(m, (FusedMBConv, MBConv))]
    assert all(isinstance(getattr(m, m.layers[-1]), TritonProject) for m in fused)
    assert all(getattr(m, m.layers[-2]).conv.bias is None for m in fused)  # the bias moved into the kernel
    assert all(getattr(m, m.layers[-1]).act == "hardswish" for m in fused)  # the activation moved too
    assert all(m.conv2.pre_bias is not None for m in fused if isinstance(m, FusedMBConv))  # the folded BN's bias
    # with the Triton depthwise kernel (its own bias and activation), an MBConv's project kernel takes only
    # the project conv and the residual
    d = deploy(model, precision="fp32", batch_size=2, resolution=45, backend="eager", device="cpu",
               triton_project=True, triton=True)
    x = torch.randn(2, 3, 45, 45)
    with torch.no_grad():
        assert rel_err(d(x), model(x)) <= TOL
    for m in d.module.modules():
        if isinstance(m, MBConv):
            assert isinstance(m.dw.conv, TritonConvAct) and m.project.pre_bias is None and m.project.act is None
        elif isinstance(m, FusedMBConv):
            assert m.conv2.pre_bias is not None and m.conv2.act == "hardswish"
    # tiles measured per shape: the same rewrite, each kernel marked to tune (on CPU the PyTorch ops run)
    d = deploy(model, precision="fp32", batch_size=2, resolution=45, backend="eager", device="cpu",
               triton_project="autotune")
    assert all(m.tune for m in d.module.modules() if isinstance(m, TritonProject))
    with torch.no_grad():
        assert rel_err(d(x), model(x)) <= TOL
    # 1x1 convs as matmuls (conv1x1="linear") are left as they are
    d = deploy(model, precision="fp32", batch_size=2, resolution=45, backend="eager", device="cpu",
               triton_project=True, conv1x1="linear")
    assert "triton_project" not in d.info["rewrites"]


def test_project_tiles_fill_the_gpu_and_tuning_measures_neighbours_of_the_rule():
    pytest.importorskip("triton")
    from lowspace.runtime._triton import _FILL_PROGRAMS, _gemm_tiles, _prune_tiles, _tile_candidates, \
        _tuned_project_kernel
    for m, n, k in [(200 * 3136, 40, 240), (200 * 196, 160, 640), (49, 512, 3072), (196, 128, 512), (7, 8, 4)]:
        bm, bn, bk = _gemm_tiles(m, n, k)
        programs = -(-m // bm) * -(-n // bn)
        assert (bm, bn) == (16, 16) or programs >= _FILL_PROGRAMS, (m, n, k)  # shrunk only as far as needed
        assert 16 <= bk <= 64
        tiles = _tile_candidates(m, n, k)
        assert tiles[0] == (bm, bn, bk) and len(set(tiles)) == len(tiles)
        assert all(16 <= r <= 128 and 16 <= c <= max(16, min(128, 2 ** (n - 1).bit_length())) for r, c, _ in tiles)
    assert _gemm_tiles(49, 512, 3072)[:2] == (16, 16)  # batch 1: 4 x 32 programs rather than 4 x 4
    # B1.5's 320 columns at batch 200: the rule's tile and three neighbours, as configs of the autotuner
    configs = _prune_tiles(_tuned_project_kernel().configs, dict(M=9800, N=320, K=1920))
    assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in configs] == [(64, 128), (64, 64), (32, 128),
                                                                             (128, 128)]
    assert [c.num_warps for c in configs] == [4, 4, 4, 8]


@pytest.mark.slow
@pytest.mark.parametrize("script", [TRITON_SCRIPT, PROJECT_SCRIPT], ids=["depthwise_and_stem", "gemms"])
def test_triton_kernels_in_interpreter(script):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_triton_op_falls_back_and_traces_on_cpu():
    from lowspace.runtime._triton import depthwise_conv
    x = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(8, 1, 3, 3), torch.randn(8)
    want = F.hardswish(F.conv2d(x, w, b, 2, 1, 1, 8))
    assert rel_err(depthwise_conv(x, w, b, 2, 1, "hardswish"), want) <= 1e-6
    f = torch.compile(lambda t: depthwise_conv(t, w, b, 2, 1, "gelu"), backend="eager", fullgraph=True)
    assert rel_err(f(x), F.gelu(F.conv2d(x, w, b, 2, 1, 1, 8))) <= 1e-6
    with pytest.raises(ValueError, match="gelu_tanh"):
        depthwise_conv(x, w, b, 2, 1, "gelu_tanh")


def test_triton_stem_op_falls_back_traces_and_refuses_wide_inputs_on_cpu():
    from lowspace.runtime._triton import stem_conv
    x = torch.randn(2, 3, 11, 11).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(16, 3, 3, 3), torch.randn(16)
    want = F.hardswish(F.conv2d(x, w, b, 2, 1))
    assert rel_err(stem_conv(x, w, b, 2, 1, "hardswish"), want) <= 1e-6
    f = torch.compile(lambda t: stem_conv(t, w, None, 2, 1, None), backend="eager", fullgraph=True)
    assert rel_err(f(x), F.conv2d(x, w, None, 2, 1)) <= 1e-6
    with pytest.raises(ValueError, match="at most 4 input channels; got 8"):
        stem_conv(torch.randn(1, 8, 5, 5), torch.randn(4, 8, 3, 3), None, 1, 1, None)


def test_triton_stem_rewrites_only_the_first_conv_of_a_preset():
    d = deploy(randomize(create_model("b0", init="torch"), seed=1), precision="fp32", batch_size=1,
               resolution=64, backend="eager", device="cpu", triton_stem=True)
    from lowspace.arch.blocks import TritonConvAct
    rewritten = [m for m in d.module.modules() if isinstance(m, TritonConvAct)]
    assert [m.kind for m in rewritten] == ["stem"] and rewritten[0].weight.shape[1] == 3
    assert "triton_stem" in d.info["rewrites"] and "triton_depthwise" not in d.info["rewrites"]


# ------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda_graph", "compile_cuda_graph"])
def test_gpu_fp16_deploy_matches_fp32_model(backend):
    model = randomize(create_model("b0", init="torch")).cuda()
    d = deploy(model, precision="fp16", batch_size=4, resolution=96, backend=backend)
    x = torch.randn(4, 3, 96, 96, device="cuda")
    with torch.no_grad():
        want = model(x)
    got = d(x)
    assert got.dtype == torch.float32 and rel_err(got, want) <= 3e-2
    r = d.runner()
    r.input.copy_(x.half())
    assert rel_err(r().float(), want) <= 3e-2
    with torch.no_grad():  # another shape: eager path
        assert rel_err(d(x[:2]), want[:2]) <= 3e-2
    assert deploy(model, precision="fp16", batch_size=4, resolution=96, backend=backend).build_s < 1.0


@pytest.mark.gpu
def test_gpu_triton_and_the_other_switches_keep_the_function():
    model = randomize(create_model("b0", init="torch")).cuda()
    x = torch.randn(2, 3, 96, 96, device="cuda")
    with torch.no_grad():
        want = model(x)
    d = deploy(model, precision="fp16", batch_size=2, resolution=96, backend="cuda_graph", triton=True,
               triton_stem=True, upsample="subpixel", conv1x1="linear", groupnorm="decomposed")
    assert {"triton_depthwise", "triton_stem", "subpixel_upsample", "conv1x1_as_linear"} <= set(d.info["rewrites"])
    assert rel_err(d(x), want) <= 3e-2


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda_graph", "compile_cuda_graph"])
@pytest.mark.parametrize("switch", [dict(triton_project=True), dict(triton_project="autotune"),
                                    dict(triton_attention=True), dict(triton_chain=True)],
                         ids=["project", "project_tuned", "attention", "chain"])
def test_gpu_triton_gemm_kernels_keep_the_function(backend, switch):
    model = randomize(create_model("b15", init="torch")).cuda()  # widths 40-320: not powers of two
    x = torch.randn(4, 3, 96, 96, device="cuda")
    with torch.no_grad():
        want = model(x)
    d = deploy(model, precision="fp16", batch_size=4, resolution=96, backend=backend, **switch)
    assert next(iter(switch)) in d.info["rewrites"]
    assert rel_err(d(x).float(), want) <= 3e-2
    f32 = deploy(model, precision="fp32", batch_size=4, resolution=96, backend="eager", **switch)
    assert rel_err(f32(x), want) <= 2e-2  # the model's own fp32 convs may run in TF32


@pytest.mark.gpu
def test_gpu_fp32_deploy_with_a_single_attention_token():
    model = randomize(create_model(SWITCH_CFG, init="torch"), seed=5).cuda()  # stage 3 attends over 1 token
    x = torch.randn(2, 3, 45, 45, device="cuda")
    with torch.no_grad():
        want = model(x)
    d = deploy(model, precision="fp32", batch_size=2, resolution=45, backend="cuda_graph")
    assert rel_err(d(x), want) <= 2e-2  # fp32 convs and matmuls may run in TF32


def test_graph_replay_check_accepts_the_same_overflow_and_rejects_a_different_one():
    from lowspace.runtime._backends import replay_error
    ref = torch.tensor([1.0, 2.0, float("nan"), float("inf"), -float("inf")])
    err, nonfinite = replay_error(ref.clone() * torch.tensor([1.0, 1.01, 1, 1, 1]), ref)
    assert err == pytest.approx(0.01) and nonfinite == pytest.approx(0.6)
    assert replay_error(torch.tensor([1.0, 2.0, 0.0, float("inf"), -float("inf")]), ref)[0] == float("inf")
    assert replay_error(torch.tensor([1.0, 2.0, float("nan"), -float("inf"), -float("inf")]), ref)[0] == float("inf")
    all_nan = torch.full((3,), float("nan"))
    assert replay_error(all_nan.clone(), all_nan) == (0.0, 1.0)
    assert replay_error(torch.zeros(3), torch.zeros(3)) == (0.0, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(200 * 49, 768, 256), (49, 384, 128), (200 * 196, 384, 128)],
                         ids=["b200_stage4", "b1_stage3", "b200_stage3"])
def test_the_dw_qkv_kernel_compiles_for_hopper_without_spilling_at_its_tiles(shape):
    pytest.importorskip("triton")
    from lowspace.runtime import _triton as tk
    block_m, block_n, block_k = tk._dw_qkv_tiles(*shape)
    ints = ("M", "N", "C", "H", "W", "HO", "WO", "sxn", "sxc", "sxh", "sxw", "sdc", "sdy", "sdx")
    signature = {**{p: "*fp16" for p in ("x_ptr", "dw_ptr", "w_ptr", "b_ptr", "y_ptr")}, **dict.fromkeys(ints, "i32"),
                 **dict.fromkeys(("STRIDE", "PAD", "KS", "HAS_BIAS", "IEEE", "BLOCK_M", "BLOCK_N", "BLOCK_K"),
                                 "constexpr")}
    constexprs = dict(STRIDE=2, PAD=2, KS=5, HAS_BIAS=True, IEEE=False, BLOCK_M=block_m, BLOCK_N=block_n,
                      BLOCK_K=block_k)
    assert hopper_spills(tk._dw_qkv_kernel, signature, constexprs, tk._dw_qkv_warps(block_m, block_n)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(200 * 196, 128, 128), (200 * 49, 128, 256), (196, 128, 128), (49, 256, 512),
                                   (200 * 12544, 32, 32), (200 * 196, 160, 160)],
                         ids=["b200_stage3", "b200_down4", "b1_stage3", "b1_down4_b3", "b200_stem_b3", "b200_b15"])
def test_the_fused_mbconv_kernel_compiles_for_hopper_without_spilling_at_its_tiles(shape):
    pytest.importorskip("triton")
    from lowspace.runtime import _triton as tk
    block_m, block_h, block_n, block_k = tk._fused_mbconv_tiles(*shape)
    ints = ("M", "CIN", "HID", "COUT", "H", "W", "HO", "WO", "CINP", "sxn", "sxc", "sxh", "sxw")
    flags = ("STRIDE", "PAD", "KS", "ACT", "HAS_B1", "HAS_B2", "HAS_RES", "IEEE", "BLOCK_M", "BLOCK_H", "BLOCK_N",
             "BLOCK_K")
    signature = {**{p: "*fp16" for p in ("x_ptr", "w1_ptr", "b1_ptr", "w2_ptr", "b2_ptr", "r_ptr", "y_ptr")},
                 **dict.fromkeys(ints, "i32"), **dict.fromkeys(flags, "constexpr")}
    for act in (1, 5):  # hardswish, exact gelu
        constexprs = dict(STRIDE=2, PAD=1, KS=3, ACT=act, HAS_B1=True, HAS_B2=True, HAS_RES=True, IEEE=False,
                          BLOCK_M=block_m, BLOCK_H=block_h, BLOCK_N=block_n, BLOCK_K=block_k)
        assert hopper_spills(tk._fused_mbconv_kernel, signature, constexprs, warps=8) == 0


@pytest.mark.slow
@pytest.mark.parametrize("channels", [(256, 256), (320, 320), (512, 512), (64, 128)], ids=["b1", "b15", "b3", "narrow"])
def test_the_mbconv_kernel_compiles_for_hopper_without_spilling_at_its_tiles(channels):
    pytest.importorskip("triton")
    from lowspace.runtime import _triton as tk
    block_p, block_h, block_n, block_k = tk._mbconv_tiles(*channels)
    ints = ("CIN", "HID", "COUT", "H", "W", "HO", "WO", "sxn", "sxc", "sxh", "sxw")
    ptrs = ("x_ptr", "w1_ptr", "b1_ptr", "wd_ptr", "bd_ptr", "w2_ptr", "b2_ptr", "r_ptr", "y_ptr")
    flags = ("STRIDE", "PAD", "KS", "ACT1", "ACT2", "HAS_B1", "HAS_BD", "HAS_B2", "HAS_RES", "IEEE", "BLOCK_P",
             "BLOCK_H", "BLOCK_N", "BLOCK_K")
    signature = {**{p: "*fp16" for p in ptrs}, **dict.fromkeys(ints, "i32"), **dict.fromkeys(flags, "constexpr")}
    for act in (1, 5):  # hardswish, exact gelu
        constexprs = dict(STRIDE=1, PAD=1, KS=3, ACT1=act, ACT2=act, HAS_B1=True, HAS_BD=True, HAS_B2=True,
                          HAS_RES=True, IEEE=False, BLOCK_P=block_p, BLOCK_H=block_h, BLOCK_N=block_n,
                          BLOCK_K=block_k)
        assert hopper_spills(tk._mbconv_kernel, signature, constexprs, warps=8, stages=2) == 0
