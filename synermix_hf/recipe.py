"""The authors' training recipe on the Trainer: SGD (momentum, Nesterov, weight decay), a StepLR stepped per epoch,
and mixed precision that picks fp16 on GPU and bf16 on CPU.

`RecipeTrainingArguments` are `SynerMixTrainingArguments` with the reference code's defaults (lr 0.1, momentum 0.9,
weight decay 5e-4, StepLR every 10 epochs by 0.5, 120 epochs, batch 128, test batch 48, seed 123, no gradient clipping,
the class-balanced sampler for every configuration). The reference trains on one GPU, so its batch of 128 is the
batch of one SGD step: `total_train_batch_size` (128 by default) is split over the processes, and
`per_device_train_batch_size`, when given instead, keeps Hugging Face's meaning (the batch of each process).
`SynerMixTrainer` given these arguments builds that optimizer (`paper_optimizer`) and schedule (`epoch_step_lr`)
through the Trainer's public `create_optimizer` / `create_scheduler` hooks. `recipe="trainer"` hands both back to the
Trainer (`--optim`, `--lr_scheduler_type`, ...), e.g. to fine-tune a Hugging Face model with AdamW.

The Trainer steps the scheduler after every optimizer update, so the per-epoch StepLR is a `LambdaLR` over update
steps: the factor is `gamma ** (epoch // step_size)` with `epoch = step // updates_per_epoch`. Its state (the step
count) is saved in every checkpoint and restored on resume, so a resumed run continues on the same learning rate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy

from .training_args import SynerMixTrainingArguments

__all__ = [
    "PAPER_BATCH_SIZE",
    "PAPER_RECIPE_REPLACES",
    "RECIPES",
    "RecipeTrainingArguments",
    "cpu_has_native_bf16",
    "epoch_step_lr",
    "paper_optimizer",
    "recipe_hyperparameters",
    "refuse_under_the_paper_recipe",
    "uses_paper_recipe",
    "updates_per_epoch",
]

logger = logging.getLogger(__name__)

RECIPES = ("paper", "trainer")
# TrainingArguments fields that the paper recipe replaces with the reference's SGD and per-epoch StepLR: set to anything
# but the Trainer's default under recipe="paper", they are refused rather than ignored.
PAPER_RECIPE_REPLACES = ("optim", "optim_args", "optim_target_modules", "adam_beta1", "adam_beta2", "adam_epsilon",
                         "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio")
PAPER_BATCH_SIZE = 128  # the reference's `-bs` default: the batch of one SGD step on its one GPU


def epoch_step_lr(optimizer: torch.optim.Optimizer, updates_per_epoch: int, step_size: int, gamma: float) -> LambdaLR:
    """StepLR by epochs for a scheduler stepped after every optimizer update.

    During epoch `e` (0-based) the learning rate is `base_lr * gamma ** (e // step_size)`, as with
    `torch.optim.lr_scheduler.StepLR(step_size, gamma)` stepped at the end of every epoch.
    """
    if updates_per_epoch < 1 or step_size < 1:
        raise ValueError(f"updates_per_epoch and step_size must be >= 1, got {updates_per_epoch} and {step_size}.")

    def factor(update_step: int) -> float:
        return gamma ** ((update_step // updates_per_epoch) // step_size)

    return LambdaLR(optimizer, factor)


def paper_optimizer(model: torch.nn.Module, args: RecipeTrainingArguments) -> torch.optim.SGD:
    """The reference's optimizer: SGD over every trainable parameter, weight decay on all of them (its
    `SGD(model.parameters(), ...)`), with `args`' learning rate, momentum, weight decay and Nesterov switch."""
    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=args.learning_rate,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        nesterov=args.nesterov,
    )


def recipe_hyperparameters(args: RecipeTrainingArguments) -> dict[str, str]:
    """The paper recipe's optimizer and schedule in words, as the model card and the hparams state them:
    `{"optimizer": "SGD (momentum 0.9, nesterov False, weight decay 0.0005)", "lr_scheduler_type": "StepLR per epoch
    (step size 10 epochs, gamma 0.5)"}`."""
    return {
        "optimizer": f"SGD (momentum {args.momentum:g}, nesterov {args.nesterov}, weight decay {args.weight_decay:g})",
        "lr_scheduler_type": f"StepLR per epoch (step size {args.lr_step_size} epochs, gamma {args.lr_gamma:g})",
    }


def replaced_by_the_paper_recipe(args: Any) -> list[str]:
    """The fields of `PAPER_RECIPE_REPLACES` that `args` set to something else than `TrainingArguments`' default."""
    defaults = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    replaced = []
    for name in PAPER_RECIPE_REPLACES:
        if name not in defaults or not hasattr(args, name):  # fields of other transformers releases
            continue
        default_field = defaults[name]
        default = (default_field.default_factory() if default_field.default_factory is not dataclasses.MISSING
                   else default_field.default)
        value = getattr(args, name)
        if getattr(value, "value", value) != getattr(default, "value", default) and not (value in (None, {}) and
                                                                                       default in (None, {})):
            replaced.append(name)
    return replaced


def refuse_under_the_paper_recipe(names: list[str]) -> None:
    """Raise `ValueError` naming the fields of `PAPER_RECIPE_REPLACES` in `names`, which the paper recipe would
    ignore. `RecipeTrainingArguments` calls it with the fields set to another value than the Trainer's default; a
    caller that knows which arguments were given (the command line) calls it with those, default values included.
    """
    if not names:
        return
    listed = ", ".join(f"`{name}`" for name in names)
    raise ValueError(
        f"{listed}: the paper recipe (`recipe` 'paper', the default) trains with the reference's SGD and per-epoch "
        "StepLR (`learning_rate`, `momentum`, `nesterov`, `weight_decay`, `lr_step_size`, `lr_gamma`) and would "
        f"ignore {'it' if len(names) == 1 else 'them'}. Give `recipe` 'trainer' to use the Trainer's optimizer and "
        f"schedule, or leave out {listed}."
    )


def uses_paper_recipe(args: Any) -> bool:
    """Whether training arguments ask for the reference's optimizer and schedule (`RecipeTrainingArguments` with
    `recipe="paper"`, their default); any other arguments keep the Trainer's."""
    return isinstance(args, RecipeTrainingArguments) and args.recipe == "paper"


def updates_per_epoch(batches_per_epoch: int, gradient_accumulation_steps: int) -> int:
    """Optimizer updates in an epoch of `batches_per_epoch` batches, as the Trainer counts them.

    A last, incomplete accumulation window still ends with an update, and an epoch has at least one.
    """
    return max(math.ceil(batches_per_epoch / gradient_accumulation_steps), 1)


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX); None when torch cannot tell.

    Without it bf16 autocast on CPU is emulated and much slower than fp32.
    """
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is None for check in checks):
        return None
    return any(check() for check in checks)


def _resolve_mixed_precision(args: RecipeTrainingArguments) -> None:
    """`amp`: fp16 autocast with a grad scaler on CUDA, bf16 autocast elsewhere (fp16 does nothing on CPU).

    `bf16` without an accelerator runs on the CPU (`use_cpu` is set, which `TrainingArguments` asks for), with a
    warning when the CPU has no native bf16.
    """
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    cuda = torch.cuda.is_available() and not args.use_cpu
    if args.amp and not (args.fp16 or args.bf16):
        if cuda:
            args.choose("fp16", True, "--amp on a CUDA device: fp16 autocast with a gradient scaler, as the reference")
        else:
            args.choose("bf16", True, "--amp without a CUDA device: bf16 autocast (fp16 does nothing on a CPU)")
    if (args.bf16 or args.bf16_full_eval) and not args.use_cpu:
        accelerator = torch.cuda.is_available() or is_torch_bf16_gpu_available() or is_torch_xla_available()
        if not accelerator:
            args.choose("use_cpu", True, "bf16 without an accelerator: TrainingArguments accepts it on the CPU only "
                        "with use_cpu")
    if (args.bf16 or args.bf16_full_eval) and args.use_cpu and cpu_has_native_bf16() is False:
        logger.warning(
            "bf16 on this CPU (%s, without AVX512_BF16 or AMX) is emulated: training is many times slower than in "
            "fp32. Leave out `bf16` / `amp` to train in fp32.", torch.backends.cpu.get_cpu_capability()
        )
    if args.fp16 and (args.use_cpu or not torch.cuda.is_available()):
        logger.warning(
            "`fp16` has no effect without a CUDA device: Accelerate runs fp32 on CPU. Use `bf16` (or `amp`, which "
            "picks bf16 on CPU) for mixed precision on CPU."
        )


@dataclass
class RecipeTrainingArguments(SynerMixTrainingArguments):
    """`SynerMixTrainingArguments` with the reference code's recipe and defaults.

    Args:
        recipe: `paper` (SGD + per-epoch StepLR below) or `trainer` (the Trainer's `--optim` and
            `--lr_scheduler_type`).
        momentum: SGD momentum.
        nesterov: Nesterov momentum (needs `momentum > 0`).
        lr_step_size: Epochs between learning-rate decays.
        lr_gamma: Decay factor.
        amp: Mixed precision the way the reference's `-mp` means it: fp16 on CUDA, bf16 on CPU.
        total_train_batch_size: The batch of one optimizer step over all processes and accumulation steps, as the
            reference's `-bs` on its one GPU; `per_device_train_batch_size` becomes total / (processes x GPUs per
            process x `gradient_accumulation_steps`), and a total that does not divide is refused. Default 128,
            unless `per_device_train_batch_size` is given (then None). Both may be given when they agree.

    The reference's short flags (`-lr`, `-bs`, `-ep`, ...) are the fields' `aliases`, which `HfArgumentParser` adds.
    """

    # The group of these arguments in `HfArgumentParser`'s `--help`.
    _argument_group_name = "Training: SynerMix, the authors' recipe and every TrainingArguments flag"

    # The reference's defaults, on TrainingArguments fields.
    learning_rate: float = field(default=0.1, metadata={"aliases": ["-lr"], "help": "Initial learning rate."})
    weight_decay: float = field(default=5e-4, metadata={"aliases": ["-wd"], "help": "Weight decay (all parameters)."})
    num_train_epochs: float = field(default=120, metadata={"aliases": ["-ep"], "help": "Number of training epochs."})
    per_device_train_batch_size: int | None = field(
        default=None,
        metadata={"help": "Training batch size of each process (before the balanced sampler's partners), as in "
                  "Hugging Face's scripts: N processes train on N times this per step. When not given: "
                  "--total_train_batch_size split over the processes."},
    )
    total_train_batch_size: int | None = field(
        default=None,
        metadata={"aliases": ["-bs"],
                  "help": "The paper's batch: training examples of one optimizer step, over all processes and "
                  "gradient accumulation steps (before the balanced sampler's partners). Each process takes "
                  "total / (processes x --gradient_accumulation_steps); a total that does not divide is refused. "
                  f"When not given: {PAPER_BATCH_SIZE}, the reference's batch, or --per_device_train_batch_size "
                  "times the processes when that is given."},
    )
    per_device_eval_batch_size: int = field(default=48, metadata={"help": "Evaluation batch size per device."})
    dataloader_pin_memory: bool | None = field(
        default=None,
        metadata={"help": "Pin the loader's memory, for faster copies to the GPU. Default: on with a CUDA device, off "
                  "without one (nothing to pin memory for)."},
    )
    seed: int = field(default=123, metadata={"aliases": ["-seed"], "help": "Random seed."})
    max_grad_norm: float = field(
        default=0.0,
        metadata={"help": "Clip gradients to this norm; 0 (the reference's recipe) does not clip. TrainingArguments' "
                  "own default is 1.0."},
    )
    balanced_sampler: bool | None = field(
        default=True,
        metadata={"help": "Class-balanced batches (every class of a batch has >= 2 members), for every configuration "
                  "as in the reference, beta = 0 included. --balanced_sampler false gives plain shuffled batches."},
    )
    # The recipe.
    recipe: str = field(
        default="paper",
        metadata={
            "choices": list(RECIPES),
            "help": "paper: the reference's SGD + StepLR per epoch (--learning_rate, --momentum, --nesterov, "
            "--weight_decay, --lr_step_size, --lr_gamma); it replaces the Trainer's --optim, --optim_args, "
            "--adam_*, --lr_scheduler_type, --lr_scheduler_kwargs and --warmup_steps, which it refuses. trainer: the "
            "Trainer's --optim and --lr_scheduler_type (with this script's --learning_rate, --weight_decay and "
            "--max_grad_norm defaults unless given).",
        },
    )
    momentum: float = field(default=0.9, metadata={"aliases": ["-mo"], "help": "SGD momentum."})
    nesterov: bool = field(default=False, metadata={"aliases": ["-ne"], "help": "Use Nesterov momentum."})
    lr_step_size: int = field(
        default=10, metadata={"aliases": ["-ss"], "help": "Decay the learning rate every this many epochs."}
    )
    lr_gamma: float = field(default=0.5, metadata={"aliases": ["-ga"], "help": "Learning-rate decay factor."})
    amp: bool = field(
        default=False,
        metadata={"aliases": ["-mp"], "help": "Mixed precision: fp16 on CUDA (with a grad scaler), bf16 on CPU."},
    )
    # Epoch-wise bookkeeping, as the reference logs and evaluates once per epoch.
    logging_strategy: IntervalStrategy | str | None = field(
        default=None, metadata={"help": "When to log training loss: epoch, steps or no (default: epoch, or steps when "
                                "logging_steps is given)."}
    )
    eval_strategy: IntervalStrategy | str | None = field(
        default=None, metadata={"help": "When to evaluate: epoch, steps or no (default: epoch when evaluating, or "
                                "steps when eval_steps is given)."}
    )
    save_strategy: str | None = field(
        default=None, metadata={"help": "When to save a checkpoint: epoch, steps, best, no (default: epoch, or steps "
                                "when save_steps is given)."}
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    # None: not given, so that a given interval, even the Trainer's default 500, implies the steps strategy.
    logging_steps: float | None = field(
        default=None, metadata={"help": "Log every this many optimizer steps (a fraction < 1: of all steps; default "
                                "500); giving it implies --logging_strategy steps unless that is given too."}
    )
    save_steps: float | None = field(
        default=None, metadata={"help": "Save a checkpoint every this many optimizer steps (a fraction < 1: of all "
                                "steps; default 500); giving it implies --save_strategy steps unless that is given "
                                "too."}
    )

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"`recipe` {self.recipe!r} is not valid; choose one of {', '.join(RECIPES)}.")
        if self.recipe == "paper":
            refuse_under_the_paper_recipe(replaced_by_the_paper_recipe(self))
        if self.lr_step_size < 1:
            raise ValueError(f"`lr_step_size` must be >= 1 epoch, got {self.lr_step_size}.")
        if self.nesterov and self.momentum <= 0:
            raise ValueError("`nesterov` needs `momentum` > 0.")
        if self.momentum < 0:
            raise ValueError(f"`momentum` must be >= 0, got {self.momentum}.")
        # Per epoch, as the reference logs, evaluates and saves; an interval given in steps implies the steps strategy,
        # since it would have no effect per epoch.
        steps_given = {name: getattr(self, name) is not None for name in ("logging_steps", "save_steps", "eval_steps")}
        for name in ("logging_steps", "save_steps"):
            if getattr(self, name) is None:
                setattr(self, name, TrainingArguments.__dataclass_fields__[name].default)
        if self.logging_strategy is None:
            self.logging_strategy = "steps" if steps_given["logging_steps"] else "epoch"
        if self.save_strategy is None:
            self.save_strategy = "steps" if steps_given["save_steps"] else "epoch"
        if self.eval_strategy is None:
            self.eval_strategy = ("no" if not self.do_eval and not steps_given["eval_steps"] else
                                  "steps" if steps_given["eval_steps"] else "epoch")
        _resolve_mixed_precision(self)
        if self.dataloader_pin_memory is None:
            cuda = torch.cuda.is_available() and not self.use_cpu
            self.choose("dataloader_pin_memory", cuda, "a CUDA device: pinned batches are copied to it without "
                        "waiting" if cuda else "no CUDA device: nothing to pin memory for")
        for name in ("per_device_train_batch_size", "total_train_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        super().__post_init__()
        self._split_total_batch()

    def to_dict(self) -> dict[str, Any]:
        """`TrainingArguments.to_dict` (the run log's, TensorBoard's and W&B's hparams), whose `optim` and
        `lr_scheduler_type` state the paper recipe's SGD and StepLR under `recipe="paper"`, not the Trainer's
        unused defaults."""
        values = super().to_dict()
        if self.recipe == "paper":
            described = recipe_hyperparameters(self)
            values.update(optim=described["optimizer"], lr_scheduler_type=described["lr_scheduler_type"])
        return values

    def _split_total_batch(self) -> None:
        """`per_device_train_batch_size` from `total_train_batch_size` (needs the number of processes, known only
        once the process group is set up by `TrainingArguments.__post_init__`)."""
        processes, gpus, steps = self.world_size, max(1, self.n_gpu), self.gradient_accumulation_steps
        shares = processes * gpus * steps  # gpus > 1: one process feeding several GPUs (DataParallel)
        split = " x ".join([f"{processes} process{'es' if processes > 1 else ''}",
                            *([f"{gpus} GPUs per process"] if gpus > 1 else []),
                            f"{steps} gradient accumulation step{'s' if steps > 1 else ''}"])
        if self.per_device_train_batch_size is None:
            given = self.total_train_batch_size is not None
            total = self.total_train_batch_size if given else PAPER_BATCH_SIZE
            if total % shares:
                what = (f"`total_train_batch_size` {total}" if given else
                        f"The reference's batch of {total} (the default `total_train_batch_size`)")
                raise ValueError(
                    f"{what} does not split evenly over {split}: each process takes total / {shares}. Give a "
                    f"`total_train_batch_size` that is a multiple of {shares}, or `per_device_train_batch_size` for "
                    "the batch of each process."
                )
            self.total_train_batch_size = total
            self.choose("per_device_train_batch_size", total // shares, f"the total batch of {total} "
                        f"(`total_train_batch_size`) over {split}")
        elif self.total_train_batch_size is not None:
            per_device, total = self.per_device_train_batch_size, self.total_train_batch_size
            if per_device * shares != total:
                raise ValueError(
                    f"`per_device_train_batch_size` {per_device} and `total_train_batch_size` {total} disagree: "
                    f"{per_device} per process over {split} is {per_device * shares}. Give one of them."
                )
