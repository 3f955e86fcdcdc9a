"""Which frames of a video make a clip.

Two strategies, as the usual tools define them:

- ``uniform`` (TSN, and SSv2 in PySlowFast/MMAction2): split the video into ``T`` equal
  segments and take one frame from each, at random within the segment when training and at
  the segment's centre when testing. ``k`` test clips take offsets ``(j + 0.5) / k`` inside
  every segment, so they see different frames of the same segments.
- ``dense`` (Kinetics, "TxS" settings): ``T`` frames ``rate`` apart from a random start when
  training; ``k`` evenly spaced clips when testing (MMAction2's offsets: the centres of ``k``
  equal stretches of the possible starts).

A video shorter than the clip needs is padded by repeating frames: ``uniform`` repeats frames
evenly (segments shorter than a frame), ``dense`` repeats the last frame, as PySlowFast clamps.
Randomness comes only from the ``generator`` passed in, so a clip is a pure function of it.
"""

from __future__ import annotations

import math

import torch

from vattn_cli.errors import one_of

STRATEGIES = ("uniform", "dense")


def uniform_indices(
    num_frames: int, frames: int, *, train: bool, generator: torch.Generator | None = None,
    clip: int = 0, num_clips: int = 1,
) -> list[int]:
    """One frame from each of ``frames`` equal segments of a ``num_frames``-long video."""
    _check(num_frames, frames, clip, num_clips)
    seg = num_frames / frames
    if train:
        draws = torch.rand(frames, generator=generator).tolist()
        out = []
        for i, u in enumerate(draws):
            start = math.floor(seg * i)
            end = max(math.floor(seg * (i + 1)), start + 1)  # exclusive
            out.append(min(start + math.floor(u * (end - start)), num_frames - 1))
        return out
    offset = (clip + 0.5) / num_clips
    return [min(math.floor(seg * (i + offset)), num_frames - 1) for i in range(frames)]


def dense_indices(
    num_frames: int, frames: int, rate: int, *, train: bool, generator: torch.Generator | None = None,
    clip: int = 0, num_clips: int = 1,
) -> list[int]:
    """``frames`` frames ``rate`` apart; past the end the last frame repeats."""
    _check(num_frames, frames, clip, num_clips)
    if rate < 1:
        raise ValueError(f"sample rate must be >= 1, got {rate}")
    span = (frames - 1) * rate + 1
    room = max(num_frames - span, 0)  # the last possible start
    if train:
        start = int(torch.randint(0, room + 1, (1,), generator=generator).item())
    else:
        start = math.floor((clip + 0.5) * (room + 1) / num_clips)
    return [min(start + k * rate, num_frames - 1) for k in range(frames)]


def clip_indices(
    strategy: str, num_frames: int, frames: int, *, rate: int = 4, train: bool,
    generator: torch.Generator | None = None, num_clips: int = 1,
) -> list[list[int]]:
    """Frame indices of every temporal clip: one random clip when training, ``num_clips`` at test."""
    if strategy not in STRATEGIES:
        raise one_of("sampling", strategy, STRATEGIES)
    count = 1 if train else num_clips
    if strategy == "uniform":
        return [uniform_indices(num_frames, frames, train=train, generator=generator, clip=j, num_clips=count)
                for j in range(count)]
    return [dense_indices(num_frames, frames, rate, train=train, generator=generator, clip=j, num_clips=count)
            for j in range(count)]


def _check(num_frames: int, frames: int, clip: int, num_clips: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {frames}")
    if not 0 <= clip < num_clips:
        raise ValueError(f"clip {clip} out of range for {num_clips} clips")
