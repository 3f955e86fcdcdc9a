"""Glue between the engine and ``vattn_cli.data``: what a run's data may be, and loaders.

A run's data is a spec (``builtin:motion``, a list path), a resolved ``DataSpec``, or any
``Dataset`` whose items are ``dict(video=..., label=..., index=...)`` (the format of
``VideoClipDataset``); the last is how tests and studies feed prepared data in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vattn_cli.engine.config import parse_views, views_text  # noqa: F401 (torch-free home, re-exported)
from vattn_cli.errors import UsageError


@dataclass
class PreparedData:
    """A dataset ready for a loader, with what the engine needs to know about its labels."""

    dataset: Dataset
    num_classes: int
    name: str
    class_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_spec(spec: Any, *, split: str, root: str | None = None, cache_dir: str | None = None,
                 data_options: dict[str, Any] | None = None):
    """A ``DataSpec`` from a spec string (resolved by ``vattn_cli.data``) or as given."""
    if not isinstance(spec, str):
        return spec
    from vattn_cli.data import resolve_data

    return resolve_data(spec, split=split, root=root, cache_dir=cache_dir, **(data_options or {}))


def is_builtin(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith("builtin:")


def prepare(
    data: Any,
    *,
    frames: int,
    size: int,
    train: bool,
    split: str,
    views: tuple[int, int] = (1, 1),
    seed: int = 0,
    root: str | None = None,
    cache_dir: str | None = None,
    data_options: dict[str, Any] | None = None,
    num_classes: int | None = None,
    sampling: str = "uniform",
    sample_rate: int = 4,
    hflip: bool = False,
    train_scale: tuple[float, float] | None = None,
    threads: int = 1,
) -> PreparedData:
    """Turn any accepted form of data into a :class:`PreparedData`."""
    if isinstance(data, PreparedData):
        return data
    if isinstance(data, Dataset):
        classes = num_classes or getattr(data, "num_classes", None)
        if not classes:
            raise UsageError("a Dataset passed as data needs num_classes (an attribute or the config's)")
        return PreparedData(data, int(classes), getattr(data, "name", type(data).__name__),
                            getattr(data, "class_names", None))
    spec = resolve_spec(data, split=split, root=root, cache_dir=cache_dir, data_options=data_options)
    from vattn_cli.data import VideoClipDataset

    options = {"scale": tuple(train_scale)} if train and train_scale else {}
    dataset = VideoClipDataset(
        spec.items, frames=frames, size=size, sampling=sampling, sample_rate=sample_rate,
        train=train, views=views, hflip=hflip and train, threads=threads, seed=seed, **options,
    )
    return PreparedData(dataset, int(spec.num_classes), str(spec.name), list(spec.class_names or []) or None)


def make_data_loader(dataset: Dataset, *, batch_size: int, sampler: Sampler, workers: int, seed: int,
                     drop_last: bool) -> DataLoader:
    """A loader over ``sampler`` (which owns the order), via ``vattn_cli.data.make_loader``."""
    try:
        from vattn_cli.data import make_loader
    except ImportError:  # the data package is optional for Dataset inputs
        make_loader = None
    if make_loader is not None:
        return make_loader(dataset, batch_size=batch_size, shuffle=False, workers=workers, seed=seed,
                           drop_last=drop_last, sampler=sampler)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      persistent_workers=False)


def rng_neutral_iter(loader: DataLoader) -> Iterator:
    """``iter(loader)`` without touching the global torch RNG.

    Creating a DataLoader iterator draws a base seed from the global generator. A run resumed
    mid-epoch creates its iterator at another point of the RNG stream than the uninterrupted
    run did, so dropout masks would drift; drawing inside a saved/restored state keeps the
    stream the model sees identical. (Our datasets' randomness depends only on
    ``(seed, epoch, index)``, never on the worker seeds.)
    """
    state = torch.get_rng_state()
    try:
        return iter(loader)
    finally:
        torch.set_rng_state(state)


def set_epoch(dataset: Dataset, epoch: int) -> None:
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
