"""``vattn ablate``: studies over schemes, one sub-command each (``tokens``, ``schemes``, ``pos-embed``).

Each sub-command parses its flags, calls its study in :mod:`vattn_cli.ablate` and shows the
result; add one with ``@ablate_app.command("name")``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from vattn_cli.commands._measure_flags import (
    Device, Isolate, MaxMemory, Measure, Mode, Repeats, Seed, Threads, TimeBudget, Timeout, Warmup, parse_measure_flags,
)
from vattn_cli.commands._options import choice_list, int_list, scheme_list, split_list
from vattn_cli.errors import RunError, UsageError
from vattn_cli.report.tables import emit, rich_table, stderr_console, stdout_console

ablate_app = typer.Typer(
    name="ablate",
    help="Studies across schemes: cost against tokens, accuracy against compute, position embeddings.\n\n"
    "Example: vattn ablate schemes --out runs/schemes",
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


# ----------------------------------------------------------------------------- accuracy studies

DataFlag = Annotated[str, typer.Option("--data", help="Datasets, comma-separated: builtin:motion, builtin:appearance, "
                                       "video lists or folders of lists.")]
ValFlag = Annotated[str, typer.Option("--val", help="Validation lists, one per --data list (builtin data and folders "
                                      "bring their own).")]
FramesFlag = Annotated[str, typer.Option("--frames", help="Frame counts (token settings), comma-separated.")]
SizesFlag = Annotated[str, typer.Option("--sizes", help="Resolutions in pixels (token settings), comma-separated.")]
ModelFlag = Annotated[str, typer.Option("--model", help="Model size (tiny, small, base, large).")]
EpochsFlag = Annotated[int, typer.Option("--epochs", min=1, help="Training epochs per run.")]
SeedsFlag = Annotated[int, typer.Option("--seeds", min=1, help="Seeds per setting (--seed, --seed+1, ...); "
                                        "several give error bars.")]
BatchFlag = Annotated[int, typer.Option("--batch", min=1, help="Clips per training step.")]
LrFlag = Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW, cosine).")]
WorkersFlag = Annotated[int, typer.Option("--workers", min=0, help="Data loader worker processes.")]
ClipsFlag = Annotated[str, typer.Option("--clips", help="Built-in data only: TRAIN,VAL videos generated per task "
                                        "(default: 384,96 for motion, 160,96 for appearance).")]
PatchFlag = Annotated[int, typer.Option("--patch", min=1, help="Patch size in pixels (8 at the default 32 px: "
                                        "16 tokens a frame).")]
ViewsFlag = Annotated[str, typer.Option("--views", help="Evaluation views TxS (temporal clips x spatial crops).")]
CacheFlag = Annotated[Path, typer.Option("--cache-dir", help="Where built-in data is generated (default: the "
                                         "user cache).")]
ResumeFlag = Annotated[bool, typer.Option("--resume", help="Continue OUT: skip finished runs, resume a run killed "
                                          "midway from its last.pt.")]
QuietFlag = Annotated[bool, typer.Option("--quiet", "-q", help="No tables, no progress bars; only the files.")]


def _study_config(*, model: str, epochs: int, batch: int, lr: float, workers: int, device: str, clips: str | None,
                  views: str, cache_dir: Path | None, patch: int):
    from vattn_cli.ablate import schemes as study
    from vattn_cli.commands._options import resolve_device
    from vattn_cli.engine.data import parse_views
    from vattn_cli.zoo.registry import SIZES

    counts = None
    if clips is not None:
        counts = int_list("--clips", clips)
        if len(counts) != 2 or min(counts) < 1:
            raise UsageError(f"invalid --clips {clips!r}; expected TRAIN,VAL, e.g. 384,96")
    parse_views(views)
    return study.StudyConfig(
        model=_one("--model", model, list(SIZES)), epochs=epochs, batch=batch, lr=lr, workers=workers,
        device=resolve_device(device).type, views=views, cache_dir=str(cache_dir) if cache_dir else None,
        clips=tuple(counts) if counts else None, patch=patch,
    )


def _run_study(runs, out: Path, config, *, resume: bool, quiet: bool, csv_name: str, title: str, label: str) -> None:
    from vattn_cli.ablate import schemes as study
    from vattn_cli.ablate.progress import StudyProgress

    def say(message: str) -> None:
        if not quiet:
            stderr_console.print(message, highlight=False)

    say(f"{len(runs)} runs ({config.model}, {config.epochs} epochs each) into {out}")
    result = study.run(runs, out, config, resume=resume, csv_name=csv_name, title=title,
                       progress=StudyProgress(enabled=not quiet), log=say)
    emit(result.frame, quiet=quiet, title=title,
         columns=["dataset", label, "frames", "size", "params_m", "gflops", "top1", "pair_acc", "latency_ms", "status"])
    for dataset, points in result.pareto.items():
        say(f"Pareto-optimal on {dataset}: {', '.join(points)}")
    say(f"trained {result.trained}, skipped {result.skipped}; outputs: " + ", ".join(str(p) for p in result.files))


@ablate_app.command("schemes")
def schemes(
    out: Path = typer.Option(..., "--out", help="Folder for schemes.csv, summary.md, the figure and runs/."),
    data: DataFlag = "builtin:motion,builtin:appearance",
    val: ValFlag = None,
    schemes: str = typer.Option("all", "--schemes", help="Schemes, comma-separated, import paths module:Class, or 'all'."),
    frames: FramesFlag = "4,8",
    sizes: SizesFlag = "32",
    model: ModelFlag = "tiny",
    epochs: EpochsFlag = 6,
    seeds: SeedsFlag = 1,
    batch: BatchFlag = 8,
    lr: LrFlag = 5e-4,
    workers: WorkersFlag = 1,
    clips: ClipsFlag = None,
    patch: PatchFlag = 8,
    views: ViewsFlag = "1x1",
    cache_dir: CacheFlag = None,
    resume: ResumeFlag = False,
    device: Device = "auto",
    seed: Seed = 0,
    quiet: QuietFlag = False,
) -> None:
    """Train, evaluate and profile every scheme at every token setting: accuracy against compute.

    For each dataset x scheme x (frames, size) x seed: trains the model (OUT/runs/<dataset>/<run>/, the engine's checkpoints), evaluates top-1/top-5 on the val split, and measures params, GFLOPs per view, latency and peak memory; one row per run goes to OUT/schemes.csv as soon as it finishes. A killed study continues with --resume (finished runs are skipped, a run killed midway resumes from its last.pt); without --resume an existing schemes.csv is an error.

    Writes OUT/accuracy_vs_gflops.png|svg (top-1 against GFLOPs, one panel per dataset, Pareto frontier) and OUT/summary.md (the TimeSformer paper's Table 1 shape). On builtin:motion, the reversal-pair accuracy (pair_acc) shows which schemes see the order of frames.

    The defaults (tiny model, 32 px with 8 px patches, 6 epochs, 384 generated motion and 160 appearance clips) finish on a 2-core CPU in under 20 minutes; on a GPU raise --sizes, --frames, --epochs and --clips.

    Example: vattn ablate schemes --out runs/schemes

    Example: vattn ablate schemes --data train.csv --val val.csv --schemes space,divided,joint --frames 8 --sizes 224 --model small --epochs 30 --out runs/mine
    """
    from vattn_cli.ablate import schemes as study

    config = _study_config(model=model, epochs=epochs, batch=batch, lr=lr, workers=workers, device=device,
                           clips=clips, views=views, cache_dir=cache_dir, patch=patch)
    runs = study.plan(split_list("--data", data), scheme_list("--schemes", schemes), int_list("--frames", frames),
                      int_list("--sizes", sizes), list(range(seed, seed + seeds)),
                      split_list("--val", val) if val else None)
    _run_study(runs, out, config, resume=resume, quiet=quiet, csv_name=study.CSV_NAME,
               title="Accuracy against compute (vattn ablate schemes)", label="scheme")


@ablate_app.command("pos-embed")
def pos_embed(
    out: Path = typer.Option(..., "--out", help="Folder for pos_embed.csv, pos_embed.md, the figure and runs/."),
    scheme: str = typer.Option("divided", "--scheme", help="The scheme whose position embeddings are varied."),
    pos_embeds: str = typer.Option("none,space,space-time", "--pos-embeds", help="none, space, space-time."),
    data: DataFlag = "builtin:motion,builtin:appearance",
    val: ValFlag = None,
    frames: FramesFlag = "8",
    sizes: SizesFlag = "32",
    model: ModelFlag = "tiny",
    epochs: EpochsFlag = 6,
    seeds: SeedsFlag = 1,
    batch: BatchFlag = 8,
    lr: LrFlag = 5e-4,
    workers: WorkersFlag = 1,
    clips: ClipsFlag = None,
    patch: PatchFlag = 8,
    views: ViewsFlag = "1x1",
    cache_dir: CacheFlag = None,
    resume: ResumeFlag = False,
    device: Device = "auto",
    seed: Seed = 0,
    quiet: QuietFlag = False,
) -> None:
    """Train one scheme with no, space-only and space-time position embeddings (the paper's Table 4).

    Same runner and outputs as `vattn ablate schemes`: OUT/pos_embed.csv (a pos_embed column added), OUT/pos_embed.png|svg, OUT/pos_embed.md; --resume continues.

    Example: vattn ablate pos-embed --scheme divided --out runs/pos
    """
    from vattn_cli.ablate import schemes as study

    config = _study_config(model=model, epochs=epochs, batch=batch, lr=lr, workers=workers, device=device,
                           clips=clips, views=views, cache_dir=cache_dir, patch=patch)
    names = scheme_list("--scheme", scheme)
    if len(names) != 1:
        raise UsageError(f"invalid --scheme {scheme!r}; expected one scheme")
    runs = study.pos_embed_plan(split_list("--data", data), names[0], int_list("--frames", frames),
                                int_list("--sizes", sizes), list(range(seed, seed + seeds)),
                                split_list("--val", val) if val else None,
                                choice_list("--pos-embeds", pos_embeds, list(study.POS_EMBEDS)))
    _run_study(runs, out, config, resume=resume, quiet=quiet, csv_name=study.POS_CSV_NAME,
               title=f"Position embeddings of {names[0]} (vattn ablate pos-embed)", label="pos_embed")


def register(app: typer.Typer) -> None:
    app.add_typer(ablate_app, name="ablate")
