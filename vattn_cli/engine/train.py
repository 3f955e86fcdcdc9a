"""Training loop: resumable to the bit on CPU, DistributedDataParallel under torchrun.

One run lives in one ``out_dir``: ``config.json``, ``metrics.csv`` (one row per epoch),
``last.pt`` (each epoch, and every ``save_every`` steps) and ``best.pt`` (best val top-1).

Why a resumed run equals an uninterrupted one:

* ``last.pt`` holds the model, optimizer, scheduler, grad scaler, step, RNG states (every
  rank's) and the position inside the epoch (``batches_done``), plus the epoch's running
  loss and the metrics history, so ``metrics.csv`` is rewritten from it and never gets a
  duplicate row.
* The order of samples is a pure function of ``(seed, epoch)`` (:class:`ShardedSampler`) and a
  video's augmentation of ``(seed, epoch, index)``, so skipping the batches done restarts the
  data stream exactly.
* Nothing between two steps touches the global RNG: loader iterators are created under a
  saved RNG state and validation runs in eval mode.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from vattn_cli import __version__
from vattn_cli.engine import distributed as D
from vattn_cli.engine.data import PreparedData, is_builtin, make_data_loader, parse_views, prepare, rng_neutral_iter, set_epoch
from vattn_cli.engine.config import DEFAULT_MODEL, NO_VAL, SCRATCH_INIT, TrainConfig  # noqa: F401 (re-exported)
from vattn_cli.engine.evaluate import EvalResult, autocast, evaluate
from vattn_cli.engine.optim import build_optimizer, build_scheduler
from vattn_cli.engine.progress import ProgressEvent, ProgressHook
from vattn_cli.errors import UsageError
from vattn_cli.runtime import resolve_device, seed_everything
from vattn_cli.zoo.checkpoints import load_checkpoint, read_checkpoint, restore_rng_states, save_checkpoint

METRICS_COLUMNS = ["epoch", "step", "train_loss", "val_top1", "val_top5", "lr", "clips_per_s", "epoch_time_s",
                   "data_wait_share"]
#: Config keys a resumed run may change: they do not affect what is computed.
RESUME_FREE = frozenset({"out_dir", "resume", "device", "workers", "cache_dir", "root", "val_batch", "init",
                         "scratch_init", "tensorboard"})  # (init and scratch_init act only when a run starts)


def init_from_scratch_(model: nn.Module, std: float) -> None:
    """Initialise a fresh model for training from scratch rather than from an image model.

    TimeSformer's initialisation is for fine-tuning an ImageNet ViT: ``time_embed`` and the
    temporal projections (divided's ``temporal_fc``, axial's, local_global's) start at zero so
    the video model starts as the image model, and every linear layer is drawn with std 0.02
    (about 1/sqrt(width) at ViT-Base's 768, but 4x below it at the tiny model's 128). From
    scratch that leaves a fresh model blind to frame order, with attention logits near zero, and
    on data whose classes are time reversals of each other (the built-in motion task, SSv2's
    left/right pairs) it sits at chance for epochs. So, for ``std > 0``: ``pos_embed`` and
    ``time_embed`` (every parameter of that name: a second stage's too, ``factorised_encoder``'s
    temporal table, without which that model stays at chance on the motion task) are drawn from
    N(0, std) (truncated at 2 std; patch tokens have std ~1), and every linear layer but the head
    from N(0, 1/fan_in) (LeCun normal, truncated at 2 std), the zeroed projections included. ``std=0`` keeps the zoo's (TimeSformer's) initialisation.

    Measured on ``builtin:motion`` (tiny divided, 8 frames, patch 8 at 32 px, 384 clips, batch 8,
    AdamW 5e-4, 6 epochs, in-memory probe): zoo init plus N(0, 1) embeddings reached 89-98% pair
    accuracy on three seeds but left chance only in epoch 4-5, and in the engine one seed stayed
    at 61%; with the LeCun-normal linears it left chance in epoch 3 and reached 99% top-1 by
    epoch 6. Embedding std 0.5 reached 76% in 10 epochs, 2.0 stayed at chance in 6.
    """
    if not std:
        return
    with torch.no_grad():
        for name, embed in model.named_parameters():  # a second stage's table too (factorised_encoder)
            if name.rsplit(".", 1)[-1] in ("pos_embed", "time_embed"):
                nn.init.trunc_normal_(embed, std=std, a=-2 * std, b=2 * std)
        head = getattr(model, "head", None)
        for module in model.modules():
            if isinstance(module, nn.Linear) and module is not head:
                w = 1.0 / math.sqrt(module.in_features)
                nn.init.trunc_normal_(module.weight, std=w, a=-2 * w, b=2 * w)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


@dataclass
class TrainResult:
    """What a finished (or already complete, when resumed) run leaves behind."""

    config: TrainConfig
    out_dir: Path
    model: nn.Module  # the trained model (unwrapped from DDP), in eval mode
    history: list[dict[str, Any]]  # the rows of metrics.csv
    epochs: int  # completed epochs
    step: int
    num_classes: int
    best_top1: float | None
    best_epoch: int | None
    resumed_from_step: int | None = None
    world_size: int = 1

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path | None:
        path = self.out_dir / "best.pt"
        return path if path.exists() else None

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


EpochHook = Callable[[dict[str, Any]], None]


def resume_point(out_dir: str | Path) -> tuple[Path, dict[str, Any], str | None] | None:
    """The checkpoint a resumed run continues from: ``(path, checkpoint, note)``, or None if there is none.

    ``last.pt`` normally. It is written atomically, so it is only unreadable if something else
    broke it (a disk error, a copy cut short); then ``best.pt``, when there is one, is the
    fallback: it holds the complete state at the end of its epoch (it is saved at the same
    moment as that epoch's ``last.pt``), so the run repeats the epochs after it and, being
    deterministic, ends where it would have. ``note`` says so. Without a fallback the error
    says how to start the run again.
    """
    out = Path(out_dir)
    last, best = out / "last.pt", out / "best.pt"
    if not last.exists():
        return None
    try:
        return last, read_checkpoint(last), None
    except UsageError as exc:  # truncated, not a checkpoint, refused by weights_only: unusable either way
        problem = str(exc)
    if best.exists():
        try:
            ckpt = read_checkpoint(best)
        except UsageError:
            ckpt = None
        if ckpt is not None and (ckpt.get("extra") or {}).get("train_config") is not None:
            return best, ckpt, (f"{problem}; resuming from {best} instead (end of epoch {ckpt.get('epoch')}, step "
                                f"{ckpt.get('step')}): the epochs after it are trained again")
    raise UsageError(f"{problem}; the run keeps no other checkpoint to continue from: start it again with a new "
                     f"--out (or delete {last} and rerun without --resume)")


def read_run_config(out_dir: str | Path) -> TrainConfig | None:
    """The config of the run saved in ``out_dir`` (see :func:`resume_point`), or None when there is none."""
    point = resume_point(out_dir)
    if point is None:
        return None
    path, ckpt, _ = point
    saved = (ckpt.get("extra") or {}).get("train_config")
    if saved is None:
        raise UsageError(f"{path} is not a checkpoint of a vattn training run; use a new --out")
    return TrainConfig.from_dict(saved)


def resume_config(out_dir: str | Path, given: dict[str, Any]) -> TrainConfig:
    """The saved run's config with ``given`` applied; a usage error if a given value changes the run.

    This is how ``vattn train --resume --out DIR`` continues with no other flags, and refuses
    e.g. ``--frames 16`` on a run trained at 8.
    """
    saved = read_run_config(out_dir)
    if saved is None:
        return TrainConfig(**{**given, "out_dir": str(out_dir), "resume": True})
    values = saved.to_dict()
    for key, value in given.items():
        if key not in RESUME_FREE and value != values.get(key):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} {value!r} does not match the run in {out_dir} ({values.get(key)!r}); "
                             "drop the flag to resume it, or use a new --out")
        values[key] = value
    values.update(out_dir=str(out_dir), resume=True)
    return TrainConfig.from_dict(values)


def _check_same_run(config: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    mine = config.to_dict()
    for key in sorted(set(mine) | set(saved)):
        if key not in RESUME_FREE and mine.get(key) != saved.get(key):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} {mine.get(key)!r} does not match the run in {path.parent} "
                             f"({saved.get(key)!r}); use the same settings to resume, or a new --out")


def given_options(**values: Any) -> dict[str, Any]:
    """The backbone options a run sets (not None), for ``create_model``."""
    return {k: v for k, v in values.items() if v is not None}


def _build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    from vattn_cli.zoo.registry import create_model, resolve_model

    setting = resolve_model(config.model or DEFAULT_MODEL, config.scheme, None, config.frames, config.size, config.patch, num_classes)
    return create_model(setting["scheme"], size=setting["size"], frames=setting["frames"],
                        img_size=setting["img_size"], patch=setting["patch"], num_classes=num_classes,
                        **given_options(tubelet=config.tubelet, tubelet_init=config.tubelet_init), **config.model_options)


def _init_model(config: TrainConfig) -> nn.Module:
    """Start from ``--init``: position embeddings resized to the run's clip (head fixed later)."""
    from vattn_cli.zoo.registry import PRESETS, SIZES

    model = load_checkpoint(config.init, frames=config.frames, img_size=config.size, tubelet=config.tubelet,
                            tubelet_init=config.tubelet_init or config.model_options.get("tubelet_init"))
    got = model.config
    if config.scheme and config.scheme != got.scheme:
        raise UsageError(f"--scheme {config.scheme!r} does not match --init {config.init} (scheme {got.scheme!r})")
    size = PRESETS[config.model].size if config.model in PRESETS else config.model
    if size in SIZES and (size != got.size if got.size else (SIZES[size].dim, SIZES[size].depth) != (got.dim, got.depth)):
        raise UsageError(f"--model {config.model!r} does not match --init {config.init} "
                         f"(size {got.size}, dim {got.dim}, depth {got.depth}); drop --model or pass the checkpoint's")
    if config.patch and config.patch != got.patch:
        raise UsageError(f"--patch {config.patch} does not match --init {config.init} (patch {got.patch})")
    return model


def _metrics_csv(history: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buf.getvalue()


class _Run:
    """State of one training run on one rank; ``train()`` drives it."""

    def __init__(self, config: TrainConfig, info: D.DistInfo, train_set: PreparedData,
                 val_set: PreparedData | None, progress: ProgressHook | None, on_epoch: EpochHook | None) -> None:
        self.config, self.info, self.train_set, self.val_set = config, info, train_set, val_set
        self.progress, self.on_epoch = progress, on_epoch
        self.out = Path(config.out_dir)
        self.device = info.device
        n = len(train_set.dataset)
        self.sampler = D.ShardedSampler(n, shuffle=True, seed=config.seed, rank=info.rank, world_size=info.world_size)
        per_rank = self.sampler.per_rank
        self.drop_last = per_rank >= config.batch
        self.steps_per_epoch = per_rank // config.batch if self.drop_last else 1
        self.total_steps = config.epochs * self.steps_per_epoch
        self.loader = make_data_loader(train_set.dataset, batch_size=config.batch, sampler=self.sampler,
                                       workers=config.workers, seed=config.seed, drop_last=self.drop_last)
        # mutable state, all of it in last.pt
        self.epoch = 0  # completed epochs
        self.step = 0
        self.batches_done = 0
        self.acc = self._fresh_acc()
        self.history: list[dict[str, Any]] = []
        self.best_top1: float | None = None
        self.best_epoch: int | None = None
        self.resumed_from: int | None = None

    @staticmethod
    def _fresh_acc() -> dict[str, float]:
        return {"loss_sum": 0.0, "clips": 0.0, "busy_s": 0.0, "wait_s": 0.0, "val_s": 0.0, "lr": float("nan")}

    def setup_model(self, ckpt: dict[str, Any] | None, init_model: nn.Module | None) -> None:
        config = self.config
        if ckpt is not None:
            from vattn_cli.zoo.registry import create_model_from_config

            try:
                model = create_model_from_config(dict(ckpt["config"]))
            except UsageError as exc:
                raise UsageError(f"checkpoint {self.out / 'last.pt'}: {exc}") from None
            model.load_state_dict(ckpt["model"])
        else:
            model = init_model if init_model is not None else _build_model(config, self.train_set.num_classes)
            if init_model is None:
                init_from_scratch_(model, config.scratch_init)
            if model.config.num_classes != self.train_set.num_classes:  # --init from another label set
                model.reset_head(self.train_set.num_classes)
            if self.info.rank:  # distinct dropout masks per rank; rank 0 keeps the seeded stream
                torch.manual_seed(config.seed + self.info.rank)
        if model.config.num_classes < self.train_set.num_classes:
            raise UsageError(f"the model's head has {model.config.num_classes} classes but the data has "
                             f"{self.train_set.num_classes}")
        self.model = model.to(self.device)
        self.net: nn.Module = self.model
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = build_optimizer(self.model, config.optimizer, config.base_lr, config.weight_decay,
                                         config.momentum)
        warmup = round(config.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup, config.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.dtype == "fp16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        if ckpt is not None:
            self._restore(ckpt)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        extra = ckpt.get("extra") or {}
        if extra.get("steps_per_epoch") != self.steps_per_epoch:
            raise UsageError(
                f"the run in {self.out} has {extra.get('steps_per_epoch')} steps per epoch but this data, batch "
                f"and process count give {self.steps_per_epoch}; resume with the same data and --nproc_per_node"
            )
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.batches_done = int(extra.get("batches_done", 0))
        ranks = extra.get("ranks") or []
        mine = ranks[self.info.rank] if len(ranks) == self.info.world_size else {}
        self.acc = dict(mine.get("acc") or self._fresh_acc())
        self.history = [dict(row) for row in extra.get("history", [])]
        self.best_top1, self.best_epoch = extra.get("best_top1"), extra.get("best_epoch")
        self.resumed_from = self.step
        restore_rng_states(ckpt)
        if "rng" in mine:  # each rank's own dropout stream
            torch.set_rng_state(mine["rng"])

    def save(self, name: str) -> None:
        """Write ``name`` (last.pt/best.pt) atomically from rank 0; collective on every rank."""
        ranks = D.all_gather_object({"rng": torch.get_rng_state(), "acc": dict(self.acc)}, self.info)
        if not self.info.is_main:
            return
        extra = {
            "train_config": self.config.to_dict(), "batches_done": self.batches_done, "ranks": ranks,
            "history": [dict(r) for r in self.history], "best_top1": self.best_top1, "best_epoch": self.best_epoch,
            "steps_per_epoch": self.steps_per_epoch, "world_size": self.info.world_size,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "num_classes": self.train_set.num_classes, "dataset": self.train_set.name,
        }
        save_checkpoint(self.out / name, self.model, optimizer=self.optimizer,
                                       scheduler=self.scheduler, epoch=self.epoch, step=self.step, extra=extra)

    def write_metrics(self) -> None:
        if self.info.is_main:
            from vattn_cli.report.tables import atomic_write_text

            atomic_write_text(self.out / "metrics.csv", _metrics_csv(self.history))

    def train_epoch(self) -> None:
        config, info = self.config, self.info
        set_epoch(self.train_set.dataset, self.epoch)
        self.sampler.set_epoch(self.epoch, start=self.batches_done * config.batch)
        batches = rng_neutral_iter(self.loader)
        self.net.train()
        for b in range(self.batches_done, self.steps_per_epoch):
            t0 = time.perf_counter()
            item = next(batches)
            t1 = time.perf_counter()
            video = item["video"].to(self.device, non_blocking=True)
            label = torch.as_tensor(item["label"]).long().to(self.device, non_blocking=True)
            with autocast(self.device, config.dtype):
                logits = self.net(video)
            loss = self.criterion(logits.float(), label)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if config.clip_grad:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad)
            self.acc["lr"] = self.optimizer.param_groups[0]["lr"]
            self.scaler.step(self.optimizer)
            self.scaler.update()
            with warnings.catch_warnings():  # fp16: the scaler skips steps with inf gradients; the schedule goes on
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.scheduler.step()
            self.step += 1
            self.batches_done = b + 1
            t2 = time.perf_counter()
            clips = video.shape[0]
            self.acc["loss_sum"] += float(loss.item()) * clips
            self.acc["clips"] += clips
            self.acc["wait_s"] += t1 - t0
            self.acc["busy_s"] += t2 - t0
            if self.progress is not None and info.is_main:
                self.progress(ProgressEvent(
                    "train", self.batches_done, self.steps_per_epoch, epoch=self.epoch + 1, epochs=config.epochs,
                    loss=self.acc["loss_sum"] / self.acc["clips"],
                    clips_per_s=self.acc["clips"] * info.world_size / max(self.acc["busy_s"], 1e-9),
                ))
            if config.save_every and self.step % config.save_every == 0 and self.batches_done < self.steps_per_epoch:
                self.save("last.pt")
        del batches

    def validate(self) -> EvalResult | None:
        if self.val_set is None:
            return None
        config = self.config
        return evaluate(self.model, self.val_set, views=config.val_views, batch=config.val_batch or config.batch,
                        dtype=config.dtype, workers=config.workers, seed=config.seed, flops=False,
                        progress=self.progress, dist_info=self.info, epoch=(self.epoch + 1, config.epochs))

    def finish_epoch(self) -> dict[str, Any]:
        info = self.info
        val = self.validate()
        loss_sum, clips, busy, wait = D.all_reduce_sum(
            [self.acc["loss_sum"], self.acc["clips"], self.acc["busy_s"], self.acc["wait_s"]], info)
        busy_mean = busy / info.world_size
        val_s = val.seconds if val is not None else 0.0
        row = {
            "epoch": self.epoch + 1, "step": self.step, "train_loss": loss_sum / max(clips, 1),
            "val_top1": val.top1 if val else float("nan"), "val_top5": val.top5 if val else float("nan"),
            "lr": self.acc["lr"], "clips_per_s": clips / max(busy_mean, 1e-9),
            "epoch_time_s": busy_mean + val_s, "data_wait_share": wait / max(busy, 1e-9),
        }
        self.history.append(row)
        self.epoch += 1
        self.batches_done = 0
        self.acc = self._fresh_acc()
        if val is not None and (self.best_top1 is None or val.top1 > self.best_top1):
            self.best_top1, self.best_epoch = val.top1, row["epoch"]
            self.save("best.pt")
        self.save("last.pt")
        self.write_metrics()
        return row

    def result(self) -> TrainResult:
        self.model.eval()
        return TrainResult(
            config=self.config, out_dir=self.out, model=self.model, history=self.history, epochs=self.epoch,
            step=self.step, num_classes=self.train_set.num_classes, best_top1=self.best_top1,
            best_epoch=self.best_epoch, resumed_from_step=self.resumed_from, world_size=self.info.world_size,
        )


def _train_scale(config: TrainConfig) -> tuple[float, float] | None:
    """The scale jitter: the config's, else none for built-in data, else the data module's default.

    PySlowFast's jitter (short side 8/7..10/7 of the crop) is for cropping large videos; the
    built-in clips are already at the training size, so it would only enlarge objects beyond the
    test scale, and the tiny model then learns the motion task several times slower.
    """
    if config.train_scale is not None:
        return config.train_scale
    return (1.0, 1.0) if is_builtin(config.data) else None


def _resolve_val(config: TrainConfig) -> Any:
    if config.val == NO_VAL:
        return None
    if config.val is None:
        return config.data if is_builtin(config.data) else None
    return config.val


def _write_config(run: _Run) -> None:
    if not run.info.is_main:
        return
    from vattn_cli.report.tables import atomic_write_text

    doc = {
        "train": run.config.to_dict(),
        "model": run.model.config.to_dict(),
        "resolved": {
            "num_classes": run.train_set.num_classes, "train_data": run.train_set.name,
            "val_data": run.val_set.name if run.val_set else None, "train_clips": len(run.train_set.dataset),
            "val_clips": len(run.val_set.dataset) if run.val_set else 0, "steps_per_epoch": run.steps_per_epoch,
            "total_steps": run.total_steps, "world_size": run.info.world_size,
            "batch_per_process": run.config.batch, "global_batch": run.config.batch * run.info.world_size,
            "lr": run.config.base_lr, "device": str(run.device),
        },
        "vattn_version": __version__,
    }
    atomic_write_text(run.out / "config.json", json.dumps(doc, indent=2, default=str) + "\n")


def train(
    config: TrainConfig,
    *,
    train_data: Any = None,
    val_data: Any = None,
    on_epoch: EpochHook | None = None,
    progress: ProgressHook | None = None,
    dist_info: D.DistInfo | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or continue, with ``config.resume``) the run in ``config.out_dir``.

    ``train_data``/``val_data`` override ``config.data``/``config.val`` with a ``DataSpec``,
    :class:`~vattn_cli.engine.data.PreparedData` or ``Dataset`` (the config's strings then
    only describe them). ``on_epoch(row)`` gets each metrics row on rank 0, ``progress`` gets
    :class:`ProgressEvent` ticks on rank 0. Under torchrun every rank calls this; only rank 0
    writes files. Resuming a run that is already complete trains nothing and returns it.
    ``log(line)`` gets, on rank 0, where a resumed run continues from ("resuming from step N").
    A new run that fails before its first checkpoint removes the files it wrote.
    """
    config.validate()
    info = dist_info or D.init_distributed(resolve_device(config.device))
    out = Path(config.out_dir)
    last = out / "last.pt"
    ckpt = None
    if last.exists():
        if not config.resume:
            raise UsageError(f"{out} already holds a run (last.pt); pass --resume to continue it or use a new --out")
        path, ckpt, note = resume_point(out)
        saved = (ckpt.get("extra") or {}).get("train_config")
        if saved is None:
            raise UsageError(f"{path} is not a checkpoint of a vattn training run; use a new --out")
        _check_same_run(config, saved, path)
        if log is not None and info.is_main:
            if note:
                log(note)
            extra = ckpt.get("extra") or {}
            log(f"resuming from step {ckpt.get('step')} of {out} (epoch {int(ckpt.get('epoch', 0)) + 1} of "
                f"{config.epochs}, batch {extra.get('batches_done', 0)} of {extra.get('steps_per_epoch')})"
                if int(ckpt.get("epoch", 0)) < config.epochs else
                f"resuming from step {ckpt.get('step')} of {out}: all {config.epochs} epochs are done already")
    try:
        return _train(config, info, ckpt, train_data, val_data, on_epoch, progress)
    except BaseException:
        if ckpt is None and info.is_main and not last.exists():
            # A new run that failed (a bad video, Ctrl-C) before its first checkpoint: take back
            # the files it wrote, so the folder does not look like a started run.
            for name in ("metrics.csv", "config.json"):
                (out / name).unlink(missing_ok=True)
        raise


def _train(config: TrainConfig, info: D.DistInfo, ckpt: dict[str, Any] | None, train_data: Any, val_data: Any,
           on_epoch: EpochHook | None, progress: ProgressHook | None) -> TrainResult:
    out = Path(config.out_dir)
    seed_everything(config.seed)
    init_model = _init_model(config) if config.init and ckpt is None else None
    common = dict(seed=config.seed, root=config.root, cache_dir=config.cache_dir, data_options=config.data_options,
                  sampling=config.sampling, sample_rate=config.sample_rate)
    frames, size = _clip_shape(config, ckpt, init_model)
    train_set = prepare(train_data if train_data is not None else config.data, frames=frames, size=size, train=True,
                        split="train", hflip=config.hflip, train_scale=_train_scale(config), **common)
    val_spec = val_data if val_data is not None else _resolve_val(config)
    val_set = None
    if val_spec is not None:
        val_set = prepare(val_spec, frames=frames, size=size, train=False, split="val",
                          views=parse_views(config.val_views), num_classes=train_set.num_classes, **common)
    run = _Run(config, info, train_set, val_set, progress, on_epoch)
    run.setup_model(ckpt, init_model)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    _write_config(run)
    run.write_metrics()  # on resume: exactly the saved history, dropping rows of epochs being redone
    board = _tensorboard(run) if config.tensorboard and info.is_main else None
    while run.epoch < config.epochs:
        run.train_epoch()
        row = run.finish_epoch()
        if board is not None:
            board.epoch(row)
        if on_epoch is not None and info.is_main:
            on_epoch(dict(row))
    if board is not None:
        board.close()
    D.barrier(info)
    return run.result()


def _tensorboard(run: _Run):
    """``OUT/tensorboard/`` for ``--tensorboard``: hparams, and the history so far rewritten (resume)."""
    from vattn_cli.engine import tensorboard_log

    tensorboard_log.require()
    return tensorboard_log.RunLog(run.out / tensorboard_log.TB_DIR,
                                  tensorboard_log.run_hparams(run.config.to_dict(), run.model.config.to_dict()),
                                  history=run.history)


def _clip_shape(config: TrainConfig, ckpt: dict[str, Any] | None, init_model: nn.Module | None) -> tuple[int, int]:
    """Frames and size of the training clips: the run's (resume), the flags, the init's or the preset's."""
    from vattn_cli.zoo.registry import DEFAULTS, PRESETS

    if ckpt is not None:
        return int(ckpt["config"]["frames"]), int(ckpt["config"]["img_size"])
    if init_model is not None:
        return int(config.frames or init_model.config.frames), int(config.size or init_model.config.img_size)
    preset = PRESETS.get(config.model)
    frames = config.frames or (preset.frames if preset else DEFAULTS["frames"])
    size = config.size or (preset.img_size if preset else DEFAULTS["img_size"])
    return int(frames), int(size)
