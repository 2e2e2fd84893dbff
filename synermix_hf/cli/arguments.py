"""The command line's arguments, parsed by `HfArgumentParser` as in Hugging Face's example scripts.

Four dataclasses, one group of `--help` each: the model (`ModelArguments`), the data (`DataTrainingArguments`), what
the script writes (`ScriptArguments`) and training (the library's `RecipeTrainingArguments`: `TrainingArguments` with
SynerMix and the authors' recipe). Each argument is declared once, as a field of one of them, with the reference
code's short flag in its `aliases` (`-mn`, `-ds`, `-bs`, `-beta`, ...), and each dataclass checks its values in
`__post_init__`. The arguments come from the command line or from one JSON or YAML file
(`python run_image_classification.py args.json`). The script adds what depends on which arguments were given
(`ScriptArgumentParser.parse_dict`): the built-in run's preset, training and evaluation when no --do_* is given, the
loader's workers, and the refusal of a given flag that would have no effect.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from ..data.catalog import BUILTIN_DATASET, CATALOG
from ..data.pipeline import VIEWS_ON
from ..models import MODEL_NAMES, normalize_model_name
from ..recipe import PAPER_RECIPE_REPLACES, RecipeTrainingArguments, refuse_under_the_paper_recipe
from ..training_args import accelerator_available, launched_processes
from .errors import UsageError, flag_text

__all__ = [
    "BUILTIN_PRESET",
    "DATACLASS_TYPES",
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

DEFAULT_MODEL = "resnet18"

# The built-in default run: scikit-learn's digits with SynerMix, sized to finish within 90 s on a 2-core CPU.
# Like the paper's recipe it does not clip gradients: five epochs at learning rate 0.05, multiplied by 0.6 after each
# epoch. Without clipping, learning rate 0.1 is unstable in the first epochs from the CIFAR stem's default
# initialisation, and a sixth epoch leaves no margin under 90 s (the candidates measured: BENCHMARKS.md, section 6).
# Each value applies only where the command line (or argument file) does not set it (`preset_values`).
BUILTIN_PRESET: dict[str, Any] = {
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

    _argument_group_name = "The model"

    model_name: str | None = field(
        default=None,
        metadata={"aliases": ["-mn"], "help": f"torchvision architecture: {', '.join(MODEL_NAMES)} (default: "
                  f"{DEFAULT_MODEL}). Not with --model_name_or_path."},
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
        if self.model_name is not None and self.model_name_or_path:
            raise ValueError("Give either `model_name`, a torchvision architecture, or `model_name_or_path`, a Hugging "
                             "Face model, not both.")
        if self.pretrained and self.model_name_or_path:
            raise ValueError("`pretrained` loads torchvision's ImageNet weights for `model_name`; a "
                             "`model_name_or_path` model already starts from its own checkpoint.")
        self.model_name = normalize_model_name(self.model_name or DEFAULT_MODEL)
        # Checked here, not only by the transforms: the script reads an image size of 0 as "not given".
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"`image_size` must be >= 1, got {self.image_size}.")


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on, and how to split it.

    `val_ratio` and `decode_budget_gib` are checked where they are used
    (`load_image_classification_data`, `prepare_views`).
    """

    _argument_group_name = "The data"

    dataset_name: str | None = field(
        default=None,
        metadata={"aliases": ["-ds"],
                  "help": f"A short name ({', '.join(CATALOG)}), a Hub dataset id or a local directory (parquet, "
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
            "aliases": ["-phase"],
            "choices": ["test", "val"],
            "help": "test: evaluate on the test split; val: hold out a stratified --val_ratio of the training set and "
            "evaluate on it.",
        },
    )
    val_ratio: float = field(default=0.1, metadata={"aliases": ["-vr"], "help": "Fraction held out for --phase val."})
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
                  "cache), counting what is not stored yet. When the stores do not fit, the views are made in the "
                  "DataLoader (the same pixels; 0: no store at all)."},
    )

    def __post_init__(self):
        if self.train_val_split is not None and not 0.0 <= self.train_val_split < 1.0:
            raise ValueError(f"`train_val_split` must be in [0, 1), got {self.train_val_split}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")


@dataclass
class ScriptArguments:
    """What the script writes beside the model: whether it may write over a run's results, and what it reports."""

    _argument_group_name = "What the script writes"

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into an --output_dir that already holds the results of a run."}
    )
    feature_metrics: bool = field(
        default=False,
        metadata={"help": "After the final evaluation, also report eval_cohesion and eval_separability of the "
                  "penultimate features of the evaluation set (synermix_hf/metrics/feature_cohesion, "
                  "feature_separability)."},
    )


DATACLASS_TYPES = (ModelArguments, DataTrainingArguments, ScriptArguments, RecipeTrainingArguments)


class ParsedArguments(NamedTuple):
    """The four groups of a command line, and the names of the arguments the user gave (on it or in its file)."""

    model: ModelArguments
    data: DataTrainingArguments
    training: RecipeTrainingArguments
    script: ScriptArguments
    explicit: set[str]


USAGE = ("%(prog)s [-ds DATASET | --train_dir DIR] [-mn MODEL | --model_name_or_path MODEL] [-beta BETA] "
         "[-itrm INTER_MIXUP] [-alpha ALPHA] [any flag below]\n       %(prog)s ARGUMENTS.json (or .yaml)")

DESCRIPTION = ("Train and evaluate an image classifier with SynerMix. The flags come in four groups: the model, the "
               "data, what the script writes, and training, whose last flags are SynerMix's (--beta, --alpha, "
               "--inter_mixup, ...) and the authors' recipe (--recipe, --momentum, --lr_step_size, ...).")

# Help that says what the script does with a TrainingArguments flag (the field's own help is the Trainer's).
HELP: dict[str, str] = {
    "do_train": "Train. Without --do_train, --do_eval and --do_predict the script trains and evaluates (--do_train "
    "false alone: evaluates only).",
    "do_eval": "Evaluate on the evaluation split. Without --do_train, --do_eval and --do_predict the script trains "
    "and evaluates (--do_eval false alone: trains only).",
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
    **dict.fromkeys(PAPER_RECIPE_REPLACES, "Only with --recipe trainer (the paper recipe uses SGD and a per-epoch "
                    "StepLR instead)."),
}
# Flags whose help says what happens when they are not given: no "(default: ...)" after it.
_DEFAULT_IN_HELP = ("do_train", "do_eval", "do_predict", "dataloader_num_workers", "model_name")
_DO = ("do_train", "do_eval", "do_predict")
# Arguments that cannot be None (a null in an argument file): not Optional, and not None by default.
_NOT_NULLABLE = {
    dataclass_field.name
    for dtype in DATACLASS_TYPES
    for hint, dataclass_field in ((typing.get_type_hints(dtype).get(f.name), f) for f in dataclasses.fields(dtype))
    if dataclass_field.init and dataclass_field.default is not None and hint is not Any
    and type(None) not in typing.get_args(hint)
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.dest in _DEFAULT_IN_HELP else super()._get_help_string(action)


_NOT_GIVEN = object()  # what the namespace holds for a flag that the command line does not give


class ScriptArgumentParser(HfArgumentParser):
    """`HfArgumentParser` over the four groups. Its mistakes end in one line (`UsageError`) instead of argparse's
    usage and exit, and it records which arguments the user gave (`ParsedArguments.explicit`)."""

    def __init__(self, description: str = DESCRIPTION):
        super().__init__(DATACLASS_TYPES, description=description, usage=USAGE, formatter_class=_HelpFormatter)
        for action in self._actions:
            action.help = HELP.get(action.dest, action.help)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}. Run with --help to list the arguments.")

    def given_on_command_line(self, argv: list[str]) -> dict[str, Any]:
        """The arguments that the command line `argv` gives, by name, with their values."""
        namespace = argparse.Namespace(**dict.fromkeys((action.dest for action in self._actions), _NOT_GIVEN))
        given = vars(self.parse_args(argv, namespace=namespace))
        return {name: value for name, value in given.items() if value is not _NOT_GIVEN}

    def parse(self, argv: list[str]) -> ParsedArguments:
        """The four groups from a command line, or from the JSON or YAML file that is its only argument.

        Raises:
            UsageError: worded in flags.
        """
        if len(argv) > 1 and argv[0].endswith((".json", ".yaml", ".yml")):  # argparse: "unrecognized arguments"
            raise UsageError(
                f"The argument file {argv[0]!r} must be the only argument: put {' '.join(argv[1:])} in the file as "
                "keys, or give every argument as a flag."
            )
        if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
            read = self.parse_json_file if argv[0].endswith(".json") else self.parse_yaml_file
            try:
                return ParsedArguments(*read(argv[0]))
            except UsageError as error:
                raise UsageError(f"The argument file {argv[0]!r}: {error}") from error
            except (OSError, ValueError, yaml.YAMLError) as error:
                text = " ".join(str(error).split())  # a YAML error's lines, in one
                raise UsageError(f"The argument file {argv[0]!r} cannot be read: {text}") from error
        return self.parse_dict(self.given_on_command_line(argv))

    def read_like_the_command_line(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """`args` with a string given to a switch or a number (`"false"`, `"0.1"` in a JSON file) read as its flag
        reads it on the command line: the dataclasses take the string as it is, and `"false"` would be true.

        Raises:
            UsageError: a string that the flag would refuse.
        """
        readers = {action.dest: action.type for action in self._actions if action.type in (int, float, string_to_bool)}
        read = dict(args)
        for name, value in args.items():
            if value is None and name in _NOT_NULLABLE:  # the dataclass would fail on it with a bare TypeError
                raise UsageError(f"{flag_names()[name]}: null is not valid for it; leave the key out to get its default.")
            if isinstance(value, str) and name in readers:
                try:
                    read[name] = readers[name](value)
                except (ValueError, argparse.ArgumentTypeError) as error:
                    valid = "true or false" if readers[name] is string_to_bool else f"a number ({readers[name].__name__})"
                    raise UsageError(
                        f"{flag_names().get(name, '--' + name)}: {value!r} is not {valid}."
                    ) from error
        return read

    def parse_dict(self, args: dict[str, Any], allow_extra_keys: bool = False) -> ParsedArguments:
        """The four groups from the arguments the user gave (`args`, by name), and what the script chooses where they
        are not given (recorded with the reason by `choose`): the built-in run's preset when no data is named,
        training and evaluation (less the one given false) when none of --do_train, --do_eval and --do_predict is
        given true, and half the CPU cores (at most 8) as --dataloader_num_workers.

        Raises:
            UsageError: worded in flags.
        """
        if not isinstance(args, Mapping):
            raise UsageError("The arguments must be one mapping of argument names to values.")
        args = self.read_like_the_command_line(args)
        values = dict(args)
        if is_builtin_default(values):
            values.update(preset_values(set(args)))
        if not any(values.get(name) for name in _DO):  # training and evaluation, less those turned off
            values.update({name: True for name in ("do_train", "do_eval") if name not in args})
            if not any(values.get(name) for name in _DO):
                raise UsageError(
                    f"{' '.join(f'--{name} false' for name in _DO if name in args)}: the run would do nothing. Give "
                    "--do_train, --do_eval or --do_predict (without any of them the script trains and evaluates)."
                )
        cores = os.cpu_count() or 1
        workers = min(8, cores // 2) if values.get("dataloader_num_workers") is None else None  # given, or preset
        if workers is not None:  # before `TrainingArguments` checks the loader flags that need workers
            values["dataloader_num_workers"] = workers
        if "use_cpu" in args and not values["use_cpu"] and launched_processes() > 1 and not accelerator_available():
            raise UsageError(
                f"--use_cpu false: {launched_processes()} processes were launched on a machine without GPU, and "
                "without --use_cpu each of them would train its own copy of the model into the same --output_dir. "
                "Leave out --use_cpu (the processes then train one model together on the CPUs), or launch one "
                "process."
            )
        try:
            if values.get("recipe", "paper") == "paper":  # given, even at the Trainer's default value
                refuse_under_the_paper_recipe([name for name in PAPER_RECIPE_REPLACES if name in args])
            model_args, data_args, script_args, training_args = super().parse_dict(values, allow_extra_keys)
        except (ValueError, TypeError) as error:
            raise usage_error(error) from error
        if workers is not None:
            training_args.choose("dataloader_num_workers", workers, f"half the {cores} CPU cores, at most 8")
        if training_args.resume_from_checkpoint not in (None, False) and not training_args.do_train:
            raise UsageError(
                f"--resume_from_checkpoint {training_args.resume_from_checkpoint} continues training, and this run does "
                "not train (no --do_train). To evaluate or predict with a checkpoint's weights, give it as "
                "--model_name_or_path; to continue training, add --do_train."
            )
        if model_args.sync_bn and training_args.world_size > 1 and training_args.device.type == "cpu":
            raise UsageError(
                f"--sync_bn needs GPUs: torch's SyncBatchNorm runs on CUDA (or XPU) devices only, and these "
                f"{training_args.world_size} processes train on the CPU (gloo). Leave out --sync_bn (each process then "
                "normalizes over its own share of the batch)."
            )
        # An output_dir left null in a file is not given: the script names the directory.
        explicit = {name for name, value in args.items() if not (name == "output_dir" and value is None)}
        return ParsedArguments(model_args, data_args, training_args, script_args, explicit)


def flag_names() -> dict[str, str]:
    """Field name -> how the command line writes the flag (`--val_ratio (-vr)`), for every argument."""
    names = {}
    for dtype in DATACLASS_TYPES:
        for dataclass_field in dataclasses.fields(dtype):
            aliases = dataclass_field.metadata.get("aliases", [])
            names[dataclass_field.name] = f"--{dataclass_field.name}" + (f" ({', '.join(aliases)})" if aliases else "")
    return names


# Preset values that also give way to another argument: the batch to a batch of either kind, the save strategy to an
# interval (which implies its steps strategy).
_PRESET_GIVES_WAY = {"total_train_batch_size": "per_device_train_batch_size", "save_strategy": "save_steps"}


def preset_values(explicit: set[str]) -> dict[str, Any]:
    """The built-in run's preset values that the user did not set."""
    return {key: value for key, value in BUILTIN_PRESET.items()
            if key not in explicit and _PRESET_GIVES_WAY.get(key) not in explicit}


def is_builtin_default(values: Mapping[str, Any]) -> bool:
    """No data named (or `--dataset_name digits`): the built-in dataset and its preset apply."""
    name = values.get("dataset_name")
    no_dirs = not values.get("train_dir") and not values.get("validation_dir")
    return no_dirs and (name is None or str(name).strip().lower() == BUILTIN_DATASET)


def usage_error(error: BaseException, flags: Mapping[str, str] | None = None) -> UsageError:
    """A `UsageError` for a library error about the user's input, worded in the command line's flags."""
    if isinstance(error, UsageError):
        return error
    return UsageError(flag_text(str(error), flag_names() if flags is None else flags))
