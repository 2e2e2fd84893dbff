"""The two views of a batch of stored images for the `imagenet` family (RandomResizedCrop), made at once on the device.

The batched twin of the per-image recipe `RandomResizedCrop(S) + RandomHorizontalFlip` (augmented view) and
`Resize(R) + CenterCrop(S)` (original view, R = 256 at S = 224), for images kept in a store at a bounded resolution
(`synermix_hf.data.image_store`: the shorter side resized to R, or the original images):

* crop boxes are drawn exactly as the per-image path draws them: `RandomResizedCrop.get_params` on the image's
  *original* size, then the flip, from torch's generator seeded with the example's seed (`sample_crops`), so the
  region of the image a crop covers does not depend on how the image is stored; the box is then mapped into the
  stored image's pixels;
* on an accelerator the augmented views of the whole batch are cut and resized at once (`resized_crops`) with
  `torchvision.ops.roi_align`, whose adaptive sampling (`ceil(box / output)` samples per output pixel and axis,
  averaged) acts as the antialiasing filter when a crop shrinks, then flipped and normalised, with no host sync;
* on the CPU both views are made one image at a time with torch's antialiased uint8 resize (the kernel torchvision's
  v2 transforms use, five times faster there than `roi_align`), every step on one image in cache, which halves the
  time of the batched float passes; the crop's edges are then rounded to whole stored pixels;
* the original view is the centre crop: when the store holds the images resized to R, exactly the pixels the
  per-image path crops; otherwise the same region resized from the stored image.

Nothing here knows about `Trainer`; `BatchViews`' interface (`__call__(batch) -> pixel_values, ...`) is kept, so the
trainer treats both stores alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms as T

from .batch_transforms import normalize, to_float
from .image_store import stored_size
from .transforms import TransformSpec

__all__ = [
    "CROP_METHODS",
    "CropViews",
    "centre_crop_boxes",
    "centre_crops",
    "map_boxes",
    "resized_crops",
    "sample_crops",
]

CROP_METHODS = ("auto", "roi_align", "interpolate")
"""How `resized_crops` resamples: `roi_align` (one batched op, any device), `interpolate` (torch's antialiased
resize, one image at a time) or `auto` (`interpolate` on the CPU, `roi_align` elsewhere)."""

_SHAPE = torch.zeros(())  # expanded to an image's shape for `get_params`, which reads nothing else


def sample_crops(
    seeds: np.ndarray, original_sizes: np.ndarray, scale: Sequence[float], ratio: Sequence[float], flip: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Each example's RandomResizedCrop box and flip, drawn as the per-image path draws them.

    For example `i`, torch's CPU generator is seeded with `seeds[i] >> 1` (as `SeededAugmentation` seeds it before
    the per-image transforms run), then `T.RandomResizedCrop.get_params` draws the box on an image of
    `original_sizes[i]` and `T.RandomHorizontalFlip` its coin (`torch.rand(1) < 0.5`). The global generator is left
    as it was.

    Args:
        seeds: uint64 `[B]`, one per example appearance (`synermix_hf.seeding.example_seeds`).
        original_sizes: int `[B, 2]`, `(height, width)` of each decoded image.
        scale, ratio: RandomResizedCrop's area fraction and aspect ratio ranges.
        flip: Whether the recipe flips (no coin is drawn otherwise).

    Returns:
        `(boxes, flips)`: int64 `[B, 4]` `(top, left, height, width)` in original pixels, bool `[B]`.
    """
    seeds = np.asarray(seeds, dtype=np.uint64).reshape(-1)
    original_sizes = np.asarray(original_sizes, dtype=np.int64).reshape(-1, 2)
    if len(seeds) != len(original_sizes):
        raise ValueError(f"{len(seeds)} seeds but {len(original_sizes)} image sizes.")
    boxes = np.empty((len(seeds), 4), dtype=np.int64)
    flips = np.zeros(len(seeds), dtype=bool)
    scale, ratio = list(scale), list(ratio)
    with torch.random.fork_rng(devices=[]):
        for i, (seed, (height, width)) in enumerate(zip(seeds, original_sizes)):
            torch.default_generator.manual_seed(int(seed >> np.uint64(1)))
            boxes[i] = T.RandomResizedCrop.get_params(_SHAPE.expand(3, int(height), int(width)), scale, ratio)
            if flip:
                flips[i] = bool(torch.rand(1) < 0.5)
    return boxes, flips


def map_boxes(boxes: np.ndarray, from_sizes: np.ndarray, to_sizes: np.ndarray) -> np.ndarray:
    """`(top, left, height, width)` boxes in images of `from_sizes` as float64 `(y1, x1, y2, x2)` edges in the same
    images resized to `to_sizes` (both `[B, 2]` `(height, width)`): each axis scaled by its own factor, as a resize
    maps it."""
    boxes = np.asarray(boxes, dtype=np.float64)
    factor = np.asarray(to_sizes, dtype=np.float64) / np.asarray(from_sizes, dtype=np.float64)  # [B, 2]
    top_left = boxes[:, :2] * factor
    bottom_right = (boxes[:, :2] + boxes[:, 2:]) * factor
    return np.concatenate([top_left, bottom_right], axis=1)


def centre_crop_boxes(original_sizes: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """The `(top, left, height, width)` box that `Resize(resize) + CenterCrop(crop)` keeps of each image, in the
    pixels of the image resized to `resize` (torchvision's rounding: top `round((h - crop) / 2)`)."""
    boxes = np.empty((len(original_sizes), 4), dtype=np.int64)
    for i, (height, width) in enumerate(np.asarray(original_sizes, dtype=np.int64).reshape(-1, 2)):
        resized_height, resized_width = stored_size(int(height), int(width), resize)
        boxes[i] = (int(round((resized_height - crop) / 2.0)), int(round((resized_width - crop) / 2.0)), crop, crop)
    return boxes


def centre_crops(images: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: int) -> torch.Tensor:
    """`images[b, tops[b] : tops[b] + size, lefts[b] : lefts[b] + size]` of uint8 HWC `[B, H, W, C]` images, as
    uint8 `[B, C, size, size]`: one `gather`, the exact pixels."""
    batch, height, width, channels = images.shape
    device = images.device
    steps = torch.arange(size, device=device)
    rows = tops.to(device).long()[:, None] + steps  # [B, size]
    columns = lefts.to(device).long()[:, None] + steps
    source = (rows[:, :, None] * width + columns[:, None, :]).reshape(batch, size * size, 1)
    pixels = images.reshape(batch, height * width, channels).gather(1, source.expand(-1, -1, channels))
    return pixels.reshape(batch, size, size, channels).permute(0, 3, 1, 2)


def _integer_boxes(boxes: torch.Tensor, sizes: torch.Tensor) -> list[tuple[int, int, int, int]]:
    # Edges rounded to whole pixels, at least one pixel, inside the image.
    edges = boxes.double().round().long().tolist()
    result = []
    for (y1, x1, y2, x2), (height, width) in zip(edges, sizes.tolist()):
        y1, x1 = min(max(y1, 0), height - 1), min(max(x1, 0), width - 1)
        result.append((y1, x1, min(max(y2, y1 + 1), height), min(max(x2, x1 + 1), width)))
    return result


def resized_crops(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    sizes: torch.Tensor | None = None,
    method: str = "auto",
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Cut one box out of each image and resize it to `size` x `size`, antialiased, as float32 in [0, 1].

    Args:
        images: uint8 HWC `[B, H, W, C]` (a padded batch of a store: each image at the top left).
        boxes: float `[B, 4]` `(y1, x1, y2, x2)` pixel edges in each image.
        size: Output side.
        sizes: int `[B, 2]` each image's own `(height, width)` (default: the frame), needed by `interpolate`.
        method: One of `CROP_METHODS`. `roi_align` averages `ceil(box / size)` bilinear samples per output pixel and
            axis (`sampling_ratio=0`, `aligned=True`): a box filter where the crop shrinks, bilinear where it grows,
            the box's fractional edges kept. `interpolate` rounds the edges to whole pixels and resizes each crop with
            torch's antialiased `interpolate` (uint8 kernel for bilinear, PIL's filter).
        interpolation: `bilinear` or `bicubic`, for `interpolate` (`roi_align` is bilinear).

    Returns:
        float32 `[B, C, size, size]`, ToTensor's scale.
    """
    if method not in CROP_METHODS:
        raise ValueError(f"`method` {method!r} is not one of {', '.join(CROP_METHODS)}.")
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 [B, H, W, C], got {images.dtype} {tuple(images.shape)}.")
    if method == "auto":
        method = "interpolate" if images.device.type == "cpu" else "roi_align"
    batch = images.shape[0]
    if method == "roi_align":
        from torchvision.ops import roi_align

        boxes = boxes.to(images.device, torch.float32)
        index = torch.arange(batch, device=images.device, dtype=torch.float32)[:, None]
        rois = torch.cat([index, boxes[:, [1, 0, 3, 2]]], dim=1)  # (batch index, x1, y1, x2, y2)
        pixels = images.permute(0, 3, 1, 2).float()
        crops = roi_align(pixels, rois, output_size=size, spatial_scale=1.0, sampling_ratio=0, aligned=True)
        return crops.div_(255).clamp_(0, 1)
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"`interpolation` {interpolation!r}: resized_crops resamples bilinear or bicubic.")
    if sizes is None:
        sizes = torch.tensor([list(images.shape[1:3])] * batch)
    out = torch.empty((batch, images.shape[3], size, size), dtype=torch.float32, device=images.device)
    for b, (y1, x1, y2, x2) in enumerate(_integer_boxes(boxes, sizes.cpu())):
        out[b] = _pixels(_resized_crop(images[b, y1:y2, x1:x2], size, interpolation))
    return out


def _resized_crop(crop: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """A uint8 HWC crop resized to `[C, size, size]`, antialiased: uint8 for bilinear (torch's uint8 kernel, fastest
    on this channels-last layout), float on the 0-255 scale for bicubic (the uint8 kernel is bilinear only)."""
    crop = crop.permute(2, 0, 1)[None]
    if interpolation == "bicubic":
        crop = crop.float()
    return F.interpolate(crop, size=(size, size), mode=interpolation, antialias=True, align_corners=False)[0]


def _pixels(view: torch.Tensor) -> torch.Tensor:
    """ToTensor's [0, 1] float32 pixels of a `_resized_crop` result (or of any uint8 image)."""
    if view.dtype == torch.uint8:
        return to_float(view.contiguous())
    return view.div_(255).clamp_(0, 1)


@dataclass(frozen=True)
class CropViews:
    """Turn a loader batch of stored uint8 images into the `imagenet` family's views, on the batch's device.

    A `StoredImageDataset` puts this object into each batch next to `images` (uint8 HWC `[B, H, W, 3]`, each
    stored image at the top left of the frame), `sizes` (int32 `[B, 2]`, stored), `original_boxes` (float32
    `[B, 4]`, the original view's crop in stored pixels), `labels` and, for training, `augment` (float32 `[B, 5]`:
    the augmented view's crop `(y1, x1, y2, x2)` in stored pixels and the flip, see `sample`). The trainer calls it
    after moving the batch to the device.

    Args:
        image_size: S, the side of both views.
        resize: R, the shorter side of the evaluation resize before the centre crop (256 at 224).
        short_side: The store's shorter side (0: original images). With `short_side == resize` the original view is
            exactly the per-image path's.
        scale, ratio: RandomResizedCrop's ranges.
        flip: Whether a horizontal flip follows (probability 1/2).
        mean, std: Normalisation.
        interpolation: The recipe's resampling (`bilinear` or `bicubic`).
        original: Also make the original view (`original_pixel_values`; needed when beta > 0).
        method: How crops are resized (`CROP_METHODS`).
    """

    image_size: int
    resize: int
    short_side: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    original: bool = True
    method: str = "auto"

    @classmethod
    def from_spec(cls, spec: TransformSpec, short_side: int, original: bool = True, method: str = "auto") -> CropViews:
        """The views of `spec` (the `imagenet` family) from a store whose shorter side is `short_side`; the crop
        ranges are read from the per-image recipe itself (`build_transforms`), so the two paths cannot drift."""
        from .transforms import build_transforms

        if spec.family != "imagenet":
            raise ValueError(f"CropViews makes the `imagenet` family's views, not {spec.family!r} (see BatchViews).")
        if spec.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"`interpolation` {spec.interpolation!r}: the device path resamples bilinear or bicubic.")
        train, _ = build_transforms(spec)
        crop = next(step for step in train.transforms if isinstance(step, T.RandomResizedCrop))
        flip = any(isinstance(step, T.RandomHorizontalFlip) for step in train.transforms)
        return cls(spec.image_size, spec.eval_resize, short_side, tuple(crop.scale), tuple(crop.ratio), flip,
                   tuple(spec.mean), tuple(spec.std), spec.interpolation, original, method)

    @property
    def exact_original(self) -> bool:
        """Whether the original view is a plain crop of the stored pixels (the store holds `Resize(resize)`)."""
        return self.short_side == self.resize

    def original_boxes(self, original_sizes: np.ndarray, stored_sizes: np.ndarray) -> torch.Tensor:
        """float32 `[B, 4]` `(y1, x1, y2, x2)`: the centre crop of `Resize(resize) + CenterCrop(image_size)` in the
        stored pixels (whole numbers when the store holds `Resize(resize)`)."""
        original_sizes = np.asarray(original_sizes, dtype=np.int64).reshape(-1, 2)
        resized = np.array([stored_size(int(h), int(w), self.resize) for h, w in original_sizes], dtype=np.int64)
        boxes = centre_crop_boxes(original_sizes, self.resize, self.image_size)
        return torch.from_numpy(map_boxes(boxes, resized, stored_sizes)).to(torch.float32)

    def sample(self, seeds: np.ndarray, original_sizes: np.ndarray, stored_sizes: np.ndarray) -> torch.Tensor:
        """float32 `[B, 5]`: each example's augmented crop `(y1, x1, y2, x2)` in stored pixels and its flip (0/1),
        drawn from its seed (`sample_crops`) on its original size."""
        boxes, flips = sample_crops(seeds, original_sizes, self.scale, self.ratio, self.flip)
        edges = map_boxes(boxes, original_sizes, stored_sizes)
        return torch.from_numpy(np.concatenate([edges, flips[:, None]], axis=1)).to(torch.float32)

    def augmented(self, images: torch.Tensor, sizes: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The training view: RandomResizedCrop, flip, ToTensor, Normalize."""
        params = params.to(images.device)
        pixels = resized_crops(images, params[:, :4], self.image_size, sizes, self.method, self.interpolation)
        if self.flip:
            pixels = torch.where(params[:, 4, None, None, None] > 0.5, pixels.flip(-1), pixels)
        return normalize(pixels, self.mean, self.std)

    def original_view(self, images: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The evaluation view: Resize + CenterCrop (exact pixels when the store holds the resized images), ToTensor,
        Normalize."""
        boxes = boxes.to(images.device)
        if self.exact_original:
            pixels = to_float(centre_crops(images, boxes[:, 0].round(), boxes[:, 1].round(), self.image_size))
        else:
            pixels = resized_crops(images, boxes, self.image_size, sizes, self.method, self.interpolation)
        return normalize(pixels, self.mean, self.std)

    def _one_image_at_a_time(self, images: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor,
                             params: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Both views on the CPU, image by image: crop, resize and flip in uint8, then ToTensor and Normalize into the
        batch's slot, every step on one image in cache. The same pixels as the batched ops (elementwise IEEE ops
        give the same bits either way), at half the time: a batched pass streams ~40 MB through memory per step."""
        batch, size = images.shape[0], self.image_size
        augmented = originals = None
        if params is not None:
            augmented = torch.empty((batch, 3, size, size), dtype=torch.float32)
            crops = _integer_boxes(params[:, :4], sizes)
            flips = (params[:, 4] > 0.5).tolist() if self.flip else [False] * batch
        if params is None or self.original:  # evaluation, or the original view as well
            originals = torch.empty((batch, 3, size, size), dtype=torch.float32)
            centres = (boxes[:, :2].round().long().tolist() if self.exact_original else _integer_boxes(boxes, sizes))
        for b in range(batch):
            image = images[b]
            if augmented is not None:
                y1, x1, y2, x2 = crops[b]
                view = _resized_crop(image[y1:y2, x1:x2], size, self.interpolation)
                augmented[b] = normalize(_pixels(view.flip(-1) if flips[b] else view), self.mean, self.std)
            if originals is not None:
                if self.exact_original:
                    top, left = centres[b]
                    view = image[top : top + size, left : left + size].permute(2, 0, 1)
                else:
                    y1, x1, y2, x2 = centres[b]
                    view = _resized_crop(image[y1:y2, x1:x2], size, self.interpolation)
                originals[b] = normalize(_pixels(view), self.mean, self.std)
        return augmented, originals

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """`{"pixel_values", ["original_pixel_values"], "labels", ...}` from a `StoredImageDataset` batch.

        With `augment`, `pixel_values` is the augmented view (and `original_pixel_values` the original one when
        `original` is set); without it (evaluation), `pixel_values` is the original view. On the CPU (method
        `interpolate`) the views are made one image at a time, elsewhere batched.
        """
        images, sizes, boxes = batch["images"], batch["sizes"], batch["original_boxes"]
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"Expected uint8 images [B, H, W, 3], got {tuple(images.shape)}.")
        out = {k: v for k, v in batch.items() if k not in ("images", "sizes", "original_boxes", "augment", "views")}
        params = batch.get("augment")
        wants_original = params is None or self.original
        if images.device.type == "cpu" and self.method in ("auto", "interpolate"):
            augmented, original = self._one_image_at_a_time(images, sizes, boxes, params)
        else:
            augmented = None if params is None else self.augmented(images, sizes, params)
            original = self.original_view(images, sizes, boxes) if wants_original else None
        if params is None:
            out["pixel_values"] = original
            return out
        out["pixel_values"] = augmented
        if self.original:
            out["original_pixel_values"] = original
        return out
