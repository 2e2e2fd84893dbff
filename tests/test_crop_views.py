"""The RandomResizedCrop recipe made batched on the device (`CropViews`) against the per-image path it replaces."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from synermix_hf.data.crop_views import CropViews, centre_crop_boxes, map_boxes, resized_crops, sample_crops
from synermix_hf.data.transforms import TransformSpec, build_transforms
from synermix_hf.seeding import example_seeds

SPEC = TransformSpec("imagenet", 224)
SIZES = [(384, 512), (512, 384), (512, 512), (300, 450), (230, 700)]  # Food-101's shapes, and two others


def _photo(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Smooth colour fields with some grain: closer to a photo's spectrum than white noise."""
    small = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC)).astype(np.int16)
    return Image.fromarray(np.clip(pixels + rng.integers(-8, 9, pixels.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos():
    rng = np.random.default_rng(0)
    return [_photo(rng, h, w) for h, w in SIZES]


def _per_image_views(photos, seeds, spec=SPEC):
    """What the per-image path makes of each photo under its seed (as `SeededAugmentation` seeds it)."""
    train, evaluation = build_transforms(spec)
    augmented, original = [], []
    with torch.random.fork_rng(devices=[]):
        for photo, seed in zip(photos, seeds):
            torch.default_generator.manual_seed(int(seed >> np.uint64(1)))
            augmented.append(train(photo))
            original.append(evaluation(photo))
    return torch.stack(augmented), torch.stack(original)


def _stored_batch(photos, short_side, spec=SPEC):
    """The photos as a store keeps them (shorter side resized with the per-image path's resize, or as they are), in
    one frame, each at the top left; and their original and stored sizes."""
    stored = [np.asarray(p if short_side == 0 else T.Resize(short_side, spec.interpolation_mode)(p)) for p in photos]
    height, width = max(s.shape[0] for s in stored), max(s.shape[1] for s in stored)
    frame = torch.zeros((len(stored), height, width, 3), dtype=torch.uint8)
    for i, pixels in enumerate(stored):
        frame[i, : pixels.shape[0], : pixels.shape[1]] = torch.from_numpy(pixels.copy())
    original_sizes = np.array([(p.height, p.width) for p in photos])
    stored_sizes = np.array([s.shape[:2] for s in stored])
    return frame, original_sizes, stored_sizes


def _device_views(photos, seeds, short_side, method, spec=SPEC):
    frame, original_sizes, stored_sizes = _stored_batch(photos, short_side, spec)
    views = CropViews.from_spec(spec, short_side, method=method)
    batch = {"images": frame, "sizes": torch.from_numpy(stored_sizes),
             "original_boxes": views.original_boxes(original_sizes, stored_sizes),
             "augment": views.sample(seeds, original_sizes, stored_sizes), "labels": torch.zeros(len(photos))}
    out = views(batch)
    return out["pixel_values"], out["original_pixel_values"]


def _psnr(a: torch.Tensor, b: torch.Tensor, spec=SPEC) -> torch.Tensor:
    """Per image, in dB, on the [0, 1] pixels before Normalize."""
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    error = ((a - b) * std).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / error.clamp_min(1e-12))


def test_crop_boxes_and_flips_are_those_the_per_image_transforms_draw_on_the_original_size(photos):
    seeds = example_seeds(11, 3, np.arange(64))
    sizes = np.array([SIZES[i % len(SIZES)] for i in range(64)])
    boxes, flips = sample_crops(seeds, sizes, (0.08, 1.0), (3 / 4, 4 / 3))
    before = torch.get_rng_state()
    for i, seed in enumerate(seeds):
        torch.manual_seed(int(seed >> np.uint64(1)))
        image = Image.new("RGB", (int(sizes[i, 1]), int(sizes[i, 0])))
        assert tuple(boxes[i]) == T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        assert flips[i] == bool(torch.rand(1) < 0.5)
    torch.set_rng_state(before)
    assert 20 < flips.sum() < 44  # both kinds present: the comparison above saw flips and non-flips


def test_sampling_leaves_torch_generator_alone():
    state = torch.get_rng_state()
    sample_crops(example_seeds(0, 0, np.arange(8)), np.full((8, 2), 100), (0.08, 1.0), (3 / 4, 4 / 3))
    assert torch.equal(state, torch.get_rng_state())


def test_the_region_a_crop_covers_does_not_depend_on_the_stored_size():
    boxes = np.array([[10, 20, 100, 200], [0, 0, 384, 512]])
    original = np.array([[384, 512], [384, 512]])
    for stored in ([[256, 341], [256, 341]], [[384, 512], [384, 512]], [[192, 256], [192, 256]]):
        stored = np.array(stored)
        edges = map_boxes(boxes, original, stored)
        back = edges * np.tile(original / stored, 2)  # stored edges, in original pixels again
        np.testing.assert_allclose(back, np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]])


@pytest.mark.parametrize("method", ["interpolate", "roi_align"])
def test_at_full_resolution_the_augmented_view_agrees_with_the_per_image_path(photos, method):
    """The same crops, only the resampling kernel differs: at least 30 dB on every image."""
    seeds = example_seeds(5, 0, np.arange(len(photos)))
    expected_augmented, expected_original = _per_image_views(photos, seeds)
    augmented, original = _device_views(photos, seeds, 0, method)
    assert augmented.shape == expected_augmented.shape == (len(photos), 3, 224, 224)
    assert _psnr(augmented, expected_augmented).min() >= 30, _psnr(augmented, expected_augmented)
    assert _psnr(original, expected_original).min() >= 30, _psnr(original, expected_original)
    # the flips are those of the same examples: the mirrored view is far from the per-image one
    assert _psnr(augmented.flip(-1), expected_augmented).max() < _psnr(augmented, expected_augmented).min() - 5


@pytest.mark.parametrize("method", ["interpolate", "roi_align"])
def test_at_the_evaluation_resize_the_original_view_is_the_per_image_one_exactly(photos, method):
    seeds = example_seeds(5, 1, np.arange(len(photos)))
    expected_augmented, expected_original = _per_image_views(photos, seeds)
    augmented, original = _device_views(photos, seeds, SPEC.eval_resize, method)
    assert torch.equal(original, expected_original)
    # The augmented view is cut from 256 px instead of up to 700 px: close, not equal (a misplaced crop is ~15 dB).
    assert _psnr(augmented, expected_augmented).min() >= 25, _psnr(augmented, expected_augmented)


def test_an_evaluation_batch_gets_the_original_view_as_pixel_values(photos):
    frame, original_sizes, stored_sizes = _stored_batch(photos, 256)
    views = CropViews.from_spec(SPEC, 256)
    out = views({"images": frame, "sizes": torch.from_numpy(stored_sizes), "labels": torch.arange(len(photos)),
                 "original_boxes": views.original_boxes(original_sizes, stored_sizes)})
    assert set(out) == {"pixel_values", "labels"}
    assert torch.equal(out["pixel_values"], _per_image_views(photos, example_seeds(0, 0, np.arange(5)))[1])


def test_a_timm_recipe_crops_with_its_own_resize_and_interpolation(photos):
    """Bicubic, crop fraction 0.9 (Resize(248) + CenterCrop(224)): the store at 248 gives the exact original view."""
    spec = TransformSpec("imagenet", 224, interpolation="bicubic", crop_pct=0.9)
    seeds = example_seeds(2, 0, np.arange(len(photos)))
    expected_augmented, expected_original = _per_image_views(photos, seeds, spec)
    augmented, original = _device_views(photos, seeds, spec.eval_resize, "interpolate", spec)
    assert spec.eval_resize == 248 and torch.equal(original, expected_original)
    assert _psnr(augmented, expected_augmented, spec).min() >= 25


def test_centre_crop_boxes_follow_torchvision_rounding():
    for height, width in [(300, 451), (257, 300), (1000, 333)]:
        image = Image.new("RGB", (width, height))
        resized = T.Resize(256)(image)
        top, left, h, w = centre_crop_boxes(np.array([[height, width]]), 256, 224)[0]
        # torchvision's CenterCrop: the same box of the resized image
        marker = np.zeros((resized.height, resized.width), dtype=np.uint8)
        marker[top : top + h, left : left + w] = 1
        assert np.asarray(T.CenterCrop(224)(Image.fromarray(marker))).sum() == 224 * 224


def test_resized_crops_refuse_what_they_cannot_do():
    images = torch.zeros((1, 8, 8, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="method"):
        resized_crops(images, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), 4, method="nearest")
    with pytest.raises(ValueError, match="uint8"):
        resized_crops(images.float(), torch.tensor([[0.0, 0.0, 8.0, 8.0]]), 4)
    with pytest.raises(ValueError, match="interpolation"):
        CropViews.from_spec(TransformSpec("imagenet", 224, interpolation="lanczos"), 256)


def test_on_the_cpu_the_views_made_image_by_image_are_the_batched_ops_bit_for_bit(photos):
    """The CPU makes the views one image at a time (cache-friendly); the batched ops define them."""
    for short_side in (256, 0):
        frame, original_sizes, stored_sizes = _stored_batch(photos, short_side)
        views = CropViews.from_spec(SPEC, short_side)
        sizes, boxes = torch.from_numpy(stored_sizes), views.original_boxes(original_sizes, stored_sizes)
        params = views.sample(example_seeds(9, 0, np.arange(len(photos))), original_sizes, stored_sizes)
        out = views({"images": frame, "sizes": sizes, "original_boxes": boxes, "augment": params})
        assert torch.equal(out["pixel_values"], views.augmented(frame, sizes, params))
        assert torch.equal(out["original_pixel_values"], views.original_view(frame, sizes, boxes))
