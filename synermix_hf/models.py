"""The paper's torchvision classifiers, wrapped as Hugging Face models.

`build_torchvision_classifier` builds the six architectures of the reference code (`--model_name`): torchvision's
resnet18/34/50/101, mobilenet_v3_large (`mobilenet`) and swin_t (`tiny-swin`), with the last Linear replaced for the
number of classes and, for ResNets on small images (32 px CIFAR, 84 px mini-ImageNet), the CIFAR stem: a 3x3 stride-1
first convolution and no max-pool.

`TorchvisionForImageClassification` wraps such a network in a `PreTrainedModel` so that the Trainer checkpoints it,
`save_pretrained` writes `model.safetensors` + `config.json`, and `AutoModelForImageClassification.from_pretrained`
and `pipeline("image-classification")` load it back. The torchvision network stays a submodule (`network`), so
`synermix_hf.adapters` finds its head and Manifold MixUp points exactly as for a bare torchvision model.

Importing this module registers the config and the model with the Auto classes. Saved directories also carry this
file and an `auto_map`, so they load without `import synermix_hf` when `trust_remote_code=True` is given. This file
therefore imports nothing from the package (only torch, torchvision and transformers).
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import ImageClassifierOutput

__all__ = [
    "MODEL_NAMES",
    "SinglePixelConv2d",
    "TorchvisionClassifierConfig",
    "TorchvisionForImageClassification",
    "build_torchvision_classifier",
    "normalize_model_name",
    "uses_cifar_stem",
]

# --model_name -> torchvision builder, as named in the reference code.
_BUILDERS = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "mobilenet": "mobilenet_v3_large",
    "tiny-swin": "swin_t",
}
MODEL_NAMES = tuple(_BUILDERS)
"""The accepted `--model_name` values."""

# Other spellings, including the authors' README (`-mn resnet-18`) and torchvision's own names.
_ALIASES = {
    **{f"resnet-{depth}": f"resnet{depth}" for depth in (18, 34, 50, 101)},
    **{f"resnet_{depth}": f"resnet{depth}" for depth in (18, 34, 50, 101)},
    "mobilenet_v3_large": "mobilenet",
    "mobilenet-v3-large": "mobilenet",
    "mobilenetv3": "mobilenet",
    "swin_t": "tiny-swin",
    "swin-t": "tiny-swin",
    "tiny_swin": "tiny-swin",
    "tinyswin": "tiny-swin",
}

# The weights `pretrained=True` gave in the torchvision releases the reference code was written for.
_PRETRAINED_WEIGHTS = "IMAGENET1K_V1"

# A ResNet gets the CIFAR stem for images up to this size (the paper: 32 px CIFAR-100, 84 px mini-ImageNet).
CIFAR_STEM_MAX_SIZE = 84


def normalize_model_name(name: str) -> str:
    """Map a `model_name` spelling (case-insensitive, aliases such as `resnet-18` or `swin_t`) to its canonical name.

    Raises:
        ValueError: for an unknown name; the message lists the valid names.
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _BUILDERS:
        close = difflib.get_close_matches(key, MODEL_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown `model_name` {name!r}. Valid names: {', '.join(MODEL_NAMES)}.{hint} For a Hugging Face model, "
            "use `model_name_or_path` instead."
        )
    return key


def uses_cifar_stem(model_name: str, image_size: int) -> bool:
    """Whether a ResNet gets the CIFAR stem at this input size (ResNets only, images of at most 84 px)."""
    return normalize_model_name(model_name).startswith("resnet") and image_size <= CIFAR_STEM_MAX_SIZE


def _head_of(network: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute) of the final classification Linear."""
    if name.startswith("resnet"):
        return network, "fc"
    if name == "tiny-swin":
        return network, "head"
    return network.classifier, "3"


class SinglePixelConv2d(nn.Conv2d):
    """`nn.Conv2d` that computes a 1x1 output map as one matrix product with the kernel taps the input covers.

    Same parameters and the same function (up to the order of summation): a 3x3 convolution with padding 1 on a 1x1
    map only ever multiplies the centre tap, and a stride-2 one on a 2x2 map the taps [1:3, 1:3]. oneDNN computes the
    weight gradient of such a convolution with a generic GEMM loop, on AVX2 CPUs many times slower than the matrix
    product: the CIFAR stem leaves ResNet's layer4 at 1x1 on 8 px inputs (the built-in digits), where that loop took
    most of a training step (measured in BENCHMARKS.md, section 6). Any other input takes `nn.Conv2d.forward`.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        height, width = input.shape[-2:]
        (kernel_h, kernel_w), (stride_h, stride_w) = self.kernel_size, self.stride
        padding = self.padding
        if (
            isinstance(padding, tuple)
            and self.padding_mode == "zeros"
            and self.groups == 1
            and self.dilation == (1, 1)
            and height + padding[0] <= kernel_h  # every input row meets a kernel row of the single output pixel
            and width + padding[1] <= kernel_w
            and height + 2 * padding[0] - kernel_h < stride_h  # and there is a single output pixel
            and width + 2 * padding[1] - kernel_w < stride_w
        ):
            taps = self.weight[:, :, padding[0] : padding[0] + height, padding[1] : padding[1] + width]
            output = F.linear(input.flatten(1), taps.reshape(self.out_channels, -1), self.bias)
            return output[:, :, None, None]
        return super().forward(input)


def build_torchvision_classifier(
    model_name: str,
    num_classes: int,
    image_size: int = 224,
    cifar_stem: bool | None = None,
    pretrained: bool = False,
) -> nn.Module:
    """Build one of the paper's torchvision classifiers.

    Args:
        model_name: One of `MODEL_NAMES` (aliases accepted).
        num_classes: Outputs of the new final Linear.
        image_size: Input size; decides the CIFAR stem when `cifar_stem` is None.
        cifar_stem: Force the ResNet CIFAR stem on or off (ignored for other architectures).
        pretrained: Start from torchvision's ImageNet weights (downloaded on first use). The new stem and the new
            final Linear are freshly initialised with PyTorch's default initialisation, as in the reference code.

    Raises:
        ValueError: unknown `model_name`.
        OSError: the pretrained weights could not be downloaded; the message says where from and why.
    """
    name = normalize_model_name(model_name)
    builder = getattr(torchvision.models, _BUILDERS[name])
    network = builder(weights=None)
    if pretrained:
        weights = torchvision.models.get_model_weights(builder)[_PRETRAINED_WEIGHTS]
        try:
            state_dict = weights.get_state_dict(progress=False, check_hash=False)
        except Exception as error:  # network errors come as URLError, OSError, HTTPError, RuntimeError...
            raise OSError(
                f"Could not download the ImageNet weights of {name} ({_BUILDERS[name]}, {_PRETRAINED_WEIGHTS}) from "
                f"{weights.url}: {error}. Check the network connection, put the file in torch's cache "
                f"({torch.hub.get_dir()}/checkpoints), or train from scratch without `pretrained`."
            ) from error
        network.load_state_dict(state_dict)
    if cifar_stem is None:
        cifar_stem = uses_cifar_stem(name, image_size)
    if cifar_stem and name.startswith("resnet"):
        # Assigned after construction, as the reference does, so it keeps PyTorch's default Conv2d initialisation
        # (uniform, std about 0.11 here), not the kaiming-normal one torchvision gives its own convolutions.
        network.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        network.maxpool = nn.Identity()
    parent, attribute = _head_of(network, name)
    old_head = getattr(parent, attribute)
    setattr(parent, attribute, nn.Linear(old_head.in_features, num_classes))
    for module in network.modules():
        if type(module) is nn.Conv2d:  # same parameters and state dict; faster on 1x1 maps (see SinglePixelConv2d)
            module.__class__ = SinglePixelConv2d
    return network


class TorchvisionClassifierConfig(PreTrainedConfig):
    """Configuration of a `TorchvisionForImageClassification`.

    Args:
        architecture: One of `MODEL_NAMES`.
        image_size: Input size the model was trained at.
        cifar_stem: Whether a ResNet uses the 3x3 stride-1 stem without max-pool.
        num_channels: Input channels (3).
        kwargs: `PreTrainedConfig` arguments, e.g. `id2label` / `label2id` / `num_labels`.
    """

    model_type = "synermix_torchvision"

    def __init__(
        self,
        architecture: str = "resnet18",
        image_size: int = 224,
        cifar_stem: bool = False,
        num_channels: int = 3,
        **kwargs: Any,
    ):
        self.architecture = normalize_model_name(architecture)
        self.image_size = int(image_size)
        self.cifar_stem = bool(cifar_stem)
        self.num_channels = num_channels
        super().__init__(**kwargs)


class TorchvisionForImageClassification(PreTrainedModel):
    """A torchvision classifier as a Hugging Face image classification model.

    `forward(pixel_values, labels=None)` returns an `ImageClassifierOutput` (logits, and the cross-entropy loss when
    labels are given). The network is `self.network`, an unmodified torchvision module except for its stem and head.
    """

    config_class = TorchvisionClassifierConfig
    base_model_prefix = "network"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False

    def __init__(self, config: TorchvisionClassifierConfig, network: nn.Module | None = None):
        super().__init__(config)
        self.network = network if network is not None else build_torchvision_classifier(
            config.architecture, config.num_labels, config.image_size, cifar_stem=config.cifar_stem
        )
        self.post_init()

    @classmethod
    def from_architecture(
        cls,
        model_name: str,
        id2label: dict[int, str],
        image_size: int = 224,
        pretrained: bool = False,
        cifar_stem: bool | None = None,
    ) -> TorchvisionForImageClassification:
        """Build a fresh (or ImageNet-initialised, with `pretrained`) model for the classes in `id2label`."""
        name = normalize_model_name(model_name)
        if cifar_stem is None:
            cifar_stem = uses_cifar_stem(name, image_size)
        config = TorchvisionClassifierConfig(
            architecture=name,
            image_size=image_size,
            cifar_stem=cifar_stem,
            id2label={int(k): str(v) for k, v in id2label.items()},
            label2id={str(v): int(k) for k, v in id2label.items()},
        )
        network = build_torchvision_classifier(name, len(id2label), image_size, cifar_stem, pretrained)
        return cls(config, network=network)

    def _init_weights(self, module: nn.Module) -> None:
        # torchvision initialises its modules in their constructors (Kaiming for convolutions); keep that.
        return None

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple:
        logits = self.network(pixel_values)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        if return_dict is False:
            return (loss, logits) if loss is not None else (logits,)
        return ImageClassifierOutput(loss=loss, logits=logits)


TorchvisionClassifierConfig.register_for_auto_class()
TorchvisionForImageClassification.register_for_auto_class("AutoModelForImageClassification")
AutoConfig.register(TorchvisionClassifierConfig.model_type, TorchvisionClassifierConfig, exist_ok=True)
AutoModelForImageClassification.register(TorchvisionClassifierConfig, TorchvisionForImageClassification, exist_ok=True)
