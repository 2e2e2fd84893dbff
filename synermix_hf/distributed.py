"""Buffers under DistributedDataParallel when one training step runs the model twice before its backward pass.

A SynerMix step calls the model once on the original view (SynerMix-Intra) and once on the augmented view (the
inter-class term), each pass with its own batch statistics as in the reference, and then runs one backward pass.
DDP's default `broadcast_buffers=True` copies process 0's buffers (batch-norm running statistics) into every process
in place at the start of *each* forward call. On torch 2.4-2.11 batch norm saves its running statistics for the
backward pass, so the copy before the second pass changes a tensor the first pass saved and the backward pass fails
("one of the variables needed for gradient computation has been modified by an inplace operation").

`StepBufferBroadcast` keeps what DDP's broadcast is for (every process holds process 0's buffers) but does it once,
before the first forward pass of a step: it turns DDP's per-forward broadcast off on the wrapped model and broadcasts
the buffers itself. Process 0's buffers, the ones saved and evaluated, evolve exactly as under DDP's broadcast; the
other processes' buffers are overwritten at every step, as before. It costs one broadcast per dtype per step instead
of one per forward pass, and never makes the host wait for the device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["StepBufferBroadcast", "find_ddp", "gather_step_batch", "is_data_parallel"]


def is_data_parallel() -> bool:
    """Whether this process is one of several of a `torch.distributed` job."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_step_batch(
    features: torch.Tensor, labels: torch.Tensor, rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every process's features and labels of this step, in process order, as one batch.

    The gradient of what is computed from the gathered features flows back to each process's own features (the
    gather's backward pass sums, over the processes, the gradients of each process's rows). So when every process
    computes the same loss from the gathered batch, DDP's average of the processes' gradients is that loss's
    gradient.

    Each process pads its batch to `rows` rows, the same on every process, so that no process waits for the others'
    sizes (and the host never waits for the device).

    Args:
        features: This process's features `[b, ...]`, b <= `rows`.
        labels: Their labels `[b]`.
        rows: The most rows any process's batch can have.

    Returns:
        `(features, labels, valid)`: `[N * rows, ...]`, `[N * rows]` (padding labelled 0) and the mask of the rows
        that are not padding.
    """
    if features.shape[0] > rows:
        raise ValueError(
            f"This process's batch of {features.shape[0]} examples is larger than {rows}, the most a step's shard can "
            "hold (twice `per_device_train_batch_size`)."
        )
    padding = rows - features.shape[0]
    padded = torch.cat([features, features.new_zeros(padding, *features.shape[1:])])
    padded_labels = torch.cat([labels, labels.new_full((padding,), -1)])
    gathered = torch.cat(torch.distributed.nn.functional.all_gather(padded))
    label_parts = [torch.empty_like(padded_labels) for _ in range(dist.get_world_size())]
    dist.all_gather(label_parts, padded_labels)
    gathered_labels = torch.cat(label_parts)
    valid = gathered_labels >= 0
    return gathered, gathered_labels.clamp_min(0), valid


def find_ddp(model: Any) -> DistributedDataParallel | None:
    """The `DistributedDataParallel` wrapper in `model` (itself, or under `torch.compile`'s wrapper), or None."""
    for _ in range(4):  # a compiled DDP model is one wrapper deep; never loop on a cycle
        if isinstance(model, DistributedDataParallel):
            return model
        model = getattr(model, "_orig_mod", None)
        if model is None:
            return None
    return None


class StepBufferBroadcast:
    """Broadcast a DDP model's buffers from its first process once per training step, instead of DDP's broadcast
    before every forward pass (which breaks steps with two forward passes on torch < 2.12).

    Call `before_step(model)` at the start of every training micro-step, before the first forward pass. The first
    call takes over the broadcast when the model is DDP-wrapped with `broadcast_buffers` on (DDP's and the Trainer's
    default); a model without DDP, without buffers, or with `ddp_broadcast_buffers=False` is left alone.
    """

    def __init__(self):
        self._ddp: DistributedDataParallel | None = None
        self._buffers: list[list[torch.Tensor]] = []
        self._source = 0

    @property
    def active(self) -> bool:
        """Whether this object broadcasts the buffers (it took the broadcast over from DDP)."""
        return self._ddp is not None

    def before_step(self, model: nn.Module) -> None:
        ddp = find_ddp(model)
        if ddp is None:
            return
        if ddp is not self._ddp:
            self._take_over(ddp)
        # Like DDP, skip the broadcast in micro-steps that accumulate gradients without synchronising (`no_sync`).
        if self._ddp is not None and ddp.require_backward_grad_sync:
            self._broadcast()

    def _take_over(self, ddp: DistributedDataParallel) -> None:
        self._ddp = None
        buffers = [buffer for buffer in ddp.module.buffers() if buffer is not None]
        if not ddp.broadcast_buffers or not buffers:
            return
        ddp.broadcast_buffers = False  # a property over `forward_sync_buffers` from torch 2.13, an attribute before
        by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for buffer in buffers:
            by_dtype.setdefault((buffer.dtype, buffer.device), []).append(buffer)
        self._buffers = list(by_dtype.values())
        self._group = ddp.process_group
        self._source = dist.get_global_rank(self._group, 0)  # DDP's authoritative process
        self._is_source = dist.get_rank() == self._source
        self._ddp = ddp

    @torch.no_grad()
    def _broadcast(self) -> None:
        for buffers in self._buffers:
            flat = torch.cat([buffer.reshape(-1) for buffer in buffers])
            dist.broadcast(flat, src=self._source, group=self._group)
            if self._is_source:
                continue  # its buffers are the source: leave their version counters alone
            offset = 0
            for buffer in buffers:
                size = buffer.numel()
                buffer.copy_(flat[offset:offset + size].view_as(buffer))
                offset += size
