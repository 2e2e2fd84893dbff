"""Which columns hold the images and the labels, and making them an `Image` and a `ClassLabel` column."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "IMAGE_COLUMN_CANDIDATES",
    "LABEL_COLUMN_CANDIDATES",
    "detect_column",
    "ensure_class_label",
    "ensure_image_column",
    "find_columns",
]

IMAGE_COLUMN_CANDIDATES = ("img", "image")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label")
# `datasets` reads text from CSV, JSON and parquet files as `string` or, since datasets 5, as `large_string`.
_STRING_DTYPES = ("string", "large_string")


def describe_feature(feature: Any) -> str:
    dtype = getattr(feature, "dtype", None)
    return f"{type(feature).__name__}({dtype})" if dtype else type(feature).__name__


def detect_column(
    features: Any, given: str | None, candidates: Sequence[str], kind: str, parameter: str,
    feature_type: type | None = None,
) -> str:
    """Pick a column: the one given, else the single candidate present, else the single column of `feature_type`.

    Args:
        parameter: The name of the argument that names this column, for the error messages.

    Raises:
        ValueError: the given column is missing, or none or several columns fit; the message lists the columns.
    """
    columns = list(features)
    if given is not None:
        if given not in columns:
            raise ValueError(f"`{parameter}` {given!r} is not a column of the dataset. Its columns are: "
                             f"{', '.join(columns)}.")
        return given
    present = [c for c in candidates if c in columns]
    if len(present) == 1:
        return present[0]
    if not present and feature_type is not None:
        typed = [c for c in columns if isinstance(features[c], feature_type)]
        if len(typed) == 1:
            return typed[0]
        present = typed
    if present:
        raise ValueError(
            f"Cannot tell which column holds the {kind}: {', '.join(present)} all could. Name it with `{parameter}`. "
            f"The dataset's columns are: {', '.join(columns)}."
        )
    raise ValueError(
        f"Cannot find the {kind} column (looked for {', '.join(candidates)}). Name it with `{parameter}`. The "
        f"dataset's columns are: {', '.join(columns)}."
    )


def ensure_class_label(dataset_dict: Any, column: str, parameter: str = "label_column") -> Any:
    """Make `column` a `ClassLabel` in every split: integer or string columns are class-encoded over all splits.

    Raises:
        ValueError: the column holds something else (floats, lists, images, ...) or looks like an id (almost every
            row has its own value).
    """
    import datasets

    first = next(iter(dataset_dict.values()))
    feature = first.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return dataset_dict
    dtype = getattr(feature, "dtype", None)
    if not isinstance(feature, datasets.Value) or not (dtype in _STRING_DTYPES or dtype.startswith(("int", "uint"))):
        raise ValueError(
            f"`{parameter}` {column!r} is not a class label: its type is {describe_feature(feature)}. Classification "
            f"needs a column of class labels (a ClassLabel, or integers or strings naming classes). The dataset's "
            f"columns are: {', '.join(first.column_names)}."
        )
    values = [v for split in dataset_dict.values() for v in split.with_format(None)[column]]
    distinct = len(set(values))
    if len(values) >= 20 and distinct > len(values) // 2:
        raise ValueError(
            f"`{parameter}` {column!r} is not a class label: it has {distinct} different values in {len(values)} rows, "
            f"so it looks like an id. The dataset's columns are: {', '.join(first.column_names)}."
        )
    if dtype == "large_string":  # class_encode_column only knows `string`
        dataset_dict = dataset_dict.cast_column(column, datasets.Value("string"))
    return dataset_dict.class_encode_column(column)


def ensure_image_column(dataset_dict: Any, column: str, parameter: str = "image_column") -> Any:
    """Make `column` an `Image` column: it is one already, or it holds image file paths (CSV, JSON).

    Raises:
        ValueError: the column holds something else.
    """
    import datasets

    first = next(iter(dataset_dict.values()))
    feature = first.features[column]
    if isinstance(feature, datasets.Image):
        return dataset_dict
    if isinstance(feature, datasets.Value) and feature.dtype in _STRING_DTYPES:  # file paths
        if feature.dtype == "large_string":
            dataset_dict = dataset_dict.cast_column(column, datasets.Value("string"))
        return dataset_dict.cast_column(column, datasets.Image())
    raise ValueError(
        f"`{parameter}` {column!r} does not hold images: its type is {describe_feature(feature)}. The dataset's "
        f"columns are: {', '.join(first.column_names)}."
    )


def find_columns(raw: Any, image_column: str | None, label_column: str | None,
                 defaults: tuple[str | None, str | None] = (None, None)) -> tuple[Any, str, str]:
    """Find the image and label columns on the first split, and make them `Image` and `ClassLabel` in all splits.

    Args:
        raw: A `DatasetDict`.
        image_column, label_column: The columns the user named, or None to detect them.
        defaults: Columns to use when present and nothing is named (a catalog entry's).

    Returns:
        `(raw, image_column, label_column)`.
    """
    import datasets

    features = next(iter(raw.values())).features

    def default(name: str | None) -> str | None:
        return name if name is not None and name in features else None

    image_column = detect_column(features, image_column or default(defaults[0]), IMAGE_COLUMN_CANDIDATES, "images",
                                 "image_column", datasets.Image)
    label_column = detect_column(features, label_column or default(defaults[1]), LABEL_COLUMN_CANDIDATES, "labels",
                                 "label_column", datasets.ClassLabel)
    if image_column == label_column:
        raise ValueError(f"The image and label columns are both {image_column!r}; name them with `image_column` and "
                         "`label_column`.")
    raw = ensure_image_column(raw, image_column)
    raw = ensure_class_label(raw, label_column)
    return raw, image_column, label_column
