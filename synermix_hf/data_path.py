"""Which way training images reach the model: decoded once and augmented on the device, or one image at a time.

Two data paths make the same two views (see `synermix_hf.data`):

* `device`: the images are decoded and resized once (`synermix_hf.decoded_cache`); the loader only gathers uint8
  rows and draws each example's augmentation parameters, and the trainer makes both views of the whole batch on the
  training device (`synermix_hf.batch_transforms`). For the square transform families (`cifar`, `miniimagenet`,
  `digits`) of `datasets.Dataset`s with an `Image` column whose decoded size fits a memory budget.
* `per_image`: `TwoViewTransform` / `SingleViewTransform` decode and transform each image in the loader, with any
  torchvision transforms. Always available.

`prepare_views` picks the path (`data_path="auto"` takes `device` where it applies) and returns the training and
evaluation datasets ready for `SynerMixTrainer`, with a line for the run log that says which path is used and why:

    views = prepare_views(train, evaluation, TransformSpec("cifar", 32), "img", "fine_label", two_views=True)
    trainer = SynerMixTrainer(..., train_dataset=views.train, eval_dataset=views.eval)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .bad_images import BadImage, BadImagePolicy, settle_decode_failures
from .batch_transforms import BatchViews
from .data import SingleViewTransform, TwoViewTransform
from .decoded_cache import DEFAULT_BUDGET_GIB, decoded_images_and_failures, decoded_nbytes
from .training_args import DATA_PATHS
from .transforms import SQUARE_FAMILIES, TransformSpec, build_transforms

__all__ = ["DATA_PATHS", "DecodedImageDataset", "PreparedViews", "device_path_obstacle", "prepare_views"]

logger = logging.getLogger(__name__)


class DecodedImageDataset(torch.utils.data.Dataset):
    """Decoded uint8 images and their labels, served a batch at a time; the views are made later, on the device.

    A batch (`__getitems__`, or `seeded_batch` for training) is a dict: `images` (uint8 `[B, 3, S, S]`), `labels`,
    `views` (the `BatchViews` that `SynerMixTrainer` calls on the device) and, for training, `augment` (each
    example's augmentation parameters, drawn from its seed). `SynerMixCollator` passes such batches through.

    Args:
        images: uint8 `[N, 3, S, S]`, e.g. the memory map returned by `decoded_images`.
        labels: The label of each image.
        views: How the trainer makes the views (`BatchViews.from_spec`).
        cache_path: The `.npy` file `images` maps, if any: DataLoader workers started with `spawn` reopen it instead
            of receiving a pickled copy of the array.
        rows: The row of `images` that example `i` reads (default: row `i`); where an image could not be decoded,
            the row of the image that stands in for it (`synermix_hf.bad_images.settle_decode_failures`).
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int], views: BatchViews, cache_path: str | None = None,
                 rows: Sequence[int] | None = None):
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, 3, S, S], got {images.dtype} {tuple(images.shape)}.")
        if images.shape[-2:] != (views.image_size, views.image_size):
            raise ValueError(f"images are {images.shape[-1]}px but views expect {views.image_size}px.")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.labels)} labels.")
        self.views = views
        self.cache_path = cache_path
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        if self.rows is not None and len(self.rows) != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels but {len(self.rows)} rows.")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = index if self.rows is None else self.rows[index]
        return {"images": torch.from_numpy(np.array(self.images[row])), "labels": int(self.labels[index])}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """An unaugmented batch (evaluation): the trainer makes its original view."""
        return self._batch(indices)

    def seeded_batch(self, indices: Sequence[int], seeds: np.ndarray) -> dict[str, Any]:
        """A training batch whose example `i` is augmented with parameters drawn from `seeds[i]` (uniform uint64)."""
        batch = self._batch(indices)
        batch["augment"] = self.views.sample(np.asarray(seeds, dtype=np.uint64))
        return batch

    def _batch(self, indices: Sequence[int]) -> dict[str, Any]:
        indices = np.asarray(indices, dtype=np.int64)
        rows = indices if self.rows is None else self.rows[indices]
        return {
            "images": torch.from_numpy(np.ascontiguousarray(self.images[rows])),
            "labels": torch.from_numpy(self.labels[indices]),
            "views": self.views,
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


@dataclass
class PreparedViews:
    """The datasets of one run and the data path they take.

    Args:
        train, eval: Datasets for `SynerMixTrainer` (None where none was given).
        data_path: `device` or `per_image`.
        description: One line for the run log: the path, and why.
        bad_images: The images that could not be decoded, where found up front (the device path decodes them all).
    """

    train: Any
    eval: Any
    data_path: str
    description: str
    bad_images: list[BadImage] = field(default_factory=list)


def device_path_obstacle(datasets_: Sequence[Any], spec: TransformSpec, image_column: str, budget_gib: float) -> str | None:
    """Why the device path cannot serve these datasets with `spec`, or None when it can."""
    import datasets

    if spec.family not in SQUARE_FAMILIES:
        return (f"the {spec.family} family crops each image from its own size (RandomResizedCrop / Resize + "
                "CenterCrop); only the square families are decoded once at a fixed size")
    given = [d for d in datasets_ if d is not None]
    for dataset in given:
        if not isinstance(dataset, datasets.Dataset):
            return f"the data is a {type(dataset).__name__}, not a datasets.Dataset"
        if not isinstance(dataset.features.get(image_column), datasets.Image):
            return f"the column {image_column!r} is not a datasets.Image feature"
    needed = decoded_nbytes(sum(len(d) for d in given), spec.image_size)
    if needed > budget_gib * 2**30:
        return (f"the decoded images need {needed / 2**30:.2f} GiB, more than the budget of {budget_gib:g} GiB "
                "(`decode_budget_gib`)")
    return None


def prepare_views(
    train: Any,
    evaluation: Any,
    spec: TransformSpec,
    image_column: str,
    label_column: str | None,
    two_views: bool,
    data_path: str = "auto",
    budget_gib: float = DEFAULT_BUDGET_GIB,
    train_labels: Sequence[int] | None = None,
    cache_dir: str | None = None,
    bad_image_policy: BadImagePolicy | None = None,
    seed: int = 0,
) -> PreparedViews:
    """Attach the views of `spec` to the training and evaluation `datasets.Dataset`s on the chosen data path.

    Args:
        train, evaluation: `datasets.Dataset`s with raw images (either may be None).
        spec: The transform recipe.
        image_column, label_column: Their columns.
        two_views: The training set also gives the original view (needed when beta > 0).
        data_path: `auto` (device where it applies, else per_image), `device` (raise ValueError naming the obstacle
            where it does not apply) or `per_image`.
        budget_gib: Largest decoded size (train + eval) the device path takes.
        train_labels: Labels of `train`, if already read.
        cache_dir: Where to keep the decoded arrays (default: next to the datasets' cache).
        bad_image_policy: On the device path, images that cannot be decoded are found up front: a training image is
            replaced by another of its class (drawn from `seed`), an evaluation image is skipped (label -100), and
            this policy (default: `BadImagePolicy()`) raises `BadImageError` when there are too many. (The per-image
            path finds them as it reads them: `SynerMixTrainer`.)
        seed: Seeds the choice of the replacements (the run's data seed, as for the per-image path).
    """
    if data_path not in DATA_PATHS:
        raise ValueError(f"`data_path` {data_path!r} is not valid; choose one of {', '.join(DATA_PATHS)}.")
    obstacle = None if data_path == "per_image" else device_path_obstacle([train, evaluation], spec, image_column,
                                                                          budget_gib)
    if data_path == "device" and obstacle is not None:
        raise ValueError(f"`data_path` 'device' does not apply here: {obstacle}. Use 'auto' or 'per_image'.")
    if data_path == "per_image" or obstacle is not None:
        train_tf, eval_tf = build_transforms(spec)
        if train is not None:
            view = (TwoViewTransform(train_tf, eval_tf, image_column, label_column) if two_views
                    else SingleViewTransform(train_tf, image_column, label_column))
            train = train.with_transform(view)
        if evaluation is not None:
            evaluation = evaluation.with_transform(SingleViewTransform(eval_tf, image_column, label_column))
        why = "as asked (data_path='per_image')" if data_path == "per_image" else f"the device path does not apply: {obstacle}"
        return PreparedViews(train, evaluation, "per_image",
                             f"per_image: each image decoded and transformed in the loader ({why})")

    from .data import dataset_labels

    views = BatchViews.from_spec(spec, original=two_views)
    policy = bad_image_policy or BadImagePolicy()
    prepared, bad_images = [], []
    for dataset, labels, split in ((train, train_labels, "training set"), (evaluation, None, "evaluation set")):
        if dataset is None:
            prepared.append(None)
            continue
        images, failures = decoded_images_and_failures(dataset, image_column, spec.image_size, cache_dir=cache_dir)
        labels = labels if labels is not None else dataset_labels(dataset, label_column)
        rows, labels, found = settle_decode_failures(failures, labels, split, seed, skip=split != "training set",
                                                     dataset=str(dataset._fingerprint))
        policy.check(found, complete=True)
        bad_images += found
        prepared.append(DecodedImageDataset(images, labels, views, getattr(images, "filename", None), rows=rows))
    total = sum(len(d) for d in prepared if d is not None)
    where = {getattr(d.images, "filename", None) for d in prepared if d is not None} - {None}
    description = (f"device: {total} images decoded once at {spec.image_size}px "
                   f"({decoded_nbytes(total, spec.image_size) / 2**20:.1f} MiB"
                   + (f", cached in {', '.join(sorted(where))}" if where else ", in memory")
                   + "); views made batched on the training device")
    logger.info("Data path: %s", description)
    return PreparedViews(prepared[0], prepared[1], "device", description, bad_images)
