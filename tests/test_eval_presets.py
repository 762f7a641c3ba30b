"""``lowspace eval b0 b1 ... --checkpoint-dir DIR --data ROOT``: several models with their weights from one folder,
each at its own resolution and crop, in one table; missing or ambiguous weights are one-line errors first."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lowspace import ArchConfig
from lowspace.arch import LowFormer, resolve_config
from lowspace.cli import main
from lowspace.cli.eval_presets import owner
from lowspace.train import load_recipe

CLASSES = ("ant", "bee", "cow")
TINY = dict(name="tiny", resolution=48, num_classes=3, stem=dict(width=8),
            stages=[dict(width=16, depth=1, block="lowformer", attention=dict(stride=1))], head=dict(widths=[32]))
CPU = ["--device", "cpu", "--workers", "0", "--batch-size", "4"]


@pytest.fixture
def root(tmp_path):
    """An ImageNet-style root: train/ and val/ with one folder per class, two small images each."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in CLASSES:
            folder = tmp_path / "data" / split / c
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray((rng.random((40, 36, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "data"


def _weights(cfg, seed):
    torch.manual_seed(seed)
    return LowFormer(resolve_config(cfg).replace(num_classes=len(CLASSES)), init="torch").state_dict()


def _json_rows(capsys):
    return {r["model"]: r for r in json.loads(capsys.readouterr().out)["rows"]}


@pytest.mark.slow
def test_each_model_at_its_own_resolution_and_crop(root, tmp_path, capsys):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    save_file(_weights("b0", 0), ckpts / "lowformer_b0.safetensors")
    config = tmp_path / "tiny.yaml"
    ArchConfig.from_dict(TINY).to_yaml(config)
    run = ckpts / "tiny"  # a `lowspace train` run folder: its recipe says how it was evaluated
    run.mkdir()
    save_file(_weights(TINY, 1), run / "best.safetensors")
    load_recipe("b1").replace(eval_resolution=40, crop_pct=1.0).to_yaml(run / "recipe.yaml")
    assert main(["eval", "b0", str(config), "--checkpoint-dir", str(ckpts), "--data", str(root), "--json",
                 *CPU]) == 0
    rows = _json_rows(capsys)
    assert list(rows) == ["b0", str(config)]
    b0, tiny = rows["b0"], rows[str(config)]
    assert (b0["resolution"], b0["crop_pct"]) == (224, 0.95)  # the preset's pretrained_cfg
    assert (tiny["resolution"], tiny["crop_pct"]) == (40, 1.0)  # what its run evaluated at
    assert Path(b0["weights"]).name == "lowformer_b0.safetensors" and Path(tiny["weights"]) == run / "best.safetensors"
    assert b0["images"] == tiny["images"] == 6 and b0["images_per_s"] > 0


@pytest.mark.slow
def test_one_table_that_agrees_with_evaluating_each_alone(root, tmp_path, capsys):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    torch.save(_weights("b0", 0), ckpts / "b0.pth")
    save_file(_weights("b1", 1), ckpts / "lowformer_b1.in1k.safetensors")
    (ckpts / "lowformer_b15.pth").write_bytes(b"not b1's")  # b1 must not take b15's file
    common = ["--data", str(root), "--resolution", "32", *CPU]
    assert main(["eval", "b0", "b1", "--checkpoint-dir", str(ckpts), *common]) == 0
    table = capsys.readouterr().out
    lines = {line.split()[1]: line for line in table.splitlines() if line.split()[1:2] in (["b0"], ["b1"])}
    assert set(lines) == {"b0", "b1"}
    assert "b0.pth" in lines["b0"] and "lowformer_b1.in1k.safetensors" in lines["b1"]
    for model, name in (("b0", "b0.pth"), ("b1", "lowformer_b1.in1k.safetensors")):
        assert main(["eval", model, "--checkpoint", str(ckpts / name), "--json", *common]) == 0
        alone = json.loads(capsys.readouterr().out)
        cells = lines[model].replace("│", " ").split()
        assert cells[:5] == [model, "32", "0.95", f"{alone['top1']:.2f}", f"{alone['top5']:.2f}"]


def test_missing_weights_are_one_error_before_any_evaluation(tmp_path, capsys):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    (ckpts / "lowformer_b1.pth").write_bytes(b"")
    (ckpts / "b15.pth").write_bytes(b"")
    # the data folder does not exist either: the weights are checked first
    rc = main(["eval", "b1", "b3", "b0", "--checkpoint-dir", str(ckpts), "--data", str(tmp_path / "none"), *CPU])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err
    assert "no weights for b3, b0" in err and "--checkpoint-dir" in err


def test_two_candidate_files_are_an_error(tmp_path, capsys):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for name in ("b1.pth", "lowformer_b1.safetensors"):
        (ckpts / name).write_bytes(b"")
    assert main(["eval", "b1", "--checkpoint-dir", str(ckpts), "--data", "synthetic", *CPU]) == 2
    err = capsys.readouterr().err
    assert "2 weights for b1" in err and "b1.pth" in err and "lowformer_b1.safetensors" in err


@pytest.mark.parametrize("stem, model", [("lowformer_b1", "b1"), ("b1_ema", "b1"), ("lowformer_b1.in1k", "b1"),
                                         ("B1", "b1"), ("lowformer_b1.5", "b15"), ("b15", "b15"),
                                         ("b15_ema", "b15"), ("b10", None), ("tiny_best", "tiny")])
def test_file_names_belong_to_the_longest_name_they_start_with(stem, model):
    wanted = {"b1": "b1", "b15": "b15", "b1.5": "b15", "b1_5": "b15", "tiny": "tiny"}
    assert owner(stem, wanted) == model


def test_checkpoint_flags_are_checked(tmp_path, capsys):
    assert main(["eval", "b0", "b1", "--checkpoint", str(tmp_path), "--data", "synthetic", *CPU]) == 2
    assert "--checkpoint-dir" in capsys.readouterr().err
    assert main(["eval", "b0", "--data", "synthetic", *CPU]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["eval", "b0", "--checkpoint", "x", "--checkpoint-dir", str(tmp_path), "--data", "synthetic"]) == 2
    assert "not both" in capsys.readouterr().err
