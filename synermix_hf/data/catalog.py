"""The paper's datasets by short name, loaded with `datasets` and split as the reference code splits them.

`load_image_classification_data` turns what the user named (a short name, any Hub dataset id, a local directory,
`--train_dir` / `--validation_dir` image folders, or nothing: the built-in digits) into a training and an evaluation
`datasets.Dataset`, with the image and label columns found and checked. Everything a user can get wrong raises a
`ValueError` naming the parameter, before any training starts. The steps live in `synermix_hf.data.loading`: `sources`
(where the data comes from), `columns`, `splits` and `checks`.

Short names and the Hub copies they load (`--dataset_path` loads the same layout from another id or a local
directory, e.g. a parquet export):

| name | Hub id | image / label columns | train / test |
| --- | --- | --- | --- |
| cifar100 | uoft-cs/cifar100 | img / fine_label | train / test |
| food101 | ethz/food101 | image / label | train / validation (the official test images) |
| oxfordiiipet | timm/oxford-iiit-pet | image / label | train (the official trainval) / test |
| caltech256 | ilee0022/Caltech-256 | image / label | all splits pooled, then per class the first 60 / next 20 by file name |
| miniimagenet | timm/mini-imagenet | image / label | train + validation pooled (60,000 images), 80 / 20, seed 100 |
| digits | built in (scikit-learn) | image / label | stratified 80 / 20, seed 0 |

timm/mini-imagenet also has a `test` split: 5,000 images from ImageNet's validation set that are not part of
mini-ImageNet's 60,000, so the paper's protocol (an 80/20 split of the 60,000) does not use it. Caltech-256 has no
official split; the reference code takes the first 60 images of each of the 257 classes (clutter included) for
training and the next 20 for testing, by file name: a copy that keeps file names is ordered by them, one that keeps none
is taken in its row order (`loading.splits.stored_file_names`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .loading.checks import check_classes, check_images_readable, check_not_empty
from .loading.columns import IMAGE_COLUMN_CANDIDATES, LABEL_COLUMN_CANDIDATES, find_columns
from .loading.sources import load_dataset_dict, load_digits_dataset, load_image_folders
from .loading.splits import split_for_evaluation, take

__all__ = [
    "BUILTIN_DATASET",
    "CATALOG",
    "IMAGE_COLUMN_CANDIDATES",
    "LABEL_COLUMN_CANDIDATES",
    "CatalogEntry",
    "PreparedData",
    "load_digits_dataset",
    "load_image_classification_data",
]

BUILTIN_DATASET = "digits"


@dataclass(frozen=True)
class CatalogEntry:
    """How one short-named dataset is loaded and split.

    Args:
        name: Short name (`--dataset_name`).
        hub_id: Hugging Face Hub id of the copy loaded by default (None: built in).
        image_column, label_column: Columns of that copy.
        image_size: Input size of the paper's transforms.
        family: Transform family (see `synermix_hf.data.transforms`).
        train_split: Split used for training when the copy has an official test split.
        test_split: Official test split, or None when the data is split here.
        pool_splits: Splits pooled before splitting here (those present are used).
        protocol: `"random"` (a `test_fraction` with `split_seed`) or `"per_class"` (`per_class` counts).
        description: One line for logs and docs.
    """

    name: str
    hub_id: str | None
    image_column: str
    label_column: str
    image_size: int
    family: str
    train_split: str = "train"
    test_split: str | None = "test"
    pool_splits: tuple[str, ...] = ("train",)
    protocol: str = "random"
    test_fraction: float = 0.2
    split_seed: int = 100
    per_class: tuple[int, int] = (60, 20)
    config: str | None = None
    description: str = ""


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            "cifar100", "uoft-cs/cifar100", "img", "fine_label", 32, "cifar",
            description="CIFAR-100, 100 classes, 32x32, official train / test",
        ),
        CatalogEntry(
            "food101", "ethz/food101", "image", "label", 224, "imagenet", test_split="validation",
            description="Food-101, 101 classes, official train / test (the Hub's validation split)",
        ),
        CatalogEntry(
            "oxfordiiipet", "timm/oxford-iiit-pet", "image", "label", 224, "imagenet",
            description="Oxford-IIIT Pet, 37 breeds, official trainval / test",
        ),
        CatalogEntry(
            "caltech256", "ilee0022/Caltech-256", "image", "label", 224, "imagenet", test_split=None,
            pool_splits=("train", "validation", "test"), protocol="per_class", per_class=(60, 20),
            description="Caltech-256, 257 classes with clutter, first 60 / next 20 images of each class",
        ),
        CatalogEntry(
            "miniimagenet", "timm/mini-imagenet", "image", "label", 84, "miniimagenet", test_split=None,
            pool_splits=("train", "validation"), protocol="random", test_fraction=0.2, split_seed=100,
            description="mini-ImageNet, 100 classes, 84x84, random 80 / 20 split with seed 100",
        ),
        CatalogEntry(
            BUILTIN_DATASET, None, "image", "label", 8, "digits",
            description="scikit-learn's digits, 1,797 8x8 grayscale images, 10 classes, stratified 80 / 20",
        ),
    )
}


@dataclass
class PreparedData:
    """Training and evaluation data ready for the transforms.

    Attributes:
        train, eval: The splits (None when not available or not asked for).
        image_column, label_column: Column names in both splits; the label column is a `ClassLabel`.
        class_names: Names of the classes, index = label id.
        entry: The catalog entry for short names and the built-in dataset, else None.
        source: Where the data came from, for logs.
        eval_description: What the evaluation split is, for logs.
        is_local: The data came from local files.
    """

    train: Any
    eval: Any
    image_column: str
    label_column: str
    class_names: list[str]
    entry: CatalogEntry | None
    source: str
    eval_description: str
    is_local: bool

    @property
    def num_labels(self) -> int:
        return len(self.class_names)


def valid_names_text() -> str:
    return ", ".join(CATALOG)


def _load_raw(dataset_name, dataset_config_name, dataset_path, train_dir, validation_dir, cache_dir, token, revision):
    """The raw `DatasetDict`, the catalog entry (or None), a description of the source, and whether it is local."""
    if train_dir or validation_dir:
        if dataset_name is not None:
            raise ValueError("Give either `dataset_name` or `train_dir` / `validation_dir`, not both.")
        raw = load_image_folders(train_dir, validation_dir, cache_dir)
        folders = {"train": train_dir, "validation": validation_dir}
        source = " + ".join(f"{split}: {folders[split]}" for split in raw if folders.get(split))
        return raw, None, source, True
    if dataset_name is None or dataset_name.strip().lower() == BUILTIN_DATASET:
        if dataset_path is not None:
            raise ValueError("`dataset_path` needs `dataset_name` (one of the short names) to say what it holds.")
        return load_digits_dataset(), CATALOG[BUILTIN_DATASET], "built-in: scikit-learn's digits", True
    entry = CATALOG.get(dataset_name.strip().lower())
    if entry is None and dataset_path is not None:
        raise ValueError(
            f"`dataset_path` only applies to the short names ({valid_names_text()}); for `dataset_name` "
            f"{dataset_name!r} put the path or Hub id in `dataset_name` itself."
        )
    if entry is not None:
        path = dataset_path if dataset_path is not None else entry.hub_id
        parameter = "dataset_path" if dataset_path is not None else "dataset_name"
        config = dataset_config_name if dataset_config_name is not None else entry.config
    else:
        path, parameter, config = dataset_name, "dataset_name", dataset_config_name
    what = f"`dataset_name` {dataset_name}" + (f" `dataset_path` {dataset_path}" if dataset_path else "")
    raw, path, is_local = load_dataset_dict(path, parameter, what, valid_names_text(), list(CATALOG), name=config,
                                            cache_dir=cache_dir, token=token, revision=revision)
    return raw, entry, f"{entry.name} from {path}" if entry is not None else str(path), is_local


def load_image_classification_data(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    dataset_path: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    phase: str = "test",
    val_ratio: float = 0.1,
    train_val_split: float | None = 0.15,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    check_local_images: bool = True,
) -> PreparedData:
    """Load, split and check an image classification dataset.

    Sources, in order: `train_dir` / `validation_dir` image folders; nothing (the built-in digits); a short name of
    `CATALOG` (from its Hub copy, or `dataset_path`); any other Hub id or local directory that `datasets.load_dataset`
    reads (parquet, CSV or JSON with image paths, ...). The evaluation split is the official test split (short names),
    else `validation`, else `test`, else a random `train_val_split` of the training data. `phase="val"` instead holds
    out a stratified `val_ratio` of the training data and evaluates on it. `max_train_samples` / `max_eval_samples`
    cut the splits after shuffling with `seed`.

    Raises:
        ValueError: for every problem of the input, before anything is trained; the message names the parameter.
    """
    if phase not in ("test", "val"):
        raise ValueError(f"`phase` must be 'test' or 'val', got {phase!r}.")
    raw, entry, source, is_local = _load_raw(dataset_name, dataset_config_name, dataset_path, train_dir,
                                             validation_dir, cache_dir, token, revision)
    defaults = (entry.image_column, entry.label_column) if entry is not None else (None, None)
    raw, image_column, label_column = find_columns(raw, image_column, label_column, defaults)
    class_names = list(next(iter(raw.values())).features[label_column].names)
    train, evaluation, eval_description = split_for_evaluation(
        raw, entry, source, image_column, label_column, class_names, phase=phase, val_ratio=val_ratio,
        train_val_split=train_val_split, seed=seed,
    )
    train, evaluation = take(train, max_train_samples, seed), take(evaluation, max_eval_samples, seed)
    check_not_empty(((train, "training set"), (evaluation, "evaluation set")), source)
    check_classes(train, label_column, class_names, source)
    if is_local and check_local_images:
        for part, what in ((train, "training set"), (evaluation, "evaluation set")):
            if part is not None:
                check_images_readable(part, image_column, what)
    return PreparedData(
        train=train,
        eval=evaluation,
        image_column=image_column,
        label_column=label_column,
        class_names=class_names,
        entry=entry,
        source=source,
        eval_description=eval_description,
        is_local=is_local,
    )
