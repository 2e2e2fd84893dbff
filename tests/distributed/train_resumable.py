"""A short SynerMix run that checkpoints, optionally SIGKILLs itself after a checkpoint, and can resume.

Used by tests/test_resume.py:
    python tests/distributed/train_resumable.py OUT [--kill_after_step N] [--resume_from_checkpoint DIR]
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from test_trainer import hf_resnet, two_view_sets  # noqa: E402

from synermix_hf import SynerMixTrainer, SynerMixTrainingArguments  # noqa: E402


class KillAfterCheckpoint(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--kill_after_step", type=int)
parser.add_argument("--resume_from_checkpoint")
cli = parser.parse_args()

train, val = two_view_sets()
args = SynerMixTrainingArguments(
    output_dir=cli.out, report_to=[], use_cpu=True, disable_tqdm=True, seed=21, per_device_train_batch_size=8,
    num_train_epochs=3, learning_rate=0.05, beta=0.3, inter_mixup="manifold_mixup", save_strategy="steps",
    save_steps=4, logging_steps=1, ddp_find_unused_parameters=False,
)  # fmt: skip
callbacks = [KillAfterCheckpoint(cli.kill_after_step)] if cli.kill_after_step else []
trainer = SynerMixTrainer(model=hf_resnet(), args=args, train_dataset=train, eval_dataset=val, callbacks=callbacks)
trainer.train(resume_from_checkpoint=cli.resume_from_checkpoint)
metrics = trainer.evaluate()
torch.save(trainer.model.state_dict(), Path(cli.out) / "final_state.pt")
(Path(cli.out) / "final_metrics.json").write_text(json.dumps(metrics))
