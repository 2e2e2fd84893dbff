#!/usr/bin/env python
"""Train and evaluate an image classifier with SynerMix (arXiv:2403.14137) on the Hugging Face Trainer.

    python run_image_classification.py                       # built-in digits, offline, a few minutes on a CPU
    python run_image_classification.py -mn resnet18 -ds cifar100 -bs 128 -alpha 1 -beta 0.1 -itrm Manifold_Mixup
    accelerate launch run_image_classification.py --dataset_name food101 --beta 0.1
    python run_image_classification.py args.json             # the same arguments from a JSON file

Arguments come in three groups: the model (`ModelArguments`), the data (`DataTrainingArguments`) and training
(`ScriptTrainingArguments`: `SynerMixTrainingArguments` + the authors' recipe + every `TrainingArguments` flag). Flags
shared with Hugging Face's `examples/pytorch/image-classification/run_image_classification.py` keep its names, and the
authors' short flags (-mn -ds -pr -bs -alpha -beta -itrm -lr -mo -wd -ss -ga -seed -ep -ne -phase -vr -mp) work too.
A mistake in the input ends the script before training with one paragraph on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any


from synermix_hf.data import dataset_labels
from synermix_hf.data_path import prepare_views
from synermix_hf.datasets_catalog import (
    BUILTIN_DATASET,
    CATALOG,
    PreparedData,
    load_image_classification_data,
)
from synermix_hf.errors import UsageError
from synermix_hf.metrics import ClassificationMetrics
from synermix_hf.models import (
    MODEL_NAMES,
    TorchvisionForImageClassification,
    normalise_model_name,
)
from synermix_hf.recipe import RecipeTrainer, RecipeTrainingArguments
from synermix_hf.run_log import RunLogCallback, write_run_header
from synermix_hf.transforms import (
    TransformSpec,
    image_processor_for,
    spec_from_image_processor,
)

logger = logging.getLogger("run_image_classification")

# The built-in default run: scikit-learn's digits with SynerMix, sized to finish in a few minutes on a laptop CPU.
# Each value applies only where the command line (or JSON file) does not set it.
BUILTIN_PRESET: dict[str, Any] = {
    "model_name": "resnet18",
    "image_size": 8,
    "num_train_epochs": 10,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 128,
    "learning_rate": 0.05,
    "lr_step_size": 4,
    "lr_gamma": 0.5,
    "beta": 0.1,
    "inter_mixup": "manifold_mixup",
    "alpha": 1.0,
    "dataloader_num_workers": 0,
    "save_strategy": "no",
}

RESULT_FILES = ("all_results.json", "train_results.json", "eval_results.json", "trainer_state.json",
                "model.safetensors", "config.json")
LOG_FILE = "training_log.txt"


# ---- 1. Arguments ----


@dataclass
class ModelArguments:
    """Which model to train: one of the paper's torchvision architectures, or a Hugging Face model."""

    model_name: str = field(
        default="resnet18",
        metadata={
            "aliases": ["-mn"],
            "help": f"torchvision architecture: {', '.join(MODEL_NAMES)}. Ignored when --model_name_or_path is given.",
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A Hugging Face image classification model: Hub id or local directory (instead of "
                  "--model_name)."},
    )
    pretrained: bool = field(
        default=False,
        metadata={"aliases": ["-pr"], "help": "Start --model_name from torchvision's ImageNet weights (downloaded)."},
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Input size. Default: the dataset's (32 cifar100, 84 miniimagenet, 224 otherwise), or the "
                  "image processor's for --model_name_or_path."},
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache downloaded models and datasets."})
    model_revision: str = field(default="main", metadata={"help": "Model version: branch, tag or commit id."})
    image_processor_name: str | None = field(default=None, metadata={"help": "Image processor name or path."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models and datasets."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow models with their own code on the Hub (runs that code locally)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load a checkpoint whose classification head has another number of classes."}
    )

    def __post_init__(self):
        self.model_name = normalise_model_name(self.model_name)
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"--image_size must be >= 1, got {self.image_size}.")


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on, and how to split it."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "aliases": ["-ds"],
            "help": f"A short name ({', '.join(CATALOG)}), a Hub dataset id or a local directory. Default: the "
            "built-in digits.",
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    dataset_path: str | None = field(
        default=None,
        metadata={"help": "Load a short-named dataset from this Hub id or local directory (same columns and splits) "
                  "instead of its default Hub copy."},
    )
    train_dir: str | None = field(
        default=None, metadata={"help": "A folder of training images, one subfolder per class."}
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "A folder of evaluation images, laid out as --train_dir."}
    )
    image_column_name: str | None = field(
        default=None, metadata={"help": "Column holding the images (default: detected, img or image)."}
    )
    label_column_name: str | None = field(
        default=None, metadata={"help": "Column holding the labels (default: detected, label, labels or fine_label)."}
    )
    train_val_split: float | None = field(
        default=0.15, metadata={"help": "Fraction of the training data to evaluate on when there is no other split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many evaluation examples."})
    phase: str = field(
        default="test",
        metadata={
            "aliases": ["-phase"],
            "choices": ["test", "val"],
            "help": "test: evaluate on the test split; val: hold out a stratified --val_ratio of the training set and "
            "evaluate on it.",
        },
    )
    val_ratio: float = field(
        default=0.1, metadata={"aliases": ["-vr"], "help": "Fraction held out for --phase val."}
    )

    def __post_init__(self):
        if not 0.0 < self.val_ratio < 1.0:
            raise ValueError(f"--val_ratio (-vr) must be between 0 and 1, got {self.val_ratio}.")
        if self.train_val_split is not None and not 0.0 <= self.train_val_split < 1.0:
            raise ValueError(f"--train_val_split must be in [0, 1), got {self.train_val_split}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}.")


def _default_num_workers() -> int:
    return min(8, (os.cpu_count() or 1) // 2)


@dataclass
class ScriptTrainingArguments(RecipeTrainingArguments):
    """`RecipeTrainingArguments` (SynerMix + the authors' recipe + TrainingArguments) with the script's outputs."""

    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where to write the model, metrics and logs. Default: a new runs/<dataset>-<model>-<method>-"
                  "<time> directory."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into an --output_dir that already holds the results of a run."}
    )
    dataloader_num_workers: int = field(
        default_factory=_default_num_workers,
        metadata={"help": "Processes decoding and augmenting images (default: half the CPU cores, at most 8)."},
    )
    feature_metrics: bool = field(
        default=False,
        metadata={"help": "After the final evaluation, also report eval_cohesion and eval_separability of the "
                  "penultimate features of the evaluation set (synermix_hf/metrics/feature_cohesion, "
                  "feature_separability)."},
    )

    def __post_init__(self):
        self.output_dir_given = self.output_dir is not None
        if not self.do_train and not self.do_eval:
            self.do_train = self.do_eval = True
        super().__post_init__()


class ScriptArgumentParser:
    """`HfArgumentParser` over the three groups, with short errors and a record of what the user set explicitly."""

    def __init__(self):
        from transformers import HfArgumentParser

        class _Parser(HfArgumentParser):
            def error(self, message: str):  # argparse would print the whole usage and exit
                raise UsageError(f"{message}. Run with --help to list the arguments.")

        self.dataclass_types = (ModelArguments, DataTrainingArguments, ScriptTrainingArguments)
        self.parser = _Parser(self.dataclass_types, description=__doc__.split("\n\n")[0])

    def values_from_command_line(self, argv: list[str]) -> tuple[dict[str, Any], set[str]]:
        unset = object()
        probe = argparse.Namespace(
            **{a.dest: unset for a in self.parser._actions if a.dest is not argparse.SUPPRESS}
        )
        probe, extra = self.parser.parse_known_args(argv, namespace=probe)
        if extra:
            raise UsageError(
                f"Unrecognised arguments: {' '.join(extra)}. Run with --help to list the arguments."
            )
        explicit = {key for key, value in vars(probe).items() if value is not unset}
        values, _ = self.parser.parse_known_args(argv)
        return vars(values), explicit

    def values_from_json(self, path: str) -> tuple[dict[str, Any], set[str]]:
        if not os.path.isfile(path):
            raise UsageError(f"The argument file {path!r} does not exist.")
        try:
            with open(path, encoding="utf-8") as handle:
                values = json.load(handle)
        except json.JSONDecodeError as error:
            raise UsageError(f"The argument file {path!r} is not valid JSON: {error}.") from error
        if not isinstance(values, dict):
            raise UsageError(f"The argument file {path!r} must hold one JSON object of argument names and values.")
        known = {f.name for dtype in self.dataclass_types for f in dataclasses.fields(dtype) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"The argument file {path!r} has unknown arguments: {', '.join(unknown)}.")
        return dict(values), set(values)

    def parse(self, argv: list[str]) -> tuple[ModelArguments, DataTrainingArguments, ScriptTrainingArguments, set]:
        if len(argv) == 1 and argv[0].endswith(".json"):
            values, explicit = self.values_from_json(argv[0])
        else:
            values, explicit = self.values_from_command_line(argv)
        if is_builtin_default(values):
            for key, value in BUILTIN_PRESET.items():
                if key not in explicit:
                    values[key] = value
        groups = []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            try:
                groups.append(dtype(**{k: v for k, v in values.items() if k in names}))
            except (ValueError, TypeError) as error:
                raise UsageError(str(error)) from error
        model_args, data_args, training_args = groups
        if "model_name_or_path" in explicit and values.get("model_name_or_path") and "model_name" in explicit:
            raise UsageError("Give either --model_name (-mn, a torchvision architecture) or --model_name_or_path (a "
                             "Hugging Face model), not both.")
        if model_args.model_name_or_path and model_args.pretrained:
            raise UsageError("--pretrained (-pr) loads torchvision's ImageNet weights for --model_name; a "
                             "--model_name_or_path model already starts from its own checkpoint.")
        return model_args, data_args, training_args, explicit


def is_builtin_default(values: dict[str, Any]) -> bool:
    """No data named (or `--dataset_name digits`): the built-in dataset and its preset apply."""
    name = values.get("dataset_name")
    no_dirs = not values.get("train_dir") and not values.get("validation_dir")
    return no_dirs and (name is None or str(name).strip().lower() == BUILTIN_DATASET)


# ---- 3. Output directory ----


def method_label(beta: float, inter_mixup: str) -> str:
    """`baseline`, `mixup`, `synermix-b0.1-manifold_mixup`, ... for directory names and logs."""
    if beta > 0:
        return f"synermix-b{beta:g}" + ("" if inter_mixup == "none" else f"-{inter_mixup}")
    return "baseline" if inter_mixup == "none" else inter_mixup


def _slug(text: str) -> str:
    text = os.path.basename(os.path.normpath(os.path.expanduser(text))) or text
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_") or "data"


def default_output_dir(model_args: ModelArguments, data_args: DataTrainingArguments, args: ScriptTrainingArguments):
    if data_args.train_dir or data_args.validation_dir:
        dataset = "imagefolder-" + _slug(data_args.train_dir or data_args.validation_dir)
    else:
        dataset = _slug(data_args.dataset_name or BUILTIN_DATASET)
    model = _slug(model_args.model_name_or_path) if model_args.model_name_or_path else model_args.model_name
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", f"{dataset}-{model}-{method_label(args.beta, args.inter_mixup)}-{stamp}")
    candidate, count = base, 1
    while os.path.exists(candidate):
        count += 1
        candidate = f"{base}-{count}"
    return candidate


def _same_on_all_processes(value: Any) -> Any:
    """The main process's `value` on every process (the default directory name carries a time stamp)."""
    from accelerate import PartialState

    if PartialState().num_processes > 1:
        from accelerate.utils import broadcast_object_list

        value = broadcast_object_list([value])[0]
    return value


def prepare_output_dir(args: ScriptTrainingArguments) -> str | bool | None:
    """Refuse to overwrite results; find the checkpoint to resume from. Returns what `train()` should resume."""
    out = args.output_dir
    resume = args.resume_from_checkpoint
    from transformers.trainer_utils import get_last_checkpoint

    if resume is not None and str(resume).strip().lower() in ("true", "last"):
        last = get_last_checkpoint(out) if os.path.isdir(out) else None
        if last is None:
            raise UsageError(f"--resume_from_checkpoint {resume}: --output_dir {out} holds no checkpoint-* directory.")
        resume = last
    elif resume is not None and not os.path.isdir(resume):
        raise UsageError(f"--resume_from_checkpoint {resume!r} does not exist (it must be a checkpoint-* directory).")
    if not os.path.isdir(out):
        return resume
    results = [name for name in RESULT_FILES if os.path.exists(os.path.join(out, name))]
    if args.overwrite_output_dir:
        if args.should_save:  # the metrics files are merged into, not replaced: remove the old ones
            for name in ("all_results.json", "train_results.json", "eval_results.json"):
                if os.path.isfile(os.path.join(out, name)):
                    os.remove(os.path.join(out, name))
        return resume
    if results:
        raise UsageError(
            f"--output_dir {out} already holds the results of a run ({', '.join(results)}). Choose another "
            "--output_dir, or add --overwrite_output_dir to write over them."
        )
    if args.do_train and resume is None:
        last = get_last_checkpoint(out)
        if last is not None:
            logger.info("Resuming from %s (found in --output_dir; add --overwrite_output_dir to start afresh).", last)
            return last
        if os.listdir(out):
            raise UsageError(
                f"--output_dir {out} is not empty and holds no checkpoint to resume from. Choose another "
                "--output_dir, or add --overwrite_output_dir to write into it."
            )
    return resume


# ---- 5. Model ----


def _looks_local(path: str) -> bool:
    return os.path.exists(os.path.expanduser(path)) or path.startswith((".", "/", "~"))


def build_model(model_args: ModelArguments, data: PreparedData) -> tuple[Any, Any, TransformSpec]:
    """The model, its image processor and the transform spec (family from the data, size from model or data)."""
    family = data.entry.family if data.entry is not None else "imagenet"
    id2label = dict(enumerate(data.class_names))
    if model_args.model_name_or_path is None:
        size = model_args.image_size or (data.entry.image_size if data.entry is not None else 224)
        spec = TransformSpec(family=family, image_size=size)
        try:
            model = TorchvisionForImageClassification.from_architecture(
                model_args.model_name, id2label, image_size=size, pretrained=model_args.pretrained
            )
        except OSError as error:
            raise UsageError(f"--pretrained: {error}") from error
        return model, image_processor_for(spec), spec
    return _build_hf_model(model_args, data, family, id2label)


def _build_hf_model(model_args: ModelArguments, data: PreparedData, family: str, id2label: dict[int, str]):
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForImageClassification,
    )

    path = model_args.model_name_or_path
    for flag, value in (("--model_name_or_path", path), ("--config_name", model_args.config_name),
                        ("--image_processor_name", model_args.image_processor_name)):
        if value and _looks_local(value) and not os.path.isdir(os.path.expanduser(value)):
            raise UsageError(f"{flag} {value!r} does not exist.")
    common = {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }
    try:
        config = AutoConfig.from_pretrained(
            model_args.config_name or path,
            num_labels=len(id2label),
            id2label=id2label,
            label2id={name: index for index, name in id2label.items()},
            finetuning_task="image-classification",
            **common,
        )
        model = AutoModelForImageClassification.from_pretrained(
            path, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **common
        )
        processor = AutoImageProcessor.from_pretrained(model_args.image_processor_name or path, **common)
    except (OSError, ValueError, RuntimeError) as error:
        text = str(error).strip().split("\n")[0][:400]
        if "size mismatch" in str(error) or "mismatched" in str(error):
            text += " Add --ignore_mismatched_sizes to start the classification head afresh for these classes."
        raise UsageError(
            f"--model_name_or_path {path}: cannot load the model ({type(error).__name__}: {text})"
        ) from error
    try:
        spec = spec_from_image_processor(processor, family)
    except ValueError as error:
        if model_args.image_size is None:
            raise UsageError(str(error)) from error
        spec = TransformSpec(family=family, image_size=model_args.image_size)
    if model_args.image_size is not None:
        spec = TransformSpec(family=family, image_size=model_args.image_size, mean=spec.mean, std=spec.std)
    return model, processor, spec


# ---- main ----


def run(argv: list[str] | None = None, callbacks: list[Any] | None = None) -> dict[str, float]:
    """Parse, check, train, evaluate and save. Returns the combined metrics. Raises `UsageError` on bad input.

    `callbacks`: extra `TrainerCallback`s for the Trainer (e.g. progress reporting by a caller).
    """
    argv = sys.argv[1:] if argv is None else list(argv)

    # 1. Arguments.
    model_args, data_args, training_args, explicit = ScriptArgumentParser().parse(argv)
    builtin = is_builtin_default(dataclasses.asdict(data_args))

    # 2. Logging.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)], force=True)
    import datasets
    import transformers

    log_level = training_args.get_process_log_level()
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.setLevel(logging.INFO if training_args.should_log else log_level)

    # 3. Output directory.
    if not training_args.output_dir_given:
        training_args.output_dir = _same_on_all_processes(default_output_dir(model_args, data_args, training_args))
    checkpoint = prepare_output_dir(training_args)

    # 4. Data.
    if builtin and training_args.should_log:
        preset = ", ".join(f"{k}={v}" for k, v in BUILTIN_PRESET.items() if k not in explicit)
        print(
            "No dataset given (--dataset_name, --train_dir or --validation_dir), so this run uses the built-in "
            "default: scikit-learn's digits (1,797 8x8 grayscale images of 10 digits, shipped with scikit-learn, no "
            f"download), trained with SynerMix. Settings for the built-in run: {preset or 'as given'}.",
            flush=True,
        )
    with training_args.main_process_first(desc="loading the dataset"):
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
    if training_args.do_train and data.train is None:
        raise UsageError(f"Training needs training data, and {data.source} has none (give --train_dir, or only "
                         "--do_eval).")
    if training_args.do_eval and data.eval is None:
        raise UsageError(f"Evaluation needs an evaluation split, and {data.source} has none; give --validation_dir "
                         "or --train_val_split, or drop --do_eval.")
    if training_args.do_train and training_args.balanced_sampler:
        batch = training_args.per_device_train_batch_size
        if len(data.train) < batch:
            raise UsageError(f"--per_device_train_batch_size (-bs) {batch} is larger than the training set "
                             f"({len(data.train)} examples); the class-balanced sampler drops incomplete batches. "
                             "Lower the batch size.")

    # 5. Model and image processor, initialised from --seed (as Hugging Face's script does), so that the initial
    # weights follow the seed and do not depend on what ran before in the same process.
    transformers.set_seed(training_args.seed)
    model, image_processor, spec = build_model(model_args, data)

    # 6. Transforms: one decode per image; the training set carries the original view when beta > 0. On the device
    # data path (--data_path) the images are decoded once and both views are made batched on the training device.
    train_labels = dataset_labels(data.train, data.label_column) if data.train is not None else None
    try:
        views = prepare_views(data.train, data.eval, spec, data.image_column, data.label_column,
                              two_views=training_args.beta > 0, data_path=training_args.data_path,
                              budget_gib=training_args.decode_budget_gib, train_labels=train_labels)
    except ValueError as error:
        raise UsageError(f"--data_path: {error}") from error
    data.train, data.eval, data.views_description = views.train, views.eval, views.description

    # 7. Metrics.
    compute_metrics = ClassificationMetrics(data.num_labels)

    # 8. Trainer and the run log.
    log_path = os.path.join(training_args.output_dir, LOG_FILE)
    if training_args.should_save:
        os.makedirs(training_args.output_dir, exist_ok=True)
        write_run_header(
            log_path,
            run_summary(argv, model_args, data_args, training_args, data, model, spec, checkpoint),
            title="run_image_classification.py: SynerMix" + (" (resumed)" if checkpoint else ""),
            append=bool(checkpoint),
        )
    trainer = RecipeTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train if training_args.do_train else None,
        eval_dataset=data.eval if training_args.do_eval else None,
        processing_class=image_processor,
        compute_metrics=compute_metrics,
        train_labels=train_labels,
        callbacks=([RunLogCallback(log_path)] if training_args.should_save else []) + list(callbacks or []),
    )

    # 9. Training.
    all_metrics: dict[str, float] = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        metrics = {**result.metrics, "train_samples": len(data.train)}
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        all_metrics.update(metrics)

    # 10. Evaluation.
    if training_args.do_eval:
        metrics = {**trainer.evaluate(), "eval_samples": len(data.eval)}
        if training_args.feature_metrics:
            from synermix_hf.feature_metrics import penultimate_feature_metrics

            metrics.update(penultimate_feature_metrics(trainer))
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        all_metrics.update(metrics)

    if training_args.should_save:
        with open(log_path, "a", encoding="utf-8") as handle:
            final = "  ".join(f"{k} {v:.4f}" for k, v in all_metrics.items()
                              if k.startswith("eval_") and isinstance(v, float) and "runtime" not in k
                              and "per_second" not in k)
            handle.write(f"final  {final}\noutputs in {os.path.abspath(training_args.output_dir)}\n")
        logger.info("Results, model and log are in %s", training_args.output_dir)
    return all_metrics


def run_summary(argv, model_args, data_args, training_args, data, model, spec, checkpoint) -> dict[str, dict]:
    """The blocks at the top of training_log.txt."""
    recipe_keys = ("learning_rate", "weight_decay", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                   "per_device_eval_batch_size", "gradient_accumulation_steps", "seed", "amp", "fp16", "bf16")
    if training_args.recipe == "paper":
        optimizer = (f"SGD (momentum {training_args.momentum}, nesterov {training_args.nesterov}), StepLR every "
                     f"{training_args.lr_step_size} epochs x {training_args.lr_gamma}")
    else:
        optimizer = f"Trainer: {training_args.optim.value}, {training_args.lr_scheduler_type.value} schedule"
    method_keys = ("beta", "inter_mixup", "alpha", "balanced_sampler", "label_smoothing_factor")
    values = dataclasses.asdict(training_args)
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "command": {"argv": "run_image_classification.py " + " ".join(shlex.quote(a) for a in argv) if argv
                    else "run_image_classification.py (no arguments: built-in default)",
                    "resumed from": checkpoint or "-"},
        "data": {
            "source": data.source,
            "classes": data.num_labels,
            "train examples": len(data.train) if data.train is not None else 0,
            "eval examples": len(data.eval) if data.eval is not None else 0,
            "eval split": data.eval_description,
            "columns": f"image={data.image_column}, label={data.label_column}",
            "transforms": f"{spec.family} at {spec.image_size}px, mean={list(spec.mean)}, std={list(spec.std)}",
            "data path": getattr(data, "views_description", "-"),
        },
        "model": {
            "model": model_args.model_name_or_path or model_args.model_name,
            "class": type(model).__name__,
            "parameters": f"{parameters:,}",
            "pretrained": model_args.pretrained if model_args.model_name_or_path is None else "checkpoint",
            "cifar stem": getattr(model.config, "cifar_stem", "-"),
        },
        "method": {"method": method_label(training_args.beta, training_args.inter_mixup),
                   **{k: values[k] for k in method_keys}},
        "recipe": {"recipe": f"{training_args.recipe}: {optimizer}", **{k: str(values[k]) for k in recipe_keys},
                   "processes": training_args.world_size,
                   "total train batch size": training_args.per_device_train_batch_size * training_args.world_size
                   * training_args.gradient_accumulation_steps},
        "output": {"output_dir": os.path.abspath(training_args.output_dir)},
        "all arguments": {
            "model": {k: v for k, v in dataclasses.asdict(model_args).items() if k != "token"},
            "data": dataclasses.asdict(data_args),
            "training": json.loads(training_args.to_json_string()),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 on success, 2 (with one paragraph on stderr, no traceback) on bad input."""
    try:
        run(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    _destroy_process_group()  # only after success: a barrier after one rank failed would wait forever
    return 0


def _destroy_process_group() -> None:
    """Leave the process group together before exit: a gloo group torn down at interpreter exit can abort a rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank leaves while its peer still talks to it
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
