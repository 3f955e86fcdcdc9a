"""Where and how a row was measured: what comparing two result files fairly needs.

Every measurement row (``profile``, ``ablate tokens``, ``ablate schemes``, ``eval``) carries
:data:`~vattn_cli.measure.setting.PROVENANCE_COLUMNS`:

- ``vattn_version``: :data:`vattn_cli.__version__`;
- ``torch_version``: ``torch.__version__``;
- ``device_name``: the GPU's name (``torch.cuda.get_device_name``) for a CUDA row, else the CPU
  model (``model name`` in ``/proc/cpuinfo``, else ``platform.processor()``, else the architecture);
- ``threads``: torch's CPU threads (``torch.get_num_threads()``) while the row was measured;
- ``machine``: a short stable fingerprint, the first 12 hex digits of the SHA-256 of
  :func:`machine_description`: CPU model, logical core count (``os.cpu_count()``), total memory
  in whole GiB, OS and architecture (``platform.system()``, ``platform.machine()``), and for a
  CUDA row also the GPU model and count. Two rows with the same ``machine`` ran on the same kind
  of machine; hostnames, kernel versions and thread counts do not go in.

What does not change while a process runs is computed once per process (per device type); torch
is imported only when a row asks, so the CLI's start stays torch-free.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from typing import Any


def cpu_name() -> str:
    """The CPU model: ``/proc/cpuinfo``'s ``model name`` (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def memory_gib() -> int | None:
    """Total physical memory in whole GiB (None where the OS does not say)."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (AttributeError, OSError, ValueError):
        return None


def _gpus() -> tuple[str, int]:
    import torch

    count = torch.cuda.device_count()
    return (torch.cuda.get_device_name() if count else "none"), count


@functools.lru_cache(maxsize=None)
def machine_description(device_type: str = "cpu") -> str:
    """What :func:`machine_fingerprint` hashes, one ``key=value`` per part, ``;``-separated."""
    parts = [f"cpu={cpu_name()}", f"cores={os.cpu_count()}", f"mem_gib={memory_gib()}",
             f"os={platform.system()}-{platform.machine()}"]
    if device_type == "cuda":
        name, count = _gpus()
        parts.append(f"gpu={name}x{count}")
    return ";".join(parts)


def machine_fingerprint(device_type: str = "cpu") -> str:
    """12 hex digits that stay the same across runs on the same machine (see the module doc)."""
    return hashlib.sha256(machine_description(device_type).encode("utf-8")).hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def _static(device: str) -> tuple[tuple[str, Any], ...]:
    import torch

    from vattn_cli import __version__

    device_type = device.split(":")[0]
    name = torch.cuda.get_device_name(torch.device(device)) if device_type == "cuda" else cpu_name()
    return (("vattn_version", __version__), ("torch_version", str(torch.__version__)), ("device_name", name),
            ("machine", machine_fingerprint(device_type)))


def provenance(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """The provenance columns of a row measured on ``device`` (``cpu``, ``cuda``, ``cuda:1``).

    ``threads``: the torch thread count the measurement used; by default the current one.
    """
    import torch

    static = dict(_static(str(device)))
    return {"vattn_version": static["vattn_version"], "torch_version": static["torch_version"],
            "device_name": static["device_name"],
            "threads": int(threads) if threads else torch.get_num_threads(), "machine": static["machine"]}
