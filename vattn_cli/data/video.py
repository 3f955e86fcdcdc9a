"""Decoding with decord: one reader per video, frames as a torch uint8 tensor.

Every failure (missing, empty, not a video, broken stream) becomes a :class:`BadVideoError`
naming the file and the list line, so a user can fix the list; decord's own errors are
multi-line C++ logs, and the dataset's ``skip_bad`` mode needs one catchable type.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import decord
import torch
from torch import Tensor

from vattn_cli.data.lists import VideoItem
from vattn_cli.errors import UsageError

decord.logging.set_level(decord.logging.QUIET)  # ffmpeg's chatter; we report failures ourselves


class BadVideoError(UsageError):
    """A video of a list cannot be read: the message names the file and the list line."""

    def __init__(self, message: str, reason: str = "") -> None:
        # A DataLoader worker re-raises this type with the worker's traceback as the message;
        # keep the one line the user needs, the rest is noise on the command line.
        if message.startswith("Caught BadVideoError"):
            lines = [line for line in message.splitlines() if "BadVideoError: " in line]
            if lines:
                message = lines[-1].split("BadVideoError: ", 1)[1]
        super().__init__(message)
        self.reason = reason or message


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    height: int
    width: int
    fps: float


def _short(exc: BaseException) -> str:
    """decord's message without its log timestamps, source paths and stack traces."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("Error reading "):  # decord's open failure; its log had the detail
        return "unrecognised format or truncated file"
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", text)
    text = re.sub(r"Check failed: .*?\) ", "", text)
    return text.strip() or type(exc).__name__


def _fail(item: VideoItem | Path, reason: str) -> BadVideoError:
    if isinstance(item, VideoItem):
        return BadVideoError(f"cannot read video {item.path} (listed at {item.where}): {reason}", reason)
    return BadVideoError(f"cannot read video {item}: {reason}", reason)


def open_video(item: VideoItem | Path, threads: int = 1) -> decord.VideoReader:
    """A decord reader for ``item``; :class:`BadVideoError` if it cannot be opened."""
    path = item.path if isinstance(item, VideoItem) else Path(item)
    if not path.exists():
        raise _fail(item, "file not found")
    if path.is_dir():
        raise _fail(item, "is a folder, not a video file")
    if path.stat().st_size == 0:
        raise _fail(item, "empty file")
    try:
        # decord logs its own C++ line on fd 2 before raising; the error below says it in one line.
        with quiet_native_stderr():
            reader = decord.VideoReader(str(path), num_threads=threads)
    except Exception as exc:  # decord raises RuntimeError, DECORDError or AssertionError
        raise _fail(item, f"not a readable video ({_short(exc)})") from None
    if len(reader) < 1:
        raise _fail(item, "no frames")
    return reader


def read_frames(reader: decord.VideoReader, indices: Sequence[int], item: VideoItem | Path) -> Tensor:
    """Frames ``indices`` as ``[N, H, W, 3]`` uint8 (decord decodes a repeated index once)."""
    try:
        with decord.bridge.use_torch():
            frames = reader.get_batch(list(indices))
    except Exception as exc:
        raise _fail(item, f"decoding failed ({_short(exc)})") from None
    if not isinstance(frames, Tensor):  # pragma: no cover - bridge unavailable
        frames = torch.from_numpy(frames.asnumpy())
    return frames


def probe(item: VideoItem | Path, *, full: bool = False, threads: int = 1) -> VideoInfo:
    """Open a video and decode its first and last frames (every frame with ``full``)."""
    reader = open_video(item, threads)
    n = len(reader)
    indices = list(range(n)) if full else sorted({0, n // 2, n - 1})
    frames = read_frames(reader, indices, item)
    try:
        fps = float(reader.get_avg_fps())
    except Exception:  # some containers carry no rate
        fps = float("nan")
    return VideoInfo(frames=n, height=int(frames.shape[1]), width=int(frames.shape[2]), fps=fps)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Hide what native code (decord's logger) writes to fd 2, e.g. while checking a list."""
    fd = 2  # native code writes to the descriptor, whatever Python's sys.stderr is now
    sys.stderr.flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no stderr at all: nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
