"""`--do_predict`: the top classes and scores of every image of the evaluation split, as `predictions.csv`."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PREDICTIONS_FILE", "image_ids", "write_predictions"]

PREDICTIONS_FILE = "predictions.csv"


def image_ids(dataset: Any, image_column: str) -> list[str]:
    """The file name of every image when the dataset knows it, else its row number."""
    import datasets

    raw = dataset.cast_column(image_column, datasets.Image(decode=False)).with_format(None)[image_column]
    return [os.path.basename(value["path"]) if value and value.get("path") else str(row)
            for row, value in enumerate(raw)]


def write_predictions(path: str | os.PathLike, logits: np.ndarray, labels: Sequence[int] | None,
                      class_names: Sequence[str], ids: Sequence[str], top_k: int = 5) -> None:
    """One row per image: `id`, `label` (the true class), then `prediction_i` and `score_i` (softmax) for the
    `top_k` best classes, best first. Images that could not be decoded (label -100) have no row."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores = shifted / shifted.sum(axis=1, keepdims=True)
    k = min(top_k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    header = ["id", "label"] + [f"{name}_{i}" for i in range(1, k + 1) for name in ("prediction", "score")]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row, best in enumerate(order):
            if labels is not None and int(labels[row]) < 0:
                continue  # skipped: the image could not be decoded
            label = class_names[int(labels[row])] if labels is not None else ""
            cells = [ids[row], label]
            for index in best:
                cells += [class_names[int(index)], f"{scores[row, index]:.6f}"]
            writer.writerow(cells)
