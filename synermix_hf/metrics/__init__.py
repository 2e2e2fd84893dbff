"""Classification metrics through `evaluate`, from metric modules that ship with the package (no download).

`ClassificationMetrics(num_labels)` is a `compute_metrics` for the Trainer: top-1 `accuracy`, and `top5_accuracy`
when there are more than 5 classes. The modules live next to this file (`accuracy/`, `top5_accuracy/`) and load with
`evaluate.load(path)`, which works offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["METRICS_DIR", "ClassificationMetrics", "load_metric"]

METRICS_DIR = Path(__file__).resolve().parent


def load_metric(name: str) -> Any:
    """Load the shipped metric module `name` with `evaluate.load`, offline: `accuracy`, `top5_accuracy`,
    `feature_cohesion` or `feature_separability` (the last two score penultimate features and their labels)."""
    import evaluate

    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"No shipped metric {name!r}; available: {', '.join(available)}.")
    return evaluate.load(str(path), keep_in_memory=True)


class ClassificationMetrics:
    """`compute_metrics` for `Trainer`: `accuracy`, plus `top5_accuracy` when `num_labels > 5`.

    Examples labelled -100 (images that could not be decoded, skipped by `SynerMixTrainer`) are left out of both and
    counted in `skipped_images`, reported when there are any.
    """

    def __init__(self, num_labels: int):
        self.num_labels = num_labels
        self.accuracy = load_metric("accuracy")
        self.top5 = load_metric("top5_accuracy") if num_labels > 5 else None

    def __call__(self, eval_prediction: Any) -> dict[str, float | int]:
        logits = eval_prediction.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits = np.asarray(logits, dtype=np.float32)
        references = np.asarray(eval_prediction.label_ids).astype(np.int64)
        kept = references >= 0
        logits, references = logits[kept], references[kept]
        results: dict[str, Any] = {}
        if len(references):
            results.update(self.accuracy.compute(predictions=logits.argmax(axis=-1), references=references))
            if self.top5 is not None:
                results.update(self.top5.compute(predictions=logits, references=references))
        results = {key: float(value) for key, value in results.items()}
        if not kept.all():
            results["skipped_images"] = int((~kept).sum())
        return results
