"""Class folders of real JPEG / PNG files: scanning, clear errors, skip-and-count, subsets, timm transforms,
multi-resolution batches, augmentation that does not depend on the worker layout, materialization."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lowspace.data import (BatchPlan, DataError, FolderLoader, eval_transforms, get_dataset, materialize,
                           scan_folders, train_transforms)

CLASSES = ("cat", "dog", "fox")


def make_folders(root: Path, train=5, val=2, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = (rng.random((18 + i, 22, 3)) * 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"img{i}.{'jpg' if i % 2 else 'png'}")
    (root / "train" / "cat" / "notes.txt").write_text("not an image; ignored")
    return root


def test_scan_labels_and_layout(tmp_path):
    data = get_dataset(str(make_folders(tmp_path / "ds")))
    assert data.kind == "folder" and data.classes == CLASSES and data.in_chans == 3
    assert len(data.train) == 15 and len(data.val) == 6
    labels = data.train.label_list()
    assert labels == sorted(labels) and set(labels) == {0, 1, 2}
    assert all(Path(p).suffix in (".jpg", ".png") for p, _ in data.train.samples)


def test_corrupt_image_error_names_file_and_skip_counts(tmp_path):
    root = make_folders(tmp_path / "ds")
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    data = get_dataset(str(root))  # not verified up front: the error comes when the image is read
    loader = FolderLoader(data.train, BatchPlan(len(data.train), 4, seed=0), "cpu", 16, train_transforms(), workers=0)
    with pytest.raises(DataError, match="broken.jpg: cannot read image"):
        list(loader.epoch(0))
    with pytest.raises(DataError, match="broken.jpg"):
        get_dataset(str(root), verify=True)
    skipped = get_dataset(str(root), skip_bad=True)
    assert skipped.info["skipped_files"] == [str(bad)] and len(skipped.train) == 15
    batches = list(FolderLoader(skipped.train, BatchPlan(15, 5, seed=0), "cpu", 16, train_transforms(),
                                workers=0).epoch(0))
    assert len(batches) == 3 and batches[0][0].shape == (5, 3, 16, 16)


def test_empty_class_folder_and_missing_val_class(tmp_path):
    root = make_folders(tmp_path / "ds")
    (root / "train" / "owl").mkdir()
    with pytest.raises(DataError, match=r"train/owl: empty class folder"):
        scan_folders(root)
    assert scan_folders(root, skip_bad=True).info["skipped_classes"] == [str(root / "train" / "owl")]
    (root / "train" / "owl").rmdir()
    (root / "val" / "emu").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "emu" / "a.png")
    with pytest.raises(DataError, match=r"val/emu: val class 'emu' is missing from"):
        scan_folders(root)
    data = scan_folders(root, skip_bad=True)
    assert data.classes == CLASSES and len(data.val) == 6 and len(data.info["skipped_val_classes"]) == 1
    with pytest.raises(DataError, match="no such folder"):
        scan_folders(tmp_path / "nothing")


def test_class_subset_by_seed_or_file_and_per_class_cap(tmp_path):
    root = make_folders(tmp_path / "ds")
    a = get_dataset(str(root), classes=2, train_per_class=3, seed=1)
    b = get_dataset(str(root), classes=2, train_per_class=3, seed=1)
    assert a.classes == b.classes and a.train.samples == b.train.samples
    assert a.num_classes == 2 and len(a.train) == 6 and len(a.val) == 4
    listing = tmp_path / "classes.txt"
    listing.write_text("# keep two\nfox\ncat\n")
    c = get_dataset(str(root), classes=str(listing))
    assert c.classes == ("cat", "fox")
    assert {Path(p).parent.name for p, _ in c.val.samples} == {"cat", "fox"}
    listing.write_text("cat\nwolf\n")
    with pytest.raises(DataError, match=r"classes.txt: unknown class\(es\) wolf"):
        get_dataset(str(root), classes=str(listing))


def test_multires_batches_are_deterministic_and_worker_independent(tmp_path):
    data = get_dataset(str(make_folders(tmp_path / "ds", train=6)))
    tf = train_transforms(randaugment="rand-m3-n1-mstd1.0-inc1", reprob=0.25)
    plan = BatchPlan(len(data.train), 4, sizes=(16, 24), seed=3)

    def run(workers, epoch=0):
        loader = FolderLoader(data.train, plan, "cpu", 24, tf, workers=workers)
        return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch)]
    a, b, c = run(0), run(0), run(2)
    assert {x.shape[-1] for x, _ in a} <= {16, 24} and len(a) == plan.micro_steps == 4
    for (xa, ya), (xb, yb), (xc, yc) in zip(a, b, c):
        assert torch.equal(xa, xb) and torch.equal(xa, xc) and torch.equal(ya, yb) and torch.equal(ya, yc)
    other = run(0, epoch=1)
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, other) if x.shape == y.shape)
    # resuming mid-epoch gives the remaining batches unchanged
    loader = FolderLoader(data.train, plan, "cpu", 24, tf, workers=0)
    rest = list(loader.epoch(0, start=2))
    assert len(rest) == 2 and torch.equal(rest[0][0], a[2][0])


def test_transforms_follow_the_official_code():
    from PIL import Image as PILImage
    from timm.data.random_erasing import RandomErasing
    from torchvision.transforms import Resize
    from lowspace.data.folders import RandomResizedCropInterpolation
    steps = train_transforms(randaugment="rand-m5-n2-mstd1.0-inc1", reprob=0.2)(224).transforms
    crop = steps[0]
    assert isinstance(crop, RandomResizedCropInterpolation)  # one of the six PIL filters per image
    assert {m.value for m in crop.modes} == {"nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"}
    assert {op.kwargs["resample"] for op in steps[2].ops} == {PILImage.BICUBIC}  # RandAugment ops bicubic
    erase = steps[-1]
    assert isinstance(erase, RandomErasing) and erase.mode == "const" and erase.probability == 0.2
    resize = eval_transforms(crop_pct=0.95)(224).transforms[0]
    assert isinstance(resize, Resize) and resize.size == 236  # ceil(224 / 0.95), not timm's 235


def test_eval_transform_and_materialize(tmp_path):
    data = get_dataset(str(make_folders(tmp_path / "ds")))
    loader = FolderLoader(data.val, BatchPlan(len(data.val), 4, shuffle=False, drop_last=False), "cpu", 16,
                          eval_transforms(crop_pct=0.9), workers=0, augment_seed=False)
    batches = list(loader.epoch(0))
    assert [x.shape[0] for x, _ in batches] == [4, 2] and batches[0][0].shape[1:] == (3, 16, 16)
    tensors = materialize(data, 12, workers=0)
    assert tensors.kind == "tensor" and tensors.train.images.shape == (15, 3, 12, 12)
    assert tensors.train.labels.tolist() == data.train.label_list()
    # the center crop of a PNG matches PIL's own resize + crop
    path, _ = data.train.samples[0]
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = 12 / min(w, h)
    img = img.resize((max(12, round(w * s)), max(12, round(h * s))), Image.BILINEAR, reducing_gap=3.0)
    left, top = (img.size[0] - 12) // 2, (img.size[1] - 12) // 2
    ref = torch.from_numpy(np.array(img.crop((left, top, left + 12, top + 12)))).permute(2, 0, 1)
    assert torch.equal(tensors.train.images[0], ref)
