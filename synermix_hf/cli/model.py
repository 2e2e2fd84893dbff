"""The model and its image processor: a torchvision architecture of the paper, or a Hugging Face model."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..adapters import find_head, find_mixing_points
from ..data.catalog import PreparedData
from ..data.transforms import TransformSpec, image_processor_for, spec_from_image_processor
from ..hub import hub_offline, hub_unreachable_reason, is_hub_id
from ..mixup import INTER_MIXUPS
from ..models import TorchvisionForImageClassification
from .arguments import usage_error
from .errors import UsageError

__all__ = ["ModelLayout", "build_model", "check_model_outputs", "find_layout"]


@dataclasses.dataclass(frozen=True)
class ModelLayout:
    """Where SynerMix reaches into the model: what the trainer's `ModelAdapter` finds with the same flags.

    Args:
        head: Module name of the final classification Linear (its input is the penultimate feature).
        mixing_points: The Manifold MixUp points, or `None` when `--inter_mixup` is not `manifold_mixup`.
    """

    head: str
    mixing_points: tuple[str, ...] | None

    def head_text(self, model: Any) -> str:
        """`fc (Linear: 512 features -> 10 outputs)`, for the run log and the model card."""
        head = model.get_submodule(self.head)
        shape = (f" ({type(head).__name__}: {head.in_features} features -> {head.out_features} outputs)"
                 if hasattr(head, "in_features") and hasattr(head, "out_features") else f" ({type(head).__name__})")
        return self.head + shape

    def points_text(self, inter_mixup: str) -> str:
        if self.mixing_points is None:
            return f"- (--inter_mixup {inter_mixup})"
        return ", ".join(self.mixing_points)


def build_model(model_args: Any, data: PreparedData) -> tuple[Any, Any, TransformSpec]:
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
            raise UsageError(f"--pretrained: {usage_error(error)}") from error
        processor = image_processor_for(spec)
    else:
        model, processor, spec = _build_hf_model(model_args, family, id2label)
    return model, processor, spec


def find_layout(model: Any, training_args: Any) -> ModelLayout:
    """The head and the Manifold MixUp points of `model` under `--head_module` / `--manifold_mixup_modules`.

    Raises:
        UsageError: a given name is not a module of the model, or nothing suitable is found; names the flag.
    """
    try:
        head = find_head(model, training_args.head_module)
        points = (find_mixing_points(model, training_args.manifold_mixup_modules)
                  if INTER_MIXUPS[training_args.inter_mixup].needs_mixing_points else None)
    except ValueError as error:
        raise usage_error(error) from error
    return ModelLayout(head=head, mixing_points=points)


def check_model_outputs(model: Any, num_labels: int, name: str, head_name: str | None = None) -> None:
    """The classification head has one output per class of the dataset (else training fails with an IndexError).

    Args:
        head_name: The head's module name (detected when not given).

    Raises:
        UsageError: it has another number of outputs.
    """
    head = model.get_submodule(head_name or find_head(model))
    outputs = getattr(head, "out_features", None)
    if outputs is not None and outputs != num_labels:
        raise UsageError(
            f"--model_name_or_path {name}: its classification head has {outputs} outputs, but the dataset has "
            f"{num_labels} classes. Add --ignore_mismatched_sizes to start the head afresh for these classes."
        )


def _build_hf_model(model_args: Any, family: str, id2label: dict[int, str]):
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    path = model_args.model_name_or_path
    for flag, value in (("--model_name_or_path", path), ("--config_name", model_args.config_name),
                        ("--image_processor_name", model_args.image_processor_name)):
        if value and not is_hub_id(value) and not os.path.isdir(os.path.expanduser(value)):
            raise UsageError(f"{flag} {value!r} does not exist.")
    if is_hub_id(path) and not hub_offline():
        reason = hub_unreachable_reason()
        if reason is not None:
            raise UsageError(f"--model_name_or_path {path}: cannot reach the Hugging Face Hub ({reason}). Check the "
                             "connection, set HF_HUB_OFFLINE=1 to use a copy in the cache, or give a local directory.")
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
        _drop_timm_num_classes(config)
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
            raise usage_error(error) from error
        spec = TransformSpec(family=family, image_size=model_args.image_size)
    if model_args.image_size is not None:
        spec = dataclasses.replace(spec, image_size=model_args.image_size)
    return model, processor, spec


def _drop_timm_num_classes(config: Any) -> None:
    """timm's `save_for_hf` (1.0.31) also writes `num_classes` into a checkpoint's `model_args`, and transformers passes
    both it and `num_labels` to `timm.create_model` (TypeError: multiple values for 'num_classes'); `num_labels`, the
    dataset's number of classes, is the one to keep."""
    model_args = getattr(config, "model_args", None)
    if getattr(config, "model_type", None) == "timm_wrapper" and isinstance(model_args, dict):
        model_args.pop("num_classes", None)
