"""Run run_image_classification.py and SIGKILL the process right after it saves checkpoint-N.

    python tests/kill_after_checkpoint.py N <synermix-train arguments>

The callback is added to the script's own trainer; everything else is the script as users run it.
"""

import os
import signal
import sys

from transformers import TrainerCallback

from synermix_hf.cli import train
from synermix_hf.trainer import SynerMixTrainer


class KillAfterCheckpoint(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


kill_step = int(sys.argv[1])
original_init = SynerMixTrainer.__init__


def init_with_kill(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    self.add_callback(KillAfterCheckpoint(kill_step))


SynerMixTrainer.__init__ = init_with_kill
sys.exit(train.main(sys.argv[2:]))
