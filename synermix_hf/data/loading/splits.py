"""Training and evaluation splits: a catalog entry's protocol, the splits a dataset has, or a held-out part."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "FILE_NAME_COLUMN_CANDIDATES",
    "VAL_SPLIT_SEED",
    "split_for_evaluation",
    "split_per_class",
    "stored_file_names",
    "stratified_holdout",
    "take",
]

# The reference code's seed for the --phase val split (sklearn's StratifiedShuffleSplit).
VAL_SPLIT_SEED = 42


FILE_NAME_COLUMN_CANDIDATES = ("file_name", "filename", "file", "path", "image_path")


def _natural_key(text: str) -> tuple:
    """Sort key that orders the numbers inside a name by value ("img_2" before "img_10")."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def stored_file_names(dataset: Any, image_column: str) -> list[str] | None:
    """The file name of every row, or None when the copy keeps none (or keeps the same name twice).

    Read from a file-name column (`FILE_NAME_COLUMN_CANDIDATES`) or else from the `path` that an `Image` column
    stores beside its bytes, without decoding or copying the images.
    """
    import datasets
    import pyarrow.compute as pc

    names = next((c for c in FILE_NAME_COLUMN_CANDIDATES
                  if c in dataset.features and getattr(dataset.features[c], "dtype", None) in ("string", "large_string")),
                 None)
    if names is not None:
        values = list(dataset.with_format(None)[names])
    elif isinstance(dataset.features.get(image_column), datasets.Image):
        table = dataset.select_columns([image_column]).cast_column(
            image_column, datasets.Image(decode=False)).with_format("arrow")[:]
        values = pc.struct_field(table[image_column], "path").to_pylist()
    else:
        return None
    if any(not value for value in values) or len(set(values)) != len(values):
        return None
    return [str(value) for value in values]


def split_per_class(
    dataset: Any, label_column: str, n_train: int, n_test: int, order: Sequence[str] | None = None
) -> tuple[Any, Any]:
    """For every class, its first `n_train` examples train and the next `n_test` test.

    Args:
        order: Optional sort key of every row (e.g. its file name, sorted with the numbers in it by value). Without
            it, the dataset's row order decides which examples come first.
    """
    labels = np.asarray(list(dataset.with_format(None)[label_column]))
    train_idx: list[int] = []
    test_idx: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if order is not None:
            members = np.asarray(sorted(members.tolist(), key=lambda row: _natural_key(order[row])), dtype=np.int64)
        train_idx.extend(members[:n_train].tolist())
        test_idx.extend(members[n_train : n_train + n_test].tolist())
    return dataset.select(sorted(train_idx)), dataset.select(sorted(test_idx))


def stratified_holdout(
    dataset: Any, label_column: str, ratio: float, seed: int = VAL_SPLIT_SEED, class_names: Sequence[str] = ()
) -> tuple[Any, Any]:
    """Hold out a stratified `ratio` of `dataset` (sklearn's StratifiedShuffleSplit, as the reference code).

    Returns:
        `(rest, held_out)`.

    Raises:
        ValueError: a class has fewer than 2 examples or the split cannot give every class a place on both sides.
    """
    from sklearn.model_selection import StratifiedShuffleSplit

    if not 0.0 < ratio < 1.0:
        raise ValueError(f"`val_ratio` must be between 0 and 1, got {ratio}.")
    labels = np.asarray(list(dataset.with_format(None)[label_column]))
    classes, counts = np.unique(labels, return_counts=True)
    n = len(labels)
    n_val = math.ceil(ratio * n)

    def name(label: int) -> str:
        return repr(class_names[label]) if label < len(class_names) else str(label)

    too_few = classes[counts < 2]
    if len(too_few):
        raise ValueError(
            f"`phase` 'val' holds out a stratified {ratio:g} of the training set (`val_ratio`), which needs at least 2 "
            f"training examples of every class, but class {name(int(too_few[0]))} has "
            f"{int(counts[classes == too_few[0]][0])} ({len(too_few)} of {len(classes)} classes have fewer than 2). "
            "Use `phase` 'test', or a dataset with more examples per class."
        )
    if n_val < len(classes) or n - n_val < len(classes):
        raise ValueError(
            f"`phase` 'val' with `val_ratio` {ratio:g} splits {n} training examples into {n - n_val} / {n_val}, but a "
            f"stratified split needs at least one example of each of the {len(classes)} classes on both sides. "
            "Change `val_ratio`, or use `phase` 'test'."
        )
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=ratio, random_state=seed)
    rest, held_out = next(splitter.split(np.zeros(n), labels))
    return dataset.select(sorted(rest.tolist())), dataset.select(sorted(held_out.tolist()))


def _pool(dataset_dict: Any, splits: Sequence[str]) -> Any:
    import datasets

    present = [s for s in splits if s in dataset_dict] or list(dataset_dict)
    parts = [dataset_dict[s] for s in present]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def take(dataset: Any, limit: int | None, seed: int) -> Any:
    """At most `limit` examples of `dataset`, shuffled with `seed` first (all of them when `limit` is None)."""
    if dataset is None or limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


def split_for_evaluation(
    raw: Any, entry: Any, source: str, image_column: str, label_column: str, class_names: Sequence[str],
    phase: str = "test",
    val_ratio: float = 0.1, train_val_split: float | None = 0.15, seed: int = 42,
) -> tuple[Any, Any, str]:
    """The training and evaluation splits of `raw` (a `DatasetDict`), and what the evaluation split is.

    A catalog `entry` (or None) brings its protocol: its official test split, or a per-class or random split of its
    pooled splits. Other datasets evaluate on `validation`, else `test`, else a random `train_val_split` of the
    training data. `phase` 'val' then holds out a stratified `val_ratio` of the training data instead.
    """
    if phase not in ("test", "val"):
        raise ValueError(f"`phase` must be 'test' or 'val', got {phase!r}.")
    if entry is not None and entry.test_split is not None:
        for needed in (entry.train_split, entry.test_split):
            if needed not in raw:
                raise ValueError(
                    f"{source} has no {needed!r} split (it has: {', '.join(raw)}); `dataset_name` {entry.name} needs "
                    f"{entry.train_split!r} and {entry.test_split!r} splits."
                )
        train, evaluation = raw[entry.train_split], raw[entry.test_split]
        description = f"official test split ({entry.test_split!r})"
    elif entry is not None:
        pooled = _pool(raw, entry.pool_splits)
        if entry.protocol == "per_class":
            n_train, n_test = entry.per_class
            file_names = stored_file_names(pooled, image_column)
            train, evaluation = split_per_class(pooled, label_column, n_train, n_test, order=file_names)
            ordered_by = "by file name" if file_names is not None else "in the copy's row order (it keeps no file names)"
            description = f"per class, images {n_train + 1}-{n_train + n_test} {ordered_by} (first {n_train} train)"
        else:
            parts = pooled.train_test_split(test_size=entry.test_fraction, seed=entry.split_seed, shuffle=True)
            train, evaluation = parts["train"], parts["test"]
            description = f"random {entry.test_fraction:.0%} of the pooled data (seed {entry.split_seed})"
    else:
        train = raw.get("train")
        if train is None and len(raw) == 1 and "validation" not in raw and "test" not in raw:
            train = next(iter(raw.values()))
        eval_name = next((s for s in ("validation", "test") if s in raw), None)
        if eval_name is not None:
            evaluation, description = raw[eval_name], f"{eval_name!r} split"
        elif train is not None and train_val_split and phase == "test":
            parts = train.train_test_split(test_size=train_val_split, seed=seed)
            train, evaluation = parts["train"], parts["test"]
            description = f"random {train_val_split:g} of the training data (`train_val_split`)"
        else:
            evaluation, description = None, "none"
    if phase == "val":
        if train is None:
            raise ValueError("`phase` 'val' holds out part of the training set, but there is no training data.")
        train, evaluation = stratified_holdout(train, label_column, val_ratio, class_names=class_names)
        description = f"stratified {val_ratio:g} of the training set (`phase` 'val')"
    return train, evaluation, description
