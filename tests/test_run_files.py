"""No write of a run can lose its training: a full disk while the run log, the metrics, the model card or the
predictions are written is one warning each, and a final model that cannot be saved leaves a folder that the same
command finishes.

A full disk is a file-size limit here (`RLIMIT_FSIZE`, with SIGXFSZ ignored: a write past it fails with EFBIG), set by
a callback at a chosen point of a run of the command line in a forked child (the limit is per process), as in
tests/test_checkpoint_failures.py.
"""

import json
import logging
import os
import resource
import signal

import pytest
import torch
from safetensors.torch import load_file
from test_checkpoint_failures import _in_a_forked_child
from transformers import TrainerCallback

from synermix_hf.resume import checkpoint_problem

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="RLIMIT_FSIZE and SIGXFSZ are Unix's")


def _run(hub_copies, out, *extra):
    return ["-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "--image_size", "16", "-mn", "resnet18",
            "-bs", "4", "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--output_dir", str(out), *extra]


def _fill(limit):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def _free():
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


class DiskFullAtTimes(TrainerCallback):
    """The disk is full from the first training loss line until training ends (`during_training`), from the end of
    training on (`final_save`, at `limit` bytes: the run log fits, the weights do not), or from the final evaluation
    on (`after_evaluation`)."""

    def __init__(self, during_training=False, final_save=None, after_evaluation=False):
        self.during_training, self.final_save, self.after_evaluation = during_training, final_save, after_evaluation
        self.training = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.during_training and self.training and logs and "loss" in logs:
            _fill(1)  # after the run log wrote this line (its callback comes first)

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False
        _free()
        if self.final_save is not None:
            _fill(self.final_save)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.after_evaluation and not self.training:
            _fill(1)


def _script_with_a_full_disk(argv, out, fill):
    """`main(argv)` in this (child) process with `DiskFullAtTimes(**fill)`; its status, warnings, run log and files."""
    import functools

    from synermix_hf.cli import train

    warnings = []

    class Warnings(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    logging.getLogger("synermix_hf").addHandler(Warnings())
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    train.run = functools.partial(train.run, callbacks=[DiskFullAtTimes(**fill)])
    try:
        status = train.main(argv)
    finally:
        _free()
    log = (out / "training_log.txt").read_text() if (out / "training_log.txt").exists() else ""
    return status, warnings, log, sorted(p.name for p in out.iterdir())


def test_a_full_disk_while_the_run_log_metrics_card_and_predictions_are_written_is_one_warning_each(hub_copies,
                                                                                                   tmp_path):
    out = tmp_path / "run"
    argv = _run(hub_copies, out, "--max_steps", "3", "--logging_steps", "1", "--save_strategy", "no",
                "--do_train", "true", "--do_eval", "true", "--do_predict", "true")
    status, warnings, log, names = _in_a_forked_child(
        _script_with_a_full_disk, argv, out, {"during_training": True, "after_evaluation": True})
    assert status == 0, warnings
    written = [w for w in warnings if w.startswith("Could not write ")]
    assert [w.split(" (")[0] for w in written] == [
        "Could not write the run log", "Could not write the evaluation metrics", "Could not write the prediction "
        "metrics", "Could not write the predictions", "Could not write the model card"], written
    assert all("a file grew past the largest size" in w and w.endswith("the run goes on without it.") for w in written)
    # The training line written before the disk filled is there, none after it; nothing half-written is left.
    assert sum(line.split()[4:5] == ["train"] for line in log.splitlines()) == 1, log
    assert "model.safetensors" in names and "README.md" not in names and "predictions.csv" not in names
    assert not [name for name in names if name.endswith(".tmp")], names
    assert json.loads((out / "all_results.json").read_text())["train_samples"] == 18  # merged before, whole


def test_a_final_save_on_a_full_disk_leaves_a_folder_the_same_command_finishes(hub_copies, tmp_path, capsys,
                                                                              script_in_process):
    out = tmp_path / "run"
    argv = _run(hub_copies, out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", "--do_eval",
                "false")
    # 100 kB: the run log and config.json fit, the weights (44 MB) do not.
    status, warnings, log, names = _in_a_forked_child(_script_with_a_full_disk, argv, out, {"final_save": 100_000})
    assert status == 1
    (stopped,) = [line for line in log.splitlines() if line.startswith("stopped: ")]
    assert stopped.startswith(f"stopped: Could not save the final model into {out}: a file grew past the largest size")
    assert stopped.endswith("run the same command again: it continues from checkpoint-2, the last complete "
                            "checkpoint, and saves the final model."), stopped  # fmt: skip
    # Nothing of the final save is left (a config.json would make the folder look finished).
    assert names == ["checkpoint-1", "checkpoint-2", "synermix_run.json", "synermix_run.lock", "training_log.txt"]
    capsys.readouterr()

    old_umask = os.umask(0o027)
    try:
        assert script_in_process(argv) == 0  # the same command, without --overwrite_output_dir
    finally:
        os.umask(old_umask)
    captured = capsys.readouterr()
    assert f"Continuing the interrupted run from {out / 'checkpoint-2'}" in captured.out
    assert "Traceback" not in captured.err
    assert checkpoint_problem(str(out / "checkpoint-2")) is None
    # Nothing was left to train: the final model is the weights of step 2, the run's last (not one step more).
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    final, saved = load_file(out / "model.safetensors"), load_file(out / "checkpoint-2" / "model.safetensors")
    assert final.keys() == saved.keys() and all(torch.equal(final[name], saved[name]) for name in final)
    # The model files follow the umask (safetensors alone would write 0600).
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) == oct(0o640)
    assert oct((out / "config.json").stat().st_mode & 0o777) == oct(0o640)
