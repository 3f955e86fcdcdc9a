"""TensorBoard logs of training runs, as PySlowFast and MMAction2 users expect them (optional extra).

``vattn train --tensorboard`` writes ``OUT/tensorboard/``; ``vattn ablate schemes --tensorboard``
writes one such folder per run (``OUT/runs/<dataset>/<run>/tensorboard/``) and the study's
accuracy-against-GFLOPs figure into ``OUT/tensorboard/``, so ``tensorboard --logdir OUT`` shows
every run side by side. Per epoch (global step = epoch number, 1-based, as ``metrics.csv``):

* ``train/loss``, ``train/lr`` (the learning rate at the epoch's last step);
* ``val/top1``, ``val/top5`` (when the run validates);
* ``perf/clips_per_s``, ``perf/data_wait_share`` (share of the step time spent waiting for data),
  ``perf/epoch_time_s``;

and the run's configuration as hparams (TensorBoard's HParams tab: the training config and the
model's, flattened, with the scalars above and ``eval/*``, ``cost/gflops`` as its metrics; an
``ablate schemes`` run adds ``eval/top1``, ``eval/top5`` and ``cost/gflops`` after its evaluation).

Resume: a resumed run reopens the folder with ``purge_step=1`` and writes its whole history again
from the checkpoint, so TensorBoard's reader drops what the interrupted process had written and
every epoch appears exactly once, whatever the process wrote before it died.

tensorboard is an optional dependency (``pip install -e ".[tensorboard]"``); the writer is
torch's ``torch.utils.tensorboard``. :func:`require` gives the one-line error when it is missing,
before any work starts.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vattn_cli.errors import UsageError

#: Folder of a run's event files, inside its run folder.
TB_DIR = "tensorboard"
#: Scalar tag -> ``metrics.csv`` column.
SCALARS = {
    "train/loss": "train_loss", "train/lr": "lr", "val/top1": "val_top1", "val/top5": "val_top5",
    "perf/clips_per_s": "clips_per_s", "perf/data_wait_share": "data_wait_share", "perf/epoch_time_s": "epoch_time_s",
}
#: Tags an ``ablate schemes`` run adds after training (:func:`log_result`).
RESULT_TAGS = ("eval/top1", "eval/top5", "cost/gflops")
INSTALL = 'pip install -e ".[tensorboard]" (or: pip install tensorboard)'


def available() -> bool:
    """Whether the tensorboard package is installed (checked without importing it)."""
    return importlib.util.find_spec("tensorboard") is not None


def require(flag: str = "--tensorboard") -> None:
    """A usage error, in one line, when ``flag`` is given but tensorboard is not installed."""
    if not available():
        raise UsageError(f"{flag} needs the tensorboard package, which is not installed; install it with {INSTALL}")


def _writer(log_dir: Path, purge_step: int | None = None):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir), purge_step=purge_step)


def flat_hparams(values: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A config as TensorBoard hparams: nested dicts flattened (``model.dim``), ``None`` as
    ``"none"``, lists and tuples as JSON text; only bool, int, float and str values remain."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, prefix=f"{name}."))
        elif value is None:
            out[name] = "none"
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


class RunLog:
    """The event files of one training run: hparams once, scalars per epoch."""

    def __init__(self, log_dir: str | Path, hparams: Mapping[str, Any], history: Iterable[Mapping[str, Any]] = ()) -> None:
        self.log_dir = Path(log_dir)
        # purge_step=1: whatever an earlier process of this run wrote is dropped by the reader,
        # and the checkpoint's history (below) is the log's truth.
        self.writer = _writer(self.log_dir, purge_step=1)
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        metrics = {tag: 0.0 for tag in (*SCALARS, *RESULT_TAGS)}
        for summary in hparams_summary(flat_hparams(hparams), metrics):
            self.writer.file_writer.add_summary(summary)
        for row in history:
            self.epoch(row, flush=False)
        self.writer.flush()

    def epoch(self, row: Mapping[str, Any], flush: bool = True) -> None:
        """Write one ``metrics.csv`` row's scalars at step ``row['epoch']``."""
        step = int(row["epoch"])
        for tag, column in SCALARS.items():
            value = row.get(column)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            self.writer.add_scalar(tag, float(value), global_step=step)
        if flush:
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def run_hparams(train_config: Mapping[str, Any], model_config: Mapping[str, Any]) -> dict[str, Any]:
    """What a run's HParams entry shows: its training config (bookkeeping left out) and its model."""
    skip = {"out_dir", "resume", "tensorboard", "cache_dir", "root"}
    return {**{k: v for k, v in train_config.items() if k not in skip}, "model": dict(model_config)}


def log_result(log_dir: str | Path, values: Mapping[str, float | None], step: int) -> None:
    """Add an evaluated run's results (``eval/top1``, ``cost/gflops``, ...) at ``step`` (its epochs)."""
    writer = _writer(Path(log_dir))
    for tag, value in values.items():
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            writer.add_scalar(tag, float(value), global_step=step)
    writer.close()


def log_figures(log_dir: str | Path, figures: Mapping[str, str | Path]) -> None:
    """Write PNG figures (the study's accuracy against GFLOPs) as images, ``{tag: png}``; a study
    resumed and re-plotted replaces them (``purge_step=0``)."""
    from matplotlib.image import imread

    writer = _writer(Path(log_dir), purge_step=0)
    for tag, png in figures.items():
        writer.add_image(tag, imread(str(png))[..., :3], global_step=0, dataformats="HWC")
    writer.close()
