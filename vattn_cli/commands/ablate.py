"""``vattn ablate``: studies over schemes, one sub-command each (``tokens``, ``schemes``, ``pos-embed``).

Each sub-command parses its flags, calls its study in :mod:`vattn_cli.ablate` and shows the
result; add one with ``@ablate_app.command("name")``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from vattn_cli.ablate.config import (
    ALL_SCHEMES, BASE_FRAMES, BASE_SIZE, BUILTIN_DATA, DEFAULT_CLIPS, DEFAULT_FRAMES, DEFAULT_SEEDS, DEFAULT_SIZES, POS_EMBED_FRAMES,
    POS_EMBED_CHOICES, POS_EMBED_SCHEME, POS_EMBEDS, TOKENS_BUDGET_S, TOKENS_FRAMES, TOKENS_MODEL, TOKENS_SIZES, StudyConfig,
)
from vattn_cli.commands._measure_flags import (
    Device, Isolate, MaxMemory, Measure, Mode, Repeats, Seed, Threads, Timeout, Warmup, dtype_flag,
    parse_measure_flags, samples_flag, time_budget_flag,
)
from vattn_cli.commands._launch_flags import LaunchFlags, with_launch_flags
from vattn_cli.commands._options import choice_list, default_text, given, int_list, one_choice, scheme_list, split_list
from vattn_cli.commands._outputs import check_outputs, count_rows, output_lock
from vattn_cli.engine.config import parse_views
from vattn_cli.errors import RunError, UsageError
from vattn_cli.measure.setting import DTYPES, MODES, RunOptions, Setting
from vattn_cli.report.tables import emit, rich_table, stderr_console, stdout_console
from vattn_cli.runtime import DEFAULT_DEVICE, check_device_name
from vattn_cli.zoo.catalog import DEFAULTS, SIZES

ablate_app = typer.Typer(
    name="ablate",
    help="Studies across schemes: cost against tokens, accuracy against compute, position embeddings.\n\n"
    "Example: vattn ablate schemes --out runs/schemes",
    no_args_is_help=True,
)


def _show_exponents(table, quiet: bool) -> None:
    if quiet or table.empty:
        return
    shown = table.rename(columns={"gflops_exp": "gflops", "gflops_exp_top": "gflops_top",
                                  "attn_gflops_exp": "attn_gflops", "attn_gflops_exp_top": "attn_gflops_top",
                                  "latency_ms_exp": "latency", "latency_ms_exp_top": "latency_top",
                                  "peak_mem_mb_exp": "memory", "peak_mem_mb_exp_top": "memory_top"})
    stdout_console.print(rich_table(shown.drop(columns=["tokens_min"]),
                                    title="growth exponents (log-log slope of cost against tokens)"))


SchemesFlag = Annotated[Optional[str], typer.Option(
    "--schemes", "--scheme", help="Schemes, comma-separated: names, import paths module.path:Class, or 'all' "
    f"(default: {default_text(ALL_SCHEMES)}). --scheme is an alias.")]
TokensTimeBudget = time_budget_flag(TOKENS_BUDGET_S)
OneDtype = dtype_flag("")
TokensSamples = samples_flag("OUT/tokens.csv")


_TOKENS_HELP = f"""Sweep frames and resolution; cost (GFLOPs, latency, peak memory) against tokens per scheme.

Two sweeps, as in the TimeSformer paper: the frame counts at the base resolution ({BASE_SIZE} if swept, else the smallest size), and the resolutions at the base frame count ({BASE_FRAMES} if swept, else the fewest). --grid measures every combination instead.

Rows go to OUT/tokens.csv as each is measured; a killed run continues with --resume. An existing tokens.csv is never overwritten: without --resume it is an error.

Also writes OUT/tokens_frames.png|svg and OUT/tokens_size.png|svg (x marks out of memory) and OUT/tokens.md with each scheme's growth exponent (log-log slope of cost against tokens).

Example: vattn ablate tokens --model tiny --frames 2,4,8,16 --sizes 32,64,96 --out runs/tok

Example: vattn ablate tokens --schemes joint,divided --max-memory 32GB --out runs/fig3 --resume
"""


@ablate_app.command("tokens", help=_TOKENS_HELP)
@with_launch_flags
def tokens(
    out: Path = typer.Option(..., "--out", help="Folder for tokens.csv, tokens.md and the figures."),
    schemes: SchemesFlag = None,
    frames: str = typer.Option(None, "--frames", help="Frame counts to sweep, comma-separated "
                               f"(default: {default_text(TOKENS_FRAMES)})."),
    sizes: str = typer.Option(None, "--sizes", help="Resolutions in pixels to sweep, comma-separated "
                              f"(default: {default_text(TOKENS_SIZES)})."),
    grid: bool = typer.Option(False, "--grid", help="Every frames x size combination instead of the two sweeps."),
    model: str = typer.Option(None, "--model", help=f"One size ({', '.join(SIZES)}) or preset (default: {TOKENS_MODEL})."),
    patch: int = typer.Option(None, "--patch", min=1, help=f"Patch size in pixels (default: {DEFAULTS['patch']}, or "
                              "the preset's)."),
    tubelet: int = typer.Option(None, "--tubelet", min=1, help="Frames per patch: a 3D (tubelet) patch embedding when "
                                f"> 1; every --frames must be a multiple of it (default: {Setting.tubelet})."),
    batch: int = typer.Option(None, "--batch", min=1, help=f"Clips per step (default: {Setting.batch})."),
    mode: Mode = None,
    dtype: OneDtype = None,
    measure: Measure = None,
    warmup: Warmup = None,
    repeats: Repeats = None,
    time_budget: TokensTimeBudget = None,
    max_memory: MaxMemory = None,
    threads: Threads = None,
    timeout: Timeout = None,
    samples: TokensSamples = False,
    isolate: Isolate = True,
    resume: bool = typer.Option(False, "--resume", help="Continue OUT/tokens.csv: skip the combinations it has."),
    device: Device = None,
    seed: Seed = None,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No tables, no progress bar; only the files."),
    launch_flags: LaunchFlags = None,
) -> None:
    """Cost against tokens per scheme (help: ``_TOKENS_HELP``, generated from the study's defaults)."""
    from vattn_cli.ablate import tokens as study
    from vattn_cli.zoo.catalog import list_models

    flags = parse_measure_flags(device=device, measure=measure, warmup=warmup, repeats=repeats,
                                time_budget=time_budget, seed=seed, threads=threads, max_memory=max_memory,
                                isolate=isolate, defaults=RunOptions(budget_s=TOKENS_BUDGET_S))
    names = scheme_list("--schemes", schemes if schemes is not None else default_text(ALL_SCHEMES))
    choices = given(
        frames=int_list("--frames", frames) if frames is not None else None,
        sizes=int_list("--sizes", sizes) if sizes is not None else None,
        model=one_choice("--model", model, list_models()) if model is not None else None,
        patch=patch, tubelet=tubelet, batch=batch,
        mode=one_choice("--mode", mode, list(MODES)) if mode is not None else None,
        dtype=one_choice("--dtype", dtype, list(DTYPES)) if dtype is not None else None,
    )
    study.plan(names, grid=grid, **choices)  # checks every combination before torch loads
    check_outputs(folders={"--out": out})
    device_type = flags.start().type
    plan = study.plan(names, grid=grid, device=device_type, **choices)
    launch = launch_flags.parse(kind="measure", timed=bool({"latency", "memory"} & set(flags.measures)),
                                device=device_type, runs=len(plan.settings))

    def say(message: str) -> None:
        if not quiet:
            stderr_console.print(message, highlight=False)

    csv_path = out / study.CSV_NAME
    def finished() -> str:
        done = count_rows(csv_path)
        return f"{done} of {len(plan.settings)} combination{'s' if len(plan.settings) != 1 else ''} finished in {csv_path}"

    with output_lock(out, finished=finished):
        result = study.run(plan, out, flags.measures, flags.options, resume=resume, max_memory=flags.max_memory,
                           timeout_s=timeout, isolate=isolate, progress=not quiet and sys.stderr.isatty(), log=say,
                           samples=samples, launch=launch)
    emit(result.frame, quiet=quiet, title=f"vattn ablate tokens ({device_type})",
         columns=["scheme", "frames", "size", "tokens", "gflops", "latency_ms", "peak_mem_mb", "status"])
    _show_exponents(result.exponents, quiet)
    say(f"measured {result.measured}, skipped {result.skipped}; wrote " + ", ".join(str(p) for p in result.files))
    failed = [s for s in result.frame["status"] if str(s).startswith("error")]
    if failed:
        raise RunError(f"{len(failed)} of {len(result.frame)} combinations failed (see the status column of "
                       f"{result.files[0]}; delete those lines and --resume to retry): {failed[0]}")


# ----------------------------------------------------------------------------- accuracy studies

DataFlag = Annotated[Optional[str], typer.Option(
    "--data", help="Datasets, comma-separated: builtin:motion, builtin:appearance, video lists or folders of lists "
    f"(default: {default_text(BUILTIN_DATA)}).")]
ValFlag = Annotated[Optional[str], typer.Option(
    "--val", help="Validation lists, one per --data list (builtin data and folders bring their own).")]
FramesFlag = Annotated[Optional[str], typer.Option(
    "--frames", help=f"Frame counts (token settings), comma-separated (default: {default_text(DEFAULT_FRAMES)}).")]
SizesFlag = Annotated[Optional[str], typer.Option(
    "--sizes", help=f"Resolutions in pixels (token settings), comma-separated (default: {default_text(DEFAULT_SIZES)}).")]
ModelFlag = Annotated[Optional[str], typer.Option(
    "--model", help=f"Model size ({', '.join(SIZES)}) (default: {StudyConfig.model}).")]
EpochsFlag = Annotated[Optional[int], typer.Option(
    "--epochs", min=1, help=f"Training epochs per run (default: {StudyConfig.epochs}).")]
SeedsFlag = Annotated[Optional[int], typer.Option(
    "--seeds", min=1, help="Seeds per setting (--seed, --seed+1, ...); several give error bars "
    f"(default: {len(DEFAULT_SEEDS)}).")]
BatchFlag = Annotated[Optional[int], typer.Option(
    "--batch", min=1, help=f"Clips per training step (default: {StudyConfig.batch}).")]
LrFlag = Annotated[Optional[float], typer.Option(
    "--lr", min=0.0, help=f"Peak learning rate, AdamW with cosine decay (default: {StudyConfig.lr:g}).")]
WorkersFlag = Annotated[Optional[int], typer.Option(
    "--workers", min=0, help="Data loader worker processes per run (default: 0 on built-in data, whose frames "
    "are cached, so clips load in the run's own process; 1 on your own videos).")]
ClipsFlag = Annotated[Optional[str], typer.Option(
    "--clips", help="Built-in data only: TRAIN,VAL videos generated per task (default: "
    + ", ".join(f"{default_text(counts)} for {task}" for task, counts in DEFAULT_CLIPS.items()) + ").")]
PatchFlag = Annotated[Optional[int], typer.Option(
    "--patch", min=1, help=f"Patch size in pixels (default: {StudyConfig.patch}).")]
TubeletFlag = Annotated[Optional[int], typer.Option(
    "--tubelet", min=1, help="Frames per patch: a 3D (tubelet) patch embedding when > 1; every --frames must be a "
    f"multiple of it (default: {StudyConfig.tubelet}).")]
ViewsFlag = Annotated[Optional[str], typer.Option(
    "--views", help=f"Evaluation views TxS, temporal clips x spatial crops (default: {StudyConfig.views}).")]
CacheFlag = Annotated[Optional[Path], typer.Option(
    "--cache-dir", help="Where built-in data is generated (default: the user cache).")]
ResumeFlag = Annotated[bool, typer.Option(
    "--resume", help="Continue OUT: skip finished runs, resume a run killed midway from its last.pt.")]
QuietFlag = Annotated[bool, typer.Option("--quiet", "-q", help="No tables, no progress bars; only the files.")]
StudySeed = Annotated[Optional[int], typer.Option(
    "--seed", help=f"First seed of each setting (default: {DEFAULT_SEEDS[0]}).")]


def _study_config(*, model: str | None, epochs: int | None, batch: int | None, lr: float | None,
                  workers: int | None, device: str | None, clips: str | None, views: str | None,
                  cache_dir: Path | None, patch: int | None, tubelet: int | None = None,
                  tensorboard: bool = False) -> StudyConfig:
    """The flags given, over :class:`StudyConfig`'s defaults (checked without torch, but the device)."""
    from vattn_cli.runtime import resolve_device

    counts = None
    if clips is not None:
        counts = int_list("--clips", clips)
        if len(counts) != 2 or min(counts) < 1:
            raise UsageError(f"invalid --clips {clips!r}; expected TRAIN,VAL, e.g. 384,96")
    if views is not None:
        parse_views(views)
    check_device_name(device if device is not None else DEFAULT_DEVICE)
    values = given(
        model=one_choice("--model", model, list(SIZES)) if model is not None else None, epochs=epochs,
        batch=batch, lr=lr, workers=workers, views=views, cache_dir=str(cache_dir) if cache_dir else None,
        clips=tuple(counts) if counts else None, patch=patch, tubelet=tubelet,
    )
    if tensorboard:
        from vattn_cli.engine.tensorboard_log import require

        require("--tensorboard")
        values["tensorboard"] = True
    return StudyConfig(device=resolve_device(device if device is not None else DEFAULT_DEVICE).type, **values)


def _seeds(seed: int | None, seeds: int | None) -> list[int] | None:
    """``--seed`` and ``--seeds`` as the seed list; None (the study's default) when neither is given."""
    if seed is None and seeds is None:
        return None
    first = DEFAULT_SEEDS[0] if seed is None else seed
    return list(range(first, first + (len(DEFAULT_SEEDS) if seeds is None else seeds)))


def _data(data: str | None) -> list[str]:
    return split_list("--data", data) if data is not None else list(BUILTIN_DATA)


def _plan_options(val: str | None, frames: str | None, sizes: str | None, seed: int | None,
                  seeds: int | None) -> dict:
    """The given --val/--frames/--sizes/--seed(s), parsed; the plan's own defaults fill the others."""
    return given(
        val=split_list("--val", val) if val else None,
        frames=int_list("--frames", frames) if frames is not None else None,
        sizes=int_list("--sizes", sizes) if sizes is not None else None,
        seeds=_seeds(seed, seeds),
    )


def _check_tubelet(runs, tubelet: int | None) -> None:
    """Every run's frame count against ``--tubelet``: one usage line before torch loads or training starts."""
    from vattn_cli.zoo.catalog import check_tubelet

    for run in runs:
        check_tubelet(run.frames, StudyConfig.tubelet if tubelet is None else tubelet)


def _run_study(runs, out: Path, config, *, resume: bool, quiet: bool, csv_name: str, title: str, label: str,
               launch_flags: LaunchFlags | None = None) -> None:
    _check_tubelet(runs, config.tubelet)
    launch = (launch_flags or LaunchFlags()).parse(kind="train", timed=bool({"latency", "memory"} & set(config.measures)),
                                                   device=config.device, runs=len(runs))
    from vattn_cli.ablate import schemes as study
    from vattn_cli.ablate.progress import StudyProgress

    def say(message: str) -> None:
        if not quiet:
            stderr_console.print(message, highlight=False)

    say(f"{len(runs)} runs ({config.model}, {config.epochs} epochs each) into {out}")
    csv_path = out / csv_name

    def finished() -> str:
        return (f"{count_rows(csv_path)} of {len(runs)} runs finished in {csv_path} "
                "(a run stopped midway continues from its last.pt)")

    with output_lock(out, finished=finished):
        result = study.run(runs, out, config, resume=resume, csv_name=csv_name, title=title,
                           progress=StudyProgress(enabled=not quiet), log=say, launch=launch)
    emit(result.frame, quiet=quiet, title=title,
         columns=["dataset", label, "frames", "size", "params_m", "gflops", "top1", "pair_acc", "latency_ms", "status"])
    for dataset, points in result.pareto.items():
        say(f"Pareto-optimal on {dataset}: {', '.join(points)}")
    say(f"trained {result.trained}, skipped {result.skipped}; outputs: " + ", ".join(str(p) for p in result.files))


_SCHEMES_HELP = f"""Train, evaluate and profile every scheme at every token setting: accuracy against compute.

For each dataset x scheme x (frames, size) x seed: trains the model (OUT/runs/<dataset>/<run>/, the engine's checkpoints), evaluates top-1/top-5 on the val split, and measures params, GFLOPs per view, latency and peak memory; one row per run goes to OUT/schemes.csv as soon as it finishes. A killed study continues with --resume (finished runs are skipped, a run killed midway resumes from its last.pt); without --resume an existing schemes.csv is an error.

Writes OUT/accuracy_vs_gflops.png|svg (top-1 against GFLOPs, one panel per dataset, Pareto frontier) and OUT/summary.md (the TimeSformer paper's Table 1 shape). On builtin:motion, the reversal-pair accuracy (pair_acc) shows which schemes see the order of frames.

The defaults ({StudyConfig.model} model, {default_text(DEFAULT_SIZES)} px with {StudyConfig.patch} px patches, {StudyConfig.epochs} epochs, {DEFAULT_CLIPS['motion'][0]} generated motion and {DEFAULT_CLIPS['appearance'][0]} appearance clips) run two at a time on a 2-core CPU (--jobs; 52 runs for every scheme on both tasks, 21 minutes there from a fresh install); on a GPU raise --sizes, --frames, --epochs and --clips.

Example: vattn ablate schemes --out runs/schemes

Example: vattn ablate schemes --data train.csv --val val.csv --schemes space,divided,joint --frames 8 --sizes 224 --model small --epochs 30 --out runs/mine
"""


@ablate_app.command("schemes", help=_SCHEMES_HELP)
@with_launch_flags
def schemes(
    out: Path = typer.Option(..., "--out", help="Folder for schemes.csv, summary.md, the figure and runs/."),
    data: DataFlag = None,
    val: ValFlag = None,
    schemes: SchemesFlag = None,
    frames: FramesFlag = None,
    sizes: SizesFlag = None,
    model: ModelFlag = None,
    epochs: EpochsFlag = None,
    seeds: SeedsFlag = None,
    batch: BatchFlag = None,
    lr: LrFlag = None,
    workers: WorkersFlag = None,
    clips: ClipsFlag = None,
    patch: PatchFlag = None,
    tubelet: TubeletFlag = None,
    views: ViewsFlag = None,
    cache_dir: CacheFlag = None,
    resume: ResumeFlag = False,
    device: Device = None,
    seed: StudySeed = None,
    quiet: QuietFlag = False,
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write TensorBoard logs: each run's training "
                                     "curves and config to OUT/runs/<dataset>/<run>/tensorboard/ (its top-1 and GFLOPs "
                                     "as HParams metrics), the accuracy-vs-GFLOPs figure to OUT/tensorboard/; view all "
                                     "with tensorboard --logdir OUT (needs: pip install -e \".[tensorboard]\")."),
    launch_flags: LaunchFlags = None,
) -> None:
    """Accuracy against compute, every scheme (help: ``_SCHEMES_HELP``, generated from the defaults)."""
    from vattn_cli.ablate import schemes as study

    names = scheme_list("--schemes", schemes if schemes is not None else default_text(ALL_SCHEMES))
    check_outputs(folders={"--out": out})
    runs = study.plan(_data(data), names, **_plan_options(val, frames, sizes, seed, seeds))
    _check_tubelet(runs, tubelet)
    config = _study_config(model=model, epochs=epochs, batch=batch, lr=lr, workers=workers, device=device,
                           clips=clips, views=views, cache_dir=cache_dir, patch=patch,
                           tubelet=tubelet, tensorboard=tensorboard)
    _run_study(runs, out, config, resume=resume, quiet=quiet, csv_name=study.CSV_NAME,
               title="Accuracy against compute (vattn ablate schemes)", label="scheme", launch_flags=launch_flags)


@ablate_app.command("pos-embed")
@with_launch_flags
def pos_embed(
    out: Path = typer.Option(..., "--out", help="Folder for pos_embed.csv, pos_embed.md, the figure and runs/."),
    scheme: str = typer.Option(None, "--scheme", "--schemes", help="The one scheme whose position embeddings are "
                               f"varied (default: {POS_EMBED_SCHEME}). --schemes is an alias."),
    pos_embeds: str = typer.Option(None, "--pos-embeds", help=f"Position embeddings to compare, comma-separated: "
                                   f"{', '.join(POS_EMBED_CHOICES)} (default: {default_text(POS_EMBEDS)})."),
    data: DataFlag = None,
    val: ValFlag = None,
    frames: str = typer.Option(None, "--frames", help="Frame counts (token settings), comma-separated "
                               f"(default: {default_text(POS_EMBED_FRAMES)})."),
    sizes: SizesFlag = None,
    model: ModelFlag = None,
    epochs: EpochsFlag = None,
    seeds: SeedsFlag = None,
    batch: BatchFlag = None,
    lr: LrFlag = None,
    workers: WorkersFlag = None,
    clips: ClipsFlag = None,
    patch: PatchFlag = None,
    tubelet: TubeletFlag = None,
    views: ViewsFlag = None,
    cache_dir: CacheFlag = None,
    resume: ResumeFlag = False,
    device: Device = None,
    seed: StudySeed = None,
    quiet: QuietFlag = False,
    launch_flags: LaunchFlags = None,
) -> None:
    """Train one scheme with no, space-only and space-time position embeddings (the paper's Table 4).

    Same runner and outputs as `vattn ablate schemes`: OUT/pos_embed.csv (a pos_embed column added), OUT/pos_embed.png|svg, OUT/pos_embed.md; --resume continues.

    Example: vattn ablate pos-embed --scheme divided --out runs/pos
    """
    from vattn_cli.ablate import schemes as study

    names = scheme_list("--scheme", scheme if scheme is not None else POS_EMBED_SCHEME)
    check_outputs(folders={"--out": out})
    if len(names) != 1:
        raise UsageError(f"invalid --scheme {scheme!r}; expected one scheme")
    kinds = choice_list("--pos-embeds", pos_embeds, list(POS_EMBED_CHOICES)) if pos_embeds is not None else None
    runs = study.pos_embed_plan(_data(data), names[0], **_plan_options(val, frames, sizes, seed, seeds),
                                **given(pos_embeds=kinds))
    _check_tubelet(runs, tubelet)
    config = _study_config(model=model, epochs=epochs, batch=batch, lr=lr, workers=workers, device=device,
                           clips=clips, views=views, cache_dir=cache_dir, patch=patch,
                           tubelet=tubelet)
    _run_study(runs, out, config, resume=resume, quiet=quiet, csv_name=study.POS_CSV_NAME,
               title=f"Position embeddings of {names[0]} (vattn ablate pos-embed)", label="pos_embed",
               launch_flags=launch_flags)


def register(app: typer.Typer) -> None:
    app.add_typer(ablate_app, name="ablate")
