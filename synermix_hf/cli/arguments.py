"""The command line's arguments: four dataclass groups parsed by `HfArgumentParser`, the authors' short flags, and
the built-in run's preset.

One dataclass per concern, as in Hugging Face's example scripts: the model (`ModelArguments`), the data
(`DataTrainingArguments`), training (the library's `RecipeTrainingArguments`: `TrainingArguments` with SynerMix and
the authors' recipe) and what the script writes (`ScriptArguments`). Each argument is declared once, as a field of
one of them. The command line adds only what belongs to it: the reference code's short flags (`SHORT_FLAGS`), help
that says what the script does with a flag (`HELP`), the values it chooses when a flag is not given (`parse`), and the
order of the groups in `--help` (SynerMix, data and model first). It adds them the way `HfArgumentParser` reads them:
the parser is built from one dataclass per group of `--help` (`_argument_group_name`), whose fields are those of the
four groups with the short flag and help in their metadata (`aliases`, `help`); the parsed values make the four.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import typing
from collections.abc import Sequence
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

from transformers import HfArgumentParser

from ..data.catalog import BUILTIN_DATASET, CATALOG
from ..data.pipeline import VIEWS_ON
from ..models import MODEL_NAMES, normalize_model_name
from ..recipe import PAPER_RECIPE_REPLACES, RecipeTrainingArguments
from ..training_args import accelerator_available, launched_processes
from .errors import UsageError, flag_text

logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_PRESET",
    "SHORT_FLAGS",
    "DataTrainingArguments",
    "ModelArguments",
    "ParsedArguments",
    "ScriptArgumentParser",
    "ScriptArguments",
    "flag_names",
    "is_builtin_default",
    "preset_values",
    "usage_error",
]

# The reference code's short flags (its `main.py`), added to the fields of the same meaning. Its `-bs` is the batch of
# one SGD step on its one GPU, so it names the total batch, split over the processes, not the batch of each one.
SHORT_FLAGS: dict[str, str] = {
    "model_name": "-mn", "dataset_name": "-ds", "pretrained": "-pr", "total_train_batch_size": "-bs",
    "alpha": "-alpha", "beta": "-beta", "inter_mixup": "-itrm", "learning_rate": "-lr", "momentum": "-mo",
    "weight_decay": "-wd", "lr_step_size": "-ss", "lr_gamma": "-ga", "seed": "-seed", "num_train_epochs": "-ep",
    "nesterov": "-ne", "phase": "-phase", "val_ratio": "-vr", "amp": "-mp",
}  # fmt: skip

# Help that describes what the script does with a TrainingArguments flag.
HELP: dict[str, str] = {
    "do_train": "Train. Without --do_train, --do_eval and --do_predict the script trains and evaluates.",
    "do_eval": "Evaluate on the evaluation split. Without --do_train, --do_eval and --do_predict the script trains "
    "and evaluates.",
    "do_predict": "Write predictions.csv: for every image of the evaluation split its label and the top-5 classes "
    "with their scores.",
    "bf16": "bf16 mixed precision; on a machine without GPU it runs on the CPU (slow without native bf16: the script "
    "warns).",
    "push_to_hub": "Push the model, its card and results to the Hub at the end (--hub_model_id; the access is "
    "checked before training).",
    "output_dir": "Where to write the model, metrics and logs. Default: runs/<dataset>-<model>-<method>-<id>, the id a "
    "hash of the arguments: the same command gets the same directory, so running it again continues an interrupted "
    "run.",
    "dataloader_num_workers": "Processes decoding and augmenting images (default: half the CPU cores, at most 8; 0 "
    "when the views are made on the device, whose loader only gathers decoded rows).",
}

# The TrainingArguments flags that the paper recipe replaces (`recipe.PAPER_RECIPE_REPLACES`): given on the command line
# without `--recipe trainer`, even at the Trainer's default value, they are refused rather than ignored.
for _name in PAPER_RECIPE_REPLACES:
    HELP[_name] = "Only with --recipe trainer (the paper recipe uses SGD and a per-epoch StepLR instead)."
# An interval's steps act only with its strategy at `steps`, which is the Trainer's default for logging and saving but
# not the recipe's (per epoch, as the reference): a given `--logging_steps` implies `--logging_strategy steps`.
STEPS_IMPLY_STRATEGY = {"logging_steps": "logging_strategy", "save_steps": "save_strategy", "eval_steps": "eval_strategy"}
for _steps, _strategy in STEPS_IMPLY_STRATEGY.items():
    HELP[_steps] = f"Every this many optimizer steps; giving it implies --{_strategy} steps unless that is given too."

# The built-in default run: scikit-learn's digits with SynerMix, sized to finish within 90 s on a 2-core CPU.
# Like the paper's recipe it does not clip gradients: five epochs at learning rate 0.05, multiplied by 0.6 after each
# epoch. Without clipping, learning rate 0.1 is unstable in the first epochs from the CIFAR stem's default
# initialisation, and a sixth epoch leaves no margin under 90 s (the candidates measured: BENCHMARKS.md, section 6).
# Each value applies only where the command line (or JSON file) does not set it (the batch also gives way to
# --per_device_train_batch_size).
BUILTIN_PRESET: dict[str, Any] = {
    "model_name": "resnet18",
    "image_size": 8,
    "num_train_epochs": 5,
    "total_train_batch_size": 64,
    "per_device_eval_batch_size": 128,
    "learning_rate": 0.05,
    "lr_step_size": 1,
    "lr_gamma": 0.6,
    "beta": 0.1,
    "inter_mixup": "manifold_mixup",
    "alpha": 1.0,
    "dataloader_num_workers": 0,
    "save_strategy": "no",
}


@dataclass
class ModelArguments:
    """Which model to train: one of the paper's torchvision architectures, or a Hugging Face model."""

    model_name: str = field(
        default="resnet18",
        metadata={"help": f"torchvision architecture: {', '.join(MODEL_NAMES)}. Ignored when --model_name_or_path is "
                  "given."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A Hugging Face image classification model: Hub id or local directory (instead of "
                  "--model_name)."},
    )
    pretrained: bool = field(
        default=False, metadata={"help": "Start --model_name from torchvision's ImageNet weights (downloaded)."}
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Input size. Default: the dataset's (32 cifar100, 84 miniimagenet, 8 the built-in digits, "
                  "224 otherwise), or the image processor's for --model_name_or_path."},
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache downloaded models and datasets."})
    model_revision: str = field(default="main", metadata={"help": "Model version: branch, tag or commit id."})
    image_processor_name: str | None = field(default=None, metadata={"help": "Image processor name or path."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models and datasets."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow models with their own code on the Hub (runs that code locally)."}
    )
    model_type: str | None = field(
        default=None,
        metadata={"help": "Not supported (Hugging Face's script trains such a model from scratch): use --model_name "
                  "for a torchvision architecture from scratch, or --model_name_or_path for a Hugging Face model."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load a checkpoint whose classification head has another number of classes."}
    )
    sync_bn: bool = field(
        default=False,
        metadata={"help": "Synchronised batch norm on several GPUs (torch's SyncBatchNorm): each batch-norm layer "
                  "normalizes over the whole step's batch, as the reference on its one GPU, instead of each GPU's "
                  "share; each of SynerMix's two forward passes keeps its own statistics. Needs GPUs (refused on "
                  "several CPU processes) and a model with batch-norm layers."},
    )

    def __post_init__(self):
        if self.model_type is not None:
            raise ValueError(
                f"`model_type` {self.model_type!r}: training a Hugging Face architecture from scratch is not supported "
                "here. Give `model_name` (a torchvision architecture, trained from scratch) or `model_name_or_path` (a "
                "Hugging Face checkpoint or a local model folder)."
            )
        self.model_name = normalize_model_name(self.model_name)
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"`image_size` must be >= 1, got {self.image_size}.")


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on, and how to split it."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": f"A short name ({', '.join(CATALOG)}), a Hub dataset id or a local directory (parquet, "
                  "CSV or JSON with image paths, ...). Default: the built-in digits."},
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
        default=None, metadata={"help": "Column holding the images or image file paths (default: detected, img or "
                                "image)."}
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
            "choices": ["test", "val"],
            "help": "test: evaluate on the test split; val: hold out a stratified --val_ratio of the training set and "
            "evaluate on it.",
        },
    )
    val_ratio: float = field(default=0.1, metadata={"help": "Fraction held out for --phase val."})
    views_on: str = field(
        default="auto",
        metadata={
            "choices": list(VIEWS_ON),
            "help": "Where the two views of each image are made. device: from images decoded once into stores (within "
            "--decode_budget_gib), the per-image path's pixels (the square recipes' views made batched on the training "
            "device; the imagenet recipe's crops cut in the loader by torchvision from full-resolution images, "
            "ToTensor and Normalize on the device); loader: decode and transform each image in the DataLoader (any "
            "image source); auto: device where it applies, else loader. The run log says which and why.",
        },
    )
    decode_budget_gib: float | None = field(
        default=None,
        metadata={"help": "Largest size (GiB, train + eval) of the stores of decoded images that --views_on device (or "
                  "auto) writes. Default: four fifths of the free space of the disk they go to (next to the dataset's "
                  "cache), counting what is not stored yet. Stores that do not fit: the views are made in the DataLoader "
                  "(the same pixels; 0: no store at all)."},
    )
    def __post_init__(self):
        if self.decode_budget_gib is not None and not self.decode_budget_gib >= 0:
            raise ValueError(f"`decode_budget_gib` must be >= 0, got {self.decode_budget_gib}.")
        if not 0.0 < self.val_ratio < 1.0:
            raise ValueError(f"`val_ratio` must be between 0 and 1, got {self.val_ratio}.")
        if self.train_val_split is not None and not 0.0 <= self.train_val_split < 1.0:
            raise ValueError(f"`train_val_split` must be in [0, 1), got {self.train_val_split}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")


@dataclass
class ScriptArguments:
    """What the script writes beside the model: whether it may write over a run's results, and what it reports."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into an --output_dir that already holds the results of a run."}
    )
    feature_metrics: bool = field(
        default=False,
        metadata={"help": "After the final evaluation, also report eval_cohesion and eval_separability of the "
                  "penultimate features of the evaluation set (synermix_hf/metrics/feature_cohesion, "
                  "feature_separability)."},
    )


class ParsedArguments(NamedTuple):
    """The four groups of a command line, and the names of the arguments the user gave (on it or in its JSON file)."""

    model: ModelArguments
    data: DataTrainingArguments
    training: RecipeTrainingArguments
    script: ScriptArguments
    explicit: set[str]


USAGE = ("%(prog)s [-ds DATASET | --train_dir DIR] [-mn MODEL | --model_name_or_path MODEL] [-beta BETA] "
         "[-itrm INTER_MIXUP] [-alpha ALPHA] [any flag below]\n       %(prog)s ARGUMENTS.json")

# The groups of `--help`, in order: the training fields of SynerMix, then of the authors' recipe and the script's
# outputs, the data, the model, and every other TrainingArguments flag.
_SYNERMIX_FIELDS = ("beta", "alpha", "inter_mixup", "balanced_sampler", "head_module", "manifold_mixup_modules")
_RECIPE_FIELDS = ("recipe", "learning_rate", "momentum", "nesterov", "weight_decay", "lr_step_size", "lr_gamma",
                  "num_train_epochs", "total_train_batch_size", "per_device_train_batch_size",
                  "per_device_eval_batch_size", "seed", "amp",
                  "output_dir", "overwrite_output_dir", "feature_metrics", "do_train", "do_eval", "do_predict")
# Flags whose help says what happens when they are not given: left out of the parsed values when not given (`parse`
# chooses their values), and without argparse's "(default: ...)" in `--help`.
_DEFAULT_IN_HELP = ("do_train", "do_eval", "do_predict", "dataloader_num_workers")

DATACLASS_TYPES = (ModelArguments, DataTrainingArguments, RecipeTrainingArguments, ScriptArguments)


def _help_group(title: str, dtypes: Sequence[type], names: Sequence[str] | None = None) -> type:
    """The fields `names` of `dtypes` (default: all, in their order) as a dataclass for `HfArgumentParser`: one group
    titled `title` in `--help`, each field with its short flag (`SHORT_FLAGS`) and the script's help (`HELP`) in its
    metadata. It only declares flags: the parsed values make the `dtypes`."""
    hints = {name: hint for dtype in dtypes for name, hint in typing.get_type_hints(dtype).items()}
    fields = {f.name: f for dtype in dtypes for f in dataclasses.fields(dtype) if f.init}
    flags = []
    for name in names or list(fields):
        metadata = {**fields[name].metadata,
                    **({"aliases": [SHORT_FLAGS[name]]} if name in SHORT_FLAGS else {}),
                    **({"help": HELP[name]} if name in HELP else {})}
        default = argparse.SUPPRESS if name in _DEFAULT_IN_HELP else fields[name].default
        flags.append((name, hints[name], field(default=default, default_factory=fields[name].default_factory,
                                               metadata=metadata)))
    return dataclasses.make_dataclass(f"{dtypes[0].__name__}Flags", flags, kw_only=True,
                                      namespace={"_argument_group_name": title})


_TRAINING_FIELDS = [f.name for f in dataclasses.fields(RecipeTrainingArguments) if f.init]
_HELP_GROUPS = (
    _help_group("SynerMix (the method)", [RecipeTrainingArguments], _SYNERMIX_FIELDS),
    _help_group("The authors' recipe and the script's outputs", [RecipeTrainingArguments, ScriptArguments],
                _RECIPE_FIELDS),
    _help_group("The data", [DataTrainingArguments]),
    _help_group("The model", [ModelArguments]),
    _help_group("Every other TrainingArguments flag", [RecipeTrainingArguments],
                [name for name in _TRAINING_FIELDS if name not in {*_SYNERMIX_FIELDS, *_RECIPE_FIELDS}]),
)


class _Parser(HfArgumentParser):
    """`HfArgumentParser` over `_HELP_GROUPS` whose mistakes end in one line (`UsageError`) instead of argparse's usage
    and exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}. Run with --help to list the arguments.")


def flag_names() -> dict[str, str]:
    """Field name -> how the command line writes the flag (`--val_ratio (-vr)`), for every argument."""
    names = {}
    for dtype in DATACLASS_TYPES:
        for dataclass_field in dataclasses.fields(dtype):
            short = SHORT_FLAGS.get(dataclass_field.name)
            names[dataclass_field.name] = f"--{dataclass_field.name}" + (f" ({short})" if short else "")
    return names


class ScriptArgumentParser:
    """The four groups, from the command line or a JSON file, with a record of what the user set explicitly."""

    def __init__(self, description: str = "Train and evaluate an image classifier with SynerMix."):
        self.dataclass_types = DATACLASS_TYPES
        self.parser = _Parser(_HELP_GROUPS, description=description, usage=USAGE)

    def values_from_command_line(self, argv: list[str]) -> tuple[dict[str, Any], set[str]]:
        unset = object()  # what the parser leaves in place of a flag that is not given
        probe = argparse.Namespace(**{f.name: unset for group in self.parser.dataclass_types
                                        for f in dataclasses.fields(group)})
        probe, extra = self.parser.parse_known_args(argv, namespace=probe)
        if extra:
            raise UsageError(f"Unrecognised arguments: {' '.join(extra)}. Run with --help to list the arguments.")
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

    def parse(self, argv: list[str]) -> ParsedArguments:
        """The four groups and the names the user set. Raises `UsageError`, worded in flags.

        Where a flag is not given the script chooses (recorded with the reason by `choose`): training and evaluation
        when none of --do_train, --do_eval and --do_predict is given, and half the CPU cores (at most 8) as
        --dataloader_num_workers.
        """
        if len(argv) == 1 and argv[0].endswith(".json"):
            values, explicit = self.values_from_json(argv[0])
        else:
            values, explicit = self.values_from_command_line(argv)
        if is_builtin_default(values):
            values.update(preset_values(explicit))
        replaced = [name for name in PAPER_RECIPE_REPLACES if name in explicit]
        if replaced and values.get("recipe", "paper") == "paper":
            flags = ", ".join(f"--{name}" for name in replaced)
            raise UsageError(
                f"{flags}: the paper recipe (--recipe paper, the default) trains with the reference's SGD and per-epoch "
                "StepLR (--learning_rate, --momentum, --nesterov, --weight_decay, --lr_step_size, --lr_gamma) and would "
                f"ignore {'it' if len(replaced) == 1 else 'them'}. Add --recipe trainer to use the Trainer's optimizer "
                f"and schedule, or leave out {flags}."
            )
        for steps, strategy in STEPS_IMPLY_STRATEGY.items():
            if steps in explicit and strategy not in explicit:
                values[strategy] = "steps"
        if "use_cpu" in explicit and not values.get("use_cpu") and launched_processes() > 1 \
                and not accelerator_available():
            raise UsageError(
                f"--use_cpu false: {launched_processes()} processes were launched on a machine without GPU, and "
                "without --use_cpu each of them would train its own copy of the model into the same --output_dir. "
                "Leave out --use_cpu (the processes then train one model together on the CPUs), or launch one "
                "process."
            )
        if values.get("output_dir") is None:  # not given, or null in a JSON file: the script names the directory
            explicit.discard("output_dir")
        if not any(values.get(name) for name in ("do_train", "do_eval", "do_predict")):
            values["do_train"] = values["do_eval"] = True
        cores = os.cpu_count() or 1
        workers = min(8, cores // 2) if values.get("dataloader_num_workers") is None else None  # given, or preset
        if workers is not None:  # before `TrainingArguments` checks the loader flags that need workers
            values["dataloader_num_workers"] = workers
        groups = []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            try:
                groups.append(dtype(**{k: v for k, v in values.items() if k in names}))
            except (ValueError, TypeError) as error:
                raise usage_error(error) from error
        model_args, data_args, training_args, script_args = groups
        if workers is not None:
            training_args.choose("dataloader_num_workers", workers, f"half the {cores} CPU cores, at most 8")
        if model_args.sync_bn and training_args.world_size > 1 and training_args.device.type == "cpu":
            raise UsageError(
                f"--sync_bn needs GPUs: torch's SyncBatchNorm runs on CUDA (or XPU) devices only, and these "
                f"{training_args.world_size} processes train on the CPU (gloo). Leave out --sync_bn (each process then "
                "normalizes over its own share of the batch)."
            )
        if "model_name_or_path" in explicit and values.get("model_name_or_path") and "model_name" in explicit:
            raise UsageError("Give either --model_name (-mn, a torchvision architecture) or --model_name_or_path (a "
                             "Hugging Face model), not both.")
        if model_args.model_name_or_path and model_args.pretrained:
            raise UsageError("--pretrained (-pr) loads torchvision's ImageNet weights for --model_name; a "
                             "--model_name_or_path model already starts from its own checkpoint.")
        return ParsedArguments(model_args, data_args, training_args, script_args, explicit)


def preset_values(explicit: set[str]) -> dict[str, Any]:
    """The built-in run's preset values that the user did not set (a batch of either kind counts for the batch)."""
    batch_given = bool(explicit & {"total_train_batch_size", "per_device_train_batch_size"})
    return {key: value for key, value in BUILTIN_PRESET.items()
            if key not in explicit and not (key == "total_train_batch_size" and batch_given)}


def is_builtin_default(values: dict[str, Any]) -> bool:
    """No data named (or `--dataset_name digits`): the built-in dataset and its preset apply."""
    name = values.get("dataset_name")
    no_dirs = not values.get("train_dir") and not values.get("validation_dir")
    return no_dirs and (name is None or str(name).strip().lower() == BUILTIN_DATASET)


def usage_error(error: BaseException, flags: Mapping[str, str] | None = None) -> UsageError:
    """A `UsageError` for a library error about the user's input, worded in the command line's flags."""
    if isinstance(error, UsageError):
        return error
    return UsageError(flag_text(str(error), flag_names() if flags is None else flags))
