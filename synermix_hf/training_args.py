"""`SynerMixTrainingArguments`: `transformers.TrainingArguments` plus the method's parameters."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
from transformers import TrainingArguments

from .credentials import is_credential, placeholder, redact_mapping
from .data.bad_images import DEFAULT_MAX_BAD_IMAGE_FRACTION, BadImagePolicy
from .mixup import INTER_MIXUPS

__all__ = [
    "SynerMixTrainingArguments",
    "accelerator_available",
    "launched_processes",
    "normalize_inter_mixup",
]

logger = logging.getLogger(__name__)


def normalize_inter_mixup(value: str | None) -> str:
    """Map any accepted spelling ("Mixup", "Manifold_Mixup", "manifold-mixup", None, ...) to a canonical choice."""
    canonical = "none" if value is None else str(value).strip().lower().replace("-", "_")
    if canonical not in INTER_MIXUPS:
        raise ValueError(
            f"`inter_mixup` {value!r} is not valid; choose one of {', '.join(INTER_MIXUPS)} (case-insensitive; "
            "the paper's spellings Mixup and Manifold_Mixup work too)."
        )
    return canonical


def launched_processes() -> int:
    """How many processes a launcher started for this run (torchrun, accelerate launch, mpirun), from its environment
    variables, as accelerate reads them; 1 without a launcher."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return 1


def accelerator_available() -> bool:
    """Whether this process sees a GPU or any other device the Trainer would train on instead of the CPU.

    It asks torch (CUDA, and from torch 2.6 `torch.accelerator`: XPU, MPS, out-of-tree backends) and every device
    check `TrainingArguments` makes when it chooses the device, so that "no" means the run would be on the CPU anyway.
    """
    if torch.cuda.is_available():
        return True
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        return True
    import transformers.utils as hf_utils

    checks = ("is_torch_xla_available", "is_torch_xpu_available", "is_torch_mps_available", "is_torch_npu_available",
              "is_torch_hpu_available", "is_torch_mlu_available", "is_torch_musa_available",
              "is_torch_neuron_available")
    return any(getattr(hf_utils, name)() for name in checks if hasattr(hf_utils, name))


def _checkpoints_layer_calls() -> bool:
    """Whether the installed transformers checkpoints a layer's `__call__` (forward hooks included, so they must run
    again in the recomputation), as 5.0 does; 5.25 checkpoints `forward` only, and Manifold MixUp trains with it
    exactly as without (tests/test_trainer_surface.py). Releases between them are not tested and count as 5.0."""
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__).release < (5, 25)


def _open_cpu_process_group(args: Any) -> None:
    """Open the job's process group on the CPU (gloo) with `--ddp_timeout`, before `TrainingArguments` does.

    `TrainingArguments` hands `ddp_timeout` to accelerate's `PartialState` for an accelerator's backend (NCCL, ...)
    but not with `use_cpu` (transformers 5.0 to 5.25 at least), so a CPU job's group waited torch's default 30
    minutes for a frozen process whatever the flag said. The same `PartialState` call as transformers', with the
    timeout; transformers' own call then finds the group open and keeps it.
    """
    import torch.distributed as dist
    from accelerate import PartialState

    if dist.is_available() and not dist.is_initialized():
        PartialState(cpu=True, backend=args.ddp_backend, timeout=timedelta(seconds=args.ddp_timeout))


def _sharded_training(args: Any) -> str | None:
    """The FSDP or DeepSpeed setting that asks for sharded training, from the arguments or `accelerate launch`'s
    environment; None when there is none."""
    if args.fsdp:
        return "`fsdp`"
    if args.fsdp_config:
        return "`fsdp_config`"
    if args.deepspeed:
        return "`deepspeed`"
    if getattr(args, "parallelism_config", None) is not None:  # accelerate's ND parallelism: FSDP, tensor, context
        return "`parallelism_config`"
    for variable in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        if os.environ.get(variable, "false").strip().lower() in ("1", "true", "yes"):
            return f"{variable}={os.environ[variable]} (an accelerate config with {variable.split('_')[-1]})"
    return None


_METHOD_FIELDS = frozenset({"beta", "alpha", "inter_mixup", "balanced_sampler"})


@dataclass
class SynerMixTrainingArguments(TrainingArguments):
    """`TrainingArguments` for `SynerMixTrainer`.

    The loss is `beta * L_intra + (1 - beta) * L_inter`. `label_smoothing_factor` applies to every cross-entropy term.

    Args:
        beta: Weight of the intra-class mixup of penultimate features of the unaugmented view, in [0, 1]. With 0 the
            intra-class pass is skipped entirely.
        alpha: MixUp/CutMix concentration; lambda ~ Beta(alpha, alpha). Must be > 0 when an inter-class mixup is used.
        inter_mixup: `none`, `mixup`, `manifold_mixup` or `cutmix` (case-insensitive; `Mixup` and `Manifold_Mixup`
            as in the paper's code are accepted).
        balanced_sampler: Use the class-balanced batch sampler (every class of a batch has at least two members).
            Defaults to on when `beta > 0`.
        head_module: Name of the final classification Linear, when it cannot be detected.
        manifold_mixup_modules: Manifold MixUp points (`input` or names of modules whose input is mixed), when the
            defaults for the architecture do not suit.
        max_bad_image_fraction: Images that cannot be decoded (a truncated file, ...) are replaced in training by
            another image of their class that decodes (the same one in every epoch) and skipped in evaluation
            (`eval_skipped_images`); the run stops when more than this share of a split is bad (see
            `synermix_hf.data.bad_images`).
        stop_on_bad_image: Stop at the first image that cannot be decoded instead.
        logging_nan_inf_filter: As in `TrainingArguments`, but off by default: the trainer stops at a non-finite
            training loss (`FiniteLossCheck`), so the filter would only cost a host-device sync per step.
        remove_unused_columns: Must be False (the default here; the Trainer's is True): the loss reads
            `original_pixel_values`, which no model's forward takes, and on-the-fly transforms need the image and
            label columns.

    `beta`, `alpha` and `inter_mixup` have the paper code's short flags as `aliases` (`-beta`, `-alpha`, `-itrm`),
    which `HfArgumentParser` adds.

    Every other argument and default is `TrainingArguments`'s: unlike the script (`RecipeTrainingArguments`), this
    class clips gradients at `max_grad_norm=1.0` and trains with AdamW at 5e-5 on a linear schedule, and turns the
    balanced sampler on only for `beta > 0`.

    Values the project chooses for a run, never over a value the user gave, are set with `choose` and listed with
    their reasons in `chosen_settings` (the script writes them to the run log and the model card):

    * `accelerator_config.non_blocking = True` when batches are in pinned memory (`dataloader_pin_memory`, the
      default on GPU) and no `accelerator_config` is given: the host does not wait for each copy to the GPU;
    * `use_cpu = True` when several processes are launched on a machine without GPU or other accelerator
      (`torchrun --nproc_per_node 2`, or `--nnodes 2` on CPU nodes): only then does `TrainingArguments` join them in
      one distributed (gloo) job instead of training a separate copy in each process.
    """

    beta: float = field(
        default=0.0,
        metadata={"aliases": ["-beta"],
                  "help": "Weight of SynerMix-Intra (intra-class mixup of features), in [0, 1]; 0 disables it."},
    )
    alpha: float = field(
        default=1.0,
        metadata={"aliases": ["-alpha"], "help": "MixUp/CutMix concentration: lambda ~ Beta(alpha, alpha); must be > 0."},
    )
    inter_mixup: str = field(
        default="none",
        metadata={
            "aliases": ["-itrm"],
            "help": "Inter-class mixup on the augmented view: none, mixup, manifold_mixup or cutmix "
            "(case-insensitive; Mixup and Manifold_Mixup accepted)."
        },
    )
    balanced_sampler: bool | None = field(
        default=None,
        metadata={"help": "Use the class-balanced batch sampler. Default: on when beta > 0, off otherwise."},
    )
    head_module: str | None = field(
        default=None, metadata={"help": "Module name of the final classification Linear (default: detected)."}
    )
    manifold_mixup_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Manifold MixUp points: 'input' and/or names of modules whose input is mixed (default: the "
            "architecture's points from the paper, or the first blocks)."
        },
    )

    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "Drop non-finite losses from the logged average (transformers' default: True). Off here: "
            "SynerMixTrainer stops at a non-finite training loss anyway, and the filter costs a host-device sync "
            "per step."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Must be False for SynerMix (transformers' default is True): the loss reads "
                  "original_pixel_values, which no model's forward takes."},
    )

    max_bad_image_fraction: float = field(
        default=DEFAULT_MAX_BAD_IMAGE_FRACTION,
        metadata={
            "help": "Images that cannot be decoded (a truncated file, ...) are replaced in training by another image "
            "of their class (the same one in every epoch) and skipped in evaluation (eval_skipped_images); the run "
            "stops when more than this share of a split is bad."
        },
    )
    stop_on_bad_image: bool = field(
        default=False,
        metadata={"help": "Stop at the first image that cannot be decoded instead of replacing or skipping it."},
    )
    chosen_settings: dict[str, tuple[Any, str]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def choose(self, name: str, value: Any, reason: str) -> None:
        """Set an argument to a value the project chose for this run, and record it with `reason`.

        Only for a value the user did not give: a given value is kept, or refused with a reason.

        Args:
            name: The argument, or a dotted path into one (`accelerator_config.non_blocking`).
            value: The value chosen.
            reason: Why, in a few words, for the run log and the model card.
        """
        *parents, leaf = name.split(".")
        target = self
        for part in parents:
            target = getattr(target, part)
        setattr(target, leaf, value)
        self.chosen_settings[name] = (value, reason)

    @property
    def bad_image_policy(self) -> BadImagePolicy:
        """When images that cannot be decoded stop the run: `max_bad_image_fraction` and `stop_on_bad_image`."""
        return BadImagePolicy(self.max_bad_image_fraction, self.stop_on_bad_image)

    @property
    def effective_data_seed(self) -> int:
        """The seed of the data's order and random augmentation: `data_seed`, or `seed` when it is not given (as the
        Trainer's sampler reads them)."""
        return self.seed if self.data_seed is None else self.data_seed

    # ---- the method's arguments, also when set after construction ----

    def _settle_method(self) -> None:
        """Normalise and check the method's arguments, and derive what follows from them (`balanced_sampler`, when
        not given, is on for beta > 0)."""
        self.__dict__["inter_mixup"] = normalize_inter_mixup(self.inter_mixup)
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"`beta` must be between 0 and 1, got {self.beta}.")
        if INTER_MIXUPS[self.inter_mixup].mixes_batch and not self.alpha > 0:
            raise ValueError(
                f"`alpha` must be > 0 with `inter_mixup` {self.inter_mixup!r} (lambda ~ Beta(alpha, alpha)), got "
                f"{self.alpha}."
            )
        if not self.__dict__.get("_balanced_sampler_given", True):
            self.__dict__["balanced_sampler"] = self.beta > 0
        strategy = getattr(self, "train_sampling_strategy", "random")  # transformers 5.25's; 5.0 lacks it
        if strategy not in ("random", "sequential") or getattr(self, "group_by_length", False):
            name = ("group_by_length" if getattr(self, "group_by_length", False)
                    else f"train_sampling_strategy {strategy!r}")
            raise ValueError(
                f"`{name}`: it groups examples by their length in tokens, which images do not have. Use "
                "`train_sampling_strategy` 'random' or 'sequential' (or the balanced sampler)."
            )
        if strategy == "sequential" and self.balanced_sampler:
            raise ValueError(
                "`train_sampling_strategy` 'sequential' with the balanced sampler: it draws shuffled class-balanced "
                "batches, not the dataset's order. Give `balanced_sampler=False` for batches in order."
            )
        checkpointing = getattr(self, "activation_checkpointing", None) or getattr(self, "gradient_checkpointing", None)
        if checkpointing and INTER_MIXUPS[self.inter_mixup].needs_mixing_points and _checkpoints_layer_calls():
            raise ValueError(
                f"`gradient_checkpointing` with `inter_mixup` {self.inter_mixup!r}: this transformers release "
                "recomputes a checkpointed layer's call, hooks included, in the backward pass, where Manifold MixUp's "
                "mixing no longer runs (torch then fails with a CheckpointError). Use transformers 5.25 or newer, or "
                "train without gradient checkpointing."
            )
        self.__dict__["_method_settled"] = True

    def __setattr__(self, name: str, value: Any) -> None:
        # A method argument set on constructed arguments (a hyperparameter search trial sets them with setattr) is
        # normalised, checked and followed as a constructor value is: `inter_mixup="Manifold_Mixup"` is accepted, and
        # a trial that sets `beta` 0.5 gets the balanced sampler unless `balanced_sampler` was given.
        super().__setattr__(name, value)
        if name in _METHOD_FIELDS and self.__dict__.get("_method_settled"):
            if name == "balanced_sampler":
                self.__dict__["_balanced_sampler_given"] = value is not None
            self._settle_method()

    # ---- credentials: never written ----

    def to_dict(self) -> dict[str, Any]:
        """`TrainingArguments.to_dict` (what the run log, TensorBoard and W&B write), with every credential argument
        masked (`synermix_hf.credentials`), not only those transformers masks."""
        return redact_mapping(super().to_dict())

    def __getstate__(self) -> dict[str, Any]:
        # What `torch.save(args)` writes to training_args.bin (the output folder's and every checkpoint's): the Hub
        # token masked. A copy in memory keeps it (`__deepcopy__`, `__copy__`).
        state = dict(self.__dict__)
        for name, value in state.items():
            if is_credential(name) and value is not None:
                state[name] = placeholder(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A masked token loads as None (the logged-in token applies), never as the placeholder text.
        self.__dict__.update({name: None if is_credential(name) and value == placeholder(name) else value
                              for name, value in state.items()})

    def __copy__(self) -> SynerMixTrainingArguments:
        copied = type(self).__new__(type(self))
        copied.__dict__.update(self.__dict__)
        return copied

    def __deepcopy__(self, memo: dict[int, Any]) -> SynerMixTrainingArguments:
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return copied

    def __post_init__(self):
        self.bad_image_policy  # building the policy checks `max_bad_image_fraction`
        if self.label_names not in (None, ["labels"]):
            raise ValueError(
                f"`label_names` {self.label_names}: SynerMix's batches carry their labels under 'labels' "
                "(SynerMixCollator; the view transforms' `label_column` names the dataset's column). Leave it out."
            )
        if getattr(self, "include_num_input_tokens_seen", "no") not in ("no", False):
            raise ValueError(
                "`include_num_input_tokens_seen`: it counts text tokens, which an image classifier's input does not "
                "have (it would count pixel values, or 0 where the views are made on the device). Leave it out."
            )
        if self.remove_unused_columns:
            raise ValueError(
                "`remove_unused_columns` must be False for SynerMix: the loss reads `original_pixel_values`, which no "
                "model's forward takes, and datasets with an on-the-fly transform need their image and label columns."
            )
        if self.max_steps == 0:
            raise ValueError("`max_steps` 0 trains no step: give a number of steps > 0, or -1 (the default) to train "
                             "`num_train_epochs` epochs.")
        if self.max_steps < 0 and not self.num_train_epochs > 0:
            raise ValueError(f"`num_train_epochs` {self.num_train_epochs:g} trains no step (and would save an "
                             "untrained model): give a number of epochs > 0, or `max_steps` > 0.")
        self.__dict__["_balanced_sampler_given"] = self.balanced_sampler is not None
        self._settle_method()
        if isinstance(self.manifold_mixup_modules, str):
            self.manifold_mixup_modules = [p.strip() for p in self.manifold_mixup_modules.split(",") if p.strip()]
        if not self.use_cpu and launched_processes() > 1 and not accelerator_available():
            # Without `use_cpu`, accelerate's PartialState in a launched process on a machine without GPU opens a
            # process group but finds no GPU backend, so it reports "not distributed, 1 process", and
            # `TrainingArguments` follows it: every process trains its own copy of the model and all of them write
            # the same output directory. Only `cpu=True` (our `use_cpu`) makes it a MULTI_CPU (gloo) job. The
            # condition holds only where the run would be on the CPU anyway: on a machine with a GPU (or XPU, NPU,
            # ...) nothing changes, so single- and multi-node GPU launches are set up by accelerate as before.
            processes = launched_processes()
            self.choose("use_cpu", True, f"{processes} processes launched without a GPU: only with use_cpu do they "
                        "train one model together (gloo) instead of one copy each")
            logger.info("%d processes launched and no GPU: they train one model on the CPUs (use_cpu set).", processes)
        sharded = _sharded_training(self)
        if sharded:
            raise ValueError(
                f"{sharded}: SynerMix runs two forward passes of the model before one backward pass (the original "
                "view's features, then the augmented view), which FSDP and DeepSpeed ZeRO do not support as DDP does, "
                "and which this project has not tested with them. Train with DDP (`torchrun`, or `accelerate launch` "
                "with a multi-GPU config without FSDP or DeepSpeed)."
            )
        if self.use_cpu and launched_processes() > 1:
            _open_cpu_process_group(self)
        accelerator_config_given = self.accelerator_config is not None
        super().__post_init__()
        if self.balanced_sampler and getattr(self.accelerator_config, "split_batches", False):
            raise ValueError(
                "`accelerator_config` split_batches=True with the balanced sampler: the sampler already gives each "
                "process its own whole classes of the step's batch (a piece at a time), which accelerate cannot split "
                "again. Leave split_batches out (the batch of a step is the per-device batch times the processes)."
            )
        if not accelerator_config_given and self.dataloader_pin_memory:
            # Given an --accelerator_config, it is left as given.
            self.choose("accelerator_config.non_blocking", True, "batches in pinned memory are copied to the GPU "
                        "without the host waiting for the copy (and so for the GPU's queue to drain)")

