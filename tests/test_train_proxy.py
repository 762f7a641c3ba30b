"""Proxy training (the search's accuracy signal) on CPU: it learns, adapts the architecture to the data,
stops when asked; the CUDA path (graph step checked against eager) on a GPU."""
import pytest
import torch

from lowspace import ConfigError
from lowspace.arch import ArchConfig, create_model
from lowspace.data import get_dataset
from lowspace.train import proxy_recipe, train_proxy

TINY = ArchConfig.from_dict(dict(
    name="tiny", resolution=224, stem=dict(width=8),
    stages=[dict(width=16, depth=1, downsample=dict(stride=2)),
            dict(width=24, depth=1, block="lowformer", attention=dict(stride=1)),
            dict(width=32, depth=1, block="lowformer", attention=dict(stride=1))],
    head=dict(widths=[48])))
# 20 training images of each class held out for validation, 40 of the rest trained on
QUICK = dict(epochs=2, resolutions=[16], batch_size=32, base_lr=4e-3, warmup_epochs=0.5, bn_reestimate_images=256,
             train_per_class=40, val_per_class=20)


@pytest.fixture(scope="module")
def fmnist():
    """Real Fashion-MNIST when the Debian package is installed, else a synthetic 1-channel stand-in."""
    try:
        return get_dataset("fashion_mnist")
    except Exception:  # noqa: BLE001 - the package is optional on developer machines
        return get_dataset("synthetic", num_classes=10, train_size=1000, val_size=200, channels=1, image_size=28)


def test_proxy_learns_and_adapts_the_config(fmnist):
    seen = []
    result = train_proxy(TINY, fmnist, proxy_recipe(QUICK), "cpu", on_epoch=lambda e, m: seen.append((e, m)))
    assert result.epochs_run == 2 and not result.stopped_early and [e for e, _ in seen] == [1, 2]
    assert result.top1 > 25 and result.best_top1 >= result.top1  # 10 classes: chance is 10%
    row = result.history[-1]
    assert {"epoch", "train_loss", "lr", "top1", "top5", "val_loss", "epoch_s", "images_per_s"} <= set(row)
    assert result.history[0]["train_loss"] > result.history[-1]["train_loss"]
    info = result.info
    assert (info["in_chans"], info["num_classes"], info["resolution"]) == (1, 10, 16)
    assert info["params"] == sum(p.numel() for p in create_model(TINY.replace(in_chans=1, num_classes=10)).parameters())
    assert info["train_images"] == 2 * (400 // 32) * 32 and info["steps"] == 2 * (400 // 32)
    assert result.images_per_s > 0 and result.train_s > 0 and info["cuda_graph"] == "off"
    # same seed, same result (the search relies on it)
    again = train_proxy(TINY, fmnist, QUICK, "cpu")
    assert again.top1 == result.top1


def test_on_epoch_stops_and_module_input(fmnist):
    model = create_model(TINY, num_classes=10)  # 3-channel stem: gray images are repeated to 3 channels
    result = train_proxy(model, fmnist, dict(QUICK, epochs=3, eval_every=2), "cpu", on_epoch=lambda e, m: e >= 1)
    assert result.stopped_early and result.epochs_run == 1
    assert result.history[0]["top1"] is not None  # evaluated although eval_every=2: it stopped there
    assert result.info["in_chans"] == 3
    with pytest.raises(ConfigError, match="model.num_classes"):
        train_proxy(create_model(TINY, num_classes=5), fmnist, QUICK, "cpu")


def test_proxy_on_class_folders(tmp_path):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for k, c in enumerate(("r", "g")):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                arr = (rng.random((20, 26, 3)) * 80).astype(np.uint8)
                arr[..., k] += 170
                Image.fromarray(arr).save(d / f"{i}.png")
    result = train_proxy(TINY, str(tmp_path), dict(QUICK, batch_size=6, workers=0, val_per_class=2), "cpu")
    info = result.info
    assert (info["in_chans"], info["num_classes"], info["resolution"]) == (3, 2, 16)
    assert "tensor" in info["data"]  # decoded once (at round(16 / 0.875) = 18 px) and kept as tensors
    assert "12 train / 4 val" in info["data"] and info["validation"]["split"] == "holdout"
    assert result.history[-1]["top1"] is not None and result.epochs_run == 2


@pytest.mark.gpu
def test_proxy_cuda_graph_step_matches_eager():
    data = get_dataset("synthetic", num_classes=10, train_size=2048, val_size=512, channels=1, image_size=28)
    result = train_proxy("b0", data, dict(epochs=2, resolutions=[64], batch_size=256), "cuda")
    assert result.info["cuda_graph"] == "on", result.info
    checks = result.info["graph_checks"]
    assert checks and isinstance(checks[0], (list, tuple))  # compared with an eager step, within tolerance
    assert result.top1 > 50
    eager = train_proxy("b0", data, dict(epochs=2, resolutions=[64], batch_size=256, cuda_graph=False), "cuda")
    assert eager.info["cuda_graph"] == "off" and abs(eager.top1 - result.top1) < 15
    torch.cuda.synchronize()


def test_proxy_never_trains_above_the_architectures_resolution(fmnist, monkeypatch):
    from lowspace.train import proxy as proxy_module
    seen = []
    monkeypatch.setattr(proxy_module, "run", lambda cfg, data, recipe, *a, **k: seen.append((cfg, recipe)))
    small = TINY.replace(resolution=24)
    train_proxy(small, fmnist, dict(QUICK, resolutions=[16, 32, 64]), "cpu")
    train_proxy(small, fmnist, dict(QUICK, resolutions=[16]), "cpu")
    (cfg, recipe), (cfg16, recipe16) = seen
    assert cfg.resolution == 24 and recipe.resolutions == (16, 24) and recipe.eval_resolution == 24
    assert cfg16.resolution == 16 and recipe16.resolutions == (16,)  # below it: as asked
