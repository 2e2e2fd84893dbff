"""The paper's image transforms, and the Hugging Face image processor that reproduces their evaluation transform.

A *family* names a recipe of the reference code; `image_size` scales it, so the same recipe serves the paper's size
and a Hugging Face model's own input size:

| family | training augmentation (size S) | evaluation | mean / std |
| --- | --- | --- | --- |
| `cifar` | RandomCrop(S, pad S/8), HFlip, Cutout(S/2) | resize to SxS | ImageNet |
| `miniimagenet` | RandomCrop(S, pad S/7), HFlip, Cutout(32/84 S) | resize to SxS | 0.5 |
| `imagenet` | RandomResizedCrop(S), HFlip | Resize(256/224 S), CenterCrop(S) | ImageNet |
| `digits` | RandomCrop(S, pad S/8) (no flip: digits are not mirror-symmetric) | resize to SxS | 0.5 |

At the paper's sizes this is exactly the reference: CIFAR-100 at 32 (pad 4, Cutout 16), mini-ImageNet at 84 (pad 12,
Cutout 32), Food-101 / Oxford-IIIT Pet / Caltech-256 at 224 (Resize 256, CenterCrop 224). Cutout runs on the [0, 1]
tensor before Normalize. Images of another size are first resized to SxS (bilinear) in the square families.

A model can bring its own evaluation crop: a timm checkpoint's `pretrained_cfg` gives the input size, mean, std,
interpolation and crop fraction, and the `imagenet` family then resizes with that interpolation and evaluates as timm
does (Resize(floor(S / crop_pct)), CenterCrop(S)).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T


__all__ = [
    "FAMILIES",
    "Cutout",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "SQUARE_FAMILIES",
    "SquareAugmentation",
    "TransformSpec",
    "as_rgb",
    "build_transforms",
    "image_processor_for",
    "spec_from_image_processor",
    "spec_from_timm_data_config",
    "split_at_to_tensor",
    "square_augmentation",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

FAMILIES = ("cifar", "miniimagenet", "imagenet", "digits")
SQUARE_FAMILIES = ("cifar", "miniimagenet", "digits")
"""Families whose views both start from the image resized to SxS (so a decoded SxS copy serves both)."""
_DEFAULT_NORMALIZATION = {
    "cifar": (IMAGENET_MEAN, IMAGENET_STD),
    "miniimagenet": (HALF, HALF),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "digits": (HALF, HALF),
}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
"""Resampling filters by their timm / torchvision names."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransformSpec:
    """Which recipe, at which size, with which normalization.

    Args:
        family: One of `FAMILIES`.
        image_size: Side S of the model input.
        mean, std: Normalization; defaults to the family's (see the module docstring).
        interpolation: Resampling of the `imagenet` family's resize and random resized crop, one of `INTERPOLATIONS`
            (the square families keep the reference's bilinear resize to SxS).
        crop_pct: Fraction of the resized image the `imagenet` family's evaluation keeps: Resize(floor(S / crop_pct)),
            CenterCrop(S), as timm. `None`: the reference's Resize(256/224 S) (rounded).
    """

    family: str
    image_size: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"
    crop_pct: float | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"Unknown transform family {self.family!r}; choose one of {', '.join(FAMILIES)}.")
        if self.image_size < 1:
            raise ValueError(f"`image_size` must be >= 1, got {self.image_size}.")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"`interpolation` {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}.")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ValueError(f"`crop_pct` must be in (0, 1], got {self.crop_pct}.")
        default_mean, default_std = _DEFAULT_NORMALIZATION[self.family]
        object.__setattr__(self, "mean", tuple(self.mean) if self.mean is not None else default_mean)
        object.__setattr__(self, "std", tuple(self.std) if self.std is not None else default_std)

    @property
    def eval_resize(self) -> int:
        """Shorter side before the centre crop, for the `imagenet` family (256 at 224)."""
        if self.crop_pct is None:
            return round(self.image_size * 256 / 224)
        return math.floor(self.image_size / self.crop_pct)

    @property
    def interpolation_mode(self) -> T.InterpolationMode:
        return T.InterpolationMode(self.interpolation)

    def describe(self) -> str:
        """One line for the run log: the recipe, size, resampling and evaluation crop, normalization."""
        text = f"{self.family} at {self.image_size}px"
        if self.family == "imagenet":
            crop = f"crop fraction {self.crop_pct:g}" if self.crop_pct is not None else "256/224"
            text += (f", {self.interpolation}, evaluation Resize({self.eval_resize}) + CenterCrop({self.image_size}) "
                     f"({crop})")
        return f"{text}, mean={list(self.mean)}, std={list(self.std)}"


class Cutout:
    """Zero `n_holes` squares of side `length` (clipped at the border) at uniformly random centres.

    Applies to a `[C, H, W]` tensor, after ToTensor/crop/flip and before Normalize, as in the reference. Draws from
    torch's global generator, like torchvision's random transforms (the Trainer seeds each worker).

    Args:
        length: Side of each square, in pixels.
        n_holes: Number of squares.
    """

    def __init__(self, length: int, n_holes: int = 1):
        if length < 1 or n_holes < 1:
            raise ValueError(f"Cutout needs length >= 1 and n_holes >= 1, got length={length}, n_holes={n_holes}.")
        self.length = length
        self.n_holes = n_holes

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        out = image.clone()
        for _ in range(self.n_holes):
            centre_y = int(torch.randint(height, ()).item())
            centre_x = int(torch.randint(width, ()).item())
            half = self.length // 2
            out[..., max(centre_y - half, 0) : centre_y + half, max(centre_x - half, 0) : centre_x + half] = 0.0
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(length={self.length}, n_holes={self.n_holes})"


_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_STRETCH_LOGGED: set[str] = set()


def as_rgb(image: Any) -> Image.Image:
    """A PIL image (or a numpy array of one) in RGB, with the pixels a user expects whatever its mode.

    8-bit modes keep Pillow's `convert("RGB")`, pixel for pixel (stored datasets and the reference depend on it); only
    the modes whose values do not fit in 8 bits, which Pillow clips at 255, are scaled here first to an 8-bit gray:

    | mode | RGB pixels |
    | --- | --- |
    | `RGB` | the image itself (no copy) |
    | `1`, `L`, `LA`, `P`, `PA`, `RGBA`, `RGBX`, `CMYK`, `YCbCr`, `LAB`, `HSV` | Pillow's `convert("RGB")` (below) |
    | `I;16`, `I;16L`, `I;16B`, `I;16N` | gray `v >> 8` (0..65535 -> 0..255) |
    | `I`, all values in 0..65535 | gray `v >> 8`, as 16-bit |
    | `I`, some value outside 0..65535 | gray: the image's own range stretched to 0..255 (rounded) |
    | `F`, finite values in [0, 1] | gray `round(v * 255)` |
    | `F`, finite values in [0, 255], some > 1 | gray `round(v)` |
    | `F`, finite values outside [0, 255] | gray: the image's own finite range stretched to 0..255 (rounded) |

    Pillow's conversion drops alpha (`LA`, `PA`, `RGBA`, a palette's transparency) rather than compositing it,
    looks a palette up, maps `1` to 0 / 255, converts `CMYK`, `YCbCr` and `HSV` by its formulas and `LAB` through
    LittleCMS to sRGB.

    16 to 8 bits keeps the high byte (`v >> 8`) rather than rounding `v * 255 / 65535`: it is how Pillow itself reads
    16-bit RGB and gray+alpha PNGs, so a 16-bit picture gives the same 8-bit pixels whether it was saved as gray or as
    RGB, every 8-bit level stands for exactly 256 16-bit ones, and it undoes the usual 8 -> 16 widening `v * 257`.

    `I` is the mode Pillow uses for 32-bit and signed 16-bit data, and older Pillows opened 16-bit PNGs as `I`: its
    values are read as 16-bit whenever they fit, so every image of such a dataset shares one scale (8-bit data kept
    in mode `I` therefore comes out dark: keep it in `L`). Values outside 0..65535 have no usual scale, and clipping
    them would lose the picture, so such an image is stretched linearly from its own minimum to 0 and its maximum to
    255 (a warning is logged once per mode); a constant one is black if negative, white if above the range.

    `F` follows the same rule with the two usual float scales, [0, 1] and 8-bit levels [0, 255] (an image on the
    8-bit scale whose values are all <= 1 reads as [0, 1]); NaN is black, -inf and +inf saturate to 0 and 255, and
    only finite values set the range. Halves round up.

    The image stores hold these pixels: a change to them bumps `store_folder.STORE_FORMAT_VERSION` (part of every
    store's name), so that no store made under the former rule is reused.

    Args:
        image: A PIL image of any mode, or a numpy array that `PIL.Image.fromarray` takes.

    Returns:
        The image in mode RGB, with the size of `image`.

    Raises:
        TypeError: `image` is neither a PIL image nor a numpy array.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"Expected a PIL image or a numpy array, got {type(image).__name__}.")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        # `>>` on the numpy view reads big-endian `I;16B` by value, so every variant needs only this.
        gray = (np.asarray(image) >> 8).astype(np.uint8)
    elif mode == "I":
        gray = _integers_to_8_bits(np.asarray(image))
    elif mode == "F":
        gray = _floats_to_8_bits(np.asarray(image, dtype=np.float64))
    else:
        return image.convert("RGB")
    return Image.fromarray(gray).convert("RGB")


def _integers_to_8_bits(values: np.ndarray) -> np.ndarray:
    """Mode `I` values as 8-bit gray (see `as_rgb`)."""
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high <= 65535:
        return (values >> 8).astype(np.uint8)
    _log_stretch("I", low, high, "0..65535")
    if high == low:
        return np.full(values.shape, 0 if low < 0 else 255, dtype=np.uint8)
    return _round_to_8_bits((values.astype(np.float64) - low) * 255 / (high - low))


def _floats_to_8_bits(values: np.ndarray) -> np.ndarray:
    """Mode `F` values (as float64) as 8-bit gray (see `as_rgb`)."""
    finite = np.isfinite(values)
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    if low >= 0 and high <= 1:
        scaled = values * 255
    elif low >= 0 and high <= 255:
        scaled = values
    else:
        _log_stretch("F", low, high, "[0, 1] or [0, 255]")
        if high > low:
            scaled = (values - low) * 255 / (high - low)
        else:  # constant: saturate, keeping the infinities' own ends
            scaled = np.where(finite, 0.0 if low < 0 else 255.0, values)
    return _round_to_8_bits(np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0))


def _round_to_8_bits(scaled: np.ndarray) -> np.ndarray:
    """Nearest 8-bit level of each value, halves up; values beyond 0..255 saturate."""
    return np.floor(np.clip(scaled, 0.0, 255.0) + 0.5).astype(np.uint8)


def _log_stretch(mode: str, low: float, high: float, usual: str) -> None:
    # Once per mode and process: a dataset of such images would otherwise log every row.
    if mode in _STRETCH_LOGGED:
        return
    _STRETCH_LOGGED.add(mode)
    logger.warning("A mode-%s image holds values from %g to %g, beyond the usual %s: as_rgb maps each such image's "
                   "own range to 0..255 (see its docstring; logged once).", mode, low, high, usual)


class ResizeIfNeeded:
    """Resize a PIL image to `size` x `size` unless it already has that size (bilinear, like `T.Resize`)."""

    def __init__(self, size: int):
        self.size = size
        self._resize = T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR)

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.size == (self.size, self.size) else self._resize(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


@dataclass(frozen=True)
class SquareAugmentation:
    """The random steps of a square family's training recipe at one size (after resizing to SxS and ToTensor).

    Args:
        padding: RandomCrop(S) after zero-padding by this many pixels on every side.
        flip: Whether a horizontal flip follows (with probability 0.5).
        cutout: Side of the Cutout square (one hole, before Normalize); 0 for none.
    """

    padding: int
    flip: bool
    cutout: int


def square_augmentation(spec: TransformSpec) -> SquareAugmentation:
    """The crop padding, flip and Cutout of a square family at `spec.image_size` (see the module docstring).

    `build_transforms` builds the per-image pipeline from it and `synermix_hf.data.batch_transforms` the batched one, so
    the two paths cannot drift apart.
    """
    size = spec.image_size
    if spec.family == "cifar":
        return SquareAugmentation(padding=max(1, round(size / 8)), flip=True, cutout=max(1, size // 2))
    if spec.family == "miniimagenet":
        return SquareAugmentation(padding=max(1, round(size / 7)), flip=True, cutout=max(1, round(size * 32 / 84)))
    if spec.family == "digits":
        return SquareAugmentation(padding=max(1, round(size / 8)), flip=False, cutout=0)
    raise ValueError(f"square_augmentation needs one of the square families {SQUARE_FAMILIES}, got {spec.family!r}.")


def build_transforms(spec: TransformSpec) -> tuple[T.Compose, T.Compose]:
    """`(train_transform, eval_transform)`: PIL image (RGB) -> normalized `[3, S, S]` tensor."""
    size = spec.image_size
    normalize = T.Normalize(spec.mean, spec.std)
    if spec.family == "imagenet":
        mode = spec.interpolation_mode
        train = T.Compose([T.RandomResizedCrop(size, interpolation=mode), T.RandomHorizontalFlip(), T.ToTensor(),
                           normalize])
        evaluation = T.Compose([T.Resize(spec.eval_resize, interpolation=mode), T.CenterCrop(size), T.ToTensor(),
                                normalize])
        return train, evaluation

    evaluation = T.Compose([ResizeIfNeeded(size), T.ToTensor(), normalize])
    recipe = square_augmentation(spec)
    steps: list[Any] = [ResizeIfNeeded(size), T.ToTensor(), T.RandomCrop(size, padding=recipe.padding)]
    if recipe.flip:
        steps.append(T.RandomHorizontalFlip())
    if recipe.cutout:
        steps.append(Cutout(recipe.cutout))
    return T.Compose([*steps, normalize]), evaluation


def split_at_to_tensor(transform: T.Compose) -> tuple[list[Any], list[Any]]:
    """The steps of `transform` before its `ToTensor` (on PIL images) and from `ToTensor` on (on tensors)."""
    steps = list(transform.transforms)
    cut = next((position for position, step in enumerate(steps) if isinstance(step, T.ToTensor)), len(steps))
    return steps[:cut], steps[cut:]


def image_processor_for(spec: TransformSpec) -> Any:
    """A `BitImageProcessor` doing the evaluation transform of `spec`, to save next to a torchvision model.

    `pipeline("image-classification")` and `AutoImageProcessor` then prepare images as the evaluation did:
    resize to SxS (square families), or resize the shorter side to `spec.eval_resize` and centre-crop S (`imagenet`).
    Grayscale and RGBA images are converted to RGB first.
    """
    from transformers import BitImageProcessor
    from transformers.image_utils import PILImageResampling

    size = spec.image_size
    # The square families resize bilinearly whatever the spec's interpolation (see `TransformSpec`).
    interpolation = spec.interpolation if spec.family == "imagenet" else "bilinear"
    common = {
        "resample": PILImageResampling[interpolation.upper()],
        "image_mean": list(spec.mean),
        "image_std": list(spec.std),
        "do_convert_rgb": True,
        "crop_size": {"height": size, "width": size},
    }
    if spec.family == "imagenet":
        return BitImageProcessor(size={"shortest_edge": spec.eval_resize}, do_center_crop=True, **common)
    return BitImageProcessor(size={"height": size, "width": size}, do_center_crop=False, **common)


def _size_field(size: Any, key: str) -> int | None:
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def spec_from_timm_data_config(data_config: dict[str, Any], family: str) -> TransformSpec:
    """The `family` recipe with a timm model's input size, mean, std, interpolation and crop fraction.

    Args:
        data_config: What `timm.data.resolve_data_config` makes of a checkpoint's `pretrained_cfg` (the
            `data_config` of transformers' `TimmWrapperImageProcessor`): `input_size` (C, H, W), `mean`, `std`,
            `interpolation`, `crop_pct`, `crop_mode`.
        family: The recipe (one of `FAMILIES`).

    Raises:
        ValueError: the input is not square (the recipes crop squares), naming `image_size`.
    """
    _, height, width = data_config["input_size"]
    if height != width:
        raise ValueError(f"The model's input size is {height}x{width} (its pretrained_cfg), and the recipes crop "
                         "squares; set `image_size`.")
    crop_mode = data_config.get("crop_mode") or "center"
    if crop_mode != "center" and family == "imagenet":
        logger.warning("The model's pretrained_cfg asks for crop_mode %r; the recipe resizes the shorter side and "
                       "centre-crops (crop_mode 'center').", crop_mode)
    return TransformSpec(
        family=family,
        image_size=int(height),
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        interpolation=data_config.get("interpolation") or "bicubic",
        crop_pct=data_config.get("crop_pct") or 0.875,
    )


def spec_from_image_processor(processor: Any, family: str) -> TransformSpec:
    """The `family` recipe at a Hugging Face image processor's input size, with its mean and std.

    The size is the processor's crop size when it centre-crops, else its `height` or `shortest_edge`. A timm
    checkpoint's processor (`TimmWrapperImageProcessor`) also gives the interpolation and crop fraction of the model's
    `pretrained_cfg`, resolved by `timm.data.resolve_data_config` (see `spec_from_timm_data_config`).
    """
    data_config = getattr(processor, "data_config", None)
    if isinstance(data_config, dict) and data_config.get("input_size") is not None:
        return spec_from_timm_data_config(data_config, family)
    size = getattr(processor, "size", None)
    crop = getattr(processor, "crop_size", None)
    image_size = None
    if getattr(processor, "do_center_crop", False):
        image_size = _size_field(crop, "height")
    image_size = image_size or _size_field(size, "height") or _size_field(size, "shortest_edge")
    if image_size is None:
        raise ValueError(
            f"Cannot tell the input size of {type(processor).__name__} (size={size!r}); set `image_size`."
        )
    mean = getattr(processor, "image_mean", None)
    std = getattr(processor, "image_std", None)
    return TransformSpec(
        family=family,
        image_size=image_size,
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
    )
