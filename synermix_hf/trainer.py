"""`SynerMixTrainer`: a thin `transformers.Trainer` subclass whose loss is SynerMix.

`compute_loss` returns `beta * L_intra + (1 - beta) * L_inter`:

* L_intra (only when beta > 0): features of the original view, mixed within each class
  (`intra_class_mixup_all_classes`), then classified by the model's own head, all inside one forward call of the
  (possibly distributed) model;
* L_inter: cross-entropy on the augmented view, optionally with MixUp, Manifold MixUp or CutMix.

With `RecipeTrainingArguments` (the paper's recipe) the optimizer and schedule are the reference's, built in the
Trainer's public hooks `create_optimizer` / `create_scheduler` from `synermix_hf.recipe`.

Evaluation and `predict()` are plain: cross-entropy and logits on the original view.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import has_length

from .adapters import INPUT_POINT, ModelAdapter
from .checkpoints import LegacyWeightNames, StagedCheckpoints
from .data.bad_images import IGNORE_LABEL, BadImageLog, tolerant_images
from .data.device_datasets import DeviceViews, views_of
from .data.sampler import ClassBalancedBatchSampler, SplitSteps, StepSplit
from .data.views import SeededAugmentation, SynerMixCollator, dataset_labels, original_view
from .distributed import StepBufferBroadcast, gather_step_batch, is_data_parallel
from .finite_loss import FiniteLossCallback, FiniteLossCheck
from .mixup import INTER_MIXUPS, intra_class_loss, intra_class_mixup_all_classes, sample_mixup_lambda
from .peer_watch import PeerWatch
from .preemption import EvaluationStopped, PreemptionCallback
from .recipe import epoch_step_lr, paper_optimizer, recipe_hyperparameters, updates_per_epoch, uses_paper_recipe
from .seeding import step_generators
from .training_args import SynerMixTrainingArguments

__all__ = ["SynerMixTrainer"]

logger = logging.getLogger(__name__)


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

    # compute_loss returns a micro-batch's loss scaled to the step (its classes over the step's, its examples' share),
    # times the accumulation steps, so the Trainer divides it by them: the micro-steps add up to the one-batch loss.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, train_labels: Any = None, **kwargs: Any):
        given = inspect.signature(Trainer.__init__).bind_partial(None, *args, **kwargs).arguments
        if given.get("compute_loss_func") is not None:
            raise ValueError(
                "compute_loss_func: SynerMixTrainer's loss is SynerMix's (beta * intra-class mixup + (1 - beta) * "
                "inter-class mixup, each a cross-entropy over mixed targets), which a function of the model's outputs "
                "and labels cannot take part in; it would be ignored. Leave it out (label_smoothing_factor applies to "
                "every term), or subclass SynerMixTrainer and override compute_loss."
            )
        args_given = given.get("args")
        if args_given is None:
            raise TypeError(
                "SynerMixTrainer needs args=SynerMixTrainingArguments(output_dir=..., beta=..., inter_mixup=...) (or "
                "RecipeTrainingArguments for the paper's recipe); no args were given."
            )
        if given.get("data_collator") is None:
            kwargs["data_collator"] = SynerMixCollator()
            args = args[:2]  # data_collator is the third positional parameter; those after it go by name
            kwargs.update({name: value for name, value in given.items()
                           if name not in ("self", "model", "args", "data_collator") and name not in kwargs})
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
        self._recipe_built: set[str] = set()  # which of the paper recipe's optimizer and schedule trained
        self._updates_per_epoch: int | None = None
        self._split_steps: SplitSteps | None = None
        self._split_offset: int | None = None
        self._warned_split = False
        self._split_cache: tuple[Any, StepSplit | None] = (None, None)
        self._adapter: ModelAdapter | None = None
        self._adapter_for: nn.Module | None = None
        self._draw_position = (-1, -1)
        self._last_loss: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        self._finite_check = FiniteLossCheck()
        self._buffer_broadcast = StepBufferBroadcast()
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_counts: dict[str, int] = {}
        self.bad_images = BadImageLog(self.args.bad_image_policy)
        # What makes the views of batches of decoded images on the device: the `device_views` of the dataset the
        # training loader was built over, and of the dataset of the evaluation loop's loader while it runs.
        self._train_views: DeviceViews | None = None
        self._eval_views: DeviceViews | None = None
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
        for dataset in (self.eval_dataset.values() if isinstance(self.eval_dataset, dict) else [self.eval_dataset]):
            self._views_for_metrics(dataset)  # before training, not at the first evaluation

    @property
    def preemption(self) -> PreemptionCallback | None:
        """The SIGTERM handling of training (`enable_jit_checkpoint`), None when it is off: its `signals` and
        `listeners` can be set before `train()`."""
        return self._preemption

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

        A step (one optimizer update) trains on one balanced batch of the whole step's size, over N processes and k
        accumulation steps alike: it is split into k micro-batches of whole classes, each into N shards (`SplitSteps`),
        so the processes over the micro-steps see the batches one process would see, augmented alike, and the loss
        makes of them the update of that one batch (`compute_loss`).

        The loader is the Trainer's own (`_get_dataloader`): every loader argument the installed transformers honours
        (`dataloader_num_workers`, `_pin_memory`, `_persistent_workers`, `_prefetch_factor`, ...), its worker seeding
        and `accelerator.prepare` apply as they do to the Trainer's loaders. `dataloader_drop_last` applies without
        the balanced sampler; with it, the sampler decides the epoch's last batch (it draws whole batches only).
        """
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        self._split_steps = None
        if isinstance(self.train_dataset, torch.utils.data.IterableDataset) or not has_length(self.train_dataset):
            return self._counted(super().get_train_dataloader())
        seed = self.args.effective_data_seed
        labels = self.train_labels
        if labels is None and self.args.balanced_sampler:
            labels = dataset_labels(self.train_dataset)
        dataset = SeededAugmentation(tolerant_images(self.train_dataset, "training set", labels, seed), seed)
        self._refuse_collator_of_example_lists(dataset, "training set")
        self._train_views = dataset.device_views
        sampler = None
        if self.args.balanced_sampler:
            # One balanced batch per update, of all processes and accumulation steps together, split into pieces.
            processes, micro = self.accelerator.num_processes, self.args.gradient_accumulation_steps
            sampler = ClassBalancedBatchSampler(labels, batch_size=self._train_batch_size * processes * micro, seed=seed)
            self._split_steps = SplitSteps(sampler, micro, processes)
            pieces = self._split_steps
            # The Trainer's loader (every `dataloader_*` argument, worker seeding, `accelerator.prepare`) takes a
            # sampler and a batch size, no batch sampler, and the pieces differ in length: each is one item, a batch
            # of one. With one piece per batch, accelerate's shard gives each process whole pieces in turn.
            loader = self._get_dataloader(dataset=_PiecesAsItems(dataset), description="Training", batch_size=1,
                                          sampler_fn=lambda _: pieces, is_training=True)
        else:
            loader = self._get_dataloader(dataset=dataset, description="Training", batch_size=self._train_batch_size,
                                          sampler_fn=self._get_train_sampler, is_training=True)
        self._set_epoch_callback.targets = [t for t in (sampler, dataset) if t is not None]
        return self._counted(loader)

    def _last_step(self) -> int | None:
        """The run's last optimizer step, as the Trainer counts it: `max_steps`, else `num_train_epochs` epochs of the
        training loader's updates (a fractional number ends within an epoch); None when the loader has no length."""
        if self.args.max_steps > 0:
            return self.args.max_steps
        self.get_train_dataloader()  # counts an epoch's updates (`_counted`)
        if self._updates_per_epoch is None:
            return None
        return math.ceil(self.args.num_train_epochs * self._updates_per_epoch)

    def _counted(self, loader: DataLoader) -> DataLoader:
        # The paper's schedule needs the optimizer updates per epoch, which the Trainer computes in a method whose
        # signature changed between transformers releases; the loader it trains on gives the same number.
        batches = len(loader) if has_length(loader) else None
        self._updates_per_epoch = (None if batches is None else
                                   updates_per_epoch(batches, self.args.gradient_accumulation_steps))
        return loader

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader:
        """The Trainer's evaluation loader, over a dataset in which an image that cannot be decoded is skipped: the
        trainer's evaluation set, one of its named sets (`eval_dataset` a name) or `eval_dataset` itself.

        With `dataloader_persistent_workers` the loader of the trainer's set and of each named set is kept, as the
        Trainer keeps them; a set passed in gets a loader of its own (the Trainer keeps it as the trainer's set's and
        hands it out again for any other set, or the trainer's).
        """
        named = isinstance(eval_dataset, str)
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if named:
            dataset = self.eval_dataset[eval_dataset]
        if dataset is None or isinstance(dataset, dict):
            return super().get_eval_dataloader(eval_dataset)
        key = eval_dataset if named else "eval" if eval_dataset is None else None
        kept = getattr(self, "_eval_dataloaders", {})
        if key in kept and self.args.dataloader_persistent_workers:
            return kept[key]
        dataset = tolerant_images(dataset, "evaluation set", seed=self.args.effective_data_seed, skip=True)
        return self._get_dataloader(dataset=dataset, description="Evaluation", batch_size=self.args.eval_batch_size,
                                    sampler_fn=self._get_eval_sampler, dataloader_key=key)

    def get_test_dataloader(self, test_dataset: Any) -> DataLoader:
        """The Trainer's prediction loader, over a dataset in which an image that cannot be decoded is skipped."""
        return super().get_test_dataloader(tolerant_images(test_dataset, "prediction set",
                                                           seed=self.args.effective_data_seed, skip=True))

    def evaluation_loop(self, dataloader: DataLoader, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's evaluation loop (`evaluate`, `predict`), whose `prediction_step` makes the views of
        `dataloader`'s batches with its own dataset's `device_views`."""
        self._refuse_collator_of_example_lists(dataloader.dataset, "evaluation or prediction set")
        outer = self._eval_views
        self._eval_views = self._views_for_metrics(dataloader.dataset)
        try:
            return super().evaluation_loop(dataloader, *args, **kwargs)
        finally:
            self._eval_views = outer

    def _refuse_collator_of_example_lists(self, dataset: Any, what: str) -> None:
        """A dataset whose views are made on the device builds each batch itself (`StoredImageDataset.__getitems__`),
        which `SynerMixCollator` passes through; a collator of lists of examples (`default_data_collator`, ...) would
        fail inside the loader with a bare `KeyError`, so it is refused before the loader starts."""
        if views_of(dataset) is None or isinstance(self.data_collator, SynerMixCollator):
            return
        name = getattr(self.data_collator, "__qualname__", None) or type(self.data_collator).__name__
        raise ValueError(
            f"`data_collator` ({name}) cannot batch the {what}: its views are made on the device, so its dataset "
            "hands the loader whole batches, not lists of examples. Use SynerMixCollator (the default) or a subclass "
            "of it, or make the views in the loader (`prepare_views(..., views_on=\"loader\")`, `--views_on loader`)."
        )

    def _views_for_metrics(self, dataset: Any) -> DeviceViews | None:
        """`views_of(dataset)` (its `device_views`), refusing `include_for_metrics=["inputs"]` for a dataset whose
        views are made on the device: the Trainer's evaluation loop reads the inputs from the loader's batch, which has
        no views yet."""
        views = views_of(dataset)
        if views is not None and "inputs" in (self.args.include_for_metrics or []):
            raise ValueError(
                "include_for_metrics=['inputs']: this evaluation set's views are made on the device, batched, after "
                "the Trainer's evaluation loop has read the batch, so there are no inputs to pass to compute_metrics. "
                "Leave 'inputs' out, or make the views in the loader (prepare_views(..., views_on='loader'))."
            )
        return views

    def batch_on_device(self, inputs: dict[str, torch.Tensor | Any], training: bool = False,
                        loader: DataLoader | None = None) -> dict[str, Any]:
        """A batch moved to the device, with its views made (as `compute_loss` and evaluation see it).

        Args:
            inputs: A batch of `loader`, of this trainer's training loader (`training`), or of the loader of the
                evaluation loop that is running.
            training: The batch is from `get_train_dataloader()`'s loader.
            loader: The loader the batch is from (e.g. `get_eval_dataloader()`'s): its dataset's `device_views`
                make the views.
        """
        if loader is not None:
            views = self._views_for_metrics(loader.dataset)
        else:
            views = self._train_views if training else self._eval_views
        # transformers' own `prediction_step` moves the batch with the private `_prepare_inputs` too.
        return self._with_views(self._prepare_inputs(inputs), views)

    def _with_views(self, inputs: dict[str, torch.Tensor | Any],
                    views: DeviceViews | None) -> dict[str, torch.Tensor | Any]:
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
        """The reference's SGD with the paper's recipe (`paper_optimizer`), else the Trainer's optimizer (also when
        one was given in `optimizers=` or `optimizer_cls_and_kwargs=`, which win over the recipe)."""
        if not uses_paper_recipe(self.args) or self.optimizer is not None or self.optimizer_cls_and_kwargs is not None:
            # transformers < 5.3's create_optimizer takes no model.
            return super().create_optimizer() if model is None else super().create_optimizer(model)
        self.optimizer = paper_optimizer(self.model if model is None else model, self.args)
        self._recipe_built.add("optimizer")
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
        self._recipe_built.add("lr_scheduler_type")
        return self.lr_scheduler

    # ---- loss ----

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """The SynerMix loss of a training batch (`training_step` calls it, the model in training mode).

        There is one evaluation path, `prediction_step` (plain cross-entropy and logits of the original view): the
        Trainer's evaluation and `predict()` call it, never this.

        `inputs` holds `pixel_values`, `labels` and, when beta > 0, `original_pixel_values`: batches of decoded images
        get their views in `training_step`, before this. `num_items_in_batch` is accepted for API compatibility and
        not used (L_intra is a mean over classes, not over items). When the step's balanced batch is split over
        processes or accumulation steps (`SplitSteps`), each piece's terms are its part of the one-batch terms
        (`_split_intra_loss`, `StepSplit.example_share`), so that DDP's average and the Trainer's accumulation give
        the update of that one batch.
        """
        labels = inputs["labels"]
        pixel_values = inputs["pixel_values"]
        generator, rng = self._step_random_sources(pixel_values.device)
        split = self._step_split(len(labels))
        beta = self.args.beta
        components: dict[str, torch.Tensor] = {}
        logits = None
        if beta > 0:
            if "original_pixel_values" not in inputs:
                raise ValueError(self._missing_original_view(inputs))
            components["intra"] = self._intra_loss(model, inputs["original_pixel_values"], labels, generator, split)
        if beta < 1:
            components["inter"], logits = self._inter_loss(model, pixel_values, labels, generator, rng)
            if split is not None:  # the step's mean over its examples, however many each piece holds
                components["inter"] = components["inter"] * split.example_share(self._draw_position[1],
                                                                                self.args.process_index)
        else:
            # Weight 0, but the reference runs this forward pass all the same: BatchNorm's running statistics (which
            # evaluation uses) see both views at every step. Nothing of it needs a gradient.
            with torch.no_grad():
                self._inter_loss(model, pixel_values, labels, generator, rng)
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
        self,
        model: nn.Module,
        original: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator,
        split: StepSplit | None = None,
    ) -> torch.Tensor:
        if split is not None:
            return self._split_intra_loss(model, original, labels, generator, split)
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

    def _split_intra_loss(
        self, model: nn.Module, original: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
        split: StepSplit,
    ) -> torch.Tensor:
        """The intra-class term of a micro-batch of a split step: its part of the one-batch term.

        The micro-batch holds whole classes (gathered from the processes), each mixed with the weights one process
        without accumulation draws for the step's batch (`step_generators(seed, step, 0, 0)`, one Uniform(0, 1) per
        row in batch order), and its classes' cross-entropies are summed over the step's number of classes; times
        the accumulation steps, which the Trainer divides the loss by, the micro-steps add up to the reference's mean
        over the step's classes. Every process computes the same term, whose gradient DDP's average then is.
        """
        step, micro_step = self._draw_position
        device = labels.device
        process = self.args.process_index
        if (micro_step, process) != (0, 0):
            generator = step_generators(self.args.seed, step, 0, 0, device)[0]
        # On process 0 in micro-step 0 these are the first draws of its own generator, as on one process.
        draws = torch.rand(split.size, generator=generator, device=device)
        num_classes = self.adapter.num_classes
        pieces = split.pieces[micro_step]
        # The step rows of this micro-step's batch, gathered in process order with each shard padded to `rows`.
        rows = split.most_rows(micro_step)
        order = np.zeros(len(pieces) * rows if len(pieces) > 1 else rows, dtype=np.int64)  # padding: draw 0, weight 0
        for shard, piece in enumerate(pieces):
            order[shard * rows:shard * rows + len(piece)] = piece
        row_draws = draws[torch.from_numpy(order).to(device)]
        present: list[torch.Tensor] = []

        def synthesize(features: torch.Tensor) -> torch.Tensor:
            if len(pieces) > 1:
                gathered, gathered_labels, valid = gather_step_batch(features, labels, rows=rows)
                synthesized, is_present = intra_class_mixup_all_classes(gathered, gathered_labels, num_classes,
                                                                        valid=valid, draws=row_draws)
            else:
                synthesized, is_present = intra_class_mixup_all_classes(features, labels, num_classes,
                                                                        draws=row_draws)
            present.append(is_present)
            return synthesized

        with self.adapter.head_input_replaced(synthesize):
            class_logits = self.adapter.logits(model, original)
        classes = torch.arange(num_classes, device=device)
        loss = intra_class_loss(class_logits, classes, present[0], self.args.label_smoothing_factor,
                                step_classes=split.classes)
        return loss * len(split.pieces)

    def _step_split(self, rows: int) -> StepSplit | None:
        """How the balanced batch of this update is split over processes and micro-steps; None when it is not split
        (one process without accumulation) or the balanced sampler is off."""
        steps = self._split_steps
        if steps is None or steps.micro_batches * steps.shards == 1:
            return None
        if self._split_offset is None:
            # With `ignore_data_skip`, a resumed run starts its epoch's batches again from the first while the step
            # count goes on: the batches stay shifted by the steps trained in that epoch.
            self._split_offset = self.state.global_step % steps.steps_per_epoch if self.args.ignore_data_skip else 0
        epoch, step = divmod(self.state.global_step - self._split_offset, steps.steps_per_epoch)
        if self._split_cache[0] != (steps, epoch, step):
            self._split_cache = ((steps, epoch, step), steps.split(epoch, step))
        split = self._split_cache[1]
        if not split.whole_classes and not self._warned_split:
            self._warned_split = True
            logger.warning(
                "Step %d's balanced batch has fewer classes than the %d micro-batches it is split into (or too few "
                "examples for the %d processes in one of them): it is cut into consecutive micro-batches, and a class "
                "cut between them is mixed within each micro-batch apart, unlike the reference's one batch. Said once "
                "a run; a smaller gradient_accumulation_steps avoids it.", self.state.global_step,
                steps.micro_batches, steps.shards)
        micro_step, process = self._draw_position[1], self.args.process_index
        if micro_step >= len(split.pieces) or len(split.pieces[micro_step][process]) != rows:
            raise RuntimeError(
                f"Step {self.state.global_step}, micro-step {micro_step}, process {process}: the training batch has "
                f"{rows} examples, and the balanced sampler's split of the step gives this piece "
                f"{len(split.pieces[micro_step][process]) if micro_step < len(split.pieces) else 'none'}: the "
                "Trainer trains on other batches than those of SynerMixTrainer.get_train_dataloader."
            )
        return split

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
        (a `ValueError`) saying why; a `resume.ResumePlan` (the command line's) is taken as it was resolved
        (`StagedCheckpoints.checkpoint_to_resume`). With `enable_jit_checkpoint`, raises
        `TrainingPreempted` (naming the checkpoint it saved) when SIGTERM stopped training.
        """
        if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            resume_from_checkpoint = self.checkpoint_to_resume(resume_from_checkpoint)
            done = self.trained_to_the_end(resume_from_checkpoint)
            if done is not None:  # nothing left to train (the final save of the run had failed)
                return done
            self.warn_of_a_fresh_optimizer(resume_from_checkpoint)
        self._finite_check.reset()
        self._split_offset = None
        try:
            with self._peer_watch.collectives(self.args.ddp_timeout):
                result = super().train(resume_from_checkpoint, *args, **kwargs)
        except EvaluationStopped:  # a stop signal during an evaluation: save at the step, then stop
            logger.warning("%s: stopping the evaluation, and training after step %d, with a checkpoint.",
                           self._preemption.received.name if self._preemption.received else "A signal",
                           self.state.global_step)
            self._save_checkpoint(self.model_wrapped, None)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)
            self._preemption.close()
            raise self._preemption.preempted(self.args.output_dir) from None
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
        """`Trainer.create_model_card`, stating the paper recipe's optimizer and schedule where it trained (the
        Trainer's card names its own `optim` and `lr_scheduler_type`), with `model_card_section` added at the end."""
        super().create_model_card(*args, **kwargs)
        if not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        with open(path, encoding="utf-8") as handle:
            card = handle.read()
        hyperparameters = {name: text for name, text in recipe_hyperparameters(self.args).items()
                           if name in self._recipe_built} if self._recipe_built else {}
        card = card_with_hyperparameters(card, hyperparameters) + self.model_card_section
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(card)

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


def card_with_hyperparameters(card: str, hyperparameters: Mapping[str, str]) -> str:
    """The Trainer's model card with the lines of `hyperparameters` (`- name: value` in its hyperparameters list)
    replaced, and "trained from scratch" where it links to a base model with no name (a torchvision model)."""
    lines = card.split("\n")
    for index, line in enumerate(lines):
        name = line[2:].split(":", 1)[0] if line.startswith("- ") else None
        if name in hyperparameters:
            lines[index] = f"- {name}: {hyperparameters[name]}"
    return "\n".join(lines).replace("This model is a fine-tuned version of [](https://huggingface.co/) on ",
                                     "This model was trained from scratch on ")


class _PiecesAsItems(torch.utils.data.Dataset):
    """A `SeededAugmentation` whose item is a whole piece of a step (a list of `(index, position)` pairs, as
    `SplitSteps` yields them), for a loader with batches of one item: the Trainer's `_get_dataloader` takes a sampler
    and a batch size but no batch sampler (transformers 5.0 builds `DataLoader(batch_size=, sampler=, drop_last=)`).

    Its `device_views` are those of the dataset it reads.
    """

    def __init__(self, dataset: SeededAugmentation):
        self.dataset = dataset

    @property
    def device_views(self) -> DeviceViews | None:
        return self.dataset.device_views

    def __len__(self) -> int:
        # The examples of an epoch, which is what the Trainer counts with it (`num_examples`); the loader's length
        # comes from its sampler.
        return len(self.dataset)

    def __getitem__(self, piece: Sequence[tuple[int, int]]) -> Any:
        return self.dataset.__getitems__(piece)

    def __getitems__(self, pieces: Sequence[Sequence[tuple[int, int]]]) -> Any:
        (piece,) = pieces  # a batch of one piece
        return self.dataset.__getitems__(piece)


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
