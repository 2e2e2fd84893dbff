"""Images that pass the load-time check but cannot be decoded: replaced in training, skipped in evaluation, reported
once, and a stop when there are too many.

The load-time check opens each local file's header (`synermix_hf.data.loading.checks`); a truncated JPEG, or a file with
an image header and something else after it, passes it and fails only when its pixels are decoded, which on the
per-image path happens in the loader, at whatever step first reads it. The policy, on both data paths:

* training: the example is replaced by another example of the same class that decodes, the first of an order drawn
  from `(seed, index)` (`replacement_candidates`), so every epoch, process, loader worker and resumed run trains on the
  same replacement, augmented as the bad example would have been (the run stops when no image of its class decodes);
* evaluation and prediction: the example is skipped: a decodable image stands in for it with the label
  `IGNORE_LABEL`, so batches keep their shape (and their alignment across processes) and the metrics leave it out
  and count it (`skipped_images`, e.g. `eval_skipped_images`);
* each bad file is named once in a warning (once per process) and kept in a `BadImageLog`;
* the run stops (`BadImageError`) when more than `max_bad_image_fraction` of a split is bad, or at the first bad image
  with `stop_on_bad_image`.

The per-image path finds bad images as it reads them (`TolerantImages`, in the loader, worker processes included): an
example that stands in for one carries a report under `bad_images`, which `SynerMixCollator` keeps in the batch and
`SynerMixTrainer` hands to its `BadImageLog` in the main process, where the warning, the stop and the listing happen.
The device path decodes every image once before training (`synermix_hf.data.image_store`) and so finds them all up front
(`settle_decode_failures`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .device_datasets import DeviceViews, views_of

__all__ = [
    "DEFAULT_MAX_BAD_IMAGE_FRACTION",
    "IGNORE_LABEL",
    "BadImage",
    "BadImageError",
    "BadImageLog",
    "BadImagePolicy",
    "TolerantImages",
    "bad_image_message",
    "image_problem",
    "replacement_candidates",
    "settle_decode_failures",
    "tolerant_images",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BAD_IMAGE_FRACTION = 0.01
"""Largest share of a split that may fail to decode before the run stops."""

IGNORE_LABEL = -100
"""The label of a skipped evaluation example: cross-entropy's default `ignore_index`, left out by the metrics."""

# How many stand-ins the per-image path tries for one bad example before it gives up: so many bad images in a row
# means broken data (and `max_bad_image_fraction` stops such a run anyway, unless it is raised near 1).
MAX_ATTEMPTS = 64


class BadImageError(ValueError):
    """The run stops on images that cannot be decoded (`stop_on_bad_image`, or more than `max_bad_image_fraction`)."""


@dataclass(frozen=True)
class BadImage:
    """One example whose image cannot be decoded.

    Args:
        split: Where it is, for messages (`training set`, `evaluation set`).
        index: Its row in the dataset.
        source: `file <path>` when the dataset knows the file, else `row <index>`.
        error: Why it cannot be decoded (`OSError: image file is truncated ...`).
        replacement: The row trained on in its place; None where it is skipped (evaluation).
        dataset: Identifies the dataset (its fingerprint), so that reports of several datasets do not mix.
        dataset_size: The number of examples of that dataset, for `max_bad_image_fraction`.
        same_class: The replacement is of the same class (the labels were known).
    """

    split: str
    index: int
    source: str
    error: str
    replacement: int | None
    dataset: str
    dataset_size: int
    same_class: bool = False

    def describe(self) -> str:
        of = " of the same class" if self.same_class else ""
        what = (f"training on row {self.replacement}{of} in its place, in every epoch"
                if self.replacement is not None else "skipped: left out of the metrics and counted in skipped_images")
        return f"cannot decode the image in {self.source} of the {self.split} ({self.error}); {what}"


@dataclass(frozen=True)
class BadImagePolicy:
    """When images that cannot be decoded stop the run.

    Args:
        max_bad_image_fraction: Stop when more than this share of a split's images is bad.
        stop_on_bad_image: Stop at the first bad image instead of replacing or skipping it.
    """

    max_bad_image_fraction: float = DEFAULT_MAX_BAD_IMAGE_FRACTION
    stop_on_bad_image: bool = False

    def __post_init__(self):
        if not 0.0 <= self.max_bad_image_fraction <= 1.0:
            raise ValueError(f"`max_bad_image_fraction` must be between 0 and 1, got {self.max_bad_image_fraction}.")

    def check(self, bad: Sequence[BadImage], complete: bool = False) -> None:
        """Raise `BadImageError` when the bad images of one dataset, `bad`, stop the run.

        Args:
            complete: `bad` is every bad image of the dataset (the device path decodes them all up front), not those
                found so far.
        """
        if not bad:
            return
        first = bad[0]
        if self.stop_on_bad_image:
            instead = ("train on another image of its class in its place" if first.replacement is not None
                       else "skip it")
            if complete and len(bad) > 1:
                what = f"{len(bad)} images of the {first.split}: {_name_some(bad)}"
            else:
                what = f"the image in {first.source} of the {first.split} ({first.error})"
            raise BadImageError(
                f"Cannot decode {what}; `stop_on_bad_image` stops at the first bad image. Remove or replace the "
                f"file, or drop `stop_on_bad_image` to {instead}."
            )
        allowed = self.max_bad_image_fraction * first.dataset_size
        if len(bad) > allowed:
            found = "" if complete else " (found so far)"
            raise BadImageError(
                f"{len(bad)} of the {first.dataset_size} images of the {first.split} cannot be decoded{found}, more "
                f"than `max_bad_image_fraction` {self.max_bad_image_fraction:g} allows (at most {int(allowed)}): "
                f"{_name_some(bad)}. Check the data (an interrupted download or copy?) and remove or replace those "
                "files, or raise `max_bad_image_fraction`."
            )


def _name_some(bad: Sequence[BadImage], limit: int = 5) -> str:
    named = "; ".join(f"{b.source} ({b.error})" for b in bad[:limit])
    return named + (f"; and {len(bad) - limit} more" if len(bad) > limit else "")


class BadImageLog:
    """The bad images one process knows of: each named once in a warning, the policy applied as they come in.

    Args:
        policy: When to stop.
        listeners: Called with each new `BadImage` (e.g. to list it in a run log).
    """

    def __init__(self, policy: BadImagePolicy | None = None, listeners: Iterable[Callable[[BadImage], None]] = ()):
        self.policy = policy or BadImagePolicy()
        self.listeners = list(listeners)
        self.found: dict[tuple[str, int], BadImage] = {}

    def record(self, reports: Iterable[BadImage], warn: bool = True, complete: bool = False) -> None:
        """Add `reports`; warn once for each new image (with `warn`), then stop if the policy says so.

        Raises:
            BadImageError: `stop_on_bad_image`, or more than `max_bad_image_fraction` of a dataset is bad.
        """
        new = []
        for report in reports:
            key = (report.dataset, report.index)
            if key not in self.found:
                self.found[key] = report
                new.append(report)
        # The policy first: an image that stops the run is named in the error, not announced as replaced.
        for dataset in dict.fromkeys(report.dataset for report in new):
            self.policy.check([b for b in self.found.values() if b.dataset == dataset], complete=complete)
        for report in new:
            if warn:
                logger.warning("Bad image: %s.", report.describe())
            for listener in self.listeners:
                listener(report)

    def gather(self) -> None:
        """Add what the other processes of a distributed run found (a collective: every process calls it)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        everyone: list[list[BadImage] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, list(self.found.values()))
        self.record([report for part in everyone for report in part or ()], warn=False)

    def __len__(self) -> int:
        return len(self.found)


def bad_image_message(error: BaseException) -> str:
    """The message of a `BadImageError`, also one that a DataLoader worker raised (torch wraps it in a traceback)."""
    text = str(error)
    if "Original Traceback" in text:
        matches = re.findall(r"BadImageError: (.*)", text)
        if matches:
            return matches[-1].strip()
    return text


def replacement_candidates(index: int, labels: Sequence[int] | None, seed: int, size: int) -> Iterator[int]:
    """The rows that may stand in for row `index`, in the order to try them: a function of `(seed, index)` only.

    The other examples of its class (of the whole dataset when `labels` is None), in an order drawn from a generator
    seeded by `(seed, index)`.
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, int(index)])
    if labels is not None:
        labels = np.asarray(labels)
        others = np.flatnonzero(labels == labels[index])
        others = others[others != index]
    else:
        others = np.delete(np.arange(size), index)
    yield from rng.permutation(others).tolist()


def image_problem(value: Any) -> str | None:
    """Why an undecoded image value (`{"path", "bytes"}` of a `datasets.Image` column) cannot be decoded, or None.

    Decodes it as `datasets` does and converts it to RGB, as the view transforms do.
    """
    import datasets

    if value is None:
        return "no image in this row"
    try:
        image = datasets.Image().decode_example(value)
        image.convert("RGB")
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, zlib.error, ...
        return f"{type(error).__name__}: {error}".strip()
    return None


def _source(value: Any, index: int) -> str:
    path = value.get("path") if isinstance(value, Mapping) else None
    return f"file {path}" if path else f"row {index}"


class TolerantImages(torch.utils.data.Dataset):
    """A `datasets.Dataset` with a view transform whose examples that cannot be decoded are replaced or skipped.

    An example whose image decodes is returned as is. For one that does not (the row's image is decoded again to
    tell a bad file from any other error, which is raised as it is), the first row of `replacement_candidates` that
    decodes stands in for it, with torch's random state as it was, so the stand-in gets the augmentation the bad
    example would have had. The returned example carries the reports (`BadImage`) under `bad_images`; with `skip`
    its label becomes `IGNORE_LABEL`.

    Args:
        dataset: A `datasets.Dataset` whose examples are dicts (e.g. with `TwoViewTransform`).
        image_column: Its `datasets.Image` column.
        split: For messages (`training set`, `evaluation set`).
        labels: The label of every example, so that a replacement is of the same class (without it, any example).
        seed: Seeds the order of the candidates.
        skip: Mark the stand-in with `IGNORE_LABEL` (evaluation) instead of training on it.
    """

    def __init__(self, dataset: Any, image_column: str, split: str, labels: Sequence[int] | None = None,
                 seed: int = 0, skip: bool = False):
        self.dataset = dataset
        self.image_column = image_column
        self.split = split
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.seed = seed
        self.skip = skip
        self.key = str(getattr(dataset, "_fingerprint", None) or id(dataset))
        self._raw = None
        # What this process (or loader worker) found: row -> (source, error), and bad row -> the row standing in.
        self._problems: dict[int, tuple[str, str]] = {}
        self._stand_ins: dict[int, int] = {}

    @property
    def device_views(self) -> DeviceViews | None:
        """The wrapped dataset's (`MadeOnDevice`): None for a `datasets.Dataset`, whose views the loader makes."""
        return views_of(self.dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        index = int(index)
        if index not in self._problems:
            state = torch.random.get_rng_state()
            try:
                return self.dataset[index]
            except Exception:
                if not self._is_bad(index):
                    raise  # the image decodes: the error is not about this file
                torch.random.set_rng_state(state)
        return self._stand_in(index)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        # One read for a whole batch where every image decodes (evaluation); one example at a time otherwise.
        if hasattr(self.dataset, "__getitems__") and not any(int(i) in self._problems for i in indices):
            state = torch.random.get_rng_state()
            try:
                return self.dataset.__getitems__(list(indices))
            except Exception:
                torch.random.set_rng_state(state)
        return [self[index] for index in indices]

    def _is_bad(self, index: int) -> bool:
        """Decode the row's image again, on its own; remember why when it fails."""
        if self._raw is None:
            import datasets

            self._raw = (self.dataset.with_format(None).select_columns([self.image_column])
                         .cast_column(self.image_column, datasets.Image(decode=False)))
        value = self._raw[index][self.image_column]
        problem = image_problem(value)
        if problem is not None:
            self._problems[index] = (_source(value, index), problem)
        return problem is not None

    def _stand_in(self, index: int) -> dict[str, Any]:
        stand_in = self._stand_ins.get(index)
        if stand_in is not None:
            example = self.dataset[stand_in]
        else:
            state = torch.random.get_rng_state()
            tried = 0
            for candidate in replacement_candidates(index, self.labels, self.seed, len(self.dataset)):
                if candidate in self._problems:
                    continue
                if tried == MAX_ATTEMPTS:
                    break
                tried += 1
                try:
                    example = self.dataset[candidate]
                except Exception:
                    if not self._is_bad(candidate):
                        raise
                    torch.random.set_rng_state(state)
                    continue
                stand_in = self._stand_ins[index] = candidate
                break
            if stand_in is None:
                source, error = self._problems[index]
                of = "of its class " if self.labels is not None else ""
                raise BadImageError(
                    f"Cannot decode the image in {source} of the {self.split} ({error}), nor any of the {tried} other "
                    f"images {of}tried in its place. Check the data (an interrupted download or copy?) and remove or "
                    "replace the files that do not open."
                )
        source, error = self._problems[index]
        report = BadImage(self.split, index, source, error, None if self.skip else stand_in, self.key,
                          len(self.dataset), same_class=self.labels is not None)
        example = {**example, "bad_images": [report]}
        if self.skip:
            for key in ("labels", "label"):
                if key in example:
                    example[key] = IGNORE_LABEL
        return example


def tolerant_images(dataset: Any, split: str, labels: Sequence[int] | None = None, seed: int = 0,
                    skip: bool = False) -> Any:
    """`dataset` wrapped in `TolerantImages` when it is a `datasets.Dataset` with one `Image` column, else as is.

    Without `labels`, a training set's labels are read from its label column where `dataset_labels` finds one.
    """
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a requirement
        return dataset
    if not isinstance(dataset, datasets.Dataset):
        return dataset
    columns = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    if len(columns) != 1:
        return dataset
    if labels is None and not skip:
        from .views import dataset_labels

        try:
            labels = dataset_labels(dataset)
        except ValueError:  # no label column it knows: a replacement may then be of any class (with its own label)
            labels = None
    return TolerantImages(dataset, columns[0], split, labels=labels, seed=seed, skip=skip)


def settle_decode_failures(
    failures: Sequence[tuple[int, str, str]],
    labels: Sequence[int],
    split: str,
    seed: int,
    skip: bool,
    dataset: str,
) -> tuple[np.ndarray | None, np.ndarray, list[BadImage]]:
    """The device path's answer to the rows that did not decode (`stored_images_and_failures`).

    Args:
        failures: `(row, source, error)` of each row that did not decode.
        labels: The label of every row.
        split: For messages.
        seed: Seeds the order of the candidates (as on the per-image path, so both replace a row by the same one).
        skip: Evaluation: give the bad rows `IGNORE_LABEL` instead of replacing them.
        dataset: Identifies the dataset in the reports.

    Returns:
        `(rows, labels, reports)`: the image row to read for each example (None: every example reads its own row),
        the label to serve for each example, and one `BadImage` per failure.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not len(failures):
        return None, labels, []
    size = len(labels)
    bad = {int(row) for row, _, _ in failures}
    if skip:
        # A decodable image stands in for each bad one (batches keep their shape), under the label the loss and the
        # metrics leave out; it is read, never counted.
        served = labels.copy()
        served[sorted(bad)] = IGNORE_LABEL
        rows = np.arange(size, dtype=np.int64)
        for row in bad:
            stand_in = next((c for c in replacement_candidates(row, None, seed, size) if c not in bad), None)
            if stand_in is None:
                raise BadImageError(f"No image of the {split} can be decoded. Check the data (an interrupted download "
                                    "or copy?).")
            rows[row] = stand_in
        return rows, served, [BadImage(split, int(row), source, error, None, dataset, size)
                              for row, source, error in failures]
    rows = np.arange(size, dtype=np.int64)
    reports = []
    for row, source, error in failures:
        stand_in = next((c for c in replacement_candidates(int(row), labels, seed, size) if c not in bad), None)
        if stand_in is None:
            raise BadImageError(
                f"Cannot decode the image in {source} of the {split} ({error}), nor any other image of its class. "
                "Check the data (an interrupted download or copy?) and remove or replace the files that do not open."
            )
        rows[int(row)] = stand_in
        reports.append(BadImage(split, int(row), source, error, stand_in, dataset, size, same_class=True))
    return rows, labels[rows], reports
