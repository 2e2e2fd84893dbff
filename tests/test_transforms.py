"""The paper's transforms per dataset family, and the image processor saved with torchvision models."""

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from synermix_hf.testing import tiny_images
from synermix_hf.data import Cutout
from synermix_hf.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TransformSpec,
    build_transforms,
    image_processor_for,
    spec_from_image_processor,
)


def _steps(compose):
    return compose.transforms


def test_cifar_recipe_at_32px_is_the_references():
    train, evaluation = build_transforms(TransformSpec("cifar", 32))
    crop = next(s for s in _steps(train) if isinstance(s, T.RandomCrop))
    cutout = next(s for s in _steps(train) if isinstance(s, Cutout))
    assert (crop.size, crop.padding) == ((32, 32), 4)
    assert cutout.length == 16
    assert any(isinstance(s, T.RandomHorizontalFlip) for s in _steps(train))
    # Cutout works on [0, 1] pixels: after ToTensor and before Normalize.
    kinds = [type(s) for s in _steps(train)]
    assert kinds.index(T.ToTensor) < kinds.index(Cutout) < kinds.index(T.Normalize)
    normalize = _steps(evaluation)[-1]
    assert tuple(normalize.mean) == IMAGENET_MEAN and tuple(normalize.std) == IMAGENET_STD


def test_miniimagenet_recipe_at_84px_is_the_references():
    train, _ = build_transforms(TransformSpec("miniimagenet", 84))
    crop = next(s for s in _steps(train) if isinstance(s, T.RandomCrop))
    assert crop.padding == 12 and next(s for s in _steps(train) if isinstance(s, Cutout)).length == 32
    assert tuple(_steps(train)[-1].mean) == (0.5, 0.5, 0.5)


def test_imagenet_recipe_resizes_256_and_crops_224():
    train, evaluation = build_transforms(TransformSpec("imagenet", 224))
    assert isinstance(_steps(train)[0], T.RandomResizedCrop) and _steps(train)[0].size == (224, 224)
    assert _steps(evaluation)[0].size == 256 and _steps(evaluation)[1].size == (224, 224)


@pytest.mark.parametrize("family", ["cifar", "miniimagenet", "imagenet", "digits"])
def test_views_have_the_model_size_and_the_eval_view_is_deterministic(family):
    train, evaluation = build_transforms(TransformSpec(family, 16))
    image = tiny_images([1], size=20)[0]
    assert train(image).shape == evaluation(image).shape == (3, 16, 16)
    assert torch.equal(evaluation(image), evaluation(image))


def test_digits_recipe_does_not_flip():
    train, _ = build_transforms(TransformSpec("digits", 8))
    assert not any(isinstance(s, T.RandomHorizontalFlip) for s in _steps(train))


@pytest.mark.parametrize("family,size", [("cifar", 16), ("digits", 8), ("imagenet", 16)])
def test_saved_image_processor_reproduces_the_eval_transform(family, size):
    spec = TransformSpec(family, size)
    _, evaluation = build_transforms(spec)
    processor = image_processor_for(spec)
    # Square families: images already at the model size go through unchanged (exact); imagenet resizes and crops.
    images = tiny_images([0, 1, 2], size=size if family != "imagenet" else 24, mode="RGB")
    ours = torch.stack([evaluation(image) for image in images])
    theirs = processor(images, return_tensors="pt")["pixel_values"]
    assert theirs.shape == ours.shape
    tolerance = 1e-5 if family != "imagenet" else 0.15  # interpolation kernels differ slightly when resizing
    assert torch.allclose(theirs, ours, atol=tolerance)


def test_processor_converts_grayscale_to_rgb():
    processor = image_processor_for(TransformSpec("digits", 8))
    gray = tiny_images([3], size=8, mode="L")[0]
    assert processor(gray, return_tensors="pt")["pixel_values"].shape == (1, 3, 8, 8)


def test_spec_from_a_hugging_face_processor_takes_its_size_and_normalisation():
    from transformers import ConvNextImageProcessor, ViTImageProcessor

    vit = spec_from_image_processor(ViTImageProcessor(size={"height": 48, "width": 48}), "cifar")
    assert (vit.family, vit.image_size, vit.mean, vit.std) == ("cifar", 48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    convnext = spec_from_image_processor(ConvNextImageProcessor(size={"shortest_edge": 224}), "imagenet")
    assert convnext.image_size == 224
    bit = spec_from_image_processor(image_processor_for(TransformSpec("imagenet", 64)), "imagenet")
    assert bit.image_size == 64 and bit.mean == IMAGENET_MEAN
    assert np.isclose(TransformSpec("imagenet", 224).eval_resize, 256)
