"""Which checkpoint folders are complete, and the checkpoint a run continues from: the one place that decides it.

One mechanism makes a checkpoint complete: `synermix_hf.checkpoints` writes every file of it into a staging folder
(`tmp-checkpoint-N/`, `STAGING_PREFIX`) and renames the folder to `checkpoint-N` only once every process has written
its part, so a `checkpoint-N` it wrote is complete by construction, and a save that was interrupted leaves only a
staging folder, which is never resumed from. What is judged here is a `checkpoint-N` that another writer put in place
(the plain Trainer, which writes into `checkpoint-N` directly): it is taken for complete when its `trainer_state.json`
is there and parses, because the Trainer writes that file after the weights, the optimizer's, the scheduler's and the
RNG state. Nothing else is read: a file deleted or damaged after a save is not looked for (the Trainer's own load
then fails on it, or, for a missing optimizer state, starts a fresh one).

* `checkpoint_problem` says why a folder is not a checkpoint a run can continue from; `last_complete_checkpoint`
  skips those.
* `resolve_resume` turns a `resume_from_checkpoint` (a path, or True / "last") into a `ResumePlan` (the checkpoint,
  the incomplete ones passed over, the folder whose leftovers go), or a `ResumeError` saying why not. A run resolves
  once: the command line resolves and hands its plan to `SynerMixTrainer.train`; used as a library, `train` resolves
  (`StagedCheckpoints.checkpoint_to_resume`, which is also where the leftovers are removed,
  `remove_incomplete_checkpoints`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = [
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
]

STAGING_PREFIX = f"tmp-{PREFIX_CHECKPOINT_DIR}-"  # not matched by `checkpoint-*`: never resumed from nor rotated
# The final model's staging folder (`StagedCheckpoints.save_model`): its files are moved out of it into the output
# folder, and it is removed last, so while it is there the final save has not finished. Cleaned as checkpoints' are.
FINAL_STAGING = f"{STAGING_PREFIX}final"
# What identifies the run a checkpoint belongs to (dataset, model, method, batch; written by the command line), in
# each checkpoint and next to them.
RUN_RECORD = "synermix_run.json"
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a complete checkpoint, in a few words; None when a run can continue from it.

    Complete means a `trainer_state.json` that parses: the last file the Trainer writes into a checkpoint (and the
    staged checkpoints of `synermix_hf.checkpoints` are complete once they have their name anyway).
    """
    if not os.path.isdir(path):
        return "it is not a directory"
    try:
        with open(os.path.join(path, TRAINER_STATE_NAME), encoding="utf-8") as handle:
            json.load(handle)
    except FileNotFoundError:
        return f"it has no {TRAINER_STATE_NAME} (its save was interrupted)"
    except ValueError:  # JSON and Unicode decoding
        return f"its {TRAINER_STATE_NAME} is cut short"
    except OSError as error:
        return f"its {TRAINER_STATE_NAME} cannot be read ({error.strerror or error})"
    return None


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
    """Where a run continues from (`resolve_resume`); `SynerMixTrainer.train(resume_from_checkpoint=plan)` takes it as
    it is, without resolving again.

    Attributes:
        checkpoint: The complete checkpoint to continue from; None when there is none and none was required (the run
            starts from the beginning).
        skipped: `(path, why)` of every newer incomplete checkpoint passed over to find it, newest first.
        clears: The folder the run goes on saving into, when what an interrupted run left there (incomplete
            checkpoints, staging folders) is to be removed before training goes on: `output_dir` when the checkpoint
            is in it or the last one was looked for there; None otherwise (a checkpoint elsewhere, or none asked for).
    """

    checkpoint: str | None
    skipped: tuple[tuple[str, str], ...] = ()
    clears: str | None = None


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
        The `ResumePlan`: the checkpoint, the incomplete ones skipped, and the folder whose leftovers go.

    Raises:
        ResumeError: (a `ValueError`) `output_dir` holds no complete checkpoint, or the path is not one: the message
            names what is missing and the latest complete checkpoint next to it.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return ResumePlan(None)
    if resume_from_checkpoint is True or str(resume_from_checkpoint).strip().lower() in _LAST:
        checkpoint, skipped = last_complete_checkpoint(output_dir)
        if checkpoint is None and required:
            passed = "; ".join(f"{os.path.basename(path)} is skipped: {why}" for path, why in skipped)
            raise ResumeError(
                f"`resume_from_checkpoint`: `output_dir` {output_dir} holds no complete checkpoint"
                + (f" ({passed})." if passed else "."),
                given=resume_from_checkpoint, kind="none complete", skipped=tuple(skipped))
        return ResumePlan(checkpoint, tuple(skipped), output_dir)
    checkpoint = str(resume_from_checkpoint)
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
    in_output_dir = os.path.dirname(os.path.abspath(checkpoint)) == os.path.abspath(output_dir)
    return ResumePlan(checkpoint, (), output_dir if in_output_dir else None)
