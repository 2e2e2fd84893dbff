"""The datasets of the device data path: decoded images and their labels, served a whole batch at a time.

The loader's work per batch is a gather of stored uint8 rows (or the decode of the dataset's own images,
`EncodedImages`) and the draw of each example's augmentation parameters from its seed; batches hold tensors only.
Each dataset names the object that makes the views on the training device, `device_views`
(`synermix_hf.data.batch_transforms.BatchViews` for square images, `synermix_hf.data.crop_views.CropViews` for the
RandomResizedCrop recipe), which `SynerMixTrainer` calls on every batch of it once the batch is on the device.
`synermix_hf.data.pipeline.prepare_views` builds them.

The interface between the two sides is declared here: an object that makes views on the device is a `DeviceViews`,
and a dataset says whether its batches need one with its `device_views` attribute (`MadeOnDevice`): the views, or
None where the loader makes them. Every wrapper this package puts around a dataset (`SeededAugmentation`,
`TolerantImages`) forwards its inner dataset's; `views_of` reads it, also through a `torch.utils.data.Subset`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .batch_transforms import BatchViews
from .crop_views import CropViews
from .image_store import ImageStore

__all__ = ["DeviceViews", "MadeOnDevice", "StoredImageDataset", "views_of"]


@runtime_checkable
class DeviceViews(Protocol):
    """What makes the views of a batch on the training device (`BatchViews`, `CropViews`): called by the trainer on
    each batch of a `MadeOnDevice` dataset once it is on the device, it turns the loader's decoded images (`images`,
    `augment`, ...; see `StoredImageDataset`) into `pixel_values` (and `original_pixel_values`)."""

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]: ...


@runtime_checkable
class MadeOnDevice(Protocol):
    """A dataset that says who makes its views: `device_views` is what makes them on the device (`DeviceViews`), or
    None where the loader makes them (a wrapper around a dataset of the loader's views)."""

    @property
    def device_views(self) -> DeviceViews | None: ...


def views_of(dataset: Any) -> DeviceViews | None:
    """`dataset.device_views` (`MadeOnDevice`): what makes the views of its batches on the device; None for a dataset
    that does not declare it (a user's dataset, a `datasets.Dataset`), whose views the loader makes.

    A `torch.utils.data.Subset` serves its inner dataset's batches, rows selected, so it has the inner dataset's
    views (evaluation over a Subset works; training over one is refused by `SeededAugmentation`)."""
    if isinstance(dataset, torch.utils.data.Subset):
        return views_of(dataset.dataset)
    return getattr(dataset, "device_views", None)


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


class StoredImageDataset(_RowsWithLabels):
    """Decoded images (an `ImageStore`, or `EncodedImages` decoded at every read) and their labels, served a batch at
    a time; the views are made later, on the device, by `device_views` (`BatchViews` for the square recipes,
    `CropViews` for RandomResizedCrop): it is `MadeOnDevice`, and its views are `DeviceViews`.

    A batch (`__getitems__`, or `seeded_batch` for training) is a dict of tensors: `images` (uint8 `[B, M, M, 3]`,
    each image at the top left of a square frame, see `ImageStore.padded_batch`; `[B, S, S, 3]` for a square store),
    `sizes` (their sizes in the frame), `labels`, and for training `augment` (each example's augmentation, drawn from
    its seed, `views.sample`). For `CropViews`, also either `original_images` (uint8 `[B, S, S, 3]`, the original view
    read from `originals`) or `original` (its resize and centre crop, `CropViews.original_params`, to make it from
    `images`). The loader's work per example is one copy of the stored pixels (or one decode) and the draw of its
    augmentation.

    Args:
        store: The images (`synermix_hf.data.decoded.decoded_images_and_failures`,
            `synermix_hf.data.image_store.stored_images_and_failures`, `encoded_images_and_failures`); None for a
            set that is only evaluated, whose `originals` are all it needs.
        labels: The label of each example.
        views: How the trainer makes the views (`BatchViews.from_spec`, `CropViews.from_spec`), for the store's
            images.
        rows: The store row example `i` reads (default: row `i`); where an image could not be decoded, the row of the
            image that stands in for it (`synermix_hf.data.bad_images.settle_decode_failures`).
        originals: The `imagenet` recipe's original views, made once by the per-image path's own `Resize` and
            `CenterCrop` (`stored_images_and_failures(..., centre_crop_of=R)`): read instead of made per batch.
    """

    def __init__(self, store: ImageStore | None, labels: Sequence[int], views: BatchViews | CropViews,
                 rows: Sequence[int] | None = None, originals: ImageStore | None = None):
        if store is None and originals is None:
            raise ValueError("StoredImageDataset needs a store of images, or of their original views.")
        for images in (store, originals):
            if images is None:
                continue
            problem = views.store_problem(images, originals=images is originals)
            if problem is not None:
                raise ValueError(f"{type(views).__name__} cannot make views of this store: {problem}.")
        if store is not None and originals is not None and len(store) != len(originals):
            raise ValueError(f"{len(store)} images but {len(originals)} original views.")
        self.store = store
        self.originals = originals
        self._set_labels_and_rows(labels, rows, len(store if store is not None else originals))
        self.device_views = views
        # The original view's resize and crop depend on the row alone: computed once, not per batch.
        self._original = (views.original_params(store.original_sizes, store.sizes)
                          if store is not None and originals is None else None)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One example as a batch of one (the views need the whole batch's frame)."""
        return self._batch([index])

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """An unaugmented batch (evaluation): the trainer makes its original view."""
        return self._batch(indices)

    def seeded_batch(self, indices: Sequence[int], seeds: np.ndarray) -> dict[str, Any]:
        """A training batch whose example `i` is augmented as `seeds[i]` (uniform uint64) draws.

        Where the original view is not made from the frames (it is stored, or not wanted), a RandomResizedCrop batch
        holds each example's crop only: its frame is the crop, its box `(0, 0, h, w)` (less to copy, to move to the
        device, and to resample)."""
        if self.store is None:
            raise ValueError("This dataset holds original views only (an evaluation set): it cannot be trained on.")
        indices = np.asarray(indices, dtype=np.int64)
        rows = self._rows_of(indices)
        params = self.device_views.sample(np.asarray(seeds, dtype=np.uint64), self.store.original_sizes[rows],
                                          self.store.sizes[rows])
        crops_only = isinstance(self.device_views, CropViews) and (
            self.originals is not None or not self.device_views.original)
        if not crops_only:
            batch = self._batch(indices)
            batch["augment"] = params
            return batch
        boxes = params[:, :4].numpy()
        batch = {"labels": torch.from_numpy(self.labels[indices])}
        batch["images"], batch["sizes"] = self.store.padded_batch(rows, boxes)
        batch["augment"] = torch.cat([torch.zeros_like(params[:, :2]), params[:, 2:]], dim=1)
        if self.originals is not None:
            batch["original_images"] = self.originals.padded_batch(rows)[0]
        return batch

    def _batch(self, indices: Sequence[int]) -> dict[str, Any]:
        rows = self._rows_of(np.asarray(indices, dtype=np.int64))
        batch = {"labels": torch.from_numpy(self.labels[np.asarray(indices, dtype=np.int64)])}
        if self.store is not None:
            batch["images"], batch["sizes"] = self.store.padded_batch(rows)
        if self._original is not None:
            batch["original"] = self._original[rows]
        if self.originals is not None:
            batch["original_images"] = self.originals.padded_batch(rows)[0]
        return batch
