"""The class-balanced batch sampler of SynerMix.

Shuffle the indices, cut them into batches of `batch_size`, then give every class that appears exactly once in a
batch one more random member of that class. Each epoch is drawn from a generator seeded by `(seed, epoch)`, so every
process builds the same sequence of batches and a resumed run sees the batches it would have seen.

Under data parallelism each process takes whole batches of that sequence in turn (accelerate hands batch `i` to
process `i mod N`), so the `N` consecutive batches of a group are trained on together in one step. With
`group_size=N` a partner is drawn from the class members in no batch of its group, so no example appears twice in one
step, as in a one-process batch.

`PositionedBatchSampler` tags every index with its position in the epoch's sequence of examples, so that the
augmentation can be drawn per appearance (a partner loaded twice in an epoch is augmented twice, independently).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

__all__ = ["ClassBalancedBatchSampler", "PositionedBatchSampler"]


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of `batch_size` shuffled indices, plus one partner for every class seen only once in the batch.

    Batches are therefore slightly larger than `batch_size` and every class present has at least two members (unless
    the whole dataset holds a single example of it). Use it as a DataLoader's `batch_sampler`. With accelerate, each
    process takes whole batches from the common sequence: every process's batch is balanced on its own.

    Args:
        labels: The class label of every example of the dataset, in dataset order.
        batch_size: Number of shuffled indices per batch before partners are added.
        seed: Base seed; epoch `e` is drawn from a generator seeded by `(seed, e)`.
        drop_last: Drop the last incomplete batch (as the reference does). If False it is yielded, balanced too.
        group_size: Number of consecutive batches trained on together in one step: the number of processes, each
            taking one batch of the group. A partner is drawn from the members of its class that are in no batch of
            the group and no partner serves two batches of it, so no example appears twice in one step; only when a
            class has no such member left is the partner drawn from the members outside its own batch (which then
            appears twice in the step). With 1 (one process) the rule is the reference's: a member not in the batch.
    """

    def __init__(
        self, labels: Sequence[int], batch_size: int, seed: int = 0, drop_last: bool = True, group_size: int = 1
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}.")
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1:
            raise ValueError(f"labels must be one label per example, got shape {self.labels.shape}.")
        if len(self.labels) < batch_size and drop_last:
            raise ValueError(
                f"The dataset has {len(self.labels)} examples, fewer than one batch of {batch_size}; lower the batch "
                "size."
            )
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.group_size = group_size
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
        batches = [order[start : start + self.batch_size] for start in range(0, len(self) * self.batch_size,
                                                                           self.batch_size)]
        in_step = np.zeros(len(self.labels), dtype=bool)  # the examples of the group's batches, partners included
        for first in range(0, len(batches), self.group_size):
            group = batches[first : first + self.group_size]
            taken = list(group)
            for batch in group:
                in_step[batch] = True
            for batch in group:
                partners = self._partners(batch, rng, in_step)
                in_step[partners] = True
                taken.append(np.asarray(partners, dtype=np.int64))
                yield batch.tolist() + partners
            in_step[np.concatenate(taken)] = False  # only what was set: an epoch stays linear in the dataset size

    def _partners(self, batch: np.ndarray, rng: np.random.Generator, in_step: np.ndarray) -> list[int]:
        classes, counts = np.unique(self.labels[batch], return_counts=True)
        partners = []
        for single in classes[counts == 1]:
            members = self._members[int(single)]
            candidates = members[~in_step[members]]
            if not len(candidates):  # every other member is in the step already: one outside this batch, then
                candidates = np.setdiff1d(members, batch, assume_unique=True)
            if len(candidates):
                partners.append(int(rng.choice(candidates)))
        return partners


class PositionedBatchSampler(Sampler[list[tuple[int, int]]]):
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

    @property
    def drop_last(self) -> bool:
        return bool(getattr(self.batch_sampler, "drop_last", False))

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position = 0
        for batch in self.batch_sampler:
            yield [(int(index), position + offset) for offset, index in enumerate(batch)]
            position += len(batch)
