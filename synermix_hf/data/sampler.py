"""The class-balanced batch sampler of SynerMix.

Shuffle the indices, cut them into batches of `batch_size`, then give every class that appears exactly once in a
batch one more random member of that class. Each epoch is drawn from a generator seeded by `(seed, epoch)`, so every
process builds the same sequence of batches and a resumed run sees the batches it would have seen.

Under data parallelism one step trains on one such batch, split into as many shards as there are processes
(`StepShards`): the N processes together see the batch one process would see, and the trainer computes the
intra-class term over the whole step's batch (`synermix_hf.distributed.gather_step_batch`), as the reference does on
its one GPU.

`PositionedBatchSampler` tags every index with its position in the epoch's sequence of examples, so that the
augmentation can be drawn per appearance (a partner loaded twice in an epoch is augmented twice, independently).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

__all__ = ["ClassBalancedBatchSampler", "PositionedBatchSampler", "StepShards"]


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of `batch_size` shuffled indices, plus one partner for every class seen only once in the batch.

    Batches are therefore slightly larger than `batch_size` and every class present has at least two members (unless
    the whole dataset holds a single example of it). Use it as a DataLoader's `batch_sampler`. On several processes,
    give `batch_size` the batch of the whole step and split it with `StepShards`.

    Args:
        labels: The class label of every example of the dataset, in dataset order.
        batch_size: Number of shuffled indices per batch before partners are added.
        seed: Base seed; epoch `e` is drawn from a generator seeded by `(seed, e)`.
        drop_last: Drop the last incomplete batch (as the reference does). If False it is yielded, balanced too.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1:
            raise ValueError(f"labels must be one label per example, got shape {self.labels.shape}.")
        if len(self.labels) < batch_size and drop_last:
            raise ValueError(
                f"The training set has {len(self.labels)} examples, fewer than one batch of {batch_size}, and the "
                "class-balanced sampler drops incomplete batches: lower the batch of each process "
                "(`per_device_train_batch_size`, or the total `total_train_batch_size`), or set `balanced_sampler` "
                "False."
            )
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        classes, inverse = np.unique(self.labels, return_inverse=True)
        self._members = {int(c): np.flatnonzero(inverse == i) for i, c in enumerate(classes)}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches `__iter__` yields (called by the Trainer at each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        full, remainder = divmod(len(self.labels), self.batch_size)
        return full + (0 if self.drop_last or remainder == 0 else 1)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.labels))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = order[start : start + self.batch_size]
            yield batch.tolist() + self._partners(batch, rng)

    def _partners(self, batch: np.ndarray, rng: np.random.Generator) -> list[int]:
        classes, counts = np.unique(self.labels[batch], return_counts=True)
        partners = []
        for single in classes[counts == 1]:
            candidates = np.setdiff1d(self._members[int(single)], batch, assume_unique=True)
            if len(candidates):
                partners.append(int(rng.choice(candidates)))
        return partners


class _BatchSamplerWrapper(Sampler):
    """Passes `drop_last` and `set_epoch` through to the wrapped batch sampler."""

    batch_sampler: Iterable[list[int]]

    @property
    def drop_last(self) -> bool:
        return bool(getattr(self.batch_sampler, "drop_last", False))

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)


class StepShards(_BatchSamplerWrapper):
    """Split every batch of `batch_sampler` into `num_shards` consecutive shards of (nearly) equal size.

    accelerate hands the batches of a DataLoader's batch sampler to the processes in turn (batch `i` to process
    `i mod N`), so with `num_shards = N` process `r` trains on shard `r` of every batch: the processes together train
    on the batches one process would train on, in the same order. Shards differ in size by at most one example (a
    balanced batch has its partners on top of `batch_size`).

    Args:
        batch_sampler: Yields lists of dataset indices, e.g. `ClassBalancedBatchSampler` with the step's batch size.
        num_shards: Number of processes.
    """

    def __init__(self, batch_sampler: Iterable[list[int]], num_shards: int):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
        self.batch_sampler = batch_sampler
        self.num_shards = num_shards

    @property
    def batch_size(self) -> Any:
        # The nominal size of a shard; accelerate (before 1.10) refuses a batch sampler without one unless told that
        # batches may differ in size, which the trainer tells its shard after `prepare`.
        size = getattr(self.batch_sampler, "batch_size", None)
        return None if size is None else max(1, size // self.num_shards)

    def __len__(self) -> int:
        return len(self.batch_sampler) * self.num_shards

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            for shard in np.array_split(np.asarray(batch, dtype=np.int64), self.num_shards):
                yield shard.tolist()


class PositionedBatchSampler(_BatchSamplerWrapper):
    """Yield the batches of `batch_sampler` as `(index, position)` pairs, numbering the epoch's examples from 0.

    Wrap the common sequence of batches before it is split across processes (accelerate shards the wrapper), so a
    position names the same appearance on any number of processes and after a resume, which replays the epoch's
    batches from its start. `SeededAugmentation` keys each example's augmentation by its position.

    Args:
        batch_sampler: Yields lists of dataset indices, e.g. `ClassBalancedBatchSampler`. Its `batch_size`,
            `drop_last` and `set_epoch` are passed through.
    """

    def __init__(self, batch_sampler: Iterable[list[int]]):
        self.batch_sampler = batch_sampler

    @property
    def batch_size(self) -> Any:
        return getattr(self.batch_sampler, "batch_size", None)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position = 0
        for batch in self.batch_sampler:
            yield [(int(index), position + offset) for offset, index in enumerate(batch)]
            position += len(batch)
