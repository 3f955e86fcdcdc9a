"""Two rich bars for a study of training runs: one over the runs, one for the current run's
epoch (or evaluation), fed by the engine's ``progress(event)`` hook. Off when stderr is not a
terminal or ``enabled=False`` (``--quiet``)."""

from __future__ import annotations

import sys
from typing import Any

from vattn_cli.engine.progress import ProgressEvent


class StudyProgress:
    """``start(total, done)``, then per run ``begin(label)`` ... ``end()``; ``stop()`` at the end."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: Any = None
        self._overall: Any = None
        self._current: Any = None
        self._label = ""

    def start(self, total: int, done: int = 0) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from vattn_cli.report.tables import stderr_console

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=stderr_console)
        self._progress.start()
        self._overall = self._progress.add_task("runs", total=total, completed=done, info="")

    def begin(self, label: str) -> None:
        self._label = label
        if self._progress is not None:
            self._progress.update(self._overall, info=label)
            self._current = self._progress.add_task(label, total=1, info="")

    def __call__(self, event: ProgressEvent) -> None:
        if self._progress is None or self._current is None:
            return
        phase = f"epoch {event.epoch}/{event.epochs}" if event.phase == "train" else "eval"
        info = f"loss {event.loss:.3f}" if event.loss is not None else ""
        self._progress.update(self._current, description=f"  {phase}", completed=event.step, total=event.steps,
                              info=info)

    def end(self) -> None:
        if self._progress is not None:
            if self._current is not None:
                self._progress.remove_task(self._current)
                self._current = None
            self._progress.advance(self._overall)

    def finished(self, label: str) -> None:
        """A run finished elsewhere (a pool slot, a submitit job): advance the overall bar."""
        if self._progress is not None:
            self._progress.update(self._overall, info=label)
            self._progress.advance(self._overall)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
