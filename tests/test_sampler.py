"""The class-balanced batch sampler of the reference code."""

from collections import Counter

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import DataLoader

from synermix_hf import ClassBalancedBatchSampler
from synermix_hf.sampler import PositionedBatchSampler

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


def test_on_two_processes_every_batch_is_balanced_and_no_example_is_twice_in_a_step():
    # As the trainer shards it: accelerate's BatchSamplerShard hands batch i of the common sequence to process i % 2.
    sampler = ClassBalancedBatchSampler(LABELS, batch_size=16, seed=0, group_size=2)
    shards = [BatchSamplerShard(PositionedBatchSampler(sampler), num_processes=2, process_index=rank)
              for rank in (0, 1)]
    for shard in shards:
        shard.batch_size = None  # what the trainer sets: balanced batches have dynamic length
    for number in range(5):
        sampler.set_epoch(number)
        steps = list(zip(*shards, strict=True))
        assert len(steps) == 203 // 16 // 2
        heads = []
        for step in steps:
            batches = [[index for index, _ in batch] for batch in step]
            for batch in batches:
                assert min(Counter(LABELS[batch].tolist()).values()) >= 2  # balanced on each process
                heads += batch[:16]
            together = batches[0] + batches[1]
            assert len(set(together)) == len(together), f"epoch {number}: an example twice in one step"
        assert len(set(heads)) == len(heads)  # the 16 shuffled indices of every batch: one permutation, cut


def test_a_partner_repeats_an_example_of_the_step_only_when_its_class_has_no_other_member():
    # Class 1 has three members: batch 0 holds one, batch 1 the two others, so batch 0's partner must come from
    # batch 1 (the rule's fallback); class 0 always finds a partner outside the step.
    labels = [0] * 20 + [1] * 3
    sampler = ClassBalancedBatchSampler(labels, batch_size=4, seed=0, group_size=2)
    for number in range(30):
        sampler.set_epoch(number)
        for first, second in zip(*[iter(list(sampler))] * 2):
            for batch in (first, second):
                assert min(Counter(np.asarray(labels)[batch].tolist()).values()) >= 2
            shared = set(first) & set(second)
            assert all(labels[index] == 1 for index in shared)
