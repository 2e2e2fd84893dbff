"""The two views of a whole batch of decoded uint8 images, made at once on the training device.

The batched twin of `synermix_hf.data.transforms.build_transforms` for the square families (`cifar`, `miniimagenet`,
`digits`), whose views both start from the image resized to SxS. Given that SxS uint8 batch (see
`synermix_hf.data.image_store`, `square=True`; the loader serves it HWC, `[B, S, S, 3]`, as every image store does):

* original view: ToTensor (`x / 255`) and Normalize, as the evaluation transform;
* augmented view: zero-pad and crop at a per-example offset, mirror per example, ToTensor, Cutout at a per-example
  centre, Normalize, as the training transform.

For given parameters every step equals torchvision's functional op on each image bit for bit (padding and cropping
uint8 before ToTensor is exact: they move pixels and pad with 0, which ToTensor maps to 0.0). The parameters are
drawn with the same distributions as the per-image path (`RandomCrop.get_params`, `RandomHorizontalFlip`, `Cutout`),
but from per-example 64-bit seeds rather than torch's generator, so that the loader draws them without touching any
global random state (`sample_square_params`). Nothing here knows about `Trainer`.

For the RandomResizedCrop recipe the loader makes the views with torchvision itself (`StoredImageDataset`); only
their `ToTensor` and `Normalize` are batched here (`NormalizedViews`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from .transforms import SQUARE_FAMILIES, Cutout, SquareAugmentation, TransformSpec, square_augmentation

__all__ = [
    "PARAM_NAMES",
    "BatchViews",
    "NormalizedViews",
    "crop_flip",
    "cutout",
    "normalize",
    "sample_square_params",
    "to_float",
    "uniform_digits",
]


PARAM_NAMES = ("top", "left", "flip", "cutout_y", "cutout_x")
"""Columns of the packed parameter tensor a loader batch carries (`BatchViews.sample`)."""


def uniform_digits(values: np.ndarray, radices: Sequence[int]) -> list[np.ndarray]:
    """Split uniform 64-bit integers into independent uniform integers, `digit_k` in `[0, radices[k])`.

    The digits of `values` in the mixed radix `radices` (least significant first): `values % r0`, then
    `(values // r0) % r1`, ... For `values` uniform on `[0, 2**64)` each digit is uniform and the digits are
    independent, up to a relative bias of `prod(radices) / 2**64` (below 2**-32 here).
    """
    if float(np.prod([float(r) for r in radices])) > 2.0**32:
        raise ValueError(f"radices {list(radices)} need more than 32 bits of one seed; split the draws over two seeds.")
    rest = np.asarray(values, dtype=np.uint64)
    digits = []
    for radix in radices:
        if radix < 1:
            raise ValueError(f"Every radix must be >= 1, got {list(radices)}.")
        radix = np.uint64(radix)
        digits.append((rest % radix).astype(np.int64))
        rest = rest // radix
    return digits


def sample_square_params(seeds: np.ndarray, image_size: int, recipe: SquareAugmentation) -> dict[str, torch.Tensor]:
    """The per-example parameters of `recipe` at `image_size`, from one uniform 64-bit seed per example.

    The distributions are those of the per-image path: crop offsets uniform on `[0, 2 * padding]` (torchvision's
    `RandomCrop.get_params` on the padded image), a flip with probability 1/2, Cutout centres uniform on
    `[0, image_size)` in each direction (`Cutout`), all independent.

    Returns:
        int64 tensors of shape `[B]`: `top`, `left`, `flip` (0 or 1) and, with Cutout, `cutout_y`, `cutout_x`.
    """
    span = 2 * recipe.padding + 1
    radices = [span, span, 2 if recipe.flip else 1]
    if recipe.cutout:
        radices += [image_size, image_size]
    digits = uniform_digits(seeds, radices)
    return {name: torch.from_numpy(digit) for name, digit in zip(PARAM_NAMES, digits)}


def crop_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int):
    """Zero-pad every image by `padding`, crop each at its own `(top, left)` and mirror those with `flip`.

    Image `b` of the result equals `TF.hflip(TF.crop(TF.pad(images[b], padding), top[b], left[b], H, W))`, without
    the `hflip` where `flip[b]` is 0. One `gather` over the flattened padded images does crop and flip at once: on a
    CPU it is faster than advanced indexing with four index tensors, and faster on float32 than uint8.

    Args:
        images: `[B, C, H, W]`, any dtype.
        top, left: Offsets in the padded image, in `[0, 2 * padding]`, shape `[B]`.
        flip: 1 to mirror horizontally, shape `[B]`.
        padding: Zero padding on every side.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}.")
    batch, channels, height, width = images.shape
    padded = TF.pad(images, [padding]) if padding else images
    device = images.device
    rows = top.to(device)[:, None] + torch.arange(height, device=device)  # [B, H]
    columns = torch.arange(width, device=device)
    columns = torch.where(flip.to(device)[:, None].bool(), columns.flip(0), columns) + left.to(device)[:, None]
    source = rows[:, :, None] * (width + 2 * padding) + columns[:, None, :]  # [B, H, W] into the padded plane
    source = source.reshape(batch, 1, height * width).expand(batch, channels, height * width)
    return padded.reshape(batch, channels, -1).gather(2, source).reshape(batch, channels, height, width)


def cutout(images: torch.Tensor, centre_y: torch.Tensor, centre_x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero one square per image, rows `[cy - length // 2, cy + length // 2)` and the same for columns, clipped.

    Image `b` of the result equals `synermix_hf.data.Cutout(length)` applied to `images[b]` when its generator draws
    `centre_y[b]`, `centre_x[b]` (an odd `length` zeroes `length - 1` pixels a side, as there).
    """
    half = length // 2
    height, width = images.shape[-2:]
    device = images.device
    centre_y, centre_x = centre_y.to(device)[:, None], centre_x.to(device)[:, None]
    rows = torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    in_rows = (rows >= centre_y - half) & (rows < centre_y + half)  # [B, H]
    in_columns = (columns >= centre_x - half) & (columns < centre_x + half)  # [B, W]
    hole = in_rows[:, None, :, None] & in_columns[:, None, None, :]
    return images.masked_fill(hole, 0.0)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1], computed as torchvision's `ToTensor` does (`x.float().div(255)`, bit for bit).

    The result is contiguous whatever the layout of `images` (a permuted HWC batch is made NCHW in the same pass)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}.")
    # One copy converts and lays out (a permuted batch's own `.contiguous()` would be a second pass over it).
    return torch.empty(images.shape, dtype=torch.float32, device=images.device).copy_(images).div_(255)


@functools.lru_cache(maxsize=64)
def _channel_constants(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Cached for every later call: one made under `torch.inference_mode` would be an inference tensor, which autograd
    # refuses to save for the backward of a later `normalize` of images that require grad.
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device).view(-1, 1, 1)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
              in_place: bool = False) -> torch.Tensor:
    """torchvision's `Normalize` over a batch: `(x - mean) / std` per channel, the same two ops, bit for bit.

    The constants are made once per device (`TF.normalize` copies them from the host at every call, and a host to
    device copy of pageable memory waits for the device's queue to drain).

    Args:
        images: Float images `[..., C, H, W]`.
        mean: The mean of each channel.
        std: The standard deviation of each channel.
        in_place: Overwrite `images` (the same ops, the same bits): for a batch slot being filled image by image.
    """
    mean_ = _channel_constants(tuple(float(m) for m in mean), images.device, images.dtype)
    std_ = _channel_constants(tuple(float(s) for s in std), images.device, images.dtype)
    return (images.sub_(mean_) if in_place else images.sub(mean_)).div_(std_)


@dataclass(frozen=True)
class BatchViews:
    """Turn a loader batch of uint8 images into the views the SynerMix loss reads, on the batch's device.

    A dataset built for the fast path puts this object into each batch next to `images` (uint8 `[B, 3, S, S]`),
    `labels` and, for training, the augmentation parameters (`augment`, see `sample_square_params`). The trainer
    calls it after moving the batch to the device.

    Args:
        image_size: S.
        recipe: The random steps of the family (`square_augmentation`).
        mean, std: Normalization.
        original: Also make the original view (`original_pixel_values`; needed when beta > 0).
    """

    image_size: int
    recipe: SquareAugmentation
    mean: tuple[float, ...]
    std: tuple[float, ...]
    original: bool = True

    @classmethod
    def from_spec(cls, spec: TransformSpec, original: bool = True) -> BatchViews:
        if spec.family not in SQUARE_FAMILIES:
            raise ValueError(
                f"Batched views exist for the square families {SQUARE_FAMILIES}; family {spec.family!r} resizes and "
                "crops each image differently, use the per-image transforms."
            )
        return cls(spec.image_size, square_augmentation(spec), tuple(spec.mean), tuple(spec.std), original)

    def steps(self) -> list[Any]:
        """The torchvision steps these views make, after the store's resize to S x S: the training transform they
        equal, step for step (`synermix_hf.data.pipeline.recipe_problem` compares it with the recipe's)."""
        steps: list[Any] = [T.ToTensor(), T.RandomCrop(self.image_size, padding=self.recipe.padding)]
        if self.recipe.flip:
            steps.append(T.RandomHorizontalFlip())
        if self.recipe.cutout:
            steps.append(Cutout(self.recipe.cutout))
        return steps + [T.Normalize(self.mean, self.std)]

    def sample(self, seeds: np.ndarray) -> torch.Tensor:
        """Augmentation parameters for one batch from one uniform 64-bit seed per example, packed as an int32 tensor
        `[B, 5]` with the columns `PARAM_NAMES` (zero where the recipe has no such step): one host to device copy
        per batch instead of one per parameter."""
        params = sample_square_params(seeds, self.image_size, self.recipe)
        zeros = torch.zeros(len(seeds), dtype=torch.int64)
        return torch.stack([params.get(name, zeros) for name in PARAM_NAMES], dim=1).to(torch.int32)

    def _augmented(self, pixels: torch.Tensor, params: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """The training view of float images `[B, C, S, S]` in [0, 1]: pad + crop, flip, Cutout, Normalize.

        ToTensor comes first here (the per-image recipe crops after it too): padding adds zeros either way, and the
        crop gathers float32 faster than uint8."""
        if torch.is_tensor(params):  # packed by `sample`
            params = dict(zip(PARAM_NAMES, params.long().unbind(1)))
        pixels = crop_flip(pixels, params["top"], params["left"], params["flip"], self.recipe.padding)
        if self.recipe.cutout:
            pixels = cutout(pixels, params["cutout_y"], params["cutout_x"], self.recipe.cutout)
        return normalize(pixels, self.mean, self.std)

    def original_view(self, images: torch.Tensor) -> torch.Tensor:
        """The evaluation view of uint8 images: ToTensor, Normalize."""
        return normalize(to_float(images), self.mean, self.std)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """`{"pixel_values", ["original_pixel_values"], "labels", ...}` from `{"images", ["augment"], "labels"}`.

        `images` is uint8 HWC `[B, S, S, 3]` (a store's batch, see `StoredImageDataset`); `augment` the packed tensor
        of `sample` or a mapping of `sample_square_params`'s parameters.

        With `augment`, `pixel_values` is the augmented view (and `original_pixel_values` the original one when
        `original` is set); without it (evaluation), `pixel_values` is the original view.
        """
        images = batch["images"]
        if images.dim() != 4 or tuple(images.shape[1:]) != (self.image_size, self.image_size, 3):
            raise ValueError(f"Expected uint8 images [B, {self.image_size}, {self.image_size}, 3], got "
                             f"{tuple(images.shape)}.")
        images = images.permute(0, 3, 1, 2)  # to_float makes it NCHW in memory, as the per-image path's batches
        out = {k: v for k, v in batch.items() if k not in ("images", "augment")}
        params = batch.get("augment")
        if params is None:
            out["pixel_values"] = self.original_view(images)
            return out
        pixels = to_float(images)
        out["pixel_values"] = self._augmented(pixels, params)
        if self.original:
            out["original_pixel_values"] = normalize(pixels, self.mean, self.std)
        return out


@dataclass(frozen=True)
class NormalizedViews:
    """`ToTensor` and `Normalize` of views made in the loader (the RandomResizedCrop recipe's), on the batch's device.

    The loader makes each view with the recipe's own torchvision steps up to `ToTensor` (`StoredImageDataset`); what
    is left, the same for every image, is done here on the whole batch, bit for bit as torchvision does it per image
    (`to_float`, `normalize`): a quarter of the bytes to batch and to copy to the device.

    Args:
        mean, std: Normalization.
        original: Training batches also carry the original view (`original_images`; needed when beta > 0).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    original: bool = True

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """`{"pixel_values", ["original_pixel_values"], "labels", ...}` from `{"images", ["original_images"], "labels"}`
        (uint8 HWC `[B, S, S, 3]`)."""
        out = {k: v for k, v in batch.items() if k not in ("images", "original_images")}
        for source, target in (("images", "pixel_values"), ("original_images", "original_pixel_values")):
            if source in batch:
                images = batch[source].permute(0, 3, 1, 2)  # to_float makes it NCHW in memory, as the per-image batches
                out[target] = normalize(to_float(images), self.mean, self.std, in_place=True)
        return out
