"""The class-balanced batch sampler of SynerMix.

Shuffle the indices, cut them into batches of `batch_size`, then give every class that appears exactly once in a
batch one more random member of that class. Each epoch is drawn from a generator seeded by `(seed, epoch)`, so every
process builds the same sequence of batches and a resumed run sees the batches it would have seen.

One optimizer update trains on one such batch, the batch of the whole step, however the step is split
(`SplitSteps`): over N processes and k gradient accumulation steps, the batch is cut into k micro-batches made of
whole classes, each cut into N shards, so the N processes over the k micro-steps see the batch one process would
see in one step. `split_step` says which rows of the step's batch each piece holds; the trainer reads it to compute
the intra-class term over each micro-batch's whole classes (gathered over the processes by
`synermix_hf.distributed.gather_step_batch`) with the weights one process would draw, and to weight each piece's
loss by its share of the step, as the reference computes it on its one GPU.

`PositionedBatchSampler` tags every index with its position in the epoch's sequence of examples, so that the
augmentation can be drawn per appearance (a partner loaded twice in an epoch is augmented twice, independently).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler

__all__ = ["ClassBalancedBatchSampler", "PositionedBatchSampler", "SplitSteps", "StepSplit", "split_step"]


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of `batch_size` shuffled indices, plus one partner for every class seen only once in the batch.

    Batches are therefore slightly larger than `batch_size` and every class present has at least two members (unless
    the whole dataset holds a single example of it). Use it as a DataLoader's `batch_sampler`. On several processes,
    give `batch_size` the batch of the whole step and split it with `SplitSteps`.

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
                f"The training set has {len(self.labels)} examples, fewer than one batch of {batch_size} (the batch of "
                "one update: of each process x processes x accumulation steps), and the class-balanced sampler drops "
                "incomplete batches: lower the batch of each process (`per_device_train_batch_size`, or the total "
                "`total_train_batch_size`) or `gradient_accumulation_steps`, or set `balanced_sampler` False."
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
        return iter(self.batches(self.epoch))

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of epoch `epoch`, whatever epoch is set (they depend on `(seed, epoch)` alone)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.labels))
        batches = []
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = order[start : start + self.batch_size]
            batches.append(batch.tolist() + self._partners(batch, rng))
        return batches

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


@dataclass(frozen=True)
class StepSplit:
    """Which rows of one step's batch each process trains on in each micro-step (`split_step`).

    Attributes:
        pieces: `pieces[m][r]`: the rows (numbers into the step's batch, ascending) that process `r` trains on in
            micro-step `m`.
        size: The rows of the step's batch.
        classes: The step's classes, each counted once per micro-batch that holds members of it: the number of
            classes of the step when `whole_classes`.
        whole_classes: Whether every class of the step has all its members in one micro-batch.
    """

    pieces: tuple[tuple[np.ndarray, ...], ...]
    size: int
    classes: int
    whole_classes: bool

    def example_share(self, micro_step: int, process: int) -> float:
        """The weight of the piece's mean loss over its examples, `pieces x rows / size`: the weighted means, averaged
        over the processes and the micro-steps as DDP and accumulation average them, are the step's mean."""
        pieces = len(self.pieces) * len(self.pieces[0])
        return pieces * len(self.pieces[micro_step][process]) / self.size

    def most_rows(self, micro_step: int) -> int:
        """The rows of the largest shard of micro-step `micro_step`."""
        return max(len(piece) for piece in self.pieces[micro_step])


def split_step(labels: Sequence[int] | np.ndarray, micro_batches: int, shards: int) -> StepSplit:
    """Split one step's batch into `micro_batches` micro-batches of whole classes, each into `shards` shards.

    The classes, largest first (ties: first seen in the batch), go one by one to the micro-batch that has the fewest
    rows so far (ties: the first), so micro-batches are nearly equal when classes are small against them; each keeps
    its rows in batch order and is cut into `shards` consecutive shards of nearly equal size (`np.array_split`). With
    one micro-batch that is the batch cut into consecutive shards. A step that cannot be split so (fewer classes than
    micro-batches, or a micro-batch with fewer rows than shards) is cut into consecutive micro-batches instead, and
    its classes cut between micro-batches are mixed within each micro-batch apart (`StepSplit.whole_classes` False).

    Args:
        labels: The label of every row of the step's batch, in batch order.
        micro_batches: Gradient accumulation steps.
        shards: Processes.
    """
    if micro_batches < 1 or shards < 1:
        raise ValueError(f"micro_batches and shards must be >= 1, got {micro_batches} and {shards}.")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) < micro_batches * shards:
        raise ValueError(f"A step of {len(labels)} rows cannot be split into {micro_batches} x {shards} pieces.")
    classes, first_row, inverse, counts = np.unique(labels, return_index=True, return_inverse=True,
                                                    return_counts=True)
    groups = _whole_class_groups(counts, first_row, micro_batches)
    whole = groups is not None
    if whole:
        micro = [np.flatnonzero(np.isin(inverse, group)) for group in groups]
        whole = min(len(rows) for rows in micro) >= shards
    if not whole:
        micro = np.array_split(np.arange(len(labels)), micro_batches)
    pieces = tuple(tuple(np.array_split(rows, shards)) for rows in micro)
    split_classes = sum(len(np.unique(labels[rows])) for rows in micro)
    return StepSplit(pieces, len(labels), split_classes, whole)


def _whole_class_groups(counts: np.ndarray, first_row: np.ndarray, groups: int) -> list[list[int]] | None:
    """The classes (as positions in `counts`) of each of `groups` groups, largest classes first to the smallest
    group; None when there are fewer classes than groups."""
    if len(counts) < groups:
        return None
    sizes = [0] * groups
    members: list[list[int]] = [[] for _ in range(groups)]
    for position in sorted(range(len(counts)), key=lambda c: (-counts[c], first_row[c])):
        target = min(range(groups), key=lambda g: (sizes[g], g))
        sizes[target] += int(counts[position])
        members[target].append(position)
    return members


class SplitSteps(_BatchSamplerWrapper):
    """The balanced batches of whole steps, each split into micro-batches x shards pieces (`split_step`).

    Yields, step after step, the pieces of micro-step 0 for processes 0..N-1, then of micro-step 1, and so on, as
    `(index, position)` pairs numbered as one process would number the step's batch (`PositionedBatchSampler`), so each
    example is augmented as one process without accumulation would augment it. accelerate hands batch `i` to process
    `i mod N` and the Trainer accumulates k consecutive batches of a process, so process `r` trains on piece
    `(m, r)` in micro-step `m` of each update: the update sees the one batch the sampler drew for it.

    Args:
        sampler: The balanced sampler, with the batch of the whole step (`total over processes and accumulation`).
        micro_batches: Gradient accumulation steps.
        shards: Processes.
    """

    def __init__(self, sampler: ClassBalancedBatchSampler, micro_batches: int, shards: int):
        if micro_batches < 1 or shards < 1:
            raise ValueError(f"micro_batches and shards must be >= 1, got {micro_batches} and {shards}.")
        self.sampler = sampler
        self.batch_sampler = PositionedBatchSampler(sampler)
        self.micro_batches = micro_batches
        self.shards = shards
        self._epoch_batches: tuple[int, list[list[int]]] | None = None

    @property
    def batch_size(self) -> Any:
        # The nominal size of a piece; accelerate (before 1.10) refuses a batch sampler without one unless told that
        # batches may differ in size, which the trainer tells its shard after `prepare`.
        return max(1, self.sampler.batch_size // (self.micro_batches * self.shards))

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer updates in an epoch: the balanced sampler's batches, as in the reference."""
        return len(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler) * self.micro_batches * self.shards

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batch_sampler:
            split = split_step(self.sampler.labels[[index for index, _ in batch]], self.micro_batches, self.shards)
            for micro in split.pieces:
                for piece in micro:
                    yield [batch[row] for row in piece]

    def split(self, epoch: int, step: int) -> StepSplit:
        """How step `step` of epoch `epoch` is split (the epoch's batches are drawn once and kept)."""
        if self._epoch_batches is None or self._epoch_batches[0] != epoch:
            self._epoch_batches = (epoch, self.sampler.batches(epoch))
        batch = self._epoch_batches[1][step]
        return split_step(self.sampler.labels[batch], self.micro_batches, self.shards)
