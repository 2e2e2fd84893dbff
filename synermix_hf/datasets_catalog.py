"""The paper's datasets by short name, loaded with `datasets` and split as the reference code splits them.

`load_image_classification_data` turns what the user named (a short name, any Hub dataset id, a local directory,
`--train_dir` / `--validation_dir` image folders, or nothing: the built-in digits) into a training and an evaluation
`datasets.Dataset`, with the image and label columns found and checked. Everything a user can get wrong raises
`UsageError` before any training starts.

Short names and the Hub copies they load (`--dataset_path` loads the same layout from another id or a local
directory, e.g. a parquet export):

| name | Hub id | image / label columns | train / test |
| --- | --- | --- | --- |
| cifar100 | uoft-cs/cifar100 | img / fine_label | train / test |
| food101 | ethz/food101 | image / label | train / validation (the official test images) |
| oxfordiiipet | timm/oxford-iiit-pet | image / label | train (the official trainval) / test |
| caltech256 | ilee0022/Caltech-256 | image / label | all splits pooled, then per class the first 60 / next 20 |
| miniimagenet | timm/mini-imagenet | image / label | train + validation pooled (60,000 images), 80 / 20, seed 100 |
| digits | built in (scikit-learn) | image / label | stratified 80 / 20, seed 0 |

timm/mini-imagenet also has a `test` split: 5,000 images from ImageNet's validation set that are not part of
mini-ImageNet's 60,000, so the paper's protocol (an 80/20 split of the 60,000) does not use it. Caltech-256 has no
official split; the reference code takes the first 60 images of each of the 257 classes (clutter included) for
training and the next 20 for testing.
"""

from __future__ import annotations

import difflib
import io
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UsageError

__all__ = [
    "BUILTIN_DATASET",
    "CATALOG",
    "IMAGE_COLUMN_CANDIDATES",
    "LABEL_COLUMN_CANDIDATES",
    "CatalogEntry",
    "PreparedData",
    "check_images_readable",
    "detect_column",
    "ensure_class_label",
    "load_digits_dataset",
    "load_image_classification_data",
    "split_per_class",
    "stored_file_names",
    "stratified_holdout",
]

IMAGE_COLUMN_CANDIDATES = ("img", "image")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label")
BUILTIN_DATASET = "digits"

# The reference code's seed for the --phase val split (sklearn's StratifiedShuffleSplit).
VAL_SPLIT_SEED = 42


@dataclass(frozen=True)
class CatalogEntry:
    """How one short-named dataset is loaded and split.

    Args:
        name: Short name (`--dataset_name`).
        hub_id: Hugging Face Hub id of the copy loaded by default (None: built in).
        image_column, label_column: Columns of that copy.
        image_size: Input size of the paper's transforms.
        family: Transform family (see `synermix_hf.transforms`).
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
    def is_builtin(self) -> bool:
        return self.entry is not None and self.entry.hub_id is None

    @property
    def num_labels(self) -> int:
        return len(self.class_names)


def valid_names_text() -> str:
    return ", ".join(CATALOG)


# ---- the built-in dataset ----


def load_digits_dataset():
    """scikit-learn's digits as a `DatasetDict` with `image` (8x8 grayscale PIL) and `label` (`ClassLabel` "0"-"9").

    The 1,797 images ship inside scikit-learn, so this works offline. Split stratified 80 / 20 with seed 0.
    """
    import datasets
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    full = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a, mode="L") for a in pixels], "label": bunch.target.tolist()}, features=features
    )
    split = full.train_test_split(test_size=0.2, stratify_by_column="label", seed=0)
    return datasets.DatasetDict(train=split["train"], test=split["test"])


# ---- columns ----


def detect_column(
    features: Any, given: str | None, candidates: Sequence[str], kind: str, flag: str, feature_type: type | None = None
) -> str:
    """Pick a column: the one given, else the single candidate present, else the single column of `feature_type`.

    Raises:
        UsageError: the given column is missing, or none or several columns fit; the message lists the columns.
    """
    columns = list(features)
    if given is not None:
        if given not in columns:
            raise UsageError(
                f"{flag} {given!r} is not a column of the dataset. Its columns are: {', '.join(columns)}."
            )
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
        raise UsageError(
            f"Cannot tell which column holds the {kind}: {', '.join(present)} all could. Name it with {flag}. The "
            f"dataset's columns are: {', '.join(columns)}."
        )
    raise UsageError(
        f"Cannot find the {kind} column (looked for {', '.join(candidates)}). Name it with {flag}. The dataset's "
        f"columns are: {', '.join(columns)}."
    )


def ensure_class_label(dataset_dict: Any, column: str, flag: str = "--label_column_name") -> Any:
    """Make `column` a `ClassLabel` in every split: integer or string columns are class-encoded over all splits.

    Raises:
        UsageError: the column holds something else (floats, lists, images, ...) or looks like an id (almost every
            row has its own value).
    """
    import datasets

    first = next(iter(dataset_dict.values()))
    feature = first.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return dataset_dict
    dtype = getattr(feature, "dtype", None)
    if not isinstance(feature, datasets.Value) or not (dtype == "string" or dtype.startswith(("int", "uint"))):
        raise UsageError(
            f"{flag} {column!r} is not a class label: its type is {_describe_feature(feature)}. Classification needs "
            f"a column of class labels (a ClassLabel, or integers or strings naming classes). The dataset's columns "
            f"are: {', '.join(first.column_names)}."
        )
    values = [v for split in dataset_dict.values() for v in split.with_format(None)[column]]
    distinct = len(set(values))
    if len(values) >= 20 and distinct > len(values) // 2:
        raise UsageError(
            f"{flag} {column!r} is not a class label: it has {distinct} different values in {len(values)} rows, so it "
            f"looks like an id. The dataset's columns are: {', '.join(first.column_names)}."
        )
    return dataset_dict.class_encode_column(column)


def _describe_feature(feature: Any) -> str:
    dtype = getattr(feature, "dtype", None)
    return f"{type(feature).__name__}({dtype})" if dtype else type(feature).__name__


def _ensure_image_column(dataset_dict: Any, column: str, flag: str = "--image_column_name") -> Any:
    import datasets

    first = next(iter(dataset_dict.values()))
    feature = first.features[column]
    if isinstance(feature, datasets.Image):
        return dataset_dict
    if isinstance(feature, datasets.Value) and feature.dtype == "string":  # file paths
        return dataset_dict.cast_column(column, datasets.Image())
    raise UsageError(
        f"{flag} {column!r} does not hold images: its type is {_describe_feature(feature)}. The dataset's columns "
        f"are: {', '.join(first.column_names)}."
    )


# ---- splits ----


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
        UsageError: a class has fewer than 2 examples or the split cannot give every class a place on both sides.
    """
    from sklearn.model_selection import StratifiedShuffleSplit

    if not 0.0 < ratio < 1.0:
        raise UsageError(f"--val_ratio (-vr) must be between 0 and 1, got {ratio}.")
    labels = np.asarray(list(dataset.with_format(None)[label_column]))
    classes, counts = np.unique(labels, return_counts=True)
    n = len(labels)
    n_val = math.ceil(ratio * n)

    def name(label: int) -> str:
        return repr(class_names[label]) if label < len(class_names) else str(label)

    too_few = classes[counts < 2]
    if len(too_few):
        raise UsageError(
            f"--phase val holds out a stratified {ratio:g} of the training set (--val_ratio), which needs at least 2 "
            f"training examples of every class, but class {name(int(too_few[0]))} has "
            f"{int(counts[classes == too_few[0]][0])} ({len(too_few)} of {len(classes)} classes have fewer than 2). "
            "Use --phase test, or a dataset with more examples per class."
        )
    if n_val < len(classes) or n - n_val < len(classes):
        raise UsageError(
            f"--phase val with --val_ratio {ratio:g} splits {n} training examples into {n - n_val} / {n_val}, but a "
            f"stratified split needs at least one example of each of the {len(classes)} classes on both sides. "
            "Change --val_ratio (-vr), or use --phase test."
        )
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=ratio, random_state=seed)
    try:
        rest, held_out = next(splitter.split(np.zeros(n), labels))
    except ValueError as error:
        raise UsageError(f"--phase val cannot split the training set with --val_ratio {ratio:g}: {error}") from error
    return dataset.select(sorted(rest.tolist())), dataset.select(sorted(held_out.tolist()))


# ---- images ----


def check_images_readable(dataset: Any, image_column: str, what: str) -> None:
    """Open every image of `dataset` (headers and structure, without decoding pixels) and name the first bad one.

    Raises:
        UsageError: an image cannot be read; the message names its file (or row).
    """
    import datasets
    from PIL import Image

    raw = dataset.cast_column(image_column, datasets.Image(decode=False)).with_format(None)
    for row, value in enumerate(raw[image_column]):
        if value is None:
            raise UsageError(f"Row {row} of the {what} has no image in column {image_column!r}.")
        path = value.get("path")
        data = value.get("bytes")
        try:
            with Image.open(io.BytesIO(data) if data is not None else path) as image:
                image.verify()
        except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
            where = f"file {path}" if path else f"row {row}"
            raise UsageError(
                f"Cannot read the image in {where} of the {what}: {error}. Remove or replace the file and run again."
            ) from error


# ---- loading ----


def _looks_local(path: str) -> bool:
    return os.path.exists(os.path.expanduser(path)) or path.startswith((".", "/", "~"))


def _load_failure(error: Exception, path: str, what: str, offline: bool) -> UsageError:
    reason = f"{type(error).__name__}: {error}".strip()
    if len(reason) > 400:
        reason = reason[:400] + "..."
    try:
        from datasets.exceptions import DatasetNotFoundError
    except ImportError:  # pragma: no cover
        DatasetNotFoundError = ()  # type: ignore[assignment]
    if isinstance(error, DatasetNotFoundError):
        return UsageError(
            f"{what}: the Hugging Face Hub has no dataset {path!r} you can access ({reason}). Check the id (and "
            f"log in with `hf auth login` for gated or private data). Built-in short names: {valid_names_text()}."
        )
    if isinstance(error, ConnectionError) or "couldn't reach" in str(error).lower() or offline:
        hint = " Offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)." if offline else ""
        if "/" not in path and not _looks_local(path):
            hint += f" {path!r} is not one of the built-in short names ({valid_names_text()})."
        return UsageError(
            f"{what}: cannot reach the Hugging Face Hub to load {path!r} ({reason}).{hint} Check the connection, or "
            "load a local copy with --dataset_path (short names) or --train_dir / --validation_dir."
        )
    return UsageError(f"{what}: cannot load {path!r}: {reason}")


def _hub_offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(v, "").lower() in truthy for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _load(path: str, what: str, **kwargs: Any) -> Any:
    import datasets

    load_errors: tuple[type[BaseException], ...] = (OSError, ValueError, datasets.exceptions.DatasetsError)
    try:
        import httpx

        load_errors += (httpx.HTTPError,)
    except ImportError:  # pragma: no cover
        pass
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        loaded = datasets.load_dataset(path, **kwargs)
    except load_errors as error:
        raise _load_failure(error, path, what, _hub_offline()) from error
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict(train=loaded)
    return loaded


def _check_dir(path: str, flag: str) -> str:
    expanded = os.path.expanduser(path)
    if not os.path.isdir(expanded):
        state = "is not a directory" if os.path.exists(expanded) else "does not exist"
        raise UsageError(f"{flag} {path!r} {state}.")
    return expanded


def _pool(dataset_dict: Any, splits: Sequence[str]) -> Any:
    import datasets

    present = [s for s in splits if s in dataset_dict]
    if not present:
        present = list(dataset_dict)
    parts = [dataset_dict[s] for s in present]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _take(dataset: Any, limit: int | None, seed: int) -> Any:
    if dataset is None or limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


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
    """Load, split and check an image classification dataset as `run_image_classification.py` describes it.

    Sources, in order: `train_dir` / `validation_dir` image folders; nothing (the built-in digits); a short name of
    `CATALOG` (from its Hub copy, or `dataset_path`); any other Hub id or local directory that `datasets.load_dataset`
    reads. The evaluation split is the official test split (short names), else `validation`, else `test`, else a
    random `train_val_split` of the training data. `phase="val"` instead holds out a stratified `val_ratio` of the
    training data and evaluates on it.

    Raises:
        UsageError: for every problem of the input, before anything is trained.
    """
    if phase not in ("test", "val"):
        raise UsageError(f"--phase (-phase) must be 'test' or 'val', got {phase!r}.")
    entry: CatalogEntry | None = None
    is_local = False
    if train_dir or validation_dir:
        if dataset_name is not None:
            raise UsageError("Give either --dataset_name or --train_dir / --validation_dir, not both.")
        data_files = {}
        if train_dir:
            data_files["train"] = os.path.join(_check_dir(train_dir, "--train_dir"), "**")
        if validation_dir:
            data_files["validation"] = os.path.join(_check_dir(validation_dir, "--validation_dir"), "**")
        raw = _load("imagefolder", "--train_dir/--validation_dir", data_files=data_files, cache_dir=cache_dir)
        source = " + ".join(f"{k}: {os.path.dirname(v)}" for k, v in data_files.items())
        is_local = True
    elif dataset_name is None or dataset_name.strip().lower() == BUILTIN_DATASET:
        if dataset_path is not None:
            raise UsageError("--dataset_path needs --dataset_name (one of the short names) to say what it holds.")
        entry = CATALOG[BUILTIN_DATASET]
        raw = load_digits_dataset()
        source = "built-in: scikit-learn's digits"
        is_local = True
    else:
        key = dataset_name.strip().lower()
        entry = CATALOG.get(key)
        if entry is not None:
            path = dataset_path if dataset_path is not None else entry.hub_id
            config = dataset_config_name if dataset_config_name is not None else entry.config
            what = f"--dataset_name {dataset_name}" + (f" --dataset_path {dataset_path}" if dataset_path else "")
        else:
            if dataset_path is not None:
                raise UsageError(
                    f"--dataset_path only applies to the short names ({valid_names_text()}); for "
                    f"--dataset_name {dataset_name!r} put the path or Hub id in --dataset_name itself."
                )
            path, config, what = dataset_name, dataset_config_name, f"--dataset_name {dataset_name}"
            if "/" not in path and not _looks_local(path):
                close = difflib.get_close_matches(key, list(CATALOG), n=1, cutoff=0.8)
                if close:
                    raise UsageError(
                        f"Unknown --dataset_name {dataset_name!r}. Did you mean {close[0]!r}? Valid short names: "
                        f"{valid_names_text()}; or give a Hub id (user/name) or a local directory."
                    )
        if _looks_local(path):
            path = _check_dir(path, "--dataset_path" if dataset_path is not None else "--dataset_name")
            is_local = True
        raw = _load(path, what, name=config, cache_dir=cache_dir, token=token, revision=revision)
        source = f"{entry.name} from {path}" if entry is not None else str(path)

    # Columns, found once on the first split and checked for all.
    first = next(iter(raw.values()))
    import datasets

    def catalog_column(name: str | None) -> str | None:
        return name if name is not None and name in first.features else None

    image_column = detect_column(
        first.features, image_column or catalog_column(entry and entry.image_column),
        IMAGE_COLUMN_CANDIDATES, "images", "--image_column_name", datasets.Image,
    )
    label_column = detect_column(
        first.features, label_column or catalog_column(entry and entry.label_column),
        LABEL_COLUMN_CANDIDATES, "labels", "--label_column_name", datasets.ClassLabel,
    )
    if image_column == label_column:
        raise UsageError(f"The image and label columns are both {image_column!r}; name them with --image_column_name "
                         "and --label_column_name.")
    raw = _ensure_image_column(raw, image_column)
    raw = ensure_class_label(raw, label_column)
    class_names = list(next(iter(raw.values())).features[label_column].names)

    # Splits.
    splits = ", ".join(raw)
    if entry is not None and entry.test_split is not None:
        for needed in (entry.train_split, entry.test_split):
            if needed not in raw:
                raise UsageError(
                    f"{source} has no {needed!r} split (it has: {splits}); --dataset_name {entry.name} needs "
                    f"{entry.train_split!r} and {entry.test_split!r} splits."
                )
        train, evaluation = raw[entry.train_split], raw[entry.test_split]
        eval_description = f"official test split ({entry.test_split!r})"
    elif entry is not None:
        pooled = _pool(raw, entry.pool_splits)
        if entry.protocol == "per_class":
            n_train, n_test = entry.per_class
            file_names = stored_file_names(pooled, image_column)
            train, evaluation = split_per_class(pooled, label_column, n_train, n_test, order=file_names)
            ordered_by = "by file name" if file_names is not None else "in the copy's row order (it keeps no file names)"
            eval_description = (f"per class, images {n_train + 1}-{n_train + n_test} {ordered_by} (first {n_train} "
                                "train)")
        else:
            parts = pooled.train_test_split(test_size=entry.test_fraction, seed=entry.split_seed, shuffle=True)
            train, evaluation = parts["train"], parts["test"]
            eval_description = f"random {entry.test_fraction:.0%} of the pooled data (seed {entry.split_seed})"
    else:
        train = raw.get("train")
        if train is None and len(raw) == 1 and "validation" not in raw and "test" not in raw:
            train = next(iter(raw.values()))
        eval_name = next((s for s in ("validation", "test") if s in raw), None)
        if eval_name is not None:
            evaluation = raw[eval_name]
            eval_description = f"{eval_name!r} split"
        elif train is not None and train_val_split and phase == "test":
            parts = train.train_test_split(test_size=train_val_split, seed=seed)
            train, evaluation = parts["train"], parts["test"]
            eval_description = f"random {train_val_split:g} of the training data (--train_val_split)"
        else:
            evaluation = None
            eval_description = "none"

    if phase == "val":
        if train is None:
            raise UsageError("--phase val holds out part of the training set, but there is no training data.")
        train, evaluation = stratified_holdout(train, label_column, val_ratio, class_names=class_names)
        eval_description = f"stratified {val_ratio:g} of the training set (--phase val)"

    train = _take(train, max_train_samples, seed)
    evaluation = _take(evaluation, max_eval_samples, seed)
    for part, what in ((train, "training set"), (evaluation, "evaluation set")):
        if part is not None and len(part) == 0:
            raise UsageError(f"The {what} of {source} is empty.")
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
