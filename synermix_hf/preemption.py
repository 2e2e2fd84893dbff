"""Preemption: on SIGTERM, finish the optimizer step, save a complete checkpoint and stop, on every process together.

Schedulers (SLURM, Kubernetes, most cloud queues) stop a job by sending SIGTERM, waiting a grace period and then
sending SIGKILL; `torchrun` forwards the SIGTERM it receives to its workers and waits `--shutdown_timeout` (30 s by
default). Without a handler the process dies at once and everything since the last checkpoint is lost (up to an
epoch with per-epoch saves).

`PreemptionCallback` turns the signal into a request: the step in progress finishes, the Trainer saves a checkpoint at
that step (`StagedCheckpoints`: complete or absent) and training stops; `SynerMixTrainer.train` then raises
`TrainingPreempted`, which names the checkpoint, so that a caller (the command line: one line, a non-zero exit) never
mistakes a stopped run for a finished one. A second signal while the first is pending acts as it would without the
handler (the process ends), for a user who does not want to wait.

In a distributed run it is enough that one process receives the signal: the processes exchange their requests on a
gloo group of their own (CPU tensors, asynchronously), each step's exchange read one step later, so every process
stops after the same step and the device never waits for it. At the last step of the run the exchange is read at once,
so that a signal received during that step still gives its checkpoint.

transformers has `TrainingArguments.enable_jit_checkpoint` for the same purpose; its callback saves from whichever
process got the signal at a point the others may not reach (a deadlock in a distributed save), writes into
`checkpoint-N` directly (a half-written folder there when SIGKILL comes first) and then lets `train()` return as if
training had finished. `SynerMixTrainer` uses this module instead when that flag is set.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = ["PreemptionCallback", "TrainingPreempted"]

logger = logging.getLogger(__name__)


class TrainingPreempted(RuntimeError):
    """Training stopped on a signal after saving a complete checkpoint; running the same training again continues.

    Attributes:
        signal_name: The signal (`SIGTERM`).
        step: The optimizer step after which training stopped.
        checkpoint: The checkpoint saved at that step.
    """

    def __init__(self, signal_name: str, step: int, checkpoint: str):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(f"{signal_name} received: training stopped after step {step} and saved {checkpoint}. Run "
                         "the same command again to continue from it.")


class _AgreedRequest:
    """A request any process may raise, seen by all processes after the same step.

    Each step end starts an asynchronous MAX all-reduce of the local request on a gloo group (CPU, so no device
    synchronisation) and reads the previous step's, which finished long ago: all processes act on the same exchange.
    """

    def __init__(self):
        self._group: Any = None
        self._pending: tuple[Any, torch.Tensor] | None = None

    @staticmethod
    def _distributed() -> bool:
        import torch.distributed as dist

        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def start(self, timeout_s: float) -> None:
        """Call on every process at the start of training (creating the group is a collective call); `timeout_s`:
        how long an exchange waits for a process that stopped answering (`--ddp_timeout`, which a new group does not
        take from the job's: torch gives it 30 minutes)."""
        self._pending = None
        if self._distributed() and self._group is None:
            import datetime

            import torch.distributed as dist

            self._group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))

    def agreed(self, local: bool, read_now: bool = False) -> bool:
        """Whether any process had raised the request by the previous step's end (by this one's with `read_now`)."""
        if not self._distributed():
            return local
        import torch.distributed as dist

        earlier = self._read()
        flag = torch.tensor([int(local)], dtype=torch.int32)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, flag)
        return earlier or (read_now and self._read())

    def finish(self, wait: bool = True) -> None:
        """Wait for the exchange in flight (every process started it), so that none is left behind; `wait` False
        drops it (training failed, and the other processes may never read theirs)."""
        if wait:
            self._read()
        self._pending = None

    def _read(self) -> bool:
        if self._pending is None:
            return False
        work, flag = self._pending
        self._pending = None
        work.wait()
        return bool(flag.item())


class PreemptionCallback(TrainerCallback):
    """Stop training on SIGTERM after the current optimizer step, with a checkpoint saved at that step.

    The handler is installed when training begins and the previous one restored when it ends (outside training the
    signal acts as before). After training, `stopped_at` is the step training stopped after (None if it did not).

    Args:
        signals: The signals that request the stop.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.received: signal.Signals | None = None
        self.stopped_at: int | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._request = _AgreedRequest()

    # ---- the signal ----

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # a second signal: do what would have happened without the handler
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum)
        # No logging here: a handler may run inside the logging module's own lock.

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Training runs outside the main thread, where signal handlers cannot be set: %s will stop "
                           "it without a checkpoint.", ", ".join(sig.name for sig in self.signals))
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    # ---- the training loop ----

    def on_train_begin(self, args, state, control, **kwargs):
        self.received, self.stopped_at = None, None
        self._request.start(args.ddp_timeout)
        self._install()

    def on_step_end(self, args, state, control, **kwargs):
        last = state.max_steps > 0 and state.global_step >= state.max_steps
        if self.stopped_at is None and self._request.agreed(self.received is not None, read_now=last):
            self.stopped_at = state.global_step
            logger.warning("%s received: stopping after step %d with a checkpoint.",
                           (self.received or signal.SIGTERM).name, state.global_step)
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False  # the grace period is for the checkpoint
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None:  # saved at the step's end already
            control.should_save = False
            control.should_evaluate = False
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self, failed: bool = False) -> None:
        """Restore the previous handlers (and settle the exchange in flight unless training `failed`)."""
        self._request.finish(wait=not failed)
        self._restore()

    def preempted(self, output_dir: str) -> TrainingPreempted | None:
        """The error that says training stopped on the signal, naming its checkpoint in `output_dir`; None if it did
        not stop."""
        if self.stopped_at is None:
            return None
        checkpoint = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.stopped_at}")
        return TrainingPreempted((self.received or signal.SIGTERM).name, self.stopped_at, checkpoint)
