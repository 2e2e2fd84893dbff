"""Checkpoints that are complete or absent, saved by every process together, and loaded whole.

This module is the one place where synermix-hf overrides private methods of `transformers.Trainer` (five:
`_save_checkpoint`, `_get_output_dir`, `_push_from_checkpoint`, `_load_from_checkpoint`, `_load_best_model`);
tests/test_transformers_api.py checks their signatures against the installed transformers. What a complete
checkpoint is, and which one a run continues from, is `synermix_hf.resume`.

The Trainer writes a checkpoint's files one after another into `checkpoint-N`: a run stopped during a save leaves a
folder with some files; a save that fills the disk fails with a traceback from deep inside `torch.save` that never
says "disk", and leaves the folder behind. Here:

* `StagedCheckpoints` (a `Trainer` mixin) writes each checkpoint into `tmp-checkpoint-N/checkpoint-N`, and once
  every process has written its files, renames the folder to `checkpoint-N`. The rename is the commit point, and the
  one thing that makes a checkpoint complete: `checkpoint-N` is complete or absent. Older checkpoints are rotated out
  (`save_total_limit`) only after that.
* A save that fails on any process (a full disk, a quota, a file-size limit, or anything else) fails on every process
  together, without a process left waiting at the next barrier, and the staging folder is removed: the previous
  checkpoints stay as they were. A full disk raises `CheckpointSaveError`, whose message is one line that says so,
  with the free space left and what to do; any other error is raised as it was by the process it happened on (the
  others raise `CheckpointSaveError` naming that process).
* The final model (`save_model`, `save_final_model`) is staged too, in `tmp-checkpoint-final/` inside the output
  folder, and its files are moved into place once all are written: a save that fills the disk leaves no
  `config.json` behind that would make the folder look finished, and the same command then continues from the last
  complete checkpoint and saves again. Every checkpoint carries the run's record (`run_record`, `resume.RUN_RECORD`),
  and saved files get the permissions the umask gives (safetensors writes 0600).
* `LegacyWeightNames` (a `Trainer` mixin) loads checkpoints that transformers 5 saved under the legacy weight names
  of some models (ViT among them), which the Trainer's own resume would leave untrained.

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
import re
import shutil
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers.trainer import OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, SCHEDULER_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .data.store_folder import process_umask
from .resume import (FINAL_STAGING, RUN_RECORD, STAGING_PREFIX, TRAINER_STATE_NAME, ResumePlan,
                     last_complete_checkpoint, remove_incomplete_checkpoints, resolve_resume)

__all__ = [
    "CheckpointSaveError",
    "LegacyWeightNames",
    "StagedCheckpoints",
    "follow_umask",
]

logger = logging.getLogger(__name__)


class CheckpointSaveError(RuntimeError):
    """A checkpoint (or the final model, `save_final_model`) could not be saved, most often because its disk is full;
    nothing of it was kept.

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
# safetensors' errors are Rust's `io::Error`s, the errno in their text: `(os error 28)` (Display, safetensors >= 0.5),
# `Os { code: 28, ... }` (Debug, as 0.4 writes them).
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)|\bOs \{ code: (\d+)")
# Outcome codes the processes exchange after a save: 0 saved, one per disk-full cause, then any other failure.
_CAUSE_CODES = [*_DISK_FULL_CAUSES.values(), _TORCH_WRITE_CAUSE]
_OTHER_FAILURE = len(_CAUSE_CODES) + 1


def _disk_full_cause(error: BaseException) -> str | None:
    """Why `error` (or an exception it was raised from or during) is a full disk, in a few words; None when it is not.

    Recognised anywhere in the chain: an `OSError` with errno ENOSPC, EDQUOT or EFBIG; a safetensors error that quotes
    one of them (`(os error 28)`, or `Os { code: 28, ...` from safetensors 0.4); torch.save's zip writer failing to
    write (`unexpected pos`, `file write failed`, `iostream error`).
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
        code = int(rust.group(1) or rust.group(2)) if rust else None
        if code in _DISK_FULL_CAUSES:
            return _DISK_FULL_CAUSES[code]
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


def _save_error(checkpoint: str, cause: str | None, failed_process: int | None,
                final_model: bool = False) -> CheckpointSaveError:  # fmt: skip
    """The one-line `CheckpointSaveError` for a failed save of `checkpoint`.

    Args:
        checkpoint: The `checkpoint-N` folder the save was to create; with `final_model`, the output folder.
        cause: What filled up (`_disk_full_cause`), or None when the failure was something else.
        failed_process: The process that failed when it was another one than this, else None.
        final_model: The save was the final model's (`save_final_model`), not a checkpoint's.
    """
    free = _free_bytes(checkpoint)
    last, _ = last_complete_checkpoint(checkpoint if final_model else os.path.dirname(checkpoint))
    then = ", and saves the final model" if final_model else ""
    again = (f"run the same command again: it continues from {os.path.basename(last)}, the last complete "
             f"checkpoint{then}" if last else
             "run the same command again: it starts from the beginning, as no checkpoint is complete")
    where = f" on process {failed_process}" if failed_process is not None else ""
    what = f"the final model into {checkpoint}" if final_model else f"checkpoint {checkpoint}"
    if cause is None:  # only another process reports this: its own error says what happened
        message = (f"Could not save {what}: saving it failed{where} (its error says why); nothing of it was kept. "
                   f"Once that is fixed, {again}.")
    else:
        space = f" ({_size_text(free)} free on its disk)" if free is not None else ""
        fewer = "" if final_model else ", or keep fewer checkpoints (--save_total_limit) or choose another --output_dir"
        message = (f"Could not save {what}{where}: {cause}{space}; nothing of it was kept. Free some space{fewer}, "
                   f"then {again}.")
    return CheckpointSaveError(message, checkpoint, free, last)


def follow_umask(folder: str) -> None:
    """Give every file under `folder` the permissions the umask gives new files (safetensors writes its files 0600
    whatever the umask, so another member of a shared group could not load the model)."""
    mode = 0o666 & ~process_umask()
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if not os.path.islink(path) and (os.stat(path).st_mode & 0o777) != mode:
                os.chmod(path, mode)


def _write_json_atomically(path: str, value: Any) -> None:
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=4, sort_keys=True)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _move_into(staging: str, target: str) -> None:
    """Move every file and folder of `staging` into `target`, replacing what is there, then remove `staging` (last:
    while it is there, the move has not finished)."""
    for name in sorted(os.listdir(staging)):
        destination = os.path.join(target, name)
        if os.path.isdir(destination) and not os.path.islink(destination):
            shutil.rmtree(destination)
        os.replace(os.path.join(staging, name), destination)
    os.rmdir(staging)


class StagedCheckpoints:
    """`transformers.Trainer` mixin: checkpoints are complete or absent, and a run continues from a complete one.

    * Saving: each checkpoint is written into a staging folder (`tmp-checkpoint-N/`); when all processes have written
      their files it is renamed to `checkpoint-N`; `save_total_limit` rotates older checkpoints out only then.
    * A save that fails on one process fails on every process at once (they agree where the Trainer would wait at a
      barrier), and the staging folder is removed. A full disk (or quota, or file-size limit) raises
      `CheckpointSaveError` on every process, with a one-line message; any other error is raised as it was by the
      process it happened on, and as `CheckpointSaveError` naming that process by the others.
    * `checkpoint_to_resume`, which `SynerMixTrainer.train` calls: `resume_from_checkpoint=True` (or `"last"`)
      continues from the last *complete* checkpoint, naming each newer incomplete one it skips; a path to an
      incomplete checkpoint is refused with a `ResumeError` (a `ValueError`) saying why (both: `resolve_resume`); a
      `ResumePlan` (the command line's) is taken as it was resolved. When a run continues in its own `output_dir`,
      the incomplete checkpoints and staging folders left there by the interrupted run are removed first, here and
      nowhere else: they are not results, and a stale `checkpoint-N` would otherwise be rotated in place of a
      complete one.

    The private `Trainer` methods it overrides are `_save_checkpoint`, `_get_output_dir` and `_push_from_checkpoint`
    (tests/test_checkpoints.py checks their signatures against the installed transformers); during a save, the public
    `save_model` holds back its failure until every process has reached the end of the Trainer's save.
    """

    _staging_dir: str | None = None
    _push_deferred: bool = False
    _weights_save_failure: Exception | None = None
    # What identifies the run (`RUN_RECORD`, a JSON-able dict; the command line sets it), written into every checkpoint
    # so that a checkpoint carries it whatever happens to the folder around it.
    run_record: dict[str, Any] | None = None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`, complete or not at all: the files are written into a staging folder inside
        `output_dir` (`resume.FINAL_STAGING`) and moved into place once all are written; a failed save removes it.
        While a checkpoint is saved, a failure is held back for `_settle_save`."""
        if self._staging_dir is not None and _internal_call:
            try:
                super().save_model(output_dir, _internal_call)
            except Exception as failure:  # settled once every process has written (`_settle_save`)
                # The Trainer waits for every process right after the weights when it tracks the best checkpoint: a
                # process that failed to write them must reach that barrier too, or the others would wait there.
                self._weights_save_failure = failure
            return
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:  # every process writes: saved as the Trainer does
            super().save_model(output_dir, _internal_call)
            return
        target = output_dir if output_dir is not None else self.args.output_dir
        self._stage_model(target)
        if self.args.should_save:
            _move_into(os.path.join(target, FINAL_STAGING), target)
        if self.args.push_to_hub and not _internal_call:  # as `Trainer.save_model` does, from the files in place
            self.push_to_hub(commit_message="Model save", revision=getattr(self.args, "hub_revision", None))

    def _stage_model(self, target: str) -> None:
        """Write the model into `target`'s staging folder (`FINAL_STAGING`), with the umask's permissions; a failed
        write removes it."""
        staging = os.path.join(target, FINAL_STAGING)
        if not self.args.should_save:
            return
        shutil.rmtree(staging, ignore_errors=True)  # left by a save that was interrupted
        try:
            super().save_model(staging, _internal_call=True)
            follow_umask(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def save_final_model(self) -> None:
        """`save_model()` into `output_dir` on every process together (call it on all of them, as the command line
        does after training): the files are moved into place only once every process has written its part, and a
        failure on any process is raised on every process, a full disk as a one-line `CheckpointSaveError` that says
        how the same command finishes the run (from the last complete checkpoint, then this save). Nothing of a
        failed save is kept, so the folder is not taken for a finished run."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            self.save_model()
            return
        target = self.args.output_dir
        failure = None
        try:
            self._stage_model(target)
        except Exception as raised:  # settled below, with the other processes
            failure = raised
        self._settle_save(failure, os.path.join(target, FINAL_STAGING), target, final_model=True)
        if self.args.should_save:
            _move_into(os.path.join(target, FINAL_STAGING), target)
        if self.args.push_to_hub:  # as `Trainer.save_model()` does
            self.push_to_hub(commit_message="Model save", revision=getattr(self.args, "hub_revision", None))

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> None:
        """`Trainer.save_metrics`, each file written whole or not at all (a temporary file renamed into place): a
        full disk never leaves an `all_results.json` cut short for the next merge to fail on."""
        if not self.is_world_process_zero():
            return
        _write_json_atomically(os.path.join(self.args.output_dir, f"{split}_results.json"), metrics)
        if combined:
            path = os.path.join(self.args.output_dir, "all_results.json")
            try:
                with open(path, encoding="utf-8") as handle:
                    all_metrics = json.load(handle)
            except (FileNotFoundError, ValueError):  # none yet, or unreadable (written by an older version)
                all_metrics = {}
            all_metrics.update(metrics)
            _write_json_atomically(path, all_metrics)

    def save_state(self) -> None:
        """`Trainer.save_state`, `trainer_state.json` written whole or not at all."""
        if not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, TRAINER_STATE_NAME)
        temporary = os.path.join(self.args.output_dir, f".{TRAINER_STATE_NAME}.tmp")
        try:
            self.state.save_to_json(temporary)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def trained_to_the_end(self, checkpoint: str | None) -> Any | None:
        """When `checkpoint` holds the last step of the run (the host trainer's `_last_step()`), load
        its weights and state (then the best checkpoint's weights under `load_best_model_at_end`, as the run ended),
        log the training as done, and return the `TrainOutput` of a `train()` that had nothing left to train; None
        otherwise.

        transformers' loop resumed from a checkpoint at the last step within an epoch trains one step more before it
        checks the step count, so a rerun that only has the final model to save (its save failed) would not end with
        the weights of the run.
        """
        from transformers.trainer_callback import TrainerState
        from transformers.trainer_utils import TrainOutput

        if checkpoint is None or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return None
        state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        if self.args.max_steps <= 0 and state.global_step < state.max_steps:
            return None  # the run it saved went on after it (no need to count the epochs' steps)
        last_step = self._last_step()
        if last_step is None or state.global_step < last_step:
            return None
        self._load_from_checkpoint(checkpoint)
        self.state = state
        if self.args.load_best_model_at_end and state.best_model_checkpoint is not None:
            self._load_best_model()  # as the Trainer ends a run, which the rerun's final save is to follow
        metrics = {"train_runtime": 0.0, "train_samples_per_second": 0.0, "train_steps_per_second": 0.0,
                   "total_flos": float(state.total_flos or 0.0)}
        self.log(dict(metrics))
        return TrainOutput(state.global_step, float("nan"), metrics)

    def checkpoint_to_resume(self, resume_from_checkpoint: str | bool | ResumePlan) -> str | None:
        """The complete checkpoint `train(resume_from_checkpoint=...)` continues from, after removing what an
        interrupted run left in the folder the run goes on saving into (`ResumePlan.clears`).

        Args:
            resume_from_checkpoint: A `ResumePlan` that the caller resolved (the command line does), taken as it
                is; or True / `"last"` / a path, resolved here (`resolve_resume`), naming each incomplete checkpoint
                skipped.

        Returns:
            The checkpoint; None when the plan has none (the run starts from the beginning).

        Raises:
            ResumeError: `resume_from_checkpoint` names no complete checkpoint.
        """
        plan = resume_from_checkpoint
        if not isinstance(plan, ResumePlan):
            plan = resolve_resume(self.args.output_dir, resume_from_checkpoint)
            for path, problem in plan.skipped:
                logger.warning("Skipping %s: %s. Continuing from %s.", path, problem, plan.checkpoint)
        self.accelerator.wait_for_everyone()  # every process has read the folder before it is tidied
        if plan.clears is not None and self.args.should_save:
            for path, problem in remove_incomplete_checkpoints(plan.clears):
                logger.info("Removed %s: %s.", path, problem)
        self.accelerator.wait_for_everyone()  # no process reads the folder while it is tidied
        return plan.checkpoint

    def warn_of_a_fresh_optimizer(self, checkpoint: str | None) -> None:
        """Warn when training is to go on from `checkpoint` without its optimizer's and schedule's state (a
        checkpoint of `save_only_model=True`), which the Trainer then starts afresh without a word: the run goes on,
        but not as an uninterrupted one (the momentum is gone, the learning rate is the schedule's first again)."""
        if checkpoint is None or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return
        missing = _missing_training_state(checkpoint)
        if missing:
            logger.warning(
                "Resuming from %s, which has no %s (saved with save_only_model=True): the run continues from its "
                "weights and step with a fresh optimizer state and the learning-rate schedule started again from its "
                "first step, so it will not end as an uninterrupted run. Resume from a checkpoint saved without "
                "save_only_model for that.", checkpoint, " or ".join(missing))

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

    def _settle_save(self, failure: Exception | None, staging: str, final: str, final_model: bool = False) -> None:
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
            raise _save_error(final, cause, None, final_model) from failure
        _, process, c = failed[0]  # a full disk first: it says what to do
        raise _save_error(final, _CAUSE_CODES[c - 1] if c != _OTHER_FAILURE else None, process, final_model)

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
        if self.run_record is not None:
            with open(os.path.join(staged, RUN_RECORD), "w", encoding="utf-8") as handle:
                json.dump(self.run_record, handle, indent=1)
        follow_umask(staged)
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


def _missing_training_state(checkpoint: str) -> list[str]:
    """The files of the optimizer's and the schedule's state that `checkpoint` lacks (all of them for a checkpoint
    of `save_only_model=True`), as the Trainer's own resume looks for them."""
    missing = []
    if not any(os.path.isfile(os.path.join(checkpoint, name)) for name in (OPTIMIZER_NAME, OPTIMIZER_NAME_BIN)):
        missing.append(OPTIMIZER_NAME)
    if not os.path.isfile(os.path.join(checkpoint, SCHEDULER_NAME)):
        missing.append(SCHEDULER_NAME)
    return missing


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
