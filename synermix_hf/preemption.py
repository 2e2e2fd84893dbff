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

__all__ = ["CtrlC", "EvaluationStopped", "PreemptionCallback", "TrainingPreempted"]

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
        super().__init__(f"{_signal_text(signal_name)} received: training stopped after step {step} and saved "
                         f"{checkpoint}. Run the same command again to continue from it.")

    @property
    def exit_status(self) -> int:
        """The shell's status for the signal: 128 + its number (143 for SIGTERM, 130 for SIGINT)."""
        return 128 + int(signal.Signals[self.signal_name])


def _signal_text(name: str) -> str:
    return "SIGINT (Ctrl-C)" if name == "SIGINT" else name


class EvaluationStopped(Exception):
    """Raised from within an evaluation during training when a stop signal came: `SynerMixTrainer.train` saves a
    checkpoint at the step and stops, instead of finishing the evaluation (a scheduler's grace period may not last
    a whole evaluation)."""


class CtrlC:
    """Ctrl-C (SIGINT) for a command-line run outside training, where `PreemptionCallback` does not handle it.

    Python's own handler raises `KeyboardInterrupt` wherever the program is, also inside a finalizer (a weakref
    callback, a `__del__`), where Python prints "Exception ignored in ..." and goes on as if no key had been pressed.
    Here the press is also remembered, and `check()` at the script's safe points raises it again if it was swallowed.
    A second Ctrl-C ends the process at once. A run started with SIGINT ignored (`nohup`, a background job) keeps it
    ignored.
    """

    def __init__(self) -> None:
        self.pressed = False
        self._installed = False
        self._previous: Any = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN:
            return
        self._previous = signal.signal(signal.SIGINT, self._handle)
        self._installed = True

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pressed:  # the second press: stop at once
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.raise_signal(signal.SIGINT)
            return
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """A safe point: raise the `KeyboardInterrupt` of a press that a finalizer swallowed."""
        if self.pressed:
            raise KeyboardInterrupt


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
    signal acts as before). After training, `stopped_at` is the step training stopped after (None if it did not). A
    signal during an evaluation within training stops it after the evaluation batch in progress (`EvaluationStopped`,
    on every process after the same batch), and the checkpoint is saved at the step. A second signal ends the process
    at once, after one line on stderr (process 0) and a call of each of `listeners` with that line.

    Args:
        signals: The signals that request the stop (the command line adds SIGINT, Ctrl-C).

    Attributes:
        listeners: Callables given the line that says the process ends on a second signal (the command line writes it
            into the run log). They run in the signal handler: keep them to a short write.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.received: signal.Signals | None = None
        self.stopped_at: int | None = None
        self.listeners: list[Any] = []
        self._previous: dict[signal.Signals, Any] = {}
        self._request = _AgreedRequest()
        self._training = False
        self._process_index = 0

    # ---- the signal ----

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # a second signal: end the process at once, as without the handler
            line = (f"{_signal_text(signal.Signals(signum).name)} received again: stopped at once, without saving "
                    "the steps since the last checkpoint. Run the same command again to continue from the last "
                    "complete checkpoint.")
            if self._process_index == 0:
                os.write(2, (line + "\n").encode())  # not print: the handler may run inside a write to stderr
            for listener in self.listeners:
                try:
                    listener(line)
                except Exception:  # noqa: BLE001,S110 - ending the process matters more than the record
                    pass
            self._restore()
            if signum == signal.SIGINT:  # not the previous handler, which raises KeyboardInterrupt
                signal.signal(signum, signal.SIG_DFL)
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
        self._training, self._process_index = True, args.process_index
        self._request.start(args.ddp_timeout)
        self._install()

    def on_prediction_step(self, args, state, control, **kwargs):
        # Every process evaluates the same number of batches, so each exchanges the request after each of them.
        if self._training and self.stopped_at is None and self._request.agreed(self.received is not None):
            self.stopped_at = state.global_step
            raise EvaluationStopped(f"{(self.received or signal.SIGTERM).name} received during an evaluation")

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
        self._training = False
        self._request.finish(wait=not failed)
        self._restore()

    def preempted(self, output_dir: str) -> TrainingPreempted | None:
        """The error that says training stopped on the signal, naming its checkpoint in `output_dir`; None if it did
        not stop."""
        if self.stopped_at is None:
            return None
        checkpoint = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.stopped_at}")
        return TrainingPreempted((self.received or signal.SIGTERM).name, self.stopped_at, checkpoint)
