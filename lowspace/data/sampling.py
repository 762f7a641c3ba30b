"""How an epoch is cut into batches: one plan shared by the GPU tensor loader and the class-folder loader.

Every random choice of the data pipeline is a pure function of ``(seed, epoch, position)``: the sample
order of an epoch, the resolution of each micro-batch and the augmentation of each sample. So a run
resumed in the middle of an epoch sees exactly the batches it would have seen, and ``W`` processes with
a per-process batch ``B`` see, together, exactly the images of the global batches of one process with batch
``W * B`` (rank ``r`` takes rows ``[r*B, (r+1)*B)`` of every global micro-batch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (a splitmix64-style hash): stable across runs, processes and platforms."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (int(p) & _MASK64)) * 0xBF58476D1CE4E5B9) & _MASK64
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 29
    return h & ((1 << 63) - 1)


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`mix_seed` of ``parts``."""
    g = torch.Generator()
    g.manual_seed(mix_seed(*parts))
    return g


@dataclass(frozen=True)
class BatchPlan:
    """The micro-batches one process reads in an epoch.

    Args:
        num_samples: size of the split.
        batch_size: images per micro-batch on this process.
        world_size, rank: data-parallel processes and this one's index.
        accumulation: micro-batches per optimizer step (gradient accumulation).
        shuffle: a fresh seeded permutation every epoch (else the natural order).
        drop_last: drop the incomplete last optimizer step (training); otherwise the last global
            micro-batch is short and may leave some ranks with fewer or smaller batches (evaluation).
        sizes: resolutions; one is drawn per micro-batch, identically on every rank (empty: fixed).
        seed: base seed.
    """

    num_samples: int
    batch_size: int
    world_size: int = 1
    rank: int = 0
    accumulation: int = 1
    shuffle: bool = True
    drop_last: bool = True
    sizes: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if self.batch_size < 1 or self.world_size < 1 or self.accumulation < 1:
            raise ValueError("batch_size, world_size and accumulation must be >= 1")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside 0..{self.world_size - 1}")

    @property
    def global_batch(self) -> int:
        """Images per global micro-batch (all ranks)."""
        return self.batch_size * self.world_size

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch."""
        per_step = self.global_batch * self.accumulation
        return self.num_samples // per_step if self.drop_last else math.ceil(self.num_samples / per_step)

    @property
    def micro_steps(self) -> int:
        """Micro-batches per epoch (on every rank; with ``drop_last=False`` some may be empty)."""
        if self.drop_last:
            return self.steps * self.accumulation
        return math.ceil(self.num_samples / self.global_batch)

    @property
    def samples_per_epoch(self) -> int:
        """Samples used per epoch, all ranks together."""
        return min(self.num_samples, self.micro_steps * self.global_batch)

    def order(self, epoch: int) -> torch.Tensor:
        """The global sample order of ``epoch`` (CPU int64)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        return torch.randperm(self.num_samples, generator=seeded_generator(self.seed, 1, epoch))

    def micro_sizes(self, epoch: int) -> list[int]:
        """The resolution of every micro-batch of ``epoch`` (empty when ``sizes`` is): one draw per micro-batch,
        as the official trainer, identical on every rank."""
        if not self.sizes:
            return []
        if len(self.sizes) == 1:
            return [self.sizes[0]] * max(self.micro_steps, 1)
        g = seeded_generator(self.seed, 2, epoch)
        pick = torch.randint(len(self.sizes), (max(self.micro_steps, 1),), generator=g)
        return [self.sizes[i] for i in pick.tolist()]

    def rows(self, micro_step: int) -> tuple[int, int]:
        """[lo, hi) positions in :meth:`order` of this rank's part of global micro-batch ``micro_step``."""
        lo = micro_step * self.global_batch + self.rank * self.batch_size
        hi = lo + self.batch_size
        limit = self.samples_per_epoch
        return min(lo, limit), min(hi, limit)


class PlannedLoader:
    """What every loader shares: an epoch of ``plan.micro_steps`` micro-batches, ``plan.steps`` optimizer
    steps. Subclasses set ``self.plan`` and implement ``epoch(epoch, start)``."""

    plan: BatchPlan

    def __len__(self) -> int:
        return self.plan.micro_steps

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps
