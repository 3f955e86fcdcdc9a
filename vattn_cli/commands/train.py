"""``vattn train``: train one scheme on a video list or built-in task; resumable; DDP under torchrun."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from vattn_cli.commands._options import given, one_choice
from vattn_cli.commands._outputs import check_outputs, count_rows, output_lock
from vattn_cli.engine.config import DEFAULT_LR, DEFAULT_MODEL, NO_VAL, OPTIMIZERS, TUBELET_INITS, TrainConfig
from vattn_cli.errors import UsageError
from vattn_cli.measure.setting import DTYPES
from vattn_cli.report.tables import emit
from vattn_cli.runtime import DEVICES, check_device_name
from vattn_cli.zoo.catalog import DEFAULTS, SIZES


def _epoch_line(row: dict) -> str:
    val = "" if row["val_top1"] != row["val_top1"] else f"  val top1 {row['val_top1']:.1f}  top5 {row['val_top5']:.1f}"
    return (f"epoch {row['epoch']}  loss {row['train_loss']:.4f}{val}  lr {row['lr']:.2e}  "
            f"{row['clips_per_s']:.1f} clips/s  {row['epoch_time_s']:.1f} s  data wait {100 * row['data_wait_share']:.0f}%")


def _scale(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(_fraction(x)) for x in text.split(","))
    except ValueError:
        raise UsageError(f"invalid --train-scale {text!r}; expected LO,HI such as 1,1.15") from None
    return lo, hi


def _fraction(text: str) -> float:
    """``"8/7"`` or ``"1.14"`` -> float."""
    num, _, den = text.strip().partition("/")
    return float(num) / float(den) if den else float(num)


_LR_DEFAULTS = ", ".join(f"{lr:g} for {name}" for name, lr in DEFAULT_LR.items())


def train(
    scheme: str = typer.Option(None, "--scheme", "--schemes", help="Attention scheme (see vattn zoo); implied by a "
                               "preset --model or --init. --schemes is an alias."),
    data: str = typer.Option(None, help="Training list (path label / path,label) or builtin:motion, builtin:appearance."),
    val: str = typer.Option(None, help="Validation list. Default: the built-in val split for builtin data, else none; "
                                       f"'{NO_VAL}' turns validation off."),
    root: str = typer.Option(None, help="Folder the list's video paths are relative to (default: the list's folder)."),
    model: str = typer.Option(None, help=f"Model size ({', '.join(SIZES)}) or preset (default: {DEFAULT_MODEL}, or the "
                                         "--init checkpoint's)."),
    frames: int = typer.Option(None, min=1, help=f"Frames per clip (default: the preset's, else {DEFAULTS['frames']})."),
    size: int = typer.Option(None, min=1, help="Frame size in pixels, square "
                                        f"(default: the preset's, else {DEFAULTS['img_size']})."),
    patch: int = typer.Option(None, min=1, help=f"Patch size in pixels (default: the preset's, else {DEFAULTS['patch']})."),
    tubelet: int = typer.Option(None, "--tubelet", min=1, help="Frames per patch: a 3D (tubelet) patch embedding when "
                                "> 1 (default: 1, or the --init checkpoint's)."),
    tubelet_init: str = typer.Option(None, "--tubelet-init", help=f"{' or '.join(TUBELET_INITS)}: how --init's "
                                     "per-frame (2D) patch weights fill the 3D kernel: on the central frame of each "
                                     "tubelet, zeros elsewhere (ViViT's), or divided by the tubelet on every frame "
                                     "(I3D's inflation) (default: central)."),
    epochs: int = typer.Option(None, min=1, help=f"Epochs (default: {TrainConfig.epochs})."),
    batch: int = typer.Option(None, min=1, help="Clips per step PER PROCESS (under torchrun the global batch is N times it) "
                                         f"(default: {TrainConfig.batch})."),
    lr: float = typer.Option(None, help=f"Peak learning rate (default: {_LR_DEFAULTS})."),
    weight_decay: float = typer.Option(None, "--weight-decay", min=0.0, help="Weight decay (not on norms, biases, embeddings) "
                                       f"(default: {TrainConfig.weight_decay:g})."),
    warmup_epochs: float = typer.Option(None, "--warmup-epochs", min=0.0, help="Linear warm-up before the cosine decay, per step "
                                        f"(default: {TrainConfig.warmup_epochs:g})."),
    label_smoothing: float = typer.Option(None, "--label-smoothing",
                                          help=f"Label smoothing (default: {TrainConfig.label_smoothing:g})."),
    clip_grad: float = typer.Option(None, "--clip-grad", min=0.0, help="Gradient norm clipping; 0 turns it off "
                                    f"(default: {TrainConfig.clip_grad:g})."),
    optimizer: str = typer.Option(None, help=f"{' or '.join(OPTIMIZERS)} (sgd: Nesterov momentum "
                                             f"{TrainConfig.momentum:g}, as in the paper) (default: {TrainConfig.optimizer})."),
    dtype: str = typer.Option(None, help=f"{', '.join(DTYPES[:-1])} or {DTYPES[-1]} (autocast) "
                                         f"(default: {TrainConfig.dtype})."),
    workers: int = typer.Option(None, min=0, help=f"Data-loading worker processes (default: {TrainConfig.workers})."),
    init: str = typer.Option(None, help="Start from this checkpoint (ours, official TimeSformer .pyth, HF folder)."),
    save_every: int = typer.Option(None, "--save-every", min=0, help="Also write last.pt every N steps "
                                   f"(default: {TrainConfig.save_every}, each epoch only)."),
    train_scale: str = typer.Option(None, "--train-scale", help="Training scale jitter LO,HI: the short side is scaled "
                                    "to a random LO..HI times --size before the random crop (default: 1,1 on builtin "
                                    "data, else 8/7,10/7 as PySlowFast)."),
    scratch_init: float = typer.Option(None, "--scratch-init", help="Training from scratch: std of the position "
                                       "and time embeddings, with every linear layer drawn LeCun-normal (also the "
                                       "temporal projections TimeSformer zeroes); 0 keeps TimeSformer's init, made "
                                       "for fine-tuning an image model, with which a fresh model is blind to frame "
                                       f"order for a long while (default: {TrainConfig.scratch_init:g})."),
    val_views: str = typer.Option(None, "--val-views", help="Views for the per-epoch validation, TxS "
                                  f"(default: {TrainConfig.val_views})."),
    out: Path = typer.Option(..., help="Run folder: config.json, metrics.csv, last.pt, best.pt."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where last.pt left it "
                                                         "(flags not given are taken from the run)."),
    seed: int = typer.Option(None, help=f"Seed for initialisation, shuffling and augmentation (default: {TrainConfig.seed})."),
    device: str = typer.Option(None, help=f"{', '.join(DEVICES)} (under torchrun: the GPU of LOCAL_RANK) "
                                          f"(default: {TrainConfig.device})."),
    csv: str = typer.Option(None, "--csv", help="Also write the metrics table as CSV to PATH, or '-' for stdout."),
    json_path: str = typer.Option(None, "--json", help="Also write the metrics table as JSON to PATH, or '-' for stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, epoch lines or table."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write TensorBoard logs to OUT/tensorboard/: "
                                     "loss, lr, val top-1/top-5, clips/s and data-wait share per epoch, the config as "
                                     "hparams (needs the extra: pip install -e \".[tensorboard]\"); a resumed run "
                                     "keeps logging."),
) -> None:
    """Train a model; writes OUT/last.pt, OUT/best.pt, OUT/metrics.csv and OUT/config.json.

    Under `torchrun --nproc_per_node=N vattn train ...` it runs DistributedDataParallel (gloo on
    CPU, nccl on CUDA); --batch is per process and only rank 0 writes files.

    Example: vattn train --scheme divided --data builtin:motion --model tiny --frames 4 --size 32 --epochs 5 --out runs/divided
    """
    from vattn_cli.zoo.catalog import check_scheme, list_models

    values = given(
        scheme=scheme, data=data, val=val, root=root,
        model=one_choice("--model", model, list_models()) if model is not None else None,
        frames=frames, size=size, patch=patch, tubelet=tubelet, tubelet_init=tubelet_init, epochs=epochs, batch=batch, lr=lr, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, optimizer=optimizer, dtype=dtype,
        workers=workers, init=init, scratch_init=scratch_init, save_every=save_every, val_views=val_views, seed=seed,
        train_scale=_scale(train_scale) if train_scale is not None else None,
    )
    # The device is always passed, also on --resume: where a run continues is this machine's choice.
    values["device"] = check_device_name(device if device is not None else TrainConfig.device)
    if clip_grad is not None:
        values["clip_grad"] = clip_grad or None  # 0 turns clipping off
    if tensorboard:
        from vattn_cli.engine.tensorboard_log import require

        require("--tensorboard")
        values["tensorboard"] = True
    if scheme is not None:
        check_scheme(scheme, label="--scheme")
    check_outputs(folders={"--out": out}, files={"--csv": csv, "--json": json_path})
    resuming = resume and (out / "last.pt").exists()
    if resume and not resuming:
        where = "the folder does not exist" if not out.exists() else "no last.pt there"
        if "data" not in values:
            raise UsageError(f"nothing to resume in {out} ({where}); start a run there without --resume, with --data")
        if not quiet and int(os.environ.get("RANK", "0")) == 0:
            typer.echo(f"nothing to resume in {out} ({where}): starting a new run", err=True)
    if not resuming and "data" not in values:
        raise UsageError("missing --data; give a video list or builtin:motion / builtin:appearance")
    # Bad values fail here, before torch is imported; the engine checks the config again.
    TrainConfig(out_dir=str(out), resume=resume, **values).validate()

    from vattn_cli.engine import RichProgress, resume_config, shutdown_distributed
    from vattn_cli.engine import train as run_training

    config = resume_config(out, values) if resuming else TrainConfig(out_dir=str(out), resume=resume, **values)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    talk = main_rank and not quiet

    def on_epoch(row: dict) -> None:
        if talk:
            typer.echo(_epoch_line(row), err=True)

    def say(line: str) -> None:
        if talk:
            typer.echo(line, err=True)

    def finished() -> str:
        epochs = count_rows(out / "metrics.csv")
        kept = "; last.pt holds the run" if (out / "last.pt").exists() else "; no checkpoint was written yet"
        return f"{epochs} of {config.epochs} epochs finished in {out}{kept}"

    try:
        with output_lock(out, finished=finished), RichProgress(enabled=talk) as progress:
            result = run_training(config, on_epoch=on_epoch, progress=progress, log=say)
    finally:
        shutdown_distributed()
    if main_rank:
        import pandas as pd

        frame = pd.DataFrame(result.history)
        emit(frame, csv=csv, json_path=json_path, quiet=quiet,
             title=f"vattn train {result.model.config.scheme} -> {out} (best val top1 {result.best_top1})")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
