"""Pillow's resampling in torch (`resized_crops`): Pillow's pixels bit for bit, for every box, size and pass order."""

import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from synermix_hf.data.pil_resample import pil_resized_crop, resized_crops, vertical_pass_first

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def _frames(images):
    side = max(max(image.shape[:2]) for image in images)
    frames = torch.zeros((len(images), side, side, 3), dtype=torch.uint8)
    for frame, image in zip(frames, images):
        frame[: image.shape[0], : image.shape[1]] = torch.from_numpy(image)
    return frames


def _by_pillow(image, crop, out_size, window, size, interpolation):
    """What Pillow itself makes, written out independently: crop, resize, crop the window."""
    top, left, height, width = crop
    resized = Image.fromarray(image).crop((left, top, left + width, top + height)).resize(
        (out_size[1], out_size[0]), FILTERS[interpolation])
    return np.asarray(resized)[window[0] : window[0] + size, window[1] : window[1] + size]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_random_boxes_sizes_and_windows_are_pillows_pixels_exactly(interpolation):
    """White noise (the hardest case for rounding), boxes from 1 pixel to the whole image, reductions up to 18x and
    enlargements, windows anywhere: every pixel equals Pillow's."""
    rng = np.random.default_rng(0 if interpolation == "bilinear" else 1)
    size, images, crops, out_sizes, windows = 24, [], [], [], []
    for b in range(40):
        height, width = (int(v) for v in rng.integers(1, 160, 2))
        images.append(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        crop_height, crop_width = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        crop = (int(rng.integers(0, height - crop_height + 1)), int(rng.integers(0, width - crop_width + 1)),
                crop_height, crop_width)
        crops.append((0, 0, height, width) if b % 4 == 0 else crop)
        out = (size, size) if b % 3 == 0 else tuple(int(v) for v in rng.integers(size, 90, 2))
        out_sizes.append(out)
        windows.append((int(rng.integers(0, out[0] - size + 1)), int(rng.integers(0, out[1] - size + 1))))
    out = resized_crops(_frames(images), torch.tensor(crops), torch.tensor(out_sizes), torch.tensor(windows), size,
                        interpolation)
    assert out.dtype == torch.uint8 and out.shape == (40, size, size, 3)
    for b in range(40):
        expected = _by_pillow(images[b], crops[b], out_sizes[b], windows[b], size, interpolation)
        assert np.array_equal(out[b].numpy(), expected), (b, crops[b], out_sizes[b])
        assert np.array_equal(pil_resized_crop(images[b], crops[b], out_sizes[b], windows[b], size, interpolation),
                              expected)
    orders = {bool(vertical_pass_first(c[2], c[3], o[0], o[1])) for c, o in zip(crops, out_sizes)}
    assert orders == ({False, True} if int(PIL.__version__.split(".")[0]) >= 13 else {False})


def test_food101_shaped_crops_and_the_evaluation_resize_are_pillows():
    """The sizes the recipe meets: 512x384 photos, RandomResizedCrop boxes to 224, and Resize(256) + CenterCrop(224)."""
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((384, 512, 3), (512, 384, 3), (512, 512, 3))]
    crops = torch.tensor([(40, 90, 300, 280), (0, 0, 512, 384), (200, 100, 60, 64)])
    out = resized_crops(_frames(images), crops, torch.full((3, 2), 224), torch.zeros((3, 2), dtype=torch.int64), 224)
    for b, image in enumerate(images):
        assert np.array_equal(out[b].numpy(), _by_pillow(image, crops[b].tolist(), (224, 224), (0, 0), 224,
                                                         "bilinear"))
    whole = torch.tensor([(0, 0, 384, 512), (0, 0, 512, 384), (0, 0, 512, 512)])
    resized = torch.tensor([(256, 341), (341, 256), (256, 256)])
    centres = torch.tensor([(16, 58), (58, 16), (16, 16)])
    evaluation = resized_crops(_frames(images), whole, resized, centres, 224, min_out=256)
    for b, image in enumerate(images):
        expected = np.asarray(Image.fromarray(image).resize(tuple(resized[b].tolist()[::-1]), Image.BILINEAR))
        assert np.array_equal(evaluation[b].numpy(), expected[centres[b, 0] : centres[b, 0] + 224,
                                                              centres[b, 1] : centres[b, 1] + 224])


def test_bad_input_is_refused():
    frames = torch.zeros((1, 8, 8, 3), dtype=torch.uint8)
    box, out, window = torch.tensor([[0, 0, 8, 8]]), torch.tensor([[4, 4]]), torch.zeros((1, 2), dtype=torch.int64)
    with pytest.raises(ValueError, match="interpolation"):
        resized_crops(frames, box, out, window, 4, "lanczos")
    with pytest.raises(ValueError, match="uint8"):
        resized_crops(frames.float(), box, out, window, 4)
    with pytest.raises(ValueError, match=r"\[B, M, M, C\]"):
        resized_crops(torch.zeros((1, 8, 6, 3), dtype=torch.uint8), box, out, window, 4)
