"""Two views from one decode, Cutout, the collator, and labels for the sampler."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision import transforms

from synermix_hf import (
    Cutout,
    SeededAugmentation,
    SingleViewTransform,
    SynerMixCollator,
    TwoViewTransform,
    dataset_labels,
)


def image_dataset(n=6, size=8):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]}, features=features)


def test_two_views_come_from_the_same_image():
    flip_always = transforms.Compose([transforms.ToTensor(), transforms.RandomHorizontalFlip(p=1.0)])
    dataset = image_dataset().with_transform(TwoViewTransform(flip_always, transforms.ToTensor()))
    example = dataset[2]
    assert set(example) == {"pixel_values", "original_pixel_values", "labels"}
    torch.testing.assert_close(example["pixel_values"], example["original_pixel_values"].flip(-1))
    assert example["labels"] == 2


def test_each_image_is_decoded_once_for_both_views():
    opened = []

    class CountingImage(datasets.Image):
        def decode_example(self, value, token_per_repo_id=None):
            opened.append(1)
            return super().decode_example(value, token_per_repo_id=token_per_repo_id)

    dataset = image_dataset(n=4)
    dataset = dataset.cast_column("image", CountingImage())
    dataset = dataset.with_transform(TwoViewTransform(transforms.ToTensor(), transforms.ToTensor()))
    dataset[:4]
    assert len(opened) == 4


def test_single_view_gives_pixel_values_and_labels_and_grayscale_becomes_rgb():
    gray = Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L")
    out = SingleViewTransform(transforms.ToTensor())({"image": [gray], "label": [1]})
    assert out["pixel_values"][0].shape == (3, 8, 8) and out["labels"] == [1]
    with pytest.raises(KeyError, match="Image column 'img' not found"):
        SingleViewTransform(transforms.ToTensor(), image_column="img")({"image": [gray]})


def test_cutout_zeroes_one_clipped_square_before_normalization():
    torch.manual_seed(0)
    for _ in range(50):
        out = Cutout(length=4)(torch.ones(3, 10, 10))
        zeros = (out[0] == 0).nonzero()
        rows, cols = zeros[:, 0], zeros[:, 1]
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        # A rectangle of side <= 4 (clipped at the border), identical across channels.
        assert len(zeros) == height * width and height <= 4 and width <= 4
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    interior = [(Cutout(length=4)(torch.ones(1, 40, 40)) == 0).sum().item() for _ in range(50)]
    assert max(interior) == 16


def test_collator_stacks_views_and_labels_from_dicts_and_tuples():
    examples = [
        {"pixel_values": torch.full((3, 2, 2), float(i)), "original_pixel_values": torch.zeros(3, 2, 2), "label": i}
        for i in range(3)
    ]
    batch = SynerMixCollator()(examples)
    assert batch["pixel_values"].shape == (3, 3, 2, 2) and batch["original_pixel_values"].shape == (3, 3, 2, 2)
    assert batch["labels"].tolist() == [0, 1, 2] and batch["labels"].dtype == torch.long
    triples = [(torch.zeros(3, 2, 2), torch.ones(3, 2, 2), i) for i in range(2)]
    batch = SynerMixCollator()(triples)
    assert batch["original_pixel_values"].sum() == 0 and batch["pixel_values"].mean() == 1
    assert batch["labels"].tolist() == [0, 1]


def test_dataset_labels_reads_columns_without_the_transform_and_follows_subsets():
    dataset = image_dataset(n=7).select([6, 5, 4, 0])
    dataset = dataset.with_transform(TwoViewTransform(transforms.ToTensor(), transforms.ToTensor()))
    assert dataset_labels(dataset).tolist() == [0, 2, 1, 0]

    class WithTargets(torch.utils.data.Dataset):
        targets = [3, 1, 2, 0]

        def __len__(self):
            return 4

    assert dataset_labels(Subset(WithTargets(), [2, 0])).tolist() == [2, 3]
    plain = [{"pixel_values": torch.zeros(1), "labels": i % 2} for i in range(3)]
    assert dataset_labels(plain).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="No label column"):
        dataset_labels(datasets.Dataset.from_dict({"x": [1, 2]}))


def test_seeded_augmentation_depends_only_on_seed_epoch_and_index():
    augment = transforms.Compose([transforms.RandomResizedCrop(8), transforms.ToTensor()])
    base = image_dataset(n=6).with_transform(SingleViewTransform(augment))
    first, second = SeededAugmentation(base, seed=3), SeededAugmentation(base, seed=3)
    forward = [first[i]["pixel_values"] for i in range(6)]
    torch.manual_seed(123)  # the global generator's state does not matter
    backward = [second[i]["pixel_values"] for i in reversed(range(6))][::-1]
    for a, b in zip(forward, backward, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(forward[0], forward[1])
    first.set_epoch(1)
    assert not torch.equal(first[0]["pixel_values"], forward[0])
    assert [e["labels"] for e in first.__getitems__([4, 1])] == [1, 1]
    assert dataset_labels(first).tolist() == [0, 1, 2, 0, 1, 2]


def test_a_partner_loaded_twice_in_an_epoch_gets_two_independent_augmentations():
    from synermix_hf.data.sampler import ClassBalancedBatchSampler, PositionedBatchSampler

    augment = transforms.Compose([transforms.RandomResizedCrop(8), transforms.ToTensor()])
    original = transforms.ToTensor()
    base = image_dataset(n=30).with_transform(TwoViewTransform(augment, original))
    seeded = SeededAugmentation(base, seed=3)
    batches = list(PositionedBatchSampler(ClassBalancedBatchSampler(dataset_labels(base), batch_size=4, seed=3)))
    appearances = {}
    for batch in batches:
        for index, position in batch:
            appearances.setdefault(index, []).append(position)
    assert [p for batch in batches for _, p in batch] == list(range(sum(map(len, batches))))  # positions 0, 1, ...
    twice = [(index, positions) for index, positions in appearances.items() if len(positions) > 1]
    assert twice, "the balanced sampler should load some partner twice in this epoch"
    for index, (first, second) in twice:
        a, b = seeded.__getitems__([(index, first), (index, second)])
        assert torch.equal(a["original_pixel_values"], b["original_pixel_values"])
        assert not torch.equal(a["pixel_values"], b["pixel_values"])
        # Each appearance is a function of (seed, epoch, position) alone: asked again, alone, it is the same view.
        torch.testing.assert_close(seeded[(index, second)]["pixel_values"], b["pixel_values"], rtol=0, atol=0)
