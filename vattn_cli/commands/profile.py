"""``vattn profile``: params, FLOPs, latency, throughput and peak memory per combination."""

from __future__ import annotations

import sys

import typer

from vattn_cli.commands._options import choice_list, int_list, resolve_device, scheme_list, seed_everything
from vattn_cli.errors import RunError, UsageError
from vattn_cli.report.tables import emit, rich_table, stderr_console, stdout_console


def _peak_from_flag(text: str | None, device, dtypes: list[str], calibrate_now: bool) -> dict[str, float] | None:
    from vattn_cli.measure import calibrate

    if calibrate_now:
        return {d: calibrate.calibrate(device, d) for d in dtypes}
    if text is None:
        return None
    if text.strip().lower() == "cached":
        return {d: calibrate.cached_peak(device, d) for d in dtypes}
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid --peak-tflops {text!r}; expected a number of TFLOP/s or 'cached'") from None
    if value <= 0:
        raise UsageError(f"invalid --peak-tflops {text!r}; expected a positive number")
    return {d: value for d in dtypes}


def profile(
    scheme: str = typer.Option(None, "--scheme", help="Schemes, comma-separated, or 'all'."),
    model: str = typer.Option(None, "--model", help="Sizes (tiny, small, base, large) or presets (timesformer, "
                              "timesformer-hr, timesformer-l), comma-separated (default base); a preset sets scheme, "
                              "frames and size unless given."),
    frames: str = typer.Option(None, "--frames", help="Frames per clip, comma-separated (default 8, or the preset's)."),
    size: str = typer.Option(None, "--size", help="Frame resolution in pixels, comma-separated (default 224, or the preset's)."),
    patch: str = typer.Option(None, "--patch", help="Patch size in pixels, comma-separated (default 16)."),
    batch: str = typer.Option("1", "--batch", help="Clips per step, comma-separated."),
    mode: str = typer.Option("infer", "--mode", help="infer (forward) or train (forward+backward+AdamW step)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16 (autocast), comma-separated."),
    measure: str = typer.Option("all", "--measure", help="params,flops,latency,memory or 'all'."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed runs before timing."),
    repeats: str = typer.Option("auto", "--repeats", help="Timed runs: N, or 'auto' to fill --time-budget."),
    time_budget: float = typer.Option(5.0, "--time-budget", min=0.0, help="Seconds of timed runs for --repeats auto (at least 3 runs)."),
    max_memory: str = typer.Option(None, "--max-memory", help="Cap per combination, e.g. 500MB, 2GB: past it the row is status=oom."),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads per worker (default: torch's, one per core); 1 is steadier on a busy machine."),
    timeout: float = typer.Option(None, "--timeout", min=1.0, help="Seconds per combination before its worker is stopped."),
    breakdown: bool = typer.Option(False, "--breakdown", help="Also print FLOPs per module (embed / attention / MLP / head)."),
    compile_: bool = typer.Option(False, "--compile", help="Time the torch.compile'd model (warm-up includes compilation)."),
    peak_tflops: str = typer.Option(None, "--peak-tflops", help="Peak TFLOP/s for the mfu column, or 'cached' (from --calibrate)."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Measure and cache this machine's matmul peak; adds mfu."),
    isolate: bool = typer.Option(True, "--isolate/--no-isolate", help="One worker process per combination (honest memory, survives OOM)."),
    csv: str = typer.Option(None, "--csv", help="Write rows as CSV to PATH, or '-' for stdout."),
    json_path: str = typer.Option(None, "--json", help="Write rows as JSON to PATH, or '-' for stdout."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed for weights and inputs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table, no progress bar; only the files asked for."),
) -> None:
    """Measure params, FLOPs, latency, throughput and peak memory of every combination.

    Every combination of --scheme x --model x --frames x --size x --patch x --batch x --mode x
    --dtype runs in its own worker process. FLOPs follow fvcore (one multiply-add = one FLOP,
    per clip); attention via scaled_dot_product_attention counts like explicit matmuls.

    Example: vattn profile --scheme divided --frames 96

    Example: vattn profile --scheme all --frames 8,32 --size 224 --max-memory 4GB --csv -
    """
    from vattn_cli import measure as m
    from vattn_cli.measure.memory import parse_size
    from vattn_cli.measure.run import model_config
    from vattn_cli.measure.timing import parse_repeats
    from vattn_cli.zoo.registry import list_models, list_schemes

    torch_device = resolve_device(device)
    dtypes = choice_list("--dtype", dtype, list(m.DTYPES))
    measures = choice_list("--measure", measure, list(m.MEASURES))
    peaks = _peak_from_flag(peak_tflops, torch_device, dtypes, calibrate)
    if scheme is None and model is None:
        if calibrate:  # `vattn profile --calibrate` alone: show and exit
            import pandas as pd

            from vattn_cli.measure.calibrate import cache_path, device_name

            frame = pd.DataFrame([{"device": device_name(torch_device), "dtype": d, "peak_tflops": p,
                                   "cache": str(cache_path())} for d, p in peaks.items()])
            emit(frame, csv=csv, json_path=json_path, quiet=quiet, title="vattn profile --calibrate")
            return
        raise UsageError("no scheme given; pass --scheme (accepted: " + ", ".join(list_schemes() + ["all"])
                         + ") or a preset --model")
    settings = m.expand(
        schemes=scheme_list("--scheme", scheme) if scheme else None,
        models=choice_list("--model", model, list_models()) if model else None,
        frames=int_list("--frames", frames) if frames else None,
        sizes=int_list("--size", size) if size else None,
        patches=int_list("--patch", patch) if patch else None,
        batches=int_list("--batch", batch),
        modes=choice_list("--mode", mode, list(m.MODES)),
        dtypes=dtypes,
        device=torch_device.type,
        compile=compile_,
    )
    cap = parse_size(max_memory)
    if cap and not isolate:
        raise UsageError("--max-memory needs worker processes; drop --no-isolate")
    seed_everything(seed)
    cache: dict = {}
    show_progress = not quiet and sys.stderr.isatty()
    options = m.RunOptions(warmup=warmup, repeats=parse_repeats(repeats), budget_s=time_budget, seed=seed,
                           threads=threads)
    frame = m.sweep(
        settings, measures, options, peak_tflops=peaks, max_memory=cap, timeout_s=timeout, isolate=isolate, progress=show_progress,
        flops_cache=cache,
    )
    to_stdout = "-" in (csv, json_path)
    title = f"vattn profile ({torch_device.type})"
    emit(frame, csv=csv, json_path=json_path, quiet=quiet, title=title)
    if breakdown and not quiet:
        console = stderr_console if to_stdout else stdout_console
        for setting in dict((s.geometry(), s) for s in settings).values():
            count = cache.get(setting.geometry()) or m.count_model_flops(model_config(setting))
            console.print(rich_table(m.breakdown_frame(count),
                                     title=f"FLOPs by module: {setting.scheme} {setting.model} "
                                           f"{setting.frames}x{setting.img_size}/{setting.patch}"))
    failed = [s for s in frame["status"] if str(s).startswith("error")]
    if failed:
        raise RunError(f"{len(failed)} of {len(frame)} combinations failed (see the status column): {failed[0]}")


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
