"""A checkpoint save that fails (a full disk above all) keeps the checkpoints saved before, leaves no staging folder,
and says in one line what happened and what to do, on every process together."""

import errno
import multiprocessing
import multiprocessing.connection
import os
import re
import traceback

import pytest
import torch
from test_checkpoints import _trainer

from synermix_hf import SynerMixTrainer, checkpoints
from synermix_hf.checkpoints import CheckpointSaveError
from synermix_hf.resume import checkpoint_problem


def _child(send, function, args):
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # a file-size limit would cut the files pytest captures the output in, too
    os.dup2(devnull, 2)
    torch.set_num_threads(1)
    try:
        send.send(("returned", function(*args)))
    except BaseException:  # the test reports it
        send.send(("raised", traceback.format_exc()))


def _in_a_forked_child(function, *args, timeout=120):
    """`function(*args)` (a module-level function) in a child process, whose result comes back through a pipe.

    The child is forked from a fork server that imported torch, transformers and synermix_hf once, not from this
    process: a process whose autograd has run cannot fork a child that trains ("Unable to handle autograd's threading
    in combination with fork-based multiprocessing"), and a fresh interpreter per test would spend ~10 s on imports.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "synermix_hf.checkpoints", "synermix_hf.cli.train"])
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, function, args), daemon=True)
    process.start()
    send.close()
    try:
        ready = multiprocessing.connection.wait([receive, process.sentinel], timeout)
        assert receive in ready or receive.poll(), f"the child {'timed out' if not ready else 'died'}"
        how, result = receive.recv()
        assert how == "returned", result
        return result
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()


def _train_until_the_disk_is_full(out, limit):
    """tests/save_on_a_full_disk.py's run into `out` in a child process (the file-size limit is per process)."""
    from save_on_a_full_disk import train_until_the_disk_is_full  # imports `resource`: Unix only

    return _in_a_forked_child(train_until_the_disk_is_full, out, limit)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="RLIMIT_FSIZE and SIGXFSZ are Unix's")
@pytest.mark.parametrize("limit", [1000, 6000], ids=["model.safetensors cut off", "rng_state.pth cut off"])
def test_a_save_that_fills_the_disk_says_so_in_one_line_and_keeps_the_checkpoint_before(tmp_path, limit):
    # Files past `limit` bytes cannot be written after checkpoint-3: at 1000 the weights fail (safetensors' error),
    # at 6000 the RNG state (torch.save's zip writer: "unexpected pos"), neither of which says "disk".
    out = tmp_path / "run"
    outcome = _train_until_the_disk_is_full(out, limit)
    assert outcome["type"] == "synermix_hf.checkpoints.CheckpointSaveError", outcome
    message = outcome["message"]
    assert "\n" not in message
    assert message.startswith(f"Could not save checkpoint {out / 'checkpoint-6'}: "), message
    assert re.search(r"\(\d+(\.\d)? (bytes|KiB|MiB|GiB|TiB|PiB) free on its disk\)", message), message
    assert "--save_total_limit" in message and "--output_dir" in message
    assert message.endswith("run the same command again: it continues from checkpoint-3, the last complete "
                            "checkpoint."), message  # fmt: skip
    # Nothing of checkpoint-6 is left (no tmp-checkpoint-6 either), and checkpoint-3 is whole.
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3"]
    assert checkpoint_problem(str(out / "checkpoint-3")) is None


class SaveFails(Exception):
    """Stands in for a failure during a save that is not a full disk."""


@pytest.mark.parametrize("failure", ["not a full disk, in the optimizer's save",
                                     "quota used up, completing it before the rename"])
def test_a_failed_save_removes_its_staging_folder_and_says_what_failed(tmp_path, monkeypatch, failure):
    error = SaveFails("not a disk problem") if failure.startswith("not") else OSError(errno.EDQUOT, "Quota exceeded")

    class FailingTrainer(SynerMixTrainer):
        def _save_optimizer_and_scheduler(self, output_dir):
            super()._save_optimizer_and_scheduler(output_dir)
            if self.state.global_step == 6 and isinstance(error, SaveFails):
                raise error

    follow_umask = checkpoints.follow_umask  # what completes a staged checkpoint last, once every process wrote

    def permissions_fail_at_step_6(folder):
        if folder.endswith("checkpoint-6") and isinstance(error, OSError):
            raise error
        follow_umask(folder)

    monkeypatch.setattr(checkpoints, "follow_umask", permissions_fail_at_step_6)
    out = tmp_path / "run"
    trainer = _trainer(out, trainer_class=FailingTrainer)
    trainer.args.max_steps = 6
    with pytest.raises(Exception) as raised:
        trainer.train()
    if isinstance(error, SaveFails):  # raised as it was
        assert raised.value is error
    else:
        assert isinstance(raised.value, CheckpointSaveError) and raised.value.__cause__ is error
        assert f"checkpoint {out / 'checkpoint-6'}: the disk quota is used up (" in str(raised.value)
        assert raised.value.checkpoint == str(out / "checkpoint-6")
        assert raised.value.last_complete == str(out / "checkpoint-3")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3"]
    assert checkpoint_problem(str(out / "checkpoint-3")) is None


def test_a_save_that_failed_on_another_process_stops_this_one_too(tmp_path):
    # One process of a distributed run: the processes tell each other how their part of the save went where they
    # would wait at a barrier, here with process 1 reporting a full disk. Each raises, none waits forever for it.
    out = tmp_path / "run"
    trainer = _trainer(out)
    trainer.args.max_steps = 6
    gather = trainer.accelerator.gather
    disk_full = 1 + checkpoints._CAUSE_CODES.index(checkpoints._DISK_FULL_CAUSES[errno.ENOSPC])
    told = []

    def gather_with_process_1(tensor):
        if trainer.state.global_step == 6 and not told and tensor.dtype == torch.int64 and tensor.shape == (1, 2):
            told.append(tensor.tolist())
            return torch.cat([gather(tensor), torch.tensor([[disk_full, 1]])])
        return gather(tensor)

    trainer.accelerator.gather = gather_with_process_1
    with pytest.raises(CheckpointSaveError) as raised:
        trainer.train()
    assert told == [[[0, 0]]]  # this process saved its part
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"Could not save checkpoint {out / 'checkpoint-6'} on process 1: the disk is full (")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3"]
    assert checkpoint_problem(str(out / "checkpoint-3")) is None


class SafetensorError(Exception):
    """What safetensors raises (a Rust `io::Error`, the errno only in the text)."""


def _chained(outer, inner):
    try:
        try:
            raise inner
        except type(inner) as error:
            raise outer from error
    except type(outer) as error:
        return error


def _during(outer, inner):
    try:
        try:
            raise inner
        except type(inner):
            raise outer  # the implicit context (`During handling of ...`) is what is tested
    except type(outer) as error:
        return error


@pytest.mark.parametrize(
    "error, cause",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is used up"),
        (OSError(errno.EFBIG, "File too large"), "a file grew past the largest size"),
        (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), "disk is full"),
        # safetensors 0.4 (the oldest supported) quotes Rust's Debug form
        (SafetensorError('Error while serializing: IoError(Os { code: 27, kind: FileTooLarge, message: "File too '
                         'large" })'), "a file grew past the largest size"),
        (SafetensorError('Error while serializing: IoError(Os { code: 13, kind: PermissionDenied, message: '
                         '"Permission denied" })'), None),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), "writing a file fai"),
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "writing a file failed"),
        (RuntimeError("basic_ios::clear: iostream error"), "writing a file failed"),
        (_chained(RuntimeError("save failed"), OSError(errno.ENOSPC, "No space left")), "the disk is full"),
        (_during(ValueError("cleanup failed"), OSError(errno.EDQUOT, "Disk quota exceeded")), "disk quota"),
        (ValueError("not a disk"), None),
        (OSError(errno.EACCES, "Permission denied"), None),
        (RuntimeError("CUDA out of memory"), None),
        (SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)"), None),
    ],
)  # fmt: skip
def test_a_full_disk_is_told_by_any_error_in_the_chain(error, cause):
    found = checkpoints._disk_full_cause(error)
    assert (found is None) if cause is None else (cause in found), found


def _script_on_a_full_disk(argv, out, limit):
    """The command line's `main(argv)` with files past `limit` bytes unwritable; its status and the run log."""
    import resource
    import signal

    from synermix_hf.cli import train

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    status = train.main(argv)
    return status, (out / "training_log.txt").read_text(), sorted(p.name for p in out.iterdir())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="RLIMIT_FSIZE and SIGXFSZ are Unix's")
def test_the_script_stops_on_a_full_disk_with_one_line_and_status_1(tmp_path, hub_copies):
    out = tmp_path / "run"
    argv = ["-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]), "--image_size", "16", "-mn",
            "resnet18", "-bs", "4", "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
            "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--do_eval", "false", "--output_dir", str(out)]
    # 1 MB: the run log, the stores of 16 px images and the run file fit; the weights (44 MB) do not.
    status, log, names = _in_a_forked_child(_script_on_a_full_disk, argv, out, 1_000_000)
    assert status == 1
    (stopped,) = [line for line in log.splitlines() if line.startswith("stopped: ")]
    assert stopped.startswith(f"stopped: Could not save checkpoint {out / 'checkpoint-1'}: a file grew past the largest size")
    assert not any(name.startswith(("tmp-checkpoint", "checkpoint")) for name in names), names
    assert "model.safetensors" not in names


def test_a_final_save_that_failed_on_another_process_stops_this_one_too_and_keeps_nothing(tmp_path):
    # After training every process saves the final model together (`save_final_model`): process 1 reports a full
    # disk, so this process, whose part went well, raises too instead of going on to an evaluation process 1 never
    # joins, and nothing of the final save is left (no config.json that would make the folder look finished).
    out = tmp_path / "run"
    trainer = _trainer(out)
    trainer.args.max_steps = 3
    trainer.train()
    gather = trainer.accelerator.gather
    disk_full = 1 + checkpoints._CAUSE_CODES.index(checkpoints._DISK_FULL_CAUSES[errno.ENOSPC])
    trainer.accelerator.gather = lambda tensor: torch.cat([gather(tensor), torch.tensor([[disk_full, 1]])])
    with pytest.raises(CheckpointSaveError) as raised:
        trainer.save_final_model()
    message = str(raised.value)
    assert message.startswith(f"Could not save the final model into {out} on process 1: the disk is full ("), message
    assert message.endswith("it continues from checkpoint-3, the last complete checkpoint, and saves the final "
                            "model."), message  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3"]
