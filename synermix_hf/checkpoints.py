"""Checkpoints that are complete or absent, continuing from the last complete one, and loading them whole.

This module is the one place where synermix-hf overrides private methods of `transformers.Trainer` (five:
`_save_checkpoint`, `_get_output_dir`, `_push_from_checkpoint`, `_load_from_checkpoint`, `_load_best_model`);
tests/test_checkpoints.py checks their signatures against the installed transformers.

The Trainer writes a checkpoint's files one after another into `checkpoint-N`: a run stopped during a save (Ctrl-C,
SIGKILL, a preempted node) leaves a folder with some files and no `trainer_state.json`, which the next run takes for
the latest checkpoint and fails on; a save that fills the disk fails with a traceback from deep inside `torch.save`
that never says "disk", and leaves the folder behind. Here:

* `StagedCheckpoints` (a `Trainer` mixin) writes each checkpoint into `tmp-checkpoint-N/checkpoint-N`, and once
  every process has written its files, writes `checkpoint_complete.json` (`COMPLETE_MARKER`: every file of the
  checkpoint with its size) and renames the folder to `checkpoint-N`. The rename is the commit point: `checkpoint-N`
  is complete or absent. Older checkpoints are rotated out (`save_total_limit`) only after that.
* A save that fails on any process (a full disk, a quota, a file-size limit, or anything else) fails on every process
  together, without a process left waiting at the next barrier, and the staging folder is removed: the previous
  checkpoints stay as they were. A full disk raises `CheckpointSaveError`, whose message is one line that says so,
  with the free space left and what to do; any other error is raised as it was by the process it happened on (the
  others raise `CheckpointSaveError` naming that process).
* `LegacyWeightNames` (a `Trainer` mixin) loads checkpoints that transformers 5 saved under the legacy weight names
  of some models (ViT among them), which the Trainer's own resume would leave untrained.
* `checkpoint_problem` tells why a folder is not a checkpoint a run can continue from, and `last_complete_checkpoint`
  skips those. `resolve_resume` is the one place that turns a `resume_from_checkpoint` (a path, or True / "last") into
  the checkpoint to continue from, or a `ResumeError` saying why not; `SynerMixTrainer.train` and the command line
  both call it. With a `checkpoint_complete.json`, every file it lists must be there with its size. Without one (a
  checkpoint of the plain Trainer or of an older synermix-hf), `trainer_state.json` must parse, the weights and
  archives must be whole, and the files a resume loads must be there: the model's weights, and the optimizer's and
  the scheduler's state unless the run saved only the model (`save_only_model`). The Trainer itself would fail on a
  checkpoint without weights and, worse, continue silently with a fresh optimizer from one without its state.

transformers staged checkpoints in `tmp-checkpoint-*` folders twice (4.36, 4.48) and took it out twice: every process
wrote into its own randomly named folder or several processes renamed the same folder, which failed on multi-node
jobs with a shared file system. Here the staging folder's name is the same on every process (the step), each process
writes into it, and after the processes agree that all have written, only process 0 completes and renames it; a node
whose file system does not see process 0's folder (`save_on_each_node`) completes and renames its own copy (listing
what that node wrote) after the next agreement, so no two processes ever rename one folder.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickletools
import re
import shutil
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers.trainer import FSDP_MODEL_NAME, OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, SCHEDULER_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import (
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

__all__ = [
    "COMPLETE_MARKER",
    "STAGING_PREFIX",
    "CheckpointSaveError",
    "LegacyWeightNames",
    "ResumeError",
    "ResumePlan",
    "StagedCheckpoints",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "remove_incomplete_checkpoints",
    "resolve_resume",
]

logger = logging.getLogger(__name__)

STAGING_PREFIX = f"tmp-{PREFIX_CHECKPOINT_DIR}-"  # not matched by `checkpoint-*`: never resumed from nor rotated
COMPLETE_MARKER = "checkpoint_complete.json"
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME,
                 ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME)  # fmt: skip


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be saved, most often because its disk is full; nothing of it was kept.

    Raised on every process of the run together. The message is one line: the checkpoint, the cause, the free space
    left on its disk and what to do. The checkpoints saved before are untouched, and the run continues from the last
    complete one when it is started again.

    Attributes:
        checkpoint: The folder the checkpoint was to become (`.../checkpoint-N`).
        free_bytes: Free space on that folder's disk after the failed save, None when unknown.
        last_complete: The last complete checkpoint beside it (where a run started again continues), or None.
    """

    def __init__(self, message: str, checkpoint: str | None = None, free_bytes: int | None = None,
                 last_complete: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.checkpoint, self.free_bytes, self.last_complete = checkpoint, free_bytes, last_complete

    def __reduce__(self) -> tuple[Any, ...]:  # kept whole across processes (pickle passes only `args` otherwise)
        return type(self), (str(self), self.checkpoint, self.free_bytes, self.last_complete)


# What a failed write says when the disk (or the quota, or a file-size limit) is full, by errno.
_DISK_FULL_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "a file grew past the largest size the file system or a limit (ulimit -f) allows",
    **({errno.EDQUOT: "the disk quota is used up"} if hasattr(errno, "EDQUOT") else {}),
}
# torch.save's zip writer turns a failed write into a RuntimeError without the errno.
_TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "iostream error")
_TORCH_WRITE_CAUSE = "writing a file failed, as it does when the disk is full"
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # safetensors' errors are Rust's `io::Error`s, errno in the text
# Outcome codes the processes exchange after a save: 0 saved, one per disk-full cause, then any other failure.
_CAUSE_CODES = [*_DISK_FULL_CAUSES.values(), _TORCH_WRITE_CAUSE]
_OTHER_FAILURE = len(_CAUSE_CODES) + 1


def _disk_full_cause(error: BaseException) -> str | None:
    """Why `error` (or an exception it was raised from or during) is a full disk, in a few words; None when it is not.

    Recognised anywhere in the chain: an `OSError` with errno ENOSPC, EDQUOT or EFBIG; a safetensors error that quotes
    one of them (`(os error 28)`); torch.save's zip writer failing to write (`unexpected pos`, `file write failed`,
    `iostream error`).
    """
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_CAUSES:
            return _DISK_FULL_CAUSES[current.errno]
        text = str(current)
        rust = _RUST_OS_ERROR.search(text)
        if rust and int(rust.group(1)) in _DISK_FULL_CAUSES:
            return _DISK_FULL_CAUSES[int(rust.group(1))]
        if isinstance(current, RuntimeError) and any(marker in text for marker in _TORCH_WRITE_FAILURES):
            return _TORCH_WRITE_CAUSE
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        grouped = getattr(current, "exceptions", None)  # an ExceptionGroup (Python >= 3.11)
        if isinstance(grouped, (list, tuple)):
            pending.extend(e for e in grouped if isinstance(e, BaseException))
    return None


def _free_bytes(path: str) -> int | None:
    """Free space on the disk of `path`, or of its nearest existing parent folder; None when it cannot be told."""
    folder = os.path.abspath(path)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _size_text(size: int) -> str:
    value, unit = float(size), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def _save_error(checkpoint: str, cause: str | None, failed_process: int | None) -> CheckpointSaveError:
    """The one-line `CheckpointSaveError` for a failed save of `checkpoint`.

    Args:
        checkpoint: The `checkpoint-N` folder the save was to create.
        cause: What filled up (`_disk_full_cause`), or None when the failure was something else.
        failed_process: The process that failed when it was another one than this, else None.
    """
    free = _free_bytes(checkpoint)
    last, _ = last_complete_checkpoint(os.path.dirname(checkpoint))
    again = (f"run the same command again: it continues from {os.path.basename(last)}, the last complete checkpoint"
             if last else "run the same command again: it starts from the beginning, as no checkpoint is complete")
    where = f" on process {failed_process}" if failed_process is not None else ""
    if cause is None:  # only another process reports this: its own error says what happened
        message = (f"Could not save checkpoint {checkpoint}: saving it failed{where} (its error says why); nothing "
                   f"of it was kept. Once that is fixed, {again}.")
    else:
        space = f" ({_size_text(free)} free on its disk)" if free is not None else ""
        message = (f"Could not save checkpoint {checkpoint}{where}: {cause}{space}; nothing of it was kept. Free "
                   "some space, or keep fewer checkpoints (--save_total_limit) or choose another --output_dir, then "
                   f"{again}.")
    return CheckpointSaveError(message, checkpoint, free, last)


def checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a complete checkpoint, in a few words; None when a run can continue from it.

    Complete means: a `trainer_state.json` that parses (the Trainer writes it after every other file); with a
    `checkpoint_complete.json` (written last, by `StagedCheckpoints`), every file it lists there with its size;
    every `.safetensors` file and every `torch.save` archive (`optimizer.pt`, `scheduler.pt`, `rng_state*.pth`, ...)
    whole; and, without `checkpoint_complete.json`, the files a resume loads (`_missing_resume_file`). Only the files'
    sizes, headers and directories are read, not the weights.
    """
    if not os.path.isdir(path):
        return "it is not a directory"
    try:
        names = os.listdir(path)
        state_path = os.path.join(path, TRAINER_STATE_NAME)
        if TRAINER_STATE_NAME not in names:
            return f"it has no {TRAINER_STATE_NAME} (its save was interrupted)"
        try:
            with open(state_path, encoding="utf-8") as handle:
                json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"its {TRAINER_STATE_NAME} is cut short"
        if COMPLETE_MARKER in names:
            problem = _listed_file_problem(path)
            if problem is not None:
                return problem
        for name in sorted(names):
            file = os.path.join(path, name)
            if name.endswith(".safetensors") and not _safetensors_is_whole(file):
                return f"{name} is cut short"
            if name.endswith((".pt", ".pth", ".bin")) and os.path.isfile(file) and not _torch_archive_is_whole(file):
                return f"{name} is cut short"
        if COMPLETE_MARKER not in names:
            return _missing_resume_file(path, names)
    except FileNotFoundError:
        return "it disappeared while it was read"
    return None


def _listed_files(folder: str) -> dict[str, int]:
    """Every file under `folder` (the Trainer may write subfolders), by its `/`-separated relative path, with its size;
    the marker itself left out."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if relative != COMPLETE_MARKER:
                files[relative] = os.path.getsize(os.path.join(root, name))
    return dict(sorted(files.items()))


def _write_complete_marker(folder: str) -> None:
    """Write `checkpoint_complete.json` into a staged checkpoint whose files are all written.

    It needs no atomic write: the checkpoint becomes `checkpoint-N` only by the rename after it, and a marker cut short
    before that goes with its staging folder.
    """
    record = {"format": 1, "files": _listed_files(folder)}
    with open(os.path.join(folder, COMPLETE_MARKER), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)


def _listed_file_problem(path: str) -> str | None:
    """The first file `checkpoint_complete.json` lists that is not there with the size it was saved with."""
    try:
        with open(os.path.join(path, COMPLETE_MARKER), encoding="utf-8") as handle:
            files = json.load(handle)["files"]
        listed = [(str(name), int(size)) for name, size in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError):  # ValueError covers JSON and Unicode decoding
        return f"its {COMPLETE_MARKER} is unreadable"
    for name, size in sorted(listed):
        file = os.path.join(path, *name.split("/"))
        if not os.path.isfile(file):
            return f"{name} is missing ({COMPLETE_MARKER} lists it)"
        actual = os.path.getsize(file)
        if actual < size:
            return f"{name} is cut short ({actual} of its {size} bytes)"
        if actual != size:
            return f"{name} has changed since it was saved ({actual} bytes, not {size})"
    return None


def _missing_resume_file(path: str, names: list[str]) -> str | None:
    """For a checkpoint without `checkpoint_complete.json`: the file a resume loads that it lacks, in a few words.

    The weights in any form `Trainer._load_from_checkpoint` accepts (a single file, an index with all its shards,
    adapters, an FSDP or a DeepSpeed folder); then, unless the run saved only the model, the optimizer's state and the
    scheduler's, which the Trainer loads only when both are there and otherwise replaces by fresh ones without a word.
    """
    folders = {name for name in names if os.path.isdir(os.path.join(path, name))}
    files = set(names) - folders
    deepspeed = any(name.startswith("global_step") for name in folders)  # DeepSpeed's own folder, optimizer inside
    fsdp = f"{FSDP_MODEL_NAME}.bin" in files or any(FSDP_MODEL_NAME in name for name in folders)
    adapters = any(os.path.isfile(os.path.join(path, folder, adapter))
                   for folder in folders for adapter in (ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME))  # fmt: skip
    if not (files.intersection(_WEIGHT_FILES) or deepspeed or fsdp or adapters):
        return f"it has no model weights ({SAFE_WEIGHTS_NAME} or another weights file)"
    for single, index in ((SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME), (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)):
        if index in files and single not in files:
            try:
                with open(os.path.join(path, index), encoding="utf-8") as handle:
                    shards = sorted(set(json.load(handle)["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                return f"its {index} is unreadable"
            missing = [shard for shard in shards if not os.path.isfile(os.path.join(path, shard))]
            if missing:
                return f"{missing[0]} is missing ({index} lists it)"
    if deepspeed or _saved_only_the_model(path, files):
        return None
    optimizer = (OPTIMIZER_NAME in files or OPTIMIZER_NAME_BIN in files
                 or any(name.startswith(f"{OPTIMIZER_NAME}_") or name.endswith(f"-{OPTIMIZER_NAME}") for name in files)
                 or any(OPTIMIZER_NAME_BIN.split(".")[0] in name for name in folders))  # fmt: skip
    if not optimizer:
        return f"it has no {OPTIMIZER_NAME} (the optimizer's state)"
    if SCHEDULER_NAME not in files:
        return f"it has no {SCHEDULER_NAME} (the learning rate schedule's state)"
    return None


def _saved_only_the_model(path: str, files: set[str]) -> bool:
    """Whether the run that saved the checkpoint had `save_only_model` (no optimizer, scheduler or RNG state saved).

    Read from its `training_args.bin`; when that cannot be read, a checkpoint with neither optimizer, scheduler nor
    RNG state is taken for one.
    """
    saved = _pickled_flag(os.path.join(path, TRAINING_ARGS_NAME), "save_only_model")
    if saved is not None:
        return saved
    return not any(name.startswith(("optimizer", "rng_state")) or name == SCHEDULER_NAME for name in files)


def _pickled_flag(path: str, name: str) -> bool | None:
    """The boolean field `name` of the object `torch.save` wrote to `path` (the `TrainingArguments`), None if unknown.

    The pickle's opcodes are read, never run: loading it would import and execute whatever the file names.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [entry for entry in archive.namelist() if entry.endswith("/data.pkl") or entry == "data.pkl"]
            if not pickles:
                return None
            data = archive.read(pickles[0])
        after_key = False
        for opcode, argument, _ in pickletools.genops(data):
            if after_key and opcode.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                continue  # the key's memo entry comes between the key and its value
            if after_key and opcode.name in ("NEWTRUE", "NEWFALSE"):
                return opcode.name == "NEWTRUE"
            after_key = argument == name and "UNICODE" in opcode.name
    except (OSError, ValueError, zipfile.BadZipFile, KeyError):
        return None
    return None


def _safetensors_is_whole(path: str) -> bool:
    """A safetensors file is an 8-byte header length, a JSON header and the tensors' bytes, whose end it states."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return False
            (header_size,) = struct.unpack("<Q", prefix)
            if 8 + header_size > size:
                return False
            header = json.loads(handle.read(header_size))
    except (OSError, ValueError):
        return False
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    return size == 8 + header_size + end


def _torch_archive_is_whole(path: str) -> bool:
    """`torch.save` writes a zip archive, whose directory comes last: a file cut short has none."""
    try:
        with open(path, "rb") as handle:
            starts_as_archive = handle.read(4) == b"PK\x03\x04"
        if not starts_as_archive:
            # The legacy pickle format (`_use_new_zipfile_serialization=False`) has no directory to check.
            return os.path.getsize(path) > 0
        with zipfile.ZipFile(path) as archive:  # fails without the directory at the end
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _checkpoints_by_step(folder: str) -> list[tuple[int, str]]:
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = _CHECKPOINT_NAME.match(name)
        if match and os.path.isdir(os.path.join(folder, name)):
            found.append((int(match.group(1)), os.path.join(folder, name)))
    return sorted(found)


def last_complete_checkpoint(folder: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The complete `checkpoint-N` of `folder` with the highest N, and the incomplete ones above it.

    Returns:
        `(checkpoint or None, skipped)`, `skipped` a list of `(path, why)` for every newer incomplete checkpoint,
        newest first.
    """
    skipped = []
    for _, path in reversed(_checkpoints_by_step(folder)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def remove_incomplete_checkpoints(folder: str) -> list[tuple[str, str]]:
    """Remove the incomplete `checkpoint-N` folders and the leftover staging folders of `folder`.

    Call it only when no save is in progress in `folder` (before training continues). Returns `(path, why)` of every
    incomplete checkpoint removed (staging folders are removed without a word: they never were checkpoints).
    """
    removed = []
    for _, path in _checkpoints_by_step(folder):
        problem = checkpoint_problem(path)
        if problem is not None:
            shutil.rmtree(path, ignore_errors=True)
            removed.append((path, problem))
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(STAGING_PREFIX):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    return removed


_LAST = ("true", "last")  # `resume_from_checkpoint` values (any case) that mean the last complete checkpoint


@dataclass(frozen=True)
class ResumePlan:
    """Where a run continues from (`resolve_resume`).

    Attributes:
        checkpoint: The complete checkpoint to continue from; None when there is none and none was required.
        skipped: `(path, why)` of every newer incomplete checkpoint passed over to find it, newest first.
        auto: Whether `checkpoint` was found as the last complete one of `output_dir` rather than given as a path.
        in_output_dir: Whether `checkpoint` is in `output_dir`, the folder the run goes on saving into: then the
            incomplete checkpoints and staging folders left there are to go (`remove_incomplete_checkpoints`) before
            it does.
    """

    checkpoint: str | None
    skipped: tuple[tuple[str, str], ...] = ()
    auto: bool = False
    in_output_dir: bool = False


class ResumeError(ValueError):
    """`resume_from_checkpoint` names no checkpoint a run can continue from; the message says why, and where the run
    could continue instead.

    Attributes:
        given: What was asked for: a path, or True / "last".
        kind: `"none complete"` (the last complete checkpoint was asked for and `output_dir` holds none), `"missing"`
            (the path is not a directory), `"not a checkpoint"` (a directory without `trainer_state.json` that is not
            named `checkpoint-N`) or `"incomplete"`.
        checkpoint: The path judged; None for `"none complete"`.
        problem: Why it is not a complete checkpoint (`checkpoint_problem`); None for `"none complete"`.
        latest: The latest complete checkpoint next to the path, or None.
        skipped: For `"none complete"`: `(path, why)` of every incomplete checkpoint of `output_dir`, newest first.
    """

    def __init__(self, message: str, given: str | bool | None = None, kind: str = "incomplete",
                 checkpoint: str | None = None, problem: str | None = None, latest: str | None = None,
                 skipped: tuple[tuple[str, str], ...] = ()) -> None:  # fmt: skip
        super().__init__(message)
        self.given, self.kind, self.checkpoint, self.problem = given, kind, checkpoint, problem
        self.latest, self.skipped = latest, skipped


def resolve_resume(output_dir: str, resume_from_checkpoint: str | bool | None, *, required: bool = True) -> ResumePlan:
    """The checkpoint a run saving into `output_dir` continues from: the one place that resolves "last" and judges a
    checkpoint given by path (`checkpoint_problem`). Nothing is removed here (`remove_incomplete_checkpoints`).

    Args:
        output_dir: The folder the run saves its checkpoints into.
        resume_from_checkpoint: True, or `"last"` / `"true"` (any case): the last complete `checkpoint-N` of
            `output_dir`, passing over newer incomplete ones. A path: that checkpoint, which must be complete. None or
            False: no checkpoint (an empty plan).
        required: When False, an `output_dir` without a complete checkpoint gives a plan without one (the run starts
            from the beginning) instead of an error.

    Returns:
        The `ResumePlan`: the checkpoint, the incomplete ones skipped, whether it was found as the last one and
        whether it is in `output_dir`.

    Raises:
        ResumeError: (a `ValueError`) `output_dir` holds no complete checkpoint, or the path is not one: the message
            names what is missing and the latest complete checkpoint next to it.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return ResumePlan(None)
    auto = resume_from_checkpoint is True or str(resume_from_checkpoint).strip().lower() in _LAST
    if auto:
        checkpoint, skipped = last_complete_checkpoint(output_dir)
        if checkpoint is None and required:
            passed = "; ".join(f"{os.path.basename(path)} is skipped: {why}" for path, why in skipped)
            raise ResumeError(
                f"`resume_from_checkpoint`: `output_dir` {output_dir} holds no complete checkpoint"
                + (f" ({passed})." if passed else "."),
                given=resume_from_checkpoint, kind="none complete", skipped=tuple(skipped))
    else:
        checkpoint, skipped = str(resume_from_checkpoint), []
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            latest, _ = last_complete_checkpoint(os.path.dirname(os.path.normpath(checkpoint)) or ".")
            if not os.path.isdir(checkpoint):
                kind = "missing"
            elif not (os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_NAME))
                      or _CHECKPOINT_NAME.match(os.path.basename(os.path.normpath(checkpoint)))):
                kind = "not a checkpoint"
            else:
                kind = "incomplete"
            hint = f" The latest complete checkpoint next to it is {latest}." if latest else ""
            raise ResumeError(f"`resume_from_checkpoint` {checkpoint} is not a complete checkpoint: {problem}.{hint}",
                              given=resume_from_checkpoint, kind=kind, checkpoint=checkpoint, problem=problem,
                              latest=latest)
    in_output_dir = (checkpoint is not None
                     and os.path.dirname(os.path.abspath(checkpoint)) == os.path.abspath(output_dir))
    return ResumePlan(checkpoint, tuple(skipped), auto, in_output_dir)


class StagedCheckpoints:
    """`transformers.Trainer` mixin: checkpoints are complete or absent, and a run continues from a complete one.

    * Saving: each checkpoint is written into a staging folder (`tmp-checkpoint-N/`); when all processes have written
      their files it gets its `checkpoint_complete.json` and is renamed to `checkpoint-N`; `save_total_limit` rotates
      older checkpoints out only then.
    * A save that fails on one process fails on every process at once (they agree where the Trainer would wait at a
      barrier), and the staging folder is removed. A full disk (or quota, or file-size limit) raises
      `CheckpointSaveError` on every process, with a one-line message; any other error is raised as it was by the
      process it happened on, and as `CheckpointSaveError` naming that process by the others.
    * `checkpoint_to_resume`, which `SynerMixTrainer.train` calls: `resume_from_checkpoint=True` (or `"last"`)
      continues from the last *complete* checkpoint, naming each newer incomplete one it skips; a path to an
      incomplete checkpoint is refused with a `ResumeError` (a `ValueError`) saying why (both: `resolve_resume`).
      When a run continues from a checkpoint of its own `output_dir`, the incomplete checkpoints and staging folders
      left there by the interrupted run are removed first: they are not results, and a stale `checkpoint-N` would
      otherwise be rotated in place of a complete one.

    The private `Trainer` methods it overrides are `_save_checkpoint`, `_get_output_dir` and `_push_from_checkpoint`
    (tests/test_checkpoints.py checks their signatures against the installed transformers); during a save, the public
    `save_model` holds back its failure until every process has reached the end of the Trainer's save.
    """

    _staging_dir: str | None = None
    _push_deferred: bool = False
    _weights_save_failure: Exception | None = None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`; while a checkpoint is saved, a failure is held back for `_settle_save`."""
        if self._staging_dir is None or not _internal_call:
            super().save_model(output_dir, _internal_call)
            return
        try:
            super().save_model(output_dir, _internal_call)
        except Exception as failure:  # settled once every process has written (`_settle_save`)
            # The Trainer waits for every process right after the weights when it tracks the best checkpoint: a
            # process that failed to write them must reach that barrier too, or the others would wait there forever.
            self._weights_save_failure = failure

    def checkpoint_to_resume(self, resume_from_checkpoint: str | bool) -> str:
        """The complete checkpoint `train(resume_from_checkpoint=...)` continues from (`resolve_resume`), after
        naming the incomplete ones skipped and, for a checkpoint of `output_dir`, removing them.

        Raises:
            ResumeError: `resume_from_checkpoint` names no complete checkpoint.
        """
        output_dir = self.args.output_dir
        plan = resolve_resume(output_dir, resume_from_checkpoint)
        for path, problem in plan.skipped:
            logger.warning("Skipping %s: %s. Continuing from %s.", path, problem, plan.checkpoint)
        if plan.in_output_dir and self.args.should_save:
            for path, problem in remove_incomplete_checkpoints(output_dir):
                logger.info("Removed %s: %s.", path, problem)
        self.accelerator.wait_for_everyone()  # no process reads the folder while it is tidied
        return plan.checkpoint

    # ---- transformers private API (signatures checked by tests/test_checkpoints.py) ----

    def _get_output_dir(self, trial: Any) -> str:
        # While a checkpoint is saved, the Trainer's `run_dir` is the staging folder: it writes
        # `tmp-checkpoint-N/checkpoint-N`, and its own rotation finds nothing else there to delete.
        return self._staging_dir if self._staging_dir is not None else super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._staging_dir is not None:
            self._push_deferred = True  # pushed from `checkpoint-N` once it is renamed: the upload reads the files
            return
        super()._push_from_checkpoint(checkpoint_folder)

    def _save_checkpoint(self, model: Any, trial: Any, *args: Any, **kwargs: Any) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, f"{STAGING_PREFIX}{self.state.global_step}")
        staged, final = os.path.join(staging, name), os.path.join(run_dir, name)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left by a save of this step that was interrupted
        self.accelerator.wait_for_everyone()  # no process writes into the staging folder before it is emptied
        self._staging_dir, self._push_deferred, self._weights_save_failure = staging, False, None
        failure = None
        try:
            super()._save_checkpoint(model, trial, *args, **kwargs)
        except Exception as raised:  # settled below, once every process is done writing
            failure = raised
        finally:
            self._staging_dir = None
        # The first failure counts: what the Trainer wrote after it into a full disk failed the same way.
        failure, self._weights_save_failure = self._weights_save_failure or failure, None
        if self.state.best_model_checkpoint == staged:
            self.state.best_model_checkpoint = final
        self._settle_save(failure, staging, final)  # every process has written its files

        failure = self._publish_or_failure(staged, final, run_dir) if self.args.process_index == 0 else None
        self._settle_save(failure, staging, final)
        failure = None
        if self.args.should_save and self.args.process_index != 0 and os.path.isdir(staged):
            # A node whose file system does not see process 0's folder completes and renames its own copy.
            failure = self._publish_or_failure(staged, final, run_dir)
        elif os.path.isdir(staging) and self.args.local_process_index == 0:
            shutil.rmtree(staging, ignore_errors=True)  # another node's files (RNG states) of a checkpoint kept there
        self._settle_save(failure, staging, final)
        if self._push_deferred:
            self._push_deferred = False
            super()._push_from_checkpoint(final)

    def _settle_save(self, failure: Exception | None, staging: str, final: str) -> None:
        """Where the processes would wait for each other during a save, they also tell each other how it went.

        A process that raised alone would leave the others waiting at the next barrier forever; here, when any process
        failed, every process stops: the staging folder goes (all are done writing into it), and each raises, the
        process that failed its own error (`CheckpointSaveError` from it when the disk was full), the others a
        `CheckpointSaveError` naming that process.
        """
        cause = _disk_full_cause(failure) if failure is not None else None
        code = 0 if failure is None else (_CAUSE_CODES.index(cause) + 1 if cause is not None else _OTHER_FAILURE)
        outcome = torch.tensor([[code, self.args.process_index]], device=self.accelerator.device)
        outcomes = self.accelerator.gather(outcome).tolist()  # the same on every process: [[code, process], ...]
        failed = sorted((c == _OTHER_FAILURE, process, c) for c, process in outcomes if c != 0)
        if not failed:
            return
        if self.args.should_save or self.args.local_process_index == 0:
            shutil.rmtree(staging, ignore_errors=True)
        if failure is not None and cause is None:
            raise failure
        if failure is not None:
            raise _save_error(final, cause, None) from failure
        _, process, c = failed[0]  # a full disk first: it says what to do
        raise _save_error(final, _CAUSE_CODES[c - 1] if c != _OTHER_FAILURE else None, process)

    def _publish_or_failure(self, staged: str, final: str, run_dir: str) -> Exception | None:
        try:
            self._publish(staged, final, run_dir)
        except Exception as failure:  # raised by `_settle_save` on every process together
            return failure
        return None

    def _publish(self, staged: str, final: str, run_dir: str) -> None:
        """Complete the staged checkpoint and rename it into place (the commit point), then rotate older ones out."""
        if self.args.should_save:  # the Trainer wrote the state before the best checkpoint's path was corrected
            self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
        _write_complete_marker(staged)  # after every process wrote its files, and after the state above
        staging = os.path.dirname(staged)
        replaced = os.path.join(staging, "replaced")
        if os.path.isdir(final):  # the same step saved again (or a stale folder): swap, never leave neither
            os.rename(final, replaced)
        try:
            os.rename(staged, final)
        except OSError:
            if os.path.isdir(replaced) and not os.path.exists(final):
                os.rename(replaced, final)
            raise
        shutil.rmtree(staging, ignore_errors=True)
        if self.args.should_save:
            self._rotate_checkpoints_in(run_dir)

    def _rotate_checkpoints_in(self, run_dir: str) -> None:
        try:  # transformers >= 5.2 has it as a function
            from transformers.trainer_utils import rotate_checkpoints
        except ImportError:
            self._rotate_checkpoints(use_mtime=True, output_dir=run_dir)
            return
        rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)


class LegacyWeightNames:
    """`transformers.Trainer` mixin: resume and `load_best_model_at_end` restore checkpoints saved under other weight
    names than the model's own.

    transformers 5 saves some models (ViT among them) under their legacy weight names, and the Trainer's own resume
    loads the file without converting them back, which leaves those weights untrained with only a warning
    (huggingface/transformers#43701). `from_pretrained` does the conversion.
    """

    # ---- transformers private API (signatures checked by tests/test_checkpoints.py) ----

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if not self._load_renamed_weights(resume_from_checkpoint, model if model is not None else self.model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if not self._load_renamed_weights(self.state.best_model_checkpoint, self.model):
            super()._load_best_model()

    def _load_renamed_weights(self, checkpoint: str | None, model: nn.Module) -> bool:
        """Load a checkpoint saved under other weight names than the model's own, converting them; False if not.

        transformers 5 saves some models (ViT among them) under their legacy weight names, and the Trainer's own
        resume loads the file without converting them back, which leaves those weights untrained with only a
        warning (huggingface/transformers#43701). `from_pretrained` does the conversion.
        """
        if checkpoint is None or not isinstance(model, PreTrainedModel):
            return False
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return False
        saved = _saved_weight_names(checkpoint)
        if saved is None or saved == set(model.state_dict()):
            return False
        reloaded = type(model).from_pretrained(checkpoint, config=model.config)
        model.load_state_dict(reloaded.state_dict())
        return True


def _saved_weight_names(checkpoint: str) -> set[str] | None:
    """Names of the weights in a checkpoint's safetensors file(s), or None when it has none."""
    single = os.path.join(checkpoint, SAFE_WEIGHTS_NAME)
    index = os.path.join(checkpoint, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(single):
        with safe_open(single, framework="pt") as weights:
            return set(weights.keys())
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            return set(json.load(handle)["weight_map"])
    return None
