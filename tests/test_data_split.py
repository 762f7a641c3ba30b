"""The held-out validation split: proxy training and the search validate on training images, never on a test
image; the split is class-balanced, seeded and recorded."""
import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lowspace import ConfigError
from lowspace.data import default_val_per_class, get_dataset, hold_out, holdout_indices
from lowspace.train import proxy_recipe, train_proxy
from lowspace.train import proxy as proxy_module
from lowspace.train.engine import prepare_data

CLASSES = ("ant", "bee", "cat")
TINY = dict(name="tiny", resolution=16, stem=dict(width=8), stages=[dict(width=16, depth=1)], head=dict(widths=[16]))


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def write_tagged_fmnist(root: Path, n_train=300, n_test=100) -> Path:
    """Fashion-MNIST IDX files whose images carry their identity: pixel (0, 0) is 1 for a training image and
    2 for a test image, pixels (0, 1) and (0, 2) its index."""
    root.mkdir(parents=True)
    for prefix, n, tag in (("train", n_train, 1), ("t10k", n_test, 2)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = tag
        images[:, 0, 1], images[:, 0, 2] = np.arange(n) // 256, np.arange(n) % 256
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(images))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(np.arange(n) % 10))
    return root


def identities(split) -> list[tuple[int, int]]:
    """(tag, index) of every image of a tensor split."""
    pixels = split.images[:, 0, 0, :3].long()
    return [(tag, hi * 256 + lo) for tag, hi, lo in pixels.tolist()]


def proxy_data(monkeypatch, data, recipe):
    """The prepared data the proxy trains and evaluates on (the engine's run() is stopped before training)."""
    seen = {}

    def capture(model, prepared, *args, **kwargs):
        seen["data"] = prepared
        raise KeyboardInterrupt
    monkeypatch.setattr(proxy_module, "run", capture)
    with pytest.raises(KeyboardInterrupt):
        train_proxy(TINY, data, recipe, "cpu")
    return seen["data"]


def test_no_test_image_in_the_proxy_split_of_fashion_mnist_files(tmp_path, monkeypatch):
    root = write_tagged_fmnist(tmp_path / "fm")
    data = proxy_data(monkeypatch, str(root), dict(val_per_class=5, train_per_class=20))
    train, val = identities(data.train), identities(data.val)
    assert {tag for tag, _ in train + val} == {1}  # training images only: no test image anywhere
    assert not set(train) & set(val)
    assert np.bincount(data.val.labels.numpy()).tolist() == [5] * 10
    assert np.bincount(data.train.labels.numpy()).tolist() == [20] * 10
    record = data.info["validation"]
    assert (record["val_images"], record["val_counts"], record["seed"]) == (50, [5] * 10, 0)
    # the search loads its data through the same split: the same images, the same record
    from lowspace.search.trial import _load_data
    searched = _load_data({"dataset": str(root)}, proxy_recipe(dict(val_per_class=5)), "cpu")
    assert searched.info["validation"] == record and identities(searched.val) == val
    assert len(searched.train) + len(searched.val) == 300


def make_folders(root: Path, train=6, test=3) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", test)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray((rng.random((12, 12, 3)) * 255).astype(np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_no_test_image_in_the_proxy_split_of_class_folders(tmp_path, monkeypatch):
    root = make_folders(tmp_path / "images")
    data = proxy_data(monkeypatch, str(root), dict(val_per_class=2, materialize=False, workers=0))
    train = [Path(p) for p, _ in data.train.samples]
    val = [Path(p) for p, _ in data.val.samples]
    assert all(p.parent.parent == root / "train" for p in train + val)  # nothing from val/, the test split
    assert not set(train) & set(val) and len(train) + len(val) == 18
    assert sorted(label for _, label in data.val.samples) == [0, 0, 1, 1, 2, 2]
    # decoded into tensors for the fast proxy: the same counts
    decoded = proxy_data(monkeypatch, str(root), dict(val_per_class=2, workers=0))
    assert (len(decoded.train), len(decoded.val)) == (12, 6) and decoded.kind == "tensor"


def test_the_test_split_is_read_only_when_asked(tmp_path):
    root = write_tagged_fmnist(tmp_path / "fm")
    data = prepare_data(str(root), proxy_recipe(dict(eval_split="test")))
    assert {tag for tag, _ in identities(data.val)} == {2} and len(data.train) == 300
    assert "validation" not in data.info
    held = prepare_data(str(root), proxy_recipe())
    again = prepare_data(held, proxy_recipe())  # preparing twice changes nothing
    assert identities(again.val) == identities(held.val) and identities(again.train) == identities(held.train)
    with pytest.raises(ConfigError, match="recipe.eval_split"):
        prepare_data(held, proxy_recipe(dict(eval_split="test")))


def test_split_is_balanced_seeded_and_recorded():
    labels = [c for c in range(4) for _ in range(30 + 10 * c)]  # classes of 30, 40, 50 and 60 images
    split = holdout_indices(labels, 4, per_class=7, seed=3)
    assert [sum(labels[i] == c for i in split.val) for c in range(4)] == [7, 7, 7, 7] == split.record["val_counts"]
    assert sorted(split.train + split.val) == list(range(len(labels))) and not set(split.train) & set(split.val)
    again = holdout_indices(labels, 4, per_class=7, seed=3)
    assert again.val == split.val and again.record == split.record
    other = holdout_indices(labels, 4, per_class=7, seed=4)
    assert other.val != split.val and other.record["indices_sha256"] != split.record["indices_sha256"]
    share = holdout_indices(labels, 4, fraction=0.1, seed=3)
    assert share.record["val_counts"] == [3, 4, 5, 6]


def test_default_size_is_a_tenth_of_the_smallest_class_at_most_500():
    assert default_val_per_class([6000] * 10) == 500  # Fashion-MNIST: 5,000 validation images
    assert default_val_per_class([1300, 732]) == 73
    assert default_val_per_class([8, 0, 40]) == 1


def test_too_large_a_split_names_the_class():
    data = get_dataset("synthetic", num_classes=3, train_size=30, val_size=6)
    with pytest.raises(ConfigError, match="val_per_class: got 10; holds out 10 of the 10 training images of class"):
        hold_out(data, per_class=10)
    with pytest.raises(ConfigError, match="not both"):
        hold_out(data, per_class=2, fraction=0.5)


def test_split_does_not_depend_on_class_subset_or_training_cap(tmp_path):
    root = write_tagged_fmnist(tmp_path / "fm")
    full = prepare_data(str(root), proxy_recipe(dict(val_per_class=4)))
    part = prepare_data(str(root), proxy_recipe(dict(val_per_class=4, classes=["T-shirt/top", "Bag"],
                                                     train_per_class=5)))
    kept = {0, 8}
    assert identities(part.val) == [i for i, y in zip(identities(full.val), full.val.labels.tolist()) if y in kept]
    assert len(part.train) == 10 and not set(identities(part.train)) & set(identities(part.val))


def _search(tmp_path, root, name, **proxy):
    """A search on ``root`` with fake latency and training but the real data loading and split."""
    import dataclasses

    import search_fakes
    from lowspace.search import run_search
    from lowspace.search import trial as trial_module
    from lowspace.search.settings import SearchConfig
    engines = dataclasses.replace(search_fakes.fake_engines(), make_schedule=trial_module._make_schedule,
                                  load_data=trial_module._load_data)
    config = SearchConfig.from_dict(dict(space="demo", n_trials=1, presets=False, study_name=name,
                                         storage=f"sqlite:///{tmp_path / 's.db'}", proxy=dict(epochs=2, **proxy),
                                         data={"dataset": str(root)}, early_stopping={"kind": "none"}))
    return run_search(config, engines=engines)


def test_a_study_records_its_split_and_a_study_from_before_warns(tmp_path):
    import warnings

    import optuna

    from lowspace.search.storage import load_study
    root = write_tagged_fmnist(tmp_path / "fm")
    _search(tmp_path, root, "new", val_per_class=5, split_seed=3)
    study = load_study(tmp_path / "s.db", "new")
    recorded = study.user_attrs["validation_split"]
    expected = hold_out(get_dataset(str(root)), 5, seed=3).info["validation"]
    assert (recorded["split"], recorded["val_per_class"], recorded["seed"]) == ("holdout", 5, 3)
    assert recorded["indices_sha256"] == expected["indices_sha256"] and recorded["val_counts"] == [5] * 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _search(tmp_path, root, "new", val_per_class=5, split_seed=3)  # resumed: no note
    assert not [w for w in caught if "held out" in str(w.message)]
    # a study made before held-out validation: no split recorded, no split fields in its proxy
    old = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="old",
                              directions=study.directions)
    for key, value in study.user_attrs.items():
        if key == "proxy_resolved":
            value = {k: v for k, v in value.items() if k not in ("split_seed", "eval_split")}
        if key != "validation_split":
            old.set_user_attr(key, value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _search(tmp_path, root, "old", val_per_class=5, split_seed=3)
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert [n for n in notes if "was made before lowspace held out validation images" in n] and \
        not [n for n in notes if "recorded no proxy" in n]


def test_the_search_refuses_to_validate_on_the_test_split(tmp_path):
    root = write_tagged_fmnist(tmp_path / "fm")
    with pytest.raises(ConfigError, match="proxy.eval_split: got 'test'"):
        _search(tmp_path, root, "t", eval_split="test")
