"""Decode a dataset's images once, resized to SxS, into a uint8 `[N, 3, S, S]` array cached on disk.

The square transform families (`cifar`, `miniimagenet`, `digits`) start both views of every image by converting it to
RGB and resizing it to SxS (`ResizeIfNeeded`). Doing that once per dataset instead of once per example and epoch
leaves only cheap tensor work per batch, which `synermix_hf.batch_transforms` does on the training device. The pixels
are exactly those the per-image path feeds to `ToTensor`.

The array is a `.npy` file next to the dataset's own cache files (or in `HF_DATASETS_CACHE` for an in-memory dataset),
named by the dataset's fingerprint, the image column, S and the decoding rule, and read back memory-mapped, so later
runs and every process of a distributed run share one copy. It is built in parallel by threads (PIL releases the GIL
while decoding and resizing), written to a temporary file and renamed into place, so an interrupted build never
leaves a partial cache; in a distributed run the local main process builds it while the others wait.

    images = decoded_images(dataset, "img", 32)        # np.memmap, uint8 [N, 3, 32, 32]
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["DEFAULT_BUDGET_GIB", "decoded_cache_path", "decoded_images", "decoded_nbytes"]

logger = logging.getLogger(__name__)

DEFAULT_BUDGET_GIB = 4.0
"""Largest decoded size (GiB) the device path takes by default: CIFAR-100 (train + test) needs 0.17, mini-ImageNet at
84 px 1.18."""

# Bump when the decoding rule changes, so that old caches are not reused.
_FORMAT_VERSION = 1
_CHUNK_ROWS = 512


def decoded_nbytes(num_images: int, image_size: int) -> int:
    """Bytes of the decoded uint8 array of `num_images` RGB images of side `image_size`."""
    return int(num_images) * 3 * int(image_size) ** 2


def _decoding_rule(image_column: str, image_size: int) -> str:
    import PIL

    # The rule of `synermix_hf.transforms.ResizeIfNeeded` after `_as_rgb`, with the Pillow version whose resampling
    # produced the pixels.
    return f"v{_FORMAT_VERSION}|column={image_column}|rgb|bilinear-if-needed={image_size}|pillow={PIL.__version__}"


def _cache_folder(dataset: Any) -> str:
    import datasets

    for cache_file in getattr(dataset, "cache_files", None) or []:
        folder = os.path.dirname(os.path.abspath(cache_file["filename"]))
        if os.access(folder, os.W_OK):
            return folder
    return os.path.join(str(datasets.config.HF_DATASETS_CACHE), "synermix_decoded")


def decoded_cache_path(dataset: Any, image_column: str, image_size: int, cache_dir: str | None = None) -> str:
    """Where `decoded_images` keeps the array of `dataset` (a `datasets.Dataset`) at `image_size`.

    The name holds the dataset's fingerprint (which `datasets` changes with every `select`, `shuffle`, split, cast,
    ...), the column, the size and a hash of the decoding rule.
    """
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not fingerprint:
        raise ValueError(f"{type(dataset).__name__} has no fingerprint; decoded_images needs a datasets.Dataset.")
    rule = hashlib.sha256(_decoding_rule(image_column, image_size).encode()).hexdigest()[:12]
    name = f"synermix-decoded-{fingerprint}-{image_size}px-{rule}.npy"
    return os.path.join(cache_dir or _cache_folder(dataset), name)


def _decode_rows(
    raw: Any, feature: Any, image_column: str, image_size: int, out: np.ndarray, start: int, stop: int
) -> int:
    """Decode rows `[start, stop)` of the undecoded column into `out[start:stop]`, as the per-image path prepares
    them before ToTensor (`feature.decode_example`, RGB, `ResizeIfNeeded`)."""
    from .data import _as_rgb
    from .transforms import ResizeIfNeeded

    resize = ResizeIfNeeded(image_size)
    values = raw[start:stop][image_column]
    for offset, value in enumerate(values):
        image = resize(_as_rgb(feature.decode_example(value)))
        out[start + offset] = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    return stop - start


def _build(dataset: Any, image_column: str, image_size: int, path: str | None, num_threads: int) -> np.ndarray:
    import datasets
    from tqdm.auto import tqdm

    # Read the undecoded column (bytes or path per row); each thread decodes its own rows.
    raw = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    raw = raw.with_format(None)
    feature = dataset.features[image_column]
    shape = (len(dataset), 3, image_size, image_size)
    if path is None:
        out = np.empty(shape, dtype=np.uint8)
        temporary = None
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                                             dir=os.path.dirname(path))
        os.close(handle)
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
    try:
        chunks = [(start, min(start + _CHUNK_ROWS, len(dataset))) for start in range(0, len(dataset), _CHUNK_ROWS)]
        with ThreadPoolExecutor(max_workers=num_threads) as pool, tqdm(
            total=len(dataset), desc=f"Decoding images once at {image_size}px", unit="img",
            disable=len(dataset) < 10 * _CHUNK_ROWS,
        ) as bar:
            jobs = [pool.submit(_decode_rows, raw, feature, image_column, image_size, out, a, b) for a, b in chunks]
            for job in jobs:
                bar.update(job.result())
        if temporary is None:
            return out
        out.flush()
        del out
        os.replace(temporary, path)  # atomic: readers see no file or the whole file
    except BaseException:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
        raise
    return np.load(path, mmap_mode="r")


def decoded_images(
    dataset: Any,
    image_column: str,
    image_size: int,
    cache_dir: str | None = None,
    num_threads: int | None = None,
    use_cache: bool | None = None,
) -> np.ndarray:
    """The images of `dataset` as RGB uint8 `[N, 3, S, S]`, resized to SxS where needed, decoded at most once.

    Args:
        dataset: A `datasets.Dataset` whose `image_column` is a `datasets.Image` feature.
        image_column: The image column.
        image_size: S.
        cache_dir: Folder of the cache file (default: next to the dataset's cache files, or `HF_DATASETS_CACHE`).
        num_threads: Decoding threads (default: the CPU count).
        use_cache: Keep the array on disk and memory-map it (default: when `datasets` caching is enabled). Without
            it the array is decoded into memory.

    Returns:
        A read-only `np.memmap` of the cache file, or an in-memory array without the cache.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"decoded_images needs a datasets.Dataset, got {type(dataset).__name__}.")
    if image_column not in dataset.column_names:
        raise ValueError(f"image_column={image_column!r} is not a column of the dataset ({dataset.column_names}).")
    if not isinstance(dataset.features[image_column], datasets.Image):
        raise ValueError(
            f"image_column={image_column!r} holds {type(dataset.features[image_column]).__name__}, not "
            "datasets.Image; only Image columns can be decoded once."
        )
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}.")
    threads = num_threads or os.cpu_count() or 1
    use_cache = datasets.is_caching_enabled() if use_cache is None else use_cache
    if not use_cache:
        return _build(dataset, image_column, image_size, None, threads)

    from accelerate import PartialState

    path = decoded_cache_path(dataset, image_column, image_size, cache_dir)
    expected = (len(dataset), 3, image_size, image_size)
    with PartialState().local_main_process_first():
        if os.path.exists(path):
            images = np.load(path, mmap_mode="r")
            if images.shape == expected and images.dtype == np.uint8:
                logger.info("Decoded images: reusing %s", path)
                return images
            logger.warning("Decoded images: %s has shape %s, expected %s; rebuilding it.", path, images.shape,
                           expected)
            del images
        logger.info("Decoded images: decoding %d images at %dpx into %s", len(dataset), image_size, path)
        return _build(dataset, image_column, image_size, path, threads)
