"""One writer per output folder: a lock held by the run that writes into it.

A scheduler that requeues a job while the old one still runs, or a user who starts the same command twice, would
have two runs write one folder: their run logs interleave, one removes the other's staging folder as a leftover, and
a checkpoint fails or is mixed. `hold_output_dir(folder)` takes `synermix_run.lock` in the folder with `fcntl.flock`
(the kernel releases it when the holder dies, on any host of a file system that supports it) and writes the holder's
host, process id and start time into it; a second run stops at once with one line naming the holder.

* A lock whose holder is gone is taken over with one warning: the file names a holder but its `flock` is free (the
  holder was killed, on any host), or the `flock` is held but the holder named is on this host and its process is not
  alive (an orphaned child, such as a DataLoader worker, still has the file open: the lock file is replaced).
* The processes of one job (torchrun, accelerate) share it: only process 0 takes it, before any process writes.
* On a file system without `flock` (Lustre without the `flock` mount option) the holder named in the file decides:
  a live process on this host holds the folder; a holder on another host cannot be checked, and is taken over with
  one warning naming it.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from .errors import UsageError

__all__ = ["LOCK_FILE", "hold_output_dir"]

logger = logging.getLogger("synermix_hf.cli.train")

LOCK_FILE = "synermix_run.lock"


def _holder_text(holder: dict[str, Any]) -> str:
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


def _read_holder(path: str) -> dict[str, Any] | None:
    """The holder recorded in the lock file; None when it names none (released, or never written)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return None
    if not text.strip():
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return {"host": "?", "pid": "?", "started": "?"}
    return holder if isinstance(holder, dict) else None


def _alive_here(holder: dict[str, Any]) -> bool | None:
    """Whether the holder's process is alive; None when it is on another host (cannot be told from here)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class _Lock:
    def __init__(self, folder: str, created: bool):
        self.folder, self.created = folder, created
        self.path = os.path.join(folder, LOCK_FILE)
        self.descriptor: int | None = None

    def take(self) -> None:
        for _ in range(5):  # the lock file may be replaced under us (a take-over); try the new one
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(self.path)
                os.close(descriptor)
                if holder is not None and _alive_here(holder) is False:
                    logger.warning("Taking over --output_dir %s from %s: that process is gone (a process it left, "
                                   "such as a DataLoader worker, still held its lock).", self.folder,
                                   _holder_text(holder))
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.path)  # the orphan keeps the old file; this run locks a new one
                    continue
                raise UsageError(
                    f"--output_dir {self.folder} is in use by another run: "
                    f"{_holder_text(holder) if holder else 'a process that has not written its name yet'}. Wait for "
                    "it to finish (or stop it), or choose another --output_dir.") from None
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(descriptor)
                    raise
                self._without_flock(descriptor)
                break
            try:
                same = os.fstat(descriptor).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # replaced by a take-over while we waited: lock the file that is there now
                os.close(descriptor)
                continue
            previous = _read_holder(self.path)
            if previous is not None and previous.get("pid") != os.getpid():
                logger.warning("Taking over --output_dir %s from %s, which stopped without releasing it.",
                               self.folder, _holder_text(previous))
            self.descriptor = descriptor
            break
        else:
            raise UsageError(f"--output_dir {self.folder}: could not take its lock {self.path} (it keeps being "
                             "replaced by another run). Choose another --output_dir.")
        self._write_holder()

    def _without_flock(self, descriptor: int) -> None:
        holder = _read_holder(self.path)
        if holder is not None and holder.get("pid") != os.getpid():
            alive = _alive_here(holder)
            if alive:
                os.close(descriptor)
                raise UsageError(f"--output_dir {self.folder} is in use by another run: {_holder_text(holder)}. Wait "
                                 "for it to finish (or stop it), or choose another --output_dir.")
            logger.warning("Taking over --output_dir %s from %s (%s; this file system has no flock to tell).",
                           self.folder, _holder_text(holder),
                           "that process is gone" if alive is False else "on another host, which may still run")
        self.descriptor = descriptor

    def _write_holder(self) -> None:
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(self.descriptor, 0)
        os.pwrite(self.descriptor, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        if self.descriptor is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.descriptor, 0)  # names no holder: the next run takes it without a warning
        if self.created and set(os.listdir(self.folder)) == {LOCK_FILE}:
            # This run created the folder and wrote nothing else (it stopped before): leave nothing behind.
            with contextlib.suppress(OSError):
                os.remove(self.path)
                os.rmdir(self.folder)
        os.close(self.descriptor)  # releases the flock
        self.descriptor = None


@contextlib.contextmanager
def hold_output_dir(folder: str) -> Iterator[None]:
    """Hold `folder`'s lock for the `with` block (creating the folder if needed); released at its end.

    Args:
        folder: The run's output folder.

    Raises:
        UsageError: another live run holds the folder (the message names its host, process and start).
    """
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    lock = _Lock(folder, created)
    try:
        lock.take()
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.remove(lock.path)
                os.rmdir(folder)
        raise
    try:
        yield
    finally:
        lock.release()
