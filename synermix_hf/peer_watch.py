"""A process of a distributed job that stops answering (frozen, SIGSTOP, a node lost): which one, in one line.

Every process group of the run waits `--ddp_timeout` for a collective (the job's, opened with it also on the CPU,
`synermix_hf.training_args`; the preemption exchange's, `synermix_hf.preemption`); then the collective raises on the
processes still running (gloo: "Timed out waiting 10000ms for recv operation to complete"), which says nothing of who
stopped answering. So each process beats a heartbeat into the job's store (the launcher's key-value store, which every
process reaches), a counter it adds to every second from a daemon thread, which a frozen process stops with it. When a
collective times out, `PeerWatch.stopped_answering` reads the counters twice a few seconds apart: the processes whose
counter did not move are the ones that stopped answering, named in `PeerStoppedAnswering`'s one line.

    watch = PeerWatch()
    with watch.collectives(timeout_s=args.ddp_timeout):   # around train(), evaluate(), predict()
        ...
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch.distributed as dist

__all__ = ["PeerStoppedAnswering", "PeerWatch", "is_collective_timeout"]

_KEY = "synermix/heartbeat/{rank}"
_BEAT_S = 1.0
_LISTEN_S = 4.0  # four beats: a process that beats none of them is frozen


class PeerStoppedAnswering(RuntimeError):
    """A collective of a distributed job timed out (`--ddp_timeout`) because other processes stopped answering.

    Attributes:
        ranks: The ranks whose heartbeat stopped (empty: every heartbeat went on, so a process is stuck, not frozen).
        world_size: The job's number of processes.
    """

    def __init__(self, rank: int, ranks: list[int], world_size: int, timeout_s: float):
        self.ranks, self.world_size = ranks, world_size
        if ranks:
            who = (f"process {ranks[0]}" if len(ranks) == 1 else
                   "processes " + ", ".join(str(r) for r in ranks))
            what = f"{who} of {world_size} stopped answering (frozen, stopped or its node lost)"
        else:
            what = (f"another process of the {world_size} did not join a collective, though every process is still "
                    "alive (stuck in I/O or a long computation?)")
        super().__init__(f"process {rank}: {what}: no answer within --ddp_timeout ({timeout_s:g} s), so this "
                         "process stops. Run the same command again once the job's processes are back: it continues "
                         "from the last complete checkpoint.")


def is_collective_timeout(error: BaseException) -> bool:
    """Whether `error` is a collective that waited its process group's timeout: gloo's "Timed out waiting ...", or
    torch's distributed errors that say timeout."""
    if not isinstance(error, RuntimeError) or isinstance(error, PeerStoppedAnswering):
        return False
    text = str(error).lower()
    distributed = isinstance(error, getattr(dist, "DistError", ())) or "gloo" in text or "nccl" in text
    return "timed out waiting" in text or (distributed and ("timed out" in text or "timeout" in text))


class PeerWatch:
    """Each process's heartbeat in the job's store, and the ranks whose heartbeat stopped."""

    def __init__(self):
        self._store: Any = None
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._store is not None

    def start(self) -> None:
        """Start beating (once; a no-op outside a distributed job)."""
        if self._thread is not None or not (dist.is_available() and dist.is_initialized()
                                            and dist.get_world_size() > 1):
            return
        self._store = dist.distributed_c10d._get_default_store()
        self._rank, self._world_size = dist.get_rank(), dist.get_world_size()
        self._thread = threading.Thread(target=self._beat, name="synermix-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        key = _KEY.format(rank=self._rank)
        while True:
            try:
                self._store.add(key, 1)
            except Exception:  # the store is gone (the job ended, its host lost): nothing left to tell
                return
            time.sleep(_BEAT_S)

    def _counts(self) -> list[int]:
        return [int(self._store.add(_KEY.format(rank=rank), 0)) for rank in range(self._world_size)]

    def silent_ranks(self) -> list[int]:
        """The other ranks whose heartbeat did not move over a few seconds."""
        before = self._counts()
        time.sleep(_LISTEN_S)
        after = self._counts()
        return [rank for rank in range(self._world_size) if rank != self._rank and after[rank] == before[rank]]

    @contextlib.contextmanager
    def collectives(self, timeout_s: float) -> Iterator[None]:
        """Around code that runs the job's collectives: a collective that times out raises `PeerStoppedAnswering`
        naming the processes that stopped answering (from the timeout's error)."""
        self.start()
        try:
            yield
        except Exception as error:
            if not (self.active and is_collective_timeout(error)):
                raise
            try:
                silent = self.silent_ranks()
            except Exception:  # the store cannot be reached either: say what is known
                silent = []
            raise PeerStoppedAnswering(self._rank, silent, self._world_size, timeout_s) from error
