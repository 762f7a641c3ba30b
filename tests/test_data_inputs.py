"""Bad data inputs found before any work: class folders with broken links, files that are not images, images
that are not what their name says, and unknown data options (the command-line cases are in tests/bad_inputs)."""
import os
from pathlib import Path

import pytest
from PIL import Image

from lowspace.cli import main
from lowspace.data import DataError, get_dataset
from lowspace.data.folders import describe_scan, is_image_header
from lowspace.errors import ConfigError

TINY = Path(__file__).parent / "bad_inputs" / "files" / "arch" / "tiny.yaml"


def _folders(root: Path, classes=("a", "b"), images=2) -> Path:
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(images):
                Image.new("RGB", (8, 8), (90 * i, 40, 100)).save(root / split / c / f"img{i}.png")
    return root


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM"])
def test_every_format_pil_writes_has_an_image_header(tmp_path, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.new("RGB", (8, 8)).save(path, format=fmt)
    assert is_image_header(path.read_bytes()[:16])


@pytest.mark.parametrize("head", [b"", b"<html><body>404", b"this is not a PNG", b"P9 nope", b"RIFF\0\0\0\0WAVE"])
def test_text_and_other_files_have_no_image_header(head):
    assert not is_image_header(head[:16])


def test_non_image_files_are_left_out_and_counted(tmp_path):
    root = _folders(tmp_path / "ds")
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    (root / "val" / "b" / "labels.csv").write_text("a,b")
    (root / "train" / "a" / ".DS_Store").write_bytes(b"\0")
    data = get_dataset(str(root))
    assert len(data.train) == 4 and len(data.val) == 4
    assert data.info["ignored_files"] == [str(root / "train" / "a" / "notes.txt"),
                                          str(root / "val" / "b" / "labels.csv")]
    assert describe_scan(data.info).startswith("left out 2 file(s) that are not images by their extension")


def test_skip_bad_skips_and_counts_broken_links_and_fake_images(tmp_path):
    root = _folders(tmp_path / "ds", classes=("a", "b", "c"))
    os.symlink(tmp_path / "nowhere.png", root / "train" / "a" / "gone.png")
    os.symlink("loop", root / "train" / "loop")
    (root / "train" / "b" / "fake.jpg").write_text("<html>404</html>")
    with pytest.raises(DataError, match="train/loop: the class folder is a broken symbolic link"):
        get_dataset(str(root))
    data = get_dataset(str(root), skip_bad=True)
    assert data.classes == ("a", "b", "c") and len(data.train) == 6
    assert data.info["skipped_classes"] == [str(root / "train" / "loop")]
    assert sorted(data.info["skipped_files"]) == [str(root / "train" / "a" / "gone.png"),
                                                  str(root / "train" / "b" / "fake.jpg")]
    assert describe_scan(data.info) == "skipped: 2 files, 1 classes"


def test_a_class_of_broken_links_only_is_skipped_as_a_class(tmp_path):
    root = _folders(tmp_path / "ds")
    (root / "train" / "c").mkdir()
    os.symlink(tmp_path / "nowhere.png", root / "train" / "c" / "gone.png")
    with pytest.raises(DataError, match="c/gone.png: a broken symbolic link"):
        get_dataset(str(root))
    data = get_dataset(str(root), skip_bad=True)
    assert data.classes == ("a", "b") and data.info["skipped_classes"] == [str(root / "train" / "c")]


@pytest.mark.slow
def test_train_says_how_many_files_it_left_out(tmp_path, capsys):
    root = _folders(tmp_path / "ds")
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    rc = main(["train", str(TINY), "--data", str(root), "--device", "cpu", "--epochs", "1", "--max-steps", "1",
               "--resolution", "32", "--batch-size", "2", "--workers", "0", "--no-progress",
               "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0 and "left out 1 file(s) that are not images by their extension" in out
    assert str(root / "train" / "a" / "notes.txt") in out


def test_unknown_data_option_names_the_key_and_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"data\.clases: .*did you mean 'classes'\?.*num_classes"):
        get_dataset("synthetic", clases=3)


def test_synthetic_options_on_other_data_name_the_key(tmp_path):
    root = _folders(tmp_path / "ds")
    with pytest.raises(DataError, match=r"data\.num_classes: got 3; only synthetic data takes num_classes"):
        get_dataset(str(root), num_classes=3)
