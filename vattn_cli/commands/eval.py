"""``vattn eval --ckpt``: top-1/top-5 over temporal clips x spatial crops, with GFLOPs per view."""

from __future__ import annotations

import os

import typer

from vattn_cli.commands._options import given
from vattn_cli.commands._outputs import check_outputs
from vattn_cli.engine.config import EVAL_BATCH, EVAL_DTYPE, EVAL_VIEWS, EVAL_WORKERS, parse_views
from vattn_cli.errors import one_of
from vattn_cli.measure.setting import DTYPES
from vattn_cli.report.tables import emit
from vattn_cli.runtime import DEFAULT_DEVICE, DEFAULT_SEED, DEVICES, check_device_name

COLUMNS = ["scheme", "model", "frames", "size", "tokens", "views", "gflops", "params_m", "top1", "top5", "clips",
           "epochs", "dataset", "class"]


def eval_command(
    ckpt: str = typer.Option(..., "--ckpt", help="Checkpoint: ours (.pt), official TimeSformer .pyth or an HF folder."),
    data: str = typer.Option(..., help="Video list (path label / path,label) or builtin:motion, builtin:appearance "
                                       "(its val split)."),
    root: str = typer.Option(None, help="Folder the list's video paths are relative to (default: the list's folder)."),
    views: str = typer.Option(None, help="Temporal clips x spatial crops, e.g. 1x1, 1x3, 2x3; softmax scores are "
                                         f"averaged over the views (default: {EVAL_VIEWS})."),
    frames: int = typer.Option(None, help="Frames per view (default: the checkpoint's)."),
    size: int = typer.Option(None, help="Frame size in pixels (default: the checkpoint's)."),
    batch: int = typer.Option(None, help="Videos per forward (each with all its views), per process "
                                         f"(default: {EVAL_BATCH})."),
    per_class: bool = typer.Option(False, "--per-class", help="Add one row per class (the overall row has class 'all')."),
    dtype: str = typer.Option(None, help=f"{', '.join(DTYPES[:-1])} or {DTYPES[-1]} (autocast) (default: {EVAL_DTYPE})."),
    workers: int = typer.Option(None, help=f"Data-loading worker processes (default: {EVAL_WORKERS})."),
    device: str = typer.Option(None, help=f"{', '.join(DEVICES)} (under torchrun: the GPU of LOCAL_RANK) "
                                          f"(default: {DEFAULT_DEVICE})."),
    seed: int = typer.Option(None, help=f"Seed; evaluation itself is deterministic (default: {DEFAULT_SEED})."),
    csv: str = typer.Option(None, "--csv", help="Write the result as CSV to PATH, or '-' for stdout."),
    json_path: str = typer.Option(None, "--json", help="Write the result as JSON to PATH, or '-' for stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table; only the files asked for."),
) -> None:
    """Evaluate a checkpoint: top-1/top-5 over views, GFLOPs per view, optional per-class accuracy.

    Works under torchrun too (each process scores a shard; results are gathered on rank 0).

    Example: vattn eval --ckpt runs/divided/best.pt --data builtin:motion --views 2x3 --csv -
    """
    # Bad values fail before torch is imported; flags not given take eval_checkpoint's defaults.
    if views is not None:
        parse_views(views)
    if dtype is not None and dtype not in DTYPES:
        raise one_of("--dtype", dtype, list(DTYPES))
    if device is not None:
        check_device_name(device)
    check_outputs(files={"--csv": csv, "--json": json_path})
    options = given(views=views, frames=frames, size=size, batch=batch, dtype=dtype, workers=workers, device=device,
                    seed=seed)

    from vattn_cli.engine import RichProgress, shutdown_distributed
    from vattn_cli.engine.evaluate import eval_checkpoint

    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        with RichProgress(enabled=main_rank and not quiet) as progress:
            outcome = eval_checkpoint(ckpt, data, root=root, per_class=per_class, progress=progress, **options)
    finally:
        shutdown_distributed()
    if main_rank:
        emit(outcome.frame(per_class=per_class), csv=csv, json_path=json_path, quiet=quiet,
             title=f"vattn eval {ckpt}", columns=[c for c in COLUMNS if per_class or c != "class"])


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
