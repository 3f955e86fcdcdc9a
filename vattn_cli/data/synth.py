"""The built-in benchmark: small real mp4 videos that separate attention schemes.

Two tasks, each a folder with ``videos/``, ``train.csv``/``val.csv`` (``path,label`` under a
header), ``classes.json`` (class names in id order) and ``meta.json`` (the settings, counts and
the motion task's reversal pairs):

- ``appearance``: one large object; the label is what it is (glyph x colour) and its motion is
  a nuisance. A single frame answers it, so space-only attention is enough.
- ``motion``: the label is how a coloured disc moves (right/left, down/up, edge to edge), with
  a small grey distractor drifting at random. Each pair of classes are exact
  time reversals: a clip of the second class *is* a clip of the first written backwards, so
  the two classes have the same distribution of frame sets and differ only in frame order. A
  model that cannot relate frames (space-only attention averages per-frame features) sits at
  chance within each pair; anything that attends across time can learn them.

Built to be learnable by a tiny ViT (dim 128, 4 blocks, 16 patches a frame) at 8 frames in
CPU minutes: objects a third of the frame wide and high-contrast, paths crossing two patches.
The motion task's val split comes in reversal pairs: video ``2j + 1`` is video ``2j`` written
backwards, with the partner class. A model blind to frame order gives both the same scores, so
it wins exactly one of the two on reversal-pair accuracy: it scores exactly 50%, not 50% give
or take the ten points that 96 independent clips would allow.

The videos have an odd number of frames (9 by default) so that test-time sampling stays
reversal-symmetric: uniform sampling takes the frame at the centre of each of ``T`` equal
segments, ``floor(n (i + 1/2) / T)``, and for odd ``n`` those indices are closed under
``k -> n - 1 - k`` for every ``T``, so the test clip of a reversed video is exactly the reversed
test clip. With an even count they are not (4 of 8 frames gives 1, 3, 5, 7, whose reversal is
0, 2, 4, 6): a clip and its reversal then show different frame sets, and a space-only model at
4 frames measured 60% within pairs on 96 val clips instead of chance.

Videos are written intra-only at a fixed quantiser, so every frame is coded alone at equal
quality: a reversed clip decodes to exactly the reversed frames (no compression cue to time's
arrow), and the bytes are the same for the same seed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np
import pandas as pd

from vattn_cli.errors import UsageError, one_of

#: Bump when the generator changes what it writes, so cached builtin sets are rebuilt.
SYNTH_VERSION = 3
TASKS = ("motion", "appearance")
GLYPH_SETS = ("shapes", "digits")
#: Chosen to differ inside a single 16-pixel patch (solid, hollow, bars), not only in outline,
#: which a tiny ViT learns far more slowly.
SHAPES = ("disc", "ring", "cross", "bars")
COLOURS = {"red": (235, 45, 45), "green": (40, 205, 70), "blue": (60, 115, 255), "yellow": (240, 215, 40)}
APPEARANCE_COLOURS = ("red", "blue")
DISTRACTOR_GREY = (110, 110, 110)
MOTION_CLASSES = ("moving right", "moving left", "moving down", "moving up")
#: Each pair: the second class is the first played backwards.
REVERSAL_PAIRS = ((0, 1), (2, 3))
SPLITS = ("train", "val")
_TASK_CODE = {"motion": 1, "appearance": 2}
_SPLIT_CODE = {"train": 1, "val": 2}


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides the generated videos (hashed into the cache folder's name)."""

    train: int = 288
    val: int = 96
    frames: int = 9  # odd: see the module's docstring
    size: int = 64
    seed: int = 0
    glyphs: str = "shapes"
    fps: int = 8
    version: int = field(default=SYNTH_VERSION)

    def validate(self) -> None:
        for name in ("train", "val"):
            if getattr(self, name) < 1:
                raise UsageError(f"invalid --{name} {getattr(self, name)}; expected an integer >= 1")
        if self.frames < 2:
            raise UsageError(f"invalid --frames {self.frames}; expected an integer >= 2 (motion needs two frames)")
        if self.size < 32 or self.size % 2:
            raise UsageError(f"invalid --size {self.size}; expected an even integer >= 32")
        if self.glyphs not in GLYPH_SETS:
            raise one_of("--glyphs", self.glyphs, GLYPH_SETS)
        if self.fps < 1:
            raise UsageError(f"invalid fps {self.fps}; expected an integer >= 1")

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


# --------------------------------------------------------------------------- glyphs


def _supersampled(size: int, inside: Callable[[np.ndarray, np.ndarray], np.ndarray], factor: int = 4) -> np.ndarray:
    """Alpha mask ``[size, size]`` in [0, 1] of a shape given as a test on unit coordinates."""
    n = size * factor
    c = (np.arange(n) + 0.5) / n
    yy, xx = np.meshgrid(c, c, indexing="ij")
    mask = inside(xx, yy).astype(np.float32)
    return mask.reshape(size, factor, size, factor).mean(axis=(1, 3))


def shape_mask(name: str, size: int) -> np.ndarray:
    r2 = lambda x, y: (x - 0.5) ** 2 + (y - 0.5) ** 2  # noqa: E731
    tests = {
        "disc": lambda x, y: r2(x, y) <= 0.47 ** 2,
        "ring": lambda x, y: (r2(x, y) <= 0.47 ** 2) & (r2(x, y) >= 0.27 ** 2),
        "cross": lambda x, y: ((np.abs(x - 0.5) <= 0.17) | (np.abs(y - 0.5) <= 0.17))
        & (np.abs(x - 0.5) <= 0.48) & (np.abs(y - 0.5) <= 0.48),
        # three horizontal bars with two gaps of the same height
        "bars": lambda x, y: (np.abs(x - 0.5) <= 0.45) & (y >= 0.04) & (y <= 0.96)
        & (((y - 0.04) * (2.5 / 0.92)) % 1.0 < 0.5),
    }
    return _supersampled(size, tests[name])


class Glyphs:
    """The objects: 4 drawn shapes, or scikit-learn's bundled handwritten digits."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "shapes":
            self.names = list(SHAPES)
            self._digits = None
        else:
            try:
                from sklearn.datasets import load_digits
            except ImportError:
                raise UsageError(
                    "--glyphs digits needs scikit-learn (pip install scikit-learn), which ships the "
                    "handwritten digits; or use --glyphs shapes"
                ) from None
            data = load_digits()
            self.names = [str(d) for d in range(10)]
            self._digits = (np.asarray(data.images, dtype=np.float32) / 16.0, np.asarray(data.target))

    def mask(self, glyph: int, size: int, rng: np.random.Generator, split: str) -> np.ndarray:
        if self._digits is None:
            return shape_mask(self.names[glyph], size)
        images, targets = self._digits
        pool = np.flatnonzero(targets == glyph)
        pool = pool[0::2] if split == "train" else pool[1::2]  # val handwriting is unseen in train
        image = images[pool[rng.integers(len(pool))]]
        return _upscale(image, size)


def _upscale(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upscale of an 8x8 digit to ``size``, contrast stretched to a solid stroke."""
    n = image.shape[0]
    coords = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    lo = np.floor(coords).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = coords - lo
    rows = image[lo] * (1 - w)[:, None] + image[hi] * w[:, None]
    out = rows[:, lo] * (1 - w)[None, :] + rows[:, hi] * w[None, :]
    return np.clip((out - 0.15) * 1.6, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- rendering


def _paste(frame: np.ndarray, alpha: np.ndarray, colour: tuple[int, int, int], top: int, left: int) -> None:
    """Alpha-blend a glyph into ``frame`` (float HxWx3) at ``top, left``, clipped to the frame."""
    h, w = frame.shape[:2]
    s = alpha.shape[0]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + s, h), min(left + s, w)
    if y0 >= y1 or x0 >= x1:
        return
    a = alpha[y0 - top:y1 - top, x0 - left:x1 - left, None]
    region = frame[y0:y1, x0:x1]
    region *= 1 - a
    region += a * np.asarray(colour, dtype=np.float32)


def _render(cfg: SynthConfig, background: float, layers: list[tuple[np.ndarray, tuple, np.ndarray]]) -> np.ndarray:
    """Frames ``[F, S, S, 3]`` uint8; each layer is (alpha, colour, top-left positions [F, 2])."""
    frames = np.full((cfg.frames, cfg.size, cfg.size, 3), background, dtype=np.float32)
    for t in range(cfg.frames):
        for alpha, colour, path in layers:
            _paste(frames[t], alpha, colour, int(round(path[t, 0])), int(round(path[t, 1])))
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _linear(rng: np.random.Generator, cfg: SynthConfig, s: int, max_travel: float) -> np.ndarray:
    """Top-left positions along a random straight path that stays inside the frame."""
    free = cfg.size - s
    start = rng.uniform(0, free, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    travel = rng.uniform(0.3, 1.0) * max_travel
    end = np.clip(start + travel * np.array([math.sin(angle), math.cos(angle)]), 0, free)
    u = np.linspace(0.0, 1.0, cfg.frames)[:, None]
    return start + (end - start) * u


def _motion_path(kind: int, rng: np.random.Generator, cfg: SynthConfig, s: int) -> np.ndarray:
    """Forward path of motion pair ``kind`` (0 rightwards, 1 downwards): edge to edge, so the
    object sits at one side early and at the other late, in whichever frames are sampled."""
    size, u = cfg.size, np.linspace(0.0, 1.0, cfg.frames)
    travel = 0.6 * size  # over two 16-pixel patches at 64 pixels
    along = rng.uniform(0, max(size - s - travel, 0)) + travel * u
    across = np.full_like(u, rng.uniform(0, size - s))
    return np.stack([across, along] if kind == 0 else [along, across], axis=1)


def make_clip(task: str, label: int, rng: np.random.Generator, cfg: SynthConfig, glyphs: Glyphs,
              split: str) -> np.ndarray:
    """The frames of one clip of class ``label``, ``[F, S, S, 3]`` uint8."""
    background = float(rng.uniform(0, 40))
    s = int(round(cfg.size * rng.uniform(0.31, 0.37)))
    if task == "appearance":
        glyph, colour = divmod(label, len(APPEARANCE_COLOURS))
        alpha = glyphs.mask(glyph, s, rng, split)
        return _render(cfg, background, [(alpha, COLOURS[APPEARANCE_COLOURS[colour]],
                                          _linear(rng, cfg, s, 0.5 * cfg.size))])
    kind, backwards = divmod(label, 2)
    # The target is always a disc (its colour varies): its look carries no label, and a fixed
    # shape lets a small model find it quickly and spend its training on the motion.
    alpha = shape_mask("disc", s)
    colour = COLOURS[list(COLOURS)[int(rng.integers(len(COLOURS)))]]
    path = _motion_path(kind, rng, cfg, s)
    ds = int(round(cfg.size * 0.18))
    distractor = shape_mask(SHAPES[int(rng.integers(len(SHAPES)))], ds)
    frames = _render(cfg, background, [(distractor, DISTRACTOR_GREY, _linear(rng, cfg, ds, 0.4 * cfg.size)),
                                       (alpha, colour, path)])
    # The backward class is the forward clip written in reverse: same frames, other order.
    return np.ascontiguousarray(frames[::-1]) if backwards else frames


def class_names(task: str, glyphs: Glyphs) -> list[str]:
    if task == "motion":
        return list(MOTION_CLASSES)
    return [f"{colour} {glyph}" for glyph in glyphs.names for colour in APPEARANCE_COLOURS]


# --------------------------------------------------------------------------- writing


def video_codec() -> str:
    """libx264 where PyAV's FFmpeg has it, else FFmpeg's own mpeg4 encoder."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8) -> None:
    """Write ``[F, H, W, 3]`` uint8 frames as an intra-only yuv420p mp4 at a fixed quantiser."""
    codec = video_codec()
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        ctx = stream.codec_context
        ctx.gop_size = 1  # every frame a keyframe: frames coded alone, fast random access
        ctx.thread_count = 1  # byte-for-byte repeatable output
        if codec == "libx264":
            stream.options = {"qp": "12", "preset": "veryfast", "x264-params": "keyint=1:scenecut=0:bframes=0"}
        else:
            stream.options = {"qscale": "2"}
            ctx.qscale = 2
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _balanced_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % classes)


def _reversal_paired_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Labels in reversal pairs: (2j, 2j+1) are a class and its reversal, pair kinds balanced."""
    kinds = _balanced_labels(n // 2 + n % 2, len(REVERSAL_PAIRS), rng)
    return np.array([REVERSAL_PAIRS[k][i % 2] for i, k in enumerate(np.repeat(kinds, 2))][:n])


def _write_task(task: str, out: Path, cfg: SynthConfig, glyphs: Glyphs, step: Callable[[], None]) -> list[dict]:
    names = class_names(task, glyphs)
    rows = []
    for split in SPLITS:
        count = getattr(cfg, split)
        folder = out / "videos" / split
        folder.mkdir(parents=True, exist_ok=True)
        label_rng = np.random.default_rng([cfg.seed, _TASK_CODE[task], _SPLIT_CODE[split]])
        paired = task == "motion" and split == "val"
        labels = _reversal_paired_labels(count, label_rng) if paired else _balanced_labels(count, len(names), label_rng)
        lines = ["path,label"]
        for i, label in enumerate(labels.tolist()):
            # A val pair (2j, 2j+1) shares its draws: the same clip forwards and backwards.
            rng = np.random.default_rng([cfg.seed, _TASK_CODE[task], _SPLIT_CODE[split], i // 2 if paired else i, 7])
            rel = f"videos/{split}/{i:05d}.mp4"
            write_mp4(out / rel, make_clip(task, label, rng, cfg, glyphs, split), cfg.fps)
            lines.append(f"{rel},{label}")
            step()
        (out / f"{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts = np.bincount(labels, minlength=len(names))
        rows += [{"task": task, "split": split, "label": k, "class": names[k], "videos": int(counts[k])}
                 for k in range(len(names))]
    meta = {"vattn_synth": task, **asdict(cfg), "codec": video_codec(), "classes": names,
            "reversal_pairs": [list(p) for p in REVERSAL_PAIRS] if task == "motion" else [],
            "counts": {split: getattr(cfg, split) for split in SPLITS}}
    (out / "classes.json").write_text(json.dumps(names, indent=1) + "\n", encoding="utf-8")
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return rows


def _is_synth_output(path: Path) -> bool:
    """Whether ``path`` holds only what synth writes (so ``--force`` may replace it)."""
    def one(p: Path) -> bool:
        try:
            return "vattn_synth" in json.loads((p / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
    if one(path):
        return True
    entries = list(path.iterdir())
    return bool(entries) and all(e.is_dir() and one(e) for e in entries)


def synthesize(
    task: str, out: str | Path, config: SynthConfig | None = None, *, force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Write the benchmark for ``task`` (``motion``, ``appearance`` or ``both``) into ``out``.

    Written into a temporary sibling folder and renamed into place, so ``out`` is never half a
    dataset. ``both`` puts each task in a subfolder. Returns the class balance, one row per
    task, split and class. ``progress(done, total)`` is called after every video.
    """
    tasks = list(TASKS) if task == "both" else [task]
    if task != "both" and task not in TASKS:
        raise one_of("--task", task, list(TASKS) + ["both"])
    cfg = config or SynthConfig()
    cfg.validate()
    glyphs = Glyphs(cfg.glyphs)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise UsageError(f"--out {out} exists and is not empty; pass --force to replace it")
        if not out.is_dir() or not _is_synth_output(out):
            raise UsageError(f"--out {out} holds files vattn did not write; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would stick to the renamed folder
    total, done = len(tasks) * (cfg.train + cfg.val), 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    try:
        rows = []
        for name in tasks:
            folder = tmp if len(tasks) == 1 else tmp / name
            folder.mkdir(exist_ok=True)
            rows += _write_task(name, folder, cfg, glyphs, step)
        _move_into_place(tmp, out, replace=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return pd.DataFrame(rows)


def _move_into_place(tmp: Path, out: Path, replace: bool) -> None:
    """Rename ``tmp`` to ``out``; an ``out`` that appeared meanwhile wins unless ``replace``."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    try:
        os.rename(tmp, out)  # atomic; fails if out exists and is not empty
        return
    except OSError:
        if not replace:  # another process finished the same set first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
