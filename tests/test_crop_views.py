"""The RandomResizedCrop recipe made batched on the device (`CropViews`) against the per-image path it replaces."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from synermix_hf.data.crop_views import CropViews, centre_crop_boxes, map_boxes, sample_crops
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
    """The photos as a store keeps them (shorter side resized with the per-image path's resize, or as they are), each
    at the top left of a square frame; and their original and stored sizes."""
    stored = [np.asarray(p if short_side == 0 else T.Resize(short_side, spec.interpolation_mode)(p)) for p in photos]
    side = max(max(s.shape[:2]) for s in stored)
    frame = torch.zeros((len(stored), side, side, 3), dtype=torch.uint8)
    for i, pixels in enumerate(stored):
        frame[i, : pixels.shape[0], : pixels.shape[1]] = torch.from_numpy(pixels.copy())
    original_sizes = np.array([(p.height, p.width) for p in photos])
    stored_sizes = np.array([s.shape[:2] for s in stored])
    return frame, original_sizes, stored_sizes


def _device_views(photos, seeds, short_side, method, spec=SPEC, original=True):
    frame, original_sizes, stored_sizes = _stored_batch(photos, short_side, spec)
    views = CropViews.from_spec(spec, short_side, original=original, method=method)
    batch = {"images": frame, "sizes": torch.from_numpy(stored_sizes),
             "original": views.original_params(original_sizes, stored_sizes),
             "augment": views.sample(seeds, original_sizes, stored_sizes), "labels": torch.zeros(len(photos))}
    out = views(batch)
    return out["pixel_values"], out.get("original_pixel_values")


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


@pytest.mark.parametrize("method", ["pillow", "batched"])
def test_at_full_resolution_both_views_are_the_per_image_paths_exactly(photos, method):
    """The default: the images at full resolution, the crops resized with Pillow's filter, by Pillow itself on the CPU
    (`pillow`) or by its port that runs batched on accelerators (`batched`, here on the CPU): the per-image path's
    pixels, bit for bit, the flips on the same examples."""
    seeds = example_seeds(5, 0, np.arange(len(photos)))
    expected_augmented, expected_original = _per_image_views(photos, seeds)
    augmented, original = _device_views(photos, seeds, 0, method)
    assert augmented.shape == expected_augmented.shape == (len(photos), 3, 224, 224)
    assert torch.equal(augmented, expected_augmented)
    assert torch.equal(original, expected_original)


@pytest.mark.parametrize("method", ["pillow", "batched"])
def test_a_timm_recipe_is_exact_too_bicubic_with_its_own_crop_fraction(photos, method):
    """Bicubic, crop fraction 0.9 (Resize(248) + CenterCrop(224)), as a timm checkpoint asks."""
    spec = TransformSpec("imagenet", 224, interpolation="bicubic", crop_pct=0.9)
    seeds = example_seeds(2, 0, np.arange(len(photos)))
    expected_augmented, expected_original = _per_image_views(photos, seeds, spec)
    augmented, original = _device_views(photos, seeds, 0, method, spec)
    assert spec.eval_resize == 248
    assert torch.equal(augmented, expected_augmented) and torch.equal(original, expected_original)


def test_an_evaluation_batch_gets_the_original_view_as_pixel_values(photos):
    for short_side in (0, SPEC.eval_resize):  # the training store, and the evaluation set's own (Resize(256))
        frame, original_sizes, stored_sizes = _stored_batch(photos, short_side)
        views = CropViews.from_spec(SPEC, short_side)
        out = views({"images": frame, "sizes": torch.from_numpy(stored_sizes), "labels": torch.arange(len(photos)),
                     "original": views.original_params(original_sizes, stored_sizes)})
        assert set(out) == {"pixel_values", "labels"}
        assert torch.equal(out["pixel_values"], _per_image_views(photos, example_seeds(0, 0, np.arange(5)))[1])


@pytest.mark.parametrize("method", ["pillow", "batched"])
def test_a_store_of_reduced_images_keeps_the_original_view_and_softens_the_crops(photos, method):
    """The opt-in store at the evaluation resize: the original view is still exact (a centre crop of what it stores);
    the augmented view is cut from 256 px instead of up to 700 px, the same region: close, not equal (a misplaced
    crop scores ~15 dB)."""
    seeds = example_seeds(5, 1, np.arange(len(photos)))
    expected_augmented, expected_original = _per_image_views(photos, seeds)
    augmented, original = _device_views(photos, seeds, SPEC.eval_resize, method)
    assert torch.equal(original, expected_original)
    psnr = _psnr(augmented, expected_augmented)
    assert psnr.min() >= 20 and not torch.equal(augmented, expected_augmented), psnr


def test_centre_crop_boxes_follow_torchvision_rounding():
    for height, width in [(300, 451), (257, 300), (1000, 333)]:
        image = Image.new("RGB", (width, height))
        resized = T.Resize(256)(image)
        top, left, h, w = centre_crop_boxes(np.array([[height, width]]), 256, 224)[0]
        # torchvision's CenterCrop: the same box of the resized image
        marker = np.zeros((resized.height, resized.width), dtype=np.uint8)
        marker[top : top + h, left : left + w] = 1
        assert np.asarray(T.CenterCrop(224)(Image.fromarray(marker))).sum() == 224 * 224


def test_views_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="`method` 'roi_align'"):
        CropViews.from_spec(SPEC, 0, method="roi_align")
    with pytest.raises(ValueError, match="interpolation"):
        CropViews.from_spec(TransformSpec("imagenet", 224, interpolation="lanczos"), 0)
    with pytest.raises(ValueError, match=r"uint8 images \[B, M, M, 3\]"):
        CropViews.from_spec(SPEC, 0)({"images": torch.zeros((1, 3, 8, 8)), "sizes": torch.tensor([[8, 8]]),
                                      "original": torch.tensor([[8, 8, 0, 0]])})
