"""Run run_image_classification.py and interrupt it while it writes checkpoint-N, its weights half written.

    python tests/interrupt_during_save.py SIGNAL N <synermix-train arguments>      # SIGNAL: SIGKILL or SIGINT

The kill comes right after the Trainer has written the checkpoint's weights, which are then cut to half their size:
what a process killed in the middle of writing the file leaves. Everything else is the script as users run it.

The SIGINT is handled as a terminal's Ctrl-C is (the script stops after the next step with a checkpoint), whatever
this process inherited: a shell script starts a command in the background (`nohup pytest tests &`) with SIGINT
ignored, its children inherit that, and Python then installs no handler, so the SIGINT would be ignored and the run
would go on to the end (exit 0).
"""

import os
import signal
import sys

from synermix_hf.cli import train
from synermix_hf.trainer import SynerMixTrainer

kill_signal, kill_step = getattr(signal, sys.argv[1]), int(sys.argv[2])
save_model = SynerMixTrainer.save_model


def save_model_then_die(self, output_dir=None, _internal_call=False):
    save_model(self, output_dir, _internal_call)
    if _internal_call and self.state.global_step == kill_step:
        weights = os.path.join(output_dir, "model.safetensors")
        with open(weights, "r+b") as handle:
            handle.truncate(os.path.getsize(weights) // 2)
        os.kill(os.getpid(), kill_signal)


SynerMixTrainer.save_model = save_model_then_die
signal.signal(signal.SIGINT, signal.default_int_handler)  # what Python installs at start-up unless SIGINT is ignored
sys.exit(train.main(sys.argv[3:]))
