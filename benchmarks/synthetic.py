"""Synthetic image-classification data for the benchmarks, stored and loaded as a Hub copy is."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import benchmarks.common  # noqa: F401 - offline, quiet environment before datasets is imported

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE_FORMATS = {"jpeg": {"format": "JPEG", "quality": 90}, "png": {"format": "PNG"}}

FOOD101_SHAPES = ((512, 384), (384, 512), (512, 512))
"""`(height, width)` of Food-101's images: nearly all have 512 pixels on the longer side, in these three shapes."""


def random_image(rng: np.random.Generator, size: int, width: int | None = None) -> np.ndarray:
    """A `size` x `width` (default square) RGB image of smooth noise (random colours on a grid of 1/8 of each side,
    upsampled) plus grain of up to 20 levels: it compresses more like a photo than white noise does."""
    height, width = size, size if width is None else width
    small = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))
    return np.clip(pixels.astype(np.int16) + rng.integers(-20, 21, pixels.shape), 0, 255).astype(np.uint8)


def class_colour(label: int) -> np.ndarray:
    """Each class's own colour (as `synermix_hf.testing.tiny_images`), float `[3]`."""
    return np.array([(37 * label) % 256, (91 * label + 50) % 256, (53 * label + 120) % 256], dtype=np.float64)


def write_image_dataset(
    folder: Path,
    num_images: int,
    size: int,
    num_classes: int,
    image_format: str = "png",
    seed: int = 0,
    shapes: Sequence[tuple[int, int]] | None = None,
    class_signal: float = 0.0,
) -> datasets.Dataset:
    """Random images with class labels, written as one parquet file and read back through `datasets`.

    The `image` column (`datasets.Image`) holds `random_image`s encoded as JPEG (quality 90) or PNG bytes; the `label`
    column (`datasets.ClassLabel`) cycles over the classes, so each class holds `num_images / num_classes` images,
    give or take one. The table is written with pyarrow and loaded with `datasets`' parquet builder (its cache under
    `folder`, memory-mapped back), as a Hub copy is. `Dataset.from_dict` is avoided on purpose: its dill fingerprint
    fails on Python 3.12 with pyarrow 26 ("Can't pickle <class 'MonthDayNano'>"), seen on the GPU machine.

    Args:
        folder: Where the parquet file and the `datasets` cache go (a temporary folder).
        num_images: Number of images.
        size: Side of the square images, in pixels (ignored when `shapes` is given).
        num_classes: Number of classes.
        image_format: `"jpeg"` or `"png"`.
        seed: Seed of the pixels; the same seed gives the same images.
        shapes: `(height, width)` of the images, cycled over them (image `i` has `shapes[i % len(shapes)]`; e.g.
            `FOOD101_SHAPES`); default: all `size` x `size`.
        class_signal: Weight in [0, 1] of the class's colour (`class_colour`) blended into the noise, so that a small
            model has something to learn; 0 (default): pure noise, the labels carry no signal.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"`image_format` must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    if not 0.0 <= class_signal <= 1.0:
        raise ValueError(f"`class_signal` must be in [0, 1], got {class_signal}")
    shapes = [(int(h), int(w)) for h, w in shapes] if shapes else [(size, size)]
    rng = np.random.default_rng(seed)
    labels = (np.arange(num_images) % num_classes).tolist()
    images = []
    for i, label in enumerate(labels):
        pixels = random_image(rng, *shapes[i % len(shapes)])
        if class_signal:
            pixels = ((1 - class_signal) * pixels + class_signal * class_colour(label)).round().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, **IMAGE_FORMATS[image_format])
        images.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=num_classes)})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shape_tag = f"{size}px" if len(shapes) == 1 and shapes[0] == (size, size) else "-".join(
        f"{h}x{w}" for h, w in shapes)
    signal_tag = f"_signal{class_signal:g}" if class_signal else ""
    path = folder / f"{image_format}_{shape_tag}_{num_images}_seed{seed}{signal_tag}.parquet"
    pq.write_table(pa.table({"image": images, "label": labels}, schema=features.arrow_schema), str(path))
    return datasets.Dataset.from_parquet(str(path), features=features, cache_dir=str(folder / "datasets_cache"))
