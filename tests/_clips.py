"""A tiny in-memory stand-in for ``VideoClipDataset``: random clips with a learnable signal.

Same item format (``dict(video, label, index)``; train ``[3, T, S, S]``, eval
``[V, 3, T, S, S]``) and the same rule for randomness: a pure function of
``(seed, epoch, index)``, so engine tests need no video decoding.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: deterministic and fast on a busy 2-core machine (OpenMP spinning costs more than it gives)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class RandomClips(Dataset):
    def __init__(self, n: int = 24, *, num_classes: int = 3, frames: int = 2, size: int = 16, train: bool = True,
                 views: tuple[int, int] = (1, 1), seed: int = 0, noise: float = 0.5) -> None:
        self.n, self.num_classes, self.frames, self.size = n, num_classes, frames, size
        self.train, self.views, self.seed, self.noise = train, views, seed, noise
        self.epoch = 0
        self.name = f"random{n}"
        g = torch.Generator().manual_seed(1234)
        self.prototypes = torch.randn(num_classes, 3, 1, size, size, generator=g)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def _clip(self, index: int, salt: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(hash((self.seed, salt, index)) % 2**62)
        label = index % self.num_classes
        base = self.prototypes[label].expand(3, self.frames, self.size, self.size)
        return base + self.noise * torch.randn(3, self.frames, self.size, self.size, generator=g)

    def __getitem__(self, index: int) -> dict:
        if self.train:
            video = self._clip(index, 1000 + self.epoch)
        else:
            v = self.views[0] * self.views[1]
            video = torch.stack([self._clip(index, -1 - k) for k in range(v)])
        return {"video": video, "label": index % self.num_classes, "index": index}
