"""Multi-view evaluation: top-1/top-5 with softmax scores averaged over views.

A video is scored on ``T x S`` views (``T`` temporal clips x ``S`` spatial crops, as
TimeSformer and MMAction2 test): each view goes through the model on its own, its logits
become softmax probabilities, and the video's score is the **mean of the per-view
probabilities**. With ``1x1`` the score is simply ``softmax(model(clip))``.

Under torchrun every rank scores its shard, the per-sample scores are all-gathered and
de-duplicated by dataset index (the sampler pads the last round), so every rank returns the
same result as a single process would.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vattn_cli.engine import distributed as D
from vattn_cli.engine.config import EVAL_BATCH, EVAL_DTYPE, EVAL_VIEWS, EVAL_WORKERS
from vattn_cli.engine.data import PreparedData, make_data_loader, parse_views, prepare, rng_neutral_iter, views_text
from vattn_cli.engine.progress import ProgressEvent, ProgressHook
from vattn_cli.errors import UsageError, one_of
from vattn_cli.runtime import DEFAULT_DEVICE, DEFAULT_SEED, resolve_device, seed_everything
from vattn_cli.zoo.checkpoints import load_checkpoint, read_checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype: str):
    """Autocast for bf16/fp16, nothing for fp32."""
    if dtype not in DTYPES:
        raise one_of("--dtype", dtype, list(DTYPES))
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def view_flops(model: nn.Module, frames: int, size: int):
    """FLOPs of one view (one clip, batch 1) from the shared counter (``vattn_cli.measure``).

    fvcore's convention (a fused multiply-add = 1), attention kernels counted as their
    matmuls; ``.gflops`` and ``.attn_gflops`` are what the result rows report.
    """
    from vattn_cli.measure.flops import count_model_flops

    net = unwrap(model)
    state = torch.get_rng_state()  # the counter builds a twin model: leave the caller's RNG alone
    try:
        return count_model_flops(net, frames=frames, img_size=size, device=next(net.parameters()).device)
    finally:
        torch.set_rng_state(state)


def gflops_per_view(model: nn.Module, frames: int, size: int) -> float:
    """GFLOPs of one view of ``frames`` x ``size`` pixels (see :func:`view_flops`)."""
    return view_flops(model, frames, size).gflops


@dataclass
class EvalResult:
    """Accuracy over a data set; ``top1``/``top5`` in percent."""

    top1: float
    top5: float
    n: int
    views: tuple[int, int]
    num_classes: int
    dataset: str
    frames: int
    size: int
    scores: Tensor  # [n, C]: mean softmax over views; row i is dataset index i
    labels: Tensor  # [n]
    per_class: list[dict[str, Any]] = field(default_factory=list)
    gflops_per_view: float | None = None
    attn_gflops_per_view: float | None = None
    clips_per_s: float = float("nan")  # views per second through the model
    seconds: float = float("nan")

    @property
    def views_text(self) -> str:
        return views_text(self.views)

    def row(self) -> dict[str, Any]:
        """The accuracy columns of a result row (the caller adds the model's)."""
        return {
            "top1": self.top1, "top5": self.top5, "views": self.views_text, "dataset": self.dataset,
            "clips": self.n, "gflops": self.gflops_per_view, "attn_gflops": self.attn_gflops_per_view,
            "throughput": self.clips_per_s,
        }


def accuracy(scores: Tensor, labels: Tensor, k: int) -> float:
    """Percent of rows whose label is among the ``k`` highest scores (``k`` capped at C)."""
    k = min(k, scores.shape[1])
    hit = (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * hit.double().mean().item()


def per_class_accuracy(scores: Tensor, labels: Tensor, class_names: list[str] | None) -> list[dict[str, Any]]:
    """Top-1/top-5 per class present in ``labels`` (percent), in label order."""
    rows = []
    for c in sorted(set(labels.tolist())):
        mask = labels == c
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        rows.append({"label": c, "class": name, "clips": int(mask.sum()),
                     "top1": accuracy(scores[mask], labels[mask], 1),
                     "top5": accuracy(scores[mask], labels[mask], 5)})
    return rows


def score_views(model: nn.Module, video: Tensor) -> Tensor:
    """Mean softmax over views: ``video`` ``[B, V, 3, T, S, S]`` (or one view ``[B, 3, T, S, S]``)."""
    if video.ndim == 5:
        video = video[:, None]
    b, v = video.shape[:2]
    logits = model(video.flatten(0, 1)).float()
    return F.softmax(logits, dim=-1).view(b, v, -1).mean(dim=1)


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    views: tuple[int, int] | str = EVAL_VIEWS,
    frames: int | None = None,
    size: int | None = None,
    batch: int = EVAL_BATCH,
    dtype: str = EVAL_DTYPE,
    workers: int = EVAL_WORKERS,
    seed: int = DEFAULT_SEED,
    root: str | None = None,
    cache_dir: str | None = None,
    data_options: dict[str, Any] | None = None,
    per_class: bool = False,
    flops: bool = True,
    progress: ProgressHook | None = None,
    dist_info: D.DistInfo | None = None,
    epoch: tuple[int, int] = (0, 0),
) -> EvalResult:
    """Score ``model`` on ``data`` over ``views`` and return accuracy (same on every rank).

    ``data`` is a spec (``builtin:motion`` -> its val split, or a list path), a ``DataSpec``,
    a :class:`PreparedData`, or an eval-mode ``Dataset`` whose items carry ``video`` of shape
    ``[V, 3, T, S, S]``. ``frames``/``size`` default to the model's own. The model is put in
    eval mode and left there.
    """
    views = parse_views(views)
    if batch < 1:
        raise UsageError(f"invalid --batch {batch}; expected an integer >= 1")
    net = unwrap(model)
    device = next(net.parameters()).device
    info = dist_info or D.init_distributed(device)
    frames = frames or net.config.frames
    size = size or net.config.img_size
    prepared: PreparedData = prepare(
        data, frames=frames, size=size, train=False, split="val", views=views, seed=seed, root=root,
        cache_dir=cache_dir, data_options=data_options, num_classes=net.config.num_classes,
    )
    if prepared.num_classes > net.config.num_classes:
        raise UsageError(
            f"the data has {prepared.num_classes} classes but the model's head has {net.config.num_classes}; "
            "evaluate with a checkpoint trained on these labels"
        )
    n = len(prepared.dataset)
    sampler = D.ShardedSampler(n, shuffle=False, rank=info.rank, world_size=info.world_size)
    loader = make_data_loader(prepared.dataset, batch_size=batch, sampler=sampler, workers=workers, seed=seed,
                              drop_last=False)
    steps = len(loader)
    net.eval()
    indices, scores, labels = [], [], []
    start = time.perf_counter()
    with torch.no_grad():
        for i, item in enumerate(rng_neutral_iter(loader), 1):
            video = item["video"].to(device, non_blocking=True)
            with autocast(device, dtype):
                scores.append(score_views(net, video).cpu())
            indices.append(torch.as_tensor(item["index"]).long())
            labels.append(torch.as_tensor(item["label"]).long())
            if progress is not None and info.is_main:
                rate = i * batch * views[0] * views[1] * info.world_size / (time.perf_counter() - start)
                progress(ProgressEvent("eval", i, steps, epoch=epoch[0], epochs=epoch[1], clips_per_s=rate))
    seconds = time.perf_counter() - start
    local = torch.cat([torch.cat(indices)[:, None].double(), torch.cat(labels)[:, None].double(),
                       torch.cat(scores).double()], dim=1)
    gathered = torch.cat(D.all_gather_tensor(local, info))
    full_scores = torch.zeros(n, gathered.shape[1] - 2, dtype=torch.float32)
    full_labels = torch.zeros(n, dtype=torch.long)
    idx = gathered[:, 0].long()
    full_scores[idx] = gathered[:, 2:].float()
    full_labels[idx] = gathered[:, 1].long()
    seconds = max(D.all_gather_object(seconds, info))
    count = view_flops(net, frames, size) if flops else None
    return EvalResult(
        top1=accuracy(full_scores, full_labels, 1), top5=accuracy(full_scores, full_labels, 5), n=n,
        views=views, num_classes=net.config.num_classes, dataset=prepared.name, frames=frames, size=size,
        scores=full_scores, labels=full_labels,
        per_class=per_class_accuracy(full_scores, full_labels, prepared.class_names) if per_class else [],
        gflops_per_view=count.gflops if count else None, attn_gflops_per_view=count.attn_gflops if count else None,
        clips_per_s=n * views[0] * views[1] / seconds if seconds > 0 else float("nan"), seconds=seconds,
    )


@dataclass
class CheckpointEval:
    """An evaluation of a checkpoint: the result plus what the row needs about the model."""

    result: EvalResult
    model_config: dict[str, Any]
    params_m: float
    epochs: int | None
    checkpoint: str
    batch: int
    dtype: str
    device: str
    peak_mem_mb: float = float("nan")
    threads: int | None = None  # torch CPU threads during the evaluation (None: the current count)

    def frame(self, per_class: bool = False):
        """One accuracy row in the contract's columns; with ``per_class``, one more row per class.

        The provenance columns (:mod:`vattn_cli.measure.provenance`) come last.
        """
        import pandas as pd

        from vattn_cli.measure.provenance import provenance
        from vattn_cli.zoo.registry import token_count

        cfg, res = self.model_config, self.result
        tokens = token_count(cfg["scheme"], res.frames, res.size, cfg["patch"], cfg.get("tubelet", 1),
                             cfg.get("pool", "auto"))
        base = {
            "scheme": cfg["scheme"], "model": cfg.get("model") or cfg.get("size"), "frames": res.frames,
            "size": res.size, "patch": cfg["patch"], "tokens": tokens,
            "batch": self.batch, "mode": "infer", "dtype": self.dtype, "device": self.device, "params_m": self.params_m,
            "gflops": res.gflops_per_view, "attn_gflops": res.attn_gflops_per_view, "latency_ms": float("nan"),
            "latency_iqr_ms": float("nan"), "throughput": res.clips_per_s, "peak_mem_mb": self.peak_mem_mb,
            "status": "ok", "tubelet": cfg.get("tubelet", 1), "top1": res.top1, "top5": res.top5, "views": res.views_text, "epochs": self.epochs,
            "dataset": res.dataset, "clips": res.n, "checkpoint": self.checkpoint,
        }
        rows = [{**base, "class": "all", "label": None}] if per_class else [base]
        for entry in res.per_class if per_class else []:
            rows.append({**base, "top1": entry["top1"], "top5": entry["top5"], "clips": entry["clips"],
                         "class": entry["class"], "label": entry["label"]})
        frame = pd.DataFrame(rows)
        if per_class:
            frame["label"] = frame["label"].astype("Int64")
        for column, value in provenance(self.device, self.threads).items():
            frame[column] = value
        return frame


def eval_checkpoint(
    ckpt: str,
    data: Any,
    *,
    device: str = DEFAULT_DEVICE,
    seed: int = DEFAULT_SEED,
    frames: int | None = None,
    size: int | None = None,
    batch: int = EVAL_BATCH,
    dtype: str = EVAL_DTYPE,
    **options: Any,
) -> CheckpointEval:
    """Load any checkpoint ``load_checkpoint`` reads and :func:`evaluate` it (``vattn eval``).

    Refuses (usage error) files that are not checkpoints, truncated ones, pickles that would
    run code, and a data set with more classes than the checkpoint's head. ``options`` go to
    :func:`evaluate` (``views``, ``workers``, ``per_class``, ``root``, ``progress``...).
    """
    parse_views(options.get("views", EVAL_VIEWS))  # bad flags fail before the checkpoint is read
    if dtype not in DTYPES:
        raise one_of("--dtype", dtype, list(DTYPES))
    info = D.init_distributed(resolve_device(device))
    seed_everything(seed)
    model = load_checkpoint(ckpt, frames=frames, img_size=size)
    try:
        epochs = read_checkpoint(ckpt).get("epoch")
    except UsageError:  # an official .pyth or a Hugging Face folder: no training state
        epochs = None
    model = model.to(info.device)
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    result = evaluate(model, data, frames=frames, size=size, batch=batch, dtype=dtype, seed=seed, dist_info=info,
                      **options)
    peak = torch.cuda.max_memory_allocated(info.device) / 2**20 if info.device.type == "cuda" else float("nan")
    return CheckpointEval(
        result=result, model_config=model.config.to_dict(), params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        epochs=int(epochs) if epochs is not None else None, checkpoint=str(ckpt), batch=batch, dtype=dtype,
        device=info.device.type, peak_mem_mb=peak, threads=torch.get_num_threads(),
    )
