"""Batched views on the device: each op equals torchvision's per-image op bit for bit, and the parameters follow the
per-image path's distributions."""

import numpy as np
import pytest
import torch
from synermix_hf.testing import tiny_images
from scipy import stats
from torchvision.transforms import functional as F

from synermix_hf.data.batch_transforms import (
    BatchViews,
    crop_flip,
    cutout,
    normalize,
    sample_square_params,
    to_float,
    uniform_digits,
)
from synermix_hf.data import Cutout
from synermix_hf.data.transforms import TransformSpec, build_transforms, square_augmentation


def random_uint8(batch, size, seed=0):
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("padding, size", [(4, 32), (1, 8), (12, 84), (0, 8)])
def test_crop_flip_equals_torchvision_pad_crop_hflip_per_image(padding, size):
    images = random_uint8(12, size)
    generator = torch.Generator().manual_seed(1)
    top = torch.randint(0, 2 * padding + 1, (12,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (12,), generator=generator)
    top[0], left[0], top[1], left[1] = 0, 0, 2 * padding, 2 * padding  # both extreme offsets
    flip = torch.arange(12) % 2
    out = crop_flip(images, top, left, flip, padding)
    for b in range(12):
        expected = F.crop(F.pad(images[b], padding), int(top[b]), int(left[b]), size, size)
        if flip[b]:
            expected = F.hflip(expected)
        assert torch.equal(out[b], expected), b
    # The same on float images (what ToTensor gives): cropping before or after it is the same.
    floats = crop_flip(to_float(images), top, left, flip, padding)
    assert torch.equal(floats, to_float(out))


def test_cutout_equals_the_per_image_cutout_and_torchvision_erase():
    images = to_float(random_uint8(10, 16))
    length = 7  # odd: the per-image Cutout zeroes length - 1 = 6 pixels a side
    centres, expected = [], []
    for b in range(10):
        torch.manual_seed(100 + b)
        expected.append(Cutout(length)(images[b]))
        torch.manual_seed(100 + b)  # replay the two draws Cutout made
        centres.append((int(torch.randint(16, ())), int(torch.randint(16, ()))))
    centre_y = torch.tensor([c[0] for c in centres])
    centre_x = torch.tensor([c[1] for c in centres])
    out = cutout(images, centre_y, centre_x, length)
    half = length // 2
    for b, (cy, cx) in enumerate(centres):
        assert torch.equal(out[b], expected[b]), b
        top, left = max(cy - half, 0), max(cx - half, 0)
        erased = F.erase(images[b], top, left, min(cy + half, 16) - top, min(cx + half, 16) - left, 0.0)
        assert torch.equal(out[b], erased), b


def test_to_float_and_normalize_equal_to_tensor_and_normalize_on_pil_images():
    pil = tiny_images([0, 1, 2, 3], size=8)
    batch = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in pil])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = torch.stack([F.normalize(F.to_tensor(image), mean, std) for image in pil])
    assert torch.equal(normalize(to_float(batch), mean, std), expected)


@pytest.mark.parametrize("family, size", [("cifar", 32), ("cifar", 16), ("miniimagenet", 21), ("digits", 8)])
def test_batched_views_equal_the_per_image_transforms_for_the_same_draws(family, size):
    """Run the per-image recipe under a seed, replay its draws, and give them to the batched recipe."""
    spec = TransformSpec(family, size)
    train_tf, eval_tf = build_transforms(spec)
    recipe = square_augmentation(spec)
    views = BatchViews.from_spec(spec)
    pil = tiny_images(list(range(6)), size=size, seed=3)
    images = torch.stack([torch.from_numpy(np.array(image)) for image in pil])  # HWC, as a store serves them
    params = {name: [] for name in ("top", "left", "flip", "cutout_y", "cutout_x")}
    expected = []
    for b, image in enumerate(pil):
        torch.manual_seed(b)
        expected.append(train_tf(image))
        torch.manual_seed(b)  # RandomCrop.get_params draws top then left; the flip draws rand(1); Cutout y then x
        params["top"].append(int(torch.randint(0, 2 * recipe.padding + 1, (1,))))
        params["left"].append(int(torch.randint(0, 2 * recipe.padding + 1, (1,))))
        params["flip"].append(int(torch.rand(1) < 0.5) if recipe.flip else 0)
        if recipe.cutout:
            params["cutout_y"].append(int(torch.randint(size, ())))
            params["cutout_x"].append(int(torch.randint(size, ())))
    tensors = {k: torch.tensor(v) for k, v in params.items() if v}
    batch = views({"images": images, "augment": tensors, "labels": torch.arange(6)})
    assert torch.equal(batch["pixel_values"], torch.stack(expected))
    assert torch.equal(batch["original_pixel_values"], torch.stack([eval_tf(image) for image in pil]))
    assert torch.equal(batch["labels"], torch.arange(6))
    evaluation = views({"images": images, "labels": torch.arange(6)})
    assert torch.equal(evaluation["pixel_values"], torch.stack([eval_tf(image) for image in pil]))
    assert "original_pixel_values" not in evaluation


def uniform_seeds(n, seed=0):
    return np.random.default_rng(seed).integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)


@pytest.mark.parametrize("family, size", [("cifar", 32), ("miniimagenet", 84), ("digits", 8)])
def test_parameters_cover_exactly_the_per_image_ranges_uniformly_and_independently(family, size):
    spec = TransformSpec(family, size)
    recipe = square_augmentation(spec)
    params = sample_square_params(uniform_seeds(40_000), size, recipe)
    span = 2 * recipe.padding + 1  # RandomCrop.get_params on the padded image: offsets 0 .. 2 * padding
    expected_support = {"top": span, "left": span, "flip": 2 if recipe.flip else 1}
    if recipe.cutout:
        expected_support.update(cutout_y=size, cutout_x=size)  # Cutout: torch.randint(height), torch.randint(width)
    assert set(params) == set(expected_support) | ({"cutout_y", "cutout_x"} if recipe.cutout else set())
    for name, support in expected_support.items():
        counts = np.bincount(params[name].numpy(), minlength=support)
        assert len(counts) == support, name  # nothing outside the range
        if support > 1:
            assert stats.chisquare(counts).pvalue > 1e-4, name
    # Independence of the two crop offsets: a chi-square test of the joint table.
    joint = np.zeros((span, span))
    np.add.at(joint, (params["top"].numpy(), params["left"].numpy()), 1)
    assert stats.chi2_contingency(joint).pvalue > 1e-4


def test_batched_augmentation_has_the_per_image_distribution_pixel_by_pixel():
    """Many augmentations of one image: per pixel, how often it is zeroed and its mean value agree between paths."""
    size, draws = 16, 3000
    spec = TransformSpec("cifar", size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    train_tf, _ = build_transforms(spec)
    rows, columns = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    pixels = np.stack([rows * 15 + 10, columns * 15 + 10, 128 + 0 * rows], axis=-1).astype(np.uint8)  # no zeros
    from PIL import Image

    image = Image.fromarray(pixels)
    torch.manual_seed(0)
    per_image = torch.stack([train_tf(image) for _ in range(draws)])
    views = BatchViews.from_spec(spec)
    images = torch.from_numpy(pixels)[None].expand(draws, -1, -1, -1).contiguous()  # HWC, as a store serves them
    batched = views({"images": images, "augment": views.sample(uniform_seeds(draws, seed=1))})["pixel_values"]
    for statistic in (lambda x: (x == 0).float(), lambda x: x):
        a, b = statistic(per_image), statistic(batched)
        spread = torch.sqrt((a.var(0) + b.var(0)) / draws).clamp_min(1e-3)
        z = (a.mean(0) - b.mean(0)) / spread
        assert z.abs().max() < 5.0


def test_uniform_digits_refuses_more_bits_than_one_seed_gives():
    with pytest.raises(ValueError, match="32 bits"):
        uniform_digits(uniform_seeds(3), [2**20, 2**20])


def test_batch_views_refuse_the_imagenet_family():
    with pytest.raises(ValueError, match="square families"):
        BatchViews.from_spec(TransformSpec("imagenet", 32))


def test_normalize_after_a_call_under_inference_mode_still_backpropagates():
    # Its per-channel constants are cached; those of a first call under inference mode must serve autograd later.
    mean, std = (0.3, 0.4, 0.5), (0.21, 0.22, 0.23)
    with torch.inference_mode():
        normalize(torch.rand(2, 3, 4, 4), mean, std)
    images = torch.rand(2, 3, 4, 4, requires_grad=True)
    normalize(images, mean, std).sum().backward()
    expected = torch.tensor(std).reciprocal().view(1, 3, 1, 1).expand_as(images)
    torch.testing.assert_close(images.grad, expected)
