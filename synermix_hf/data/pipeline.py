"""Where the views of the images are made: from images decoded once into a store, or one image at a time in the loader.

Both ways make the same two views (see `synermix_hf.data.views`), to the pixel:

* `device`: each image is decoded once into a store (`synermix_hf.data.image_store`); the loader reads stored uint8
  pixels and draws each example's augmentation from its seed, and the trainer finishes the views of the whole batch
  on the training device (`StoredImageDataset`, whose `device_views` it calls). The square families (`cifar`,
  `miniimagenet`, `digits`) store SxS images and make both views on the device
  (`BatchViews`). The `imagenet` family (RandomResizedCrop) stores its training images at full resolution with their
  original views made once beside them, and its evaluation views; the loader cuts each crop with the recipe's own
  torchvision steps, the device does `ToTensor` and `Normalize` (`NormalizedViews`). For `datasets.Dataset`s with an
  `Image` column, within the disk budget.
* `loader`: `TwoViewTransform` / `SingleViewTransform` decode and transform each image in the DataLoader, with any
  torchvision transforms. Always available.

The recipe is described once, by the transforms `build_transforms` makes; the device path takes a recipe only where
it makes every step of it (`device_path_obstacle` compares the two step by step and names the first it does not make),
so a step added to a recipe is never skipped: `views_on="auto"` then takes the `loader` path and says why.

`prepare_views` chooses (`views_on="auto"` takes `device` where it applies) and returns the training and evaluation
datasets ready for `SynerMixTrainer`, with a line for the run log that says where the views are made, from what, and
why. A store that runs out of room while it is built (a full disk, a quota: `image_store.StoreSpaceError`, its partial
build removed) does not stop the run: the views are made in the DataLoader instead, with exactly the same pixels, and
the error's one line is logged as a warning and is part of the description. Only `views_on="device"` stops, with a
`ValueError` saying so.

    views = prepare_views(train, evaluation, TransformSpec("cifar", 32), "img", "fine_label", two_views=True)
    trainer = SynerMixTrainer(..., train_dataset=views.train, eval_dataset=views.eval)
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from torchvision import transforms as T

from .bad_images import BadImage, BadImagePolicy, settle_decode_failures
from .batch_transforms import BatchViews, NormalizedViews
from .device_datasets import StoredImageDataset
from .image_store import (
    StoreSpaceError,
    estimated_store_nbytes,
    existing_store_nbytes,
    square_store_nbytes,
    store_path,
    stored_images_and_failures,
    stored_steps,
)
from .transforms import SQUARE_FAMILIES, TransformSpec, build_transforms, split_at_to_tensor
from .views import SingleViewTransform, TwoViewTransform, dataset_labels, trained_label_column

__all__ = ["VIEWS_ON", "PreparedViews", "default_budget_gib", "device_path_obstacle", "prepare_views", "recipe_problem"]

logger = logging.getLogger(__name__)

VIEWS_ON = ("auto", "device", "loader")
"""Where `prepare_views` makes the views: `device` (batched, on the training device), `loader` (per image, in the
DataLoader) or `auto` (`device` where it applies)."""


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


def default_budget_gib(folder: str | None) -> float:
    """The budget when none is given: four fifths of the free space of the disk that holds `folder` (where the store
    goes; the rest is left for checkpoints), or half the available memory when the store is built in memory
    (`folder` None)."""
    if folder is None:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    else:
        existing = os.path.abspath(folder)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        free = shutil.disk_usage(existing).free
    return (free / 2 if folder is None else free * 0.8) / 2**30


def _store_need(dataset: Any, image_column: str, short_side: int, interpolation: str, square: bool,
                centre_crop_of: int | None, cache_dir: str | None, use_cache: bool) -> tuple[int, int, str | None]:
    """`(size, new, folder)` of the store of `dataset` at `short_side` (`square`: S x S rows; `centre_crop_of`: its
    S x S evaluation views): its bytes (real when built, exact for S x S rows, estimated from the headers otherwise),
    the bytes still to write, and its folder (None in memory)."""
    path = (store_path(dataset, image_column, short_side, interpolation, cache_dir, square=square,
                       centre_crop_of=centre_crop_of) if use_cache else None)
    existing = existing_store_nbytes(path) if path is not None else None
    if existing is not None:
        size = existing
    elif square:
        size = square_store_nbytes(len(dataset), short_side)
    else:
        size = estimated_store_nbytes(dataset, image_column)
    return size, 0 if existing is not None else size, os.path.dirname(path) if path is not None else None


def _steps_problem(made: Sequence[Any], recipe: Sequence[Any], what: str) -> str | None:
    """Where the steps the device path makes (`made`) and the recipe's (`recipe`) first differ, or None."""
    for position in range(max(len(made), len(recipe))):
        step = repr(recipe[position]) if position < len(recipe) else None
        if position >= len(made) or step != repr(made[position]):
            if step is None:
                return f"{what} ends before {made[position]!r}, which the device path makes"
            return f"the device path does not make the step {step} of {what}"
    return None


def recipe_problem(spec: TransformSpec) -> str | None:
    """Why the device path cannot make the views of `spec`'s recipe, step for step, or None when it makes them all.

    The recipe is what `build_transforms(spec)` builds. The device path makes, for the square families, the steps that
    `BatchViews` declares (`BatchViews.steps`) after the store's resize to S x S, at the sizes whose random steps one
    seed per example covers (`BatchViews.sample`: up to 427 px for `cifar`, 402 px for `miniimagenet`); for the
    `imagenet` family, any steps of the training transform before `ToTensor` (torchvision runs them in the loader) and
    then `ToTensor` and `Normalize` (`NormalizedViews`), and the evaluation transform's steps before `ToTensor` as its
    store of evaluation views makes them (`stored_steps`)."""
    train, evaluation = build_transforms(spec)
    normalized = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    if spec.family in SQUARE_FAMILIES:
        views = BatchViews.from_spec(spec)
        try:  # each example's crop offsets, flip and Cutout centre come from one seed, which covers them up to a size
            views.sample(np.zeros(1, dtype=np.uint64))
        except ValueError as error:
            return (f"the device path cannot draw the training transform's random steps at {spec.image_size}px "
                    f"from one seed per example ({error})")
        resize = stored_steps(spec.image_size, "bilinear", square=True)
        made_train = resize + list(views.steps())
        made_eval = resize + normalized
    else:
        made_train = split_at_to_tensor(train)[0] + normalized
        made_eval = stored_steps(spec.image_size, spec.interpolation, centre_crop_of=spec.eval_resize) + normalized
    return (_steps_problem(made_train, train.transforms, "the training transform")
            or _steps_problem(made_eval, evaluation.transforms, "the evaluation transform"))


def device_path_obstacle(
    datasets_: Sequence[Any],
    spec: TransformSpec,
    image_column: str,
    budget_gib: float | None = None,
    cache_dir: str | None = None,
    two_views: bool = True,
) -> str | None:
    """Why the device path cannot serve these datasets with `spec`, or None when it can.

    It needs `datasets.Dataset`s with an `Image` column, a recipe whose every step it makes (`recipe_problem`), and
    its stores within the budget: the square families' S x S images; the `imagenet` family's training images at full
    resolution (with their original views when `two_views`) and the evaluation set's evaluation views.

    Args:
        datasets_: The training and evaluation datasets (None entries are ignored).
        spec: The recipe.
        image_column: Their image column.
        budget_gib: Largest size (GiB) of the stores; None: `default_budget_gib` (four fifths of the free space of
            the disk they go to), counting only what is not built yet.
        cache_dir: Where the stores go (see `prepare_views`).
        two_views: The training set also gives the original view.
    """
    import datasets

    given = [d for d in datasets_ if d is not None]
    for dataset in given:
        if not isinstance(dataset, datasets.Dataset):
            return f"the data is a {type(dataset).__name__}, not a datasets.Dataset"
        if not isinstance(dataset.features.get(image_column), datasets.Image):
            return f"the column {image_column!r} is not a datasets.Image feature"
    problem = recipe_problem(spec)
    if problem is not None:
        return problem
    use_cache = datasets.is_caching_enabled()
    needs = [_store_need(dataset, image_column, *part, cache_dir, use_cache)
             for dataset, parts in zip(datasets_, _stores_of(spec, two_views)) if dataset is not None
             for part in parts]
    total, new = sum(n[0] for n in needs), sum(n[1] for n in needs)
    folder = next((n[2] for n in needs if n[2] is not None), None)
    if budget_gib is not None:
        if total > budget_gib * 2**30:
            return (f"the stores need {total / 2**30:.2f} GiB, more than the budget of {budget_gib:g} GiB "
                    "(`decode_budget_gib`)")
        return None
    default = default_budget_gib(folder if use_cache else None)
    if new > default * 2**30:
        where = f"the free disk space of {folder}" if use_cache else "the available memory"
        share = "four fifths of" if use_cache else "half"
        return (f"the stores need {new / 2**30:.2f} GiB, more than {share} {where} ({default:.2f} GiB; set "
                "`decode_budget_gib` to allow more)")
    return None


def _stores_of(spec: TransformSpec, two_views: bool) -> tuple[list[tuple], list[tuple]]:
    """The stores of the training and of the evaluation set, each as `(short_side, interpolation, square,
    centre_crop_of)` (see `stored_images_and_failures`)."""
    if spec.family in SQUARE_FAMILIES:
        square = [(spec.image_size, "bilinear", True, None)]
        return square, square
    views = [(spec.image_size, spec.interpolation, True, spec.eval_resize)]
    return [(0, spec.interpolation, False, None)] + (views if two_views else []), views


def prepare_views(
    train: Any,
    evaluation: Any,
    spec: TransformSpec,
    image_column: str,
    label_column: str | None,
    *,
    two_views: bool,
    views_on: str = "auto",
    decode_budget_gib: float | None = None,
    train_labels: Sequence[int] | None = None,
    cache_dir: str | None = None,
    bad_image_policy: BadImagePolicy | None = None,
    seed: int = 0,
) -> PreparedViews:
    """Attach the views of `spec` to the training and evaluation `datasets.Dataset`s, made where `views_on` says.

    Args:
        train, evaluation: `datasets.Dataset`s with raw images (either may be None).
        spec: The transform recipe.
        image_column, label_column: Their columns.
        two_views: The training set also gives the original view (needed when beta > 0).
        views_on: `auto` (`device` where it applies, else `loader`), `device` (raise ValueError naming the obstacle
            where it does not apply) or `loader`.
        decode_budget_gib: Largest size (GiB, train + eval) of the stores the device path takes; None (default):
            four fifths of the free space of the disk they go to (half the available memory when `datasets` caching
            is off), counting only what is not stored yet.
        train_labels: Labels of `train`, if already read.
        cache_dir: Where to keep the stores (default: next to the datasets' cache).
        bad_image_policy: On the device path, images that cannot be decoded are found up front: a training image is
            replaced by another of its class (drawn from `seed`), an evaluation image is skipped (label -100), and
            this policy (default: `BadImagePolicy()`) raises `BadImageError` when there are too many. (The per-image
            path finds them as it reads them: `SynerMixTrainer`.)
        seed: Seeds the choice of the replacements (the run's data seed, as for the per-image path).

    Returns:
        `PreparedViews`: the datasets to give `SynerMixTrainer` (`train`, `eval`), where the views are made
        (`views_on`), one line saying where and why (`description`, for the console and the run log), and the images
        found undecodable up front (`bad_images`).

    Raises:
        ValueError: an argument is not valid, or `views_on` is `device` where the device path does not apply.
        BadImageError: more images than `bad_image_policy` allows cannot be decoded (found up front).
    """
    if views_on not in VIEWS_ON:
        raise ValueError(f"`views_on` {views_on!r} is not valid; choose one of {', '.join(VIEWS_ON)}.")
    if decode_budget_gib is not None and not decode_budget_gib >= 0:
        raise ValueError(f"`decode_budget_gib` must be >= 0, got {decode_budget_gib}.")
    obstacle = None if views_on == "loader" else (
        device_path_obstacle([train, evaluation], spec, image_column, decode_budget_gib, cache_dir, two_views)
        or _unlabelled_problem(evaluation, label_column))
    if views_on == "device" and obstacle is not None:
        raise ValueError(f"`views_on` 'device' does not apply here: {obstacle}. Use 'auto' or 'loader'.")
    if views_on == "loader" or obstacle is not None:
        why = "as asked (views_on='loader')" if views_on == "loader" else f"the device path does not apply: {obstacle}"
        return _loader_views(train, evaluation, spec, image_column, label_column, two_views, why)

    square = spec.family in SQUARE_FAMILIES
    views = BatchViews.from_spec(spec, original=two_views) if square else NormalizedViews(spec.mean, spec.std,
                                                                                            original=two_views)
    crop = None if square else T.Compose(split_at_to_tensor(build_transforms(spec)[0])[0])

    def decode(dataset: Any, position: int) -> tuple[tuple[Any, Any], list]:
        """`((store, views), failures)`: the set's images (None for an evaluation set of the `imagenet` family) and
        its stored evaluation views (the `imagenet` family), and the images that did not decode."""
        made, failures = [], []
        for short_side, interpolation, is_square, centre_crop_of in _stores_of(spec, two_views)[position]:
            store, failures = stored_images_and_failures(dataset, image_column, short_side, interpolation,
                                                         cache_dir=cache_dir, square=is_square,
                                                         centre_crop_of=centre_crop_of)
            made.append(store)  # every store of a set decodes the same images: the same failures
        if not square and position == 1:
            return (None, made[0]), failures
        return (made[0], made[1] if len(made) > 1 else None), failures

    def wrap(stores: tuple[Any, Any], labels: np.ndarray, rows: np.ndarray | None) -> StoredImageDataset:
        store, originals = stores
        return StoredImageDataset(store, labels, views, rows=rows, originals=originals,
                                  crop=crop if store is not None else None)

    try:
        prepared, bad_images = _decoded_splits((train, evaluation), train_labels, label_column, seed,
                                               bad_image_policy or BadImagePolicy(), decode, wrap)
    except StoreSpaceError as error:
        # The budget check saw room that the build did not find (another writer, a quota, a file-size limit): what
        # it chooses when there is no room, the same pixels made in the DataLoader.
        if views_on == "device":
            raise ValueError(f"`views_on` 'device' does not apply here: {error}. Use 'auto' or 'loader'.") from error
        logger.warning("%s; the views are made in the DataLoader instead (the same pixels, each image decoded as read). "
                       "Free space there, or set cache_dir / HF_DATASETS_CACHE to a disk with room, to store them.",
                       error)
        return _loader_views(train, evaluation, spec, image_column, label_column, two_views,
                             f"the device path does not apply: {error}")
    parts = [f"{split} ({len(dataset)} images): {_describe_stores(dataset)}"
             for split, dataset in zip(("training set", "evaluation set"), prepared) if dataset is not None]
    made = ("Crops, flips and views made batched on the training device" if square else
            "Each crop cut in the loader by the recipe's own torchvision steps, ToTensor and Normalize batched on the "
            "training device")
    description = f"device: {'; '.join(parts)}. {made}: the per-image path's pixels exactly"
    logger.info("Views: %s", description)
    return PreparedViews(prepared[0], prepared[1], "device", description, bad_images)


def _unlabelled_problem(evaluation: Any, label_column: str | None) -> str | None:
    """Why the device path cannot serve `evaluation` (a `datasets.Dataset` or None): its batches carry each example's
    label, and the set has no label column (a set to predict, which the loader path serves without labels)."""
    if evaluation is None:
        return None
    column = label_column or trained_label_column(evaluation)  # the column `dataset_labels` reads
    if column is not None and column in evaluation.column_names:
        return None
    named = f" {label_column!r}" if label_column else ""
    return (f"the evaluation set has no label column{named} (its columns: {evaluation.column_names}), and the device "
            "path's batches carry labels")


def _describe_stores(dataset: StoredImageDataset) -> str:
    stores = [store for store in (dataset.store, dataset.originals) if store is not None]
    what = {True: "decoded once", False: "its evaluation views made once"}[dataset.store is not None]
    if dataset.store is not None and not dataset.store.square:
        what += " at full resolution" + (", with its original views made once" if dataset.originals is not None else "")
    elif dataset.store is not None:
        what += f" at {dataset.store.short_side}x{dataset.store.short_side}px"
    where = sorted({store.path for store in stores if store.path is not None})
    return (f"{what}, {sum(store.nbytes for store in stores) / 2**30:.2f} GiB "
            + (f"in {', '.join(where)}" if where else "in memory"))


def _loader_views(train: Any, evaluation: Any, spec: TransformSpec, image_column: str, label_column: str | None,
                  two_views: bool, why: str) -> PreparedViews:
    """The `loader` path: the recipe's transforms attached to each dataset; `why` goes in the description."""
    train_tf, eval_tf = build_transforms(spec)
    if train is not None:
        view = (TwoViewTransform(train_tf, eval_tf, image_column, label_column) if two_views
                else SingleViewTransform(train_tf, image_column, label_column))
        train = train.with_transform(view)
    if evaluation is not None:
        evaluation = evaluation.with_transform(SingleViewTransform(eval_tf, image_column, label_column))
    description = f"loader: each image decoded and transformed in the DataLoader ({why})"
    logger.info("Views: %s", description)
    return PreparedViews(train, evaluation, "loader", description)


def _decoded_splits(
    splits: tuple[Any, Any],
    train_labels: Sequence[int] | None,
    label_column: str | None,
    seed: int,
    policy: BadImagePolicy,
    decode: Callable[[Any, int], tuple[Any, list]],
    wrap: Callable[[Any, np.ndarray, np.ndarray | None], Any],
) -> tuple[list[Any], list[BadImage]]:
    """Decode the training and evaluation sets once each (`decode(dataset, position) -> (decoded, failures)`, position
    0 for the training set, 1 for the evaluation set), settle the images that did not decode (a training image
    replaced by one of its class, an evaluation image skipped; `policy` may stop the run) and wrap each as a dataset
    (`wrap(decoded, labels, rows)`); None stays None."""
    prepared, bad_images = [], []
    for position, (dataset, labels, split) in enumerate(zip(splits, (train_labels, None),
                                                             ("training set", "evaluation set"))):
        if dataset is None:
            prepared.append(None)
            continue
        decoded, failures = decode(dataset, position)
        labels = labels if labels is not None else dataset_labels(dataset, label_column)
        rows, labels, found = settle_decode_failures(failures, labels, split, seed, skip=split != "training set",
                                                     dataset=str(dataset._fingerprint))
        policy.check(found, complete=True)
        bad_images += found
        prepared.append(wrap(decoded, labels, rows))
    return prepared, bad_images
