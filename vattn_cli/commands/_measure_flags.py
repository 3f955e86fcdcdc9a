"""Flags of the commands that measure (``profile``, ``ablate tokens``): declared and parsed once.

Each flag is an ``Annotated`` type with default None ("not given"), so a command declares
``warmup: Warmup = None`` and the library's :class:`~vattn_cli.measure.setting.RunOptions` (or
the study's own defaults) fills what is not given; help texts print those values, generated
from the same objects. :func:`parse_measure_flags` checks the raw values without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from vattn_cli.commands._options import choice_list, given
from vattn_cli.errors import UsageError
from vattn_cli.measure.parsing import parse_repeats, parse_size
from vattn_cli.measure.setting import DTYPES, MEASURES, MODES, SAMPLES_COLUMN, RunOptions, Setting
from vattn_cli.runtime import DEFAULT_DEVICE, DEVICES, check_device_name, resolve_device, seed_everything

if TYPE_CHECKING:  # pragma: no cover
    import torch

Mode = Annotated[Optional[str], typer.Option(
    "--mode", help=f"{' or '.join(MODES)}: forward, or forward+backward+AdamW step (default: {Setting.mode}).")]
Measure = Annotated[Optional[str], typer.Option(
    "--measure", help=f"{','.join(MEASURES)} or 'all' (default: all).")]
Warmup = Annotated[Optional[int], typer.Option(
    "--warmup", min=0, help=f"Untimed runs before timing (default: {RunOptions.warmup}).")]
Repeats = Annotated[Optional[str], typer.Option(
    "--repeats", help=f"Timed runs: N, or 'auto' to fill --time-budget (default: {RunOptions.repeats}).")]
MaxMemory = Annotated[Optional[str], typer.Option(
    "--max-memory", help="Cap per combination, e.g. 500MB, 2GB: past it the row is status=oom.")]
Threads = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="CPU threads per worker (default: torch's, one per core); 1 is steadier on a busy machine.")]
Timeout = Annotated[Optional[float], typer.Option(
    "--timeout", min=1.0, help="Seconds per combination before its worker is stopped.")]
Isolate = Annotated[bool, typer.Option(
    "--isolate/--no-isolate", help="One worker process per combination (honest memory, survives OOM).")]
Device = Annotated[Optional[str], typer.Option(
    "--device", help=f"{', '.join(DEVICES[:-1])} or {DEVICES[-1]} (default: {DEFAULT_DEVICE}).")]
Seed = Annotated[Optional[int], typer.Option(
    "--seed", help=f"Seed for weights and inputs (default: {RunOptions.seed}).")]


def time_budget_flag(default: float) -> Any:
    """The ``--time-budget`` flag of a command whose library default is ``default`` seconds."""
    return Annotated[Optional[float], typer.Option(
        "--time-budget", min=0.0, help=f"Seconds of timed runs for --repeats auto, at least 3 runs (default: {default:g}).")]


def samples_flag(where: str) -> Any:
    """``--samples``: every timed run's latency also in ``where`` (a CSV), in the samples column."""
    return Annotated[bool, typer.Option(
        "--samples", help=f"Also write every timed run's latency to {where}: column {SAMPLES_COLUMN}, "
        "space-separated ms (default: median and IQR only).")]


def dtype_flag(what: str) -> Any:
    """``--dtype``: ``what`` says whether the command takes one or a list."""
    return Annotated[Optional[str], typer.Option(
        "--dtype", help=f"{', '.join(DTYPES[:-1])} or {DTYPES[-1]} (autocast){what} (default: {Setting.dtype}).")]


@dataclass(frozen=True)
class MeasureFlags:
    """The parsed measurement flags: where, what, how, and the memory cap."""

    device: str  # the --device name; :meth:`start` resolves it
    measures: list[str]
    options: RunOptions
    max_memory: int | None

    def start(self) -> torch.device:
        """Resolve the device and seed everything: the first step that needs torch."""
        device = resolve_device(self.device)
        seed_everything(self.options.seed)
        return device


def parse_measure_flags(*, device: str | None, measure: str | None, warmup: int | None, repeats: str | None,
                        time_budget: float | None, seed: int | None, threads: int | None, max_memory: str | None,
                        isolate: bool, defaults: RunOptions | None = None) -> MeasureFlags:
    """Check the shared flags (one-line :class:`UsageError` naming the flag), without torch.

    Flags not given take their values from ``defaults`` (the library's :class:`RunOptions`
    unless the command's study has its own).
    """
    name = check_device_name(device if device is not None else DEFAULT_DEVICE)
    measures = choice_list("--measure", measure, list(MEASURES)) if measure is not None else list(MEASURES)
    options = dataclasses.replace(defaults or RunOptions(), **given(
        warmup=warmup, repeats=parse_repeats(repeats) if repeats is not None else None, budget_s=time_budget,
        seed=seed, threads=threads))
    if max_memory is not None and not str(max_memory).strip():  # '' would silently mean "no cap"
        raise UsageError("invalid --max-memory ''; expected a size like 500MB, 2GB, 1.5G")
    cap = parse_size(max_memory)
    if cap and not isolate:
        raise UsageError("--max-memory needs worker processes; drop --no-isolate")
    return MeasureFlags(name, measures, options, cap)
