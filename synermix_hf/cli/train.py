"""Train and evaluate an image classifier with SynerMix (arXiv:2403.14137) on the Hugging Face Trainer.

    synermix-train                                            # built-in digits, offline, about a minute on a CPU
    synermix-train -mn resnet18 -ds cifar100 -bs 128 -alpha 1 -beta 0.1 -itrm Manifold_Mixup
    python run_image_classification.py --dataset_name food101 --beta 0.1    # the same, from a checkout
    accelerate launch run_image_classification.py --dataset_name food101 --beta 0.1
    python -m synermix_hf.cli.train args.json                 # the same arguments from a JSON (or YAML) file

Arguments come in four groups (`synermix_hf.cli.arguments`, parsed by `HfArgumentParser`): the model, the data, what
the script writes and training (SynerMix + the authors' recipe + every `TrainingArguments` flag). Flags shared with
Hugging Face's `examples/pytorch/image-classification/run_image_classification.py` keep its names, and the authors'
short flags work too. A mistake in the input ends the script before training with one paragraph on stderr and exit status 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
from typing import Any

from ..checkpoints import CheckpointSaveError
from ..data import dataset_labels, load_image_classification_data, prepare_views
from ..data.bad_images import BadImageError, bad_image_message
from ..data.image_store import StoreBuildStopped
from ..data.sampler import ClassBalancedBatchSampler
from ..metrics import ClassificationMetrics
from ..peer_watch import PeerStoppedAnswering
from ..preemption import CtrlC, TrainingPreempted
from ..trainer import SynerMixTrainer
from .arguments import ScriptArgumentParser, is_builtin_default, preset_values, usage_error
from .errors import UsageError
from .folder_lock import hold_output_dir
from .methods import describe_method, method_slug
from .model import build_model, check_model_outputs, find_layout
from .model_card import check_hub_access, synermix_section
from .output_dir import (LOG_FILE, check_output_dir_writable, check_same_run, default_output_dir,
                         prepare_output_dir, run_identity, write_run_identity)
from .predictions import PREDICTIONS_FILE, image_ids, write_predictions
from .run_files import keep_going, reset_warnings
from .run_log import (RunLogCallback, append_final, append_line, chosen_settings, command_line, global_batch,
                      recipe_text, run_summary, total_train_batch, write_run_header)

__all__ = ["main", "run"]

logger = logging.getLogger("synermix_hf.cli.train")

PROGRAM = "run_image_classification.py"


def run(argv: list[str] | None = None, callbacks: list[Any] | None = None, program: str = PROGRAM) -> dict[str, float]:
    """Parse, check, train, evaluate, predict and save. Returns the combined metrics. Raises `UsageError` on bad input.

    `callbacks`: extra `TrainerCallback`s for the Trainer (e.g. progress reporting by a caller).
    """
    ctrl_c = CtrlC()
    with contextlib.ExitStack() as held:  # the output folder's lock and the Ctrl-C handler, for the whole run
        ctrl_c.install()
        held.callback(ctrl_c.restore)
        return _run(argv, callbacks, program, held, ctrl_c)


def _run(argv: list[str] | None, callbacks: list[Any] | None, program: str, held: contextlib.ExitStack,
         ctrl_c: CtrlC) -> dict[str, float]:
    """`run`, holding what it takes for the run (the output folder's lock) in `held`; `ctrl_c.check()` at the points
    where a Ctrl-C that a finalizer swallowed stops the run."""
    argv = sys.argv[1:] if argv is None else list(argv)
    reset_warnings()

    # 1. Arguments.
    model_args, data_args, training_args, script_args, explicit = ScriptArgumentParser().parse(argv)
    builtin = is_builtin_default(dataclasses.asdict(data_args))

    # 2. Logging.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)], force=True)
    import datasets
    import transformers

    log_level = training_args.get_process_log_level()
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    # The script's own lines are INFO on the main process unless --log_level is given (then that level applies).
    logger.setLevel(logging.INFO if training_args.should_log and training_args.log_level == "passive" else log_level)

    # 3. Output directory (the same arguments give the same default directory, so a rerun continues) and Hub access.
    if "output_dir" not in explicit:
        values = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args), **dataclasses.asdict(script_args)}
        values.update({k: getattr(training_args, k) for k in explicit if hasattr(training_args, k)})
        training_args.output_dir = default_output_dir(model_args, data_args, training_args,
                                                      {k: values[k] for k in explicit if k in values})
    # One writer per folder, from before it is tidied to the end of the run; the processes of one job share process
    # 0's lock.
    if training_args.should_save and training_args.process_index == 0:
        check_output_dir_writable(training_args.output_dir)
        held.enter_context(hold_output_dir(training_args.output_dir))
    plan, continuing, skipped = prepare_output_dir(training_args, overwrite=script_args.overwrite_output_dir)
    checkpoint = plan.checkpoint
    if training_args.should_log:
        print(f"Output directory: {training_args.output_dir}", flush=True)
    if training_args.push_to_hub:
        check_hub_access(training_args, model_args.token)
    if training_args.do_train and "enable_jit_checkpoint" not in explicit:
        training_args.choose("enable_jit_checkpoint", True, "SIGTERM (how schedulers preempt a job) finishes the "
                             "step, saves a checkpoint on every process and stops the run with exit status 143")

    # 4. Data.
    if builtin and training_args.should_log:
        preset = ", ".join(f"{k}={v}" for k, v in preset_values(explicit).items())
        which = ("--dataset_name digits" if data_args.dataset_name else "No dataset given (--dataset_name, --train_dir "
                 "or --validation_dir), so this run uses the built-in default")
        print(
            f"{which}: scikit-learn's digits (1,797 8x8 grayscale images of 10 digits, shipped with scikit-learn, no "
            f"download). Settings for the built-in run: {preset or 'as given'}.",
            flush=True,
        )
    with training_args.main_process_first(desc="loading the dataset"):
        try:
            data = load_image_classification_data(
                dataset_name=data_args.dataset_name,
                dataset_config_name=data_args.dataset_config_name,
                dataset_path=data_args.dataset_path,
                train_dir=data_args.train_dir,
                validation_dir=data_args.validation_dir,
                image_column=data_args.image_column_name,
                label_column=data_args.label_column_name,
                phase=data_args.phase,
                val_ratio=data_args.val_ratio,
                train_val_split=data_args.train_val_split,
                max_train_samples=data_args.max_train_samples,
                max_eval_samples=data_args.max_eval_samples,
                seed=training_args.seed,
                cache_dir=model_args.cache_dir,
                token=model_args.token,
            )
        except (ValueError, TypeError) as error:
            raise usage_error(error) from error
    train_labels = dataset_labels(data.train, data.label_column) if data.train is not None else None
    _check_data_for_the_run(training_args, data, train_labels)
    identity = None
    if training_args.do_train:  # a checkpoint of another run (dataset, model, method, batch) is not continued
        identity = run_identity(model_args.model_name_or_path or model_args.model_name, data, training_args)
        if checkpoint is not None:
            check_same_run(checkpoint, identity)
        if training_args.should_save:  # beside the checkpoints too (a record lost or garbled there is rewritten)
            write_run_identity(training_args.output_dir, identity)
    if training_args.should_log:  # only once the run may continue (`check_same_run`)
        if continuing:
            print("Continuing the interrupted run" + (f" from {checkpoint}" if checkpoint else
                                                      " (it stopped before its first checkpoint: starting again)")
                  + skipped, flush=True)
        elif skipped:
            print(f"Continuing from {checkpoint}{skipped}", flush=True)
    ctrl_c.check()

    # 5. Model and image processor, initialised from --seed (as Hugging Face's script does), so that the initial
    # weights follow the seed and do not depend on what ran before in the same process.
    transformers.set_seed(training_args.seed)
    model, image_processor, spec = build_model(model_args, data)
    if not training_args.do_train and model_args.model_name_or_path is None:
        logger.warning(
            "This run does not train (no --do_train), and --model_name %s without --model_name_or_path has an "
            "untrained classification head%s: its metrics and predictions are an untrained model's. To evaluate a "
            "trained model, give it (an output dir of this script, or one of its checkpoints) as "
            "--model_name_or_path.", model_args.model_name, " (on ImageNet weights)" if model_args.pretrained else "")
    if model_args.sync_bn:
        model = _synchronise_batch_norm(model, model_args)
    layout = find_layout(model, training_args)
    check_model_outputs(model, data.num_labels, model_args.model_name_or_path or model_args.model_name, layout.head)

    # 6. Transforms: one decode per image; the training set carries the original view when beta > 0. With the views
    # made on the device (--views_on) the images are decoded once and both views are made batched on the training
    # device; that decode finds the images that cannot be decoded up front (the loader finds them as it reads them).
    try:
        views = prepare_views(data.train, data.eval, spec, data.image_column, data.label_column,
                              two_views=training_args.beta > 0, views_on=data_args.views_on,
                              decode_budget_gib=data_args.decode_budget_gib,
                              train_labels=train_labels,
                              bad_image_policy=training_args.bad_image_policy, seed=training_args.effective_data_seed)
    except ValueError as error:
        raise usage_error(error) from error
    if (views.views_on == "device" and "dataloader_num_workers" not in explicit
            and not training_args.dataloader_persistent_workers and training_args.dataloader_prefetch_factor is None
            and getattr(training_args, "dataloader_multiprocessing_context", None) is None):  # options of workers
        store = getattr(views.train, "store", None)
        if training_args.device.type == "cpu":
            training_args.choose("dataloader_num_workers", 0, "views made on the device, here the CPU, whose cores "
                                 "they use; worker processes would add copies between processes and compete with "
                                 "training for the cores")
        elif store is not None and not getattr(store, "square", False):
            workers = max(1, (os.cpu_count() or 2) // max(1, training_args.world_size) - 1)
            training_args.choose("dataloader_num_workers", min(workers, 16), "crops cut in the loader by the "
                                 "recipe's torchvision steps (Pillow's resampling, the largest part of a step's data "
                                 "work), so every core but the main process's cuts them")
        else:
            training_args.choose("dataloader_num_workers", 0, "views made on the device: the loader only gathers "
                                 "stored rows and draws their augmentation, and worker processes would add copies "
                                 "between processes and compete with training for the cores")

    if training_args.should_log:  # what this run trains, where the user looks first
        print(f"Method : {describe_method(training_args.beta, training_args.inter_mixup, training_args.alpha)}\n"
              f"Recipe : {recipe_text(training_args)}\nViews  : {views.description}", flush=True)

    # 7. Metrics.
    compute_metrics = ClassificationMetrics(data.num_labels)

    # 8. Trainer and the run log.
    method = method_slug(training_args.beta, training_args.inter_mixup)
    log_path = os.path.join(training_args.output_dir, LOG_FILE)
    run_callbacks = ([RunLogCallback(log_path)] if training_args.should_save else []) + list(callbacks or [])
    _check_reporting(training_args)
    if training_args.should_save:
        os.makedirs(training_args.output_dir, exist_ok=True)
        write_run_header(
            log_path,
            run_summary(argv, model_args, data_args, training_args, data, model, spec, checkpoint, method, program,
                        views.description, layout),
            title=f"{program}: SynerMix" + (" (continuing the interrupted run)" if continuing else
                                            " (resumed)" if checkpoint else ""),
            append=os.path.isfile(log_path),
        )
    trainer = SynerMixTrainer(
        model=model,
        args=training_args,
        train_dataset=views.train if training_args.do_train else None,
        eval_dataset=views.eval if training_args.do_eval else None,
        processing_class=image_processor,
        compute_metrics=compute_metrics,
        train_labels=train_labels,
        callbacks=run_callbacks,
    )
    # Images that cannot be decoded: each is named once in a warning and listed in the run log as it is found.
    if training_args.should_save:
        trainer.bad_images.listeners.append(lambda report: append_line(log_path, f"bad image: {report.describe()}"))
    trainer.bad_images.record(views.bad_images, warn=training_args.should_log, complete=True)
    trainer.run_record = identity  # carried by every checkpoint (`check_same_run`)
    if trainer.preemption is not None:  # Ctrl-C stops training as SIGTERM does: after the step, with a checkpoint
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored in a background job: left so
            trainer.preemption.signals = (signal.SIGTERM, signal.SIGINT)
        if training_args.should_save:
            trainer.preemption.listeners.append(lambda line: append_line(log_path, f"stopped: {line}"))

    try:
        ctrl_c.check()
        all_metrics = _train_evaluate_predict(trainer, training_args, data, views, plan,
                                              feature_metrics=script_args.feature_metrics, ctrl_c=ctrl_c)
    except BadImageError as error:  # too many images that cannot be decoded, or --stop_on_bad_image
        stop = usage_error(BadImageError(bad_image_message(error)))
        if training_args.should_save:
            append_line(log_path, f"stopped: {stop}")
        raise stop from None
    except (TrainingPreempted, CheckpointSaveError, FloatingPointError) as stop:
        if training_args.should_save:
            append_line(log_path, f"stopped: {stop}")
        raise
    except KeyboardInterrupt:
        if training_args.should_save:
            append_line(log_path, "stopped: interrupted (Ctrl-C)")
        raise

    # 12. Model card, and the push to the Hub (as Hugging Face's script does).
    settings = {"method": method, "beta": training_args.beta, "inter_mixup": training_args.inter_mixup,
                "alpha": training_args.alpha, "balanced_sampler": training_args.balanced_sampler,
                "total train batch size": global_batch(training_args),
                "recipe": training_args.recipe, "model": model_args.model_name_or_path or model_args.model_name,
                "head": layout.head_text(model),
                "Manifold MixUp points": layout.points_text(training_args.inter_mixup),
                "dataset": data.source, "evaluation split": data.eval_description}
    trainer.model_card_section = synermix_section(settings, all_metrics, command_line(program, argv),
                                            chosen_settings(training_args))
    card = {"finetuned_from": model_args.model_name_or_path, "tasks": "image-classification",
            "dataset": data_args.dataset_name or data_args.train_dir or "digits",
            "tags": ["image-classification", "synermix", method]}
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    elif training_args.should_save:
        with keep_going("the model card", os.path.join(training_args.output_dir, "README.md"), remove=True):
            trainer.create_model_card(**card)

    if training_args.should_save:
        append_final(log_path, all_metrics, training_args.output_dir)
        logger.info("Results, model, model card and log are in %s", training_args.output_dir)
    return all_metrics


def _train_evaluate_predict(trainer: Any, training_args: Any, data: Any, views: Any, plan: Any,
                            feature_metrics: bool = False, ctrl_c: CtrlC | None = None) -> dict[str, float]:
    """Steps 9 to 11 of `run`: train, evaluate (with `feature_metrics`: also the penultimate features' cohesion and
    separability), predict. Returns their metrics.

    The final model is saved complete or not at all (`save_final_model`: a failure leaves a folder that the same
    command finishes); a failure to write the metrics, the state or the predictions after it is one warning each.
    """
    out = training_args.output_dir
    # 9. Training.
    all_metrics: dict[str, float] = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=plan)  # resolved once, by `prepare_output_dir`
        trainer.save_final_model()
        metrics = {**result.metrics, "train_samples": len(data.train)}
        trainer.log_metrics("train", metrics)
        with keep_going("the training metrics", os.path.join(out, "train_results.json")):
            trainer.save_metrics("train", metrics)
        with keep_going("the trainer state", os.path.join(out, "trainer_state.json")):
            trainer.save_state()
        all_metrics.update(metrics)
    if ctrl_c is not None:
        ctrl_c.check()

    # 10. Evaluation.
    if training_args.do_eval:
        metrics = {**trainer.evaluate(), "eval_samples": len(data.eval)}
        if feature_metrics:
            from ..feature_metrics import penultimate_feature_metrics

            metrics.update(penultimate_feature_metrics(trainer))
        trainer.log_metrics("eval", metrics)
        with keep_going("the evaluation metrics", os.path.join(out, "eval_results.json")):
            trainer.save_metrics("eval", metrics)
        all_metrics.update(metrics)

    # 11. Prediction: the top classes of every evaluation image.
    if training_args.do_predict:
        output = trainer.predict(views.eval, metric_key_prefix="predict")
        metrics = {**output.metrics, "predict_samples": len(data.eval)}
        trainer.log_metrics("predict", metrics)
        with keep_going("the prediction metrics", os.path.join(out, "predict_results.json")):
            trainer.save_metrics("predict", metrics)
        if trainer.is_world_process_zero():
            logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
            path = os.path.join(out, PREDICTIONS_FILE)
            with keep_going("the predictions", path, remove=True):
                write_predictions(path, logits, output.label_ids, data.class_names,
                                  image_ids(data.eval, data.image_column))
        all_metrics.update(metrics)
    return all_metrics


def _check_data_for_the_run(training_args: Any, data: Any, train_labels: Any) -> None:
    if training_args.do_train and data.train is None:
        raise UsageError(f"Training needs training data, and {data.source} has none (give --train_dir, or only "
                         "--do_eval).")
    for flag, wanted in (("--do_eval", training_args.do_eval), ("--do_predict", training_args.do_predict)):
        if wanted and data.eval is None:
            raise UsageError(f"{flag} needs an evaluation split, and {data.source} has none; give --validation_dir "
                             f"or --train_val_split, or drop {flag}.")
    if training_args.do_train and training_args.balanced_sampler:  # the sampler's own check, before training
        try:
            ClassBalancedBatchSampler(train_labels, batch_size=total_train_batch(training_args))
        except ValueError as error:
            raise usage_error(error) from error


def _synchronise_batch_norm(model: Any, model_args: Any) -> Any:
    """`model` with its batch-norm layers replaced by `SyncBatchNorm` (--sync_bn); refused for a model without any."""
    import torch

    batch_norms = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not batch_norms:
        name = model_args.model_name_or_path or model_args.model_name
        raise UsageError(f"--sync_bn: {name} has no batch-norm layers to synchronise. Leave out --sync_bn.")
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    logger.info("--sync_bn: %d batch-norm layers synchronised across processes.", batch_norms)
    return model


def _check_reporting(training_args: Any) -> None:
    """Every --report_to integration can start (tensorboard installed, ...), before training."""
    from transformers.integrations import get_reporting_integration_callbacks

    for name, callback in zip(training_args.report_to, get_reporting_integration_callbacks(training_args.report_to),
                              strict=False):
        try:
            callback()
        except (RuntimeError, ImportError) as error:
            text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UsageError(f"--report_to {name}: {text} Install it, or choose another --report_to (none to report "
                             "nowhere).") from error


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 on success, 2 (with one paragraph on stderr, no traceback) on bad input, 143 when
    SIGTERM stopped training (after saving a checkpoint; one line on stderr), 130 when Ctrl-C did (the same), 1 when a
    checkpoint or the final model could not be saved (a full disk; one line) or the training loss was not finite (one
    line), 130 on Ctrl-C outside training."""
    try:
        run(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    except TrainingPreempted as stop:
        # Every process stopped after the same step with the checkpoint saved: they leave together.
        if int(os.environ.get("RANK", "0")) == 0:
            print(stop, file=sys.stderr, flush=True)
        _destroy_process_group()
        return stop.exit_status
    except CheckpointSaveError as error:  # a full disk: every process stopped together, the staging folder removed
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except FloatingPointError as error:  # a non-finite loss (`FiniteLossCheck`), whose message says what to do
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except PeerStoppedAnswering as error:  # no barrier on the way out: a process of the job no longer answers
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except StoreBuildStopped as stop:  # before training: nothing to save, the partial store removed
        print(stop, file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        # Checkpoints are complete or absent, so whatever was being written when Ctrl-C came is simply not there.
        print("Interrupted. Run the same command again to continue from the last complete checkpoint, if the run "
              "saved one.", file=sys.stderr, flush=True)
        return 130
    _destroy_process_group()  # only after success: a barrier after one rank failed would wait forever
    return 0


def console_main() -> None:
    """`synermix-train`."""
    sys.exit(main())


def _destroy_process_group() -> None:
    """Leave the process group together before exit: a gloo group torn down at interpreter exit can abort a rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank leaves while its peer still talks to it
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
