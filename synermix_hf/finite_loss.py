"""Stop training at a non-finite loss, without making the GPU wait for the loss each step."""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

__all__ = ["FiniteLossCallback", "FiniteLossCheck"]


class FiniteLossCheck:
    """Stop training with `FloatingPointError` when a training loss is not finite, naming the step and the components.

    On CUDA the loss is copied to the host without waiting and read one step later (or before the next log,
    evaluation or checkpoint, and at the end of training), so the check never makes the GPU drain its queue; the
    update of the offending step has then been applied, and the error says so. On other devices (the CPU has no
    queue to drain) it is read at once, before the optimizer step.

    Args:
        deferred_devices: Device types whose check is read one step late.
    """

    def __init__(self, deferred_devices: tuple[str, ...] = ("cuda",)):
        self.deferred_devices = deferred_devices
        self._pending: tuple[int, list[str], torch.Tensor, Any] | None = None

    def submit(self, step: int, loss: torch.Tensor, components: dict[str, torch.Tensor]) -> None:
        names = list(components)
        values = torch.stack([loss.detach().float().reshape(()), *(v.detach().float().reshape(()) for v in
                                                                     components.values())])  # fmt: skip
        if values.device.type not in self.deferred_devices:
            self._check(step, names, values, applied=False)
            return
        self.flush()
        event = None
        if values.device.type == "cuda":
            values = values.to("cpu", non_blocking=True)  # into pinned memory, read after the event
            event = torch.cuda.Event()
            event.record()
        self._pending = (step, names, values, event)

    def flush(self) -> None:
        """Read the pending check (waits only for the copy of that step's loss)."""
        if self._pending is None:
            return
        step, names, values, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        self._check(step, names, values, applied=True)

    def reset(self) -> None:
        self._pending = None

    @staticmethod
    def _check(step: int, names: list[str], values: torch.Tensor, applied: bool) -> None:
        if bool(torch.isfinite(values[0])):
            return
        loss, *parts = values.tolist()
        text = ", ".join(f"loss_{name}={value:.6g}" for name, value in zip(names, parts))
        consequence = (
            "Training stopped after that step's update (on CUDA the check reads the loss one step late, so as not to "
            "stall the GPU); resume from the last checkpoint" if applied else "The step was not applied"
        )
        raise FloatingPointError(
            f"Non-finite training loss at global step {step}: loss={loss:.6g} ({text}). {consequence}. Lower the "
            "learning rate, use bf16 instead of fp16, or set max_grad_norm."
        )


class FiniteLossCallback(TrainerCallback):
    """Settle a pending `FiniteLossCheck` before the Trainer logs, evaluates, saves or stops.

    Those read the weights or the loss, so nothing trained on a non-finite loss is logged, evaluated or saved. The
    Trainer's own flow callback sets `control` at the end of a step or an epoch, before this one runs.

    Args:
        check: The trainer's check.
    """

    def __init__(self, check: FiniteLossCheck):
        self.check = check

    def _settle(self, control: Any) -> None:
        if control.should_log or control.should_evaluate or control.should_save or control.should_training_stop:
            self.check.flush()

    def on_step_end(self, args, state, control, **kwargs):
        self._settle(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._settle(control)
