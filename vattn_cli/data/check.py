"""``vattn data check``: open every video of a list and say which cannot be read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from vattn_cli.data.lists import VideoItem
from vattn_cli.data.resolve import BUILTIN, SPLITS, find_list, resolve_data
from vattn_cli.data.video import BadVideoError, probe, quiet_native_stderr
from vattn_cli.errors import UsageError

COLUMNS = ["list", "line", "path", "label", "status", "frames", "width", "height", "fps", "reason"]

Progress = Callable[[int, int], None]


def check_items(
    items: Sequence[VideoItem], *, full: bool = False, threads: int = 1, progress: Progress | None = None,
) -> pd.DataFrame:
    """One row per video: ``status`` ``ok`` or ``bad`` with the ``reason``.

    Opens each video and decodes its first, middle and last frames (every frame with
    ``full``): a broken index fails to open, a truncated or damaged stream fails to decode.
    """
    rows = []
    for done, item in enumerate(items, start=1):
        row = {"list": item.source, "line": item.line, "path": str(item.path), "label": item.label}
        try:
            with quiet_native_stderr():  # decord logs failures itself; the table says it better
                info = probe(item, full=full, threads=threads)
            row.update(status="ok", frames=info.frames, width=info.width, height=info.height,
                       fps=round(info.fps, 3), reason="")
        except BadVideoError as exc:
            row.update(status="bad", frames=None, width=None, height=None, fps=None, reason=exc.reason)
        rows.append(row)
        if progress:
            progress(done, len(items))
    return pd.DataFrame(rows, columns=COLUMNS)


def check_data(
    data: str, *, split: str | None = None, root: str | None = None, label_file: str | None = None,
    full: bool = False, threads: int = 1, progress: Progress | None = None,
) -> pd.DataFrame:
    """Check a list file, or every split of a folder of lists or a builtin set (or ``split``)."""
    splits = [split] if split else ["train"]
    if split is None and (data.startswith(BUILTIN) or Path(data).is_dir()):
        splits = [s for s in SPLITS if _has_split(data, s)]
        if not splits:
            raise UsageError(f"{data} is a folder without lists (train.csv, val.csv, ...)")
    items = [item for s in splits
             for item in resolve_data(data, split=s, root=root, label_file=label_file).items]
    if threads < 0:
        raise UsageError(f"invalid --threads {threads}; expected an integer >= 0 (0: decord decides)")
    return check_items(items, full=full, threads=threads, progress=progress)


def _has_split(data: str, split: str) -> bool:
    if data.startswith(BUILTIN):
        return split != "test"
    return find_list(data, split) is not None
