"""``vattn eval --ckpt``: top-1/top-5 over temporal clips x spatial crops, with GFLOPs per view."""

from __future__ import annotations

import os

import typer

from vattn_cli.report.tables import emit

COLUMNS = ["scheme", "model", "frames", "size", "tokens", "views", "gflops", "params_m", "top1", "top5", "clips",
           "epochs", "dataset", "class"]


def eval_command(
    ckpt: str = typer.Option(..., "--ckpt", help="Checkpoint: ours (.pt), official TimeSformer .pyth or an HF folder."),
    data: str = typer.Option(..., help="Video list (path label / path,label) or builtin:motion, builtin:appearance "
                                       "(its val split)."),
    root: str = typer.Option(None, help="Folder the list's video paths are relative to (default: the list's folder)."),
    views: str = typer.Option("1x1", help="Temporal clips x spatial crops, e.g. 1x1, 1x3, 2x3; softmax scores are "
                                          "averaged over the views."),
    frames: int = typer.Option(None, help="Frames per view. (default: the checkpoint's)"),
    size: int = typer.Option(None, help="Frame size in pixels. (default: the checkpoint's)"),
    batch: int = typer.Option(8, help="Videos per forward (each with all its views), per process."),
    per_class: bool = typer.Option(False, "--per-class", help="Add one row per class (the overall row has class 'all')."),
    dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16 (autocast)."),
    workers: int = typer.Option(0, help="Data-loading worker processes."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (under torchrun: the GPU of LOCAL_RANK)."),
    seed: int = typer.Option(0, help="Seed (evaluation itself is deterministic)."),
    csv: str = typer.Option(None, "--csv", help="Write the result as CSV to PATH, or '-' for stdout."),
    json_path: str = typer.Option(None, "--json", help="Write the result as JSON to PATH, or '-' for stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table; only the files asked for."),
) -> None:
    """Evaluate a checkpoint: top-1/top-5 over views, GFLOPs per view, optional per-class accuracy.

    Works under torchrun too (each process scores a shard; results are gathered on rank 0).

    Example: vattn eval --ckpt runs/divided/best.pt --data builtin:motion --views 2x3 --csv -
    """
    from vattn_cli.engine import RichProgress, shutdown_distributed
    from vattn_cli.engine.evaluate import eval_checkpoint

    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        with RichProgress(enabled=main_rank and not quiet) as progress:
            outcome = eval_checkpoint(ckpt, data, views=views, frames=frames, size=size, batch=batch, dtype=dtype,
                                      workers=workers, device=device, seed=seed, root=root, per_class=per_class,
                                      progress=progress)
    finally:
        shutdown_distributed()
    if main_rank:
        emit(outcome.frame(per_class=per_class), csv=csv, json_path=json_path, quiet=quiet,
             title=f"vattn eval {ckpt}", columns=[c for c in COLUMNS if per_class or c != "class"])


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
