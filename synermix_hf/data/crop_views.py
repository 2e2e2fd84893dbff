"""The two views of the `imagenet` family (RandomResizedCrop), made for a whole batch on the training device.

The batched twin of the per-image recipe `RandomResizedCrop(S) + RandomHorizontalFlip` (augmented view) and
`Resize(R) + CenterCrop(S)` (original view, R = 256 at S = 224), for a batch of decoded images (each image at the top
left of a square uint8 frame, see `synermix_hf.data.image_store.ImageStore.padded_batch`):

* each example's crop box and flip are drawn exactly as the per-image path draws them: `RandomResizedCrop.get_params`
  on the image's *original* size, then the flip, from torch's generator seeded with the example's seed
  (`sample_crops`), in the loader;
* the crops are resized as the per-image path resizes them, with Pillow's filter: on the CPU by Pillow itself, one
  image at a time; on an accelerator by `synermix_hf.data.pil_resample.resized_crops`, Pillow's resampling for the
  whole batch at once, bit for bit, with no host sync. Both views are then the per-image path's pixels exactly, for
  bilinear and bicubic recipes alike, when the images are full resolution (`short_side` 0);
* with a store of reduced images (`short_side` S > 0, opt-in) the crop boxes are mapped into the stored pixels and
  rounded to whole pixels: the augmented view is then cut from fewer pixels than the per-image path's (softer; its
  measured distance is in docs/data_paths.md), while with S = R the original view is still exact (a plain centre crop).

Nothing here knows about `Trainer`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision import transforms as T

from .batch_transforms import normalize, to_float
from .image_store import stored_size
from .pil_resample import RESAMPLE_INTERPOLATIONS, pil_resized_crop, resized_crops
from .transforms import TransformSpec

__all__ = ["CROP_METHODS", "CropViews", "centre_crop_boxes", "map_boxes", "sample_crops"]

CROP_METHODS = ("auto", "pillow", "batched")
"""How `CropViews` resizes: `pillow` (Pillow itself, image by image, in threads), `batched`
(`synermix_hf.data.pil_resample.resized_crops`, the whole batch at once on its device) or `auto` (`pillow` on the
CPU, `batched` elsewhere). Both give the same pixels."""

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


def _whole_pixel_boxes(edges: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """float `(y1, x1, y2, x2)` edges rounded to whole pixels, at least one pixel, inside the image, as int64
    `(top, left, height, width)`."""
    edges = np.rint(np.asarray(edges, dtype=np.float64)).astype(np.int64)
    heights, widths = np.asarray(sizes, dtype=np.int64).reshape(-1, 2).T
    top = np.clip(edges[:, 0], 0, heights - 1)
    left = np.clip(edges[:, 1], 0, widths - 1)
    bottom = np.clip(np.maximum(edges[:, 2], top + 1), None, heights)
    right = np.clip(np.maximum(edges[:, 3], left + 1), None, widths)
    return np.stack([top, left, bottom - top, right - left], axis=1)


def centre_crop_boxes(original_sizes: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """The `(top, left, height, width)` box that `Resize(resize) + CenterCrop(crop)` keeps of each image, in the
    pixels of the image resized to `resize` (torchvision's rounding: top `round((h - crop) / 2)`)."""
    boxes = np.empty((len(original_sizes), 4), dtype=np.int64)
    for i, (height, width) in enumerate(np.asarray(original_sizes, dtype=np.int64).reshape(-1, 2)):
        resized_height, resized_width = stored_size(int(height), int(width), resize)
        boxes[i] = (int(round((resized_height - crop) / 2.0)), int(round((resized_width - crop) / 2.0)), crop, crop)
    return boxes


@dataclass(frozen=True)
class CropViews:
    """Turn a loader batch of decoded uint8 images into the `imagenet` family's views, on the batch's device.

    A `synermix_hf.data.device_datasets.StoredImageDataset` serves batches of `images` (uint8 `[B, M, M, 3]`, each
    image, or for training only its crop, at the top left of the frame), `sizes` (int `[B, 2]`, their sizes in the
    frame), `labels`, for training `augment` (int `[B, 5]`: the crop `(top, left, height, width)` in the frame's image
    and the flip, `sample`), and for the original view either `original_images` (uint8 `[B, S, S, 3]`, made once by
    the per-image path's own transforms) or `original` (int `[B, 4]`: the resized size and the top left of the centre
    crop, `original_params`, to make it from `images`). `SynerMixTrainer` calls this object on each batch once it is
    on the device.

    Args:
        image_size: S, the side of both views.
        resize: R, the shorter side of the evaluation resize before the centre crop (256 at 224).
        short_side: The shorter side of the images in the frames: 0 for full resolution (both views exactly the
            per-image path's), or the S of a store of reduced images (opt-in; the original view exact when S = R).
        scale, ratio: RandomResizedCrop's ranges.
        flip: Whether a horizontal flip follows (probability 1/2).
        mean, std: Normalization.
        interpolation: The recipe's resampling (`bilinear` or `bicubic`).
        original: Also make the original view (`original_pixel_values`; needed when beta > 0).
        method: How the crops are resized (`CROP_METHODS`); the pixels are the same either way.
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

    def __post_init__(self):
        if self.method not in CROP_METHODS:
            raise ValueError(f"`method` {self.method!r} is not one of {', '.join(CROP_METHODS)}.")

    @classmethod
    def from_spec(cls, spec: TransformSpec, short_side: int = 0, original: bool = True,
                  method: str = "auto") -> CropViews:
        """The views of `spec` (the `imagenet` family) from images whose shorter side is `short_side` (0: full
        resolution); the crop ranges are read from the per-image recipe itself (`build_transforms`), so the two paths
        cannot drift."""
        from .transforms import build_transforms

        if spec.family != "imagenet":
            raise ValueError(f"CropViews makes the `imagenet` family's views, not {spec.family!r} (see BatchViews).")
        if spec.interpolation not in RESAMPLE_INTERPOLATIONS:
            raise ValueError(f"`interpolation` {spec.interpolation!r}: the device path resamples "
                             f"{' or '.join(RESAMPLE_INTERPOLATIONS)}.")
        train, _ = build_transforms(spec)
        crop = next(step for step in train.transforms if isinstance(step, T.RandomResizedCrop))
        flip = any(isinstance(step, T.RandomHorizontalFlip) for step in train.transforms)
        return cls(spec.image_size, spec.eval_resize, short_side, tuple(crop.scale), tuple(crop.ratio), flip,
                   tuple(spec.mean), tuple(spec.std), spec.interpolation, original, method)

    @property
    def exact(self) -> bool:
        """Whether both views are the per-image path's pixels (full-resolution images)."""
        return self.short_side == 0

    def store_problem(self, store: Any, originals: bool = False) -> str | None:
        """Why these views cannot be made from `store`'s images (with `originals`: read as the original views), or
        None."""
        if originals:
            if not getattr(store, "square", False) or store.short_side != self.image_size:
                return f"the original views are {self.image_size}x{self.image_size}px, the store holds {store!r}"
            return None
        side = 0 if store.pixels is None else store.short_side  # `EncodedImages`: full resolution
        if getattr(store, "square", False) or side != self.short_side:
            return (f"the views expect images with the shorter side {self.short_side}px (0: full), the store holds "
                    f"{store!r}")
        return None

    # ---- in the loader ----

    def sample(self, seeds: np.ndarray, original_sizes: np.ndarray, stored_sizes: np.ndarray) -> torch.Tensor:
        """int64 `[B, 5]`: each example's augmented crop `(top, left, height, width)` in the stored pixels and its flip
        (0/1), drawn from its seed on its original size (`sample_crops`)."""
        boxes, flips = sample_crops(seeds, original_sizes, self.scale, self.ratio, self.flip)
        if not self.exact:  # the same region of the reduced image, to whole pixels
            boxes = _whole_pixel_boxes(map_boxes(boxes, original_sizes, stored_sizes), stored_sizes)
        return torch.from_numpy(np.concatenate([boxes, flips[:, None]], axis=1).astype(np.int64))

    def original_params(self, original_sizes: np.ndarray, stored_sizes: np.ndarray) -> torch.Tensor:
        """int64 `[N, 4]`: for each image, the size `(OH, OW)` the original view resizes the stored image to and the
        `(top, left)` of its centre crop in it: `Resize(R)` of the original size and torchvision's centre (an
        identity resize when the store already holds `Resize(R)`)."""
        original_sizes = np.asarray(original_sizes, dtype=np.int64).reshape(-1, 2)
        resized = np.array([stored_size(int(h), int(w), self.resize) for h, w in original_sizes],
                           dtype=np.int64).reshape(-1, 2)
        windows = centre_crop_boxes(original_sizes, self.resize, self.image_size)[:, :2]
        return torch.from_numpy(np.concatenate([resized, windows], axis=1))

    # ---- on the device ----

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """`{"pixel_values", ["original_pixel_values"], "labels", ...}` from a `StoredImageDataset` batch.

        With `augment`, `pixel_values` is the augmented view (and `original_pixel_values` the original one when
        `original` is set); without it (evaluation), `pixel_values` is the original view.
        """
        images, params = batch.get("images"), batch.get("augment")
        if images is not None and (images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8):
            raise ValueError(f"Expected uint8 images [B, M, M, 3], got {images.dtype} {tuple(images.shape)}.")
        out = {k: v for k, v in batch.items()
               if k not in ("images", "sizes", "original", "augment", "original_images")}
        want_original = params is None or self.original
        stored = batch.get("original_images") if want_original else None  # made once by the per-image transforms
        make_original = want_original and stored is None
        device = (images if images is not None else stored).device
        if self.method == "pillow" or (self.method == "auto" and device.type == "cpu"):
            augmented, original_view = self._by_pillow(images, batch.get("sizes"), batch.get("original"), params,
                                                       make_original, stored)
        else:
            augmented = None if params is None else self._augmented(images, params)
            original_view = (self._original(images, batch["sizes"], batch["original"]) if make_original else
                             self._pixels(stored) if stored is not None else None)
        if params is None:
            out["pixel_values"] = original_view
            return out
        out["pixel_values"] = augmented
        if self.original:
            out["original_pixel_values"] = original_view
        return out

    def _pixels(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 HWC `[B, S, S, 3]` -> ToTensor + Normalize `[B, 3, S, S]` (NCHW in memory too, as the per-image path's
        batches)."""
        return normalize(to_float(views.permute(0, 3, 1, 2).contiguous()), self.mean, self.std)

    def _into(self, slot: torch.Tensor, view: np.ndarray) -> None:
        """ToTensor + Normalize of one uint8 HWC view, written into its slot `[3, S, S]` of the batch: the same
        operations as `_pixels`, in place (no allocation per image, each step on one image in cache)."""
        slot.copy_(torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))))
        normalize(slot.div_(255), self.mean, self.std, in_place=True)

    def _augmented(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        boxes = params[:, :4]
        out_sizes = torch.full((len(boxes), 2), size, dtype=torch.int64, device=boxes.device)
        crops = resized_crops(images, boxes, out_sizes, torch.zeros_like(out_sizes), size, self.interpolation,
                              min_out=size)
        if self.flip:
            crops = torch.where(params[:, 4, None, None, None].to(crops.device) > 0, crops.flip(2), crops)
        return self._pixels(crops)

    def _original(self, images: torch.Tensor, sizes: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        sizes = sizes.to(torch.int64)
        whole = torch.cat([torch.zeros_like(sizes), sizes], dim=1)
        crops = resized_crops(images, whole, original[:, :2], original[:, 2:], self.image_size, self.interpolation,
                              min_out=min(self.resize, self.image_size))
        return self._pixels(crops)

    def _by_pillow(self, images: torch.Tensor | None, sizes: torch.Tensor | None, original: torch.Tensor | None,
                   params: torch.Tensor | None, make_original: bool,
                   stored: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Both views on the CPU by Pillow itself, image by image, in threads (Pillow releases the GIL while it
        resamples), each written into its slot of the batch (`stored`: the original views, to be normalized only)."""
        reference = images if images is not None else stored
        batch, size, device = reference.shape[0], self.image_size, reference.device
        augmented = None if params is None else torch.empty((batch, 3, size, size), dtype=torch.float32)
        originals = (torch.empty((batch, 3, size, size), dtype=torch.float32)
                     if make_original or stored is not None else None)
        frames = images.cpu().numpy() if images is not None else None
        stored = stored.cpu().numpy() if stored is not None else None
        sizes = sizes.tolist() if sizes is not None else None
        original = original.tolist() if make_original else None
        params = None if params is None else params.tolist()

        from PIL import Image

        def one(b: int) -> None:
            if stored is not None:
                self._into(originals[b], stored[b])
            if frames is None:
                return
            height, width = sizes[b]
            # Only the crop is handed to Pillow when the original view is not made here: the same pixels as cropping
            # the whole image, without converting all of it.
            image = Image.fromarray(np.ascontiguousarray(frames[b, :height, :width])) if make_original else None
            if augmented is not None:
                top, left, crop_height, crop_width, flip = params[b]
                if image is None:
                    crop = frames[b, top : top + crop_height, left : left + crop_width]
                    view = pil_resized_crop(crop, (0, 0, crop_height, crop_width), (size, size), (0, 0), size,
                                            self.interpolation)
                else:
                    view = pil_resized_crop(image, (top, left, crop_height, crop_width), (size, size), (0, 0), size,
                                            self.interpolation)
                self._into(augmented[b], view[:, ::-1] if flip else view)
            if make_original:
                out_height, out_width, window_top, window_left = original[b]
                view = pil_resized_crop(image, (0, 0, height, width), (out_height, out_width),
                                        (window_top, window_left), size, self.interpolation)
                self._into(originals[b], view)

        threads = max(1, min(batch, torch.get_num_threads(), os.cpu_count() or 1))
        if threads == 1:
            for b in range(batch):
                one(b)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(one, range(batch)))
        return tuple(None if view is None else view.to(device) for view in (augmented, originals))
