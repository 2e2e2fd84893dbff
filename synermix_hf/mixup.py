"""The mixing math of SynerMix as pure tensor functions.

Nothing here knows about `transformers.Trainer`; the trainer calls these functions. Two sources of randomness are
used on purpose:

* tensor draws (intra-class weights, permutations) take a `torch.Generator` on the tensors' device, so that they
  are reproducible and never force a host-device synchronisation;
* scalar draws (the MixUp lambda, the CutMix box, the Manifold MixUp point) take a `numpy.random.Generator`, since
  they are needed on the host anyway and `torch` offers no seeded Beta sampler.

`INTER_MIXUPS` is the table of the inter-class mixups (`inter_mixup=`): each entry says where it mixes, how it mixes a
batch and how its loss is scored. The trainer, the arguments' validation and the command line's labels all read it,
so a new variant is one entry there (and its test).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "intra_class_mixup_all_classes",
    "intra_class_loss",
    "sample_mixup_lambda",
    "mixup_batch",
    "cutmix_box",
    "cutmix_batch",
    "mixup_cross_entropy",
    "interpolate_batch",
    "InterMixup",
    "INTER_MIXUPS",
]


def _normalized_class_weights(
    labels: torch.Tensor,
    num_classes: int,
    device: torch.device,
    generator: torch.Generator | None,
    valid: torch.Tensor | None = None,
    draws: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one Uniform(0, 1) weight per row in batch order and normalize it within its class, in fp32.

    With `valid`, the k-th valid row takes the k-th draw and invalid rows weigh 0, so rows of padding between the
    valid ones do not change any weight. With `draws`, row i takes `draws[i]` (padding rows weigh 0 all the same).
    """
    if draws is not None:
        weights = draws.float() if valid is None else draws.float() * valid
    elif valid is None:
        weights = torch.rand(len(labels), generator=generator, device=device)
    else:
        draws = torch.rand(len(labels), generator=generator, device=device)
        weights = draws[(valid.cumsum(0) - 1).clamp_min(0)] * valid
    class_totals = torch.zeros(num_classes, dtype=weights.dtype, device=device).index_add_(0, labels, weights)
    if valid is None:
        return weights / class_totals[labels]
    return weights / class_totals[labels].clamp_min(torch.finfo(weights.dtype).tiny)  # 0, not 0/0, for padding


def _weighted_class_sums(
    features: torch.Tensor, row_class: torch.Tensor, weights: torch.Tensor, num_rows: int
) -> torch.Tensor:
    """Sum `weights * features` per class into `num_rows` rows; accumulates in fp32, returns `features.dtype`."""
    flat = features.reshape(features.shape[0], -1).float() * weights.unsqueeze(1)
    sums = torch.zeros(num_rows, flat.shape[1], dtype=flat.dtype, device=features.device)
    sums.index_add_(0, row_class, flat)
    return sums.to(features.dtype).reshape(num_rows, *features.shape[1:])


def intra_class_mixup_all_classes(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    generator: torch.Generator | None = None,
    valid: torch.Tensor | None = None,
    draws: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthesize one feature per class as a random convex combination of that class's rows, in `num_classes` rows.

    For every class c with members I_c, draws w_i ~ Uniform(0, 1), normalizes w'_i = w_i / sum_{j in I_c} w_j and
    returns s_c = sum_{i in I_c} w'_i h_i in row c. The weights come from a single `torch.rand(len(labels))` in batch
    order, so a seeded generator reproduces the result. Rows of absent classes are zero; a fixed number of rows
    (rather than the classes present) keeps it free of host-device synchronisation.

    Args:
        features: Features of shape `[B, ...]`, any floating dtype (weights are normalized in fp32).
        labels: Integer class labels of shape `[B]`, each in `[0, num_classes)`.
        num_classes: Number of classes of the classifier.
        generator: Optional generator on `features.device` for the weights.
        valid: Optional boolean mask `[B]` of the rows that take part (the others are padding, e.g. of batches of
            several processes gathered to one size). The k-th valid row takes the k-th weight drawn, so the result
            equals that of the valid rows alone.
        draws: Optional Uniform(0, 1) draw of every row `[B]`, taken instead of drawing from `generator`: the rows of
            a micro-batch take the draws that one batch holding them all would give them, wherever they sit in it.

    Returns:
        `(synthesized, present)`: `synthesized` has shape `[num_classes, ...]` (row c belongs to class c) and
        `present` is a boolean mask of shape `[num_classes]`.
    """
    _check_features_and_labels(features, labels)
    if draws is not None and draws.shape != labels.shape:
        raise ValueError(f"draws must have one value per row, {tuple(labels.shape)}; got {tuple(draws.shape)}.")
    weights = _normalized_class_weights(labels, num_classes, features.device, generator, valid, draws)
    # index_fill_ / index_add_ rather than `present[labels] = True`: indexed assignment synchronises on CUDA.
    if valid is None:
        present = torch.zeros(num_classes, dtype=torch.bool, device=features.device).index_fill_(0, labels, True)
    else:
        members = torch.zeros(num_classes, device=features.device).index_add_(0, labels, valid.float())
        present = members > 0
    return _weighted_class_sums(features, labels, weights, num_classes), present


def intra_class_loss(
    logits: torch.Tensor,
    classes: torch.Tensor,
    present: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    step_classes: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over the synthesized rows of the classes present.

    Args:
        logits: Classifier outputs for the synthesized rows, shape `[C, num_classes]`.
        classes: Target class of each row, shape `[C]`.
        present: Optional boolean mask `[C]`; rows where it is False (absent classes) are left out of the mean.
        label_smoothing: As in `torch.nn.functional.cross_entropy`.
        step_classes: When the rows are some of the classes of a batch split by whole classes (a micro-batch of a
            gradient accumulation step), the batch's number of classes: the sum over the rows present is divided by
            it instead of by their own number, so the terms of the micro-batches add up to the batch's mean.
    """
    per_row = F.cross_entropy(logits.float(), classes, reduction="none", label_smoothing=label_smoothing)
    if present is None and step_classes is None:
        return per_row.mean()
    mask = torch.ones_like(per_row) if present is None else present.to(per_row.dtype)
    total = (per_row * mask).sum()
    return total / (mask.sum().clamp_min(1.0) if step_classes is None else float(step_classes))


def sample_mixup_lambda(alpha: float, rng: np.random.Generator | None = None) -> float:
    """Draw the mixing coefficient lambda ~ Beta(alpha, alpha), once per batch."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0 for MixUp/CutMix, got {alpha}.")
    rng = rng if rng is not None else np.random.default_rng()
    return float(rng.beta(alpha, alpha))


def mixup_batch(x: torch.Tensor, lam: float, permutation: torch.Tensor) -> torch.Tensor:
    """Return `lam * x + (1 - lam) * x[permutation]`, mixing along the batch dimension.

    Works for images and for hidden states alike (Manifold MixUp applies it inside the network). `x` is not changed.
    """
    # The same two products and sum, bit for bit (a sum's order does not change its bits), in two batch-sized
    # temporaries instead of four: the permuted copy is scaled and summed into in place.
    return x[permutation].mul_(1.0 - lam).add_(x * lam)


def cutmix_box(
    height: int, width: int, lam: float, rng: np.random.Generator | None = None
) -> tuple[int, int, int, int]:
    """A box of area about `(1 - lam) * height * width` at a uniformly random centre, clipped to the image.

    Returns:
        `(top, bottom, left, right)`, half-open pixel bounds.
    """
    rng = rng if rng is not None else np.random.default_rng()
    cut_ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut_ratio), int(width * cut_ratio)
    centre_y, centre_x = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = max(centre_y - cut_h // 2, 0), min(centre_y + cut_h // 2, height)
    left, right = max(centre_x - cut_w // 2, 0), min(centre_x + cut_w // 2, width)
    return top, bottom, left, right


def cutmix_batch(
    x: torch.Tensor, lam: float, permutation: torch.Tensor, rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, float]:
    """Paste a box of the permuted batch into `x` (images `[B, C, H, W]`).

    Returns:
        `(mixed, lam)`, where `lam` is corrected to the fraction of each image that was kept, so the loss weights
        match the pixels actually mixed.
    """
    height, width = x.shape[-2:]
    top, bottom, left, right = cutmix_box(height, width, lam, rng)
    mixed = x.clone()
    mixed[..., top:bottom, left:right] = x[permutation][..., top:bottom, left:right]
    kept = 1.0 - (bottom - top) * (right - left) / float(height * width)
    return mixed, kept


def mixup_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    permutation: torch.Tensor,
    lam: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """`lam * CE(logits, labels) + (1 - lam) * CE(logits, labels[permutation])`."""
    logits = logits.float()
    loss_a = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    loss_b = F.cross_entropy(logits, labels[permutation], label_smoothing=label_smoothing)
    return loss_a * lam + loss_b * (1.0 - lam)


def interpolate_batch(
    x: torch.Tensor, lam: float, permutation: torch.Tensor, rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, float]:
    """`mixup_batch` in the form of `InterMixup.mix`: `(mixed, lam)`; it draws nothing from `rng`."""
    return mixup_batch(x, lam, permutation), lam


MixFn = Callable[[torch.Tensor, float, torch.Tensor, "np.random.Generator | None"], tuple[torch.Tensor, float]]
ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, float], torch.Tensor]


@dataclass(frozen=True)
class InterMixup:
    """One inter-class mixup of the augmented view: one entry of `INTER_MIXUPS`.

    A training step with it draws lambda ~ Beta(alpha, alpha) (from the step's numpy generator) and a permutation of
    the batch (from its torch generator), in that order; where `mixes` is "hidden", then the mixing point, uniformly
    among the model's Manifold MixUp points (`ModelAdapter.mixing_points`, `"input"` among them). Then `mix` mixes the
    images, or the hidden states entering that point, and the loss is `score(logits, labels, permutation, lam,
    label_smoothing)` with the lambda `mix` returned.

    Attributes:
        name: The value of `inter_mixup` (lower case, `_` between words).
        label: How people name it, for the console, run logs and reports ("MixUp").
        mixes: "none" (plain cross-entropy, no draws), "input" (the images) or "hidden" (the images or the hidden
            states at one of the Manifold MixUp points, which the model's adapter then has to find).
        mix: `(x, lam, permutation, rng) -> (mixed, lam)`: mixes a batch (along dimension 0) with its permutation; the
            returned lambda is the weight of the unpermuted labels in the loss (CutMix's is corrected to the area kept).
            Draws further scalars only from `rng`.
        score: `(logits, labels, permutation, lam, label_smoothing) -> loss`.
    """

    name: str
    label: str
    mixes: Literal["none", "input", "hidden"]
    mix: MixFn | None = None
    score: ScoreFn = mixup_cross_entropy

    def __post_init__(self) -> None:
        if self.mixes not in ("none", "input", "hidden"):
            raise ValueError(f"InterMixup {self.name!r}: mixes must be 'none', 'input' or 'hidden', got {self.mixes!r}.")
        if (self.mix is None) != (self.mixes == "none"):
            raise ValueError(f"InterMixup {self.name!r}: a mix function is needed exactly when it mixes something.")

    @property
    def mixes_batch(self) -> bool:
        """Whether it mixes anything (False: plain cross-entropy of the augmented view)."""
        return self.mixes != "none"

    @property
    def needs_mixing_points(self) -> bool:
        """Whether the model's Manifold MixUp points have to be found (it mixes hidden states)."""
        return self.mixes == "hidden"


INTER_MIXUPS: dict[str, InterMixup] = {
    entry.name: entry
    for entry in (
        InterMixup("none", "none", "none"),
        InterMixup("mixup", "MixUp", "input", interpolate_batch),
        InterMixup("manifold_mixup", "Manifold MixUp", "hidden", interpolate_batch),
        InterMixup("cutmix", "CutMix", "input", cutmix_batch),
    )
}


def _check_features_and_labels(features: torch.Tensor, labels: torch.Tensor) -> None:
    if features.dim() < 1 or labels.dim() != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features must be [B, ...] and labels [B]; got features {tuple(features.shape)} and labels "
            f"{tuple(labels.shape)}."
        )
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}.")
