"""``vattn profile``: params, FLOPs, latency, throughput and peak memory per combination."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer

from vattn_cli.commands._measure_flags import (
    Device, Isolate, MaxMemory, Measure, Mode, Repeats, Seed, Threads, Timeout, Warmup, dtype_flag,
    parse_measure_flags, samples_flag, time_budget_flag,
)
from vattn_cli.commands._launch_flags import LaunchFlags, with_launch_flags
from vattn_cli.commands._options import choice_list, given, int_list, scheme_list
from vattn_cli.commands._outputs import check_outputs
from vattn_cli.errors import RunError, UsageError
from vattn_cli.measure.setting import DTYPES, MODES, RunOptions, Setting
from vattn_cli.report.tables import emit, rich_table, stderr_console, stdout_console, write_frame
from vattn_cli.zoo.catalog import DEFAULTS, PRESETS, SIZES

TimeBudget = time_budget_flag(RunOptions.budget_s)
Dtypes = dtype_flag(", comma-separated")
Samples = samples_flag("the --csv rows (--json rows always have them)")


def csv_frame(frame, samples: bool):
    """The rows as CSV writes them: samples (wall and CPU) as space-separated ms with ``samples``, else left out."""
    from vattn_cli.measure.setting import CPU_SAMPLES_COLUMN, SAMPLES_COLUMN, format_samples

    columns = [c for c in (SAMPLES_COLUMN, CPU_SAMPLES_COLUMN) if c in frame.columns]
    if not samples:
        return frame.drop(columns=columns)
    return frame.assign(**{c: frame[c].map(format_samples) for c in columns})


def _peak_value(text: str | None) -> float | str | None:
    """``--peak-tflops``: a positive number, ``cached`` or not given (checked before torch loads)."""
    if text is None or text.strip().lower() == "cached":
        return None if text is None else "cached"
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid --peak-tflops {text!r}; expected a number of TFLOP/s or 'cached'") from None
    if value <= 0:
        raise UsageError(f"invalid --peak-tflops {text!r}; expected a positive number")
    return value


def _peaks(value: float | str | None, device, dtypes: list[str], calibrate_now: bool) -> dict[str, float] | None:
    from vattn_cli.measure import calibrate

    if calibrate_now:
        return {d: calibrate.calibrate(device, d) for d in dtypes}
    if value is None:
        return None
    if value == "cached":
        return {d: calibrate.cached_peak(device, d) for d in dtypes}
    return {d: value for d in dtypes}


@with_launch_flags
def profile(
    scheme: str = typer.Option(None, "--scheme", "--schemes", help="Schemes, comma-separated: names, import paths "
                               "module.path:Class, or 'all'. --schemes is an alias."),
    model: str = typer.Option(None, "--model", help=f"Sizes ({', '.join(SIZES)}) or presets ({', '.join(PRESETS)}), "
                              f"comma-separated (default: {DEFAULTS['size']}); a preset sets scheme, frames and size "
                              "unless given."),
    frames: str = typer.Option(None, "--frames", help="Frames per clip, comma-separated "
                               f"(default: {DEFAULTS['frames']}, or the preset's)."),
    size: str = typer.Option(None, "--size", help="Frame resolution in pixels, comma-separated "
                             f"(default: {DEFAULTS['img_size']}, or the preset's)."),
    patch: str = typer.Option(None, "--patch", help="Patch size in pixels, comma-separated "
                              f"(default: {DEFAULTS['patch']}, or the preset's)."),
    tubelet: str = typer.Option(None, "--tubelet", help="Frames per patch, comma-separated: a 3D (tubelet) patch "
                                f"embedding when > 1, so (frames / tubelet) x (size / patch)^2 tokens (default: {Setting.tubelet})."),
    batch: str = typer.Option(None, "--batch", help=f"Clips per step, comma-separated (default: {Setting.batch})."),
    mode: Mode = None,
    dtype: Dtypes = None,
    measure: Measure = None,
    warmup: Warmup = None,
    repeats: Repeats = None,
    time_budget: TimeBudget = None,
    max_memory: MaxMemory = None,
    threads: Threads = None,
    timeout: Timeout = None,
    samples: Samples = False,
    breakdown: bool = typer.Option(False, "--breakdown", help="Also print FLOPs per module (embed / attention / MLP / head)."),
    compile_: bool = typer.Option(False, "--compile", help="Time the torch.compile'd model (warm-up includes compilation)."),
    peak_tflops: str = typer.Option(None, "--peak-tflops", help="Peak TFLOP/s for the mfu column, or 'cached' (from --calibrate)."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Measure and cache this machine's matmul peak; adds mfu."),
    isolate: Isolate = True,
    csv: str = typer.Option(None, "--csv", help="Write rows as CSV to PATH, or '-' for stdout."),
    json_path: str = typer.Option(None, "--json", help="Write rows as JSON to PATH, or '-' for stdout."),
    device: Device = None,
    seed: Seed = None,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table, no progress bar; only the files asked for."),
    launch_flags: LaunchFlags = None,
) -> None:
    """Measure params, FLOPs, latency, throughput and peak memory of every combination.

    Every combination of --scheme x --model x --frames x --size x --patch x --tubelet x --batch x
    --mode x --dtype runs in its own worker process. FLOPs follow fvcore (one multiply-add = one FLOP,
    per clip); attention via scaled_dot_product_attention counts like explicit matmuls.

    Example: vattn profile --scheme divided --frames 96

    Example: vattn profile --scheme all --frames 8,32 --size 224 --max-memory 4GB --csv -
    """
    from vattn_cli import measure as m
    from vattn_cli.zoo.catalog import list_models, list_schemes

    # Every flag is checked before torch is imported: a bad value fails at once.
    flags = parse_measure_flags(device=device, measure=measure, warmup=warmup, repeats=repeats,
                                time_budget=time_budget, seed=seed, threads=threads, max_memory=max_memory,
                                isolate=isolate)
    dtypes = choice_list("--dtype", dtype, list(DTYPES)) if dtype is not None else None
    peak = _peak_value(peak_tflops)
    check_outputs(files={"--csv": csv, "--json": json_path})  # before the work, not after it
    if scheme is None and model is None:
        if calibrate:  # `vattn profile --calibrate` alone: show and exit
            import pandas as pd

            from vattn_cli.measure.calibrate import cache_path, device_name

            torch_device = flags.start()
            peaks = _peaks(peak, torch_device, dtypes or [Setting.dtype], calibrate)
            frame = pd.DataFrame([{"device": device_name(torch_device), "dtype": d, "peak_tflops": p,
                                   "cache": str(cache_path())} for d, p in peaks.items()])
            emit(frame, csv=csv, json_path=json_path, quiet=quiet, title="vattn profile --calibrate")
            return
        raise UsageError("no scheme given; pass --scheme (accepted: " + ", ".join(list_schemes() + ["all"])
                         + ") or a preset --model")
    grid = dict(
        # "is not None": an empty value ('--frames ""') is an error, not the default.
        schemes=scheme_list("--scheme", scheme) if scheme is not None else None,
        models=choice_list("--model", model, list_models()) if model is not None else None,
        frames=int_list("--frames", frames) if frames is not None else None,
        sizes=int_list("--size", size) if size is not None else None,
        patches=int_list("--patch", patch) if patch is not None else None,
        tubelets=int_list("--tubelet", tubelet) if tubelet is not None else None,
        compile=compile_,
        **given(batches=int_list("--batch", batch) if batch is not None else None,
                modes=choice_list("--mode", mode, list(MODES)) if mode is not None else None, dtypes=dtypes),
    )
    m.expand(**grid)  # checks every combination (a size the patch does not divide, ...) before torch loads
    torch_device = flags.start()
    settings = m.expand(**grid, device=torch_device.type)
    peaks = _peaks(peak, torch_device, list(dict.fromkeys(s.dtype for s in settings)), calibrate)
    cache: dict = {}
    show_progress = not quiet and sys.stderr.isatty()
    launch = launch_flags.parse(kind="measure", timed=bool({"latency", "memory"} & set(flags.measures)),
                                device=torch_device.type, runs=len(settings))
    from vattn_cli.ablate.measuring import measure_settings

    import dataclasses

    # profile times the reference workload beside each timed run: vattn compare's default clock
    options = dataclasses.replace(flags.options, reference=True)
    rows = measure_settings(settings, flags.measures, options, launch, lambda row: None,
                            peak_tflops=peaks, max_memory=flags.max_memory, timeout_s=timeout, isolate=isolate,
                            progress=show_progress, flops_cache=cache,
                            out=Path(".vattn-profile") / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    if launch.concurrent == 1:  # every row timed alone: the columns of a profile as ever
        rows = [{k: v for k, v in row.items() if k != "concurrent"} for row in rows]
    frame = m.rows_frame(rows, with_mfu=peaks is not None)
    to_stdout = "-" in (csv, json_path)
    title = f"vattn profile ({torch_device.type})"
    from vattn_cli.measure.setting import TIMING_DETAIL_COLUMNS

    hidden = [*m.PROVENANCE_COLUMNS, m.SAMPLES_COLUMN, *TIMING_DETAIL_COLUMNS]  # in the files, not the table
    if not quiet:
        (stderr_console if to_stdout else stdout_console).print(
            rich_table(frame, title=title, columns=[c for c in frame.columns if c not in hidden]))
    write_frame(csv_frame(frame, samples), csv=csv)
    write_frame(frame, json_path=json_path)  # samples as lists of ms, always
    if breakdown and not quiet:
        from vattn_cli.measure.run import model_config

        console = stderr_console if to_stdout else stdout_console
        for setting in dict((s.geometry(), s) for s in settings).values():
            count = cache.get(setting.geometry()) or m.count_model_flops(model_config(setting))
            console.print(rich_table(m.breakdown_frame(count),
                                     title=f"FLOPs by module: {setting.scheme} {setting.model} "
                                           f"{setting.frames}x{setting.img_size}/{setting.patch}"
                                           + (f" tubelet {setting.tubelet}" if setting.tubelet != 1 else "")))
    failed = [s for s in frame["status"] if str(s).startswith("error")]
    if failed:
        raise RunError(f"{len(failed)} of {len(frame)} combinations failed (see the status column): {failed[0]}")


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
