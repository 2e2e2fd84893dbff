"""Pillow's resampling, the pixels the per-image path's `Resize` and `RandomResizedCrop` make, batched in torch.

torchvision's transforms on a PIL image resize with Pillow (`Image.resize`, bilinear or bicubic with its antialiasing
support): that is what the reference code trains and evaluates on. `resized_crops` computes the same uint8 pixels for
a whole batch on any device, bit for bit, so that views made on an accelerator are the per-image path's:

* the filter weights are Pillow's (`precompute_coeffs` in Pillow's `Resample.c`): support scaled by the reduction,
  weights normalized per output pixel, then rounded to 22-bit fixed point; computed here in float64 with the same
  operations in the same order (IEEE double on every device), so the fixed-point weights are Pillow's;
* each pass sums `pixel * weight` in int32 from the same rounding offset and clips to uint8 as Pillow does, so the
  sums are exact on any device (no float rounding, no TF32);
* the passes run in Pillow's order: horizontal then vertical, except from Pillow 13 on, where an image whose height
  shrinks by more than twice as many pixels as its width runs the vertical pass first (`vertical_pass_first`).

`pil_resized_crop` does the same with Pillow itself, one image at a time (the CPU path: Pillow's own C loops are the
fastest there). Nothing here knows about datasets or `Trainer`.

    out = resized_crops(frames, crops, out_sizes, windows, size=224)   # uint8 [B, 224, 224, 3], Pillow's pixels
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

__all__ = ["RESAMPLE_INTERPOLATIONS", "pil_resized_crop", "resample_weights", "resized_crops", "vertical_pass_first"]

RESAMPLE_INTERPOLATIONS = ("bilinear", "bicubic")
"""The filters `resized_crops` reproduces (Pillow's `BILINEAR` and `BICUBIC`)."""

_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}
_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images: 22 fractional bits
_ROUNDING = 1 << (_PRECISION_BITS - 1)


@functools.lru_cache(maxsize=1)
def _pillow_orders_passes() -> bool:
    """Whether the installed Pillow may run the vertical pass first (Pillow >= 13; before, always horizontal first)."""
    import PIL

    return int(PIL.__version__.split(".")[0]) >= 13


def vertical_pass_first(in_height: Any, in_width: Any, out_height: Any, out_width: Any) -> Any:
    """Whether the installed Pillow resizes an image of `in` size to `out` size with its vertical pass first.

    Pillow 13 runs the vertical pass first when the height shrinks by more pixels than twice what the width shrinks
    by; older releases always run the horizontal pass first. The two orders round their intermediate image
    differently, so the order is part of the pixels. Works on Python ints, numpy arrays and tensors alike.
    """
    if not _pillow_orders_passes():
        if isinstance(in_height, torch.Tensor):
            return torch.zeros_like(in_height, dtype=torch.bool)
        return np.zeros_like(in_height, dtype=bool) if isinstance(in_height, np.ndarray) else False
    shrink_height = in_height - out_height
    return (shrink_height > 0) & (shrink_height > (in_width - out_width) * 2)


def _filter(x: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Pillow's `bilinear_filter` / `bicubic_filter` (a = -0.5), in float64, each operation as Pillow writes it."""
    x = x.abs()
    if interpolation == "bilinear":
        return torch.where(x < 1.0, 1.0 - x, torch.zeros_like(x))
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def max_taps(max_scale: float, interpolation: str) -> int:
    """Pillow's number of weights per output pixel (`ksize`) for a reduction of at most `max_scale` (in / out)."""
    return int(math.ceil(_SUPPORT[interpolation] * max(1.0, max_scale))) * 2 + 1


def resample_weights(
    in_sizes: torch.Tensor, out_sizes: torch.Tensor, starts: torch.Tensor, count: int, taps: int,
    interpolation: str = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's fixed-point weights along one axis, for outputs `starts[b] .. starts[b] + count - 1` of a resize of
    `in_sizes[b]` pixels to `out_sizes[b]` (Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`).

    Args:
        in_sizes, out_sizes, starts: int `[B]`.
        count: Outputs per example.
        taps: Weights per output (at least `max_taps` of the largest reduction; the extra ones are 0).
        interpolation: `bilinear` or `bicubic`.

    Returns:
        `(first, weights)`: int64 `[B, count]`, the input index of each output's first weight (Pillow's `xmin`), and
        int32 `[B, count, taps]`, the weights in 22-bit fixed point (0 past Pillow's `xmax`).
    """
    if interpolation not in _SUPPORT:
        raise ValueError(f"`interpolation` {interpolation!r}: Pillow's resampling is reproduced for "
                         f"{', '.join(RESAMPLE_INTERPOLATIONS)}.")
    device = in_sizes.device
    in_size = in_sizes.to(torch.float64)[:, None]
    scale = in_size / out_sizes.to(torch.float64)[:, None]
    filterscale = torch.clamp(scale, min=1.0)
    support = _SUPPORT[interpolation] * filterscale
    inverse = 1.0 / filterscale
    outputs = starts.to(torch.float64)[:, None] + torch.arange(count, device=device, dtype=torch.float64)
    centre = 0.0 + (outputs + 0.5) * scale
    first = torch.trunc(centre - support + 0.5).clamp(min=0.0)  # C's (int) cast truncates
    last = torch.minimum(torch.trunc(centre + support + 0.5), in_size)
    span = last - first
    weights = []
    total = torch.zeros_like(centre)
    for k in range(taps):
        inside = k < span
        weight = torch.where(inside, _filter(((k + first) - centre + 0.5) * inverse, interpolation),
                             torch.zeros_like(centre))
        weights.append(weight)
        total = total + weight  # in Pillow's order, one weight at a time
    weights = torch.stack(weights, dim=-1)
    weights = torch.where(total[..., None] != 0.0, weights / torch.where(total == 0.0, 1.0, total)[..., None], weights)
    scaled = weights * float(1 << _PRECISION_BITS)
    fixed = torch.where(scaled < 0, torch.trunc(-0.5 + scaled), torch.trunc(0.5 + scaled))
    return first.to(torch.int64), fixed.to(torch.int32)


def _clip8(sums: torch.Tensor) -> torch.Tensor:
    # Pillow's clip8: an arithmetic shift (floor) out of the fixed point, then clamped to 0..255.
    return (sums >> _PRECISION_BITS).clamp_(0, 255)


def _pass(source: torch.Tensor, dim: int, first: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One of Pillow's passes along `dim` (1: down the rows, 2: along each row) of `source` `[B, H, W, C]`: output
    `j` sums `source[..., first[b, j] + k, ...] * weights[b, j, k]` over `k`. Returns int32 uint8-valued pixels."""
    batch, height, width, channels = source.shape
    count, taps = weights.shape[1:]
    limit = source.shape[dim] - 1
    if dim == 2:
        shape = (batch, height, count, channels)
        index = lambda k: (first + k).clamp(max=limit)[:, None, :, None].expand(shape)  # noqa: E731
        weight = lambda k: weights[:, None, :, k, None]  # noqa: E731
    else:
        shape = (batch, count, width, channels)
        index = lambda k: (first + k).clamp(max=limit)[:, :, None, None].expand(shape)  # noqa: E731
        weight = lambda k: weights[:, :, k, None, None]  # noqa: E731
    sums = torch.full(shape, _ROUNDING, dtype=torch.int32, device=source.device)
    for k in range(taps):
        sums += source.gather(dim, index(k)).to(torch.int32) * weight(k)
    return _clip8(sums)


def resized_crops(
    frames: torch.Tensor,
    crops: torch.Tensor,
    out_sizes: torch.Tensor,
    windows: torch.Tensor,
    size: int,
    interpolation: str = "bilinear",
    min_out: int | None = None,
) -> torch.Tensor:
    """Per image: cut a box out, resize it with Pillow, keep a `size` x `size` window of the result, as Pillow does.

    Image `b` of the result equals, bit for bit, `np.asarray(Image.fromarray(image_b).crop(box).resize((OW, OH),
    filter))[wy : wy + size, wx : wx + size]`: `RandomResizedCrop`'s crop (window 0, out size `size`) and
    `Resize(R) + CenterCrop(size)` (the whole image as the box, out size the resized size, the centre window) alike.
    One batch of gathers and int32 sums on the frames' device, no host sync.

    Args:
        frames: uint8 `[B, M, M, C]` (HWC), each image at the top left of a square frame.
        crops: int `[B, 4]`: each box `(top, left, height, width)` in its image.
        out_sizes: int `[B, 2]`: the size `(OH, OW)` each box is resized to.
        windows: int `[B, 2]`: the `(top, left)` of the kept window in the resized box.
        size: The window's side.
        interpolation: `bilinear` or `bicubic`.
        min_out: The smallest `OH` / `OW` of the batch, or a lower bound (default `size`): it bounds the number of
            weights per pixel without reading the sizes back from the device.

    Returns:
        uint8 `[B, size, size, C]`.
    """
    if frames.dim() != 4 or frames.dtype != torch.uint8 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"frames must be uint8 [B, M, M, C], got {frames.dtype} {tuple(frames.shape)}.")
    if interpolation not in _SUPPORT:
        raise ValueError(f"`interpolation` {interpolation!r}: Pillow's resampling is reproduced for "
                         f"{', '.join(RESAMPLE_INTERPOLATIONS)}.")
    device = frames.device
    # float64 weights: MPS has no float64, so they are computed on the CPU there (and copied over).
    math_device = torch.device("cpu") if device.type == "mps" else device
    crops, out_sizes, windows = (t.to(math_device, torch.int64) for t in (crops, out_sizes, windows))
    taps = max_taps(frames.shape[1] / (min_out or size), interpolation)
    transposed = vertical_pass_first(crops[:, 2], crops[:, 3], out_sizes[:, 0], out_sizes[:, 1])
    if _pillow_orders_passes():
        # A vertical-first image is resized transposed: its columns become the rows of the first pass.
        swap = transposed[:, None]
        crops = torch.where(swap, crops[:, [1, 0, 3, 2]], crops)
        out_sizes = torch.where(swap, out_sizes.flip(1), out_sizes)
        windows = torch.where(swap, windows.flip(1), windows)
        frames = torch.where(transposed.to(device)[:, None, None, None], frames.transpose(1, 2), frames)
    top, left, height, width = crops.unbind(1)
    first_x, weights_x = resample_weights(width, out_sizes[:, 1], windows[:, 1], size, taps, interpolation)
    first_y, weights_y = resample_weights(height, out_sizes[:, 0], windows[:, 0], size, taps, interpolation)
    first_x, weights_x, first_y, weights_y = (t.to(device) for t in (first_x + left[:, None], weights_x,
                                                                      first_y + top[:, None], weights_y))
    # Every row of the frame goes through the first pass (rows outside the box are not read by the second): the
    # boxes' heights stay on the device.
    rows = _pass(frames, 2, first_x, weights_x)
    out = _pass(rows, 1, first_y, weights_y).to(torch.uint8)
    if _pillow_orders_passes():
        out = torch.where(transposed.to(device)[:, None, None, None], out.transpose(1, 2), out)
    return out


def pil_resized_crop(
    image: Any, crop: tuple[int, int, int, int], out_size: tuple[int, int], window: tuple[int, int], size: int,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """`resized_crops` for one image (uint8 HWC array, or a PIL image), by Pillow itself: `crop`, `resize` to
    `out_size` `(OH, OW)`, keep the `size` x `size` window at `window` `(top, left)`.

    Returns:
        uint8 `[size, size, C]`.
    """
    from PIL import Image

    top, left, height, width = (int(v) for v in crop)
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[interpolation]
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    if (top, left, height, width) != (0, 0, picture.height, picture.width):
        picture = picture.crop((left, top, left + width, top + height))
    picture = picture.resize((int(out_size[1]), int(out_size[0])), resample)
    wy, wx = int(window[0]), int(window[1])
    if (wy, wx, size, size) != (0, 0, picture.height, picture.width):
        picture = picture.crop((wx, wy, wx + size, wy + size))
    return np.array(picture)
