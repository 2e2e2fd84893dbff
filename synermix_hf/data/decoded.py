"""Decode a dataset's images once, resized to SxS, into a uint8 `[N, 3, S, S]` array cached on disk.

The square transform families (`cifar`, `miniimagenet`, `digits`) start both views of every image by converting it to
RGB and resizing it to SxS (`ResizeIfNeeded`). Doing that once per dataset instead of once per example and epoch
leaves only cheap tensor work per batch, which `synermix_hf.data.batch_transforms` does on the training device. The pixels
are exactly those the per-image path feeds to `ToTensor`.

The array is a `.npy` file next to the dataset's own cache files (or in `HF_DATASETS_CACHE` for an in-memory dataset),
named by the dataset's fingerprint, the image column, S and the decoding rule, and read back memory-mapped, so later
runs and every process of a distributed run share one copy. It is built in parallel by threads (PIL releases the GIL
while decoding and resizing), written to a temporary file and renamed into place, so an interrupted build never
leaves a partial cache; in a distributed run the local main process builds it while the others wait.

An image that cannot be decoded (a truncated file, ...) stops `decoded_images` with an error naming it.
`decoded_images_and_failures` instead leaves its row black and returns it with the others, so that the caller decides
(`synermix_hf.data.bad_images`); the failures are kept next to the array (`<cache>.bad.json`) for later runs.

    images = decoded_images(dataset, "img", 32)        # np.memmap, uint8 [N, 3, 32, 32]
    images, failures = decoded_images_and_failures(dataset, "img", 32)   # failures: [(row, source, error), ...]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["DEFAULT_BUDGET_GIB", "decoded_cache_path", "decoded_images", "decoded_images_and_failures",
           "decoded_nbytes"]

logger = logging.getLogger(__name__)

DEFAULT_BUDGET_GIB = 4.0
"""Largest decoded size (GiB) the device path takes by default: CIFAR-100 (train + test) needs 0.17, mini-ImageNet at
84 px 1.18."""

# Bump when the decoding rule changes, so that old caches are not reused.
_FORMAT_VERSION = 1
_CHUNK_ROWS = 512

DecodeFailure = tuple[int, str, str]
"""A row that could not be decoded: `(row, source, error)`, the source `file <path>` or `row <row>`."""


def decoded_nbytes(num_images: int, image_size: int) -> int:
    """Bytes of the decoded uint8 array of `num_images` RGB images of side `image_size`."""
    return int(num_images) * 3 * int(image_size) ** 2


def _decode_failure(row: int, value: Any, error: BaseException) -> DecodeFailure:
    """The failure record of `row`, whose undecoded `value` (`{"bytes", "path"}`) raised `error`."""
    path = value.get("path") if isinstance(value, dict) else None
    return (row, f"file {path}" if path else f"row {row}", f"{type(error).__name__}: {error}".strip())


def _failure_error(failures: list[DecodeFailure]) -> ValueError:
    """The error that stops a build which does not tolerate failures: it names the first failed file (or row)."""
    row, source, error = failures[0]
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return ValueError(f"Cannot decode the image in {source}: {error}{more}.")


def _undecoded_column(dataset: Any, image_column: str) -> Any:
    """`dataset`'s image column undecoded (`{"bytes", "path"}` per row), as plain Python values, for threads to
    decode their own rows."""
    import datasets

    raw = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    return raw.with_format(None)


def _write_failures(file: str, failures: list[DecodeFailure]) -> None:
    with open(file, "w", encoding="utf-8") as handle:
        json.dump(failures, handle)


def _load_failures(file: str) -> list[DecodeFailure]:
    if not os.path.exists(file):
        return []  # no file: every row decoded (a build with failures writes it before the pixels)
    with open(file, encoding="utf-8") as handle:
        return [(int(row), str(source), str(error)) for row, source, error in json.load(handle)]


def _decoding_rule(image_column: str, image_size: int) -> str:
    import PIL

    # The rule of `synermix_hf.data.transforms.ResizeIfNeeded` after `as_rgb`, with the Pillow version whose resampling
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
    raw: Any, feature: Any, image_column: str, image_size: int, out: np.ndarray, start: int, stop: int,
    tolerate: bool,
) -> tuple[int, list[DecodeFailure]]:
    """Decode rows `[start, stop)` of the undecoded column into `out[start:stop]`, as the per-image path prepares
    them before ToTensor (`feature.decode_example`, RGB, `ResizeIfNeeded`). A row that fails is left black and
    returned with `tolerate`, and raises a `ValueError` naming it otherwise."""
    from .transforms import ResizeIfNeeded, as_rgb

    resize = ResizeIfNeeded(image_size)
    values = raw[start:stop][image_column]
    failures = []
    for offset, value in enumerate(values):
        row = start + offset
        try:
            image = resize(as_rgb(feature.decode_example(value)))
        except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, zlib.error, ...
            failure = _decode_failure(row, value, error)
            if not tolerate:
                raise _failure_error([failure]) from error
            out[row] = 0
            failures.append(failure)
            continue
        out[row] = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    return stop - start, failures


def _failures_path(path: str) -> str:
    return path + ".bad.json"


def _read_failures(path: str) -> list[DecodeFailure]:
    return _load_failures(_failures_path(path))


def _build(dataset: Any, image_column: str, image_size: int, path: str | None, num_threads: int,
           tolerate: bool) -> tuple[np.ndarray, list[DecodeFailure]]:
    from tqdm.auto import tqdm

    raw = _undecoded_column(dataset, image_column)
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
            jobs = [pool.submit(_decode_rows, raw, feature, image_column, image_size, out, a, b, tolerate)
                    for a, b in chunks]
            failures = []
            for job in jobs:
                done, failed = job.result()
                failures += failed
                bar.update(done)
        if temporary is None:
            return out, failures
        out.flush()
        del out
        # The failures first, then the array: an array in place always has its failures beside it.
        if failures:
            _write_failures(_failures_path(path), failures)
        elif os.path.exists(_failures_path(path)):
            os.remove(_failures_path(path))
        os.replace(temporary, path)  # atomic: readers see no file or the whole file
    except BaseException:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
        raise
    return np.load(path, mmap_mode="r"), failures


def decoded_images(
    dataset: Any,
    image_column: str,
    image_size: int,
    cache_dir: str | None = None,
    num_threads: int | None = None,
    use_cache: bool | None = None,
) -> np.ndarray:
    """The images of `dataset` as RGB uint8 `[N, 3, S, S]`, resized to SxS where needed, decoded at most once.

    Arguments as for `decoded_images_and_failures`.

    Raises:
        ValueError: an image cannot be decoded; the message names its file (or row).
    """
    images, failures = _decoded(dataset, image_column, image_size, cache_dir, num_threads, use_cache, tolerate=False)
    if failures:  # a cache built by `decoded_images_and_failures`
        raise _failure_error(failures)
    return images


def decoded_images_and_failures(
    dataset: Any,
    image_column: str,
    image_size: int,
    cache_dir: str | None = None,
    num_threads: int | None = None,
    use_cache: bool | None = None,
) -> tuple[np.ndarray, list[DecodeFailure]]:
    """The images of `dataset` as RGB uint8 `[N, 3, S, S]`, resized to SxS where needed, decoded at most once, and the
    rows that could not be decoded (left black), as `(row, source, error)`.

    Args:
        dataset: A `datasets.Dataset` whose `image_column` is a `datasets.Image` feature.
        image_column: The image column.
        image_size: S.
        cache_dir: Folder of the cache file (default: next to the dataset's cache files, or `HF_DATASETS_CACHE`).
        num_threads: Decoding threads (default: the CPU count).
        use_cache: Keep the array on disk and memory-map it (default: when `datasets` caching is enabled). Without
            it the array is decoded into memory.

    Returns:
        `(images, failures)`: a read-only `np.memmap` of the cache file, or an in-memory array without the cache, and
        the rows that could not be decoded.
    """
    return _decoded(dataset, image_column, image_size, cache_dir, num_threads, use_cache, tolerate=True)


def _decoded(dataset: Any, image_column: str, image_size: int, cache_dir: str | None, num_threads: int | None,
             use_cache: bool | None, tolerate: bool) -> tuple[np.ndarray, list[DecodeFailure]]:
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
        return _build(dataset, image_column, image_size, None, threads, tolerate)

    from accelerate import PartialState

    path = decoded_cache_path(dataset, image_column, image_size, cache_dir)
    expected = (len(dataset), 3, image_size, image_size)
    with PartialState().local_main_process_first():
        if os.path.exists(path):
            images = np.load(path, mmap_mode="r")
            if images.shape == expected and images.dtype == np.uint8:
                logger.info("Decoded images: reusing %s", path)
                return images, _read_failures(path)
            logger.warning("Decoded images: %s has shape %s, expected %s; rebuilding it.", path, images.shape,
                           expected)
            del images
        logger.info("Decoded images: decoding %d images at %dpx into %s", len(dataset), image_size, path)
        return _build(dataset, image_column, image_size, path, threads, tolerate)
