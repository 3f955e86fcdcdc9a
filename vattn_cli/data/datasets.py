"""Clips for training and testing, and a DataLoader that repeats exactly.

Every random choice of a sample (temporal offset, scale, crop, flip) comes from a
``torch.Generator`` seeded by ``(seed, epoch, index)``, never from global RNG or the worker
id: a batch is the same with 0, 1 or 8 workers, and a run resumed at epoch ``e`` sees exactly
the clips the uninterrupted run saw. Shuffling is a function of ``(seed, epoch)`` for the same
reason. Call ``dataset.set_epoch(e)`` before iterating the loader for epoch ``e``.

Unreadable videos raise :class:`~vattn_cli.data.video.BadVideoError` (file and list line), or
with ``skip_bad=True`` come back as ``None``, are dropped by the loader's collate and are
counted in ``dataset.bad`` (in the main process too: workers pass their finds along with
each batch).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torch.utils.data._utils.collate import default_collate

import vattn_cli.data.frame_cache as frame_cache
from vattn_cli.data.lists import VideoItem
from vattn_cli.data.sampling import STRATEGIES, clip_indices
from vattn_cli.data.transforms import (
    IMAGENET_MEAN, IMAGENET_STD, SPATIAL_CROPS, TRAIN_SCALE, eval_transform, train_transform,
)
from vattn_cli.data.video import BadVideoError, open_video, read_frames
from vattn_cli.errors import UsageError, one_of


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (NumPy's SeedSequence), stable across runs."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(2, np.uint64)[0] >> 1)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread for a while.

    A clip's resize and normalise are far too small to gain from threads, and in the main
    process (``workers=0``) OpenMP's spinning pool fought decord's decoder thread: on a busy
    2-core machine a clip took 10x longer. Workers already run with one thread.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class VideoClipDataset(Dataset):
    """Video items -> normalised clips.

    ``train=True``: one random clip ``[3, T, size, size]``. ``train=False``: every view,
    ``[V, 3, T, size, size]`` with ``V = views[0]`` temporal clips x ``views[1]`` spatial crops
    (1 or 3), temporal-major. Samples are ``{"video", "label", "index"}`` dicts.
    """

    def __init__(
        self, items: Sequence[VideoItem], *, frames: int, size: int, sampling: str = "uniform",
        sample_rate: int = 4, train: bool, views: tuple[int, int] = (1, 1), hflip: bool = False,
        skip_bad: bool = False, threads: int = 1, seed: int = 0,
        mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
        scale: tuple[float, float] = TRAIN_SCALE, cache_frames: bool = True,
    ) -> None:
        if sampling not in STRATEGIES:
            raise one_of("--sampling", sampling, STRATEGIES)
        if frames < 1 or size < 1 or sample_rate < 1:
            raise UsageError(f"frames, size and sample rate must be >= 1, got {frames}, {size}, {sample_rate}")
        clips, crops = int(views[0]), int(views[1])
        if clips < 1 or crops not in SPATIAL_CROPS:
            raise UsageError(f"invalid views {clips}x{crops}; expected Kx1 or Kx3 with K >= 1")
        if not 0 < scale[0] <= scale[1]:
            raise UsageError(f"invalid scale {scale}; expected 0 < min <= max")
        self.items = list(items)
        self.frames, self.size, self.sampling, self.sample_rate = frames, size, sampling, sample_rate
        self.train, self.views, self.hflip, self.skip_bad = train, (clips, crops), hflip, skip_bad
        self.threads, self.seed, self.mean, self.std, self.scale = threads, seed, tuple(mean), tuple(std), scale
        self.cache_frames = cache_frames  # built-in videos only: see vattn_cli.data.frame_cache
        self.epoch = 0
        self._bad: dict[int, tuple[VideoItem, str]] = {}
        self._pending: list[tuple[int, str]] = []  # found here, not yet handed to the main process

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_views(self) -> int:
        return 1 if self.train else self.views[0] * self.views[1]

    @property
    def bad(self) -> list[tuple[VideoItem, str]]:
        """Unreadable videos met so far (``skip_bad``), in list order, each once."""
        return [self._bad[i] for i in sorted(self._bad)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator:
        """The only source of randomness for sample ``index`` in the current epoch."""
        return torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, index))

    def note_bad(self, index: int, reason: str) -> None:
        self._bad[int(index)] = (self.items[int(index)], reason)

    def drain_pending(self) -> list[tuple[int, str]]:
        found, self._pending = self._pending, []
        return found

    def __getitem__(self, index: int) -> dict | None:
        item = self.items[index]
        try:
            with one_thread():
                video = self.load(index)
        except BadVideoError as exc:
            if not self.skip_bad:
                raise
            self.note_bad(index, exc.reason)
            self._pending.append((index, exc.reason))
            return None
        return {"video": video, "label": item.label, "index": index}

    def cached_frames(self, index: int) -> torch.Tensor | None:
        """Every frame of built-in video ``index`` ``[N, H, W, 3]`` from :mod:`~vattn_cli.data.frame_cache`
        (decoded and stored on first use), or None for a user's video (decoded per clip as ever)."""
        if not self.cache_frames:
            return None
        path = frame_cache.cache_path(self.items[index].path)
        if path is None:
            return None
        frames = frame_cache.load(path)
        if frames is None:
            item = self.items[index]
            reader = open_video(item, self.threads)
            decoded = read_frames(reader, range(len(reader)), item)
            del reader
            frames = decoded.numpy()
            frame_cache.store(path, frames)
        return torch.from_numpy(frames)

    def load(self, index: int) -> torch.Tensor:
        """Decode and transform sample ``index`` (raises :class:`BadVideoError`)."""
        item = self.items[index]
        g = self.generator(index)
        every = self.cached_frames(index)
        if every is not None:  # a built-in video decoded before: the same pixels, no decoder
            clips = clip_indices(self.sampling, len(every), self.frames, rate=self.sample_rate,
                                 train=self.train, generator=g, num_clips=self.views[0])
            tensors = [every[list(clip)] for clip in clips]
        else:
            reader = open_video(item, self.threads)
            clips = clip_indices(self.sampling, len(reader), self.frames, rate=self.sample_rate,
                                 train=self.train, generator=g, num_clips=self.views[0])
            wanted = sorted({i for clip in clips for i in clip})
            decoded = read_frames(reader, wanted, item)
            del reader  # one reader per video, closed before the next opens
            row = {frame: k for k, frame in enumerate(wanted)}
            tensors = [decoded[[row[i] for i in clip]] for clip in clips]
        if self.train:
            return train_transform(tensors[0], self.size, g, scale=self.scale, hflip=self.hflip,
                                   mean=self.mean, std=self.std)
        views = [view for clip in tensors
                 for view in eval_transform(clip, self.size, crops=self.views[1], mean=self.mean, std=self.std)]
        return torch.stack(views)


class EpochShuffle(Sampler[int]):
    """A permutation that depends only on ``(seed, dataset.epoch)``, so resuming repeats it."""

    def __init__(self, dataset: VideoClipDataset, seed: int = 0) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, getattr(self.dataset, "epoch", 0), -1))
        return iter(torch.randperm(len(self.dataset), generator=g).tolist())


class SkipCollate:
    """Stacks samples, dropping skipped (``None``) ones and passing on what they were."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __call__(self, samples: list) -> dict:
        info = get_worker_info()  # in a worker, the dataset copy that made these samples
        dataset = info.dataset if info is not None else self.dataset
        drain = getattr(dataset, "drain_pending", None)
        found = drain() if drain else []
        kept = [s for s in samples if s is not None]
        batch = default_collate(kept) if kept else {}
        if found:
            batch["bad"] = found
        return batch


class VideoLoader(DataLoader):
    """A DataLoader that records skipped videos on the main dataset and skips empty batches."""

    def __iter__(self) -> Iterator[dict]:
        note = getattr(self.dataset, "note_bad", None)
        for batch in super().__iter__():
            for index, reason in batch.pop("bad", ()):
                if note:
                    note(index, reason)
            if "video" in batch:
                yield batch


class _SeedWorker:
    """Seeds Python, NumPy and torch in each worker from ``(seed, epoch, worker id)``.

    The dataset itself never uses these; they make user transforms repeatable too.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        info = get_worker_info()
        epoch = getattr(info.dataset, "epoch", 0) if info is not None else 0
        s = derive_seed(self.seed, epoch, worker_id, 1)
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)


def make_loader(
    dataset: Dataset, *, batch_size: int, shuffle: bool, workers: int = 0, seed: int = 0,
    drop_last: bool = False, sampler: Sampler | None = None, pin_memory: bool | None = None,
) -> VideoLoader:
    """A loader over ``dataset`` whose batches depend only on ``seed`` and the dataset's epoch.

    ``shuffle`` uses :class:`EpochShuffle` unless a ``sampler`` is given (e.g. a
    ``DistributedSampler``; call its ``set_epoch`` too). Workers are not persistent, so each
    epoch's workers see the epoch set on the dataset. ``pin_memory`` defaults to CUDA being there.
    """
    if batch_size < 1:
        raise UsageError(f"invalid batch size {batch_size}; expected an integer >= 1")
    if workers < 0:
        raise UsageError(f"invalid workers {workers}; expected an integer >= 0")
    if sampler is None and shuffle:
        sampler = EpochShuffle(dataset, seed)
    return VideoLoader(
        dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=workers,
        collate_fn=SkipCollate(dataset), drop_last=drop_last,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        worker_init_fn=_SeedWorker(seed) if workers > 0 else None,
        generator=torch.Generator().manual_seed(derive_seed(seed, 2)),
    )
