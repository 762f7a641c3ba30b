"""Fashion-MNIST: our IDX reader (gzip and raw), clear errors for missing / corrupt files, subsets."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from lowspace.data import DataError, get_dataset, load_fashion_mnist, read_idx
from lowspace.data.fashion_mnist import DEFAULT_ROOT, FILES

HAVE_DEBIAN_FILES = (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file()


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes for a uint8 array (written independently of the reader under test)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fake_fmnist(root: Path, n_train=40, n_val=20, gz=True, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "val_images": rng.integers(0, 256, (n_val, 28, 28), dtype=np.uint8),
        "val_labels": (np.arange(n_val) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (root / (FILES[key] + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / FILES[key]).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_reader_round_trips_gzip_and_raw(tmp_path, gz):
    arrays = write_fake_fmnist(tmp_path / "fm", gz=gz)
    data = load_fashion_mnist(tmp_path / "fm")
    assert data.num_classes == 10 and data.in_chans == 1 and data.native_resolution == 28
    assert data.train.images.shape == (40, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert torch.equal(data.train.images[:, 0], torch.from_numpy(arrays["train_images"]))
    assert torch.equal(data.val.labels, torch.from_numpy(arrays["val_labels"].astype(np.int64)))
    # a directory of IDX files works as the data spec too
    assert len(get_dataset(str(tmp_path / "fm")).val) == 20


def test_missing_file_names_it(tmp_path):
    write_fake_fmnist(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path / "fm")
    with pytest.raises(DataError, match="does not exist"):
        load_fashion_mnist(tmp_path / "nowhere")


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-100], "truncated"),                   # payload cut short
    (lambda raw: b"\x12\x34" + raw[2:], "not an IDX file"),   # bad magic
])
def test_corrupt_idx_names_the_file(tmp_path, damage, message):
    write_fake_fmnist(tmp_path / "fm", gz=False)
    path = tmp_path / "fm" / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message) as err:
        load_fashion_mnist(tmp_path / "fm")
    assert str(path) in str(err.value)


def test_corrupt_gzip_names_the_file(tmp_path):
    write_fake_fmnist(tmp_path / "fm")
    path = tmp_path / "fm" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_label_count_mismatch(tmp_path):
    write_fake_fmnist(tmp_path / "fm", gz=False)
    (tmp_path / "fm" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(7, dtype=np.uint8)))
    with pytest.raises(DataError, match="40 images but .* 7 labels"):
        load_fashion_mnist(tmp_path / "fm")


def test_subset_is_balanced_seeded_and_relabelled(tmp_path):
    write_fake_fmnist(tmp_path / "fm", n_train=100, n_val=50)
    data = load_fashion_mnist(tmp_path / "fm")
    a = data.subset(classes=3, train_per_class=4, val_per_class=2, seed=5)
    b = data.subset(classes=3, train_per_class=4, val_per_class=2, seed=5)
    assert a.num_classes == 3 and len(a.train) == 12 and len(a.val) == 6
    assert a.classes == b.classes and torch.equal(a.train.images, b.train.images)
    assert sorted(set(a.train.labels.tolist())) == [0, 1, 2]
    named = data.subset(classes=["Bag", "Trouser"])
    assert named.classes == ("Trouser", "Bag")  # kept in data-set order
    with pytest.raises(DataError, match="unknown class"):
        data.subset(classes=["Hat"])
    with pytest.raises(DataError, match="allowed 1..10"):
        data.subset(classes=11)


@pytest.mark.skipif(not HAVE_DEBIAN_FILES, reason="Debian package dataset-fashion-mnist not installed")
def test_debian_package_files():
    data = get_dataset("fashion_mnist")
    assert len(data.train) == 60000 and len(data.val) == 10000
    assert data.train.labels.bincount().tolist() == [6000] * 10
    # the documented normalization matches the data
    mean = data.train.images.float().mean().item() / 255
    assert abs(mean - data.mean[0]) < 1e-3
