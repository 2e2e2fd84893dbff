"""SIGTERM (how schedulers preempt a job) saves a checkpoint after the current step, on every process, and the same
command continues from it to the weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from synermix_hf.resume import checkpoint_problem
from synermix_hf.cli import train

HERE = Path(__file__).resolve().parent


class SignalAtStep(TrainerCallback):
    """Send this process SIGTERM (or `signum`, `times` times) at the end of step `step` (a real signal, to the
    script's real handler), only in the process of global rank `rank` (tests/signal_at_step.py uses it under
    torchrun)."""

    def __init__(self, step: int, rank: int = 0, signum: int = signal.SIGTERM, times: int = 1):
        self.step, self.rank, self.signum, self.times = step, rank, signum, times

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and args.process_index == self.rank:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


def _common(hub_copies) -> list[str]:
    # 18 training images, batch 4: 4 steps an epoch, 8 in all; per-epoch checkpoints (the default). SGD with momentum
    # and StepLR (the recipe), beta > 0 with Manifold MixUp: every kind of state and draw must survive the stop.
    return ["-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "--image_size", "8", "-mn", "resnet18",
            "-bs", "4", "-ep", "2", "-lr", "0.05", "-ss", "1", "-ga", "0.5", "-beta", "0.3", "-itrm", "Manifold_Mixup",
            "-seed", "5", "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--do_eval", "false"]


@pytest.fixture(scope="module")
def uninterrupted(hub_copies, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    assert train.main([*_common(hub_copies), "--output_dir", str(out)]) == 0
    return load_file(out / "model.safetensors")


def _assert_same_weights(expected: dict, folder: Path) -> None:
    actual = load_file(folder / "model.safetensors")
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("step", [6, 8])  # within an epoch (after its checkpoint), the last step
def test_sigterm_saves_a_checkpoint_at_that_step_and_the_rerun_ends_as_an_uninterrupted_run(
        hub_copies, tmp_path, capsys, uninterrupted, step):
    out = tmp_path / "run"
    command = [*_common(hub_copies), "--output_dir", str(out)]
    previous_handler = signal.getsignal(signal.SIGTERM)
    original_run = train.run
    try:
        train.run = lambda argv, **kwargs: original_run(argv, callbacks=[SignalAtStep(step)])
        assert train.main(command) == 128 + signal.SIGTERM
    finally:
        train.run = original_run
    assert signal.getsignal(signal.SIGTERM) == previous_handler  # the handler lives only while training
    err = capsys.readouterr().err
    checkpoint = out / f"checkpoint-{step}"
    assert f"SIGTERM received: training stopped after step {step} and saved {checkpoint}" in err
    assert err.count("SIGTERM received") == 1 and "Traceback" not in err, err  # one line (and saving's progress bar)
    assert checkpoint_problem(str(checkpoint)) is None
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()
    assert not list(out.glob("tmp-checkpoint-*"))
    assert f"stopped: SIGTERM received: training stopped after step {step}" in (out / "training_log.txt").read_text()

    assert train.main(command) == 0  # the same command continues from the checkpoint
    assert f"Continuing the interrupted run from {checkpoint}" in capsys.readouterr().out
    _assert_same_weights(uninterrupted, out)


def test_sigterm_to_one_of_two_processes_stops_both_after_the_same_step(hub_copies, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    command = [*_common(hub_copies), "-bs", "8", "--output_dir", str(out)]  # 2 steps an epoch, 4 in all
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    # Only process 1 receives the signal, at the end of step 1: the processes agree one step later.
    stopped = subprocess.run([*launch, str(HERE / "signal_at_step.py"), "1", "1", *command], capture_output=True,
                             text=True, timeout=300, cwd=HERE.parent, env=env)
    assert stopped.returncode != 0, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert f"training stopped after step 2 and saved {out / 'checkpoint-2'}" in stopped.stderr, stopped.stderr[-3000:]
    assert checkpoint_problem(str(out / "checkpoint-2")) is None
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-2"}  # the epoch's own save, at step 2 too
    assert not (out / "all_results.json").exists()
    # The same command continues from it: tested on one process above (to the uninterrupted run's weights).
