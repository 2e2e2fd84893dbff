"""An --output_dir is checked before anything is loaded, and a run never continues from another run's checkpoints."""

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from test_preemption import SignalAtStep

from synermix_hf.cli import train
from synermix_hf.cli.folder_lock import LOCK_FILE, hold_output_dir
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
        assert train.main(["-ds", "cifar100", "--dataset_path", str(tmp_path / "no-such-dataset"), "--output_dir",
                           str(out)]) == 2
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
    original_run, umask = train.run, os.umask(0o027)
    try:  # stopped after its first checkpoint (SIGTERM), as a preempted run is
        train.run = lambda argv, **kwargs: original_run(argv, callbacks=[SignalAtStep(1)])
        assert train.main(first) == 128 + signal.SIGTERM
    finally:
        train.run = original_run
        os.umask(umask)
    recorded = json.loads((out / RUN_FILE).read_text())
    assert recorded["total train batch size"] == 4 and recorded["training examples"] == 18
    assert json.loads((out / "checkpoint-1" / RUN_FILE).read_text()) == recorded  # each checkpoint carries it
    # The checkpoint's files follow the umask (safetensors alone writes 0600).
    assert oct((out / "checkpoint-1" / "model.safetensors").stat().st_mode & 0o777) == oct(0o640)
    capsys.readouterr()

    # Another batch size, another dataset (here fewer of its images): refused, naming what differs.
    assert train.main([*first, "-bs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint-1'} belongs to another run (total train batch size: 4 there, 2 now)" in err
    assert "another --output_dir" in err and "Traceback" not in err
    assert train.main([*first, "--max_train_samples", "12"]) == 2
    err = capsys.readouterr().err
    assert "training examples: 18 there, 12 now" in err and "training split fingerprint" in err
    # The record beside the checkpoints lost or garbled: the checkpoint's own record still tells.
    for damage in ("deleted", "garbled"):
        if damage == "deleted":
            (out / RUN_FILE).unlink()
        else:
            (out / RUN_FILE).write_text('{"dataset": ')
        assert train.main([*first, "-bs", "2", "-beta", "0.5"]) == 2, damage
        captured = capsys.readouterr()
        assert (f"{out / 'checkpoint-1'} belongs to another run (method: baseline (alpha 1) there, synermix-b0.5 "
                "(alpha 1) now; total train batch size: 4 there, 2 now)") in captured.err, damage
        assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
        assert "Continuing" not in captured.out  # nothing said of continuing before the check refused it
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-1"}  # nothing of that run was touched

    assert train.main(first) == 0  # the same run continues, and the record beside the checkpoints is whole again
    assert json.loads((out / RUN_FILE).read_text()) == recorded
    printed = capsys.readouterr().out
    assert f"Continuing the interrupted run from {out / 'checkpoint-1'}" in printed
    # The console says what the run trains, and how to turn SynerMix on when it is off.
    assert "Method : the plain baseline (cross-entropy of the augmented view) (the paper's wo-RA&ER), SynerMix off" \
        in printed and "Add --beta 0.1 --inter_mixup manifold_mixup for SynerMix" in printed
    assert "Recipe : paper: SGD (lr 0.1, momentum 0.9, nesterov False, weight decay 0.0005)" in printed
    assert "Views  : " in printed


def test_a_second_command_on_a_folder_in_use_stops_at_once_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    # The dataset does not exist: an error about it would mean the folder's lock was looked at too late.
    command = ["--dataset_path", str(tmp_path / "no-such-dataset"), "--max_steps", "1", "--output_dir", str(out)]
    with hold_output_dir(str(out)):  # what the first command holds while it runs
        (out / "tmp-checkpoint-5").mkdir()  # its checkpoint being saved: not a leftover to tidy away
        assert train.main(command) == 2
        assert (out / "tmp-checkpoint-5").is_dir()
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output_dir {out} is in use by another run: process {os.getpid()} on "
                          f"{socket.gethostname()}, started "), err
    assert err.count("\n") == 1
    assert json.loads((out / LOCK_FILE).read_text() or "{}") == {}  # released: it names no holder


@pytest.mark.parametrize("holder", ["killed", "killed, its orphaned worker still holding the lock"])
def test_a_lock_whose_holder_is_gone_is_taken_over_with_one_warning(tmp_path, capsys, holder):
    out = tmp_path / "run"
    out.mkdir()
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    record = json.dumps({"host": socket.gethostname(), "pid": gone, "started": "2026-01-01T00:00:00+00:00"})
    orphan = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    os.write(orphan, record.encode())
    if holder.startswith("killed,"):  # the orphan's copy of the descriptor keeps the flock held
        fcntl.flock(orphan, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        os.close(orphan)
    try:  # taken over, the run goes on: to the missing dataset (a cheap stop after the lock)
        assert train.main(["-ds", "cifar100", "--dataset_path", str(tmp_path / "no-such-dataset"), "--output_dir",
                           str(out)]) == 2
    finally:
        if holder.startswith("killed,"):
            os.close(orphan)
    captured = capsys.readouterr()
    assert captured.out.count("Taking over --output_dir") == 1, captured.out
    assert f"Taking over --output_dir {out} from process {gone} on {socket.gethostname()}, started " in captured.out
    assert "no-such-dataset" in captured.err and "in use by another run" not in captured.err
    assert (out / LOCK_FILE).read_text() == ""  # released: it names no holder
