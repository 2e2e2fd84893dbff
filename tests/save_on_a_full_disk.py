"""Train the tiny model of tests/test_checkpoints.py with checkpoints every 3 steps, as if the disk filled up after
checkpoint-3: from then on, writing a file past LIMIT bytes fails (EFBIG) on the processes listed in PROCESSES.

    python tests/save_on_a_full_disk.py OUT LIMIT                                    # one process
    torchrun --nproc_per_node 2 tests/save_on_a_full_disk.py OUT LIMIT 1             # only process 1 fails

`RLIMIT_FSIZE` stands in for a full disk (with SIGXFSZ ignored, the write fails with EFBIG instead of killing the
process). Each process prints one JSON line, what its `train()` raised (`train_until_the_disk_is_full`).
tests/test_checkpoint_failures.py calls that function in a forked child instead, which saves the imports. Its
directory, tests/, is the script's first import path, so the test module's helpers import as they are.
"""

import json
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from test_checkpoints import _trainer
from transformers import TrainerCallback


class FillTheDiskAfterCheckpoint3(TrainerCallback):
    def __init__(self, limit: int, processes: set[int] | None):
        self.limit, self.processes = limit, processes

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 3 and (self.processes is None or args.process_index in self.processes):
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def train_until_the_disk_is_full(out: Path, limit: int, processes: set[int] | None = None) -> dict[str, Any]:
    """Train 6 steps into `out`, files limited to `limit` bytes after checkpoint-3 (on `processes`, default all).

    Returns:
        `{"process", "type", "message"}`: what `train()` raised (its class's full name, its message), or None twice.
    """
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    trainer = _trainer(out)
    trainer.args.max_steps = 6
    trainer.add_callback(FillTheDiskAfterCheckpoint3(limit, processes))
    outcome = {"process": trainer.args.process_index, "type": None, "message": None}
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        trainer.train()
    except Exception as error:  # reported to the test, which checks what it is
        outcome.update(type=f"{type(error).__module__}.{type(error).__qualname__}", message=str(error))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)  # the disk is "freed": the outcome can be written out
    return outcome


if __name__ == "__main__":
    failing = {int(process) for process in sys.argv[3].split(",")} if len(sys.argv) > 3 else None
    print(json.dumps(train_until_the_disk_is_full(Path(sys.argv[1]), int(sys.argv[2]), failing)), flush=True)
    if torch.distributed.is_initialized():  # a gloo group torn down at interpreter exit can abort the process
        torch.distributed.barrier()  # no process leaves while its peer still talks to it
        torch.distributed.destroy_process_group()
