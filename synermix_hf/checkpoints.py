"""Checkpoints that are complete or absent, continuing from the last complete one, and loading them whole.

This module is the one place where synermix-hf overrides private methods of `transformers.Trainer` (five:
`_save_checkpoint`, `_get_output_dir`, `_push_from_checkpoint`, `_load_from_checkpoint`, `_load_best_model`);
tests/test_checkpoints.py checks their signatures against the installed transformers.

The Trainer writes a checkpoint's files one after another into `checkpoint-N`: a run stopped during a save (Ctrl-C,
SIGKILL, a preempted node) leaves a folder with some files and no `trainer_state.json`, which the next run takes for
the latest checkpoint and fails on. Here:

* `StagedCheckpoints` (a `Trainer` mixin) writes each checkpoint into `tmp-checkpoint-N/checkpoint-N` and renames it
  to `checkpoint-N` once every process has written its files. The rename is the commit point: `checkpoint-N` is
  complete or absent. Older checkpoints are rotated out (`save_total_limit`) only after that.
* `LegacyWeightNames` (a `Trainer` mixin) loads checkpoints that transformers 5 saved under the legacy weight names
  of some models (ViT among them), which the Trainer's own resume would leave untrained.
* `checkpoint_problem` tells why a folder is not a checkpoint a run can continue from (no or unreadable
  `trainer_state.json`, a weights or optimizer file cut short), for checkpoints written by anything else, and
  `last_complete_checkpoint` skips those.

transformers staged checkpoints in `tmp-checkpoint-*` folders twice (4.36, 4.48) and took it out twice: every process
wrote into its own randomly named folder or several processes renamed the same folder, which failed on multi-node
jobs with a shared file system. Here the staging folder's name is the same on every process (the step), each process
writes into it, and after a barrier only process 0 renames it; a node whose file system does not see process 0's
folder (`save_on_each_node`) renames its own copy after a second barrier, so no two processes ever rename one folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import zipfile
from typing import Any

from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

__all__ = [
    "STAGING_PREFIX",
    "LegacyWeightNames",
    "StagedCheckpoints",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "remove_incomplete_checkpoints",
]

logger = logging.getLogger(__name__)

STAGING_PREFIX = f"tmp-{PREFIX_CHECKPOINT_DIR}-"  # not matched by `checkpoint-*`: never resumed from nor rotated
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a complete checkpoint, in a few words; None when a run can continue from it.

    Complete means: a `trainer_state.json` that parses (the Trainer writes it after every other file), and every
    `.safetensors` file and every `torch.save` archive (`optimizer.pt`, `scheduler.pt`, `rng_state*.pth`, ...) whole.
    Only the files' headers and directories are read, not the weights.
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
        for name in sorted(names):
            file = os.path.join(path, name)
            if name.endswith(".safetensors") and not _safetensors_is_whole(file):
                return f"{name} is cut short"
            if name.endswith((".pt", ".pth", ".bin")) and os.path.isfile(file) and not _torch_archive_is_whole(file):
                return f"{name} is cut short"
    except FileNotFoundError:
        return "it disappeared while it was read"
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


class StagedCheckpoints:
    """`transformers.Trainer` mixin: checkpoints are complete or absent, and a run continues from a complete one.

    * Saving: each checkpoint is written into a staging folder (`tmp-checkpoint-N/`) and renamed to `checkpoint-N`
      when all processes have written their files; `save_total_limit` rotates older checkpoints out only then.
    * `train(resume_from_checkpoint=True)` continues from the last *complete* checkpoint, naming each newer
      incomplete one it skips; a path to an incomplete checkpoint is refused with a `ValueError` saying why. When a
      run continues from a checkpoint of its own `output_dir`, the incomplete checkpoints and staging folders left
      there by the interrupted run are removed first: they are not results, and a stale `checkpoint-N` would
      otherwise be rotated in place of a complete one.

    The private `Trainer` methods it overrides are `_save_checkpoint`, `_get_output_dir` and `_push_from_checkpoint`
    (tests/test_checkpoints.py checks their signatures against the installed transformers).
    """

    _staging_dir: str | None = None
    _push_deferred: bool = False

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            resume_from_checkpoint = self._complete_checkpoint_to_resume(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _complete_checkpoint_to_resume(self, resume_from_checkpoint: str | bool) -> str:
        output_dir = self.args.output_dir
        if resume_from_checkpoint is True:
            checkpoint, skipped = last_complete_checkpoint(output_dir)
            for path, problem in skipped:
                logger.warning("Skipping %s: %s. Continuing from %s.", path, problem, checkpoint or "the start")
            if checkpoint is None:
                raise ValueError(f"`resume_from_checkpoint`: `output_dir` {output_dir} holds no complete checkpoint.")
        else:
            checkpoint = str(resume_from_checkpoint)
            problem = checkpoint_problem(checkpoint)
            if problem is not None:
                latest, _ = last_complete_checkpoint(os.path.dirname(os.path.normpath(checkpoint)) or ".")
                hint = f" The latest complete checkpoint next to it is {latest}." if latest else ""
                raise ValueError(f"`resume_from_checkpoint` {checkpoint} is not a complete checkpoint: {problem}.{hint}")
        same_folder = os.path.dirname(os.path.abspath(checkpoint)) == os.path.abspath(output_dir)
        if same_folder and self.args.should_save:
            for path, problem in remove_incomplete_checkpoints(output_dir):
                logger.info("Removed %s: %s.", path, problem)
        self.accelerator.wait_for_everyone()  # no process reads the folder while it is tidied
        return checkpoint

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
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left by a save of this step that was interrupted
        self.accelerator.wait_for_everyone()  # no process writes into the staging folder before it is emptied
        self._staging_dir, self._push_deferred = staging, False
        try:
            super()._save_checkpoint(model, trial, *args, **kwargs)
        finally:
            self._staging_dir = None
        staged, final = os.path.join(staging, name), os.path.join(run_dir, name)
        if self.state.best_model_checkpoint == staged:
            self.state.best_model_checkpoint = final

        self.accelerator.wait_for_everyone()  # every process has written its files
        if self.args.process_index == 0:
            self._publish(staged, final, run_dir)
        self.accelerator.wait_for_everyone()
        if self.args.should_save and self.args.process_index != 0 and os.path.isdir(staged):
            self._publish(staged, final, run_dir)  # a node whose file system does not see process 0's
        elif os.path.isdir(staging) and self.args.local_process_index == 0:
            shutil.rmtree(staging, ignore_errors=True)  # another node's files (RNG states) of a checkpoint kept there
        self.accelerator.wait_for_everyone()
        if self._push_deferred:
            self._push_deferred = False
            super()._push_from_checkpoint(final)

    def _publish(self, staged: str, final: str, run_dir: str) -> None:
        """Rename the staged checkpoint into place (the commit point), then rotate older checkpoints out."""
        if self.args.should_save:  # the Trainer wrote the state before the best checkpoint's path was corrected
            self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
        staging = os.path.dirname(staged)
        if os.path.isdir(final):  # the same step saved again (or a stale folder): swap, never leave neither
            os.rename(final, os.path.join(staging, "replaced"))
        os.rename(staged, final)
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
