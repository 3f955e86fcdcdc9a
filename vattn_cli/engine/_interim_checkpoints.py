"""Stand-in for ``vattn_cli.zoo.checkpoints`` until that module is merged (delete then).

Implements only what the engine calls, with the declared signatures: ``save_checkpoint``,
``read_checkpoint``, ``restore_rng_states``, ``load_checkpoint`` (our own files only).
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vattn_cli import __version__
from vattn_cli.errors import UsageError


def _rng_states() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(ckpt: dict[str, Any]) -> None:
    state = ckpt.get("rng") or {}
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "numpy" in state:
        np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, model, *, optimizer=None, scheduler=None, epoch=0, step=0, extra=None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "model": model.state_dict(),
        "config": model.config.to_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "step": step,
        "rng": _rng_states(),
        "vattn_version": __version__,
        "extra": extra or {},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(ckpt, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UsageError(f"refusing checkpoint {str(path)!r}: it is not plain data ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means: not a checkpoint
        raise UsageError(f"{str(path)!r} is not a readable checkpoint (truncated or another format): {str(exc).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise UsageError(f"{str(path)!r} is not a vattn checkpoint (no model/config)")
    return ckpt


def load_checkpoint(path, *, frames=None, img_size=None, num_classes=None):
    from vattn_cli.zoo.registry import create_model_from_config

    ckpt = read_checkpoint(path)
    config = dict(ckpt["config"])
    model = create_model_from_config(config)
    model.load_state_dict(ckpt["model"])
    if frames is not None:
        model.config.frames = frames
    if img_size is not None:
        model.config.img_size = img_size
    if num_classes is not None and num_classes != model.config.num_classes:
        model.reset_head(num_classes)
    return model
