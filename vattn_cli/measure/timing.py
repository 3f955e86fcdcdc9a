"""Wall-clock timing of one step: warm-up runs, then repeats; median and IQR.

CPU: ``time.perf_counter`` around each run. CUDA: a pair of ``torch.cuda.Event`` per run and a
synchronisation at the end (events time the GPU's work, not the launch). The median and the
inter-quartile range resist the odd slow run that a shared machine produces; the mean does not.

``repeats="auto"`` works like ``timeit``'s autorange: the warm-up runs say how long one run
takes, and the repeats fill a time budget, between a floor (enough for quartiles) and a ceiling.

On CPU each run's process CPU time is kept too (``time.process_time``: it does not count the time
spent waiting for a core on a busy machine), and with a ``reference`` workload
(:mod:`vattn_cli.measure.reference`) each timed run is followed by a few runs of it, so that
``vattn compare`` can judge the step in units of a reference measured in the same seconds.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vattn_cli.measure.parsing import parse_repeats  # noqa: F401 (torch-free home, re-exported)

#: The reference runs after each timed run take about this share of the step's CPU time (at least one).
REFERENCE_SHARE = 0.5
REFERENCE_MAX_UNITS = 16
#: ``--repeats auto`` bounds: at least this many runs (quartiles need a few) and at most this.
AUTO_MIN_REPEATS = 3
AUTO_MAX_REPEATS = 200


@dataclass
class Timing:
    """Per-run times of one step, in seconds, and their summary."""

    times_s: list[float]
    batch: int
    warmup_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # process CPU time of each timed run (CPU only)
    ref_cpu_s: list[float] = field(default_factory=list)  # CPU time of one reference run, after each timed run

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.times_s)

    @property
    def samples_ms(self) -> list[float]:
        """Every timed run, in ms, in the order they ran (the ``latency_samples_ms`` column)."""
        return [1e3 * t for t in self.times_s]

    @property
    def cpu_ms(self) -> float | None:
        """Median process CPU time of a timed run (None where not measured: CUDA)."""
        return 1e3 * statistics.median(self.cpu_s) if self.cpu_s else None

    @property
    def cpu_samples_ms(self) -> list[float]:
        """Every timed run's CPU time in ms, in order (the ``cpu_samples_ms`` column)."""
        return [1e3 * t for t in self.cpu_s]

    @property
    def ref_cpu_ms(self) -> float | None:
        """Median CPU time of one reference run (None without a reference)."""
        return 1e3 * statistics.median(self.ref_cpu_s) if self.ref_cpu_s else None

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


def _cpu_clocks(step: Callable[[], object], times: int = 1) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``times`` runs of ``step``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(times):
        step()
    return time.perf_counter() - wall, time.process_time() - cpu


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
    reference: Callable[[], object] | None = None,
) -> Timing:
    """Run ``step`` ``warmup`` times untimed-for-stats, then ``repeats`` timed runs.

    With ``repeats="auto"`` at least one warm-up runs (it measures the run length). On CPU every
    timed run's CPU time is kept; with ``reference``, each timed run is followed by ``units``
    reference runs (about :data:`REFERENCE_SHARE` of the step's CPU time), whose CPU time per
    run is kept beside it. The reference counts in ``budget_s``.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        warm = [_cuda_clock(step) for _ in range(max(warmup, 1 if repeats == "auto" else 0))]
        if repeats == "auto":
            repeats = auto_repeats(min(warm), budget_s)
        return Timing(times_s=[_cuda_clock(step) for _ in range(int(repeats))], batch=batch, warmup_s=warm)
    warm_runs = [_cpu_clocks(step) for _ in range(max(warmup, 1 if (repeats == "auto" or reference) else 0))]
    warm = [w for w, _ in warm_runs]
    units, one_ref = 0, 0.0
    if reference is not None:
        one_ref = min(_cpu_clocks(reference)[1] for _ in range(3))
        step_cpu = min(c for _, c in warm_runs)
        units = max(1, min(REFERENCE_MAX_UNITS, round(REFERENCE_SHARE * step_cpu / max(one_ref, 1e-9))))
    if repeats == "auto":
        repeats = auto_repeats(min(warm) + units * one_ref, budget_s)
    times, cpu, ref = [], [], []
    for _ in range(int(repeats)):
        wall_s, cpu_s = _cpu_clocks(step)
        times.append(wall_s)
        cpu.append(cpu_s)
        if units:
            ref.append(_cpu_clocks(reference, units)[1] / units)
    return Timing(times_s=times, batch=batch, warmup_s=warm, cpu_s=cpu, ref_cpu_s=ref)
