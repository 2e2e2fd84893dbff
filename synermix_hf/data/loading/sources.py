"""Where the data comes from: image folders, the built-in digits, a Hub id or a local directory.

Each loader returns a `DatasetDict`; every problem of the input is a `ValueError` naming the parameter.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import numpy as np

from ...hub import hub_offline, hub_unreachable_reason, is_hub_id

__all__ = ["check_dir", "digits_arrays", "load_dataset_dict", "load_digits_dataset", "load_image_folders"]


def load_digits_dataset():
    """scikit-learn's digits as a `DatasetDict` with `image` (8x8 grayscale PIL) and `label` (`ClassLabel` "0"-"9").

    The 1,797 images ship inside scikit-learn, so this works offline. Split stratified 80 / 20 with seed 0.
    """
    import datasets
    from PIL import Image

    images, targets = digits_arrays()
    pixels = np.clip(np.round(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    full = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a, mode="L") for a in pixels], "label": targets.tolist()}, features=features
    )
    split = full.train_test_split(test_size=0.2, stratify_by_column="label", seed=0)
    return datasets.DatasetDict(train=split["train"], test=split["test"])


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images `[1797, 8, 8]` (float, 0-16) and targets `[1797]`, as `load_digits` returns them.

    Read from the CSV file scikit-learn ships (`sklearn/datasets/data/digits.csv.gz`, one row per image: 64 pixels,
    then the digit) without importing scikit-learn, which brings SciPy's statistics with it and costs the built-in run
    far more than reading the file. Falls back to `load_digits` where the file is not found.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def check_dir(path: str, parameter: str) -> str:
    """`path` expanded, when it is a directory; else a `ValueError` naming `parameter`."""
    expanded = os.path.expanduser(path)
    if not os.path.isdir(expanded):
        state = "is not a directory" if os.path.exists(expanded) else "does not exist"
        raise ValueError(f"`{parameter}` {path!r} {state}.")
    return expanded


def load_image_folders(train_dir: str | None, validation_dir: str | None, cache_dir: str | None = None):
    """Image folders (`root/<class>/<image>`) as a `DatasetDict` with `train` and/or `validation`.

    Raises:
        ValueError: a folder is missing, or has fewer than two class subfolders.
    """
    data_files = {}
    for split, path, parameter in (("train", train_dir, "train_dir"), ("validation", validation_dir,
                                                                      "validation_dir")):
        if not path:
            continue
        folder = check_dir(path, parameter)
        classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
        if split == "train" and len(classes) < 2:
            raise ValueError(
                f"`{parameter}` {path!r} has {len(classes)} class subfolder{'s' if len(classes) != 1 else ''}"
                f"{' (' + ', '.join(classes) + ')' if classes else ''}; classification needs at least 2 classes, one "
                "subfolder of images each."
            )
        data_files[split] = os.path.join(folder, "**")
    return _load("imagefolder", "`train_dir` / `validation_dir`", data_files=data_files, cache_dir=cache_dir)


def _load_failure(error: Exception, path: str, what: str, valid_names: str) -> ValueError:
    reason = f"{type(error).__name__}: {error}".strip()
    if len(reason) > 400:
        reason = reason[:400] + "..."
    from datasets.exceptions import DatasetNotFoundError

    if isinstance(error, DatasetNotFoundError):
        return ValueError(
            f"{what}: the Hugging Face Hub has no dataset {path!r} you can access ({reason}). Check the id (and "
            f"log in with `hf auth login` for gated or private data). Built-in short names: {valid_names}."
        )
    offline = hub_offline()
    if isinstance(error, ConnectionError) or "couldn't reach" in str(error).lower() or offline:
        hint = " Offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)." if offline else ""
        if "/" not in path and is_hub_id(path):
            hint += f" {path!r} is not one of the built-in short names ({valid_names})."
        return ValueError(
            f"{what}: cannot reach the Hugging Face Hub to load {path!r} ({reason}).{hint} Check the connection, or "
            "load a local copy with `dataset_path` (short names) or `train_dir` / `validation_dir`."
        )
    return ValueError(f"{what}: cannot load {path!r}: {reason}")


def _load(path: str, what: str, valid_names: str = "", **kwargs: Any) -> Any:
    import datasets

    if is_hub_id(path) and path not in ("imagefolder", "csv", "json", "parquet") and not hub_offline():
        # Without network `datasets` retries for about a minute before it gives up: ask once, briefly, first.
        reason = hub_unreachable_reason()
        if reason is not None:
            raise ValueError(
                f"{what}: cannot reach the Hugging Face Hub to load {path!r} ({reason}). Check the connection; to "
                "use a copy already in the cache, set HF_HUB_OFFLINE=1; or load a local copy with `dataset_path` "
                "(short names) or `train_dir` / `validation_dir`."
            )
    load_errors: tuple[type[BaseException], ...] = (OSError, ValueError, datasets.exceptions.DatasetsError)
    for module, name in (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException")):
        try:  # the HTTP library of the installed huggingface_hub, whichever it is
            load_errors += (getattr(__import__(module), name),)
        except (ImportError, AttributeError):
            pass
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        loaded = datasets.load_dataset(path, **kwargs)
    except load_errors as error:
        raise _load_failure(error, path, what, valid_names) from error
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict(train=loaded)
    return loaded


def load_dataset_dict(path: str, parameter: str, what: str, valid_names: str, short_names: list[str],
                      name: str | None = None,
                      cache_dir: str | None = None, token: str | bool | None = None,
                      revision: str | None = None) -> tuple[Any, str, bool]:
    """A Hub id or a local directory that `datasets.load_dataset` reads, as a `DatasetDict`.

    Returns:
        `(dataset_dict, path, is_local)`, `path` expanded for local directories.

    Raises:
        ValueError: the directory does not exist, a `dataset_name` is close to a short name (a typo), or loading
            fails; the message says why and what would work.
    """
    if parameter == "dataset_name" and "/" not in path and is_hub_id(path):
        close = difflib.get_close_matches(path.strip().lower(), short_names, n=1, cutoff=0.8)
        if close:
            raise ValueError(
                f"Unknown `dataset_name` {path!r}. Did you mean {close[0]!r}? Valid short names: {valid_names}; or "
                "give a Hub id (user/name) or a local directory."
            )
    is_local = not is_hub_id(path)
    if is_local:
        path = check_dir(path, parameter)
    return _load(path, what, valid_names, name=name, cache_dir=cache_dir, token=token,
                 revision=revision), path, is_local
