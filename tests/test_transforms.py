"""The paper's transforms per dataset family, the image processor saved with torchvision models, and `as_rgb`."""

import colorsys
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from synermix_hf.testing import tiny_images
from synermix_hf.data import Cutout
from synermix_hf.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TransformSpec,
    as_rgb,
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


def test_spec_from_a_hugging_face_processor_takes_its_size_and_normalization():
    from transformers import ConvNextImageProcessor, ViTImageProcessor

    vit = spec_from_image_processor(ViTImageProcessor(size={"height": 48, "width": 48}), "cifar")
    assert (vit.family, vit.image_size, vit.mean, vit.std) == ("cifar", 48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    convnext = spec_from_image_processor(ConvNextImageProcessor(size={"shortest_edge": 224}), "imagenet")
    assert convnext.image_size == 224
    bit = spec_from_image_processor(image_processor_for(TransformSpec("imagenet", 64)), "imagenet")
    assert bit.image_size == 64 and bit.mean == IMAGENET_MEAN
    assert np.isclose(TransformSpec("imagenet", 224).eval_resize, 256)


# --- as_rgb: every mode's pixels against an expectation computed here from the raw values ---------------------------

def _rgb(image):
    out = as_rgb(image)
    size = image.size if isinstance(image, Image.Image) else image.shape[1::-1]
    assert out.mode == "RGB" and out.size == size
    return np.asarray(out).astype(np.int64)


def _gray(levels):
    """The RGB pixels of an 8-bit gray `levels` array: the level in all three channels."""
    levels = np.asarray(levels, dtype=np.int64)
    return np.repeat(levels[..., None], 3, axis=-1)


def _half_up(values):
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.int64)


# Every 16-bit extreme and byte boundary, and a sweep over the whole range.
_SIXTEEN_BIT = np.unique(np.concatenate([
    [0, 1, 127, 128, 255, 256, 257, 511, 512, 32767, 32768, 65279, 65280, 65534, 65535],
    np.arange(0, 65536, 97),
])).astype(np.int64)


def _row(values):
    """`values` as a 1-pixel-high row (images in the tests are tiny: one row of every value of interest)."""
    return np.asarray(values).reshape(1, -1)


def test_as_rgb_returns_an_rgb_image_itself():
    image = Image.new("RGB", (3, 2), (1, 2, 3))
    assert as_rgb(image) is image
    with pytest.raises(TypeError, match="PIL image or a numpy array"):
        as_rgb([[0]])


def test_as_rgb_one_bit_is_black_or_white():
    bits = np.array([[True, False, True, False], [False, False, True, True]])
    image = Image.fromarray(bits)
    assert image.mode == "1"
    assert np.array_equal(_rgb(image), _gray(np.where(bits, 255, 0)))


def test_as_rgb_gray_and_gray_alpha_repeat_the_level_and_drop_alpha():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    alpha = levels[::-1].copy()
    assert np.array_equal(_rgb(Image.fromarray(levels)), _gray(levels))
    gray_alpha = Image.frombytes("LA", (16, 16), np.stack([levels, alpha], -1).tobytes())
    assert np.array_equal(_rgb(gray_alpha), _gray(levels))


def test_as_rgb_palette_modes_look_the_palette_up_and_drop_transparency():
    palette = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    indices = np.arange(256, dtype=np.uint8)[::-1].reshape(16, 16)
    paletted = Image.frombytes("P", (16, 16), indices.tobytes())
    paletted.putpalette(palette.tobytes())
    expected = palette[indices].astype(np.int64)
    assert np.array_equal(_rgb(paletted), expected)
    transparent = paletted.copy()
    transparent.info["transparency"] = int(indices[0, 0])
    assert np.array_equal(_rgb(transparent), expected)
    with_alpha = paletted.convert("PA")
    with_alpha.putalpha(Image.fromarray(indices))
    assert with_alpha.mode == "PA"
    assert np.array_equal(_rgb(with_alpha), expected)


@pytest.mark.parametrize("mode", ["RGBA", "RGBX"])
def test_as_rgb_keeps_the_colour_channels_of_four_channel_modes(mode):
    pixels = np.random.default_rng(1).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    pixels[0, :4, :3] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]]
    pixels[0, :4, 3] = [0, 255, 0, 128]
    assert np.array_equal(_rgb(Image.frombytes(mode, (8, 8), pixels.tobytes())), pixels[..., :3])


def test_as_rgb_cmyk_by_the_naive_formula():
    # Every (C, K) pair, with M and Y running over other values: R = (255 - C)(255 - K) / 255, and so on.
    c, k = (grid.astype(np.uint8) for grid in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    m, y = k[::-1].copy(), c.T.copy()
    image = Image.frombytes("CMYK", (256, 256), np.stack([c, m, y, k], -1).tobytes())
    inks = np.stack([c, m, y], -1).astype(np.float64)
    expected = np.rint((255 - inks) * (255 - k[..., None].astype(np.float64)) / 255).astype(np.int64)
    assert np.array_equal(_rgb(image), expected)


def test_as_rgb_ycbcr_by_the_jfif_formula():
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pixels[0, :3] = [[0, 128, 128], [255, 128, 128], [128, 128, 128]]
    luma, cb, cr = (pixels[..., i].astype(np.float64) for i in range(3))
    expected = np.stack([luma + 1.402 * (cr - 128),
                         luma - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                         luma + 1.772 * (cb - 128)], -1)
    expected = np.clip(np.rint(expected), 0, 255)
    out = _rgb(Image.frombytes("YCbCr", (16, 16), pixels.tobytes()))
    assert np.abs(out - expected).max() <= 1  # Pillow computes in fixed point
    assert np.array_equal(out[0, :3], [[0, 0, 0], [255, 255, 255], [128, 128, 128]])


def test_as_rgb_hsv_by_colorsys():
    pixels = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pixels[0, :4] = [[0, 255, 255], [85, 255, 255], [170, 255, 255], [0, 0, 77]]
    expected = np.array([[colorsys.hsv_to_rgb(*(channel / 255 for channel in pixel)) for pixel in row]
                         for row in pixels.astype(np.float64)]) * 255
    out = _rgb(Image.frombytes("HSV", (16, 16), pixels.tobytes()))
    assert np.abs(out - expected).max() <= 1
    assert np.array_equal(out[0, :4], [[255, 0, 0], [0, 255, 0], [0, 0, 255], [77, 77, 77]])


def test_as_rgb_lab_to_srgb_by_the_cie_formulas():
    # Pillow's LAB: L* scaled to 0..255, a* and b* signed bytes, D50 white (ICC), adapted to sRGB's D65 by Bradford.
    grid = np.array(np.meshgrid(np.arange(40, 241, 25), [0, 8, 16, -8, -16], [0, 8, 16, -8, -16], indexing="ij"))
    lab = (grid.reshape(3, -1).T & 255).astype(np.uint8)
    lightness = lab[:, 0].astype(np.float64) * 100 / 255
    a, b = lab[:, 1].astype(np.int8).astype(np.float64), lab[:, 2].astype(np.int8).astype(np.float64)
    fy = (lightness + 16) / 116
    delta = 6 / 29

    def finv(t):
        return np.where(t > delta, t ** 3, 3 * delta ** 2 * (t - 4 / 29))

    xyz_d50 = np.stack([0.96422 * finv(fy + a / 500), finv(fy), 0.82521 * finv(fy - b / 200)], -1)
    bradford = np.array([[0.9555766, -0.0230393, 0.0631636], [-0.0282895, 1.0099416, 0.0210077],
                         [0.0122982, -0.0204830, 1.3299098]])
    to_srgb = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560],
                        [0.0556434, -0.2040259, 1.0572252]])
    linear = np.clip(xyz_d50 @ bradford.T @ to_srgb.T, 0, 1)
    expected = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055) * 255
    out = _rgb(Image.frombytes("LAB", (len(lab), 1), lab.tobytes()))[0]
    assert np.abs(out - expected).max() <= 3  # LittleCMS interpolates an 8-bit table


@pytest.mark.parametrize("mode,dtype", [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"), ("I;16N", "=u2")])
def test_as_rgb_scales_16_bit_modes_to_their_high_byte(mode, dtype):
    image = Image.frombytes(mode, (len(_SIXTEEN_BIT), 1), _SIXTEEN_BIT.astype(dtype).tobytes())
    assert image.mode == mode
    out = _rgb(image)
    assert np.array_equal(out, _gray(_row(_SIXTEEN_BIT // 256)))
    assert out.min() == 0 and out.max() == 255
    spot = Image.frombytes(mode, (4, 1), np.array([0, 255, 256, 65535]).astype(dtype).tobytes())
    assert _rgb(spot)[0, :, 0].tolist() == [0, 0, 1, 255]


def test_as_rgb_takes_a_numpy_uint16_array_as_16_bit():
    values = _row(_SIXTEEN_BIT).astype(np.uint16)
    assert np.array_equal(_rgb(values), _gray(values.astype(np.int64) // 256))


def test_as_rgb_reads_mode_i_within_0_to_65535_as_16_bit():
    image = Image.fromarray(_row(_SIXTEEN_BIT).astype(np.int32))
    assert image.mode == "I"
    assert np.array_equal(_rgb(image), _gray(_row(_SIXTEEN_BIT // 256)))


@pytest.mark.parametrize("values", [[-100, 0, 100, 50, -100], [0, 70000, 140000, 1], [-(2 ** 31), 2 ** 31 - 1, 0]])
def test_as_rgb_maps_the_own_range_of_mode_i_beyond_16_bits(values):
    raw = np.array(values, dtype=np.int64)
    expected = _half_up((raw - raw.min()) * 255 / (raw.max() - raw.min()))
    out = _rgb(Image.fromarray(_row(raw).astype(np.int32)))
    assert np.array_equal(out, _gray(_row(expected)))
    assert out.min() == 0 and out.max() == 255


def test_as_rgb_mode_i_examples_and_constant_images():
    assert _rgb(Image.fromarray(np.array([[-100, 0, 100]], np.int32)))[0, :, 0].tolist() == [0, 128, 255]
    assert _rgb(Image.fromarray(np.full((2, 2), -7, np.int32))).max() == 0
    assert _rgb(Image.fromarray(np.full((2, 2), 70000, np.int32))).min() == 255
    assert _rgb(Image.fromarray(np.full((2, 2), 65535, np.int32))).min() == 255


def test_as_rgb_scales_floats_in_0_1_by_255():
    raw = np.concatenate([[0.0, 1 / 510, 0.5, 254.5 / 255, 1.0], np.linspace(0, 1, 101)])
    raw = raw.astype(np.float32).astype(np.float64)  # the expectation of the values the image really holds
    expected = _half_up(raw * 255)
    assert np.array_equal(_rgb(Image.fromarray(_row(raw).astype(np.float32))), _gray(_row(expected)))
    examples = Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], np.float32))
    assert _rgb(examples)[0, :, 0].tolist() == [0, 64, 128, 255]


def test_as_rgb_reads_floats_in_0_255_as_8_bit_levels():
    raw = np.concatenate([[0.0, 0.4, 0.6, 1.5, 127.49, 254.5, 255.0], np.linspace(0, 255, 97)])
    raw = raw.astype(np.float32).astype(np.float64)
    expected = _half_up(raw)
    assert np.array_equal(_rgb(Image.fromarray(_row(raw).astype(np.float32))), _gray(_row(expected)))


@pytest.mark.parametrize("values", [[-1.0, 0.0, 1.0, 0.25], [0.0, 1000.0, 65535.0, 3.5], [-3e6, 2e6, 0.0]])
def test_as_rgb_maps_the_own_range_of_other_floats(values):
    raw = np.array(values, dtype=np.float32).astype(np.float64)
    expected = _half_up((raw - raw.min()) * 255 / (raw.max() - raw.min()))
    out = _rgb(Image.fromarray(_row(raw).astype(np.float32)))
    assert np.array_equal(out, _gray(_row(expected)))
    assert out.min() == 0 and out.max() == 255


def test_as_rgb_floats_not_finite_and_constant():
    # Only finite values set the scale: here [0, 1]; NaN is black, infinities saturate.
    image = Image.fromarray(np.array([[np.nan, -np.inf, np.inf, 0.0, 0.5, 1.0]], np.float32))
    assert _rgb(image)[0, :, 0].tolist() == [0, 0, 255, 0, 128, 255]
    assert _rgb(Image.fromarray(np.full((2, 2), -2.0, np.float32))).max() == 0
    assert _rgb(Image.fromarray(np.full((2, 2), 300.0, np.float32))).min() == 255
    assert _rgb(Image.fromarray(np.array([[np.nan, np.inf]], np.float32)))[0, :, 0].tolist() == [0, 255]


def test_16_bit_grayscale_png_decoded_by_datasets_is_scaled_not_clipped(tmp_path):
    import datasets

    values = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    values[0, :4] = [0, 255, 256, 65535]
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    expected = _gray(values.astype(np.int64) // 256)
    feature = datasets.Image()
    for value in ({"path": str(path), "bytes": None}, {"path": None, "bytes": path.read_bytes()}):
        decoded = feature.decode_example(value)
        assert decoded.mode in ("I;16", "I")  # Pillow >= 10 opens 16-bit PNG gray as I;16, older ones as I
        assert np.array_equal(np.asarray(decoded), values)  # the file really holds 16 bits
        out = _rgb(decoded)
        assert not (out == 255).all()
        assert np.array_equal(out, expected)


def _png_16_bit(samples, colour_type):
    """A 16-bit PNG of `samples` ([H, W] gray or [H, W, 3] RGB), written by hand: Pillow writes no 16-bit RGB."""
    height, width = samples.shape[:2]
    rows = b"".join(b"\x00" + samples[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def test_a_16_bit_picture_gives_the_same_pixels_saved_as_gray_or_as_rgb():
    # Pillow reduces 16-bit RGB PNGs to 8 bits itself (keeping the high byte); as_rgb must agree with it for gray.
    values = _row(_SIXTEEN_BIT).astype(np.uint16)
    gray = Image.open(io.BytesIO(_png_16_bit(values, 0)))
    rgb = Image.open(io.BytesIO(_png_16_bit(np.repeat(values[..., None], 3, -1), 2)))
    assert rgb.mode == "RGB"
    assert np.array_equal(_rgb(gray), _rgb(rgb))
