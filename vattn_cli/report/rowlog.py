"""A CSV that a long study appends to row by row, so a killed run loses at most one row.

Each row is one ``write`` of a whole line, then flush and fsync: after a crash, a power cut or
SIGKILL the file holds every finished row and at most a torn last line (no newline yet), which
:meth:`RowLog.open` drops when resuming. The study's own results file is the resume log:
nothing else to keep in step.

Opening an existing file without ``resume`` is refused rather than overwritten: a sweep can
take hours, and the safe default never throws finished rows away.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vattn_cli.errors import UsageError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - not every platform opens directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _line(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return buffer.getvalue()


class RowLog:
    """``path`` with a fixed header ``columns``; :meth:`open` it, then :meth:`append` rows."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.torn = False  # whether opening dropped a partly written last line
        self._fh: io.TextIOWrapper | None = None

    def open(self, resume: bool = False) -> list[dict[str, str]]:
        """Create the file, or with ``resume`` continue it; returns the complete rows it holds.

        Raises :class:`UsageError` if the file exists and ``resume`` is false, or if its header
        is not ``columns`` (another study's file, or another version's).
        """
        rows: list[dict[str, str]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._create():  # it was there already (or another process made it first)
            if not resume:
                raise UsageError(f"{self.path} exists; pass --resume or choose another --out")
            rows = self._recover()
            if self.path.stat().st_size == 0:  # killed before the header was durable
                with open(self.path, "w", encoding="utf-8", newline="") as fh:
                    self._write_header(fh)
        self._fh = open(self.path, "a", encoding="utf-8", newline="")
        return rows

    def _write_header(self, fh: io.TextIOBase) -> None:
        fh.write(_line(self.columns))
        fh.flush()
        os.fsync(fh.fileno())
        _fsync_dir(self.path.parent)

    def _create(self) -> bool:
        """Create the file with its header, exclusively (``O_EXCL``): False if it already exists.

        Check-then-create would let two runs both see no file and both start it; with ``O_EXCL``
        exactly one creation succeeds and the other run takes the resume path (or is refused).
        """
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            self._write_header(fh)
        return True

    def _recover(self) -> list[dict[str, str]]:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # everything up to the last newline
        if len(complete) != len(data):
            self.torn = True
            with open(self.path, "r+b") as fh:  # cut the torn line so the next row starts clean
                fh.truncate(len(complete))
                fh.flush()
                os.fsync(fh.fileno())
        if not complete:  # killed while writing the header
            return []
        reader = csv.DictReader(io.StringIO(complete.decode("utf-8")))
        if list(reader.fieldnames or []) != self.columns:
            raise UsageError(f"{self.path} has other columns than this study writes; choose another --out")
        return list(reader)

    def append(self, row: dict[str, Any]) -> None:
        """Write one row (missing columns empty, extra keys ignored) and make it durable."""
        if self._fh is None:
            raise RuntimeError("RowLog.append before open")
        self._fh.write(_line([row.get(c) for c in self.columns]))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RowLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
