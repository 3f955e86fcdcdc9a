"""Progress reporting for long engine work, decoupled from the engine.

The engine calls a plain ``progress(event)`` hook; :class:`RichProgress` is the hook the CLI
passes (a rich bar per epoch on stderr), and a study can pass its own or none. The bar is off
when stderr is not a terminal, so CI logs stay clean.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """One tick of work: ``step`` of ``steps`` done in the current phase."""

    phase: str  # "train" or "eval"
    step: int
    steps: int
    epoch: int = 0  # 1-based while training; 0 in a stand-alone evaluation
    epochs: int = 0
    loss: float | None = None
    clips_per_s: float | None = None


ProgressHook = Callable[[ProgressEvent], None]


class RichProgress:
    """A rich progress bar per phase (each epoch, each evaluation) on stderr.

    Use as a context manager; ``enabled=False`` (``--quiet``, not a terminal, not rank 0)
    makes every call a no-op.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else (enabled and sys.stderr.isatty())
        self._progress = None
        self._task = None
        self._key: tuple | None = None

    def __enter__(self) -> RichProgress:
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            from vattn_cli.report.tables import stderr_console

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(), console=stderr_console, transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __call__(self, event: ProgressEvent) -> None:
        if self._progress is None:
            return
        key = (event.phase, event.epoch)
        if key != self._key:
            self._key = key
            label = f"epoch {event.epoch}/{event.epochs}" if event.phase == "train" else (
                f"val {event.epoch}/{event.epochs}" if event.epoch else "eval")
            self._task = self._progress.add_task(label, total=event.steps, info="")
        parts = []
        if event.loss is not None:
            parts.append(f"loss {event.loss:.4f}")
        if event.clips_per_s is not None:
            parts.append(f"{event.clips_per_s:.1f} clips/s")
        self._progress.update(self._task, completed=event.step, total=event.steps, info="  ".join(parts))
