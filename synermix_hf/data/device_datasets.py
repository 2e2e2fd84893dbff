"""The datasets of the device data path: decoded images and their labels, served a whole batch at a time.

The loader's work per batch is a gather of stored uint8 rows and each example's augmentation drawn from its seed
(for the RandomResizedCrop recipe, its crop made there by torchvision); batches hold tensors only. Each dataset names
the object that finishes the views on the training device, `device_views` (`BatchViews` for square images,
`NormalizedViews` for the RandomResizedCrop recipe: both in `synermix_hf.data.batch_transforms`), which
`SynerMixTrainer` calls on every batch of it once the batch is on the device. `synermix_hf.data.pipeline.prepare_views`
builds them.

The interface between the two sides is declared here: an object that makes views on the device is a `DeviceViews`,
and a dataset says whether its batches need one with its `device_views` attribute (`MadeOnDevice`): the views, or
None where the loader makes them. Every wrapper this package puts around a dataset (`SeededAugmentation`,
`TolerantImages`) forwards its inner dataset's; `views_of` reads it, also through a `torch.utils.data.Subset`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from ..seeding import seeded_in_turn
from .batch_transforms import BatchViews, NormalizedViews
from .image_store import ImageStore

__all__ = ["DeviceViews", "MadeOnDevice", "StoredImageDataset", "views_of"]


@runtime_checkable
class DeviceViews(Protocol):
    """What makes the views of a batch on the training device (`BatchViews`, `NormalizedViews`): called by the trainer on
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


class StoredImageDataset(torch.utils.data.Dataset):
    """Decoded images (an `ImageStore`) and their labels, served a batch at a time; the rest of the views is made on
    the device by `device_views`: it is `MadeOnDevice`, and its views are `DeviceViews`.

    * Square recipes (`BatchViews`): `store` holds every image at S x S; a batch is `images` (uint8 `[B, S, S, 3]`),
      `labels` and, for training, `augment` (each example's crop, flip and Cutout, drawn from its seed,
      `BatchViews.sample`); the device makes both views.
    * The RandomResizedCrop recipe (`NormalizedViews`): `store` holds the training images at full resolution,
      `originals` each image's original view (the evaluation transform's Resize + CenterCrop, made once by
      torchvision itself). A training batch is `images`, the augmented views made here, in the loader, by the recipe's
      own torchvision steps before `ToTensor` (`crop`: RandomResizedCrop, flip), each example drawing from its seed
      as the per-image path does, and `original_images` (read); an evaluation batch is `images` read from
      `originals`. The device does `ToTensor` and `Normalize`, batched.

    Args:
        store: The images (`synermix_hf.data.image_store.stored_images_and_failures`); None for a set that is only evaluated, whose
            `originals` are all it needs.
        labels: The label of each example.
        views: What makes the views on the device (`BatchViews.from_spec`, `NormalizedViews`).
        rows: The store row example `i` reads (default: row `i`); where an image could not be decoded, the row of the
            image that stands in for it (`synermix_hf.data.bad_images.settle_decode_failures`).
        originals: The original views, S x S (the RandomResizedCrop recipe).
        crop: The training transform's steps before `ToTensor` (PIL image -> PIL image, S x S), run in the loader on
            each stored image (the RandomResizedCrop recipe).
    """

    def __init__(self, store: ImageStore | None, labels: Sequence[int], views: BatchViews | NormalizedViews,
                 rows: Sequence[int] | None = None, originals: ImageStore | None = None,
                 crop: Callable[[Image.Image], Image.Image] | None = None):
        if store is None and originals is None:
            raise ValueError("StoredImageDataset needs a store of images, or of their original views.")
        if store is not None and originals is not None and len(store) != len(originals):
            raise ValueError(f"{len(store)} images but {len(originals)} original views.")
        if isinstance(views, BatchViews) and (originals is not None or not getattr(store, "square", False)
                                             or store.short_side != views.image_size):
            raise ValueError(f"BatchViews need {views.image_size}x{views.image_size}px images, not {store!r}.")
        if isinstance(views, NormalizedViews) and store is not None and crop is None:
            raise ValueError("A store of training images needs the recipe's `crop` to make their augmented views.")
        self.store = store
        self.originals = originals
        self.crop = crop
        self.labels = np.asarray(labels, dtype=np.int64)
        num_images = len(store if store is not None else originals)
        if len(self.labels) != num_images:
            raise ValueError(f"{num_images} images but {len(self.labels)} labels.")
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        if self.rows is not None and len(self.rows) != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels but {len(self.rows)} rows.")
        self.device_views = views

    def __len__(self) -> int:
        return len(self.labels)

    def _rows_of(self, indices: np.ndarray) -> np.ndarray:
        return indices if self.rows is None else self.rows[indices]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One example as a batch of one."""
        return self._batch([index])

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """An unaugmented batch (evaluation): the device makes its original view."""
        return self._batch(indices)

    def seeded_batch(self, indices: Sequence[int], seeds: np.ndarray) -> dict[str, Any]:
        """A training batch whose example `i` is augmented as `seeds[i]` (uniform uint64) draws."""
        if self.store is None:
            raise ValueError("This dataset holds original views only (an evaluation set): it cannot be trained on.")
        indices = np.asarray(indices, dtype=np.int64)
        rows = self._rows_of(indices)
        seeds = np.asarray(seeds, dtype=np.uint64)
        batch = {"labels": torch.from_numpy(self.labels[indices])}
        if isinstance(self.device_views, BatchViews):
            batch["images"] = self.store.square_batch(rows)
            batch["augment"] = self.device_views.sample(seeds)
            return batch
        crops = [np.asarray(self.crop(Image.fromarray(self.store.image(int(rows[position])))), dtype=np.uint8)
                 for position in seeded_in_turn(seeds)]
        batch["images"] = torch.from_numpy(np.stack(crops)) if crops else torch.empty((0, 0, 0, 3), dtype=torch.uint8)
        if self.originals is not None and self.device_views.original:
            batch["original_images"] = self.originals.square_batch(rows)
        return batch

    def _batch(self, indices: Sequence[int]) -> dict[str, Any]:
        indices = np.asarray(indices, dtype=np.int64)
        rows = self._rows_of(indices)
        images = self.originals if self.originals is not None else self.store
        if not images.square:
            raise ValueError(
                "This training set holds its images at full resolution only, without their original views "
                "(`two_views=False`), so it cannot be evaluated or predicted on the device path. Prepare it with "
                "`two_views=True`, or with `views_on=\"loader\"`, to evaluate it."
            )
        return {"labels": torch.from_numpy(self.labels[indices]), "images": images.square_batch(rows)}
