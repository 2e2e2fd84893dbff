"""Find the feature, the classifier and the Manifold MixUp points of a model, and reach them with hooks.

SynerMix needs three things from a classifier without touching its `forward`:

* the *head* g, the final `nn.Linear`; its input is "the feature" h = f(x) of the method;
* the points where Manifold MixUp may mix a hidden state;
* a uniform way to call the model on pixels and get logits, for torchvision (`model(x)` returns a tensor) and
  Hugging Face models (`model(pixel_values=x).logits`).

Everything is done with forward pre-hooks: the intra-class pass replaces the head's *input* with the synthesized
class features, so the head runs once on them inside the model's own forward call (which keeps DDP, FSDP and
autocast in charge), and Manifold MixUp replaces the input of the chosen module.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["INPUT_POINT", "ModelAdapter", "find_head", "find_mixing_points"]

INPUT_POINT = "input"
"""The Manifold MixUp point that mixes the pixels themselves (plain MixUp)."""

# Known torchvision architectures: (head, mixing points) as the paper's code uses them. A point names the module whose
# *input* is mixed, as in the reference code ("before features[1]"). Swin-T and MobileNetV3 list the model input
# twice (as `input` and as the input of `features.0`), exactly like the reference's four equally likely choices.
_TORCHVISION_LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ResNet": ("fc", (INPUT_POINT, "layer2", "layer3")),
    "SwinTransformer": ("head", (INPUT_POINT, "features.0", "features.1", "features.3")),
    "MobileNetV3": ("classifier.3", (INPUT_POINT, "features.0", "features.1", "features.2")),
}

_HEAD_ATTRIBUTE_NAMES = ("classifier", "fc", "head")
_BLOCK_LIST_NAMES = ("stages", "blocks", "layers", "layer")


def _is_hf_model(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a requirement
        return False
    return isinstance(model, PreTrainedModel)


def _last_linear(module: nn.Module, prefix: str) -> str | None:
    if isinstance(module, nn.Linear):
        return prefix
    linears = [name for name, sub in module.named_modules() if isinstance(sub, nn.Linear)]
    return f"{prefix}.{linears[-1]}" if linears else None


def _torchvision_layout(model: nn.Module) -> tuple[str, tuple[str, ...]] | None:
    """Head and mixing points of the first known torchvision architecture in `model` (itself or a wrapped one)."""
    for name, module in model.named_modules():
        layout = _TORCHVISION_LAYOUTS.get(type(module).__name__)
        if layout is not None:
            prefix = f"{name}." if name else ""
            head, points = layout
            return prefix + head, tuple(p if p == INPUT_POINT else prefix + p for p in points)
    return None


def find_head(model: nn.Module, head_module: str | None = None) -> str:
    """Return the name of the module whose input is the penultimate feature (the final classification Linear).

    Args:
        model: A torchvision or Hugging Face image classifier.
        head_module: Explicit module name (as in `model.named_modules()`), which wins over detection.

    Raises:
        ValueError: when the name does not exist or no head can be found; the message names `head_module`.
    """
    names = dict(model.named_modules())
    if head_module is not None:
        if head_module not in names:
            raise ValueError(
                f"`head_module` {head_module!r} is not a module of {type(model).__name__}. Some valid names: "
                f"{', '.join(n for n in list(names)[-8:] if n)}."
            )
        return head_module

    layout = _torchvision_layout(model)
    if layout is not None and layout[0] in names:
        return layout[0]

    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if num_labels is not None:
        # Hugging Face classifiers: the last Linear that produces `num_labels` outputs.
        matches = [n for n, m in names.items() if isinstance(m, nn.Linear) and m.out_features == num_labels]
        if matches:
            return matches[-1]
    for attribute in _HEAD_ATTRIBUTE_NAMES:
        module = getattr(model, attribute, None)
        if isinstance(module, nn.Module):
            found = _last_linear(module, attribute)
            if found is not None:
                return found
    raise ValueError(
        f"Could not find the classification head of {type(model).__name__}: no final nn.Linear under "
        f"{'/'.join(_HEAD_ATTRIBUTE_NAMES)}. Set `head_module` to the name of the Linear layer whose "
        "input is the penultimate feature."
    )


def find_mixing_points(model: nn.Module, manifold_mixup_modules: Sequence[str] | None = None) -> tuple[str, ...]:
    """Return the Manifold MixUp points: `"input"` or names of modules whose input gets mixed.

    Known torchvision models use the paper's points. Other models (Hugging Face and timm families included) use the
    input plus the inputs of the 2nd and 3rd children of the first stage/block list, i.e. the outputs of the first two
    stages or blocks. A list named like one (`stages`, `blocks`, `layers`, `layer`) wins over one that comes earlier,
    such as a timm ConvNeXt's `stem` (a convolution then a norm).

    Raises:
        ValueError: when a given name does not exist or no block list can be found; the message names
            `manifold_mixup_modules`.
    """
    names = dict(model.named_modules())
    if manifold_mixup_modules:
        unknown = [p for p in manifold_mixup_modules if p != INPUT_POINT and p not in names]
        if unknown:
            raise ValueError(
                f"`manifold_mixup_modules` has names that are not modules of {type(model).__name__}: {unknown}. "
                f"Use {INPUT_POINT!r} or module names as listed by model.named_modules()."
            )
        return tuple(manifold_mixup_modules)

    layout = _torchvision_layout(model)
    if layout is not None and all(p == INPUT_POINT or p in names for p in layout[1]):
        return layout[1]

    lists = [name for name, module in names.items()
             if name and isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) >= 2]
    named_like_blocks = [name for name in lists if name.rsplit(".", 1)[-1] in _BLOCK_LIST_NAMES]
    if lists:
        name = (named_like_blocks or lists)[0]
        return (INPUT_POINT,) + tuple(f"{name}.{i}" for i in range(1, min(len(names[name]), 3)))
    candidates = [name for name, module in names.items() if name and "." not in name and any(module.children())]
    raise ValueError(
        f"Could not find Manifold MixUp points in {type(model).__name__} (no list of stages or blocks). Set "
        "`manifold_mixup_modules` to 'input' and/or module names whose input to mix; its top-level blocks are "
        f"{candidates[:12] or list(names)[1:13]} (model.named_modules() lists all)."
    )


def _replace_first_tensor(args: tuple, kwargs: dict, fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[tuple, dict]:
    if args:
        return (fn(args[0]),) + tuple(args[1:]), kwargs
    for key, value in kwargs.items():
        if torch.is_tensor(value):
            return args, {**kwargs, key: fn(value)}
    raise RuntimeError("The hooked module was called without a tensor input.")


@dataclass
class ModelAdapter:
    """How SynerMix reaches into one model.

    The adapter puts one forward pre-hook on the head and on each mixing point when it is created, and leaves them
    there: a hook does nothing unless a `head_input_replaced` / `mixing_at` block has armed it. Hooks that never
    come and go are what `torch.compile` needs: Dynamo does not guard on module hooks (it would not notice a hook
    added after the first compiled call), so per-step hooks would be silently ignored in a compiled model, while
    these are traced once and branch on which replacement is armed.

    Args:
        model: The unwrapped model (hooks go on its modules; calls may go through a DDP/FSDP wrapper of it).
        head_name: Module name of the final classification Linear.
        mixing_points: Manifold MixUp points, see `find_mixing_points`.
    """

    model: nn.Module
    head_name: str
    mixing_points: tuple[str, ...]
    _armed: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _hooks: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in (self.head_name, *self.mixing_points):
            if name != INPUT_POINT and name not in self._hooks:
                hook = functools.partial(_replace_armed_input, self._armed, name)
                module = self.model.get_submodule(name)
                self._hooks[name] = module.register_forward_pre_hook(hook, with_kwargs=True)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        head_module: str | None = None,
        manifold_mixup_modules: Sequence[str] | None = None,
        need_mixing_points: bool = True,
    ) -> ModelAdapter:
        """Detect (or take as given) the head and the mixing points of `model`."""
        head_name = find_head(model, head_module)
        points = find_mixing_points(model, manifold_mixup_modules) if need_mixing_points else (INPUT_POINT,)
        return cls(model=model, head_name=head_name, mixing_points=points)

    def remove_hooks(self) -> None:
        """Take the adapter's hooks off the model (they are inert when not armed, so this is only tidiness)."""
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self.head_name)

    @property
    def num_classes(self) -> int:
        head = self.head
        if isinstance(head, nn.Linear):
            return head.out_features
        num_labels = getattr(getattr(self.model, "config", None), "num_labels", None)
        if num_labels is None:
            raise ValueError(f"Cannot tell the number of classes from head {self.head_name!r}; use an nn.Linear.")
        return num_labels

    def logits(self, model_call: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """Call `model_call` (the model or its distributed wrapper) on pixels and return the logits tensor."""
        if _is_hf_model(self.model):
            return model_call(pixel_values=pixel_values).logits
        output = model_call(pixel_values)
        return output.logits if hasattr(output, "logits") else output

    @contextlib.contextmanager
    def head_input_replaced(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Within the block, the head is applied to `fn(features)` instead of the features."""
        with self._input_replaced(self.head_name, fn):
            yield

    @contextlib.contextmanager
    def mixing_at(self, point: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Within the block, the input of module `point` is replaced by `fn(input)` (once per forward)."""
        if point == INPUT_POINT:
            raise ValueError("The input point is mixed before the forward call, not with a hook.")
        with self._input_replaced(point, fn):
            yield

    @contextlib.contextmanager
    def _input_replaced(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        if name not in self._hooks:  # a point outside `mixing_points`: hook it now (not seen by a compiled model)
            module = self.model.get_submodule(name)
            hook = functools.partial(_replace_armed_input, self._armed, name)
            self._hooks[name] = module.register_forward_pre_hook(hook, with_kwargs=True)
        self._armed[name] = fn
        try:
            yield
        finally:
            self._armed.pop(name, None)


def _replace_armed_input(armed: dict, name: str, _module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook: replace the module's input by `fn(input)` if `fn` is armed for it; disarm it (a module called
    twice in one forward is replaced once)."""
    fn = armed.pop(name, None)
    if fn is None:
        return None
    return _replace_first_tensor(args, kwargs, fn)
