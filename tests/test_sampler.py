"""The class-balanced batch sampler of the reference code."""

from collections import Counter

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, DataLoader

from synermix_hf import ClassBalancedBatchSampler
from synermix_hf.data.sampler import PositionedBatchSampler, SplitSteps, split_step

LABELS = np.random.default_rng(0).integers(0, 20, size=203)  # many classes: singletons are common at batch 16


def epoch(sampler, number):
    sampler.set_epoch(number)
    return [list(batch) for batch in sampler]


def test_batches_follow_the_method():
    sampler = ClassBalancedBatchSampler(LABELS, batch_size=16, seed=3)
    batches = epoch(sampler, 0)
    assert len(batches) == len(sampler) == 203 // 16
    # The first batch_size indices of each batch are consecutive slices of one shuffled order: no repeats, and the
    # remainder (203 - 12 * 16 = 11 indices) is dropped.
    heads = [b[:16] for b in batches]
    flat = [i for head in heads for i in head]
    assert len(set(flat)) == len(flat) == 12 * 16
    saw_partner = False
    for head, batch in zip(heads, batches):
        counts = Counter(LABELS[head].tolist())
        singletons = sorted(c for c, n in counts.items() if n == 1)
        partners = batch[16:]
        # One added partner per class seen once, of that class, not already in the batch.
        assert sorted(LABELS[partners].tolist()) == singletons
        assert not set(partners) & set(head)
        assert len(set(batch)) == len(batch)
        assert min(Counter(LABELS[batch].tolist()).values()) >= 2
        saw_partner |= bool(partners)
    assert saw_partner


def test_same_seed_and_epoch_give_the_same_batches():
    first = ClassBalancedBatchSampler(LABELS, batch_size=16, seed=3)
    second = ClassBalancedBatchSampler(LABELS, batch_size=16, seed=3)
    assert epoch(first, 4) == epoch(second, 4)
    assert epoch(first, 4) != epoch(first, 5)
    assert epoch(first, 4) != epoch(ClassBalancedBatchSampler(LABELS, batch_size=16, seed=4), 4)


def test_no_index_repeats_within_an_epoch_except_the_partners():
    sampler = ClassBalancedBatchSampler(LABELS, batch_size=16, seed=1)
    batches = epoch(sampler, 2)
    heads = [i for b in batches for i in b[:16]]
    assert len(heads) == len(set(heads))


def test_a_class_with_one_example_in_the_dataset_stays_single():
    labels = [0, 0, 1, 1, 2, 3, 3, 0]
    sampler = ClassBalancedBatchSampler(labels, batch_size=8, seed=0)
    (batch,) = epoch(sampler, 0)
    assert sorted(batch) == list(range(8))


def test_keeps_the_last_batch_when_asked_and_refuses_a_too_small_dataset():
    sampler = ClassBalancedBatchSampler(LABELS, batch_size=16, seed=0, drop_last=False)
    batches = epoch(sampler, 0)
    assert len(batches) == len(sampler) == 13
    assert set().union(*batches) == set(range(203))  # the 11 left over after 12 full batches are used too
    with pytest.raises(ValueError, match="fewer than one batch"):
        ClassBalancedBatchSampler([0, 1, 0], batch_size=4)


def test_works_as_a_dataloader_batch_sampler():
    sampler = ClassBalancedBatchSampler(LABELS, batch_size=16, seed=0)
    loader = DataLoader(list(range(len(LABELS))), batch_sampler=sampler)
    assert [batch.tolist() for batch in loader] == epoch(sampler, 0)
    assert (sampler.batch_size, sampler.drop_last) == (16, True)


def pieces_per_process(split, processes=2):
    """Each process's pieces as the trainer's loader deals them: the pieces are the Trainer loader's sampler, one a
    loader batch, and accelerate's `BatchSamplerShard` hands loader batch i to process i % processes."""
    batches = BatchSampler(split, batch_size=1, drop_last=False)
    return [[batch[0] for batch in BatchSamplerShard(batches, num_processes=processes, process_index=rank)]
            for rank in range(processes)]


def test_on_two_processes_the_shards_of_a_step_are_the_one_process_batch():
    # As the trainer shards it without accumulation (`pieces_per_process`): piece i of the common sequence goes to
    # process i % 2, so the two processes of a step hold the two halves of the balanced batch one process
    # would train on, in order, at the same positions of the epoch (so with the same augmentation).
    one_process = ClassBalancedBatchSampler(LABELS, batch_size=16, seed=0)
    two_processes = SplitSteps(ClassBalancedBatchSampler(LABELS, batch_size=16, seed=0), micro_batches=1, shards=2)
    for number in range(5):
        one_process.set_epoch(number)
        two_processes.set_epoch(number)
        expected = list(PositionedBatchSampler(one_process))
        steps = list(zip(*pieces_per_process(two_processes), strict=True))
        assert len(steps) == len(expected) == 203 // 16
        for batch, (first, second) in zip(expected, steps, strict=True):
            assert first + second == batch
            assert abs(len(first) - len(second)) <= 1
            together = [index for index, _ in batch]
            assert min(Counter(LABELS[together].tolist()).values()) >= 2  # the step's batch is balanced
            assert len(set(together)) == len(together)  # the reference's rule: a partner is not in the batch


def test_a_step_splits_into_micro_batches_of_whole_classes_each_cut_into_shards():
    labels = LABELS[:40]
    split = split_step(labels, micro_batches=3, shards=2)
    assert split.whole_classes and split.size == 40 and split.classes == len(set(labels.tolist()))
    micro_batches = [np.concatenate(shards) for shards in split.pieces]
    assert sorted(np.concatenate(micro_batches).tolist()) == list(range(40))  # every row once
    for shards in split.pieces:
        rows = np.concatenate(shards)
        assert (np.diff(rows) > 0).all()  # batch order, cut into consecutive shards of nearly equal size
        assert abs(len(shards[0]) - len(shards[1])) <= 1
    classes = [set(labels[rows].tolist()) for rows in micro_batches]
    assert not (classes[0] & classes[1]) and not (classes[0] & classes[2]) and not (classes[1] & classes[2])
    sizes = [len(rows) for rows in micro_batches]
    assert max(sizes) - min(sizes) <= max(Counter(labels.tolist()).values())
    # Shares of the examples: DDP's and accumulation's averages of the weighted piece means are the step's mean.
    shares = [split.example_share(m, r) for m in range(3) for r in range(2)]
    assert [share * 40 / 6 for share in shares] == pytest.approx([len(p) for shards in split.pieces for p in shards])
    assert sum(shares) / 6 == pytest.approx(1)
    # One micro-batch: the batch cut into consecutive shards.
    assert [piece.tolist() for piece in split_step(labels, 1, 2).pieces[0]] == \
        [piece.tolist() for piece in np.array_split(np.arange(40), 2)]


def test_a_step_with_fewer_classes_than_micro_batches_is_cut_in_order_and_says_so():
    split = split_step([0, 0, 1, 1, 0, 1, 1, 0], micro_batches=3, shards=1)
    assert not split.whole_classes
    assert [shards[0].tolist() for shards in split.pieces] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert split.classes == 2 + 2 + 2  # each micro-batch mixes its own members of each class


def test_two_processes_of_two_micro_batches_train_on_the_one_process_batch_of_the_step():
    # As the trainer feeds them: accelerate hands piece i to process i % 2, the Trainer accumulates 2 consecutive
    # pieces of a process. The 4 pieces of a step are the one-process balanced batch of the step, at its positions
    # of the epoch (so augmented alike), and an epoch has the reference sampler's number of steps.
    one_process = ClassBalancedBatchSampler(LABELS, batch_size=16, seed=0)
    split = SplitSteps(ClassBalancedBatchSampler(LABELS, batch_size=16, seed=0), micro_batches=2, shards=2)
    for number in (0, 3):
        one_process.set_epoch(number)
        split.set_epoch(number)
        expected = list(PositionedBatchSampler(one_process))
        per_process = pieces_per_process(split)
        assert [len(pieces) for pieces in per_process] == [2 * len(expected)] * 2 and len(expected) == 203 // 16
        for step, batch in enumerate(expected):
            pieces = [per_process[rank][2 * step + micro] for micro in (0, 1) for rank in (0, 1)]
            assert sorted(pair for piece in pieces for pair in piece) == sorted(batch)
            assert pieces == [[batch[row] for row in piece] for micro in split.split(number, step).pieces
                              for piece in micro]
