"""What every argument of `transformers.Trainer` does with `SynerMixTrainer`: the whole surface, walked.

Every field of `transformers.TrainingArguments` (of the installed release and of the floor, transformers 5.0), every
parameter of `Trainer.__init__`, and every field `SynerMixTrainingArguments` and `RecipeTrainingArguments` add is
classified here as

* `honoured`: it takes effect, by this project's code (the entry names the test that shows it) or by the Trainer's
  own code that `SynerMixTrainer` does not override (the entry names that code);
* `refused`: giving it raises an error before training, which says why (the entry carries a value that is refused);
* `not_applicable`: it has nothing to act on in image classification with SynerMix, and the entry says why.

tests/test_trainer_surface.py enumerates the installed transformers' fields and parameters and fails on any name
this table does not classify, so a transformers release that adds an argument fails the suite until someone decides
what it does here. `UNDECIDED` lists the arguments found to be dropped or broken by `SynerMixTrainer` that are not yet
fixed or refused; the suite fails while it is not empty. docs/trainer_surface.md is `render_markdown()`'s output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "FLOOR_ONLY",
    "NEWER_ONLY",
    "STATUSES",
    "SYNERMIX_ARGUMENTS",
    "Surface",
    "TRAINER_PARAMETERS",
    "TRAINING_ARGUMENTS",
    "UNDECIDED",
    "render_markdown",
    "surface_of",
]

STATUSES = ("honoured", "refused", "not_applicable")
_NOT_GIVEN = object()


@dataclass(frozen=True)
class Surface:
    """What one argument does with `SynerMixTrainer`.

    Args:
        status: `honoured`, `refused` or `not_applicable` (`dropped` only in `UNDECIDED`).
        why: One line: what reads it (our code or the Trainer's, named), why it is refused, or why it does not apply.
        test: `tests/test_x.py::test_name` of the test that shows its effect or its refusal, where there is one.
        refused_value: For a refused argument, a value that is refused (the default is accepted).
        refused_by: For a refused argument, the class whose construction refuses it: `SynerMixTrainingArguments`,
            `RecipeTrainingArguments` (under `recipe="paper"`, its default) or `SynerMixTrainer`.
    """

    status: str
    why: str
    test: str | None = None
    refused_value: Any = _NOT_GIVEN
    refused_by: str | None = None

    @property
    def has_refused_value(self) -> bool:
        return self.refused_value is not _NOT_GIVEN


def _honoured(why: str, test: str | None = None) -> Surface:
    return Surface("honoured", why, test)


def _refused(why: str, value: Any, by: str, test: str | None = None) -> Surface:
    return Surface("refused", why, test, value, by)


def _not_applicable(why: str) -> Surface:
    return Surface("not_applicable", why)


# Tests named below, by file.
_INPUTS = "tests/test_trainer_inputs.py"
_SURFACE = "tests/test_trainer_surface.py"
_BUNDLE = f"{_SURFACE}::test_the_trainers_own_arguments_take_effect_through_synermix_trainer"
_TRAINER = "tests/test_trainer.py"
_RECIPE = "tests/test_script_recipe.py"
_CHECKPOINTS = "tests/test_checkpoints.py"
_SGD_TEST = f"{_RECIPE}::test_trainer_uses_sgd_with_the_recipe_and_steps_lr_per_epoch"
_COMPILE_TEST = f"{_TRAINER}::test_torch_compile_trains_exactly_like_eager_with_the_synermix_hooks"
_LOSS_TEST = f"{_TRAINER}::test_total_loss_equals_beta_intra_plus_one_minus_beta_inter_by_hand"

_PAPER_REPLACES = ("the paper recipe builds the reference's SGD and per-epoch StepLR instead (`recipe=\"trainer\"` "
                   "hands it to the Trainer); SynerMixTrainingArguments and recipe=\"trainer\": the Trainer's ")
_RECIPE_REFUSAL_TEST = (f"{_INPUTS}::"
                        "test_recipe_arguments_refuse_the_optimizer_and_schedule_fields_under_the_paper_recipe")


def _paper_replaces(what: str, value: Any) -> Surface:
    return _refused(_PAPER_REPLACES + what, value, "RecipeTrainingArguments", _RECIPE_REFUSAL_TEST)


_LOADER = "Trainer: `_get_dataloader`, which builds the training loader (get_train_dataloader) and the evaluation ones"
_LOADER_TEST = f"{_INPUTS}::test_the_training_loader_gets_every_loader_argument_of_the_trainer"
_SHARDED = ("SynerMix runs two forward passes before one backward pass, which FSDP and DeepSpeed ZeRO do not support "
            "as DDP does (`training_args._sharded_training`)")
_STEPS_IMPLY = ("; with RecipeTrainingArguments, giving it implies the `steps` strategy (the recipe's is per "
                "epoch), tested in tests/test_trainer_inputs.py::test_an_interval_in_steps_implies_its_steps_strategy_"
                "in_the_recipe")
_HUB = "Trainer: `init_hf_repo` / `push_to_hub` / `_push_from_checkpoint` (called once a checkpoint is complete)"

# Fields of transformers 5.0's TrainingArguments that 5.25 no longer has, and fields 5.25 has that 5.0 lacks.
FLOOR_ONLY = frozenset({"group_by_length", "logging_dir", "warmup_ratio"})
NEWER_ONLY = frozenset({"activation_checkpointing", "activation_checkpointing_kwargs", "dataloader_in_order",
                        "dataloader_multiprocessing_context", "ddp_static_graph", "trackio_bucket_id",
                        "trackio_static_space_id", "train_sampling_strategy"})

TRAINING_ARGUMENTS: dict[str, Surface] = {
    # ---- run and output ----
    "output_dir": _honoured("where the Trainer writes; checkpoints are staged and renamed there (`StagedCheckpoints`)",
                            f"{_CHECKPOINTS}::"
                            "test_a_run_interrupted_during_a_save_continues_to_the_uninterrupted_weights"),
    "do_train": _not_applicable("the Trainer never reads it (as in transformers); the command line does"),
    "do_eval": _honoured("RecipeTrainingArguments: `eval_strategy` defaults to `epoch` with it, `no` without; the "
                         "Trainer never reads it", f"{_SURFACE}::test_the_recipe_evaluates_per_epoch_with_do_eval"),
    "do_predict": _not_applicable("the Trainer never reads it (as in transformers); the command line does"),
    "resume_from_checkpoint": _not_applicable("the Trainer never reads it (as in transformers): pass "
                                              "`train(resume_from_checkpoint=...)`; the command line reads it"),
    "local_rank": _not_applicable("transformers reads it nowhere (kept so that `torch.distributed.launch`'s "
                                  "`--local_rank` parses); the rank comes from the launcher's environment"),
    # ---- steps, epochs, batches ----
    "per_device_train_batch_size": _honoured("get_train_dataloader's batch (`_train_batch_size`); the balanced "
                                             "sampler's batch of each process",
                                             f"{_TRAINER}::test_balanced_batches_reach_the_loss"),
    "per_device_eval_batch_size": _honoured("Trainer: `get_eval_dataloader` / `get_test_dataloader` (not overridden "
                                            "past the dataset)", _BUNDLE),
    "num_train_epochs": _honoured("Trainer: `set_initial_training_values`",
                                  _SGD_TEST),
    "max_steps": _honoured("Trainer: `set_initial_training_values`", _BUNDLE),
    "gradient_accumulation_steps": _honoured(
        "Trainer's loop; SynerMix's loss is a per-micro-batch mean (`loss_is_scaled_for_ga = False`) and the paper "
        "schedule counts updates per epoch",
        f"{_TRAINER}::test_gradient_accumulation_gives_the_update_of_one_big_batch"),
    "auto_find_batch_size": _honoured("Trainer: `train` retries with a halved `_train_batch_size` on out-of-memory, "
                                      "which get_train_dataloader reads (not tested here: no out-of-memory on a CPU)"),
    "average_tokens_across_devices": _not_applicable(
        "the Trainer scales only losses normalised by `num_items_in_batch`; SynerMix's loss is a per-batch mean "
        "(`model_accepts_loss_kwargs = False`), averaged over processes by DDP"),
    # ---- optimizer and schedule ----
    "learning_rate": _honoured("the paper recipe's SGD (`paper_optimizer`) or the Trainer's optimizer",
                               _SGD_TEST),
    "weight_decay": _honoured("the paper recipe's SGD (`paper_optimizer`, on every parameter) or the Trainer's "
                              "optimizer", _SGD_TEST),
    "optim": _paper_replaces("`get_optimizer_cls_and_kwargs`", "adamw_torch"),
    "optim_args": _paper_replaces("`get_optimizer_cls_and_kwargs`", "momentum=0.5"),
    "optim_target_modules": _paper_replaces("low-rank optimizers (GaLore, APOLLO)", ["attn"]),
    "adam_beta1": _paper_replaces("AdamW", 0.8),
    "adam_beta2": _paper_replaces("AdamW", 0.99),
    "adam_epsilon": _paper_replaces("AdamW", 1e-6),
    "lr_scheduler_type": _paper_replaces("`create_scheduler`", "cosine"),
    "lr_scheduler_kwargs": _paper_replaces("`create_scheduler`", {"num_cycles": 2}),
    "warmup_steps": _paper_replaces("`create_scheduler` (`get_warmup_steps`)", 2),
    "warmup_ratio": _paper_replaces("`create_scheduler` (5.0 copies it to `warmup_steps`)", 0.1),
    "max_grad_norm": _honoured("Trainer: `_clip_grad_norm` after the backward pass; the recipe's default 0 does not "
                               "clip", f"{_RECIPE}::test_the_recipe_does_not_clip_gradients"),
    # ---- loss ----
    "label_smoothing_factor": _honoured(
        "SynerMix's loss applies it to every cross-entropy term (intra, inter, evaluation); the Trainer's label "
        "smoother is bypassed", _LOSS_TEST),
    # ---- precision and speed ----
    "bf16": _honoured("Trainer: accelerate's autocast around `compute_loss`; views are made in their own dtype",
                      f"{_TRAINER}::test_bf16_autocast_trains"),
    "fp16": _honoured("Trainer: accelerate's fp16 autocast and grad scaler (CUDA only; RecipeTrainingArguments warns "
                      "on a CPU)"),
    "bf16_full_eval": _honoured("Trainer: `evaluation_loop` casts the model to bf16; a model must cast its input "
                                "(Hugging Face models do, torchvision's fail with a dtype error, as in the Trainer)"),
    "fp16_full_eval": _honoured("Trainer: `evaluation_loop` casts the model to fp16; a model must cast its input "
                                "(Hugging Face models do, torchvision's fail with a dtype error, as in the Trainer)"),
    "tf32": _honoured("TrainingArguments: `enable_tf32` on an Ampere or newer GPU"),
    "torch_compile": _honoured("Trainer and accelerate compile the model; SynerMix's hooks are traced", _COMPILE_TEST),
    "torch_compile_backend": _honoured("accelerate's TorchDynamoPlugin", _COMPILE_TEST),
    "torch_compile_mode": _honoured("accelerate's TorchDynamoPlugin (`_build_accelerator_args`)"),
    "activation_checkpointing": _honoured(
        "Trainer: `train` calls the model's `activation_checkpointing_enable` (Hugging Face models; a torchvision "
        "model has none and fails there); SynerMix's hooks give the same losses",
        f"{_SURFACE}::test_activation_checkpointing_trains_like_without_it_with_the_synermix_hooks"),
    "activation_checkpointing_kwargs": _honoured("Trainer: passed to `activation_checkpointing_enable`"),
    "gradient_checkpointing": _honoured(
        "TrainingArguments: alias of `activation_checkpointing` (5.0: the Trainer calls "
        "`gradient_checkpointing_enable`); with Manifold MixUp refused before transformers 5.25, which recompute a "
        "checkpointed layer's call without the mixing hook (torch's CheckpointError)",
        f"{_SURFACE}::test_activation_checkpointing_trains_like_without_it_with_the_synermix_hooks"),
    "gradient_checkpointing_kwargs": _honoured("TrainingArguments: alias of `activation_checkpointing_kwargs`"),
    "torch_empty_cache_steps": _honoured("Trainer: `training_step` (which SynerMixTrainer calls) empties the device "
                                         "cache every this many steps"),
    "use_liger_kernel": _not_applicable("Liger kernels replace layers of language models; an image classifier has "
                                        "none (the Trainer's `apply_liger_kernel` needs the liger-kernel package)"),
    "liger_kernel_config": _not_applicable("configures `use_liger_kernel`, which does not apply"),
    "neftune_noise_alpha": _honoured("Trainer: `train` adds noise to the output of `get_input_embeddings()` (a "
                                     "ViT's patch embeddings; a torchvision model has none and fails there)"),
    "use_cache": _honoured("Trainer: sets `model.config.use_cache`; image classifiers keep no generation cache"),
    # ---- logging ----
    "logging_strategy": _honoured("Trainer: `DefaultFlowCallback`; SynerMix adds `loss_intra` / `loss_inter` to "
                                  "each training log", _BUNDLE),
    "logging_steps": _honoured("Trainer: `DefaultFlowCallback`" + _STEPS_IMPLY, _BUNDLE),
    "logging_first_step": _honoured("Trainer: `DefaultFlowCallback.on_step_end`", _BUNDLE),
    "logging_nan_inf_filter": _honoured(
        "Trainer: `_run_epoch`; off by default here, as a non-finite loss stops training (`FiniteLossCheck`)",
        f"{_TRAINER}::test_non_finite_loss_is_reported_with_step_and_components_and_not_trained_on"),
    "logging_dir": _not_applicable("transformers 5.0 itself ignores it (deprecated: it warns to set "
                                   "TENSORBOARD_LOGGING_DIR instead)"),
    "log_on_each_node": _honoured("TrainingArguments: `should_log` / `get_process_log_level`"),
    "log_level": _honoured("Trainer: `__init__` sets transformers' verbosity (`get_process_log_level`)"),
    "log_level_replica": _honoured("Trainer: `__init__`, on processes other than the main one"),
    "disable_tqdm": _honoured("Trainer: `PrinterCallback` instead of the progress bar", _BUNDLE),
    "include_num_input_tokens_seen": _refused(
        "it counts text tokens; an image classifier's input has none (the Trainer would count pixel values, or 0 "
        "where the views are made on the device)", True, "SynerMixTrainingArguments"),
    "skip_memory_metrics": _honoured("Trainer: `TrainerMemoryTracker` (needs psutil)"),
    "report_to": _honoured("Trainer: reporting callbacks (`get_reporting_integration_callbacks`); they log "
                           "`to_dict()`, in which SynerMixTrainingArguments masks every credential"),
    "run_name": _honoured("Trainer: reporting callbacks (W&B, MLflow, trackio, ...)"),
    "project": _honoured("Trainer: the trackio callback's project"),
    "trackio_space_id": _honoured("Trainer: the trackio callback"),
    "trackio_bucket_id": _honoured("Trainer: the trackio callback"),
    "trackio_static_space_id": _honoured("Trainer: the trackio callback"),
    # ---- evaluation ----
    "eval_strategy": _honoured("Trainer: `DefaultFlowCallback`; evaluation is plain cross-entropy on the original "
                               "view", _BUNDLE),
    "eval_steps": _honoured("Trainer: `DefaultFlowCallback`" + _STEPS_IMPLY, _BUNDLE),
    "eval_delay": _honoured("Trainer: `DefaultFlowCallback`", _BUNDLE),
    "eval_on_start": _honoured("Trainer: `_inner_training_loop` evaluates before the first step", _BUNDLE),
    "prediction_loss_only": _honoured("SynerMixTrainer.prediction_step returns only the loss with it", _BUNDLE),
    "eval_accumulation_steps": _honoured("Trainer: `evaluation_loop` moves predictions to the CPU every this many "
                                         "steps"),
    "eval_do_concat_batches": _honoured("Trainer: `evaluation_loop`"),
    "eval_use_gather_object": _honoured("Trainer: accelerate's `gather_for_metrics(use_gather_object=...)`"),
    "include_for_metrics": _honoured(
        "Trainer: `evaluation_loop` passes `loss` and `inputs` to `compute_metrics`; 'inputs' is refused for an "
        "evaluation set whose views are made on the device (the loop reads the batch before they exist)",
        f"{_INPUTS}::test_include_for_metrics_inputs_is_refused_where_the_views_are_made_on_the_device"),
    "batch_eval_metrics": _honoured("Trainer: `evaluation_loop` calls `compute_metrics(..., compute_result=...)` per "
                                    "batch", _BUNDLE),
    "metric_for_best_model": _honoured("Trainer: `_determine_best_metric`",
                                       f"{_CHECKPOINTS}::test_the_best_checkpoint_is_recorded_under_its_final_name"),
    "greater_is_better": _honoured("Trainer: `_determine_best_metric`"),
    "load_best_model_at_end": _honoured("Trainer's `_finalize_training`; SynerMixTrainer loads renamed weights too "
                                        "(`LegacyWeightNames._load_best_model`)",
                                        f"{_CHECKPOINTS}::test_the_best_checkpoint_is_recorded_under_its_final_name"),
    # ---- checkpoints ----
    "save_strategy": _honoured("Trainer: `DefaultFlowCallback`; each checkpoint is staged and renamed whole",
                               _BUNDLE),
    "save_steps": _honoured("Trainer: `DefaultFlowCallback`" + _STEPS_IMPLY, _BUNDLE),
    "save_total_limit": _honoured(
        "StagedCheckpoints rotates older checkpoints out only after the new one is complete",
        f"{_CHECKPOINTS}::test_a_checkpoint_left_incomplete_by_another_writer_is_skipped_named_and_removed"),
    "save_only_model": _honoured("Trainer: `_save_checkpoint` leaves the optimizer out; a resume accepts such a "
                                 "checkpoint and warns that its fresh optimizer and schedule make it inexact",
                                 f"{_CHECKPOINTS}::"
                                 "test_a_checkpoint_of_a_run_that_saved_only_the_model_needs_no_optimizer"),
    "save_on_each_node": _honoured("StagedCheckpoints: a node whose file system does not see process 0's folder "
                                   "completes its own copy (not tested here: needs nodes without a shared disk)"),
    "enable_jit_checkpoint": _honoured(
        "replaced by `PreemptionCallback`: SIGTERM finishes the step, saves a checkpoint and `train` raises",
        "tests/test_preemption.py::"
        "test_sigterm_saves_a_checkpoint_at_that_step_and_the_rerun_ends_as_an_uninterrupted_run"),
    "restore_callback_states_from_checkpoint": _honoured("Trainer: `_load_callback_state` on resume"),
    "ignore_data_skip": _honoured("Trainer: `_inner_training_loop` does not skip the first batches on resume"),
    # ---- Hub ----
    "push_to_hub": _honoured(_HUB),
    "hub_model_id": _honoured(_HUB),
    "hub_strategy": _honoured(_HUB),
    "hub_token": _honoured(_HUB + "; masked wherever the run writes it",
                           "tests/test_credentials.py::test_no_token_in_any_file_of_the_run_or_on_the_console"),
    "hub_private_repo": _honoured(_HUB),
    "hub_always_push": _honoured(_HUB),
    "hub_revision": _honoured(_HUB),
    # ---- seeds ----
    "seed": _honoured("SynerMix's mixing draws (`step_generators`), the sampler and augmentation seeds when "
                      "`data_seed` is not given, and the Trainer's `set_seed`",
                      f"{_TRAINER}::test_same_seed_reproduces_a_run_and_another_seed_does_not"),
    "data_seed": _honoured("seeds the balanced sampler, the shuffled sampler and each example's augmentation "
                           "instead of `seed`", f"{_SURFACE}::test_data_seed_draws_the_batches_whatever_the_seed"),
    "full_determinism": _honoured("Trainer: `enable_full_determinism` instead of `set_seed`"),
    # ---- devices and distribution ----
    "use_cpu": _honoured("TrainingArguments: trains on the CPU; set by the project for CPU-only launches "
                         "(`chosen_settings`)",
                         "tests/test_script_cli.py::test_use_cpu_false_is_refused_when_cpu_processes_were_launched"),
    "accelerator_config": _honoured("Trainer: the Accelerator's settings; when not given, `non_blocking` is chosen "
                                    "with pinned memory (`chosen_settings`); `split_batches` with the balanced sampler "
                                    "is refused (the sampler gives each process its own whole classes)",
                                    f"{_INPUTS}::test_split_batches_is_refused_with_the_balanced_sampler"),
    "ddp_find_unused_parameters": _honoured("Trainer: DDP's kwargs (`_build_accelerator_args`)"),
    "ddp_bucket_cap_mb": _honoured("Trainer: DDP's kwargs (`_build_accelerator_args`)"),
    "ddp_broadcast_buffers": _honoured("Trainer: DDP's kwargs; when on, SynerMixTrainer broadcasts once per step "
                                       "(`StepBufferBroadcast`)",
                                       "tests/test_distributed.py::"
                                       "test_one_ddp_step_equals_the_average_of_the_two_process_gradients"),
    "ddp_static_graph": _honoured("Trainer: DDP's kwargs (`_build_accelerator_args`)"),
    "ddp_backend": _honoured("TrainingArguments: the process group's backend"),
    "ddp_timeout": _honoured("every process group of the run (the Trainer's, opened with it on CPU processes too, "
                             "and the preemption exchange's); a frozen process is named when it expires",
                             "tests/test_distributed.py::"
                             "test_a_frozen_process_stops_the_others_after_ddp_timeout_with_one_line_naming_it"),
    "fsdp": _refused(_SHARDED, "full_shard", "SynerMixTrainingArguments",
                     "tests/test_cli_flags.py::test_sharded_training_is_refused_up_front_with_the_reason"),
    "fsdp_config": _refused(_SHARDED, {"min_num_params": 1}, "SynerMixTrainingArguments"),
    "parallelism_config": _refused(_SHARDED + "; accelerate's ParallelismConfig shards the model (dp_shard) or "
                                   "splits it (tp, cp) likewise", {"dp_shard_size": 2}, "SynerMixTrainingArguments"),
    "deepspeed": _refused(_SHARDED, "ds_config.json", "SynerMixTrainingArguments",
                          "tests/test_cli_flags.py::test_sharded_training_is_refused_up_front_with_the_reason"),
    "debug": _honoured("Trainer: `train` / `evaluate` (underflow-overflow detection, TPU metrics)"),
    # ---- data ----
    "dataloader_drop_last": _honoured(
        _LOADER + "; with the balanced sampler, which draws whole balanced batches only (a batch of one balanced "
        "piece a loader batch), the sampler decides the epoch's last batch as the reference's does", _LOADER_TEST),
    "dataloader_num_workers": _honoured(_LOADER, _LOADER_TEST),
    "dataloader_pin_memory": _honoured(_LOADER, _LOADER_TEST),
    "dataloader_persistent_workers": _honoured(_LOADER, _LOADER_TEST),
    "dataloader_prefetch_factor": _honoured(_LOADER, _LOADER_TEST),
    "dataloader_multiprocessing_context": _honoured(_LOADER, _LOADER_TEST),
    "dataloader_in_order": _honoured(_LOADER, _LOADER_TEST),
    "remove_unused_columns": _refused(
        "the loss reads `original_pixel_values`, which no model's forward takes, and on-the-fly transforms need the "
        "image and label columns", True, "SynerMixTrainingArguments",
        f"{_TRAINER}::test_remove_unused_columns_is_off_and_turning_it_on_is_refused_with_the_reason"),
    "length_column_name": _not_applicable("only read for length-grouped sampling of text, which is refused"),
    "label_names": _refused("SynerMix's batches carry their labels under 'labels' (SynerMixCollator; the view "
                            "transforms' `label_column` names the dataset's column)", ["label"],
                            "SynerMixTrainingArguments"),
    "train_sampling_strategy": _refused(
        "'random' and 'sequential' (the latter without the balanced sampler) are honoured by get_train_dataloader; "
        "'group_by_length' and 'batch_rebalance' group text by its length in tokens, which images do not have",
        "group_by_length", "SynerMixTrainingArguments",
        f"{_INPUTS}::test_sampling_strategies_for_text_are_refused_and_sequential_needs_the_plain_sampler"),
    "group_by_length": _refused("groups text by its length in tokens, which images do not have", True,
                                "SynerMixTrainingArguments"),
}

TRAINER_PARAMETERS: dict[str, Surface] = {
    "model": _honoured("any image classifier whose head `ModelAdapter` finds (torchvision, timm, Hugging Face)",
                       f"{_TRAINER}::test_six_configurations_train_end_to_end_and_the_loss_goes_down"),
    "args": _honoured("must be SynerMixTrainingArguments (or RecipeTrainingArguments); plain TrainingArguments are "
                      "refused with a TypeError", f"{_TRAINER}::test_plain_training_arguments_are_refused"),
    "data_collator": _honoured("defaults to `SynerMixCollator`; one that drops `original_pixel_values` is named in "
                               "the error; a dataset whose views are made on the device builds its batches itself, "
                               "so there another collator than `SynerMixCollator` (or a subclass) is refused",
                               f"{_TRAINER}::test_a_collator_that_drops_the_original_view_is_named_in_the_error"),
    "train_dataset": _honoured("get_train_dataloader: seeded augmentation, balanced batches, bad images replaced",
                               f"{_TRAINER}::test_balanced_batches_reach_the_loss"),
    "eval_dataset": _honoured("get_eval_dataloader: the Trainer's loader, bad images skipped (in each named set "
                              "too; with persistent workers each set keeps its own loader)",
                              f"{_TRAINER}::test_evaluation_is_plain_cross_entropy_and_predict_returns_plain_logits"),
    "processing_class": _honoured("Trainer: saved beside the model in the output folder and every checkpoint",
                                  _BUNDLE),
    "model_init": _honoured("Trainer: `train` builds the model again; `ModelAdapter` follows the new model",
                            _BUNDLE),
    "compute_loss_func": _refused("SynerMix's loss replaces the model's; to change the criterion, override "
                                  "`compute_loss`", lambda outputs, labels, num_items_in_batch=None: outputs,
                                  "SynerMixTrainer", f"{_INPUTS}::test_compute_loss_func_is_refused_naming_why"),
    "compute_metrics": _honoured("Trainer: `evaluation_loop`, on the plain logits of the original view", _BUNDLE),
    "callbacks": _honoured("Trainer: `CallbackHandler`", _BUNDLE),
    "optimizers": _honoured("an optimizer or scheduler given wins over the paper recipe and the Trainer's",
                            f"{_RECIPE}::test_an_optimizer_and_schedule_given_in_optimizers_win_over_the_recipe"),
    "optimizer_cls_and_kwargs": _honoured(
        "wins over the paper recipe as `optimizers=` does; else the Trainer's `create_optimizer`",
        f"{_INPUTS}::test_optimizer_cls_and_kwargs_wins_over_the_paper_recipe"),
    "preprocess_logits_for_metrics": _honoured("Trainer: `evaluation_loop`, on the plain logits", _BUNDLE),
    # SynerMixTrainer's own parameter.
    "train_labels": _honoured("the balanced sampler's labels, instead of reading them from the dataset (not tested "
                              "here)"),
}

SYNERMIX_ARGUMENTS: dict[str, Surface] = {
    # SynerMixTrainingArguments
    "beta": _honoured("weight of the intra-class term",
                      _LOSS_TEST),
    "alpha": _honoured("lambda ~ Beta(alpha, alpha) of the inter-class mixup",
                       _LOSS_TEST),
    "inter_mixup": _honoured("the inter-class mixup (none, mixup, manifold_mixup, cutmix)",
                             "tests/test_mixup.py::"
                             "test_every_inter_mixup_of_the_table_is_accepted_labelled_and_trains_a_step"),
    "balanced_sampler": _honoured("class-balanced batches (`ClassBalancedBatchSampler`)",
                                  f"{_TRAINER}::test_balanced_batches_reach_the_loss"),
    "head_module": _honoured("`ModelAdapter`'s head",
                             "tests/test_adapters.py::test_overrides_win_and_bad_names_say_which_argument_to_set"),
    "manifold_mixup_modules": _honoured("`ModelAdapter`'s Manifold MixUp points",
                                        _LOSS_TEST),
    "max_bad_image_fraction": _honoured("`BadImagePolicy`",
                                        "tests/test_bad_images.py::"
                                        "test_more_bad_images_than_max_bad_image_fraction_stop_with_one_line"),
    "stop_on_bad_image": _honoured("`BadImagePolicy`",
                                   "tests/test_bad_images.py::test_stop_on_bad_image_stops_at_the_first"),
    "chosen_settings": _not_applicable("not an argument (`init=False`): the values the project chose, with reasons"),
    # RecipeTrainingArguments
    "recipe": _honoured("`paper` (SGD + per-epoch StepLR) or `trainer` (the Trainer's optimizer and schedule)",
                        f"{_RECIPE}::test_trainer_recipe_hands_optimizer_and_schedule_back"),
    "momentum": _honoured("`paper_optimizer`", _SGD_TEST),
    "nesterov": _honoured("`paper_optimizer`", _SGD_TEST),
    "lr_step_size": _honoured("`epoch_step_lr`", _SGD_TEST),
    "lr_gamma": _honoured("`epoch_step_lr`", _SGD_TEST),
    "amp": _honoured("fp16 on CUDA, bf16 elsewhere", f"{_RECIPE}::test_mixed_precision_flag_picks_bf16_without_cuda"),
    "total_train_batch_size": _honoured(
        "split into `per_device_train_batch_size` over processes and accumulation steps",
        "tests/test_script_cli.py::test_bs_is_the_batch_of_one_step_and_per_device_keeps_its_meaning"),
}

# ==== UNDECIDED ====
# Arguments that SynerMixTrainer (or RecipeTrainingArguments) silently drops or breaks: neither honoured nor refused.
# tests/test_trainer_surface.py fails while this is not empty; moving an entry into the tables above (honoured with a
# test, or refused with the error) decides it.
UNDECIDED: dict[str, Surface] = {}


def surface_of(name: str) -> Surface | None:
    """The classification of an argument of the Trainer, its TrainingArguments or ours; None when there is none."""
    for table in (TRAINING_ARGUMENTS, TRAINER_PARAMETERS, SYNERMIX_ARGUMENTS, UNDECIDED):
        if name in table:
            return table[name]
    return None


def _only_in(name: str) -> str:
    if name in FLOOR_ONLY:
        return " (transformers 5.0 only)"
    if name in NEWER_ONLY:
        return " (not in transformers 5.0)"
    return ""


def _rows(table: dict[str, Surface]) -> list[str]:
    rows = ["| Argument | Here | What it does with SynerMixTrainer | Test |", "|---|---|---|---|"]
    for name in sorted(table):
        entry = table[name]
        status = entry.status.replace("_", " ")
        if entry.status == "refused" and entry.refused_by:
            status += f" by {entry.refused_by}"
        test = f"`{entry.test}`" if entry.test else ""
        rows.append(f"| `{name}`{_only_in(name)} | {status} | {entry.why.replace('|', '/')} | {test} |")
    return rows


def render_markdown() -> str:
    """docs/trainer_surface.md: the tables above, for users."""
    parts = [
        "# Every Trainer argument with SynerMixTrainer",
        "",
        "<!-- Generated by synermix_hf.trainer_surface.render_markdown(); edit the table there, not this file. -->",
        "",
        "Each field of `transformers.TrainingArguments` (transformers 5.0 to the installed release), each parameter "
        "of `Trainer.__init__`, and each argument SynerMix adds is *honoured* (it takes effect: by SynerMix's code, "
        "or by the Trainer's own code that `SynerMixTrainer` does not override, named), *refused* (an error before "
        "training says why) or *not applicable* (why). A test (tests/test_trainer_surface.py) fails on any argument "
        "of the installed transformers that is not in this table.",
        "",
        "Under `RecipeTrainingArguments` with `recipe=\"paper\"` (their default, and the command line's) the "
        "optimizer and schedule arguments of the Trainer are refused: the recipe trains with the reference's SGD and "
        "per-epoch StepLR. `SynerMixTrainingArguments` and `recipe=\"trainer\"` pass them to the Trainer.",
        "",
        "## TrainingArguments",
        "",
        *_rows(TRAINING_ARGUMENTS),
        "",
        "## Trainer parameters",
        "",
        *_rows(TRAINER_PARAMETERS),
        "",
        "## Arguments SynerMix adds",
        "",
        "`SynerMixTrainingArguments` adds the method's arguments; `RecipeTrainingArguments` adds the recipe's.",
        "",
        *_rows(SYNERMIX_ARGUMENTS),
        "",
    ]
    if UNDECIDED:
        parts += ["## Not yet decided", "",
                  "These are accepted and dropped or broken today; each is to become honoured or refused.", "",
                  *_rows(UNDECIDED), ""]
    return "\n".join(parts)
