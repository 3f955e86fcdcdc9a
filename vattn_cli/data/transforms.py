"""Clip transforms in torch: scale, crop, flip, normalise.

Training follows PySlowFast/TimeSformer: scale the short side to a random length in
``size * scale`` (default 256..320 for a 224 crop, i.e. ``(8/7, 10/7)``), take a random
``size x size`` crop, optionally flip. Testing scales the short side to ``size`` and takes
one centre crop or three crops along the long side (left/centre/right, or top/middle/bottom
for portrait video), the "x3" of "kx3" views. Flipping is off by default: it swaps left and
right, which is the label itself on direction-sensitive data (SSv2, the built-in motion task).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Short side at training, relative to the crop: PySlowFast's TRAIN_JITTER_SCALES [256, 320] for 224.
TRAIN_SCALE = (256 / 224, 320 / 224)
SPATIAL_CROPS = (1, 3)


def to_float(frames: Tensor) -> Tensor:
    """Decoded frames ``[T, H, W, C]`` uint8 -> ``[C, T, H, W]`` float in ``[0, 1]``."""
    return rearrange(frames, "t h w c -> c t h w").float().div_(255.0)


def resize_short(video: Tensor, short: int) -> Tensor:
    """Scale ``[C, T, H, W]`` so its short side is ``short`` pixels, keeping the aspect ratio."""
    _, _, h, w = video.shape
    if min(h, w) == short:
        return video
    if h <= w:
        new = (short, max(short, round(w * short / h)))
    else:
        new = (max(short, round(h * short / w)), short)
    frames = rearrange(video, "c t h w -> t c h w")
    out = F.interpolate(frames, size=new, mode="bilinear", align_corners=False,
                        antialias=new[0] < h)  # antialias only matters when shrinking
    return rearrange(out, "t c h w -> c t h w")


def crop(video: Tensor, top: int, left: int, size: int) -> Tensor:
    return video[:, :, top:top + size, left:left + size]


def spatial_crops(video: Tensor, size: int, count: int) -> list[Tensor]:
    """``count`` (1 or 3) ``size``-square crops of a clip whose short side is ``size``."""
    if count not in SPATIAL_CROPS:
        raise ValueError(f"spatial crops must be 1 or 3, got {count}")
    _, _, h, w = video.shape
    top, left = (h - size) // 2, (w - size) // 2
    if count == 1:
        return [crop(video, top, left, size)]
    if w >= h:
        return [crop(video, top, x, size) for x in (0, left, w - size)]
    return [crop(video, y, left, size) for y in (0, top, h - size)]


def normalise(video: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, dtype=video.dtype).view(-1, 1, 1, 1)
    s = torch.tensor(std, dtype=video.dtype).view(-1, 1, 1, 1)
    return (video - m) / s


def train_transform(
    frames: Tensor, size: int, generator: torch.Generator, *, scale: tuple[float, float] = TRAIN_SCALE,
    hflip: bool = False, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
) -> Tensor:
    """Random short-side scale, random crop, optional flip, normalise: ``[3, T, size, size]``."""
    lo, hi = math.ceil(size * scale[0]), math.floor(size * scale[1])
    short = lo if hi <= lo else int(torch.randint(lo, hi + 1, (1,), generator=generator).item())
    video = resize_short(to_float(frames), max(short, size))
    _, _, h, w = video.shape
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator).item())
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator).item())
    video = crop(video, top, left, size)
    if hflip and bool(torch.rand(1, generator=generator).item() < 0.5):
        video = video.flip(-1)
    return normalise(video, mean, std)


def eval_transform(
    frames: Tensor, size: int, *, crops: int = 1, mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> list[Tensor]:
    """Short side to ``size``, then 1 or 3 crops, each normalised ``[3, T, size, size]``."""
    video = normalise(resize_short(to_float(frames), size), mean, std)
    return spatial_crops(video, size, crops)
