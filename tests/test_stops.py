"""Every way a run is stopped ends it with one line and no traceback: Ctrl-C (stopped like SIGTERM, after the step
with a checkpoint; a second one at once), a second SIGTERM, a signal during an evaluation (within one evaluation
batch), a non-finite loss."""

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_preemption import SignalAtStep
from transformers import TrainerCallback

from synermix_hf.cli import train
from synermix_hf.cli.folder_lock import LOCK_FILE
from synermix_hf.preemption import CtrlC
from synermix_hf.resume import checkpoint_problem

HERE = Path(__file__).resolve().parent


def _run(hub_copies, out, *extra):
    # 18 training images, batch 4; checkpoints at each epoch's end (the default), none before step 4.
    return ["-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "--image_size", "16", "-mn", "resnet18",
            "-bs", "4", "-ep", "2", "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--do_eval", "false",
            "--output_dir", str(out), *extra]


def _main_with(callbacks, argv):
    original_run = train.run
    try:
        train.run = lambda argv, **kwargs: original_run(argv, callbacks=callbacks)
        return train.main(argv)
    finally:
        train.run = original_run


@pytest.fixture
def ctrl_c_delivered():
    """SIGINT raises KeyboardInterrupt, as in a terminal (a test session started in the background ignores it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_training_saves_a_checkpoint_after_the_step_and_stops_with_status_130(
        hub_copies, tmp_path, capsys, ctrl_c_delivered):
    out = tmp_path / "run"
    assert _main_with([SignalAtStep(2, signum=signal.SIGINT)], _run(hub_copies, out)) == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # as it was before the run
    err = capsys.readouterr().err
    assert (f"SIGINT (Ctrl-C) received: training stopped after step 2 and saved {out / 'checkpoint-2'}. Run the same "
            "command again to continue from it.") in err
    assert err.count("received") == 1 and "Traceback" not in err and "Exception ignored" not in err, err
    assert checkpoint_problem(str(out / "checkpoint-2")) is None
    assert "stopped: SIGINT (Ctrl-C) received: training stopped after step 2" in (out / "training_log.txt").read_text()
    assert not (out / "model.safetensors").exists()


class CtrlCBeforeTraining(TrainerCallback):
    def on_init_end(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_before_training_stops_with_one_line_and_status_130(hub_copies, tmp_path, capsys, ctrl_c_delivered):
    out = tmp_path / "run"
    assert _main_with([CtrlCBeforeTraining()], _run(hub_copies, out)) == 130
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "Generating" not in line]  # datasets' progress bars
    assert len(lines) == 1 and lines[0].startswith("Interrupted. Run the same command again"), err
    assert (out / LOCK_FILE).read_text() == ""  # the folder's lock released: the same command can run again
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed KeyboardInterrupt
def test_a_ctrl_c_that_a_finalizer_swallowed_is_raised_at_the_next_safe_point(ctrl_c_delivered):
    ctrl_c = CtrlC()
    ctrl_c.install()
    try:
        class PressedDuringAFinalizer:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # the handler runs here, inside the finalizer, whose exceptions Python ignores
                    pass

        PressedDuringAFinalizer()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
    finally:
        ctrl_c.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("sent", ["SIGTERM", "SIGINT"])
def test_a_second_signal_stops_at_once_with_one_line_in_the_console_and_the_run_log(hub_copies, tmp_path, sent):
    out = tmp_path / "run"
    env = {**os.environ, "SIGNAL": sent, "TIMES": "2", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    stopped = subprocess.run([sys.executable, str(HERE / "signal_at_step.py"), "1", "0", *_run(hub_copies, out)],
                             capture_output=True, text=True, timeout=300, cwd=HERE.parent, env=env)
    assert stopped.returncode == -signal.Signals[sent], stopped.stderr[-3000:]
    shown = "SIGINT (Ctrl-C)" if sent == "SIGINT" else sent
    line = (f"{shown} received again: stopped at once, without saving the steps since the last checkpoint. Run the "
            "same command again to continue from the last complete checkpoint.")
    assert stopped.stderr.count("received again") == 1 and line in stopped.stderr, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert f"stopped: {line}" in (out / "training_log.txt").read_text()


class SignalDuringEvaluation(TrainerCallback):
    """SIGTERM during the second batch of the first evaluation; counts the evaluation batches."""

    def __init__(self):
        self.batches = 0

    def on_prediction_step(self, args, state, control, **kwargs):
        self.batches += 1
        if self.batches == 2:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_an_evaluation_saves_and_stops_within_one_evaluation_batch(hub_copies, tmp_path, capsys):
    out = tmp_path / "run"
    # The evaluation after step 1 has 9 batches of 1 image.
    argv = [*_run(hub_copies, out), "--do_train", "true", "--do_eval", "true", "--eval_strategy", "steps",
            "--eval_steps", "1", "--per_device_eval_batch_size", "1"]
    evaluation = SignalDuringEvaluation()
    assert _main_with([evaluation], argv) == 128 + signal.SIGTERM
    assert evaluation.batches == 2  # the batch in progress, not the 7 after it
    err = capsys.readouterr().err
    assert f"SIGTERM received: training stopped after step 1 and saved {out / 'checkpoint-1'}" in err
    assert "Traceback" not in err
    assert checkpoint_problem(str(out / "checkpoint-1")) is None
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]


class NotANumberAfterStep1(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            for parameter in model.parameters():
                parameter.data.fill_(math.nan)


def test_a_non_finite_loss_stops_with_its_message_as_one_line_and_status_1(hub_copies, tmp_path, capsys):
    out = tmp_path / "run"
    assert _main_with([NotANumberAfterStep1()], _run(hub_copies, out)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Non-finite training loss at global step 1: loss=nan"), err
    assert err.count("\n") == 1 and "Traceback" not in err and "Lower the learning rate" in err
    assert "stopped: Non-finite training loss" in (out / "training_log.txt").read_text()
