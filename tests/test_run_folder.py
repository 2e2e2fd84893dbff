"""An --output_dir is checked before anything is loaded, and a run never continues from another run's checkpoints."""

import json
import os
import signal
import subprocess

import pytest
from test_preemption import SignalAtStep

from synermix_hf.cli import train
from synermix_hf.cli.output_dir import RUN_FILE


def _small_run(hub_copies) -> list[str]:
    return ["-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "--image_size", "16", "-mn", "resnet18",
            "-bs", "4", "--max_steps", "3", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
            "--do_eval", "false"]


def test_an_output_dir_that_cannot_be_written_is_refused_before_the_data_is_loaded(tmp_path, capsys):
    # The dataset does not exist: an error about it would mean the output folder was checked too late.
    missing_data = ["--dataset_path", str(tmp_path / "no-such-dataset"), "--max_steps", "1"]
    a_file = tmp_path / "results.txt"
    a_file.write_text("a user's file")
    assert train.main([*missing_data, "--output_dir", str(a_file)]) == 2
    assert f"--output_dir {a_file} is a file, not a folder" in capsys.readouterr().err
    assert a_file.read_text() == "a user's file"

    under_a_file = a_file / "run"
    assert train.main([*missing_data, "--output_dir", str(under_a_file)]) == 2
    assert f"--output_dir {under_a_file} cannot be written: Not a directory" in capsys.readouterr().err


def test_an_output_dir_on_a_read_only_file_system_is_refused_before_the_data_is_loaded(tmp_path, capsys):
    mount_point = tmp_path / "read-only"
    mount_point.mkdir()
    if os.geteuid() == 0:  # root writes into any folder whatever its mode: a read-only file system stops it
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount_point)],
                                 capture_output=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    else:
        mount_point.chmod(0o555)
    try:
        out = mount_point / "runs" / "a"
        assert train.main(["--dataset_path", str(tmp_path / "no-such-dataset"), "--output_dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--output_dir {out} cannot be written: " in err
        assert ("Read-only file system" if os.geteuid() == 0 else "Permission denied") in err
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(mount_point)], check=True)
        mount_point.chmod(0o755)
    assert not out.exists()


def test_a_run_does_not_continue_from_another_runs_checkpoints(hub_copies, tmp_path, capsys):
    out = tmp_path / "run"
    first = [*_small_run(hub_copies), "--save_strategy", "steps", "--save_steps", "1", "--output_dir", str(out)]
    original_run = train.run
    try:  # stopped after its first checkpoint (SIGTERM), as a preempted run is
        train.run = lambda argv, **kwargs: original_run(argv, callbacks=[SignalAtStep(1)])
        assert train.main(first) == 128 + signal.SIGTERM
    finally:
        train.run = original_run
    recorded = json.loads((out / RUN_FILE).read_text())
    assert recorded["total train batch size"] == 4 and recorded["training examples"] == 18
    capsys.readouterr()

    # Another batch size, another dataset (here fewer of its images): refused, naming what differs.
    assert train.main([*first, "-bs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint-1'} belongs to another run (total train batch size: 4 there, 2 now)" in err
    assert "another --output_dir" in err and "Traceback" not in err
    assert train.main([*first, "--max_train_samples", "12"]) == 2
    err = capsys.readouterr().err
    assert "training examples: 18 there, 12 now" in err and "training split fingerprint" in err
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-1"}  # nothing of that run was touched
    assert json.loads((out / RUN_FILE).read_text()) == recorded

    assert train.main(first) == 0  # the same run continues
    printed = capsys.readouterr().out
    assert f"Continuing the interrupted run from {out / 'checkpoint-1'}" in printed
    # The console says what the run trains, and how to turn SynerMix on when it is off.
    assert "Method : the plain baseline (cross-entropy of the augmented view) (the paper's wo-RA&ER), SynerMix off" \
        in printed and "Add --beta 0.1 --inter_mixup manifold_mixup for SynerMix" in printed
    assert "Recipe : paper: SGD (lr 0.1, momentum 0.9, nesterov False, weight decay 0.0005)" in printed
    assert "Views  : " in printed
