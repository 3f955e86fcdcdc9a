"""Process groups and deterministic sharding for runs under ``torchrun``.

There is no launcher here: ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) starts the processes, and this module only
joins them into a group (gloo on CPU, nccl on CUDA), so multi-node works the way torchrun
does it.

The sampler is ours rather than ``DistributedSampler`` because a resumed run must restart in
the middle of an epoch: the order is a pure function of ``(seed, epoch)``, and ``start`` skips
the samples already consumed, so a killed run continues with exactly the batches it would
have seen.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from vattn_cli.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Whether the environment describes a multi-process job (torchrun sets these)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes, or describe a single process.

    Idempotent: a second call (e.g. ``train`` then ``evaluate`` in one process) reuses the
    group. On CUDA each process takes the GPU named by ``LOCAL_RANK``.
    """
    if not launched_by_torchrun() and not (dist.is_available() and dist.is_initialized()):
        return DistInfo(device=device)
    if not dist.is_available():  # pragma: no cover - torch built without distributed
        raise UsageError("this torch build has no torch.distributed; run without torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown_distributed() -> None:
    """Leave the process group (at the end of a CLI command, not inside the library calls).

    No barrier: ``train`` and ``evaluate`` end in collectives already, and after an error on
    one rank a barrier would hang the others instead of letting them exit.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum floats over ranks in float64 (exact for the counts and sums the loop keeps)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(info))
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_gather_tensor(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's ``t`` (same shape on every rank), in rank order, on the CPU."""
    if not info.distributed:
        return [t.cpu()]
    t = t.to(_comm_device(info)).contiguous()
    out = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t)
    return [x.cpu() for x in out]


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. an error found while reading a checkpoint)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _comm_device(info: DistInfo) -> torch.device:
    return info.device if dist.get_backend() == "nccl" else torch.device("cpu")


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of ``n`` samples in ``epoch``: a pure function of its arguments."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
    return torch.randperm(n, generator=g).tolist()


class ShardedSampler(Sampler[int]):
    """``DistributedSampler`` semantics with a restart point.

    The epoch's order (shuffled by :func:`epoch_permutation`, or ``0..n-1``) is padded by
    wrapping around to a multiple of ``world_size`` and dealt round-robin, so every rank gets
    ``ceil(n / world_size)`` samples. ``start`` skips that many of this rank's samples: the
    batches a killed run had already trained on.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if n < 1:
            raise UsageError("the data set is empty")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0

    @property
    def per_rank(self) -> int:
        return math.ceil(self.n / self.world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        order = epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle else list(range(self.n))
        total = self.per_rank * self.world_size
        padded = (order * math.ceil(total / self.n))[:total]
        return padded[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start
