"""Decode a dataset's images once into one flat uint8 array of rows of varying size: a memory-mapped image store.

A store keeps every image as the per-image path has it before its random steps: at full resolution (the `imagenet`
family, whose RandomResizedCrop is cut from the whole image every epoch), resized to S x S (the square families: `square=True`,
bilinear, only where the image is not that size already, as `ResizeIfNeeded`), or as its evaluation view (`Resize` + `CenterCrop`, made once by torchvision itself).
The loader then copies stored rows instead of decoding a JPEG every epoch (BENCHMARKS.md, section 7).

Layout: `pixels` is one flat uint8 array, the images' RGB rows in HWC order one after the other; `index` is int64
`[N, 5]`, per image `offset, height, width, original_height, original_width` (the stored size, and the size
`datasets.Image` decodes, after its EXIF transpose); `checksums` is uint64 `[N]`, each row's xxh3-64, all checked when
a run opens a store of up to 1 GiB of pixels (damaged: rebuilt), else each row the first time the run reads it (a row
whose pixels changed on disk is then decoded again from the dataset, and the store rebuilt by the next run:
`synermix_hf.data.store_folder`). A row takes `3 * h * w` bytes (589,824 for a 512 x 384 image at full resolution).

The store is a folder next to the dataset's cache files (or in `HF_DATASETS_CACHE` for an in-memory dataset), named by
the dataset's fingerprint, the column, S, the interpolation and the decoding rule (`store_path`), holding `pixels.npy`,
`checksums.npy`, `index.npy`, `bad.json` (the images that failed, often `[]`) and `store.json`, its manifest; it is read back
memory-mapped, so later runs and every process of a distributed run share one copy. The build reads every image's size
from its header (pass 1, no decoding), lays the rows out, then decodes and resizes in threads straight into each row's
place in the file (pass 2; PIL releases the GIL). In a distributed run the local main process builds it while the
others wait. How the folder is built complete or not at all, shared between users, checked at every reuse, and what
happens when things go wrong (a full disk, permissions, damage, leftovers of interrupted builds):
`synermix_hf.data.store_folder`.

An image that cannot be read or decoded (a truncated file, not an image, ...) is stored black (an unreadable header as
a 1x1 image) and returned with the others as `(row, source, error)`, so that the caller decides
(`synermix_hf.data.bad_images`).

    store, failures = stored_images_and_failures(dataset, "image", 0)  # store.image(r) -> uint8 [h, w, 3]
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .store_folder import (
    CHECKSUMS_FILE,
    FAILURES_FILE,
    INDEX_FILE,
    PIXELS_FILE,
    STORE_FORMAT_VERSION,
    STORE_PREFIX,
    BrokenStore,
    PixelsFile,
    StoreAccessError,
    StoreBuild,
    StoreSpaceError,
    check_manifest,
    load_failures,
    mark_damaged,
    remove_damaged,
    row_checksum,
    unreadable,
)

__all__ = [
    "DecodeFailure",
    "STORE_FORMAT_VERSION",
    "ImageStore",
    "StoreAccessError",
    "StoreBuildStopped",
    "StoreSpaceError",
    "estimated_store_nbytes",
    "existing_store_nbytes",
    "square_store_nbytes",
    "store_path",
    "stored_images_and_failures",
    "stored_steps",
]

logger = logging.getLogger(__name__)

_CHECK_AT_OPEN_BYTES = 1 << 30
"""A store's pixels up to this size are checked in full when a run opens it (a hash at memory speed, a read of the file
from disk: BENCHMARKS.md, section 8), a damaged one rebuilt at once; a larger store's rows are checked as the run
first reads them."""
_UNCHECKED, _GOOD, _CHANGED = 0, 1, 2  # a stored row's state as this run found it (`ImageStore`)
_CHUNK_ROWS = 64  # rows per thread task: small enough for a progress bar that moves, large enough to keep threads busy
_PROGRESS_MIN_ROWS = 1000
_INDEX_COLUMNS = 5  # offset, height, width, original_height, original_width
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that `ImageOps.exif_transpose` turns by 90 degrees


class StoreBuildStopped(RuntimeError):
    """SIGTERM (a scheduler's stop) during a store's build: the build stopped after the chunk of rows in progress
    and its partial folder was removed. The message is one line; `signal_name` is the signal's."""

    def __init__(self, signal_name: str, what: str):
        self.signal_name = signal_name
        super().__init__(f"{signal_name} received while {what}: stopped before training, and the partial store was "
                         "removed. Run the same command again to build it.")


DecodeFailure = tuple[int, str, str]
"""A row that could not be decoded: `(row, source, error)`, the source `file <path>` or `row <row>`."""


def _decode_failure(row: int, value: Any, error: BaseException) -> DecodeFailure:
    """The failure record of `row`, whose undecoded `value` (`{"bytes", "path"}`) raised `error`."""
    path = value.get("path") if isinstance(value, dict) else None
    return (row, f"file {path}" if path else f"row {row}", f"{type(error).__name__}: {error}".strip())


def _undecoded_column(dataset: Any, image_column: str) -> Any:
    """`dataset`'s image column undecoded (`{"bytes", "path"}` per row), as plain Python values, for threads to
    decode their own rows."""
    import datasets

    raw = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    return raw.with_format(None)


def _dataset_folders(dataset: Any) -> list[str]:
    """The folders of `dataset`'s cache files, in order, each once."""
    folders = [os.path.dirname(os.path.abspath(cache_file["filename"]))
               for cache_file in getattr(dataset, "cache_files", None) or []]
    return list(dict.fromkeys(folders))


def _cache_folder(dataset: Any) -> str:
    import datasets

    for folder in _dataset_folders(dataset):
        if os.access(folder, os.W_OK):
            return folder
    return os.path.join(str(datasets.config.HF_DATASETS_CACHE), "synermix_decoded")


def _resize_label(short_side: int, square: bool = False, centre_crop_of: int | None = None) -> str:
    # square: every image resized to S x S, or the S x S centre of the image resized to `centre_crop_of` (the
    # evaluation view); else full resolution
    if centre_crop_of is not None:
        return f"r{centre_crop_of}c{short_side}"
    return f"sq{short_side}" if square else "full"


def _stored_size(height: int, width: int, short_side: int, square: bool) -> tuple[int, int]:
    return (int(short_side), int(short_side)) if square else (int(height), int(width))


def _changed_problem(row: int, count: int = 1) -> str:
    more = f" (and {count - 1} more)" if count > 1 else ""
    return f"row {row}{more} changed since the store was written: disk damage, or a copy cut short or overwritten"


class ImageStore:
    """The stored images of a dataset: rows of varying size in one flat uint8 array, and their index.

    Args:
        pixels: Flat uint8 array, the images' RGB rows (HWC) one after the other (a read-only memory map when cached).
        index: int64 `[N, 5]`: `offset, height, width, original_height, original_width` per image.
        short_side: S, the stored shorter side (0: full resolution), or with `square` the stored side.
        interpolation: The resize's filter, one of `synermix_hf.data.transforms.INTERPOLATIONS`.
        path: The store's folder, or None for a store built in memory. A store with a folder pickles without its
            arrays and reopens them from the folder (DataLoader workers started by spawn map the same file).
        square: Every image was resized to S x S (the square recipes' `ResizeIfNeeded`), not by its shorter side.
        checksums: uint64 `[N]`, each row's `row_checksum` as built (a store with a folder), or None: not checked.
            A row is checked the first time it is read by any of the processes that share this object (a DataLoader's
            workers, forked or spawned, share which rows were checked).
        source: Decodes a row again as the build did (`_RowSource`), for a row that fails its check; None: such a
            row stops the read.
    """

    def __init__(self, pixels: np.ndarray, index: np.ndarray, short_side: int, interpolation: str,
                 path: str | None = None, square: bool = False, checksums: np.ndarray | None = None,
                 source: Callable[[int, int, int], np.ndarray] | None = None):
        self.pixels = pixels
        self.index = index
        self.short_side = short_side
        self.interpolation = interpolation
        self.path = path
        self.square = square
        self.checksums = checksums
        self.source = source
        # Each row's state, _UNCHECKED, _GOOD or _CHANGED, in shared memory: the DataLoader's workers, started afresh
        # each epoch, share it (with fork and with spawn, whose pickling of a tensor shares its memory), so each row is
        # checked once a run, not once a worker, and a changed row is decoded again by every process that reads it.
        self._checked = None if checksums is None else torch.zeros(len(index), dtype=torch.uint8).share_memory_()
        self._repaired: dict[int, np.ndarray] = {}  # rows that failed their check, decoded again
        self._warned = False
        self._all_checked = False  # every row checked (by this process or another): no more lookups
        self._lookups = 0

    def __len__(self) -> int:
        return len(self.index)

    def image(self, row: int) -> np.ndarray:
        """Image `row` as uint8 `[h, w, 3]` (a view of the store, no copy)."""
        return next(self._images(np.array([row], dtype=np.int64), np.asarray(self.index[[row]])))

    @property
    def nbytes(self) -> int:
        """Bytes of the pixels."""
        return int(self.pixels.nbytes)

    def square_batch(self, rows: Any) -> torch.Tensor:
        """The images of `rows` of a square store (every image S x S), uint8 `[B, S, S, 3]` (HWC): one gather."""
        if not self.square:
            raise ValueError(f"square_batch needs a store of S x S images, not {self!r}.")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self._check_rows(rows)
        side = int(self.short_side)
        frames = self.pixels.reshape(len(self), side, side, 3)[rows]
        for position, row in enumerate(rows.tolist()):
            if row in self._repaired:
                frames[position] = self._repaired[row].reshape(side, side, 3)
        return torch.from_numpy(frames)

    def _images(self, rows: np.ndarray, entries: np.ndarray) -> Iterator[np.ndarray]:
        """Each of `rows` as uint8 `[h, w, 3]` (views of the store, each checked), `entries` their index rows."""
        self._check_rows(rows)
        for row, (offset, height, width) in zip(rows.tolist(), entries[:, :3].tolist()):
            data = self._repaired.get(row)
            if data is None:
                data = self.pixels[offset : offset + height * width * 3]
            yield data.reshape(height, width, 3)

    def _check_rows(self, rows: np.ndarray) -> None:
        """Check the pixels of the `rows` not checked yet (by this process or another sharing this store) against
        their checksums. A row that fails, here or in another process, is decoded again (`_repair`) and read from
        that copy from then on."""
        if self._checked is None or self._all_checked:
            return
        state = self._checked.numpy()
        todo = np.unique(rows[state[rows] != _GOOD])
        if self._repaired and len(todo):  # those decoded again here already
            todo = todo[[row not in self._repaired for row in todo.tolist()]]
        if not len(todo):
            self._lookups += 1
            if self._lookups % 64 == 0:  # the whole map now and then (its size in bytes), so that later epochs skip
                self._all_checked = bool((state == _GOOD).all())
            return
        unchecked = todo[state[todo] == _UNCHECKED]
        changed = set(_changed_rows(self.pixels, self.index, self.checksums, unchecked).tolist())
        for row in todo.tolist():
            if row in changed or state[row] == _CHANGED:
                height, width = (int(value) for value in self.index[row, 1:3])
                self._repaired[row] = self._repair(row, height, width)
                state[row] = _CHANGED
            else:
                state[row] = _GOOD

    def mark_checked(self) -> None:
        """Take every row as checked and good (a store just built, or checked in full when opened)."""
        if self._checked is not None:
            self._checked.fill_(_GOOD)
            self._all_checked = True

    def _repair(self, row: int, height: int, width: int) -> np.ndarray:
        """Row `row`'s pixels, decoded again from the dataset, after its pixels on disk failed their check: the
        store is marked for the next run to rebuild, with one warning naming its pixels file (from the first
        process of the run that finds it). A row that cannot be made again as built stops with a `RuntimeError`."""
        pixels_file = os.path.join(self.path or "", PIXELS_FILE)
        problem = _changed_problem(row)
        data = self.source(row, height, width) if self.source is not None else None
        if data is None or row_checksum(data) != int(self.checksums[row]):
            mark_damaged(self.path, problem)
            raise RuntimeError(f"The image store {self.path} is damaged ({pixels_file}: {problem}), and decoding the "
                               "image again does not give its pixels back (did the dataset change?). Run again: it "
                               "builds the store anew.")
        if not self._warned:
            self._warned = True
            marked = mark_damaged(self.path, problem)
            if marked:
                logger.warning("Image store: %s is damaged (%s); its damaged images are decoded again from the "
                               "dataset for this run, and the next run builds the store again.", pixels_file, problem)
            elif marked is None:
                logger.warning("Image store: %s is damaged (%s); its damaged images are decoded again from the "
                               "dataset at every read. This user may not mark it to be rebuilt: ask its owner to "
                               "remove %s.", pixels_file, problem, self.path)
        return data

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.path is not None:  # reopened from the folder, not pickled
            state["pixels"] = state["index"] = state["checksums"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.path is not None and self.pixels is None:
            try:
                # Checked in full by the process that opened it first; a worker reopening it checks the sizes.
                self.pixels, self.index, _, self.checksums = _open_store(self.path, digests=False)
            except BrokenStore as problem:
                raise RuntimeError(f"Cannot reopen the image store {self.path} ({problem}): it was removed or changed "
                                   "while in use; run again to rebuild it.") from None

    def __repr__(self) -> str:
        where = self.path or "in memory"
        size = (f"{self.short_side}x{self.short_side}px" if self.square else
                f"shorter side {self.short_side}px" if self.short_side else "full resolution")
        return (f"{type(self).__name__}({len(self)} images, {size}, "
                f"{self.interpolation}, {self.nbytes / 2**30:.2f} GiB, {where})")


# ----------------------------------------------------------------------------------------------------------- naming


def _decoding_rule(image_column: str, short_side: int | None, interpolation: str, square: bool = False,
                   centre_crop_of: int | None = None) -> str:
    import PIL

    # The per-image path's pixels before ToTensor: `as_rgb(decode_example(value))` (S = 0), with the Pillow version
    # whose resampling produced them. A square store: `ResizeIfNeeded(S)(as_rgb(...))`, bilinear to S x S unless the
    # image is S x S already.
    resize = f"resize-square-if-needed={short_side}" if square else f"resize-shorter={short_side}"
    if centre_crop_of is not None:  # `CenterCrop(S)(T.Resize(R)(...))`: the evaluation view's pixels
        resize = f"resize-shorter={centre_crop_of}|centre-crop={short_side}"
    return (f"store-v{STORE_FORMAT_VERSION}|column={image_column}|rgb|{resize}|"
            f"interpolation={interpolation}|pillow={PIL.__version__}")


def store_path(dataset: Any, image_column: str, short_side: int, interpolation: str,
               cache_dir: str | None = None, square: bool = False, centre_crop_of: int | None = None) -> str:
    """The folder where `stored_images_and_failures` keeps the store of `dataset` (a `datasets.Dataset`).

    The name holds the dataset's fingerprint (which `datasets` changes with every `select`, `shuffle`, split, cast,
    ...), S, the interpolation and a hash of the decoding rule (column, format version, Pillow version). Without
    `cache_dir`, the folder is the first of the dataset's cache folders
    that already holds the store (which may belong to another user who can share it), else the first this user can
    write, else `HF_DATASETS_CACHE/synermix_decoded`.
    """
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not fingerprint:
        raise ValueError(f"{type(dataset).__name__} has no fingerprint; the image store needs a datasets.Dataset.")
    rule = _decoding_rule(image_column, short_side, interpolation, square, centre_crop_of)
    rule = hashlib.sha256(rule.encode()).hexdigest()[:12]
    name = f"{STORE_PREFIX}{fingerprint}-{_resize_label(short_side, square, centre_crop_of)}-{interpolation}-{rule}"
    if cache_dir is None:
        for folder in _dataset_folders(dataset):
            if os.path.isdir(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return os.path.join(cache_dir or _cache_folder(dataset), name)


# ----------------------------------------------------------------------------------------------------- reading back


def _load_array(file: str) -> np.ndarray:
    """`np.load(file, mmap_mode="r")`; `BrokenStore` for whatever a damaged file makes it raise."""
    try:
        return np.load(file, mmap_mode="r", allow_pickle=False)
    except PermissionError:
        raise
    except Exception as error:  # EOFError, ValueError (mmap length, malformed node), SyntaxError, OSError, ...
        raise BrokenStore(file, f"{type(error).__name__}: {error}") from error


def _open_store(folder: str, digests: bool = True
                ) -> tuple[np.ndarray, np.ndarray, list[DecodeFailure], np.ndarray]:
    """The store's pixels memory-mapped, its index, its failures and its rows' checksums, every file checked against the manifest (`digests`: the small files' SHA-256 too) and the
    arrays against each other: `BrokenStore` naming the first damaged file, `StoreAccessError` when this user may not
    read them."""
    try:
        return _read_store(folder, digests)
    except PermissionError as error:
        raise unreadable(folder, error) from None


def _read_store(folder: str, digests: bool) -> tuple[np.ndarray, np.ndarray, list[DecodeFailure], np.ndarray]:
    num_rows = check_manifest(folder, digests)
    pixels_file, index_file = os.path.join(folder, PIXELS_FILE), os.path.join(folder, INDEX_FILE)
    pixels = _load_array(pixels_file)
    index = _load_array(index_file)
    if (pixels.dtype != np.uint8 or pixels.ndim != 1):
        raise BrokenStore(pixels_file, f"pixels are {pixels.dtype} {pixels.shape}, not flat uint8")
    if index.dtype != np.int64 or index.ndim != 2 or index.shape[1] != _INDEX_COLUMNS:
        raise BrokenStore(index_file, f"index is {index.dtype} {index.shape}, not int64 [N, {_INDEX_COLUMNS}]")
    index = np.array(index)  # 40 bytes an image: in memory, so that batches index it without page faults
    if len(index) != num_rows:
        raise BrokenStore(index_file, f"it holds {len(index)} rows, the manifest {num_rows}")
    if len(index) and index[:, 1:].min() < 1:
        raise BrokenStore(index_file, "the index holds an image without pixels")
    failures = load_failures(os.path.join(folder, FAILURES_FILE), num_rows)
    checksums_file = os.path.join(folder, CHECKSUMS_FILE)
    checksums = _load_array(checksums_file)
    if checksums.dtype != np.uint64 or checksums.shape != (num_rows,):
        raise BrokenStore(checksums_file, f"checksums are {checksums.dtype} {checksums.shape}, not uint64 [{num_rows}]")
    checksums = np.array(checksums)
    ends = index[:, 0] + index[:, 1] * index[:, 2] * 3
    starts_ok = len(index) == 0 or (index[0, 0] == 0 and np.array_equal(index[1:, 0], ends[:-1]))
    total = int(ends[-1]) if len(index) else 0
    if not starts_ok or total != pixels.size:
        raise BrokenStore(pixels_file,
                          f"the index describes {total} bytes of pixels in order, the pixels hold {pixels.size}")
    return pixels, index, failures, checksums


def _changed_rows(pixels: np.ndarray, index: np.ndarray, checksums: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Those of `rows` whose pixels no longer match their checksums."""
    entries = index[rows, :3]
    buffer = memoryview(pixels.view(np.ndarray))  # a plain buffer: each slice of a memmap is a memmap object
    sums = np.fromiter((row_checksum(buffer[offset : offset + height * width * 3])
                        for offset, height, width in entries.tolist()), dtype=np.uint64, count=len(rows))
    return rows[sums != checksums[rows]]


def square_store_nbytes(num_images: int, side: int) -> int:
    """Bytes (pixels and index) of a store of `num_images` RGB images of `side` x `side`."""
    return int(num_images) * (3 * int(side) ** 2 + _INDEX_COLUMNS * 8)


def existing_store_nbytes(path: str) -> int | None:
    """Bytes (pixels and index) of the complete store at `path` (see `store_path`), None if there is none (or none
    this user can read)."""
    if not os.path.isdir(path):
        return None
    try:
        pixels, index, _, _ = _open_store(path)
    except (BrokenStore, StoreAccessError):
        return None
    return int(pixels.nbytes + index.nbytes)


# --------------------------------------------------------------------------------------------------------- building


def _header_size(feature: Any, value: Any) -> tuple[int, int]:
    """`(height, width)` of the image `feature.decode_example(value)` would return, read from the file's header only.

    PIL's `Image.open` reads the header and defers decoding. `datasets.Image` applies the EXIF orientation
    (`ImageOps.exif_transpose`), which swaps height and width for orientations 5-8.
    """
    from datasets.utils.file_utils import is_local_path
    from PIL import ExifTags, Image

    if not isinstance(value, dict):
        raise TypeError(f"expected an undecoded image ({{'bytes', 'path'}}), got {type(value).__name__}")
    path, data = value.get("path"), value.get("bytes")
    if data is None and path is not None and not is_local_path(path):  # a remote file: `datasets` fetches it
        width, height = feature.decode_example(value).size
        return height, width
    if data is None and path is None:
        raise ValueError("An image should have one of 'path' or 'bytes', both are None")
    with Image.open(io.BytesIO(data) if data is not None else path) as image:
        width, height = image.size
        # The base class's getexif reads the EXIF and XMP the header carried; PNG's would decode the whole image to
        # look for an eXIf chunk after the pixels (pass 2 accepts such an image turned by 90 degrees).
        orientation = Image.Image.getexif(image).get(ExifTags.Base.Orientation)
    return (width, height) if orientation in _TRANSPOSING_ORIENTATIONS else (height, width)


def _header_sizes(raw: Any, feature: Any, image_column: str, start: int,
                  stop: int) -> tuple[np.ndarray, list[DecodeFailure]]:
    """Original `(height, width)` of rows `[start, stop)` from their headers; a row whose header cannot be read is
    a failure, sized 1x1."""
    values = raw[start:stop][image_column]
    sizes = np.ones((len(values), 2), dtype=np.int64)
    failures = []
    for offset, value in enumerate(values):
        try:
            sizes[offset] = _header_size(feature, value)
        except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
            failures.append(_decode_failure(start + offset, value, error))
    return sizes, failures


def _put(pixels: np.ndarray | PixelsFile | None, offset: int, data: np.ndarray) -> None:
    """Write the uint8 `data` at `offset` of the pixels: an array in memory, the store's file, or nothing (None)."""
    if isinstance(pixels, PixelsFile):
        pixels.write(offset, data)
    elif pixels is not None:
        pixels[offset : offset + data.size] = data.reshape(-1)


def stored_steps(short_side: int, interpolation: str, square: bool = False,
                 centre_crop_of: int | None = None) -> list[Any]:
    """The torchvision steps a store's rows are made with from the decoded RGB image: `ResizeIfNeeded(S)` (`square`),
    `Resize(centre_crop_of)` + `CenterCrop(S)` (`centre_crop_of`: the evaluation views), or none (full resolution)."""
    import torchvision.transforms as T

    if centre_crop_of is not None:
        return [T.Resize(centre_crop_of, interpolation=T.InterpolationMode(interpolation)), T.CenterCrop(short_side)]
    if square:
        from .transforms import ResizeIfNeeded

        return [ResizeIfNeeded(short_side)]
    return []


def _resize_of(short_side: int | None, interpolation: str, square: bool = False,
               centre_crop_of: int | None = None) -> Any:
    """The resize a store's rows are made with (None: none, full resolution)."""
    import torchvision.transforms as T

    steps = stored_steps(short_side or 0, interpolation, square, centre_crop_of)
    return T.Compose(steps) if steps else None


def _decoded_row(feature: Any, value: Any, resize: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """The pixels of the undecoded image `value` as the per-image path has them before ToTensor
    (`feature.decode_example`, RGB, `resize`), uint8 `[h, w, 3]`, and its decoded `(height, width)`."""
    from .transforms import as_rgb

    image = feature.decode_example(value)
    original = (image.height, image.width)
    image = as_rgb(image)
    if resize is not None:
        image = resize(image)
    return np.asarray(image, dtype=np.uint8), original


class _RowSource:
    """Decodes a store's row again, as its build did, from the dataset: for a row whose pixels changed on disk.
    Holds the dataset (pickled with the store) and makes its undecoded column when first
    needed."""

    def __init__(self, dataset: Any, image_column: str, short_side: int, interpolation: str, square: bool,
                 centre_crop_of: int | None):
        self.dataset, self.image_column = dataset, image_column
        self.resize = (short_side, interpolation, square, centre_crop_of)
        self._raw = None

    def __call__(self, row: int, height: int, width: int) -> np.ndarray | None:
        """Row `row`'s pixels, flat uint8, `height` x `width` as the index has them; black where it cannot be
        decoded (as the build stored it)."""
        if self.dataset is None:
            return None  # not carried over to this process (`__getstate__`)
        if self._raw is None:
            self._raw = _undecoded_column(self.dataset, self.image_column)
        try:
            array, _ = _decoded_row(self.dataset.features[self.image_column], self._raw[row][self.image_column],
                                    _resize_of(*self.resize))
        except Exception:  # a failure of the build's: stored black
            array = None
        if array is None or array.shape != (height, width, 3):
            return np.zeros(height * width * 3, dtype=np.uint8)
        return np.ascontiguousarray(array).reshape(-1)

    def __getstate__(self) -> dict:
        # A dataset read from its files pickles as a reference to them; one in memory would travel whole to every
        # spawned worker, so there a row that fails its check stops the read instead (`ImageStore._repair`).
        in_files = bool(getattr(self.dataset, "cache_files", None))
        return dict(self.__dict__, _raw=None, dataset=self.dataset if in_files else None)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def _decode_into(raw: Any, feature: Any, image_column: str, resize: Any, pixels: np.ndarray | PixelsFile | None,
                 index: np.ndarray, skip: set[int], start: int, stop: int,
                 checksums: np.ndarray | None = None) -> tuple[int, list[DecodeFailure]]:
    """Decode rows `[start, stop)` as the per-image path does before ToTensor (`feature.decode_example`, RGB,
    `T.Resize(S)`) into their places in `pixels` (None: decode only, to check them and read their true sizes), with
    each row's `row_checksum` into `checksums` (where given). A row that fails, or whose decoded size disagrees with
    its header's (the place is sized from it), is stored black and returned as a failure. Writing the pixels is outside the per-image handling: a full disk is not a bad image."""
    values = raw[start:stop][image_column]
    failures = []
    for row, value in enumerate(values, start):
        offset, height, width = (int(entry) for entry in index[row, :3])
        array = None
        if row not in skip:  # else its header could not be read: already a failure
            try:
                array, original = _decoded_row(feature, value, resize)
                if array.shape[:2] == (width, height) != (height, width):
                    # Turned by 90 degrees: an orientation the header did not show (a PNG's eXIf after the pixels).
                    # Same number of bytes, so the image keeps its place, with its true size in the index.
                    index[row, 1:3] = (width, height)
                elif array.shape[:2] != (height, width):
                    raise ValueError(f"decoded at {array.shape[0]}x{array.shape[1]}, its header said {height}x{width}")
                index[row, 3:5] = original
            except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, zlib.error, ...
                array = None
                failures.append(_decode_failure(row, value, error))
        data = np.ascontiguousarray(array if array is not None else np.zeros(height * width * 3, dtype=np.uint8))
        _put(pixels, offset, data)
        if checksums is not None:
            checksums[row] = row_checksum(data.reshape(-1))
    return stop - start, failures


@contextlib.contextmanager
def _stopped_by_sigterm(what: str) -> Iterator[Callable[[], None]]:
    """While a store is built (`what`), SIGTERM is a request: the build stops after the chunk in progress, raising
    `StoreBuildStopped` from the check this yields (called between chunks), rather than the process dying without a
    word (the partial build is then removed as on any error). A second SIGTERM acts as without the handler. Outside
    the main thread, where no handler can be set, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    received: list[int] = []

    def handle(signum: int, frame: Any) -> None:
        if received:  # a second signal: what would have happened without the handler
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        received.append(signum)

    def check() -> None:
        if received:
            raise StoreBuildStopped(signal.Signals(received[0]).name, what)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield check
        check()  # a signal during the last chunk
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _run_chunks(pool: ThreadPoolExecutor, task: Any, num_rows: int, description: str) -> list[Any]:
    """`task(start, stop)` over the rows in chunks, in the threads of `pool`, in order, with a progress bar. The first
    error cancels the chunks not started yet and propagates; so does SIGTERM, after the chunk in progress
    (`StoreBuildStopped`)."""
    from tqdm.auto import tqdm

    chunks = [(start, min(start + _CHUNK_ROWS, num_rows)) for start in range(0, num_rows, _CHUNK_ROWS)]
    jobs, results = [], []
    try:
        with (_stopped_by_sigterm(f"building the image store ({description.lower()})") as check,
              tqdm(total=num_rows, desc=description, unit="img", disable=num_rows < _PROGRESS_MIN_ROWS) as bar):
            jobs = [pool.submit(task, start, stop) for start, stop in chunks]  # after the handler: no signal lost
            for (start, stop), job in zip(chunks, jobs):
                results.append(job.result())
                bar.update(stop - start)
                check()
    except BaseException:
        for job in jobs:
            job.cancel()
        raise
    return results


# -------------------------------------------------------------------------------------------------------- the build


def _build(dataset: Any, image_column: str, short_side: int, interpolation: str, path: str | None,
           num_threads: int, square: bool = False,
           centre_crop_of: int | None = None) -> tuple[ImageStore, list[DecodeFailure]]:
    """Build the store. On disk, out of room: `StoreSpaceError`, the partial build removed."""
    raw = _undecoded_column(dataset, image_column)
    feature = dataset.features[image_column]
    num_rows = len(dataset)
    resize = _resize_of(short_side, interpolation, square, centre_crop_of)
    checksums = np.zeros(num_rows, dtype=np.uint64) if path is not None else None
    # On disk: complete or absent, whatever stops the build; out of room, `StoreSpaceError`.
    with StoreBuild(path) if path is not None else contextlib.nullcontext() as build:
        with ThreadPoolExecutor(max_workers=num_threads) as pool:
            # Pass 1: the sizes, from the headers; they lay out the rows.
            results = _run_chunks(pool, lambda a, b: _header_sizes(raw, feature, image_column, a, b),
                                  num_rows, "Reading image sizes")
            originals = np.concatenate([sizes for sizes, _ in results]) if results else np.ones((0, 2), np.int64)
            failures = [failure for _, failed in results for failure in failed]
            index = np.empty((num_rows, _INDEX_COLUMNS), dtype=np.int64)
            index[:, 3:5] = originals
            index[:, 1:3] = np.array([_stored_size(height, width, short_side, square)
                                      for height, width in originals.tolist()], dtype=np.int64).reshape(-1, 2)
            nbytes = index[:, 1] * index[:, 2] * 3
            index[:, 0] = np.cumsum(nbytes) - nbytes
            total = int(nbytes.sum())
            if build is not None:
                build.start(needed=total + index.nbytes)
                pixels = build.reserve_pixels(total)  # its space reserved now, before hours of decoding
            else:
                pixels = np.empty(total, dtype=np.uint8)
            # Pass 2: decode (and resize) each image into its place.
            skip = {row for row, _, _ in failures}
            what = ("Decoding the evaluation views once" if centre_crop_of is not None else
                    f"Decoding images once at {short_side}px" if square else "Decoding images once (full resolution)")
            results = _run_chunks(
                pool, lambda a, b: _decode_into(raw, feature, image_column, resize, pixels, index, skip, a, b,
                                                checksums),
                num_rows, what,
            )  # fmt: skip
        failures = sorted(failures + [failure for _, failed in results for failure in failed])
        if build is None:
            return _made(dataset, image_column, pixels, index, short_side, interpolation, None, square), failures
        build.finish(index, failures, lambda: existing_store_nbytes(path) is not None, checksums)
    pixels, index, failures, checksums = _open_store(path)
    store = _made(dataset, image_column, pixels, index, short_side, interpolation, path, square, checksums,
                  centre_crop_of)
    store.mark_checked()  # its pixels are those just written
    return store, failures


def _made(dataset: Any, image_column: str, pixels: np.ndarray, index: np.ndarray, short_side: int,
          interpolation: str, path: str | None, square: bool = False, checksums: np.ndarray | None = None,
          centre_crop_of: int | None = None) -> ImageStore:
    source = (None if checksums is None else
              _RowSource(dataset, image_column, short_side, interpolation, square, centre_crop_of))
    return ImageStore(pixels, index, short_side, interpolation, path, square, checksums, source)


# ------------------------------------------------------------------------------------------------------ public API


def _check(dataset: Any, image_column: str, short_side: int, interpolation: str | None = None) -> None:
    import datasets

    from .transforms import INTERPOLATIONS

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"The image store needs a datasets.Dataset, got {type(dataset).__name__}.")
    if image_column not in dataset.column_names:
        raise ValueError(f"`image_column` {image_column!r} is not a column of the dataset ({dataset.column_names}).")
    if not isinstance(dataset.features[image_column], datasets.Image):
        raise ValueError(
            f"`image_column` {image_column!r} holds {type(dataset.features[image_column]).__name__}, not "
            "datasets.Image; only Image columns can be decoded once."
        )
    if isinstance(short_side, bool) or not isinstance(short_side, (int, np.integer)) or short_side < 0:
        raise ValueError(f"`short_side` must be an integer >= 0 (0: full resolution), got {short_side!r}.")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ValueError(f"`interpolation` {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}.")


def estimated_store_nbytes(dataset: Any, image_column: str, sample: int = 256, seed: int = 0) -> int:
    """Bytes (pixels and index) the full-resolution store of `dataset` will take, estimated from the headers of up to
    `sample` evenly spaced rows (from a phase drawn with `seed`) without decoding anything; exact when the dataset has
    at most `sample` rows. An unreadable header counts as a 1x1 image, as the store keeps it."""
    _check(dataset, image_column, 0)
    if sample < 1:
        raise ValueError(f"`sample` must be >= 1, got {sample}.")
    num_rows = len(dataset)
    if num_rows == 0:
        return 0
    if num_rows <= sample:
        rows = np.arange(num_rows)
    else:
        stride = num_rows / sample
        rows = (np.random.default_rng(seed).random() * stride + stride * np.arange(sample)).astype(np.int64)
    raw = _undecoded_column(dataset, image_column)
    feature = dataset.features[image_column]
    image_bytes = []
    for value in raw[rows.tolist()][image_column]:
        try:
            height, width = _header_size(feature, value)
        except Exception:
            height, width = 1, 1
        image_bytes.append(height * width * 3)
    pixels = sum(image_bytes) if num_rows <= sample else round(np.mean(image_bytes) * num_rows)
    return int(pixels) + num_rows * _INDEX_COLUMNS * 8


def stored_images_and_failures(
    dataset: Any,
    image_column: str,
    short_side: int,
    interpolation: str = "bilinear",
    cache_dir: str | None = None,
    num_threads: int | None = None,
    use_cache: bool | None = None,
    square: bool = False,
    centre_crop_of: int | None = None,
) -> tuple[ImageStore, list[DecodeFailure]]:
    """The images of `dataset` decoded at most once (at full resolution, at S x S, or as their evaluation views), and
    the rows that could not be decoded (stored black), as `(row, source, error)`.

    Args:
        dataset: A `datasets.Dataset` whose `image_column` is a `datasets.Image` feature.
        image_column: The image column.
        short_side: S of `square` or `centre_crop_of`; 0 keeps full resolution.
        interpolation: The resize's filter, one of `synermix_hf.data.transforms.INTERPOLATIONS`.
        cache_dir: Folder of the store's folder (default: next to the dataset's cache files, or `HF_DATASETS_CACHE`).
        num_threads: Decoding threads (default: the CPU count).
        use_cache: Keep the store on disk and memory-map it (default: when `datasets` caching is enabled). Without it
            the store is built in memory.
        square: Resize every image to `short_side` x `short_side` instead (the square recipes' `ResizeIfNeeded`,
            bilinear, only where the image is not that size already).
        centre_crop_of: Keep instead the `short_side` x `short_side` centre of each image resized to this shorter
            side (`T.Resize(centre_crop_of)` + `T.CenterCrop(short_side)`: the `imagenet` recipe's evaluation view).

    Returns:
        `(store, failures)`: the `ImageStore` and the rows that could not be decoded.

    Raises:
        StoreSpaceError: no room on the disk for the store (the partial build is removed); one line naming its
            folder, the bytes it needs and those free.
        StoreAccessError: the store cannot be read by this user, or a new or damaged one cannot be written.
    """
    return _stored(dataset, image_column, short_side, interpolation, cache_dir, num_threads, use_cache,
                   square=square or centre_crop_of is not None, centre_crop_of=centre_crop_of)


def _stored(dataset: Any, image_column: str, short_side: int, interpolation: str, cache_dir: str | None,
            num_threads: int | None, use_cache: bool | None, square: bool = False,
            centre_crop_of: int | None = None) -> tuple[ImageStore, list[DecodeFailure]]:
    import datasets

    _check(dataset, image_column, short_side, interpolation)
    if square and short_side < 1:
        raise ValueError(f"A store of S x S images needs S >= 1, got {short_side}.")
    if short_side and not square:
        raise ValueError(f"`short_side` {short_side} needs `square` or `centre_crop_of` (0: full resolution).")
    short_side = int(short_side)
    threads = num_threads or os.cpu_count() or 1
    use_cache = datasets.is_caching_enabled() if use_cache is None else use_cache
    if not use_cache:
        return _build(dataset, image_column, short_side, interpolation, None, threads, square, centre_crop_of)

    from accelerate import PartialState

    state = PartialState()
    path = store_path(dataset, image_column, short_side, interpolation, cache_dir, square, centre_crop_of)
    with state.local_main_process_first():
        try:
            return _reuse_or_build(dataset, image_column, short_side, interpolation, path, threads, square,
                                   centre_crop_of, state.is_local_main_process)
        except StoreSpaceError as error:
            # Raised once out of the block, so that the local main process lets the others in (they meet the same
            # barriers); they find no store and fall back as it does.
            failure = error
    raise failure


def _reuse_or_build(dataset: Any, image_column: str, short_side: int, interpolation: str, path: str,
                    threads: int, square: bool, centre_crop_of: int | None,
                    local_main: bool) -> tuple[ImageStore, list[DecodeFailure]]:
    if os.path.lexists(path):
        try:
            pixels, index, failures, checksums = _open_store(path)
            if len(index) != len(dataset):
                raise BrokenStore(os.path.join(path, INDEX_FILE),
                                  f"it holds {len(index)} images, the dataset {len(dataset)}")
            checked = pixels.nbytes <= _CHECK_AT_OPEN_BYTES
            if checked:  # a small store: all of it now (tenths of a second), and nothing in the loader
                changed = _changed_rows(pixels, index, checksums, np.arange(len(index)))
                if len(changed):
                    raise BrokenStore(os.path.join(path, PIXELS_FILE), _changed_problem(int(changed[0]), len(changed)))
        except BrokenStore as problem:
            remove_damaged(path, problem)
        else:
            logger.info("Image store: reusing %s", path)
            store = _made(dataset, image_column, pixels, index, short_side, interpolation, path, square, checksums,
                          centre_crop_of)
            if checked:
                store.mark_checked()
            return store, failures
    elif not local_main:  # the local main process had its turn and left no store: it had no room
        raise StoreSpaceError(f"No room for the image store {path}: the local main process could not build it (its "
                              "warning says why)")
    what = (f"decoding %d images at {short_side}x{short_side}px into %s" if square else
            "decoding %d images (full resolution) into %s")
    logger.info("Image store: " + what, len(dataset), path)
    return _build(dataset, image_column, short_side, interpolation, path, threads, square, centre_crop_of)
