"""``lowspace train`` / ``lowspace eval``: a run on class folders of real images (timm transforms, mixup,
multi-resolution, skip-bad), resume through the CLI, evaluation of the result, clean errors."""
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from lowspace.cli import build_parser, main
from lowspace.cli.train import _with_overrides
from lowspace.train import get_recipe

TINY = dict(name="tiny", resolution=24, stem=dict(width=8),
            stages=[dict(width=16, depth=1, downsample=dict(stride=2)),
                    dict(width=24, depth=1, block="lowformer", attention=dict(stride=2, kernel_size=3))],
            head=dict(widths=[32]))
FAST = ["--no-progress", "--device", "cpu", "--workers", "0", "--set", "bn_reestimate_images=16",
        "--set", "eval_batch_size=8", "--set", "log_every=2"]


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for split, n in (("train", 8), ("val", 3)):
        for k, c in enumerate(("red", "green", "blue")):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                arr = (rng.random((30, 34, 3)) * 60).astype(np.uint8)
                arr[..., k] += 150  # learnable: the dominant colour is the class
                Image.fromarray(arr).save(d / f"{i}.{'jpg' if i % 2 else 'png'}")
    (root / "train" / "red" / "corrupt.jpg").write_bytes(b"garbage")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    return root, cfg


def test_train_resume_eval_on_class_folders(folders, tmp_path, capsys):
    root, cfg = folders
    out = tmp_path / "run"
    args = ["train", str(cfg), "--data", str(root), "--out", str(out), "--epochs", "2", "--batch-size", "6",
            "--lr", "2e-3", "--skip-bad", "--set", "resolutions=[16,24]", "--set", "eval_resolution=24", *FAST]
    assert main(args + ["--max-steps", "3"]) == 0
    text = capsys.readouterr().out
    # 8 training images per class: one of each held out for validation (a tenth, at least one); 21 train
    assert "skipped: 1 files" in text and "stopped (--max-steps): 3 steps" in text
    assert "21 train / 3 val images" in text and "validating on 3 training images held out" in text
    assert main(args) == 2  # the directory holds a run: refuse to overwrite it
    assert "pass resume=True (--resume)" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert "done: 6 steps, 2 epochs" in capsys.readouterr().out
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["mixup_alpha"] == 0.1 and recipe["randaugment"].startswith("rand-")  # the b1 recipe
    trained = json.loads((out / "result.json").read_text())
    assert trained["info"]["validation"]["split"] == "holdout" and trained["info"]["validation"]["images"] == 3
    assert trained["environment"]["device_type"] == "cpu" and trained["provenance"]["lowspace"]  # where it ran
    evaluate = ["eval", str(cfg), "--checkpoint", str(out), "--data", str(root), "--skip-bad", "--json",
                "--device", "cpu", "--workers", "0"]
    # --split holdout feeds the images training validated on, as it did: the same top-1 for the best weights
    assert main(evaluate + ["--split", "holdout"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 3 and result["checkpoint"].endswith("best.safetensors")
    assert result["validation"]["indices_sha256"] == trained["info"]["validation"]["indices_sha256"]
    assert (result["resolution"], result["crop_pct"]) == (24, trained["info"]["crop_pct"]) == (24, 0.95)
    assert result["top1"] == pytest.approx(trained["best_top1"])
    # by default eval reads the test split (val/), which training never saw
    assert main(evaluate) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 9 and result["validation"] == {"split": "test", "images": 9}
    assert result["top5"] == 100.0  # 3 classes: top-5 covers all


def test_train_evaluates_on_the_test_split_only_when_asked(folders, tmp_path, capsys):
    root, cfg = folders
    args = ["train", str(cfg), "--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size",
            "8", "--skip-bad", "--resolution", "16", "--eval-split", "test", *FAST]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "24 train / 9 val images" in text and "validating on the test split (9 images)" in text
    trained = json.loads((tmp_path / "run" / "result.json").read_text())
    assert trained["info"]["validation"] == {"split": "test", "images": 9}


def test_flags_and_set_build_the_recipe():
    args = build_parser().parse_args(["train", "b1", "--data", "synthetic", "--epochs", "32", "--batch-size", "8",
                                      "--resolution", "96", "--set", "batch_size=16", "--set", "betas.1=0.99",
                                      "--set", "randaugment=null", "--set", "name=2024", "--set", "classes=3"])
    recipe = _with_overrides(get_recipe("b3"), args)
    assert (recipe.epochs, recipe.warmup_epochs) == (32, 2.0)  # --epochs scales the warmup (20 of 320)
    assert (recipe.batch_size, recipe.accumulation) == (16, 4)  # --set after the flag; the rest of b3 kept
    assert (recipe.resolutions, recipe.eval_resolution, recipe.betas) == ((96,), 96, (0.9, 0.99))
    assert (recipe.randaugment, recipe.name, recipe.classes) == (None, "2024", 3)  # typed from the fields


def test_clean_errors(folders, tmp_path, capsys):
    root, cfg = folders
    base = ["train", str(cfg), "--out", str(tmp_path / "x"), *FAST]
    assert main(base + ["--data", str(root), "--batch-size", "6"]) == 2  # the corrupt image, no --skip-bad
    assert "corrupt.jpg: cannot read image" in capsys.readouterr().err
    # a batch larger than the data shrinks to fit; accumulation beyond the images cannot
    assert main(base + ["--data", str(root), "--skip-bad", "--accumulation", "1000"]) == 2
    assert "recipe.batch_size: got" in capsys.readouterr().err
    assert main(base + ["--data", "synthetic", "--set", "warmup_epochs=500"]) == 2
    assert "command line: warmup_epochs: got 500.0; must be < epochs (320)" in capsys.readouterr().err
    assert main(base + ["--data", "synthetic", "--set", "warmup_epoch=5"]) == 2
    assert "--set: warmup_epoch: got 'warmup_epoch'; unknown key; did you mean 'warmup_epochs'" in \
        capsys.readouterr().err
    assert main(base + ["--data", "synthetic", "--set", "resolutions=[64"]) == 2
    assert "--set resolutions: got '[64'; not valid YAML" in capsys.readouterr().err
    assert main(base + ["--data", "synthetic", "--seed", "-1"]) == 2
    assert "command line: seed: got -1; must be an integer between 0" in capsys.readouterr().err
    assert main(base + ["--data", "synthetic", "--recipe", "b4"]) == 2
    assert "known recipes" in capsys.readouterr().err
    none = str(tmp_path / "none")
    assert main(["eval", str(cfg), "--checkpoint", none, "--data", "synthetic", "--device", "cpu"]) == 2
    assert "no such file or directory" in capsys.readouterr().err
