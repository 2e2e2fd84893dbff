"""Synthetic image-classification data for the benchmarks, stored and loaded as a Hub copy is."""

from __future__ import annotations

import io
from pathlib import Path

import benchmarks.common  # noqa: F401 - offline, quiet environment before datasets is imported

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE_FORMATS = {"jpeg": {"format": "JPEG", "quality": 90}, "png": {"format": "PNG"}}


def random_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A `size` x `size` RGB image of smooth noise (random colours on a grid of size/8, upsampled) plus grain of up
    to 20 levels: it compresses more like a photo than white noise does."""
    small = rng.integers(0, 256, (max(1, size // 8), max(1, size // 8), 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR))
    return np.clip(pixels.astype(np.int16) + rng.integers(-20, 21, pixels.shape), 0, 255).astype(np.uint8)


def write_image_dataset(
    folder: Path, num_images: int, size: int, num_classes: int, image_format: str = "png", seed: int = 0
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
        size: Side of the square images, in pixels.
        num_classes: Number of classes.
        image_format: `"jpeg"` or `"png"`.
        seed: Seed of the pixels; the same seed gives the same images.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"`image_format` must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(num_images):
        buffer = io.BytesIO()
        Image.fromarray(random_image(rng, size)).save(buffer, **IMAGE_FORMATS[image_format])
        images.append({"bytes": buffer.getvalue(), "path": None})
    labels = (np.arange(num_images) % num_classes).tolist()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=num_classes)})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{image_format}_{size}px_{num_images}_seed{seed}.parquet"
    pq.write_table(pa.table({"image": images, "label": labels}, schema=features.arrow_schema), str(path))
    return datasets.Dataset.from_parquet(str(path), features=features, cache_dir=str(folder / "datasets_cache"))
