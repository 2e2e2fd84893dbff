"""Where the views of the images are made: batched on the training device, or one image at a time in the loader.

Both ways make the same two views (see `synermix_hf.data.views`), to the pixel:

* `device`: the loader only copies decoded uint8 pixels (or decodes the dataset's own files) and draws each example's
  augmentation parameters from its seed; the trainer makes both views of the whole batch on the training device
  (`StoredImageDataset`, whose `device_views` it calls). The square families (`cifar`, `miniimagenet`, `digits`)
  decode SxS images once (`synermix_hf.data.decoded`, views by `synermix_hf.data.batch_transforms`). The `imagenet`
  family (RandomResizedCrop) keeps its training images at full resolution in a store, with their original views made
  once beside them, where that fits the budget, and otherwise decodes them at every read; its evaluation images are
  stored as the evaluation transform makes them (`synermix_hf.data.image_store`, views by
  `synermix_hf.data.crop_views` with Pillow's resampling). For `datasets.Dataset`s with an `Image` column.
* `loader`: `TwoViewTransform` / `SingleViewTransform` decode and transform each image in the DataLoader, with any
  torchvision transforms. Always available.

`prepare_views` chooses (`views_on="auto"` takes `device` where it applies) and returns the training and evaluation
datasets ready for `SynerMixTrainer`, with a line for the run log that says where the views are made, from what, and
why.

A store that runs out of room while it is built (a full disk, a quota: `image_store.StoreSpaceError`, its partial
build removed) does not stop the run: the split falls back to what the budget check chooses when there is no room for
it, its images decoded at every read (the `imagenet` family; their index in memory if even that cannot be written) or
the `loader` path (the square families), with exactly the same pixels. The error's one line (the store's folder, the
bytes it needs and the bytes free) is logged as a warning and is part of the description, so that the console and
the run log show it. Only `views_on="device"` with a square recipe, which has no other device source, stops with a
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

from .bad_images import BadImage, BadImagePolicy, settle_decode_failures
from .batch_transforms import BatchViews
from .crop_views import CropViews
from .pil_resample import RESAMPLE_INTERPOLATIONS
from .decoded import decoded_images_and_failures, decoded_nbytes
from .device_datasets import StoredImageDataset
from .image_store import (
    StoreSpaceError,
    encoded_images_and_failures,
    estimated_store_nbytes,
    existing_store_nbytes,
    store_path,
    stored_images_and_failures,
)
from .transforms import SQUARE_FAMILIES, TransformSpec, build_transforms
from .views import SingleViewTransform, TwoViewTransform, dataset_labels

__all__ = ["VIEWS_ON", "PreparedViews", "default_budget_gib", "device_path_obstacle", "prepare_views"]

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


def _store_need(dataset: Any, image_column: str, short_side: int, interpolation: str, cache_dir: str | None,
                use_cache: bool, square: bool = False,
                centre_crop_of: int | None = None) -> tuple[int, int, str | None]:
    """`(size, new, folder)` of the store of `dataset` at `short_side` (`square`: S x S rows; `centre_crop_of`: its
    S x S evaluation views): its bytes (real when built, exact for S x S rows, estimated from the headers otherwise),
    the bytes still to write, and its folder (None in memory)."""
    square = square or centre_crop_of is not None
    path = (store_path(dataset, image_column, short_side, interpolation, cache_dir, square=square,
                       centre_crop_of=centre_crop_of) if use_cache else None)
    existing = existing_store_nbytes(path) if path is not None else None
    if existing is not None:
        size = existing
    elif square:
        size = decoded_nbytes(len(dataset), short_side)
    else:
        size = estimated_store_nbytes(dataset, image_column, short_side)
    return size, 0 if existing is not None else size, os.path.dirname(path) if path is not None else None


def device_path_obstacle(
    datasets_: Sequence[Any],
    spec: TransformSpec,
    image_column: str,
    budget_gib: float | None = None,
    cache_dir: str | None = None,
) -> str | None:
    """Why the device path cannot serve these datasets with `spec`, or None when it can.

    The square families need their decoded images within the budget; the `imagenet` family always fits (images
    that no store holds are decoded at every read, see `prepare_views`).

    Args:
        datasets_: The datasets (None entries are ignored).
        spec: The recipe.
        image_column: Their image column.
        budget_gib: Largest size (GiB) of the decoded images; None: `default_budget_gib` (four fifths of the free
            space of the disk they go to), counting only what is not built yet.
        cache_dir: Where the stores go (see `prepare_views`).
    """
    import datasets

    given = [d for d in datasets_ if d is not None]
    for dataset in given:
        if not isinstance(dataset, datasets.Dataset):
            return f"the data is a {type(dataset).__name__}, not a datasets.Dataset"
        if not isinstance(dataset.features.get(image_column), datasets.Image):
            return f"the column {image_column!r} is not a datasets.Image feature"
    if spec.family not in SQUARE_FAMILIES:
        if spec.interpolation not in RESAMPLE_INTERPOLATIONS:
            return (f"the recipe resamples with {spec.interpolation!r}; the device path resamples "
                    f"{' or '.join(RESAMPLE_INTERPOLATIONS)}")
        return None
    use_cache = datasets.is_caching_enabled()
    needs = [_store_need(dataset, image_column, spec.image_size, "bilinear", cache_dir, use_cache, square=True)
             for dataset in given]
    total, new = sum(n[0] for n in needs), sum(n[1] for n in needs)
    folder = next((n[2] for n in needs if n[2] is not None), None)
    if budget_gib is not None:
        if total > budget_gib * 2**30:
            return (f"the decoded images need {total / 2**30:.2f} GiB, more than the budget of {budget_gib:g} GiB "
                    "(`decode_budget_gib`)")
        return None
    default = default_budget_gib(folder if use_cache else None)
    if new > default * 2**30:
        where = f"the free disk space of {folder}" if use_cache else "the available memory"
        share = "four fifths of" if use_cache else "half"
        return (f"the decoded images need {new / 2**30:.2f} GiB, more than {share} {where} ({default:.2f} GiB; set "
                "`decode_budget_gib` to allow more)")
    return None


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
    decode_short_side: int | None = None,
) -> PreparedViews:
    """Attach the views of `spec` to the training and evaluation `datasets.Dataset`s, made where `views_on` says.

    Args:
        train, evaluation: `datasets.Dataset`s with raw images (either may be None).
        spec: The transform recipe.
        image_column, label_column: Their columns.
        two_views: The training set also gives the original view (needed when beta > 0).
        views_on: `auto` (`device` where it applies, else `loader`), `device` (raise ValueError naming the obstacle
            where it does not apply) or `loader`.
        decode_budget_gib: Largest decoded size (GiB, train + eval) the device path takes; None (default): four
            fifths of the free space of the disk the decoded images go to (half the available memory when `datasets`
            caching is off), counting only what is not decoded yet.
        train_labels: Labels of `train`, if already read.
        cache_dir: Where to keep the decoded arrays (default: next to the datasets' cache).
        bad_image_policy: On the device path, images that cannot be decoded are found up front: a training image is
            replaced by another of its class (drawn from `seed`), an evaluation image is skipped (label -100), and
            this policy (default: `BadImagePolicy()`) raises `BadImageError` when there are too many. (The per-image
            path finds them as it reads them: `SynerMixTrainer`.)
        seed: Seeds the choice of the replacements (the run's data seed, as for the per-image path).
        decode_short_side: The `imagenet` family (RandomResizedCrop) on the device path. Default (None): both views
            exactly the per-image path's: the training images at full resolution (a store where it fits the budget,
            else decoded from the dataset's files at every read), the evaluation images resized as the evaluation
            resizes them. S > 0 (opt-in): both kept with the shorter side resized to S, which cuts the augmented
            view's crops from fewer pixels (softer; docs/data_paths.md states by how much); 0: a full-resolution store
            for both.

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
    if decode_short_side is not None and decode_short_side < 0:
        raise ValueError(f"`decode_short_side` must be >= 0 (0: full resolution), got {decode_short_side}.")
    obstacle = None if views_on == "loader" else device_path_obstacle(
        [train, evaluation], spec, image_column, decode_budget_gib, cache_dir)
    if views_on == "device" and obstacle is not None:
        raise ValueError(f"`views_on` 'device' does not apply here: {obstacle}. Use 'auto' or 'loader'.")
    if views_on == "loader" or obstacle is not None:
        why = "as asked (views_on='loader')" if views_on == "loader" else f"the device path does not apply: {obstacle}"
        return _loader_views(train, evaluation, spec, image_column, label_column, two_views, why)

    if spec.family not in SQUARE_FAMILIES:
        return _stored_views(train, evaluation, spec, image_column, label_column, two_views, train_labels, cache_dir,
                             bad_image_policy or BadImagePolicy(), seed, decode_short_side, decode_budget_gib)
    views = BatchViews.from_spec(spec, original=two_views)
    try:
        prepared, bad_images = _decoded_splits(
            (train, evaluation), train_labels, label_column, seed, bad_image_policy or BadImagePolicy(),
            decode=lambda dataset, _: decoded_images_and_failures(dataset, image_column, spec.image_size,
                                                                  cache_dir=cache_dir),
            wrap=lambda store, labels, rows: StoredImageDataset(store, labels, views, rows=rows),
        )
    except StoreSpaceError as error:
        # The budget check saw room that the build did not find (another writer, a quota, a file-size limit): what
        # it chooses when there is no room, the same pixels made in the DataLoader.
        if views_on == "device":
            raise ValueError(f"`views_on` 'device' does not apply here: {error}. Use 'auto' or 'loader'.") from error
        logger.warning("%s; the views are made in the DataLoader instead (the same pixels, decoded at every read). "
                       "Free space there, or set cache_dir / HF_DATASETS_CACHE to a disk with room, to store them.",
                       error)
        return _loader_views(train, evaluation, spec, image_column, label_column, two_views,
                             f"the device path does not apply: {error}")
    total = sum(len(d) for d in prepared if d is not None)
    where = {d.store.path for d in prepared if d is not None} - {None}
    description = (f"device: {total} images decoded once at {spec.image_size}px "
                   f"({decoded_nbytes(total, spec.image_size) / 2**20:.1f} MiB"
                   + (f", cached in {', '.join(sorted(where))}" if where else ", in memory")
                   + "); views made batched on the training device")
    logger.info("Views: %s", description)
    return PreparedViews(prepared[0], prepared[1], "device", description, bad_images)


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
    0 for the training set, 1 for the evaluation set), settle the images
    that did not decode (a training image replaced by one of its class, an evaluation image skipped; `policy` may stop
    the run) and wrap each as a dataset (`wrap(decoded, labels, rows)`); None stays None."""
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


def _stored_views(train: Any, evaluation: Any, spec: TransformSpec, image_column: str, label_column: str | None,
                  two_views: bool, train_labels: Sequence[int] | None, cache_dir: str | None, policy: BadImagePolicy,
                  seed: int, short_side: int | None, budget_gib: float | None) -> PreparedViews:
    """The device path of the `imagenet` family: where each split's images come from (`_choose_sources`), a
    `StoredImageDataset` per split, `CropViews`."""
    import datasets

    sources = _choose_sources(train, evaluation, spec, image_column, short_side, budget_gib, cache_dir,
                              datasets.is_caching_enabled(), two_views)

    def stored(dataset: Any, kind: str, side: int | None) -> tuple[Any, list]:
        originals = None
        if kind in ("evaluation views", "store and evaluation views"):
            originals, failures = stored_images_and_failures(dataset, image_column, spec.image_size,
                                                             spec.interpolation, cache_dir=cache_dir,
                                                             centre_crop_of=spec.eval_resize)
        if kind == "evaluation views":
            return (None, originals), failures
        store, failures = stored_images_and_failures(dataset, image_column, side, spec.interpolation,
                                                     cache_dir=cache_dir)
        return (store, originals), failures

    def decode(dataset: Any, position: int) -> tuple[Any, list]:
        kind, side, _ = sources[position]
        split = ("training set", "evaluation set")[position]
        if kind != "every read":
            try:
                return stored(dataset, kind, side)
            except StoreSpaceError as error:
                # The budget saw room that the build did not find (another writer, a quota, a file-size limit):
                # what the budget chooses when there is no room, the same pixels decoded at every read.
                logger.warning("%s; the %s's images are decoded at every read instead (the same pixels, slower). "
                               "Free space there, or set cache_dir / HF_DATASETS_CACHE to a disk with room, to store "
                               "them.", error, split)
                sources[position] = ("every read", None, str(error))
        try:
            store, failures = encoded_images_and_failures(dataset, image_column, cache_dir=cache_dir)
        except StoreSpaceError as error:
            logger.warning("%s; the %s's index is kept in memory instead (made again by every run).", error, split)
            sources[position] = ("every read", None, f"{sources[position][2]}; its index kept in memory: {error}")
            store, failures = encoded_images_and_failures(dataset, image_column, use_cache=False)
        return (store, None), failures

    def wrap(stores: tuple[Any, Any], labels: np.ndarray, rows: np.ndarray | None) -> StoredImageDataset:
        store, originals = stores
        side = 0 if store is None or store.pixels is None else store.short_side
        return StoredImageDataset(store, labels, CropViews.from_spec(spec, side, original=two_views), rows=rows,
                                  originals=originals)

    prepared, bad_images = _decoded_splits((train, evaluation), train_labels, label_column, seed, policy, decode, wrap)
    parts = [f"{split} ({len(dataset)} images): {_describe_source(dataset, why)}"
             for split, dataset, (_, _, why) in zip(("training set", "evaluation set"), prepared, sources)
             if dataset is not None]
    reduced = prepared[0] is not None and prepared[0].store is not None and not prepared[0].device_views.exact
    description = (f"device: {'; '.join(parts)}. Crops, flips and views made batched on the training device "
                   + ("from reduced images (opt-in): the augmented view is cut from fewer pixels than the per-image "
                      f"path's, softer ({REDUCED_STORE_EFFECT})" if reduced else
                      "with Pillow's resampling: the per-image path's pixels exactly"))
    logger.info("Views: %s", description)
    return PreparedViews(prepared[0], prepared[1], "device", description, bad_images)


REDUCED_STORE_EFFECT = ("never identical to the per-image path's crops, their PSNR measured in docs/data_paths.md, "
                        "'What the model sees, measured'; its effect on accuracy is unmeasured")
"""What a store at a reduced size does to the augmented view; the figures, measured by `benchmarks/bench_crop_path.py`
(part a; pixels, so the same on every CPU), are in docs/data_paths.md and BENCHMARKS.md, section 7."""


def _describe_source(dataset: StoredImageDataset, why: str) -> str:
    store, originals = dataset.store, dataset.originals
    if store is None:
        return (f"its evaluation views (Resize + CenterCrop) made once, {originals.nbytes / 2**30:.2f} GiB in "
                f"{originals.path or 'memory'} ({why})")
    if store.pixels is None:
        return f"decoded from the dataset's own files at every read ({why})"
    where = f"in {store.path}" if store.path is not None else "in memory"
    resolution = ("at full resolution" if store.short_side == 0 else
                  f"with the shorter side resized to {store.short_side}px")
    nbytes = store.nbytes + (originals.nbytes if originals is not None else 0)
    extra = ", with its original views made once" if originals is not None else ""
    return f"decoded once {resolution}{extra}, {nbytes / 2**30:.2f} GiB {where} ({why})"


def _choose_sources(train: Any, evaluation: Any, spec: TransformSpec, image_column: str, short_side: int | None,
                    budget_gib: float | None, cache_dir: str | None, use_cache: bool,
                    two_views: bool = True) -> list[tuple[str | None, int | None, str]]:
    """For the training and evaluation sets, where their images come from, `(kind, short_side, why)`; kind is one of
    `store` (a store at that shorter side, 0: full resolution), `store and evaluation views` (with the original views
    made once beside it), `evaluation views` (only those: an evaluation set), `every read` (the dataset's own files
    decoded at every read), or None (no such set).

    The evaluation set needs only its evaluation views: they are made once by the per-image path's own `Resize` and
    `CenterCrop` (S x S, the smallest store). The training set is stored at full resolution, its crops being cut from
    the whole image, with its original views beside it when beta > 0 (`two_views`); with `short_side` (opt-in) it is
    stored at that shorter side instead. Each where it fits the budget, the evaluation set first (the smaller), else
    decoded at every read: every view stays the per-image path's except the opt-in's crops.
    """
    wanted = []
    if evaluation is not None:
        wanted.append(("evaluation views", None, [(spec.image_size, spec.eval_resize)]))
    else:
        wanted.append((None, None, []))
    if train is not None:
        side = 0 if short_side is None else short_side
        with_views = two_views and side == 0
        parts = [(side, None)] + ([(spec.image_size, spec.eval_resize)] if with_views else [])
        wanted.append(("store and evaluation views" if with_views else "store", side, parts))
    else:
        wanted.append((None, None, []))
    needs, folder = [], None
    for dataset, (kind, side, parts) in zip((evaluation, train), wanted):
        size = new = 0
        for part_side, centre_crop_of in parts:
            part = _store_need(dataset, image_column, part_side, spec.interpolation, cache_dir, use_cache,
                               centre_crop_of=centre_crop_of)
            size, new, folder = size + part[0], new + part[1], folder or part[2]
        needs.append((size, new))
    if budget_gib is not None:
        left, counted, what = budget_gib * 2**30, False, f"the budget of {budget_gib:g} GiB (`decode_budget_gib`)"
    else:
        default = default_budget_gib(folder if use_cache else None)
        left, counted = default * 2**30, True
        where = f"four fifths of the free disk space of {folder}" if use_cache else "half the available memory"
        what = f"{where} ({default:.2f} GiB; `decode_budget_gib` sets another budget)"
    chosen = []
    for (kind, side, parts), (size, new) in zip(wanted, needs):
        if kind is None:
            chosen.append((None, None, ""))
            continue
        cost = new if counted else size
        label = ("evaluation views" if kind == "evaluation views" else
                 "full-resolution store" if side == 0 else f"store at {side}px")
        if cost <= left:
            left -= cost
            reason = ("exactly the evaluation's Resize + CenterCrop" if kind == "evaluation views" else
                      "the fastest exact source" if short_side is None else "as asked")
            chosen.append((kind, side, f"{reason}, within {what.split(' (')[0]}"))
        else:
            chosen.append(("every read", None, f"its {label} would need {size / 2**30:.2f} GiB, more than what is "
                                               f"left of {what}"))
    return chosen[::-1]
