"""Batch plans (ranks x accumulation partition the global batch) and the device-side tensor loader."""
import pytest
import torch

from lowspace.data import Augment, BatchPlan, DataError, TensorLoader, TensorSplit, get_dataset, make_synthetic
from lowspace.data.tensors import sample_affine


def test_ranks_and_accumulation_partition_the_global_batch():
    single = BatchPlan(50, 8, accumulation=2, seed=1)  # 16 images per optimizer step
    ranks = [BatchPlan(50, 8, world_size=2, rank=r, seed=1) for r in range(2)]
    assert single.steps == ranks[0].steps == 3
    order = single.order(4)
    assert torch.equal(order, ranks[1].order(4))
    for step in range(3):
        one = [order[slice(*single.rows(2 * step + m))] for m in range(2)]
        two = [order[slice(*p.rows(step))] for p in ranks]
        assert all(torch.equal(a, b) for a, b in zip(one, two))
    used = torch.cat([order[slice(*single.rows(m))] for m in range(single.micro_steps)])
    assert len(set(used.tolist())) == 48  # no repeats, drop_last drops 2
    assert not torch.equal(single.order(0), single.order(1))


def test_eval_plan_covers_everything_once():
    plans = [BatchPlan(23, 4, world_size=3, rank=r, shuffle=False, drop_last=False) for r in range(3)]
    seen = [i for p in plans for m in range(p.micro_steps) for i in range(*p.rows(m))]
    assert sorted(seen) == list(range(23))


def test_resolution_drawn_per_micro_batch_shared_and_seeded():
    plan = BatchPlan(100, 10, sizes=(16, 24, 32), seed=0)
    sizes = plan.micro_sizes(0)
    assert len(sizes) == plan.micro_steps and set(sizes) <= {16, 24, 32} and len(set(sizes)) > 1
    assert sizes == BatchPlan(100, 5, world_size=2, rank=1, sizes=(16, 24, 32), seed=0).micro_sizes(0)
    # under accumulation every micro-batch draws its own size, as the official trainer
    accumulated = BatchPlan(64, 4, accumulation=4, sizes=(8, 12), seed=1)
    data = make_synthetic(num_classes=2, train_size=64, image_size=8)
    loader = TensorLoader(data.train, accumulated, "cpu", 12, data.mean, data.std)
    seen = [x.shape[-1] for x, _ in loader.epoch(0)]
    assert seen == accumulated.micro_sizes(0) and len(seen) == 16
    assert any(len(set(seen[i:i + 4])) > 1 for i in range(0, 16, 4))  # sizes differ within an optimizer step


def test_identity_render_and_normalization():
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    split = TensorSplit(images, torch.arange(6))
    loader = TensorLoader(split, BatchPlan(6, 3, shuffle=False, drop_last=False), "cpu", 8, (0.5,), (0.25,))
    (x, y), _ = list(loader.epoch(0))
    assert torch.equal(y, torch.tensor([0, 1, 2]))
    assert torch.allclose(x, (images[:3].float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_augmentation_flip_translate_resize_channels():
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    images[:, :, :, :4] = 255  # left half white
    split = TensorSplit(images, torch.tensor([0, 1]))
    flip = Augment(hflip=1.0)
    loader = TensorLoader(split, BatchPlan(2, 2, seed=0), "cpu", 16, (0.0,), (1.0,), augment=flip, out_chans=3,
                          channels_last=True)
    (x, _), = list(loader.epoch(0))
    assert x.shape == (2, 3, 16, 16) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x[:, 0], x[:, 2])
    assert x[:, :, :, 12:].min() > 0.99 and x[:, :, :, :4].max() < 0.01  # flipped: white on the right
    theta = sample_affine(1000, Augment(hflip=0.0, translate=0.25), torch.Generator().manual_seed(0))
    shifts = theta[:, :, 2]
    assert shifts.abs().max() <= 0.5 + 1e-6 and shifts.abs().max() > 0.4  # up to 1/4 of the side (2 units)
    assert torch.equal(theta[:, 0, 0], torch.ones(1000))


def test_epochs_are_reproducible_and_differ():
    data = make_synthetic(num_classes=3, train_size=24, image_size=8)
    plan = BatchPlan(24, 8, seed=2)

    def epoch(e):
        loader = TensorLoader(data.train, plan, "cpu", 12, data.mean, data.std, augment=Augment(translate=0.1))
        return [x for x, _ in loader.epoch(e)]
    assert all(torch.equal(a, b) for a, b in zip(epoch(0), epoch(0)))
    assert not torch.equal(epoch(0)[0], epoch(1)[0])


def test_get_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        get_dataset(str(tmp_path / "missing"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="neither a class-folder root"):
        get_dataset(str(tmp_path / "plain"))
    with pytest.raises(DataError, match="only synthetic"):
        get_dataset(str(tmp_path / "plain"), num_classes=3)
    assert get_dataset("synthetic", num_classes=3, train_size=30).num_classes == 3
