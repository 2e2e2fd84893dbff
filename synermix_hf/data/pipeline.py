"""Where the views of the images are made: batched on the training device, or one image at a time in the loader.

Both ways make the same two views (see `synermix_hf.data.views`):

* `device`: the images are decoded and resized once (`synermix_hf.data.decoded`); the loader only gathers uint8
  rows and draws each example's augmentation parameters, and the trainer makes both views of the whole batch on the
  training device (`synermix_hf.data.batch_transforms`). For the square transform families (`cifar`,
  `miniimagenet`, `digits`) of `datasets.Dataset`s with an `Image` column whose decoded size fits a budget.
* `loader`: `TwoViewTransform` / `SingleViewTransform` decode and transform each image in the DataLoader, with any
  torchvision transforms. Always available.

`prepare_views` chooses (`views_on="auto"` takes `device` where it applies) and returns the training and evaluation
datasets ready for `SynerMixTrainer`, with a line for the run log that says where the views are made and why:

    views = prepare_views(train, evaluation, TransformSpec("cifar", 32), "img", "fine_label", two_views=True)
    trainer = SynerMixTrainer(..., train_dataset=views.train, eval_dataset=views.eval)
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .bad_images import BadImage, BadImagePolicy, settle_decode_failures
from .batch_transforms import BatchViews
from .decoded import DEFAULT_BUDGET_GIB, decoded_images_and_failures, decoded_nbytes
from .transforms import SQUARE_FAMILIES, TransformSpec, build_transforms
from .views import SingleViewTransform, TwoViewTransform, dataset_labels

__all__ = ["DATA_PATHS", "VIEWS_ON", "DecodedImageDataset", "PreparedViews", "device_path_obstacle", "prepare_views",
           "views_on_from_data_path"]

logger = logging.getLogger(__name__)

VIEWS_ON = ("auto", "device", "loader")
"""Where `prepare_views` makes the views: `device` (batched, on the training device), `loader` (per image, in the
DataLoader) or `auto` (`device` where it applies)."""

DATA_PATHS = ("auto", "device", "per_image")
"""Deprecated: the values of `data_path`, the former name of `views_on` (`per_image` is `loader`)."""


def views_on_from_data_path(data_path: str) -> str:
    """The `views_on` value of a deprecated `data_path` value (`per_image` -> `loader`)."""
    if data_path not in DATA_PATHS:
        raise ValueError(f"`data_path` {data_path!r} is not valid; choose one of {', '.join(DATA_PATHS)} (or use "
                         f"`views_on`: {', '.join(VIEWS_ON)}).")
    return "loader" if data_path == "per_image" else data_path


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
            the row of the image that stands in for it (`synermix_hf.data.bad_images.settle_decode_failures`).
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
    """The datasets of one run and where their views are made.

    Args:
        train, eval: Datasets for `SynerMixTrainer` (None where none was given).
        views_on: `device` or `loader`.
        description: One line for the run log: where the views are made, and why.
        bad_images: The images that could not be decoded, where found up front (the device path decodes them all).
    """

    train: Any
    eval: Any
    views_on: str
    description: str
    bad_images: list[BadImage] = field(default_factory=list)

    @property
    def data_path(self) -> str:
        """Deprecated: `views_on` in the former words (`device` or `per_image`)."""
        warnings.warn("`PreparedViews.data_path` is deprecated; use `views_on` (`loader` is the former `per_image`).",
                      FutureWarning, stacklevel=2)
        return "per_image" if self.views_on == "loader" else self.views_on


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
    views_on: str = "auto",
    decode_budget_gib: float = DEFAULT_BUDGET_GIB,
    train_labels: Sequence[int] | None = None,
    cache_dir: str | None = None,
    bad_image_policy: BadImagePolicy | None = None,
    seed: int = 0,
    *,
    data_path: str | None = None,
    budget_gib: float | None = None,
) -> PreparedViews:
    """Attach the views of `spec` to the training and evaluation `datasets.Dataset`s, made where `views_on` says.

    Args:
        train, evaluation: `datasets.Dataset`s with raw images (either may be None).
        spec: The transform recipe.
        image_column, label_column: Their columns.
        two_views: The training set also gives the original view (needed when beta > 0).
        views_on: `auto` (`device` where it applies, else `loader`), `device` (raise ValueError naming the obstacle
            where it does not apply) or `loader`.
        decode_budget_gib: Largest decoded size (GiB, train + eval) the device path takes.
        train_labels: Labels of `train`, if already read.
        cache_dir: Where to keep the decoded arrays (default: next to the datasets' cache).
        bad_image_policy: On the device path, images that cannot be decoded are found up front: a training image is
            replaced by another of its class (drawn from `seed`), an evaluation image is skipped (label -100), and
            this policy (default: `BadImagePolicy()`) raises `BadImageError` when there are too many. (The per-image
            path finds them as it reads them: `SynerMixTrainer`.)
        seed: Seeds the choice of the replacements (the run's data seed, as for the per-image path).
        data_path, budget_gib: Deprecated names of `views_on` (`per_image` for `loader`) and `decode_budget_gib`.
    """
    if data_path is not None:
        warnings.warn("`data_path` is deprecated; use `views_on` (`loader` is the former `per_image`).", FutureWarning,
                      stacklevel=2)
        views_on = views_on_from_data_path(data_path)
    if budget_gib is not None:
        warnings.warn("`budget_gib` is deprecated; use `decode_budget_gib`.", FutureWarning, stacklevel=2)
        decode_budget_gib = budget_gib
    if views_on not in VIEWS_ON:
        raise ValueError(f"`views_on` {views_on!r} is not valid; choose one of {', '.join(VIEWS_ON)}.")
    if not decode_budget_gib >= 0:
        raise ValueError(f"`decode_budget_gib` must be >= 0, got {decode_budget_gib}.")
    obstacle = None if views_on == "loader" else device_path_obstacle([train, evaluation], spec, image_column,
                                                                       decode_budget_gib)
    if views_on == "device" and obstacle is not None:
        raise ValueError(f"`views_on` 'device' does not apply here: {obstacle}. Use 'auto' or 'loader'.")
    if views_on == "loader" or obstacle is not None:
        train_tf, eval_tf = build_transforms(spec)
        if train is not None:
            view = (TwoViewTransform(train_tf, eval_tf, image_column, label_column) if two_views
                    else SingleViewTransform(train_tf, image_column, label_column))
            train = train.with_transform(view)
        if evaluation is not None:
            evaluation = evaluation.with_transform(SingleViewTransform(eval_tf, image_column, label_column))
        why = "as asked (views_on='loader')" if views_on == "loader" else f"the device path does not apply: {obstacle}"
        return PreparedViews(train, evaluation, "loader",
                             f"loader: each image decoded and transformed in the DataLoader ({why})")

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
    logger.info("Views: %s", description)
    return PreparedViews(prepared[0], prepared[1], "device", description, bad_images)
