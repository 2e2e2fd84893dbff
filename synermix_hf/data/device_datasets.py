"""The datasets of the device data path: decoded images and their labels, served a whole batch at a time.

The loader's work per batch is a gather of stored uint8 rows (or the decode of the dataset's own images,
`EncodedImages`) and the draw of each example's augmentation parameters from its seed; batches hold tensors only.
Each dataset names the object that makes the views on the training device, `device_views`
(`synermix_hf.data.batch_transforms.BatchViews` for square images, `synermix_hf.data.crop_views.CropViews` for the
RandomResizedCrop recipe), which `SynerMixTrainer` calls on every batch of it once the batch is on the device
(`views_of`). `synermix_hf.data.pipeline.prepare_views` builds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .batch_transforms import BatchViews
from .crop_views import CropViews
from .image_store import ImageStore

__all__ = ["DecodedImageDataset", "StoredImageDataset", "views_of"]


def views_of(dataset: Any) -> Any:
    """The object that makes the views of `dataset`'s batches on the device (its `device_views`), looking through
    the wrappers the trainer puts around datasets (`SeededAugmentation`, `TolerantImages`, `Subset`); None for a
    dataset whose views the loader makes."""
    seen = 0
    while dataset is not None and seen < 8:
        views = getattr(dataset, "device_views", None)
        if views is not None:
            return views
        dataset = getattr(dataset, "dataset", None)
        seen += 1
    return None


class _RowsWithLabels(torch.utils.data.Dataset):
    """What both datasets share: a label per example, and the stored row each example reads (its own, or where its
    image could not be decoded, the row of the image that stands in for it)."""

    def _set_labels_and_rows(self, labels: Sequence[int], rows: Sequence[int] | None, num_images: int) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != num_images:
            raise ValueError(f"{num_images} images but {len(self.labels)} labels.")
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        if self.rows is not None and len(self.rows) != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels but {len(self.rows)} rows.")

    def __len__(self) -> int:
        return len(self.labels)

    def _rows_of(self, indices: np.ndarray) -> np.ndarray:
        return indices if self.rows is None else self.rows[indices]


class DecodedImageDataset(_RowsWithLabels):
    """Decoded uint8 images and their labels, served a batch at a time; the views are made later, on the device.

    A batch (`__getitems__`, or `seeded_batch` for training) is a dict of tensors: `images` (uint8 `[B, 3, S, S]`),
    `labels` and, for training, `augment` (each example's augmentation parameters, drawn from its seed).
    `SynerMixCollator` passes such batches through; `device_views` (the `BatchViews`) makes their views on the
    device.

    Args:
        images: uint8 `[N, 3, S, S]`, e.g. the memory map returned by `decoded_images`.
        labels: The label of each image.
        views: How the trainer makes the views (`BatchViews.from_spec`).
        cache_path: The `.npy` file `images` maps, if any: DataLoader workers started with `spawn` reopen it instead
            of receiving a pickled copy of the array.
        rows: The row of `images` that example `i` reads (default: row `i`); where an image could not be decoded,
            the row of the image that stands in for it (`synermix_hf.data.bad_images.settle_decode_failures`).
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int], views: BatchViews, cache_path: str | None = None,
                 rows: Sequence[int] | None = None):
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, 3, S, S], got {images.dtype} {tuple(images.shape)}.")
        if images.shape[-2:] != (views.image_size, views.image_size):
            raise ValueError(f"images are {images.shape[-1]}px but views expect {views.image_size}px.")
        self.images = images
        self._set_labels_and_rows(labels, rows, len(images))
        self.device_views = views
        self.cache_path = cache_path

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = index if self.rows is None else self.rows[index]
        return {"images": torch.from_numpy(np.array(self.images[row])), "labels": int(self.labels[index])}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """An unaugmented batch (evaluation): the trainer makes its original view."""
        return self._batch(indices)

    def seeded_batch(self, indices: Sequence[int], seeds: np.ndarray) -> dict[str, Any]:
        """A training batch whose example `i` is augmented with parameters drawn from `seeds[i]` (uniform uint64)."""
        batch = self._batch(indices)
        batch["augment"] = self.device_views.sample(np.asarray(seeds, dtype=np.uint64))
        return batch

    def _batch(self, indices: Sequence[int]) -> dict[str, Any]:
        indices = np.asarray(indices, dtype=np.int64)
        rows = self._rows_of(indices)
        return {
            "images": torch.from_numpy(np.ascontiguousarray(self.images[rows])),
            "labels": torch.from_numpy(self.labels[indices]),
        }

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.cache_path is not None:
            state["images"] = None  # reopened from the file, not pickled
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.images is None:
            self.images = np.load(self.cache_path, mmap_mode="r")


class StoredImageDataset(_RowsWithLabels):
    """Images of any size, decoded once into an `ImageStore` (or at every read, `EncodedImages`), and their labels,
    served a batch at a time; the views (RandomResizedCrop family) are made later, on the device, by `CropViews`.

    A batch (`__getitems__`, or `seeded_batch` for training) is a dict of tensors: `images` (uint8 `[B, M, M, 3]`,
    each image at the top left of a square frame, see `ImageStore.padded_batch`), `sizes` (their sizes in the frame),
    `original` (the original view's resize and centre crop, `CropViews.original_params`), `labels` and, for
    training, `augment` (each example's crop and flip, drawn from its seed on the image's original size). The
    loader's work per example is one copy of the stored pixels (or one decode) and the draw of its crop.

    Args:
        store: The images (`synermix_hf.data.image_store.stored_images`, `encoded_images_and_failures`).
        labels: The label of each example.
        views: How the trainer makes the views (`CropViews.from_spec`, with the store's shorter side).
        rows: The store row example `i` reads (default: row `i`); where an image could not be decoded, the row of the
            image that stands in for it (`synermix_hf.data.bad_images.settle_decode_failures`).
    """

    def __init__(self, store: ImageStore, labels: Sequence[int], views: CropViews, rows: Sequence[int] | None = None):
        if store.short_side != views.short_side:
            raise ValueError(f"The store's shorter side is {store.short_side}px but the views expect "
                             f"{views.short_side}px.")
        self.store = store
        self._set_labels_and_rows(labels, rows, len(store))
        self.device_views = views
        # The original view's resize and crop depend on the row alone: computed once, not per batch.
        self._original = views.original_params(store.original_sizes, store.sizes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One example as a batch of one (the views need the whole batch's frame)."""
        return self._batch([index])

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """An unaugmented batch (evaluation): the trainer makes its original view."""
        return self._batch(indices)

    def seeded_batch(self, indices: Sequence[int], seeds: np.ndarray) -> dict[str, Any]:
        """A training batch whose example `i` is cropped and flipped as `seeds[i]` (uniform uint64) draws."""
        batch = self._batch(indices)
        rows = self._rows_of(np.asarray(indices, dtype=np.int64))
        batch["augment"] = self.device_views.sample(np.asarray(seeds, dtype=np.uint64),
                                                    self.store.original_sizes[rows], self.store.sizes[rows])
        return batch

    def _batch(self, indices: Sequence[int]) -> dict[str, Any]:
        rows = self._rows_of(np.asarray(indices, dtype=np.int64))
        images, sizes = self.store.padded_batch(rows)
        return {
            "images": images,
            "sizes": sizes,
            "original": self._original[rows],
            "labels": torch.from_numpy(self.labels[np.asarray(indices, dtype=np.int64)]),
        }
