"""Flags of the commands that measure (``profile``, ``ablate tokens``): declared and parsed once.

Each flag is an ``Annotated`` type, so a command declares ``warmup: Warmup = 1`` and picks its
own default while the name, bounds and help text stay the same everywhere.
:func:`parse_measure_flags` turns the raw values into what :func:`vattn_cli.measure.sweep` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Optional

import torch
import typer

from vattn_cli.commands._options import choice_list, resolve_device, seed_everything
from vattn_cli.errors import UsageError

Mode = Annotated[str, typer.Option("--mode", help="infer (forward) or train (forward+backward+AdamW step).")]
Measure = Annotated[str, typer.Option("--measure", help="params,flops,latency,memory or 'all'.")]
Warmup = Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs before timing.")]
Repeats = Annotated[str, typer.Option("--repeats", help="Timed runs: N, or 'auto' to fill --time-budget.")]
TimeBudget = Annotated[float, typer.Option(
    "--time-budget", min=0.0, help="Seconds of timed runs for --repeats auto (at least 3 runs).")]
MaxMemory = Annotated[Optional[str], typer.Option(
    "--max-memory", help="Cap per combination, e.g. 500MB, 2GB: past it the row is status=oom.")]
Threads = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="CPU threads per worker (default: torch's, one per core); 1 is steadier on a busy machine.")]
Timeout = Annotated[Optional[float], typer.Option(
    "--timeout", min=1.0, help="Seconds per combination before its worker is stopped.")]
Isolate = Annotated[bool, typer.Option(
    "--isolate/--no-isolate", help="One worker process per combination (honest memory, survives OOM).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for weights and inputs.")]


@dataclass(frozen=True)
class MeasureFlags:
    """The parsed measurement flags: where, what, how, and the memory cap."""

    device: torch.device
    measures: list[str]
    options: object  # vattn_cli.measure.RunOptions (imported lazily: keeps `vattn --help` fast)
    max_memory: int | None


def parse_measure_flags(*, device: str, measure: str, warmup: int, repeats: str, time_budget: float,
                        seed: int, threads: int | None, max_memory: str | None, isolate: bool) -> MeasureFlags:
    """Validate the shared flags (one-line :class:`UsageError` naming the flag) and seed everything."""
    from vattn_cli import measure as m

    torch_device = resolve_device(device)
    measures = choice_list("--measure", measure, list(m.MEASURES))
    options = m.RunOptions(warmup=warmup, repeats=m.parse_repeats(repeats), budget_s=time_budget, seed=seed,
                           threads=threads)
    cap = m.parse_size(max_memory)
    if cap and not isolate:
        raise UsageError("--max-memory needs worker processes; drop --no-isolate")
    seed_everything(seed)
    return MeasureFlags(torch_device, measures, options, cap)
