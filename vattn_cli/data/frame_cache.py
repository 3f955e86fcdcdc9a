"""Decoded frames of the built-in videos, kept as arrays beside them: decode once per install.

A study trains dozens of runs for several epochs each on the same few hundred built-in clips;
decoding every clip again every epoch was a large share of a run on a 2-core CPU (issue 20's
measurement is in ``benchmarks/`` notes). The built-in folders are written whole by
:mod:`vattn_cli.data.synth` under a name hashed from their settings and never change in place,
so a video's decoded frames can be kept next to it for good: ``FOLDER/frames/<video path>.npy``,
``[N, H, W, 3]`` uint8, every frame. Clip sampling then indexes that array exactly as it would
have indexed the decoder's output (the videos are intra-only, so decoding all frames and picking
some gives the same pixels as decoding just those; a test checks it).

Only folders that :mod:`~vattn_cli.data.synth` wrote (``meta.json`` with ``vattn_synth``) are
cached: nothing is ever written beside a user's videos. A cache file is written to a temporary
name and renamed, so concurrent study processes may race to write one safely; any file that
does not load (torn by a power cut, another version) is treated as missing and rewritten.
``VATTN_FRAME_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

FOLDER = "frames"


def enabled() -> bool:
    return os.environ.get("VATTN_FRAME_CACHE", "1") not in ("0", "false", "no", "")


@lru_cache(maxsize=64)
def synth_root(video_dir: str) -> Path | None:
    """The built-in folder holding the videos of ``video_dir`` (``ROOT/videos/<split>``), or None."""
    for candidate in (Path(video_dir).parent.parent, Path(video_dir).parent):
        try:
            meta = json.loads((candidate / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and "vattn_synth" in meta:
            return candidate
    return None


def cache_path(video: Path) -> Path | None:
    """Where ``video``'s frames are kept, or None when it is not a built-in video (or caching is off)."""
    if not enabled():
        return None
    video = Path(video)
    root = synth_root(str(video.parent.resolve()))
    if root is None:
        return None
    try:
        rel = video.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return root / FOLDER / rel.with_suffix(".npy")


def load(path: Path) -> np.ndarray | None:
    """The cached frames, or None when absent or unreadable (then the caller decodes and stores)."""
    try:
        frames = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return frames if frames.ndim == 4 and frames.dtype == np.uint8 and frames.shape[-1] == 3 else None


def store(path: Path, frames: np.ndarray) -> None:
    """Write ``frames`` to ``path`` atomically (temporary file, rename); a failure only costs the cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.ascontiguousarray(frames, dtype=np.uint8), allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        try:
            Path(tmp).unlink(missing_ok=True)  # type: ignore[possibly-undefined]
        except (OSError, NameError):
            pass
