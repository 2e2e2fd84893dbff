"""The square recipes' images (`cifar`, `miniimagenet`, `digits`) decoded once, resized to SxS, into an image store.

The square transform families start both views of every image by converting it to RGB and resizing it to SxS
(`ResizeIfNeeded`). Doing that once per dataset instead of once per example and epoch leaves only cheap tensor work per
batch, which `synermix_hf.data.batch_transforms` does on the training device. The pixels are exactly those the
per-image path feeds to `ToTensor`.

They are kept as every device-path image is (`synermix_hf.data.image_store.ImageStore`: rows of uint8 HWC pixels and
their index, in a folder next to the dataset's cache, memory-mapped, built once by threads in a temporary folder
renamed into place, by the local main process while the others wait), here with every row S x S. The store's rules
for a full disk, permissions, damage and leftovers are this cache's (`store_folder`); it has no
temporary file of its own (the former format's `<name>.npy.<random>.tmp` files, left by builds killed over a day ago,
are removed by the next build in their folder).

An image that cannot be decoded (a truncated file, ...) is left black and returned with the others (`failures`), so
that the caller decides (`synermix_hf.data.bad_images`); the failures are kept in the store's folder (`bad.json`,
checked against the store's manifest at every reuse: a store without them is rebuilt, never read as if every image
had decoded) for later runs.

    store, failures = decoded_images_and_failures(dataset, "img", 32)   # store.square_batch(rows): [B, 32, 32, 3]
"""

from __future__ import annotations

from typing import Any

from .image_store import _INDEX_COLUMNS, DecodeFailure, ImageStore, _stored, store_path

__all__ = ["decoded_cache_path", "decoded_images_and_failures", "decoded_nbytes"]


def decoded_nbytes(num_images: int, image_size: int) -> int:
    """Bytes of the store of `num_images` RGB images of side `image_size` (pixels and index)."""
    return int(num_images) * (3 * int(image_size) ** 2 + _INDEX_COLUMNS * 8)


def decoded_cache_path(dataset: Any, image_column: str, image_size: int, cache_dir: str | None = None) -> str:
    """The folder where `decoded_images_and_failures` keeps the images of `dataset` (a `datasets.Dataset`) at `image_size`.

    The name holds the dataset's fingerprint (which `datasets` changes with every `select`, `shuffle`, split, cast,
    ...), the size and a hash of the decoding rule (column, format version, Pillow version).
    """
    return store_path(dataset, image_column, image_size, "bilinear", cache_dir, square=True)


def decoded_images_and_failures(
    dataset: Any,
    image_column: str,
    image_size: int,
    cache_dir: str | None = None,
    num_threads: int | None = None,
    use_cache: bool | None = None,
) -> tuple[ImageStore, list[DecodeFailure]]:
    """The images of `dataset` as RGB uint8 S x S rows of a square `ImageStore`, resized where needed, decoded at most
    once, and the rows that could not be decoded (left black), as `(row, source, error)`.

    Args:
        dataset: A `datasets.Dataset` whose `image_column` is a `datasets.Image` feature.
        image_column: The image column.
        image_size: S.
        cache_dir: Folder of the store's folder (default: next to the dataset's cache files, or `HF_DATASETS_CACHE`).
        num_threads: Decoding threads (default: the CPU count).
        use_cache: Keep the store on disk and memory-map it (default: when `datasets` caching is enabled). Without
            it the images are decoded into memory.

    Raises:
        StoreSpaceError: no room on the disk for the store (the partial build is removed).
        StoreAccessError: the store cannot be read by this user, or a new or damaged one cannot be written.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}.")
    return _stored(dataset, image_column, image_size, "bilinear", cache_dir, num_threads, use_cache, square=True)
