"""One SynerMix optimizer step under torchrun/accelerate; each process saves the batch its loss saw.

Used by tests/test_distributed.py: `torchrun --nproc_per_node 2 tests/ddp_one_step.py OUT INTER_MIXUP PATH [CPU
[accumulate]]`, PATH `loader` (TwoViewTransform) or `device` (images decoded once, views made batched in the trainer);
CPU `use_cpu` (the default) passes `use_cpu=True`, `auto` leaves it to the arguments (tests/test_multinode.py). Its
directory, tests/, is the script's first import path, so the test module's helpers import as they are. After the step,
each process prints what the command line says to `--sync_bn` on these processes. With `accumulate`, the processes then
train a model without BatchNorm two updates of 2 processes x 2 micro-batches (tests/test_accumulation.py's setting) and
process 0 saves its weights as `accumulated.pt`.
"""

import sys
from pathlib import Path

import torch
from test_trainer import device_view_set, resnet, two_view_sets

from synermix_hf import SynerMixTrainer, SynerMixTrainingArguments
from synermix_hf.cli.arguments import ScriptArgumentParser
from synermix_hf.cli.errors import UsageError


class RecordingTrainer(SynerMixTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:  # the views, as `training_step` made them on the device
            torch.save({k: v.cpu() for k, v in inputs.items()}, out / f"batch_rank{self.args.process_index}.pt")
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


out, inter_mixup, views_on = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
cpu = {"use_cpu": True} if (sys.argv[4] if len(sys.argv) > 4 else "use_cpu") == "use_cpu" else {}
train = two_view_sets()[0] if views_on == "loader" else device_view_set()
args = SynerMixTrainingArguments(
    output_dir=str(out / "run"), report_to=[], save_strategy="steps", save_steps=1, seed=3, disable_tqdm=True, **cpu,
    per_device_train_batch_size=8, max_steps=1, optim="sgd", learning_rate=0.1, max_grad_norm=0.0,
    beta=0.3, inter_mixup=inter_mixup, alpha=1.0, ddp_find_unused_parameters=False,
)  # fmt: skip
model = resnet()
if args.process_index == 0:
    torch.save(model.state_dict(), out / "initial.pt")
trainer = RecordingTrainer(model=model, args=args, train_dataset=train)
trainer.train()
if args.process_index == 0:
    torch.save(trainer.model.state_dict(), out / "final.pt")
# Every process's buffers (batch-norm running statistics) after the step.
torch.save({name: buffer.clone() for name, buffer in trainer.model.named_buffers()},
           out / f"buffers_rank{args.process_index}.pt")
group = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
print(f"process {args.process_index} of {args.world_size} done (process group of {group}, "
      f"parallel mode {args.parallel_mode.value})")
# The command line's check of what these processes cannot do, in its words, before it creates anything: --sync_bn.
try:
    ScriptArgumentParser().parse(["--sync_bn", "--max_steps", "1", "--output_dir", str(out / "sync_bn")])
except UsageError as refusal:
    print(f"process {args.process_index}: error: {refusal}")
if sys.argv[5:6] == ["accumulate"]:
    from test_accumulation import arguments as accumulation_arguments, examples, vit

    accumulate_args = accumulation_arguments(out / "accumulate", per_device_train_batch_size=4,
                                             gradient_accumulation_steps=2, max_steps=2, beta=0.5)
    accumulated = SynerMixTrainer(model=vit(), args=accumulate_args, train_dataset=examples(40))
    accumulated.train()
    if args.process_index == 0:
        torch.save(accumulated.model.state_dict(), out / "accumulated.pt")
if torch.distributed.is_initialized():  # a gloo group torn down at interpreter exit can abort the process
    torch.distributed.barrier()  # no rank leaves while its peer still talks to it
    torch.distributed.destroy_process_group()
