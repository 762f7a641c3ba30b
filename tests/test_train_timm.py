"""Training timm models with lowspace's engine (``lowspace train --timm NAME``, ``fit(TimmModel...)``): the model is
built for the data's channels and classes, seeded by the recipe, checkpointed and resumed like a config."""
import json

import pytest
import torch

from lowspace.cli import main
from lowspace.data import make_synthetic
from lowspace.errors import ConfigError
from lowspace.train import TimmModel, fit, model_source, proxy_recipe
from lowspace.train.checkpoint import ResumeError, load_weights
from lowspace.train.engine import train_sizes
from lowspace.train.models import build_timm

TINY_TIMM = "test_resnet"  # timm's own tiny test network
FAST = dict(resolutions=(16,), eval_resolution=16, batch_size=16, bn_reestimate_images=16, eval_batch_size=32,
            warmup_epochs=0.5, workers=0)


def _data(channels=1, classes=3):
    return make_synthetic(num_classes=classes, train_size=96, val_size=24, image_size=16, channels=channels)


def test_fit_builds_the_timm_model_for_the_data(tmp_path):
    out = tmp_path / "run"
    result = fit(TimmModel.named(TINY_TIMM), _data(channels=1, classes=3), proxy_recipe(dict(epochs=1, **FAST)), out,
                 device="cpu", progress=False)
    weights = load_weights(out / "best.safetensors")
    first_conv = next(v for k, v in weights.items() if v.ndim == 4)
    classifier = [v for k, v in weights.items() if k.endswith("weight") and v.ndim == 2][-1]
    assert first_conv.shape[1] == 1 and classifier.shape[0] == 3  # in_chans and num_classes from the data
    assert result.info["timm"] == TINY_TIMM and result.info["arch_id"] is None
    assert json.loads((out / "timm.json").read_text()) == {"timm": TINY_TIMM}
    assert result.top1 is not None and result.history[-1]["epoch"] == 1


def test_weights_come_from_the_recipe_seed():
    spec = TimmModel.named(TINY_TIMM)
    a, b, c = (build_timm(spec, 10, 1, 0.0, seed).state_dict() for seed in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_interrupted_timm_run_resumes_to_the_uninterrupted_weights(tmp_path):
    recipe, data = proxy_recipe(dict(epochs=2, **FAST)), _data()
    whole = fit(f"timm:{TINY_TIMM}", data, recipe, tmp_path / "whole", device="cpu", progress=False)
    part = fit(f"timm:{TINY_TIMM}", data, recipe, tmp_path / "part", device="cpu", progress=False, max_steps=7)
    assert part.interrupted
    resumed = fit(f"timm:{TINY_TIMM}", data, recipe, tmp_path / "part", device="cpu", progress=False, resume=True)
    assert resumed.steps == whole.steps and resumed.top1 == whole.top1
    a, b = load_weights(tmp_path / "whole" / "model.safetensors"), load_weights(tmp_path / "part" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ResumeError, match="timm:test_resnet"):  # another model cannot continue this run
        fit("timm:resnet10t", data, recipe.replace(epochs=3), tmp_path / "part", device="cpu", progress=False,
            resume=True)


def test_cli_trains_a_timm_model(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--timm", TINY_TIMM, "--data", "synthetic", "--recipe", "proxy", "--epochs", "1", "--out",
            str(out), "--device", "cpu", "--no-progress", "--batch-size", "32", "--resolution", "16",
            "--set", "bn_reestimate_images=16"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"training timm:{TINY_TIMM} on synthetic" in text and "done: " in text
    stored = json.loads((out / "result.json").read_text())
    assert stored["recipe"] == "proxy" and stored["info"]["timm"] == TINY_TIMM


@pytest.mark.parametrize("argv, needle", [
    (["--timm", "resnt10t"], "--timm: got 'resnt10t'; a timm model name (timm.list_models()); did you mean resnet10t"),
    (["b1", "--timm", "resnet10t"], "either a LowFormer config (b1) or --timm NAME, not both"),
    ([], "config: a LowFormer config (preset name or YAML path) or --timm NAME"),
])
def test_cli_rejects_bad_model_choices_in_one_line(argv, needle, tmp_path, capsys):
    assert main(["train", *argv, "--data", "synthetic", "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_model_source_decides_config_or_timm():
    assert model_source("b1").name and model_source(timm="timm:resnet10t") == TimmModel("resnet10t")
    assert model_source(TimmModel("resnet10t")) == model_source("timm:resnet10t") == TimmModel("resnet10t")
    with pytest.raises(ConfigError, match="did you mean"):
        TimmModel.named("efficientvit_b9")


def test_a_recipe_without_resolutions_trains_at_the_timm_models_own_size():
    assert train_sizes(proxy_recipe(dict(resolutions=None)), TimmModel(TINY_TIMM)) == (160,)  # test_resnet's input size


def test_img_size_reaches_architectures_that_depend_on_it():
    model = TimmModel.named("levit_conv_128s").build(10, 1, img_size=64).eval()  # attention biases sized for 64 px
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 10)
    plain = TimmModel.named("efficientvit_b0").build(10, 1, drop_path=0.1, img_size=64).eval()  # takes neither
    with torch.no_grad():
        assert plain(torch.zeros(1, 1, 32, 32)).shape == (1, 10)
