"""Two views of every training image, the collator that batches them, and the labels the sampler needs.

SynerMix trains on two views of each image: the *augmented* view (the training augmentation) feeds the inter-class
term and the *original* view (the evaluation transform, no randomness) feeds the intra-class term. Both are made from
one decode of the image. With `datasets`, attach the transform with `Dataset.with_transform`:

    train = train.with_transform(TwoViewTransform(augment=train_tf, original=eval_tf))
    val = val.with_transform(SingleViewTransform(eval_tf))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..seeding import example_seeds, seeded_in_turn
from .device_datasets import DeviceViews, views_of
from .transforms import as_rgb

__all__ = [
    "SeededAugmentation",
    "SingleViewTransform",
    "SynerMixCollator",
    "TwoViewTransform",
    "dataset_labels",
    "original_view",
]

ImageTransform = Callable[[Image.Image], torch.Tensor]


class _ViewTransform:
    def __init__(self, image_column: str, label_column: str | None):
        self.image_column = image_column
        self.label_column = label_column

    def _images(self, batch: Mapping[str, Sequence[Any]]) -> list[Image.Image]:
        if self.image_column not in batch:
            raise KeyError(
                f"Image column {self.image_column!r} not found; the dataset has columns {sorted(batch)}. Set "
                "image_column."
            )
        return [as_rgb(image) for image in batch[self.image_column]]

    def _labels(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, Sequence[Any]]:
        if self.label_column is None or self.label_column not in batch:
            return {}
        return {"labels": batch[self.label_column]}


class TwoViewTransform(_ViewTransform):
    """Batch transform for `datasets.Dataset.with_transform`: one decode, two views.

    Args:
        augment: Training augmentation (PIL image -> tensor); gives `pixel_values`.
        original: Evaluation transform (PIL image -> tensor, deterministic); gives `original_pixel_values`.
        image_column: Column holding the images.
        label_column: Column holding the labels, returned as `labels`.
    """

    def __init__(
        self,
        augment: ImageTransform,
        original: ImageTransform,
        image_column: str = "image",
        label_column: str | None = "label",
    ):
        super().__init__(image_column, label_column)
        self.augment = augment
        self.original = original

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        images = self._images(batch)
        return {
            "pixel_values": [self.augment(image) for image in images],
            "original_pixel_values": [self.original(image) for image in images],
            **self._labels(batch),
        }


class SingleViewTransform(_ViewTransform):
    """Batch transform giving only `pixel_values` (for evaluation and prediction).

    Args:
        transform: PIL image -> tensor.
        image_column: Column holding the images.
        label_column: Column holding the labels, returned as `labels`.
    """

    def __init__(self, transform: ImageTransform, image_column: str = "image", label_column: str | None = "label"):
        super().__init__(image_column, label_column)
        self.transform = transform

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        return {"pixel_values": [self.transform(image) for image in self._images(batch)], **self._labels(batch)}


class SynerMixCollator:
    """Stack examples into `pixel_values`, `original_pixel_values` (when present) and `labels`.

    Accepts the dicts made by the view transforms (also with `label` instead of `labels`) and `(image, label)` or
    `(original, augmented, label)` tuples like those of torchvision datasets and the reference code. A batch that a
    dataset's `__getitems__` already made (a mapping, as `StoredImageDataset` returns) passes through. The reports
    of examples that stand in for images that could not be decoded (`bad_images`, see `synermix_hf.data.bad_images`) are
    kept, as one list under `bad_images`.
    """

    def __call__(self, examples: Sequence[Any] | Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(examples, Mapping):
            return dict(examples)  # a batch the dataset already made (`StoredImageDataset.__getitems__`)
        if not examples:
            raise ValueError("Cannot collate an empty batch.")
        first = examples[0]
        if isinstance(first, Mapping):
            batch = {"pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples])}
            if "original_pixel_values" in first:
                batch["original_pixel_values"] = torch.stack(
                    [torch.as_tensor(e["original_pixel_values"]) for e in examples]
                )
            label_key = next((k for k in ("labels", "label") if k in first), None)
            if label_key is not None:
                batch["labels"] = torch.as_tensor([int(e[label_key]) for e in examples], dtype=torch.long)
            reports = [report for e in examples for report in e.get("bad_images", ())]
            if reports:  # images that could not be decoded (`synermix_hf.data.bad_images`), for the trainer to report
                batch["bad_images"] = reports
            return batch
        if isinstance(first, (tuple, list)) and len(first) in (2, 3):
            columns = list(zip(*examples))
            batch = {"pixel_values": torch.stack(columns[-2]), "labels": torch.as_tensor(columns[-1])}
            if len(first) == 3:
                batch["original_pixel_values"] = torch.stack(columns[0])
            return batch
        raise TypeError(
            "SynerMixCollator expects dict examples with 'pixel_values' (and optionally 'original_pixel_values', "
            f"'labels') or (image, label) / (original, augmented, label) tuples; got {type(first).__name__}."
        )


class SeededAugmentation(torch.utils.data.Dataset):
    """Make each example's random augmentation a function of `(seed, epoch, position)` alone.

    torchvision's random transforms draw from torch's global generator, so what an example looks like depends on
    everything drawn before it: the number of workers, the number of processes, and where a resumed run restarted.
    This wrapper forks that generator and seeds it per example appearance, so a resumed run and a run on more
    processes augment every example exactly as an uninterrupted single-process run does. The epoch lives in shared
    memory, so `set_epoch` reaches DataLoader workers, persistent ones included.

    Items are asked for either as `(index, position)` pairs, as `PositionedBatchSampler` yields them (the position is
    the appearance's place in the epoch, so an index loaded twice in an epoch is augmented twice, independently), or
    as plain indices, which key the draw by the index (right for samplers that load each index at most once an
    epoch).

    Its `device_views` are its dataset's (`synermix_hf.data.device_datasets.MadeOnDevice`).

    Args:
        dataset: A map-style dataset whose items apply the augmentation (e.g. with `TwoViewTransform`), or one that
            draws a whole batch's augmentation from the seeds (`StoredImageDataset.seeded_batch`).
        seed: Base seed.

    Raises:
        ValueError: `dataset`'s views are made on the device but it cannot draw a batch's augmentation
            (`seeded_batch`), e.g. a `torch.utils.data.Subset` of a `StoredImageDataset`.
    """

    def __init__(self, dataset: Any, seed: int):
        if views_of(dataset) is not None and not hasattr(dataset, "seeded_batch"):
            raise ValueError(
                f"Cannot train on this {type(dataset).__name__}: its views are made on the device (device_views), "
                "from augmentations drawn a batch at a time (seeded_batch), which it does not offer (a "
                "torch.utils.data.Subset of a StoredImageDataset does not). Select the training rows before "
                "prepare_views (datasets.Dataset.select), or make the views in the loader (views_on='loader')."
            )
        self.dataset = dataset
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def device_views(self) -> DeviceViews | None:
        """The views of the wrapped dataset's batches, made on the device (None where the loader makes them)."""
        return views_of(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        items = self.__getitems__([item])
        return items if isinstance(items, Mapping) else items[0]  # a batch of one, as `seeded_batch` makes it

    def __getitems__(self, items: Sequence[int | tuple[int, int]]) -> list[Any] | Mapping[str, Any]:
        pairs = [(int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (int(item), int(item))
                 for item in items]
        seeds = example_seeds(self.seed, self.epoch, [position for _, position in pairs])
        if hasattr(self.dataset, "seeded_batch"):
            # A dataset that draws a whole batch's augmentation from these seeds at once (`StoredImageDataset`).
            return self.dataset.seeded_batch([index for index, _ in pairs], seeds)
        # (Reading a batch's rows in one Arrow access instead of one `dataset[index]` each measured no faster:
        # BENCHMARKS.md, section 5.)
        return [self.dataset[pairs[position][0]] for position in seeded_in_turn(seeds)]


# The columns a batch's `labels` come from, in the order `SynerMixCollator` looks for them.
TRAINED_LABEL_COLUMNS = ("labels", "label", "fine_label")


def trained_label_column(dataset: Any) -> str | None:
    """The column the training batches take their labels from: the view transform's (`TwoViewTransform(...,
    label_column=...)`), else the first of `TRAINED_LABEL_COLUMNS` the dataset has."""
    transform = (dataset.format.get("format_kwargs") or {}).get("transform")
    column = getattr(transform, "label_column", None)
    if column is not None and column in dataset.column_names:
        return column
    return next((c for c in TRAINED_LABEL_COLUMNS if c in dataset.column_names), None)


def dataset_labels(dataset: Any, label_column: str | None = None) -> np.ndarray:
    """The label of every example, in dataset order, read without decoding images where possible.

    Handles `datasets.Dataset` (reads the column, bypassing any transform), `torch.utils.data.Subset`, datasets with a
    `targets`/`labels`/`_labels` attribute (torchvision), and otherwise reads each example's `labels`/`label`.
    """
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a requirement
        datasets = None
    if datasets is not None and isinstance(dataset, datasets.Dataset):
        column = label_column or trained_label_column(dataset)
        if column is None or column not in dataset.column_names:
            raise ValueError(
                f"No label column found for the balanced sampler; the dataset has columns {dataset.column_names}. "
                f"Name one of them a label column ({'/'.join(TRAINED_LABEL_COLUMNS)})."
            )
        values = dataset.with_format(None)[column]
        if any(isinstance(value, str) for value in values[:1]):
            raise ValueError(
                f"The label column {column!r} holds class names ({values[0]!r}, ...); training needs class indices. "
                f"Encode it first: dataset = dataset.class_encode_column({column!r}) (the command line does this)."
            )
        return np.asarray(list(values), dtype=np.int64)
    if isinstance(dataset, SeededAugmentation):
        return dataset_labels(dataset.dataset, label_column)
    if isinstance(dataset, torch.utils.data.Subset):
        return dataset_labels(dataset.dataset, label_column)[np.asarray(dataset.indices)]
    for attribute in ("targets", "labels", "_labels"):
        values = getattr(dataset, attribute, None)
        if values is not None and not callable(values):
            return np.asarray(values, dtype=np.int64)
    labels = []
    for index in range(len(dataset)):
        example = dataset[index]
        if isinstance(example, Mapping):
            key = label_column or next((k for k in ("labels", "label") if k in example), None)
            if key is None:
                raise ValueError(f"Example {index} has no 'labels' or 'label' key (keys: {sorted(example)}).")
            labels.append(int(example[key]))
        else:
            labels.append(int(example[-1]))
    return np.asarray(labels, dtype=np.int64)


def original_view(inputs: Mapping[str, Any]) -> torch.Tensor:
    """The view that evaluation and SynerMix-Intra classify: `original_pixel_values` when the batch has it, else
    `pixel_values` (a batch of evaluation views)."""
    return inputs["original_pixel_values"] if "original_pixel_values" in inputs else inputs["pixel_values"]
