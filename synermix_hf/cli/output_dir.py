"""The output directory: its default name, and what a run does with what is already there.

The default name is a function of the arguments (`runs/<dataset>-<model>-<method>-<id>`, the id a hash of every
argument that changes the result), so the same command finds the same directory again: running a command again after
Ctrl-C or a crash continues the interrupted run from its last checkpoint. Finished results are never written over
without `--overwrite_output_dir`, and a directory holding files the script did not write is never written into.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from ..resume import FINAL_STAGING, RUN_RECORD, STAGING_PREFIX, ResumeError, ResumePlan, resolve_resume
from ..data.catalog import BUILTIN_DATASET
from .errors import UsageError
from .folder_lock import LOCK_FILE
from .methods import method_slug
from .run_log import total_train_batch

__all__ = ["LOG_FILE", "RESULT_FILES", "RUN_FILE", "check_output_dir_writable", "check_same_run", "default_output_dir",
           "prepare_output_dir", "run_identity", "slug", "write_run_identity"]

logger = logging.getLogger(__name__)

RESULT_FILES = ("all_results.json", "train_results.json", "eval_results.json", "trainer_state.json",
                "model.safetensors", "config.json")
LOG_FILE = "training_log.txt"
RUN_FILE = RUN_RECORD  # what identifies the run whose checkpoints the folder holds (each checkpoint has its own)
# Arguments that do not change what a run computes: left out of the default directory's id.
_NOT_IN_ID = {"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "disable_tqdm", "dataloader_num_workers",
              "report_to", "push_to_hub", "hub_model_id", "hub_token", "hub_private_repo", "hub_strategy", "token",
              "log_level", "log_level_replica", "logging_dir", "run_name", "cache_dir"}


def slug(text: str) -> str:
    """The last part of a path or Hub id, with only letters, digits, `-`, `_` and `.`."""
    text = os.path.basename(os.path.normpath(os.path.expanduser(text))) or text
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_") or "data"


def arguments_id(values: dict[str, Any]) -> str:
    """8 hex digits that identify the arguments (`values`: the ones the user set), without those that only steer
    output and logging."""
    kept = {k: v for k, v in sorted(values.items()) if k not in _NOT_IN_ID}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]


def default_output_dir(model_args: Any, data_args: Any, args: Any, explicit_values: dict[str, Any]) -> str:
    """`runs/<dataset>-<model>-<method>-<id>` (`<method>`: `method_slug`): the same arguments always give the same
    directory."""
    if data_args.train_dir or data_args.validation_dir:
        dataset = "imagefolder-" + slug(data_args.train_dir or data_args.validation_dir)
    else:
        dataset = slug(data_args.dataset_name or BUILTIN_DATASET)
    model = slug(model_args.model_name_or_path) if model_args.model_name_or_path else model_args.model_name
    name = f"{dataset}-{model}-{method_slug(args.beta, args.inter_mixup)}-{arguments_id(explicit_values)}"
    return os.path.join("runs", name)


def _resume_usage_error(error: ResumeError, out: str) -> UsageError:
    """`resolve_resume`'s refusal in the command line's words: its flags, and what to give instead."""
    if error.kind == "none complete":
        return UsageError(f"--resume_from_checkpoint {error.given}: --output_dir {out} holds no complete checkpoint-* "
                          "directory" + _skipped_text(error.skipped).replace("; ", " (", 1)
                          + (")." if error.skipped else "."))
    path = error.checkpoint
    if error.kind == "missing":
        return UsageError(f"--resume_from_checkpoint {path!r} does not exist (it must be a checkpoint-* directory).")
    if error.kind == "not a checkpoint":
        return UsageError(
            f"--resume_from_checkpoint {path!r} is not a checkpoint: it has no trainer_state.json. Checkpoints are the "
            "checkpoint-* directories in an --output_dir (or give --resume_from_checkpoint last)."
        )
    return UsageError(
        f"--resume_from_checkpoint {path!r} is not a complete checkpoint: {error.problem}. "
        + (f"Continue from {error.latest}, the latest complete one, or give --resume_from_checkpoint last."
           if error.latest else
           "Its folder holds no complete checkpoint: start the run again without --resume_from_checkpoint.")
    )


def _skipped_text(skipped: Iterable[tuple[str, str]]) -> str:
    return "".join(f"; {os.path.basename(path)} is skipped and removed: {problem}" for path, problem in skipped)


def prepare_output_dir(args: Any, overwrite: bool = False) -> tuple[ResumePlan, bool, str]:
    """Check `args.output_dir` against what is in it, and resolve the checkpoint the run continues from, once (the
    plan goes to `trainer.train(resume_from_checkpoint=plan)`, which removes the leftovers it names before training).
    `overwrite` (--overwrite_output_dir) writes over a run's results. Nothing in the folder is removed here but the old
    metrics files that `overwrite` replaces.

    Returns:
        `(plan, continuing, skipped)`: the `ResumePlan` (`plan.checkpoint` None when the run starts from the
        beginning); `continuing` when the run picks up an interrupted run in this directory without
        --resume_from_checkpoint; `skipped` a note on the incomplete checkpoints passed over (empty if none).

    Raises:
        UsageError: results would be written over, the directory holds other files, or the checkpoint is not one.
    """
    out = args.output_dir
    if args.should_save:
        check_output_dir_writable(out)
    # Without --resume_from_checkpoint, a training run in a folder it may write into continues what is there.
    continuing = args.resume_from_checkpoint in (None, False) and args.do_train and not overwrite
    try:
        plan = resolve_resume(out, "last" if continuing else args.resume_from_checkpoint, required=not continuing)
    except ResumeError as error:
        raise _resume_usage_error(error, out) from None
    skipped = _skipped_text(plan.skipped)
    if not os.path.isdir(out):
        return plan, False, skipped
    if overwrite:
        if args.should_save:  # the metrics files are merged into, not replaced: remove the old ones
            for name in ("all_results.json", "train_results.json", "eval_results.json"):
                if os.path.isfile(os.path.join(out, name)):
                    os.remove(os.path.join(out, name))
        return plan, False, skipped
    # The final save was interrupted (a full disk, a kill) while its files were written or moved into place: what it
    # moved is not a finished run's results, and the run continues from its last checkpoint and saves them again.
    final_interrupted = os.path.isdir(os.path.join(out, FINAL_STAGING))
    results = [] if final_interrupted else [name for name in RESULT_FILES if os.path.exists(os.path.join(out, name))]
    if results:
        raise UsageError(
            f"--output_dir {out} already holds the results of a run ({', '.join(results)}). Choose another "
            "--output_dir, or add --overwrite_output_dir to write over them."
        )
    if not continuing or plan.checkpoint is not None:
        return plan, continuing, skipped
    # Nothing to continue from: the run starts again, over the script's own leftovers only (its log and run file,
    # checkpoints its interruption left incomplete, staging folders).
    own = {LOG_FILE, RUN_FILE, LOCK_FILE, *(os.path.basename(path) for path, _ in plan.skipped)}
    others = sorted(name for name in set(os.listdir(out)) - own if not name.startswith(STAGING_PREFIX))
    if others and not final_interrupted:
        raise UsageError(
            f"--output_dir {out} is not empty ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}) and "
            "holds no checkpoint to resume from. Choose another --output_dir, or add --overwrite_output_dir to "
            "write into it."
        )
    interrupted = os.path.isfile(os.path.join(out, LOG_FILE)) or bool(plan.skipped)
    return plan, interrupted, skipped


def check_output_dir_writable(out: str) -> None:
    """Refuse an `--output_dir` that is a file or cannot be written (a read-only file system, no permission), before
    the data is loaded and a store is built rather than at the first save.

    Nothing is created or written here: the other processes of the run look at the folder meanwhile.

    Raises:
        UsageError: naming the folder and the reason.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--output_dir {out} is a file, not a folder. Choose another --output_dir.")
    folder = os.path.abspath(out)
    while not os.path.exists(folder):  # the nearest existing folder is where the run will create it
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        reason = "Not a directory"
    elif os.statvfs(folder).f_flag & os.ST_RDONLY:
        reason = "Read-only file system"
    elif not os.access(folder, os.W_OK | os.X_OK):
        reason = "Permission denied"
    else:
        return
    raise UsageError(f"--output_dir {out} cannot be written: {reason} ({folder}). Choose another --output_dir.")


def run_identity(model_name: str, data: Any, args: Any) -> dict[str, Any]:
    """What identifies a training run, for `check_same_run`: the dataset (its source, the training split's
    fingerprint, size and class names), the model, the method, the recipe and the batch of one optimizer step."""
    return {
        "dataset": data.source,
        "training split fingerprint": getattr(data.train, "_fingerprint", None),
        "training examples": len(data.train) if data.train is not None else 0,
        "class names": list(data.class_names),
        "model": model_name,
        "method": f"{method_slug(args.beta, args.inter_mixup)} (alpha {args.alpha:g})",
        "recipe": args.recipe,
        "total train batch size": total_train_batch(args),
    }


def write_run_identity(folder: str, identity: dict[str, Any]) -> None:
    """Record `identity` next to the checkpoints in `folder`."""
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{RUN_FILE}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(identity, handle, indent=1)
    os.replace(temporary, os.path.join(folder, RUN_FILE))


def _shown(value: Any) -> str:
    if isinstance(value, list) and len(value) > 6:
        return f"{len(value)} classes ({', '.join(map(str, value[:3]))}, ...)"
    if isinstance(value, list):
        return f"{len(value)} classes ({', '.join(map(str, value))})"
    return str(value)


def _recorded_run(checkpoint: str) -> dict[str, Any] | None:
    """The run `checkpoint` belongs to: the record inside it, else (a checkpoint of an older version) the one next to
    it; None when there is neither (a checkpoint of the plain Trainer).

    Raises:
        UsageError: a record is there but cannot be read, so the run cannot be told.
    """
    folder = os.path.dirname(os.path.normpath(checkpoint)) or "."
    unreadable = []
    for path in (os.path.join(checkpoint, RUN_FILE), os.path.join(folder, RUN_FILE)):
        try:
            with open(path, encoding="utf-8") as handle:
                recorded = json.load(handle)
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            unreadable.append(path)
            continue
        if isinstance(recorded, dict):
            return recorded
        unreadable.append(path)
    if unreadable:
        raise UsageError(
            f"Cannot tell whether {checkpoint} belongs to this run: {unreadable[0]} is unreadable, so this run cannot "
            "continue from it. Start fresh with another --output_dir (or --overwrite_output_dir to replace that "
            f"run), or start from its weights with --model_name_or_path {checkpoint}."
        )
    return None


def check_same_run(checkpoint: str, identity: dict[str, Any]) -> None:
    """Refuse to continue from `checkpoint` when the run recorded in it (`RUN_FILE`, which every checkpoint of the
    command line carries; next to it for older ones) is another run than `identity` describes; a checkpoint without a
    record (written by the plain Trainer) is not checked.

    Raises:
        UsageError: naming what differs and how to start fresh; or the record is unreadable.
    """
    recorded = _recorded_run(checkpoint)
    if recorded is None:
        return
    differences = [f"{key}: {_shown(recorded[key])} there, {_shown(value)} now" for key, value in identity.items()
                   if key in recorded and recorded[key] != value]
    if differences:
        raise UsageError(
            f"{checkpoint} belongs to another run ({'; '.join(differences)}), so this run cannot continue from it. "
            "Start fresh with another --output_dir (or --overwrite_output_dir to replace that run), or start from "
            f"its weights with --model_name_or_path {checkpoint}."
        )
