"""Real video files for the data tests: every frame a flat grey whose level encodes its index."""

from __future__ import annotations

from pathlib import Path

import decord
import numpy as np
import torch

from vattn_cli.data.synth import write_mp4
from vattn_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD

STEP = 6  # grey levels apart: far more than yuv420p coding at a fixed quantiser moves them


def grey_video(path: Path, frames: int, height: int = 32, width: int = 32) -> Path:
    """An mp4 whose frame ``t`` is flat grey ``STEP * t`` (so decoded frames reveal their index)."""
    assert frames * STEP < 256
    levels = (np.arange(frames) * STEP).astype(np.uint8)
    data = np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).copy()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, data)
    return path


def decoded_levels(path: Path) -> np.ndarray:
    """Mean level of every frame, decoded straight by decord (no vattn code in the way)."""
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy().reshape(len(reader), -1).mean(1)


def frame_ids(video: torch.Tensor, levels: np.ndarray) -> list[int]:
    """The frame indices a normalised clip ``[3, T, H, W]`` of a :func:`grey_video` was made of."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    clip_levels = ((video * std + mean) * 255.0).mean(dim=(0, 2, 3)).numpy()
    return [int(np.abs(levels - v).argmin()) for v in clip_levels]
