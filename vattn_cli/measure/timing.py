"""Wall-clock timing of one step: warm-up runs, then repeats; median and IQR.

CPU: ``time.perf_counter`` around each run. CUDA: a pair of ``torch.cuda.Event`` per run and a
synchronisation at the end (events time the GPU's work, not the launch). The median and the
inter-quartile range resist the odd slow run that a shared machine produces; the mean does not.

``repeats="auto"`` works like ``timeit``'s autorange: the warm-up runs say how long one run
takes, and the repeats fill a time budget, between a floor (enough for quartiles) and a ceiling.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vattn_cli.measure.parsing import parse_repeats  # noqa: F401 (torch-free home, re-exported)

#: ``--repeats auto`` bounds: at least this many runs (quartiles need a few) and at most this.
AUTO_MIN_REPEATS = 3
AUTO_MAX_REPEATS = 200


@dataclass
class Timing:
    """Per-run times of one step, in seconds, and their summary."""

    times_s: list[float]
    batch: int
    warmup_s: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.times_s)

    @property
    def samples_ms(self) -> list[float]:
        """Every timed run, in ms, in the order they ran (the ``latency_samples_ms`` column)."""
        return [1e3 * t for t in self.times_s]

    @property
    def iqr_ms(self) -> float:
        if len(self.times_s) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times_s, n=4, method="inclusive")
        return 1e3 * (q3 - q1)

    @property
    def throughput(self) -> float:
        """Clips per second: batch / median step time."""
        return self.batch / (self.median_ms / 1e3)

    @property
    def total_s(self) -> float:
        """Time spent in the timed runs (the command's overhead is the rest)."""
        return sum(self.times_s)


def auto_repeats(one_run_s: float, budget_s: float) -> int:
    """How many runs fill ``budget_s``, given one takes ``one_run_s`` (timeit's autorange idea)."""
    if one_run_s <= 0:
        return AUTO_MAX_REPEATS
    return max(AUTO_MIN_REPEATS, min(AUTO_MAX_REPEATS, math.floor(budget_s / one_run_s)))


def _cpu_clock(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _cuda_clock(step: Callable[[], object]) -> float:  # untested here: no GPU on CI
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


def time_step(
    step: Callable[[], object],
    device: torch.device | str = "cpu",
    warmup: int = 1,
    repeats: int | str = "auto",
    budget_s: float = 5.0,
    batch: int = 1,
) -> Timing:
    """Run ``step`` ``warmup`` times untimed-for-stats, then ``repeats`` timed runs.

    With ``repeats="auto"`` at least one warm-up runs (it measures the run length).
    """
    clock = _cuda_clock if torch.device(device).type == "cuda" else _cpu_clock
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    warm = [clock(step) for _ in range(max(warmup, 1 if repeats == "auto" else 0))]
    if repeats == "auto":
        repeats = auto_repeats(min(warm), budget_s)
    times = [clock(step) for _ in range(int(repeats))]
    return Timing(times_s=times, batch=batch, warmup_s=warm)
