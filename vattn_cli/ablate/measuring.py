"""Measurement sweeps (``profile``, ``ablate tokens``) through the run executor.

The same rows as :func:`vattn_cli.measure.sweep`, whichever launcher runs them: each setting is a
``measure`` job (:func:`vattn_cli.ablate.jobs.measure_job`); FLOP counts are shared between
settings of one geometry (those jobs run one at a time, each handed the count the first made);
``mfu`` is filled in here from the peak. With ``jobs > 1`` the rows carry ``concurrent``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vattn_cli.ablate.executor import CONCURRENT_COLUMN, Job, Launch, execute
from vattn_cli.ablate.jobs import FLOPS_KEY, measure_job, with_flops
from vattn_cli.errors import UsageError


def with_concurrent(path: Path, columns: list[str], launch: Launch, *, timed: bool = True,
                    resume: bool = True) -> list[str]:
    """``columns`` with :data:`CONCURRENT_COLUMN` at the end where rows are (or were) measured beside
    other jobs; unchanged when every row is timed alone (today's files stay as they were).

    Resuming a file begun one job at a time with several at once would mix rows timed alone with
    rows timed under sharing, unmarked: refused where anything is timed.
    """
    shared = launch.concurrent > 1
    if CONCURRENT_COLUMN in columns:
        return list(columns)
    header = header_of(path) if resume else None
    if header is not None and CONCURRENT_COLUMN in header:
        return list(columns) + [CONCURRENT_COLUMN]
    if header is not None and shared and timed:
        raise UsageError(f"{path} was begun with one job at a time (its rows were timed alone); resume it with "
                         "--jobs 1, or choose another --out")
    return list(columns) + [CONCURRENT_COLUMN] if shared and header is None else list(columns)


def header_of(path: Path) -> list[str] | None:
    """The complete header line of a CSV, or None (no file, or a torn header)."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            first = fh.readline()
    except OSError:
        return None
    return next(csv.reader([first]), []) if first.endswith("\n") else None


class _Bar:
    """A rich bar over the settings on stderr (off when not a terminal or ``--quiet``)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.progress = self.task = None
        if enabled and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from vattn_cli.report.tables import stderr_console

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=stderr_console)
            self.progress.start()
            self.task = self.progress.add_task("profile", total=total)

    def begin(self, job: Job) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=job.label)

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def measure_settings(
    settings: Sequence[Any],
    measures: Sequence[str],
    options: Any,
    launch: Launch,
    on_row: Callable[[dict[str, Any]], None],
    *,
    out: str | Path | None = None,
    peak_tflops: float | dict[str, float] | None = None,
    max_memory: int | None = None,
    timeout_s: float | None = None,
    isolate: bool = True,
    progress: bool = False,
    flops_cache: dict | None = None,
) -> list[dict[str, Any]]:
    """Measure ``settings`` with ``launch``; ``on_row(row)`` as each is ready; the rows, in plan order.

    ``flops_cache`` (keyed by :meth:`Setting.geometry`) keeps the forward FLOP counts made.
    """
    from vattn_cli.measure.flops import FlopCount
    from vattn_cli.measure.run import mfu

    if max_memory and not isolate:
        raise ValueError("max_memory needs isolate=True: a cap applies to a worker process")
    cache = flops_cache if flops_cache is not None else {}
    by_key = {}
    jobs = []
    for setting in settings:
        job = measure_job(setting, list(measures), options, max_memory=max_memory, timeout_s=timeout_s,
                          isolate=isolate)
        by_key[job.key] = setting
        jobs.append(job)
    rows: dict[str, dict[str, Any]] = {}
    bar = _Bar(progress, len(jobs))

    def refine(job: Job) -> Job:
        setting = by_key[job.key]
        return with_flops(job, cache.get(setting.geometry())) if job.group is not None else job

    def finished(job: Job, row: dict[str, Any]) -> None:
        setting = by_key[job.key]
        counted = row.pop(FLOPS_KEY, None)
        if counted is not None and job.group is not None:
            cache[setting.geometry()] = FlopCount(**counted) if isinstance(counted, dict) else counted
        if peak_tflops is None:
            row.pop("mfu", None)
        else:
            peak = peak_tflops.get(setting.dtype) if isinstance(peak_tflops, dict) else peak_tflops
            row["mfu"] = mfu(row.get("gflops"), row.get("throughput"), setting.mode, peak, includes_backward=True)
        rows[job.key] = row
        on_row(row)
        bar.advance()

    try:
        execute(jobs, launch, finished, refine=refine, out=out, on_start=bar.begin)
    finally:
        bar.stop()
    return [rows[j.key] for j in jobs if j.key in rows]


def run_measurements(settings: Sequence[Any], measures: Sequence[str], options: Any, launch: Launch, rowlog: Any,
                     **kwargs: Any) -> int:
    """:func:`measure_settings` into a :class:`~vattn_cli.report.rowlog.RowLog`; how many rows were measured."""
    from vattn_cli.measure.setting import csv_cells

    return len(measure_settings(settings, measures, options, launch, lambda row: rowlog.append(csv_cells(row)),
                                **kwargs))
