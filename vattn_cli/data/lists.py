"""Video lists: which files make a split, and their labels.

Accepted, one video a line (the formats of MMAction2, PySlowFast and plain CSV):

- ``path label`` separated by whitespace (Kinetics/MMAction2; PySlowFast's ``train.csv`` is
  this too, despite its name),
- ``path,label`` CSV, optionally under a header row (``path,label``; with a header the columns
  may come in any order and extra columns are ignored),
- a Something-Something-v2 JSON list (``[{"id": "78687", "template": "Holding [something] ..."}]``),
  whose videos are ``<id>.webm`` and whose labels are templates mapped through ``labels.json``.

Labels are non-negative integers, or class names mapped through a label file: SSv2's
``labels.json`` (``{"name": "id"}``), a JSON list of names, or a text file with one name a line.
Empty lines and ``#`` comments are skipped; anything else malformed is a
:class:`~vattn_cli.errors.UsageError` naming ``file:line``, because a silently dropped line
is a silently wrong benchmark.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from vattn_cli.errors import UsageError

#: Header cells that mark a first row as a header rather than a video.
PATH_HEADERS = {"path", "video", "video_path", "filename", "file", "name", "clip"}
LABEL_HEADERS = {"label", "labels", "label_id", "class", "class_id", "target", "category"}

EXPECTED = "expected 'path label' (whitespace) or 'path,label' (CSV)"


@dataclass(frozen=True)
class VideoItem:
    """One video of a list: its resolved path, integer label and where it was listed."""

    path: Path
    label: int
    line: int
    source: str

    @property
    def where(self) -> str:
        """``list:line``, for error messages that let the user fix the list."""
        return f"{self.source}:{self.line}"


def read_label_file(path: str | Path) -> list[str]:
    """Class names in id order from SSv2 ``labels.json``, a JSON list, or one name a line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"label file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(data, list):
            if not all(isinstance(name, str) for name in data):
                raise UsageError(f"{path}: a JSON label file that is a list must hold class names (strings)")
            names = list(data)
        elif isinstance(data, dict):
            names = _names_from_ids(path, data)
        else:
            raise UsageError(f"{path}: expected a JSON object {{name: id}} or a list of names")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UsageError(f"{path}: class name {dup!r} appears twice")
    if not names:
        raise UsageError(f"{path}: no class names")
    return names


def _names_from_ids(path: Path, data: dict) -> list[str]:
    ids: dict[int, str] = {}
    for name, value in data.items():
        try:
            idx = int(value)
        except (TypeError, ValueError):
            raise UsageError(f"{path}: id {value!r} of class {name!r} is not an integer") from None
        if idx in ids:
            raise UsageError(f"{path}: id {idx} is given to both {ids[idx]!r} and {name!r}")
        ids[idx] = str(name)
    if sorted(ids) != list(range(len(ids))):
        raise UsageError(f"{path}: class ids must be 0..{len(ids) - 1} without gaps")
    return [ids[i] for i in range(len(ids))]


def read_list(
    path: str | Path, root: str | Path | None = None, label_file: str | Path | None = None
) -> list[VideoItem]:
    """Read a video list into items with absolute paths and integer labels.

    Relative video paths are taken from ``root`` when given, else from the list's folder (so a
    list and its videos can move together). Files are not opened here: ``vattn data check``
    and the dataset report unreadable videos with the list line.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"video list {path} does not exist")
    base = Path(root) if root is not None else path.parent
    if root is not None and not base.is_dir():
        raise UsageError(f"--root {base} is not a folder")
    names = read_label_file(label_file) if label_file is not None else None
    lookup = {name: i for i, name in enumerate(names)} if names else {}
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        rows = _json_rows(path, text, names is not None)
    else:
        rows = _text_rows(path, text)
    items = []
    for line, rel, label_text in rows:
        label = _label(path, line, label_text, lookup, len(names) if names else None)
        video = Path(rel).expanduser()
        items.append(VideoItem(path=video if video.is_absolute() else base / video, label=label,
                               line=line, source=str(path)))
    if not items:
        raise UsageError(f"video list {path} lists no videos")
    return items


def _text_rows(path: Path, text: str) -> list[tuple[int, str, str]]:
    """``(line, path, label)`` for every video line of a whitespace or CSV list."""
    rows: list[tuple[int, str, str]] = []
    columns: tuple[int, int] | None = None  # (path, label) positions, from a CSV header
    width = 2
    is_csv: bool | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if is_csv is None:  # the first video line decides the format for the whole file
            is_csv = "," in stripped
        fields = next(csv.reader([stripped])) if is_csv else stripped.split()
        fields = [f.strip() for f in fields]
        first_row = not rows and columns is None
        if first_row and _is_header(fields):
            columns, width = _header_columns(fields)
            continue
        if len(fields) != width or not all(fields):
            raise UsageError(f"{path}:{number}: malformed line {stripped!r}; {EXPECTED}")
        p, lab = (fields[columns[0]], fields[columns[1]]) if columns else (fields[0], fields[1])
        rows.append((number, p, lab))
    return rows


def _is_header(fields: list[str]) -> bool:
    lowered = {f.lower() for f in fields}
    return bool(lowered & PATH_HEADERS) and bool(lowered & LABEL_HEADERS)


def _header_columns(fields: list[str]) -> tuple[tuple[int, int], int]:
    lowered = [f.lower() for f in fields]
    p = next(i for i, f in enumerate(lowered) if f in PATH_HEADERS)
    lab = next(i for i, f in enumerate(lowered) if f in LABEL_HEADERS)
    return (p, lab), len(fields)


def _json_rows(path: Path, text: str, have_labels: bool) -> list[tuple[int, str, str]]:
    """Rows of an SSv2-style JSON list; the 'line' is the entry's 1-based position."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise UsageError(f"{path}: a JSON video list must be a list of {{'id': ..., 'template': ...}} entries")
    rows = []
    for number, entry in enumerate(data, start=1):
        if not isinstance(entry, dict) or "id" not in entry:
            raise UsageError(f"{path}:{number}: entry {number} has no 'id'")
        if "template" in entry:  # SSv2: the class is the template with its brackets removed
            label = str(entry["template"]).replace("[", "").replace("]", "")
        elif "label" in entry:
            label = str(entry["label"])
        else:
            raise UsageError(f"{path}:{number}: entry {entry['id']!r} has no 'template' or 'label'")
        rel = str(entry.get("path") or f"{entry['id']}.webm")
        rows.append((number, rel, label))
    if rows and not have_labels and not all(r[2].isdigit() for r in rows):
        raise UsageError(f"{path}: labels are class names; pass the label file (SSv2: labels.json)")
    return rows


def _label(path: Path, line: int, text: str, lookup: dict[str, int], num_classes: int | None) -> int:
    if text in lookup:
        return lookup[text]
    try:
        label = int(text)
    except ValueError:
        hint = "it is not in the label file" if lookup else "pass a label file to map class names to ids"
        raise UsageError(f"{path}:{line}: label {text!r} is not an integer; {hint}") from None
    if label < 0:
        raise UsageError(f"{path}:{line}: label {label} is negative; expected an integer >= 0")
    if num_classes is not None and label >= num_classes:
        raise UsageError(f"{path}:{line}: label {label} is out of range; the label file has {num_classes} classes")
    return label
