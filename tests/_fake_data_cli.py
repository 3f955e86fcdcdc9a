"""Run the ``vattn`` CLI with ``vattn_cli.data`` replaced by in-memory random clips.

Used by the subprocess tests (SIGKILL + resume, torchrun) so they exercise the real CLI and
engine without decoding videos: ``python tests/_fake_data_cli.py train --data random ...``.
Data specs: ``random`` (3 classes) or ``random:C`` (C classes); train split 24 clips, val 12
(``FAKE_CLIPS_TRAIN``/``FAKE_CLIPS_VAL`` change the counts, ``FAKE_NOISE`` the difficulty).
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _clips import RandomClips  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402


@dataclass
class DataSpec:
    items: list
    num_classes: int
    name: str
    class_names: list = field(default_factory=list)
    root: Path | None = None


def resolve_data(spec, *, split="train", root=None, cache_dir=None, label_file=None, **kwargs):
    name, _, classes = str(spec).partition(":")
    if name != "random":
        raise ValueError(f"fake data only knows 'random[:C]', got {spec!r}")
    c = int(classes or 3)
    n = int(os.environ.get("FAKE_CLIPS_TRAIN" if split == "train" else "FAKE_CLIPS_VAL", 24 if split == "train" else 12))
    return DataSpec(items=list(range(n)), num_classes=c, name=f"{spec}/{split}", class_names=[f"c{i}" for i in range(c)])


class VideoClipDataset(RandomClips):
    def __init__(self, items, *, frames, size, sampling="uniform", sample_rate=4, train, views=(1, 1), hflip=False,
                 skip_bad=False, threads=1, seed=0, num_classes=None):
        super().__init__(len(items), num_classes=num_classes or 3, frames=frames, size=size, train=train,
                         views=views, seed=seed, noise=float(os.environ.get("FAKE_NOISE", 0.5)))


def make_loader(dataset, *, batch_size, shuffle, workers=0, seed=0, drop_last=False, sampler=None, pin_memory=None):
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, drop_last=drop_last,
                      sampler=sampler)


_real_resolve = resolve_data


def _resolve_with_classes(spec, **kwargs):
    data = _real_resolve(spec, **kwargs)
    data.items = [("c", data.num_classes, i) for i in data.items]
    return data


class _Dataset(VideoClipDataset):
    def __init__(self, items, **kwargs):
        super().__init__(items, num_classes=items[0][1] if items else 3, **kwargs)


module = types.ModuleType("vattn_cli.data")
module.resolve_data = _resolve_with_classes
module.VideoClipDataset = _Dataset
module.make_loader = make_loader
module.DataSpec = DataSpec


def run_cli(argv: list[str]) -> int:
    """Run ``vattn argv`` in this process with the fake data; return the exit code."""
    saved = sys.modules.get("vattn_cli.data")
    sys.modules["vattn_cli.data"] = module
    try:
        from vattn_cli.cli import main

        main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    finally:
        if saved is None:
            sys.modules.pop("vattn_cli.data", None)
        else:
            sys.modules["vattn_cli.data"] = saved
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(sys.argv[1:]))
