"""Intra-class cohesion and inter-class separability of a trained model's penultimate features.

The features are the input of the classification head (the final `nn.Linear`, found by `ModelAdapter`): the vector
h = f(x) that SynerMix-Intra mixes. They are collected over an evaluation set with the model in eval mode and without
gradients, then scored by two `evaluate` modules that ship in `synermix_hf/metrics/`:

* `feature_cohesion`:     (1/N) sum_i cos(h_i, mu_{y_i}), mu_c the mean feature of class c;
* `feature_separability`: tr(S_B) / tr(S_W), S_B = sum_c n_c ||mu_c - mu||^2, S_W = sum_i ||h_i - mu_{y_i}||^2.

The module docstrings give the degenerate cases (one class, a class with one example, zero scatter).

    from synermix_hf.feature_metrics import penultimate_feature_metrics
    metrics = penultimate_feature_metrics(trainer)   # {"eval_cohesion": ..., "eval_separability": ...}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .data.views import original_view
from .metrics import load_metric
from .trainer import SynerMixTrainer

__all__ = ["collect_penultimate_features", "feature_space_metrics", "penultimate_feature_metrics"]


def collect_penultimate_features(
    trainer: SynerMixTrainer, eval_dataset: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features and labels of `eval_dataset` (default: the trainer's), model in eval mode.

    Uses the trainer's evaluation dataloader (its batch size, collator and, with several processes, its sharding; the
    features of all processes are gathered). The original view is used, as in evaluation.

    Returns:
        `(features, labels)`: float32 array [N, D] and int64 array [N], without the images that could not be decoded.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    adapter = trainer.adapter
    loader = trainer.get_eval_dataloader(eval_dataset)
    was_training = model.training
    model.eval()
    features, labels = [], []
    captured: list[torch.Tensor] = []

    def capture(hidden: torch.Tensor) -> torch.Tensor:
        captured.append(hidden.detach())
        return hidden

    try:
        for batch in loader:
            batch = trainer.batch_on_device(batch, loader=loader)
            pixels = original_view(batch)
            captured.clear()
            with torch.no_grad(), trainer.compute_loss_context_manager(), adapter.head_input_replaced(capture):
                adapter.logits(model, pixels)
            batch_features = captured[0].float().flatten(1)
            batch_features, batch_labels = trainer.accelerator.gather_for_metrics((batch_features, batch["labels"]))
            features.append(batch_features.cpu().numpy())
            labels.append(batch_labels.cpu().numpy())
    finally:
        model.train(was_training)
    if not features:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    features, labels = np.concatenate(features).astype(np.float32), np.concatenate(labels).astype(np.int64)
    kept = labels >= 0  # images that could not be decoded are skipped (label -100)
    return features[kept], labels[kept]


def feature_space_metrics(features: Any, labels: Any, prefix: str = "") -> dict[str, float]:
    """`{prefix}cohesion` and `{prefix}separability` of `features` [N, D] with class ids `labels` [N]."""
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    results = {}
    for name in ("feature_cohesion", "feature_separability"):
        results.update(load_metric(name).compute(features=features, references=labels))
    return {f"{prefix}{key}": float(value) for key, value in results.items()}


def penultimate_feature_metrics(
    trainer: SynerMixTrainer, eval_dataset: Any = None, prefix: str = "eval_"
) -> dict[str, float]:
    """Cohesion and separability of the penultimate features of the evaluation set (see the module docstring)."""
    features, labels = collect_penultimate_features(trainer, eval_dataset)
    return feature_space_metrics(features, labels, prefix=prefix)
