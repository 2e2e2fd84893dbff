"""A human-readable log of a run: its arguments, its data, then one line per logged training and evaluation step.

`write_run_header(path, sections)` starts the file; `RunLogCallback(path)` appends what the Trainer logs, and
`append_line` anything else (each image that cannot be decoded, as it is found). With the recipe's epoch-wise logging
(`--logging_strategy epoch`, `--eval_strategy epoch`) that is one training line and one evaluation line per epoch:

    epoch   3/30  step    33  train  loss 0.4123  loss_intra 0.3012  loss_inter 0.4456  lr 0.1  (2.4 s)
    epoch   3/30  step    33  eval   loss 0.2011  accuracy 0.9417  top5_accuracy 0.9972
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

from .. import __version__
from ..credentials import redact_argv, redact_mapping
from ..mixup import INTER_MIXUPS
from .run_files import keep_going

__all__ = ["RunLogCallback", "append_final", "append_line", "chosen_settings", "command_line", "global_batch",
           "recipe_text", "run_summary", "total_train_batch", "versions", "write_run_header"]

_TRAIN_KEYS = ("loss", "loss_intra", "loss_inter", "learning_rate", "grad_norm")
_SHORT = {"learning_rate": "lr"}


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    return str(value)


def write_run_header(
    path: str | os.PathLike, sections: Mapping[str, Mapping[str, Any]], title: str = "", append: bool = False
) -> None:
    """Start the log at `path` (or continue it, with `append`) with a title line and `key: value` blocks."""
    started = datetime.datetime.now().isoformat(timespec="seconds")
    lines = ([""] if append else []) + [title or "run", f"started {started}", ""]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        width = max((len(str(k)) for k in values), default=0)
        for key, value in values.items():
            if isinstance(value, (dict, list, tuple)):
                value = json.dumps(value, default=str)
            lines.append(f"  {str(key).ljust(width)} : {value}")
        lines.append("")
    with keep_going("the run log", path):  # a full disk: one warning, and the run goes on
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a" if append else "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


class RunLogCallback(TrainerCallback):
    """Append one line per training log and per evaluation to a text file (on the main process only).

    Args:
        path: The log file (created if missing, appended to otherwise).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._epoch_started: float | None = None
        self._training_done = False

    def _write(self, state: Any, text: str) -> None:
        if not getattr(state, "is_world_process_zero", True):
            return
        append_line(self.path, text)

    def _prefix(self, state: Any, logs: Mapping[str, Any]) -> str:
        epoch = logs.get("epoch", state.epoch) or 0.0
        total = state.num_train_epochs or 0
        epoch_text = f"{epoch:g}" if float(epoch).is_integer() else f"{epoch:.2f}"
        return f"epoch {epoch_text:>5}/{total}  step {state.global_step:>6}"

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._write(
            state,
            f"training: {state.num_train_epochs} epochs, {state.max_steps} optimizer steps "
            f"(resuming at step {state.global_step})" if state.global_step else
            f"training: {state.num_train_epochs} epochs, {state.max_steps} optimizer steps",
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._training_done = True

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch_started = time.time()

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any):
        if not logs:
            return
        if "train_runtime" in logs:
            summary = "  ".join(f"{k} {_format_value(v)}" for k, v in logs.items() if k != "epoch")
            self._write(state, f"{self._prefix(state, logs)}  done   {summary}")
            return
        if "loss" in logs:
            parts = [f"{_SHORT.get(k, k)} {_format_value(logs[k])}" for k in _TRAIN_KEYS if k in logs]
            elapsed = f"  ({time.time() - self._epoch_started:.1f} s)" if self._epoch_started is not None else ""
            self._write(state, f"{self._prefix(state, logs)}  train  {'  '.join(parts)}{elapsed}")
            return
        metrics = {k[len("eval_"):]: v for k, v in logs.items() if k.startswith("eval_")}
        if metrics:
            keep = {k: v for k, v in metrics.items() if not k.endswith(("_per_second", "runtime"))}
            parts = [f"{k} {_format_value(v)}" for k, v in keep.items()]
            label = "final eval" if self._training_done else "eval  "
            self._write(state, f"{self._prefix(state, logs)}  {label} {'  '.join(parts)}")


def run_summary(argv: list[str], model_args: Any, data_args: Any, training_args: Any, data: Any, model: Any,
                spec: Any, checkpoint: str | None, method: str, program: str, views: str = "-",
                layout: Any = None) -> dict[str, dict]:
    """The blocks at the top of training_log.txt (`views`: the line `prepare_views` wrote about where the views are
    made; `layout`: the `ModelLayout`, the model's head and Manifold MixUp points)."""
    import dataclasses

    recipe_keys = ("learning_rate", "weight_decay", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                   "per_device_eval_batch_size", "gradient_accumulation_steps", "seed", "amp", "fp16", "bf16")
    method_keys = ("beta", "inter_mixup", "alpha", "balanced_sampler", "label_smoothing_factor")
    values = dataclasses.asdict(training_args)
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "command": {"argv": command_line(program, argv), "resumed from": checkpoint or "-"},
        "data": {
            "source": data.source,
            "classes": data.num_labels,
            "train examples": len(data.train) if data.train is not None else 0,
            "eval examples": len(data.eval) if data.eval is not None else 0,
            "eval split": data.eval_description,
            "columns": f"image={data.image_column}, label={data.label_column}",
            "transforms": spec.describe(),
            "views": views,
        },
        "model": {
            "model": model_args.model_name_or_path or model_args.model_name,
            "class": type(model).__name__,
            "parameters": f"{parameters:,}",
            "pretrained": model_args.pretrained if model_args.model_name_or_path is None else "checkpoint",
            "cifar stem": getattr(model.config, "cifar_stem", "-"),
            **({"head": layout.head_text(model), "manifold mixup points": layout.points_text(training_args.inter_mixup)}
               if layout is not None else {}),
        },
        "method": {"method": method, **{k: values[k] for k in method_keys}},
        "recipe": {"recipe": recipe_text(training_args), **{k: str(values[k]) for k in recipe_keys},
                   "processes": training_args.world_size,
                   "total train batch size": global_batch(training_args)},
        "output": {"output_dir": os.path.abspath(training_args.output_dir)},
        "versions": versions(),
        "chosen for this run": chosen_settings(training_args) or {"-": "every value as given or by default"},
        "all arguments": redact_mapping({
            "model": dataclasses.asdict(model_args),
            "data": dataclasses.asdict(data_args),
            "training": json.loads(training_args.to_json_string()),
        }),
    }


def recipe_text(training_args: Any) -> str:
    """The optimizer and schedule of a run in one line, e.g. `paper: SGD (lr 0.1, momentum 0.9, nesterov False,
    weight decay 0.0005), StepLR every 10 epochs x 0.5, 120 epochs`."""
    args = training_args
    length = f"{args.max_steps} steps" if args.max_steps and args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"
    if args.recipe == "paper":
        return (f"paper: SGD (lr {args.learning_rate:g}, momentum {args.momentum:g}, nesterov {args.nesterov}, weight "
                f"decay {args.weight_decay:g}), StepLR every {args.lr_step_size} epochs x {args.lr_gamma:g}, {length}")
    optim = getattr(args.optim, "value", args.optim)
    schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    return (f"trainer: {optim} (lr {args.learning_rate:g}, weight decay {args.weight_decay:g}), {schedule} schedule, "
            f"warmup {args.warmup_steps:g} steps, {length}")


def chosen_settings(training_args: Any) -> dict[str, str]:
    """The values chosen for this run where the user gave none, each with the reason (`SynerMixTrainingArguments.
    choose`): `{name: "value (reason)"}`."""
    return {name: f"{value} ({reason})" for name, (value, reason) in getattr(training_args, "chosen_settings",
                                                                            {}).items()}


def total_train_batch(training_args: Any) -> int:
    """The examples of one optimizer step over all processes, GPUs and accumulation steps."""
    return (training_args.per_device_train_batch_size * max(1, training_args.n_gpu) * training_args.world_size
            * training_args.gradient_accumulation_steps)


def global_batch(training_args: Any) -> str:
    """The batch of one optimizer step and how it is made, e.g. `128 (2 processes x 64 per process x 1
    accumulation step)`."""
    gpus = max(1, training_args.n_gpu)
    parts = [f"{training_args.world_size} process{'es' if training_args.world_size > 1 else ''}",
             *([f"{gpus} GPUs"] if gpus > 1 else []),
             f"{training_args.per_device_train_batch_size} per {'GPU' if gpus > 1 else 'process'}",
             f"{training_args.gradient_accumulation_steps} accumulation step"
             f"{'s' if training_args.gradient_accumulation_steps > 1 else ''}"]
    total = total_train_batch(training_args)
    partners = ", plus the balanced sampler's partners" if training_args.balanced_sampler else ""
    return f"{total} ({' x '.join(parts)}{partners}{_split_note(training_args, gpus)})"


def _split_note(training_args: Any, gpus: int) -> str:
    """What of a step split over processes or accumulation steps is not the reference's one-batch update."""
    accumulation, processes = training_args.gradient_accumulation_steps, training_args.world_size * gpus
    if accumulation * processes == 1:
        return ""
    apart = ["BatchNorm statistics"]
    mixup = INTER_MIXUPS.get(training_args.inter_mixup)
    if mixup is not None and mixup.mixes_batch:
        apart.append(f"{mixup.label} pairs")
    if not training_args.balanced_sampler and accumulation > 1 and training_args.beta > 0:
        apart.insert(0, "the intra-class term")  # the Trainer's sampler cuts classes between micro-batches
    listed = ", ".join(apart[:-1]) + (" and " if len(apart) > 1 else "") + apart[-1]
    per = ("micro-batch of each process" if processes > 1 else "micro-batch") if accumulation > 1 else "process"
    sync = " (BatchNorm over the processes with --sync_bn)" if processes > 1 else ""
    exact = "the update of one balanced batch, but " if training_args.balanced_sampler else ""
    return f"; {exact}{listed} per {per}{sync}"


def versions() -> dict[str, str]:
    """The releases that decide a run's pixels and draws: Pillow (decoding and resizing: releases 12 and 13 crop
    other boxes), torchvision (the transforms), torch and numpy (the draws, the kernels), and the training code."""
    import importlib

    found = {"synermix-hf": __version__}
    for label, module in (("torch", "torch"), ("torchvision", "torchvision"), ("Pillow", "PIL"), ("numpy", "numpy"),
                          ("transformers", "transformers"), ("accelerate", "accelerate")):
        try:
            found[label] = str(importlib.import_module(module).__version__)
        except (ImportError, AttributeError):
            found[label] = "-"
    return found


def command_line(program: str, argv: list[str]) -> str:
    """The command as typed: `program` and the quoted arguments, with the value of every credential flag
    (`--hub_token`, `--token`) masked."""
    import shlex

    from .arguments import flag_names

    argv = redact_argv(argv, flag_names())
    return f"{program} {shlex.join(argv)}" if argv else f"{program} (no arguments: built-in default)"


def append_line(path: str | os.PathLike, text: str) -> None:
    """One line of its own in the log (an image that cannot be decoded, why the run stopped); a failed write (a full
    disk) is one warning for the whole run, and the run goes on."""
    with keep_going("the run log", path), open(path, "a", encoding="utf-8") as handle:
        handle.write(text + "\n")


def append_final(path: str | os.PathLike, metrics: Mapping[str, Any], output_dir: str) -> None:
    """The last lines of the log: the final evaluation metrics and where the outputs are."""
    final = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                      if k.startswith("eval_") and "runtime" not in k and "per_second" not in k
                      and (isinstance(v, float) or k.endswith("skipped_images")))
    append_line(path, f"final  {final}\noutputs in {os.path.abspath(output_dir)}")
