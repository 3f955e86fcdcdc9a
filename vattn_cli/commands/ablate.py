"""``vattn ablate``: studies over schemes, one sub-command each (``tokens``; more to come).

Each sub-command parses its flags, calls its study in :mod:`vattn_cli.ablate` and shows the
result; add one with ``@ablate_app.command("name")``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from vattn_cli.commands._measure_flags import (
    Device, Isolate, MaxMemory, Measure, Mode, Repeats, Seed, Threads, TimeBudget, Timeout, Warmup, parse_measure_flags,
)
from vattn_cli.commands._options import choice_list, int_list, scheme_list
from vattn_cli.errors import RunError, UsageError
from vattn_cli.report.tables import emit, rich_table, stderr_console, stdout_console

ablate_app = typer.Typer(
    name="ablate",
    help="Studies across schemes: cost against tokens (more to come).\n\n"
    "Example: vattn ablate tokens --schemes joint,divided --out runs/tokens",
    no_args_is_help=True,
)


def _one(flag: str, text: str, accepted: list[str]) -> str:
    """A single name from ``accepted`` (the study draws one line per scheme, not per model)."""
    items = choice_list(flag, text, accepted)
    if len(items) != 1:
        raise UsageError(f"invalid {flag} {text!r}; expected one value (accepted: {', '.join(accepted)})")
    return items[0]


def _show_exponents(table, quiet: bool) -> None:
    if quiet or table.empty:
        return
    shown = table.rename(columns={"gflops_exp": "gflops", "gflops_exp_top": "gflops_top",
                                  "latency_ms_exp": "latency", "latency_ms_exp_top": "latency_top",
                                  "peak_mem_mb_exp": "memory", "peak_mem_mb_exp_top": "memory_top"})
    stdout_console.print(rich_table(shown.drop(columns=["tokens_min"]),
                                    title="growth exponents (log-log slope of cost against tokens)"))


@ablate_app.command("tokens")
def tokens(
    out: Path = typer.Option(..., "--out", help="Folder for tokens.csv, tokens.md and the figures."),
    schemes: str = typer.Option("all", "--schemes", help="Schemes, comma-separated, import paths module:Class, or 'all'."),
    frames: str = typer.Option("8,32,64,96", "--frames", help="Frame counts to sweep, comma-separated."),
    sizes: str = typer.Option("224,336,448,560", "--sizes", help="Resolutions in pixels to sweep, comma-separated."),
    grid: bool = typer.Option(False, "--grid", help="Every frames x size combination instead of the two sweeps."),
    model: str = typer.Option("base", "--model", help="One size (tiny, small, base, large) or preset."),
    patch: int = typer.Option(None, "--patch", min=1, help="Patch size in pixels (default 16, or the preset's)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Clips per step."),
    mode: Mode = "infer",
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, bf16 or fp16 (autocast)."),
    measure: Measure = "all",
    warmup: Warmup = 1,
    repeats: Repeats = "auto",
    time_budget: TimeBudget = 2.0,
    max_memory: MaxMemory = None,
    threads: Threads = None,
    timeout: Timeout = None,
    isolate: Isolate = True,
    resume: bool = typer.Option(False, "--resume", help="Continue OUT/tokens.csv: skip the combinations it has."),
    device: Device = "auto",
    seed: Seed = 0,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No tables, no progress bar; only the files."),
) -> None:
    """Sweep frames and resolution; cost (GFLOPs, latency, peak memory) against tokens per scheme.

    Two sweeps, as in the TimeSformer paper: the frame counts at the base resolution (224 if swept, else the smallest size), and the resolutions at the base frame count (8 if swept, else the fewest). --grid measures every combination instead.

    Rows go to OUT/tokens.csv as each is measured; a killed run continues with --resume. An existing tokens.csv is never overwritten: without --resume it is an error.

    Also writes OUT/tokens_frames.png|svg and OUT/tokens_size.png|svg (x marks out of memory) and OUT/tokens.md with each scheme's growth exponent (log-log slope of cost against tokens).

    Example: vattn ablate tokens --model tiny --frames 2,4,8,16 --sizes 32,64,96 --out runs/tok

    Example: vattn ablate tokens --schemes joint,divided --max-memory 32GB --out runs/fig3 --resume
    """
    from vattn_cli import measure as m
    from vattn_cli.ablate import tokens as study
    from vattn_cli.zoo.registry import list_models

    flags = parse_measure_flags(device=device, measure=measure, warmup=warmup, repeats=repeats,
                                time_budget=time_budget, seed=seed, threads=threads, max_memory=max_memory,
                                isolate=isolate)
    plan = study.plan(
        scheme_list("--schemes", schemes), int_list("--frames", frames), int_list("--sizes", sizes),
        model=_one("--model", model, list_models()), patch=patch, batch=batch,
        mode=_one("--mode", mode, list(m.MODES)), dtype=_one("--dtype", dtype, list(m.DTYPES)),
        device=flags.device.type, grid=grid,
    )

    def say(message: str) -> None:
        if not quiet:
            stderr_console.print(message, highlight=False)

    result = study.run(plan, out, flags.measures, flags.options, resume=resume, max_memory=flags.max_memory,
                       timeout_s=timeout, isolate=isolate, progress=not quiet and sys.stderr.isatty(), log=say)
    emit(result.frame, quiet=quiet, title=f"vattn ablate tokens ({flags.device.type})",
         columns=["scheme", "frames", "size", "tokens", "gflops", "latency_ms", "peak_mem_mb", "status"])
    _show_exponents(result.exponents, quiet)
    say(f"measured {result.measured}, skipped {result.skipped}; wrote " + ", ".join(str(p) for p in result.files))
    failed = [s for s in result.frame["status"] if str(s).startswith("error")]
    if failed:
        raise RunError(f"{len(failed)} of {len(result.frame)} combinations failed (see the status column of "
                       f"{result.files[0]}; delete those lines and --resume to retry): {failed[0]}")


def register(app: typer.Typer) -> None:
    app.add_typer(ablate_app, name="ablate")
