"""Which checkpoint folders are complete, and the checkpoint a run continues from: the one place that decides it.

The Trainer writes a checkpoint's files one after another into `checkpoint-N`: a run stopped during a save (Ctrl-C,
SIGKILL, a preempted node) leaves a folder with some files and no `trainer_state.json`, which the plain Trainer takes
for the latest checkpoint and fails on. `synermix_hf.checkpoints` saves each checkpoint complete or not at all, with a
`checkpoint_complete.json` (`COMPLETE_MARKER`: every file of the checkpoint with its size, `write_complete_marker`).

* `checkpoint_problem` tells why a folder is not a checkpoint a run can continue from, and `last_complete_checkpoint`
  skips those. With a `checkpoint_complete.json`, every file it lists must be there with its size. Without one (a
  checkpoint of the plain Trainer or of an older synermix-hf), `trainer_state.json` must parse, the weights and
  archives must be whole, and the files a resume loads must be there: the model's weights, and the optimizer's and
  the scheduler's state unless the run saved only the model (`save_only_model`). The Trainer itself would fail on a
  checkpoint without weights and, worse, continue silently with a fresh optimizer from one without its state.
* `resolve_resume` turns a `resume_from_checkpoint` (a path, or True / "last") into the checkpoint to continue from,
  or a `ResumeError` saying why not; `SynerMixTrainer.train` (through `StagedCheckpoints.checkpoint_to_resume`) and
  the command line both call it. `remove_incomplete_checkpoints` clears what an interrupted run left.
"""

from __future__ import annotations

import json
import os
import pickletools
import re
import shutil
import struct
import zipfile
from dataclasses import dataclass

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
    "FINAL_STAGING",
    "RUN_RECORD",
    "STAGING_PREFIX",
    "TRAINER_STATE_NAME",
    "ResumeError",
    "ResumePlan",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "remove_incomplete_checkpoints",
    "resolve_resume",
    "write_complete_marker",
]

STAGING_PREFIX = f"tmp-{PREFIX_CHECKPOINT_DIR}-"  # not matched by `checkpoint-*`: never resumed from nor rotated
# The final model's staging folder (`StagedCheckpoints.save_model`): its files are moved out of it into the output
# folder, and it is removed last, so while it is there the final save has not finished. Cleaned as checkpoints' are.
FINAL_STAGING = f"{STAGING_PREFIX}final"
COMPLETE_MARKER = "checkpoint_complete.json"
# What identifies the run a checkpoint belongs to (dataset, model, method, batch; written by the command line), in
# each checkpoint and next to them.
RUN_RECORD = "synermix_run.json"
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME,
                 ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME)  # fmt: skip



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


def write_complete_marker(folder: str) -> None:
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
