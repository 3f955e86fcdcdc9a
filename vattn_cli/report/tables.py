"""Render result frames: a rich table on stderr, CSV/JSON to a file or to stdout.

With ``--csv -`` or ``--json -`` stdout carries that data alone, so everything human goes to
stderr. Files are written atomically: a crash never leaves half a table behind.

pandas is imported only where a frame is handled, so commands can import this module at the top
and still start (``--help``, usage errors) without it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console

from vattn_cli.atomic import atomic_open

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from rich.table import Table

#: Console for everything meant for people when stdout carries data.
def _console(stderr: bool) -> Console:
    probe = Console(stderr=stderr)
    # Off a terminal (CI logs, pipes) rich would squeeze tables to 80 columns; keep them whole.
    return probe if probe.is_terminal else Console(stderr=stderr, width=220)


stderr_console = _console(stderr=True)
stdout_console = _console(stderr=False)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file, fsync and rename."""
    with atomic_open(path) as fh:
        fh.write(text.encode("utf-8"))


def _json_records(frame: pd.DataFrame) -> str:
    def clean(value: object) -> object:
        if isinstance(value, float) and math.isnan(value):
            return None
        if hasattr(value, "item"):
            return value.item()
        return value

    records = [{k: clean(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
    return json.dumps(records, indent=2) + "\n"


def write_frame(frame: pd.DataFrame, csv: str | None = None, json_path: str | None = None) -> None:
    """Write ``frame`` as CSV and/or JSON; ``-`` means stdout."""
    if csv:
        text = frame.to_csv(index=False)
        if csv == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            atomic_write_text(csv, text)
    if json_path:
        text = _json_records(frame)
        if json_path == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            atomic_write_text(json_path, text)


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        if abs(value) >= 1:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def rich_table(frame: pd.DataFrame, title: str | None = None, columns: Sequence[str] | None = None) -> Table:
    """A rich table of ``frame`` (optionally only ``columns``), numbers shortened for reading."""
    import pandas as pd
    from rich.table import Table

    cols = [c for c in (columns or frame.columns) if c in frame.columns]
    table = Table(title=title, header_style="bold")
    for col in cols:
        numeric = pd.api.types.is_numeric_dtype(frame[col])
        table.add_column(col, justify="right" if numeric else "left")
    for _, row in frame.iterrows():
        table.add_row(*(_fmt(row[c]) for c in cols))
    return table


def emit(
    frame: pd.DataFrame,
    csv: str | None = None,
    json_path: str | None = None,
    title: str | None = None,
    columns: Sequence[str] | None = None,
    quiet: bool = False,
) -> None:
    """Show ``frame`` to people and write the data files asked for.

    The table goes to stdout, unless stdout carries CSV/JSON (``-``): then it goes to stderr.
    """
    if not quiet:
        console = stderr_console if "-" in (csv, json_path) else stdout_console
        console.print(rich_table(frame, title=title, columns=columns))
    write_frame(frame, csv=csv, json_path=json_path)
