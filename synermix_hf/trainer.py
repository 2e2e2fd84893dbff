"""`SynerMixTrainer`: a thin `transformers.Trainer` subclass whose loss is SynerMix.

`compute_loss` returns `beta * L_intra + (1 - beta) * L_inter`:

* L_intra (only when beta > 0): features of the original view, mixed within each class (`intra_class_mixup`), then
  classified by the model's own head, all inside one forward call of the (possibly distributed) model;
* L_inter: cross-entropy on the augmented view, optionally with MixUp, Manifold MixUp or CutMix.

With `RecipeTrainingArguments` (the paper's recipe) the optimizer and schedule are the reference's, built in the
Trainer's public hooks `create_optimizer` / `create_scheduler` from `synermix_hf.recipe`.

Evaluation and `predict()` are plain: cross-entropy and logits on the original view.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import has_length, seed_worker

from .adapters import INPUT_POINT, ModelAdapter
from .checkpoints import LegacyWeightNames, StagedCheckpoints
from .data.bad_images import IGNORE_LABEL, BadImageLog, BadImagePolicy, tolerant_images
from .data.device_datasets import views_of
from .data.sampler import ClassBalancedBatchSampler, PositionedBatchSampler, StepShards
from .data.views import SeededAugmentation, SynerMixCollator, dataset_labels, original_view
from .distributed import StepBufferBroadcast, gather_step_batch, is_data_parallel
from .finite_loss import FiniteLossCallback, FiniteLossCheck
from .mixup import INTER_MIXUPS, intra_class_loss, intra_class_mixup_all_classes, sample_mixup_lambda
from .peer_watch import PeerWatch
from .preemption import PreemptionCallback
from .recipe import epoch_step_lr, paper_optimizer, updates_per_epoch, uses_paper_recipe
from .seeding import step_generators
from .training_args import SynerMixTrainingArguments

__all__ = ["SynerMixTrainer"]


class SynerMixTrainer(StagedCheckpoints, LegacyWeightNames, Trainer):
    """`transformers.Trainer` that trains with SynerMix.

    Use it as `Trainer`, with `SynerMixTrainingArguments`. Checkpoints are complete or absent, and a run continues
    from the last complete one (`StagedCheckpoints`). Training batches need `pixel_values` (augmented view),
    `labels` and, when `beta > 0`, `original_pixel_values` (see `TwoViewTransform`). Works with torchvision and Hugging
    Face image classifiers alike; the head and the Manifold MixUp points are found by `ModelAdapter`.

    Training minimises `beta * L_intra + (1 - beta) * L_inter` and logs `loss` with its parts `loss_intra` and
    `loss_inter` (means since the last log, over all processes). Evaluation and `predict()` are plain: the model's
    logits of the original (unaugmented) view and their cross-entropy (`eval_loss`), with no mixup.

    With `RecipeTrainingArguments` and `recipe="paper"` (their default), the optimizer is the reference's SGD
    (`paper_optimizer`) and the schedule its StepLR per epoch (`epoch_step_lr`); with any other arguments they are
    the Trainer's. An optimizer or scheduler passed in `optimizers=` wins either way.

    With `enable_jit_checkpoint`, SIGTERM finishes the step, saves a checkpoint on every process and `train()` raises
    `TrainingPreempted` naming it (`synermix_hf.preemption`).

    Images that cannot be decoded (a truncated file, ...) of a `datasets.Dataset` are replaced in training by another
    image of their class and skipped in evaluation (their label becomes -100, which the loss ignores and
    `ClassificationMetrics` counts as `skipped_images`); each is named once in a warning and kept in `bad_images` (a
    `BadImageLog`), and the run stops by `max_bad_image_fraction` / `stop_on_bad_image` (see `synermix_hf.data.bad_images`).

    Args:
        train_labels: Optional label of every training example, for the balanced sampler. By default they are read
            from the dataset (`dataset_labels`).
        *args, **kwargs: As for `transformers.Trainer`. `data_collator` defaults to `SynerMixCollator`.

    Attributes:
        model_card_section: Markdown added at the end of every model card this trainer writes (`create_model_card`,
            which `push_to_hub` calls too); empty by default.
    """

    model_card_section: str = ""

    # compute_loss returns a per-micro-batch mean, so the Trainer divides it by the accumulation steps: gradient
    # accumulation then gives the mean over micro-batches, as the plain Trainer does for models without loss kwargs.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, train_labels: Any = None, **kwargs: Any):
        if kwargs.get("data_collator") is None and (len(args) < 3 or args[2] is None):
            kwargs["data_collator"] = SynerMixCollator()
        args_given = kwargs.get("args", args[1] if len(args) > 1 else None)
        smoothing = getattr(args_given, "label_smoothing_factor", 0.0)
        # transformers' own SIGTERM handling is replaced by `PreemptionCallback` (all processes stop after one step,
        # the checkpoint is staged, and `train` raises instead of returning as if training had finished).
        preempt = bool(getattr(args_given, "enable_jit_checkpoint", False))
        if preempt:
            args_given.enable_jit_checkpoint = False
        if smoothing:
            # Trainer.__init__ reads `model.config` when label smoothing is on, which torchvision models lack. Our
            # loss applies the smoothing itself, so the Trainer's own label smoother is never needed.
            args_given.label_smoothing_factor = 0.0
        try:
            super().__init__(*args, **kwargs)
        finally:
            if smoothing:
                args_given.label_smoothing_factor = smoothing
            if preempt:
                args_given.enable_jit_checkpoint = True
        if not isinstance(self.args, SynerMixTrainingArguments):
            raise TypeError(
                f"SynerMixTrainer needs SynerMixTrainingArguments, got {type(self.args).__name__}. Replace "
                "TrainingArguments(...) with SynerMixTrainingArguments(..., beta=..., inter_mixup=...)."
            )
        # The loss never goes through the model's own loss function, so counting label tokens across devices for
        # `num_items_in_batch` would only add a collective per step.
        self.model_accepts_loss_kwargs = False
        if self.args.label_names is None:
            self.label_names = ["labels"]
        self.train_labels = train_labels
        # A scheduler given in `optimizers=` is kept; one built here is built again by every `train()`.
        self._scheduler_given = self.lr_scheduler is not None
        self._updates_per_epoch: int | None = None
        self._adapter: ModelAdapter | None = None
        self._adapter_for: nn.Module | None = None
        self._draw_position = (-1, -1)
        self._last_loss: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        self._finite_check = FiniteLossCheck()
        self._buffer_broadcast = StepBufferBroadcast()
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_counts: dict[str, int] = {}
        self.bad_images = BadImageLog(BadImagePolicy(self.args.max_bad_image_fraction, self.args.stop_on_bad_image))
        # What makes the views of batches of decoded images on the device (`views_of`), for the training loader and
        # for the evaluation or prediction loader made last.
        self._train_views: Any = None
        self._eval_views: Any = None
        self._set_epoch_callback = _SetEpochCallback()
        self.add_callback(self._set_epoch_callback)
        # Before the finite-loss check, which settles a pending check when a stop asks for a checkpoint.
        self._preemption = PreemptionCallback() if preempt else None
        self._peer_watch = PeerWatch()  # a collective that times out names the processes that stopped answering
        if self._preemption is not None:
            self.add_callback(self._preemption)
        self.add_callback(FiniteLossCallback(self._finite_check))
        if self.model is not None:
            self.adapter  # noqa: B018 - fail at construction, before training, when the head cannot be found

    # ---- model access ----

    @property
    def adapter(self) -> ModelAdapter:
        """The `ModelAdapter` of the current model (rebuilt if `model_init` replaced the model)."""
        if self._adapter is not None and self._adapter_for is self.model:
            # A step asks several times; unwrapping costs milliseconds of host time (accelerate probes for installed
            # packages on every call), so it is done only when `self.model` is another object.
            return self._adapter
        model = self.accelerator.unwrap_model(self.model)
        if self._adapter is None or self._adapter.model is not model:
            self._adapter = ModelAdapter.from_model(
                model,
                head_module=self.args.head_module,
                manifold_mixup_modules=self.args.manifold_mixup_modules,
                need_mixing_points=INTER_MIXUPS[self.args.inter_mixup].needs_mixing_points,
            )
        self._adapter_for = self.model
        return self._adapter

    # ---- data ----

    def get_train_dataloader(self) -> DataLoader:
        """The training loader: balanced batches (when enabled) of examples whose augmentation is seeded.

        Each example appearance is augmented with a generator seeded by `(seed, epoch, position in the epoch)`
        (`SeededAugmentation`, `PositionedBatchSampler`) and the balanced sampler draws from `(seed, epoch)`, so a
        resumed run, or a run on more processes, sees the batches and the augmented images that an uninterrupted
        single-process run sees, and a partner loaded twice in an epoch gets two independent augmentations.

        On N processes a step trains on one balanced batch of N times the batch of each process, split into N shards
        (`StepShards`): the processes together see the batches one process would see, augmented alike, and the
        intra-class term is computed over the whole step's batch (`gather_step_batch`).
        """
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        if isinstance(self.train_dataset, torch.utils.data.IterableDataset) or not has_length(self.train_dataset):
            return self._counted(super().get_train_dataloader())
        seed = self._data_seed
        labels = self.train_labels
        if labels is None and self.args.balanced_sampler:
            labels = dataset_labels(self.train_dataset)
        dataset = SeededAugmentation(tolerant_images(self.train_dataset, "training set", labels, seed), seed)
        self._train_views = views_of(self.train_dataset)
        loader_kwargs: dict[str, Any] = {
            "collate_fn": self.data_collator,
            "num_workers": self.args.dataloader_num_workers,
            "pin_memory": self.args.dataloader_pin_memory,
            "persistent_workers": self.args.dataloader_persistent_workers,
            "worker_init_fn": partial(
                seed_worker, num_workers=self.args.dataloader_num_workers, rank=self.args.process_index
            ),
        }
        if self.args.dataloader_num_workers > 0 and self.args.dataloader_prefetch_factor is not None:
            loader_kwargs["prefetch_factor"] = self.args.dataloader_prefetch_factor
        sampler = None
        if self.args.balanced_sampler:
            # One balanced batch per step, the batch of all processes together, each process taking one shard of it.
            processes = self.accelerator.num_processes
            sampler = ClassBalancedBatchSampler(labels, batch_size=self._train_batch_size * processes, seed=seed)
            steps = StepShards(sampler, processes) if processes > 1 else sampler
            loader_kwargs["batch_sampler"] = PositionedBatchSampler(steps)
        else:
            loader_kwargs.update(
                batch_size=self._train_batch_size,
                sampler=self._get_train_sampler(dataset),
                drop_last=self.args.dataloader_drop_last,
            )
        loader = self.accelerator.prepare(DataLoader(dataset, **loader_kwargs))
        shard = getattr(loader, "batch_sampler", None)
        if sampler is not None and getattr(shard, "batch_sampler", None) is loader_kwargs["batch_sampler"]:
            # Balanced batches are longer than `batch_size`; accelerate's shard would take them for incomplete and
            # drop them. `None` tells it batches have dynamic length, so each process takes whole batches in turn.
            shard.batch_size = None
        self._set_epoch_callback.targets = [t for t in (sampler, dataset) if t is not None]
        return self._counted(loader)

    def _counted(self, loader: DataLoader) -> DataLoader:
        # The paper's schedule needs the optimizer updates per epoch, which the Trainer computes in a method whose
        # signature changed between transformers releases; the loader it trains on gives the same number.
        batches = len(loader) if has_length(loader) else None
        self._updates_per_epoch = (None if batches is None else
                                   updates_per_epoch(batches, self.args.gradient_accumulation_steps))
        return loader

    @property
    def _data_seed(self) -> int:
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader:
        """The Trainer's evaluation loader, over a dataset in which an image that cannot be decoded is skipped."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(eval_dataset, str):
            dataset = self.eval_dataset[eval_dataset]
        if dataset is not None and not isinstance(dataset, dict):
            dataset = tolerant_images(dataset, "evaluation set", seed=self._data_seed, skip=True)
        self._eval_views = views_of(dataset)
        return super().get_eval_dataloader(eval_dataset if isinstance(eval_dataset, str) or dataset is None
                                           else dataset)

    def get_test_dataloader(self, test_dataset: Any) -> DataLoader:
        """The Trainer's prediction loader, over a dataset in which an image that cannot be decoded is skipped."""
        self._eval_views = views_of(test_dataset)
        return super().get_test_dataloader(tolerant_images(test_dataset, "prediction set", seed=self._data_seed,
                                                           skip=True))

    def batch_on_device(self, inputs: dict[str, torch.Tensor | Any], training: bool = False) -> dict[str, Any]:
        """A batch from this trainer's training loader (`training`) or the evaluation or prediction loader made last,
        moved to the device, with its views made (as `compute_loss` and evaluation see it)."""
        # transformers' own `prediction_step` moves the batch with the private `_prepare_inputs` too.
        return self._with_views(self._prepare_inputs(inputs), self._train_views if training else self._eval_views)

    def _with_views(self, inputs: dict[str, torch.Tensor | Any], views: Any) -> dict[str, torch.Tensor | Any]:
        """A batch on the device with its views: a batch of decoded uint8 images (no `pixel_values` yet) gets them
        made here by `views` (the dataset's `device_views`), batched.

        Reports of images that could not be decoded (`bad_images`) go to `self.bad_images`, which may stop the run.
        """
        reports = inputs.pop("bad_images", None)
        if reports:
            self.bad_images.record(reports)
        if "pixel_values" in inputs or views is None:
            return inputs
        device = next(value.device for value in inputs.values() if isinstance(value, torch.Tensor))
        with torch.autocast(device.type, enabled=False):  # the recipe's own dtypes, not autocast's
            return views(inputs)

    # ---- optimizer and schedule ----

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The reference's SGD with the paper's recipe (`paper_optimizer`), else the Trainer's optimizer."""
        if not uses_paper_recipe(self.args) or self.optimizer is not None:
            # transformers < 5.3's create_optimizer takes no model.
            return super().create_optimizer() if model is None else super().create_optimizer(model)
        self.optimizer = paper_optimizer(self.model if model is None else model, self.args)
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The reference's StepLR per epoch with the paper's recipe (`epoch_step_lr`), else the Trainer's schedule."""
        if not uses_paper_recipe(self.args) or self._scheduler_given:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = epoch_step_lr(
            optimizer if optimizer is not None else self.optimizer,
            self._updates_per_epoch or max(int(num_training_steps), 1),
            self.args.lr_step_size,
            self.args.lr_gamma,
        )
        return self.lr_scheduler

    # ---- loss ----

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """SynerMix loss in training, plain cross-entropy on the original view in evaluation.

        `inputs` holds `pixel_values`, `labels` and, when beta > 0, `original_pixel_values`: batches of decoded images
        get their views in `training_step` and `prediction_step`, before this. `num_items_in_batch` is accepted for API
        compatibility and not used: the loss is a per-micro-batch mean (L_intra is a mean over classes, not over
        items) and the Trainer averages it over accumulation steps.
        """
        labels = inputs["labels"]
        if not model.training:
            logits = self.adapter.logits(model, original_view(inputs))
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.args.label_smoothing_factor)
            return (loss, logits) if return_outputs else loss

        pixel_values = inputs["pixel_values"]
        generator, rng = self._step_random_sources(pixel_values.device)
        beta = self.args.beta
        components: dict[str, torch.Tensor] = {}
        logits = None
        if beta > 0:
            if "original_pixel_values" not in inputs:
                raise ValueError(self._missing_original_view(inputs))
            components["intra"] = self._intra_loss(model, inputs["original_pixel_values"], labels, generator)
        if beta < 1:
            components["inter"], logits = self._inter_loss(model, pixel_values, labels, generator, rng)
        loss = sum(
            weight * components[name] for name, weight in (("intra", beta), ("inter", 1 - beta)) if name in components
        )
        self._last_loss = (loss.detach(), {name: value.detach() for name, value in components.items()})
        self._record_components(components)
        return (loss, logits) if return_outputs else loss

    def _missing_original_view(self, inputs: dict[str, Any]) -> str:
        """Why a training batch lacks `original_pixel_values`: the collator dropped it, or the dataset has none."""
        collator = getattr(self.data_collator, "__qualname__", None) or type(self.data_collator).__name__
        start = (f"beta > 0 needs the original (unaugmented) view of each image under 'original_pixel_values', and the "
                 f"batch has only {sorted(inputs)}.")
        try:
            example = self.train_dataset[0]
        except Exception:  # noqa: BLE001 - only to word the error better
            example = None
        if isinstance(example, Mapping) and "original_pixel_values" in example:
            return (f"{start} The training set has it: the data collator ({collator}) dropped it. Leave out "
                    "data_collator (SynerMixCollator, the default, keeps it) or stack 'original_pixel_values' in "
                    "yours.")
        return (f"{start} Build the training set with TwoViewTransform (or return it from your dataset), and use a "
                f"data collator that keeps it (this run's: {collator}; SynerMixCollator, the default, does).")

    def training_step(
        self, model: nn.Module, inputs: dict[str, torch.Tensor | Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """The Trainer's step (forward and backward), then a check that the loss was finite, before any update.

        The check reads the loss on the host after the backward pass was queued, next to the Trainer's own NaN check
        of the returned loss, so the device never waits between the forward and the backward pass for it.

        Under DDP, the buffers are broadcast once before the step's forward passes (`StepBufferBroadcast`) instead
        of before each of them. A batch of decoded images gets its views first, on the device (`batch_on_device`): the
        Trainer's resume rebuilds the training loader itself (`skip_first_batches`), so the views are made here rather
        than by a wrapper around the loader.
        """
        inputs = self.batch_on_device(inputs, training=True)
        self._buffer_broadcast.before_step(model)
        step_loss = super().training_step(model, inputs, num_items_in_batch)
        if self._last_loss is not None:
            loss, components = self._last_loss
            self._last_loss = None
            self._check_finite(loss, components)
        return step_loss

    def _intra_loss(
        self, model: nn.Module, original: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        num_classes = self.adapter.num_classes
        present: list[torch.Tensor] = []
        step_batch = is_data_parallel()
        if step_batch:
            # The reference mixes every member of a class in the step's batch, which data parallelism spreads over
            # the processes: the features are gathered, and every process draws the same weights (process 0's seed)
            # and so computes the same term, whose gradient DDP's average then is.
            step, micro_step = self._draw_position
            generator = step_generators(self.args.seed, step, micro_step, 0, labels.device)[0]

        def synthesize(features: torch.Tensor) -> torch.Tensor:
            if step_batch:
                gathered, gathered_labels, valid = gather_step_batch(features, labels, rows=2 * self._train_batch_size)
                synthesized, is_present = intra_class_mixup_all_classes(gathered, gathered_labels, num_classes,
                                                                        generator, valid)
            else:
                synthesized, is_present = intra_class_mixup_all_classes(features, labels, num_classes, generator)
            present.append(is_present)
            return synthesized

        with self.adapter.head_input_replaced(synthesize):
            class_logits = self.adapter.logits(model, original)
        classes = torch.arange(num_classes, device=labels.device)
        return intra_class_loss(class_logits, classes, present[0], self.args.label_smoothing_factor)

    def _inter_loss(
        self,
        model: nn.Module,
        pixel_values: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator,
        rng: np.random.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mixup = INTER_MIXUPS[self.args.inter_mixup]
        smoothing = self.args.label_smoothing_factor
        if not mixup.mixes_batch:
            logits = self.adapter.logits(model, pixel_values)
            return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing), logits

        # The draws, in this order: lambda (rng), permutation (generator), the point (rng, among the Manifold MixUp
        # points only; mixing the input draws none), then whatever `mix` draws (rng).
        lam = sample_mixup_lambda(self.args.alpha, rng)
        permutation = torch.randperm(len(labels), generator=generator, device=labels.device)
        point = INPUT_POINT
        if mixup.needs_mixing_points:
            points = self.adapter.mixing_points
            point = points[int(rng.integers(len(points)))]
        scored_lam: list[float] = []

        def mix(x: torch.Tensor) -> torch.Tensor:
            mixed, kept = mixup.mix(x, lam, permutation, rng)
            scored_lam.append(kept)
            return mixed

        if point == INPUT_POINT:
            logits = self.adapter.logits(model, mix(pixel_values))
        else:
            with self.adapter.mixing_at(point, mix):
                logits = self.adapter.logits(model, pixel_values)
        return mixup.score(logits, labels, permutation, scored_lam[0], smoothing), logits

    def _step_random_sources(self, device: torch.device) -> tuple[torch.Generator, np.random.Generator]:
        step = self.state.global_step
        micro_step = self._draw_position[1] + 1 if self._draw_position[0] == step else 0
        self._draw_position = (step, micro_step)
        return step_generators(self.args.seed, step, micro_step, self.args.process_index, device)

    def _check_finite(self, loss: torch.Tensor, components: dict[str, torch.Tensor]) -> None:
        self._finite_check.submit(self.state.global_step, loss, components)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """As `Trainer.train`, continuing only from a complete checkpoint.

        `resume_from_checkpoint=True` (or `"last"`) continues from the last complete checkpoint of `output_dir`,
        naming each newer incomplete one it skips; a path to an incomplete checkpoint is refused with a `ResumeError`
        (a `ValueError`) saying why (`StagedCheckpoints.checkpoint_to_resume`). With `enable_jit_checkpoint`, raises
        `TrainingPreempted` (naming the checkpoint it saved) when SIGTERM stopped training.
        """
        if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            resume_from_checkpoint = self.checkpoint_to_resume(resume_from_checkpoint)
        self._finite_check.reset()
        try:
            with self._peer_watch.collectives(self.args.ddp_timeout):
                result = super().train(resume_from_checkpoint, *args, **kwargs)
        except BaseException:
            if self._preemption is not None:
                self._preemption.close(failed=True)
            raise
        self._finite_check.flush()
        self.bad_images.gather()
        stopped = self._preemption.preempted(self.args.output_dir) if self._preemption is not None else None
        if stopped is not None:
            raise stopped
        return result

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        with self._peer_watch.collectives(self.args.ddp_timeout):
            metrics = super().evaluate(*args, **kwargs)
            self.bad_images.gather()  # every process evaluates, so all reach this point
        return metrics

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        with self._peer_watch.collectives(self.args.ddp_timeout):
            output = super().predict(*args, **kwargs)
            self.bad_images.gather()
        return output

    # ---- model card ----

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """`Trainer.create_model_card`, with `model_card_section` added at the end."""
        super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero() and self.model_card_section:
            with open(os.path.join(self.args.output_dir, "README.md"), "a", encoding="utf-8") as handle:
                handle.write(self.model_card_section)

    # ---- logging ----

    def _record_components(self, components: dict[str, torch.Tensor]) -> None:
        for name, value in components.items():
            value = value.detach().float()
            self._component_sums[name] = self._component_sums.get(name, 0.0) + value
            self._component_counts[name] = self._component_counts.get(name, 0) + 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `loss_intra` and `loss_inter` (means since the last log, over all processes) to training logs."""
        if "loss" in logs and self._component_sums:
            names = sorted(self._component_sums)
            means = torch.stack([self._component_sums[n] / self._component_counts[n] for n in names])
            means = self.accelerator.reduce(means, reduction="mean")
            logs.update({f"loss_{name}": value for name, value in zip(names, means.tolist())})
            self._component_sums, self._component_counts = {}, {}
        super().log(logs, start_time)

    # ---- evaluation ----

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Plain logits of the original view, and their cross-entropy when labels are given."""
        inputs = self.batch_on_device(inputs)
        labels = inputs.get("labels")
        with torch.no_grad(), self.compute_loss_context_manager():
            logits = self.adapter.logits(model, original_view(inputs))
            loss = None
            if labels is not None:
                loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL,
                                       label_smoothing=self.args.label_smoothing_factor)
                # A batch of skipped images only has no loss (0, not cross-entropy's NaN); no host sync to tell.
                loss = torch.where((labels != IGNORE_LABEL).any(), loss, torch.zeros_like(loss))
        if prediction_loss_only:
            return loss, None, None
        return loss, logits.detach(), labels


class _SetEpochCallback(TrainerCallback):
    """Tell the sampler and the augmentation seeds which epoch starts.

    The Trainer reaches a batch sampler one wrapper deep only, and on resume accelerate adds a second wrapper
    (`SkipBatchSampler` around `BatchSamplerShard`), so the epoch is set here from the training state instead.
    """

    def __init__(self):
        self.targets: list[Any] = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        # `state.epoch` is the integer epoch at an epoch's start, and (epoch + fraction) when resuming within it.
        epoch = int(math.floor((state.epoch or 0.0) + 1e-6))
        for target in self.targets:
            target.set_epoch(epoch)
