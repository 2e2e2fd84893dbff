"""Whether the data can be trained on: images that open, at least two classes, no empty split."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["check_classes", "check_images_readable", "check_not_empty"]

logger = logging.getLogger(__name__)


def check_images_readable(dataset: Any, image_column: str, what: str) -> None:
    """Open every image of `dataset` (headers and structure, without decoding pixels) and name the first bad one.

    Raises:
        ValueError: an image cannot be read; the message names its file (or row).
    """
    import datasets
    from PIL import Image

    raw = dataset.cast_column(image_column, datasets.Image(decode=False)).with_format(None)
    for row, value in enumerate(raw[image_column]):
        if value is None:
            raise ValueError(f"Row {row} of the {what} has no image in column {image_column!r}.")
        path = value.get("path")
        data = value.get("bytes")
        try:
            with Image.open(io.BytesIO(data) if data is not None else path) as image:
                image.verify()
        except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
            where = f"file {path}" if path else f"row {row}"
            reason = str(error).rstrip(".")  # Pillow's own messages end with one (a decompression bomb's)
            if data is None and path and not os.path.exists(path):  # a deleted file, or a column that holds no images
                raise ValueError(
                    f"Cannot read the image in file {path} of the {what}: there is no such file. If column "
                    f"{image_column!r} does not hold images (their paths or bytes), name the column of images with "
                    "`image_column`; else restore or replace the file and run again."
                ) from error
            raise ValueError(
                f"Cannot read the image in {where} of the {what}: {reason}. Remove or replace the file and run again."
            ) from error


def check_classes(train: Any, label_column: str, class_names: Sequence[str], source: str) -> None:
    """Classification needs at least two classes, in the label column's names and in the training data.

    Raises:
        ValueError: one class only (a single-class model learns nothing and scores accuracy 1.0).
    """
    if len(class_names) < 2:
        raise ValueError(
            f"{source} has {len(class_names)} class ({', '.join(map(repr, class_names)) or 'none'}) in `label_column` "
            f"{label_column!r}; classification needs at least 2."
        )
    if train is not None:
        present = sorted(set(train.with_format(None)[label_column]))
        if len(present) < 2:
            names = ", ".join(repr(class_names[i]) for i in present) or "none"
            raise ValueError(
                f"The training set of {source} holds {len(present)} class ({names}) of the {len(class_names)} in "
                f"`label_column` {label_column!r}; classification needs examples of at least 2 classes."
            )
        trained = set(present)
        untrained = [name for index, name in enumerate(class_names) if index not in trained]
        if untrained:  # e.g. a validation folder with a class the training folder lacks
            more = f" and {len(untrained) - 5} more" if len(untrained) > 5 else ""
            shown = ", ".join(map(repr, untrained[:5])) + more
            logger.warning("The training set of %s holds no example of %d of its %d classes (%s): the model's head "
                           "has them, but never learns them.", source, len(untrained), len(class_names), shown)


def check_not_empty(splits: Sequence[tuple[Any, str]], source: str) -> None:
    for part, what in splits:
        if part is not None and len(part) == 0:
            raise ValueError(f"The {what} of {source} is empty.")
