"""The device data path for class folders, run on the CPU (torchvision decodes JPEGs there too): which loader
a run gets, batches (shapes, labels, per-sample seeding, resume, sharding over ranks), the eval transform
against the PIL one, the RandAugment ops against timm's PIL ops, corrupt files, and a short training run."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lowspace.cli import main
from lowspace.data import (BatchPlan, DataError, DeviceEvalTransform, DeviceFolderLoader, DeviceTrainTransform,
                           FolderLoader, FolderSplit, choose_loader, eval_transforms, scan_folders)
from lowspace.data import gpu_augment, gpu_decode
from lowspace.data.base import IMAGENET_STD
from lowspace.errors import ConfigError
from lowspace.train import load_recipe
from lowspace.train import engine
from lowspace.train.distributed import DistInfo

CLASSES = ("ant", "bee", "cat")
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
TINY = dict(name="tiny", resolution=16, stem=dict(width=8),
            stages=[dict(width=16, depth=1, downsample=dict(stride=2)),
                    dict(width=24, depth=1, block="lowformer", attention=dict(stride=1))],
            head=dict(widths=[32]))


def _picture(rng, h: int, w: int) -> Image.Image:
    """Smooth colour blobs plus noise: JPEG-like content whose crops differ visibly."""
    coarse = rng.integers(0, 256, (5, 5, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    noisy = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


def make_folder(root: Path, train: int = 8, val: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(36, 80, 2))
                picture = _picture(rng, h, w)
                if split == "train" and name == "bee" and i == 0:
                    picture.save(folder / f"{i}.png")  # not a JPEG: decoded by PIL, as on the CPU path
                else:
                    picture.save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("jpegs"))


@pytest.fixture(scope="module")
def data(folder):
    return scan_folders(folder)


def train_loader(data, batch=6, seed=3, workers=2, size=24, reprob=0.25, **plan):
    transform = DeviceTrainTransform(randaugment="rand-m9-n2-mstd1.0-inc1", reprob=reprob)
    return DeviceFolderLoader(data.train, BatchPlan(len(data.train), batch, seed=seed, **plan), "cpu", size,
                              transform, workers=workers)


# ------------------------------------------------------------------------------------------ choosing a loader
def test_auto_takes_the_gpu_loader_only_where_jpegs_decode_on_a_cuda_device(monkeypatch):
    assert choose_loader("auto", "folder", "cpu") == "cpu"
    assert choose_loader("cpu", "folder", "cpu") == "cpu"
    for requested in ("auto", "cpu", "gpu"):
        assert choose_loader(requested, "tensor", "cpu") == "tensor"  # tensor data keeps its own GPU path
    monkeypatch.setattr(gpu_decode, "_decodes_on", lambda device: True)
    assert choose_loader("auto", "folder", "cuda:0") == "gpu"
    assert choose_loader("gpu", "folder", "cuda:0") == "gpu"
    assert choose_loader("cpu", "folder", "cuda:0") == "cpu"
    assert choose_loader("auto", "folder", "cpu") == "cpu"  # decoding on the CPU is not the GPU loader
    monkeypatch.setattr(gpu_decode, "_decodes_on", lambda device: False)
    assert choose_loader("auto", "folder", "cuda:0") == "cpu"
    with pytest.raises(ConfigError, match="nvJPEG.*--loader auto or cpu"):
        choose_loader("gpu", "folder", "cuda:0")


def test_gpu_loader_without_cuda_is_a_one_line_error_naming_the_flag(folder, tmp_path, capsys):
    with pytest.raises(ConfigError) as err:
        choose_loader("gpu", "folder", "cpu")
    assert "--loader" in str(err.value) and "CUDA" in str(err.value) and "\n" not in str(err.value)
    code = main(["train", "b0", "--data", str(folder), "--loader", "gpu", "--device", "cpu", "--epochs", "1",
                 "--batch-size", "4", "--resolution", "16", "--out", str(tmp_path / "run"), "--no-progress",
                 "--set", "val_per_class=1", "--workers", "0"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--loader" in lines[0] and "needs a CUDA device" in lines[0]
    with pytest.raises(ConfigError, match="loader"):
        load_recipe("b1", loader="tpu")


# ------------------------------------------------------------------------------------------ batches
def test_train_batches_shapes_labels_and_per_sample_seeding(data):
    loader = train_loader(data)
    batches = list(loader.epoch(0))
    order = loader.plan.order(0).tolist()
    labels = data.train.label_list()
    assert len(batches) == len(loader) == len(data.train) // 6
    for m, (x, y) in enumerate(batches):
        assert x.shape == (6, 3, 24, 24) and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert y.dtype == torch.long and y.tolist() == [labels[i] for i in order[6 * m:6 * m + 6]]
    again = list(train_loader(data, workers=1).epoch(0))  # another thread count: the same images
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    other = list(loader.epoch(1))
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(batches, other))
    resumed = list(loader.epoch(0, start=2))  # a resume mid-epoch sees exactly the rest of the epoch
    assert len(resumed) == len(batches) - 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches[2:], resumed))


def test_an_image_is_augmented_the_same_in_any_batch(data):
    """Per-sample seeds: a sample's crop, flip, RandAugment and erasing do not depend on its batch-mates."""
    loader = train_loader(data)
    transform = loader.transform
    images = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1)
              for p, _ in data.train.samples[:5]]
    seeds = [11, 12, 13, 14, 15]
    together = transform(images, seeds, 20)
    alone = torch.cat([transform([im], [s], 20) for im, s in zip(images, seeds)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(transform(images, [s + 100 for s in seeds], 20), together)


def test_eval_batches_match_the_cpu_eval_transform(data):
    plan = BatchPlan(len(data.val), 4, shuffle=False, drop_last=False)
    cpu = FolderLoader(data.val, plan, "cpu", 24, eval_transforms(crop_pct=0.875), workers=0, augment_seed=False)
    dev = DeviceFolderLoader(data.val, plan, "cpu", 24, DeviceEvalTransform(crop_pct=0.875), workers=2,
                             augment_seed=False)
    pairs = list(zip(cpu.epoch(0), dev.epoch(0)))
    assert sum(len(y) for (_, y), _ in pairs) == len(data.val)
    for (a, ya), (b, yb) in pairs:
        assert torch.equal(ya, yb) and a.shape == b.shape
        diff = (a - b).abs()  # normalized units: one pixel level is 1 / (255 * 0.224) = 0.0175
        assert diff.mean() < 0.002 and diff.max() < 0.02  # PIL's resampling, within one level


def test_channels_last_batches(data):
    loader = DeviceFolderLoader(data.val, BatchPlan(len(data.val), 3, shuffle=False), "cpu", 16,
                                DeviceEvalTransform(), channels_last=True, augment_seed=False)
    x, _ = next(iter(loader.epoch(0)))
    assert x.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------ corrupt files
def _with_bad_file(tmp_path, content: bytes) -> tuple[FolderSplit, int]:
    """Training files with ``broken.jpg`` among them (listed directly: scanning may refuse some bad files)."""
    root = make_folder(tmp_path / "data", train=3, val=1)
    bad = root / "train" / "cat" / "broken.jpg"
    bad.write_bytes(content)
    samples = sorted((str(p), CLASSES.index(p.parent.name)) for p in (root / "train").glob("*/*.*"))
    return FolderSplit(root / "train", samples), samples.index((str(bad), 2))


@pytest.mark.parametrize("content", [b"not a jpeg at all" * 40,
                                     b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"],
                         ids=["garbage", "jpeg-markers-around-garbage"])
def test_a_corrupt_file_is_named_or_skipped_and_counted(tmp_path, content):
    split, bad = _with_bad_file(tmp_path, content)
    plan = BatchPlan(len(split), len(split), shuffle=False)
    loader = DeviceFolderLoader(split, plan, "cpu", 16, DeviceEvalTransform(), augment_seed=False)
    with pytest.raises(DataError, match=r"broken\.jpg: cannot read image"):
        list(loader.epoch(0))
    skipping = DeviceFolderLoader(split, plan, "cpu", 16, DeviceEvalTransform(), skip_bad=True, augment_seed=False)
    with pytest.warns(UserWarning, match="broken.jpg"):
        (x, y), = list(skipping.epoch(0))
    assert skipping.skipped == [split.samples[bad][0]]
    replacement = (bad + 1) % len(split)  # as the CPU path: the next readable sample takes its place
    assert y[bad] == split.samples[replacement][1] and torch.equal(x[bad], x[replacement])


# ------------------------------------------------------------------------------------------ loader processes
def _batches(loader, epoch, start=0):
    return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch, start)]


def test_loader_processes_give_the_single_process_batches_in_order_for_any_start(data):
    one, spread = train_loader(data, batch=3), train_loader(data, batch=3)
    spread.processes = 3  # 8 batches: shares of 3, 3 and 2 (and 7 from a resumed start)
    try:
        for epoch, start in ((0, 0), (1, 1), (2, 0)):  # the processes serve later epochs, and resumes
            expected, got = _batches(one, epoch, start), _batches(spread, epoch, start)
            assert len(got) == len(expected) == len(one) - start
            for (x, y), (ex, ey) in zip(got, expected):
                assert torch.equal(y, ey) and torch.equal(x, ex)
    finally:
        spread.close()
    assert spread._pool is None


def test_loader_processes_end_with_exit_code_zero_when_closed(data):
    loader = train_loader(data, batch=2)
    loader.processes = 2
    assert len(_batches(loader, 0)) == len(loader)
    processes = loader._pool.processes
    loader.close()
    assert [p.exitcode for p in processes] == [0, 0]  # ended by the close, not terminated


def test_loader_processes_stopped_early_start_the_next_epoch_clean(data):
    loader = train_loader(data, batch=2)
    loader.processes = 2
    try:
        first = next(iter(loader.epoch(0)))  # the generator is dropped after one batch
        del first
        assert len(_batches(loader, 1)) == len(loader)
    finally:
        loader.close()


def test_loader_processes_name_a_corrupt_file_or_report_it_skipped(tmp_path):
    split, bad = _with_bad_file(tmp_path, b"not a jpeg at all" * 40)
    plan = BatchPlan(len(split), 2, shuffle=False)
    loader = DeviceFolderLoader(split, plan, "cpu", 16, DeviceEvalTransform(), augment_seed=False, processes=2)
    try:
        with pytest.raises(DataError, match=r"broken\.jpg: cannot read image"):
            list(loader.epoch(0))
    finally:
        loader.close()
    skipping = DeviceFolderLoader(split, plan, "cpu", 16, DeviceEvalTransform(), skip_bad=True, augment_seed=False,
                                  processes=2)
    try:
        assert len(list(skipping.epoch(0))) == len(skipping)
        assert skipping.skipped == [split.samples[bad][0]]
    finally:
        skipping.close()


def test_a_loader_process_that_dies_is_named(data):
    loader = train_loader(data, batch=2)
    loader.processes = 2
    try:
        it = iter(loader.epoch(0))
        next(it)
        loader._pool.processes[1].kill()
        with pytest.raises(RuntimeError, match="loader process lowspace-loader-1 exited"):
            list(it)
    finally:
        loader.close()


# ------------------------------------------------------------------------------------------ the transforms
def test_files_are_read_in_contiguous_runs_one_task_per_run_in_order(data):
    from concurrent.futures import ThreadPoolExecutor
    samples, indices = data.train.samples, [5, 0, 3, 1, 4, 2, 6]
    with ThreadPoolExecutor(2) as pool:
        futures = gpu_decode.read_in_parts(pool, samples, indices, 3)
        read = [s for f in futures for s in f.result()]
    assert len(futures) == 3  # runs of 3, 3 and 1 files
    assert [s.index for s in read] == indices
    assert [s.path for s in read] == [samples[i][0] for i in indices]
    assert all(s.encoded is not None and s.error is None for s in read)


def test_crop_boxes_lie_inside_and_follow_scale_and_ratio():
    rng = np.random.default_rng(0)
    heights, widths = rng.integers(30, 600, 500), rng.integers(30, 600, 500)
    boxes = gpu_augment.crop_boxes(heights, widths, gpu_augment.uniforms(range(500), 0, 40), (0.08, 1.0),
                                   (3 / 4, 4 / 3))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= heights).all() and (left + w <= widths).all()
    area = h * w / (heights * widths)
    assert area.min() > 0.06 and area.max() <= 1.0 and np.median(area) < 0.7
    assert ((w / h > 0.7) & (w / h < 1.45)).mean() > 0.95


@pytest.mark.parametrize("name", gpu_augment.PIL_FILTERS)
def test_batched_crops_match_pils_crop_and_resize(name):
    """One batch of crops of different images, sizes and flips against PIL's crop + resize per image."""
    rng = np.random.default_rng(gpu_augment.PIL_FILTERS.index(name))
    size, images, boxes, expected = 24, [], [], []
    for k in range(12):
        picture = _picture(rng, *(int(v) for v in rng.integers(20, 70, 2)))
        h, w = picture.height, picture.width
        top, left = int(rng.integers(0, h // 3)), int(rng.integers(0, w // 3))
        bh, bw = int(rng.integers(3, h - top + 1)), int(rng.integers(3, w - left + 1))
        crop = picture.crop((left, top, left + bw, top + bh))
        crop = np.asarray(crop.resize((size, size), Image.Resampling[name.upper()]))
        expected.append(crop[:, ::-1] if k % 2 else crop)
        images.append(torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1))
        boxes.append((top, left, bh, bw))
    n = len(images)
    got = gpu_augment.resample(images, np.array(boxes), np.full((n, 2), size), np.zeros((n, 2)),
                               np.full(n, gpu_augment.PIL_FILTERS.index(name)), np.arange(n) % 2, size)
    diff = np.abs(got.permute(0, 2, 3, 1).numpy() - np.stack(expected))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.05  # PIL's fixed-point weights round a level apart


TAPS_SCRIPT = r"""
import numpy as np, torch
from PIL import Image
from lowspace.data import gpu_augment
rng = np.random.default_rng(7)
size, images, boxes, expected, filters = 24, [], [], [], []
for k in range(12):
    h, w = (int(v) for v in rng.integers(20, 70, 2))
    picture = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    top, left = int(rng.integers(0, h // 3)), int(rng.integers(0, w // 3))
    bh, bw = int(rng.integers(3, h - top + 1)), int(rng.integers(3, w - left + 1))
    if k == 3:  # rows shrink while columns grow: PIL resamples the rows first
        top, left, bh, bw = 0, 0, h, min(w, 10)
    name = gpu_augment.PIL_FILTERS[k % 6]
    crop = picture.crop((left, top, left + bw, top + bh))
    crop = np.asarray(crop.resize((size, size), Image.Resampling[name.upper()]))
    expected.append(crop[:, ::-1] if k % 2 else crop)
    images.append(torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1))
    boxes.append((top, left, bh, bw))
    filters.append(k % 6)
n = len(images)
args = (images, np.array(boxes), np.full((n, 2), size), np.zeros((n, 2)), np.array(filters), np.arange(n) % 2, size)
matmul = gpu_augment.resample(*args, kernel="matmul")
gpu_augment._resample_group = None  # the matrix form must not run below
taps = gpu_augment.resample(*args, kernel="taps")
apart = (taps - matmul).abs()
assert apart.max() <= 1 and (apart > 0).float().mean() < 0.01, (apart.max(), (apart > 0).float().mean())
pil = np.stack(expected)  # on noise, PIL's fixed-point lanczos lands up to ~15 levels from exact weights
for got in (matmul, taps):
    diff = np.abs(got.permute(0, 2, 3, 1).numpy() - pil)
    assert np.median(diff.reshape(n, -1).max(1)) <= 1 and (diff > 0).mean() < 0.05, diff.reshape(n, -1).max(1)
print("ok")
"""


@pytest.mark.slow
def test_the_taps_kernel_resamples_like_pil_in_tritons_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", TAPS_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_an_unknown_resample_kernel_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match="gpu_resample.*matmul, taps"):
        DeviceTrainTransform(resample_kernel="fast")
    with pytest.raises(ConfigError, match="gpu_resample"):
        DeviceEvalTransform(resample_kernel="")
    assert not gpu_augment._resample_kernel.available("cpu") or os.environ.get("TRITON_INTERPRET") == "1"


def test_crops_gathered_into_one_buffer_equal_slicing_each_image():
    rng = np.random.default_rng(4)
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
              for h, w in rng.integers(5, 40, (9, 2))]
    boxes = []
    for im in images:
        h, w = im.shape[1:]
        top, left = int(rng.integers(0, h)), int(rng.integers(0, w))
        boxes.append((top, left, int(rng.integers(1, h - top + 1)), int(rng.integers(1, w - left + 1))))
    boxes = np.array(boxes)
    got = gpu_augment._Flat(images).crops(np.arange(len(images)), boxes)
    assert got.dtype == torch.uint8 and got.shape == (9, boxes[:, 2].max(), 3, boxes[:, 3].max())
    for k, (im, (top, left, h, w)) in enumerate(zip(images, boxes)):
        assert torch.equal(got[k, :h, :, :w], im[:, top:top + h, left:left + w].permute(1, 0, 2))


def test_pass_weights_are_zero_past_each_samples_input_so_buffer_padding_is_ignored():
    rng, size = np.random.default_rng(8), 10
    args = _pass_inputs(rng, 24, size)
    rows, cols = int(args[0].max()) + 5, int(args[1].max()) + 5
    for length, matrix in zip(args[:2], _direct_passes(*args, size, rows, cols)):
        for k, n in enumerate(length):
            assert matrix[k, :, n:].abs().max() == 0 and (matrix[k, :, :n].sum(1) - 1).abs().max() < 1e-5


def test_a_batch_too_large_for_one_buffer_is_resampled_in_parts_with_the_same_result(monkeypatch):
    rng = np.random.default_rng(5)
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
              for h, w in rng.integers(8, 60, (10, 2))]
    boxes = np.array([(0, 0, im.shape[1], im.shape[2]) for im in images])
    n = len(images)
    args = (np.full((n, 2), 16), np.zeros((n, 2)), np.full(n, 4), np.arange(n) % 2, 16)
    whole = gpu_augment.resample(images, boxes, *args)
    monkeypatch.setattr(gpu_augment, "MAX_BUFFER", 3 * 3 * 40 * 40)
    parts = gpu_augment.size_parts(boxes)
    assert len(parts) > 2 and sorted(np.concatenate(parts).tolist()) == list(range(n))
    for part in parts:  # every part fits, or is one box that alone does not
        b = boxes[part]
        assert len(part) == 1 or 3 * len(part) * b[:, 2].max() * b[:, 3].max() <= gpu_augment.MAX_BUFFER
    split = gpu_augment.resample(images, boxes, *args)
    assert (split - whole).abs().max() <= 1 and (split != whole).float().mean() < 0.01


def _pass_inputs(rng, n, size):
    heights, widths = rng.integers(3, 90, n), rng.integers(3, 90, n)
    resized = np.stack([rng.integers(size, 2 * size, n), rng.integers(size, 2 * size, n)], 1)
    offsets = np.array([[rng.integers(0, a - size + 1), rng.integers(0, b - size + 1)] for a, b in resized])
    return heights, widths, resized, offsets, rng.integers(0, 2, n), rng.integers(0, 6, n)


def _direct_passes(heights, widths, resized, offsets, flips, filters, size, rows, cols):
    out = []
    for length, k, flip, padded in ((heights, 0, np.zeros(len(flips)), rows), (widths, 1, flips, cols)):
        params, centers, taps = gpu_augment._axis_params(length, resized[:, k], offsets[:, k], flip, filters, size)
        params, centers = gpu_augment.to_device([params, centers], "cpu")
        w, first = gpu_augment.tap_weights(params, centers, taps)
        out.append(gpu_augment.dense_weights(w, first, padded, torch.float32))
    return out


def test_stored_pass_weights_equal_the_formula_for_every_sample():
    """Looked-up weights (stored per key, flips as reversed outputs) equal the per-sample formula, across
    batches that add keys, widen the taps and restart a full table."""
    rng, size = np.random.default_rng(6), 12
    for weights in (gpu_augment.PassWeights(), gpu_augment.PassWeights(max_keys=40)):
        for _ in range(4):
            args = _pass_inputs(rng, 16, size)
            rows, cols = int(args[0].max()) + 3, int(args[1].max())
            got = weights.passes(*args, size, rows, cols, torch.device("cpu"), torch.float32)
            want = _direct_passes(*args, size, rows, cols)
            for g, w in zip(got, want):
                assert g.shape == w.shape
                torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
        table = next(iter(weights._tables.values()))
        assert 0 < len(table["index"]) <= weights.max_keys


def test_resampling_with_stored_weights_equals_computing_them_afresh():
    rng = np.random.default_rng(7)
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
              for h, w in rng.integers(8, 60, (10, 2))]
    boxes = gpu_augment.crop_boxes(*gpu_augment._sizes(images), gpu_augment.uniforms(range(10), 0, 40), (0.08, 1.0),
                                   (3 / 4, 4 / 3))
    n = len(images)
    args = (boxes, np.full((n, 2), 16), np.zeros((n, 2)), rng.integers(0, 6, n), np.arange(n) % 2, 16)
    weights = gpu_augment.PassWeights()
    for _ in range(2):  # the second batch finds every key stored; a new table computes every key again
        assert torch.equal(gpu_augment.resample(images, *args, weights=weights), gpu_augment.resample(images, *args))
    distinct = len({key for key in zip(boxes[:, 2], args[3])} | {key for key in zip(boxes[:, 3], args[3])})
    assert weights.looked_up == 2 * 2 * n and weights.computed == distinct  # the second batch: lookups only


def test_uniforms_are_a_function_of_seed_and_stream_only():
    a = gpu_augment.uniforms([5, 6, 7], 1, 4)
    assert np.array_equal(a[1:], gpu_augment.uniforms([6, 7], 1, 4))
    assert not np.array_equal(a, gpu_augment.uniforms([5, 6, 7], 2, 4))
    assert (a >= 0).all() and (a < 1).all()


@pytest.fixture(scope="module")
def picture():
    image = _picture(np.random.default_rng(1), 48, 48)
    return image, torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float()


@pytest.mark.parametrize("name,arg", [("AutoContrast", 0), ("Equalize", 0), ("Invert", 0), ("PosterizeIncreasing", 2),
                                      ("SolarizeIncreasing", 100), ("SolarizeAdd", 60), ("ColorIncreasing", 1.6),
                                      ("ContrastIncreasing", 0.4), ("BrightnessIncreasing", 1.5),
                                      ("SharpnessIncreasing", 1.8)])
def test_colour_ops_match_timms_pil_ops(picture, name, arg):
    from timm.data.auto_augment import NAME_TO_OP
    image, x = picture
    args = () if arg == 0 else ((int(arg),) if name.startswith(("Posterize", "Solarize")) else (arg,))
    expected = np.asarray(NAME_TO_OP[name](image, *args, fillcolor=(124, 116, 104), resample=Image.BICUBIC))
    got = gpu_augment._color_op(name, x.clone(), torch.tensor([float(arg)]))[0].permute(1, 2, 0).numpy()
    assert np.abs(got - expected).max() <= 1.5  # PIL rounds to uint8 in between


def test_sharpen_base_is_pils_smooth_filter_inside_the_border():
    x = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (5, 3, 9, 11))).float()
    got = gpu_augment._sharpen_base(x).double()
    ref = x.double().clone()
    window = sum(x.double()[..., i:i + 7, j:j + 9] for i in range(3) for j in range(3))
    ref[..., 1:-1, 1:-1] = (window + 4 * x.double()[..., 1:-1, 1:-1]) / 13
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    assert torch.equal(got[..., 0, :], x.double()[..., 0, :]) and torch.equal(got[..., :, -1], x.double()[..., :, -1])


@pytest.mark.parametrize("name,arg", [("Rotate", 20.0), ("ShearX", 0.2), ("ShearY", -0.2), ("TranslateXRel", 0.2),
                                      ("TranslateYRel", -0.1)])
def test_geometric_ops_match_timms_pil_ops(picture, name, arg):
    from timm.data.auto_augment import NAME_TO_OP
    image, x = picture
    expected = np.asarray(NAME_TO_OP[name](image, arg, fillcolor=(124, 116, 104), resample=Image.BICUBIC))
    ra = gpu_augment.DeviceRandAugment("rand-m9-n1-inc1")
    theta = torch.from_numpy(gpu_augment._affine(name, np.array([arg])))
    got = ra._warp(x.clone(), torch.tensor([0]), theta)[0]
    diff = np.abs(got.permute(1, 2, 0).numpy() - expected)
    assert diff.mean() < 2.5 and np.median(diff) < 1.0  # edges of the filled area differ by a pixel


def test_randaugment_choices_follow_the_timm_string():
    ra = gpu_augment.DeviceRandAugment("rand-m7-n2-mstd0-inc1")
    which, applied, level, _ = ra.choices(list(range(4000)))
    assert which.shape == (4000, 2) and set(np.unique(which)) == set(range(len(ra.ops)))
    assert 0.45 < applied.mean() < 0.55 and np.allclose(level, 0.7)  # timm's p=0.5, m=7 without noise
    with pytest.raises(ConfigError, match="randaugment.*GaussianBlur"):
        gpu_augment.DeviceRandAugment("rand-m9-n2-t3a")


def test_random_erasing_zeroes_one_box_per_chosen_image():
    x = torch.ones(64, 3, 32, 32)
    out = gpu_augment.erase(x.clone(), list(range(64)), prob=0.5)
    erased = (out == 0).all(1).float().mean((1, 2))
    chosen = erased > 0
    assert 0.3 < chosen.float().mean() < 0.7
    assert erased[chosen].min() > 0.01 and erased[chosen].max() < 0.36  # timm's 2 % .. 1/3 of the area


# ------------------------------------------------------------------------------------------ training with it
def test_the_engine_trains_through_the_device_loader(data, monkeypatch):
    monkeypatch.setattr(gpu_decode, "device_decodes_jpeg", lambda device: True)  # the CPU stands in for a GPU
    recipe = load_recipe("b1", epochs=1, warmup_epochs=0, batch_size=4, resolutions=[16], eval_resolution=16,
                         val_per_class=2, bn_reestimate_images=8, eval_batch_size=4, workers=1, log_every=0,
                         save_every_steps=0, auto_restart=None, reprob=0.25)
    prepared = engine.prepare_data(data, recipe)
    setup = engine.build(TINY, prepared, recipe, engine.resolve_runtime(recipe, DistInfo()), None)
    assert all(isinstance(lo, DeviceFolderLoader) for lo in (setup.loaders.train, setup.loaders.val, setup.loaders.bn))
    assert isinstance(setup.loaders.val.transform, DeviceEvalTransform)
    assert setup.loaders.train.transform.kernel == setup.loaders.val.transform.kernel == "taps"
    result = engine.run(TINY, prepared, recipe, DistInfo())
    assert result.steps == len(prepared.train) // 4 and result.top1 is not None
    cpu = engine.build(TINY, prepared, recipe.replace(loader="cpu"), engine.resolve_runtime(recipe, DistInfo()), None)
    assert isinstance(cpu.loaders.train, FolderLoader)
    spread = recipe.replace(loader_processes=3, gpu_resample="matmul")  # processes start with the first epoch
    spread = engine.build(TINY, prepared, spread, engine.resolve_runtime(spread, DistInfo()), None)
    assert spread.loaders.train.processes == 3 and spread.loaders.val.processes == 1
    assert spread.loaders.train.transform.kernel == spread.loaders.val.transform.kernel == "matmul"


_RANK_SCRIPT = textwrap.dedent("""
    import sys, torch
    import torch.distributed as dist
    from lowspace.data import BatchPlan, DeviceFolderLoader, DeviceTrainTransform, scan_folders
    from lowspace.train import distributed
    info = distributed.setup("cpu")
    assert dist.get_backend() == "gloo"
    data = scan_folders(sys.argv[1])
    plan = BatchPlan(len(data.train), 3, info.world_size, info.rank, seed=3)
    loader = DeviceFolderLoader(data.train, plan, info.device, 24,
                                DeviceTrainTransform(randaugment="rand-m9-n2-mstd1.0-inc1", reprob=0.25), workers=2)
    mine = [(x, y) for x, y in loader.epoch(1)]
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, mine)
    if info.rank == 0:
        torch.save(gathered, sys.argv[2])
    distributed.teardown(info)
""")


@pytest.mark.slow
def test_two_ranks_on_gloo_decode_their_own_rows_of_each_global_batch(data, folder, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(folder), str(tmp_path / "ranks.pt")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = torch.load(tmp_path / "ranks.pt")
    single = list(train_loader(data, batch=6, seed=3).epoch(1))  # one process, the global batch of 2 x 3
    assert len(single) == len(ranks[0]) == len(ranks[1])
    for (x, y), (x0, y0), (x1, y1) in zip(single, ranks[0], ranks[1]):
        assert torch.equal(y, torch.cat([y0, y1]))
        assert torch.allclose(x, torch.cat([x0, x1]), atol=1e-5)


@pytest.mark.gpu
def test_on_a_gpu_nvjpeg_batches_match_the_cpu_decoder_and_repeat(data):
    assert choose_loader("auto", "folder", "cuda") == "gpu"
    plan = BatchPlan(len(data.val), 4, shuffle=False, drop_last=False)
    on_gpu = DeviceFolderLoader(data.val, plan, "cuda", 24, DeviceEvalTransform(), augment_seed=False)
    on_cpu = DeviceFolderLoader(data.val, plan, "cpu", 24, DeviceEvalTransform(), augment_seed=False)
    for (a, ya), (b, yb) in zip(on_gpu.epoch(0), on_cpu.epoch(0)):
        assert a.is_cuda and torch.equal(ya.cpu(), yb)
        assert (a.cpu() - b).abs().mean() < 0.03  # nvJPEG and libjpeg differ by a level or two
    loader = DeviceFolderLoader(data.train, BatchPlan(len(data.train), 6, seed=3), "cuda", 24,
                                DeviceTrainTransform(randaugment="rand-m9-n2-mstd1.0-inc1", reprob=0.25))
    first, again = list(loader.epoch(0)), list(loader.epoch(0))
    assert all(torch.allclose(a[0], b[0]) and torch.isfinite(a[0]).all() for a, b in zip(first, again))


@pytest.mark.gpu
def test_on_a_gpu_loader_processes_pass_the_single_process_batches_through_cuda_ipc(data):
    def loader(processes):
        return DeviceFolderLoader(data.train, BatchPlan(len(data.train), 3, seed=3), "cuda", 24,
                                  DeviceTrainTransform(randaugment="rand-m9-n2-mstd1.0-inc1", reprob=0.25),
                                  workers=2, processes=processes)
    one, two = loader(1), loader(2)
    try:
        for epoch in (0, 1):
            expected = [(x.clone(), y.clone()) for x, y in one.epoch(epoch)]
            got = [((x * 1).clone(), y.clone()) for x, y in two.epoch(epoch)]  # read on this process's stream
            assert len(got) == len(expected)
            for (x, y), (ex, ey) in zip(got, expected):
                assert x.is_cuda and torch.equal(y, ey) and torch.allclose(x, ex)
    finally:
        two.close()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, levels, share", [(torch.float32, 1, 0.01), (torch.float16, 2, 0.1)])
def test_on_a_gpu_the_taps_kernel_gives_the_matmul_batches_within_a_level(data, monkeypatch, dtype, levels, share):
    """With float32 weights both forms differ only where a sum lies within rounding of a half level. With the
    CUDA default, half-precision weights, the matrix form also rounds each pass's sums to fp16 (steps of an
    eighth of a level above 128; cuBLAS may reduce in half precision too) before rounding them to levels, and
    the kernel sums in float32: a few per cent of the pixels one level apart (4.5 % in the run at commit
    9af4bd6) and some two (the run at commit 6fbd08b)."""
    assert gpu_augment._resample_kernel.available("cuda")
    monkeypatch.setattr(gpu_augment, "_pass_dtype", lambda device: dtype)

    def batches(kernel):
        loader = DeviceFolderLoader(data.train, BatchPlan(len(data.train), 6, seed=3), "cuda", 24,
                                    DeviceTrainTransform(resample_kernel=kernel), augment_seed=True)
        return [x for x, _ in loader.epoch(0)]
    level = 1 / (255 * min(IMAGENET_STD))  # the largest step of one pixel level after normalization
    tf32 = torch.backends.cuda.matmul.allow_tf32  # a property of torch's module: monkeypatch cannot restore it
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        pairs = list(zip(batches("taps"), batches("matmul")))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    for taps, matmul in pairs:
        apart = (taps - matmul).abs()
        assert apart.max() <= 1.01 * levels * level and (apart > level / 2).float().mean() < share


@pytest.mark.slow
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("out", ["*u8", "*fp32"])
def test_the_taps_kernel_compiles_for_hopper_without_spilling(axis, out):
    pytest.importorskip("triton")
    from helpers import hopper_spills
    kernel = gpu_augment._resample_kernel
    ints = ("taps", "size", "swn", "sws", "sfn", "osn", "osc", "osy", "osx")
    signature = {"src_ptr": "*u8", "layout_ptr": "*i64", "w_ptr": "*fp16", "first_ptr": "*i32", "out_ptr": out,
                 **dict.fromkeys(ints, "i32"), **dict.fromkeys(("AXIS", "BLOCK_O", "BLOCK_S"), "constexpr")}
    constexprs = dict(AXIS=axis, BLOCK_O=kernel.BLOCK_OTHER, BLOCK_S=kernel.BLOCK_SIZE)
    assert hopper_spills(kernel._tap_pass_kernel, signature, constexprs, warps=4) == 0


def test_a_skip_recorded_while_a_batch_is_sent_reaches_the_training_process():
    import queue as queue_module
    import threading
    from types import SimpleNamespace

    from lowspace.data._processes import _serve

    class RacingList(list):  # the decode thread records a skip just after a batch's skips were read
        def __getitem__(self, index):
            out = super().__getitem__(index)
            if isinstance(index, slice) and len(self) == 1:
                self.append("b.jpg")
            return out
    skipped = RacingList(["a.jpg"])
    loader = SimpleNamespace(skipped=skipped, epoch=lambda epoch, start, part: iter([(1, 1), (2, 2)]))
    commands, results = queue_module.Queue(), queue_module.Queue()
    commands.put((0, 0))
    commands.put(None)
    _serve(0, 1, lambda: loader, commands, results, threading.Event())
    items = [results.get_nowait() for _ in range(3)]
    assert [item[3] for item in items[:2]] == [["a.jpg"], ["b.jpg"]] and items[2] == ("done",)
