"""``--data`` values: a video list, a folder of lists, or ``builtin:<task>``.

``builtin:motion`` and ``builtin:appearance`` are generated on first use into a cache folder
named by the task and a hash of the generator settings (so other settings never reuse a stale
set) and read from there afterwards. The folder is written whole or not at all
(:func:`~vattn_cli.data.synth.synthesize` renames a finished temporary folder), so a crash or
two ranks of a DDP job racing never leave half a dataset.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vattn_cli.data.lists import VideoItem, read_label_file, read_list
from vattn_cli.data.synth import TASKS, SynthConfig, synthesize
from vattn_cli.errors import UsageError, one_of

BUILTIN = "builtin:"
SPLITS = ("train", "val", "test")
#: Names a list may have inside a folder given as ``--data``.
LIST_NAMES = ("{split}.csv", "{split}.txt", "{split}.list", "{split}list.txt", "{split}.json")


@dataclass
class DataSpec:
    """A resolved split: its videos, how many classes, and where it came from."""

    name: str
    items: list[VideoItem]
    num_classes: int
    class_names: list[str] | None = None
    root: Path | None = None
    split: str = "train"
    list_path: Path | None = None
    #: For builtin sets, the generator's meta.json (settings, ``reversal_pairs``); else {}.
    meta: dict[str, Any] = field(default_factory=dict)


def cache_root() -> Path:
    """``$VATTN_CACHE``, else ``$XDG_CACHE_HOME/vattn``, else ``~/.cache/vattn``."""
    if os.environ.get("VATTN_CACHE"):
        return Path(os.environ["VATTN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vattn"


def builtin_dir(task: str, *, cache_dir: str | Path | None = None, **synth_kwargs: Any) -> Path:
    """The folder of builtin ``task`` with these generator settings, generated if missing."""
    if task not in TASKS:
        raise one_of("--data", f"{BUILTIN}{task}", [BUILTIN + t for t in TASKS])
    config = _config(synth_kwargs)
    base = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "builtin"
    folder = base / f"{task}-{config.digest()}"
    if not (folder / "meta.json").is_file():
        synthesize(task, folder, config)
    return folder


def _config(kwargs: dict[str, Any]) -> SynthConfig:
    known = {f.name for f in fields(SynthConfig)} - {"version"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise UsageError(f"unknown builtin data setting {unknown[0]!r}; accepted: {', '.join(sorted(known))}")
    config = SynthConfig(**kwargs)
    config.validate()
    return config


def resolve_data(
    spec: str, *, split: str = "train", root: str | Path | None = None, cache_dir: str | Path | None = None,
    label_file: str | Path | None = None, **synth_kwargs: Any,
) -> DataSpec:
    """Turn a ``--data`` value into a :class:`DataSpec` for ``split``.

    ``spec`` is ``builtin:motion`` / ``builtin:appearance`` (generated with ``synth_kwargs``:
    ``train``, ``val``, ``frames``, ``size``, ``seed``, ``glyphs``, ``fps``), a folder holding
    ``<split>.csv`` (or ``.txt``/``.list``/``.json``), or a list file (used whatever ``split``).
    Without ``label_file``, a ``classes.json`` beside the list names the classes.
    """
    if split not in SPLITS:
        raise one_of("split", split, SPLITS)
    spec = str(spec)
    meta: dict[str, Any] = {}
    if spec.startswith(BUILTIN):
        if split == "test":
            raise UsageError(f"{spec} has splits train and val, not test")
        folder = builtin_dir(spec[len(BUILTIN):], cache_dir=cache_dir, **synth_kwargs)
        list_path, name = folder / f"{split}.csv", spec
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        root = None
    else:
        if synth_kwargs:
            raise UsageError(f"generator settings ({', '.join(sorted(synth_kwargs))}) apply only to builtin data")
        list_path, name = _list_path(Path(spec).expanduser(), split), spec
    if label_file is None and (list_path.parent / "classes.json").is_file():
        label_file = list_path.parent / "classes.json"
    names = read_label_file(label_file) if label_file is not None else None
    items = read_list(list_path, root=root, label_file=label_file)
    num_classes = len(names) if names else max(item.label for item in items) + 1
    return DataSpec(name=name, items=items, num_classes=num_classes, class_names=names,
                    root=Path(root) if root is not None else list_path.parent, split=split,
                    list_path=list_path, meta=meta)


def find_list(folder: str | Path, split: str) -> Path | None:
    """The ``split`` list inside ``folder`` (``train.csv``, ``train.txt``, ...), if any."""
    for pattern in LIST_NAMES:
        candidate = Path(folder) / pattern.format(split=split)
        if candidate.is_file():
            return candidate
    return None


def _list_path(path: Path, split: str) -> Path:
    if path.is_dir():
        found = find_list(path, split)
        if found is not None:
            return found
        raise UsageError(f"--data {path} is a folder without a {split} list ({split}.csv, {split}.txt, ...)")
    if not path.exists():
        builtins = ", ".join(BUILTIN + t for t in TASKS)
        raise UsageError(f"--data {path} does not exist; expected a video list, a folder of lists, or {builtins}")
    return path
