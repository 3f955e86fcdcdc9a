"""Peak memory of a run, memory caps, and telling an out-of-memory failure from other errors.

CPU: the peak resident set (``VmHWM`` in ``/proc/self/status``) of the worker process minus
its resident set just before the model was built. Linux lets a process reset ``VmHWM`` by
writing ``5`` to ``/proc/self/clear_refs``; where that is refused (or off Linux) the peak comes
from ``getrusage`` and cannot be reset, which is why each combination runs in a fresh worker.

CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated before the
model was built (the caching allocator's reserve is not counted).

Both include the weights, the input clip and the activations (and, in train mode, gradients and
optimizer state): the memory the run needs on top of an idle process.

Caps (``--max-memory``): on CPU an address-space limit (``RLIMIT_AS``) set in the worker once
torch is imported and its thread pools exist, at *baseline VSZ + SIZE*. Importing torch maps a
few hundred MB of address space it never touches, so a cap on the total would be meaningless;
counting from the baseline makes SIZE the extra address space the run may map. Virtual memory
is at least the resident memory, so a run capped at SIZE never holds more than SIZE on top of
the idle worker; allocations past it fail (``MemoryError``, or torch's ``DefaultCPUAllocator:
can't allocate memory``) instead of the kernel's OOM killer striking the machine. On CUDA the
cap is ``torch.cuda.set_per_process_memory_fraction``.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
from dataclasses import dataclass

import torch

from vattn_cli.errors import UsageError
from vattn_cli.measure.parsing import MiB, parse_size  # noqa: F401 (torch-free home, re-exported)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def vsz_bytes() -> int | None:
    kib = _status_kib("VmSize")
    return None if kib is None else kib * 1024


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def release_free_memory() -> None:
    """Hand memory that was freed but kept by glibc's heap back to the OS (Linux, best effort),
    so a baseline taken next is not inflated and a peak taken later is not hidden by reuse."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else _maxrss_bytes()


@dataclass
class PeakMemory:
    """Measures the peak memory of what runs between :meth:`start` and :meth:`stop`."""

    device: torch.device
    baseline: int = 0
    resettable: bool = True

    def start(self) -> None:
        if self.device.type == "cuda":  # untested here: no GPU on CI
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.resettable = reset_peak_rss()
            self.baseline = rss_bytes() or _maxrss_bytes()

    def stop(self) -> float:
        """Peak above the baseline, in MiB."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = peak_rss_bytes()
        return max(peak - self.baseline, 0) / MiB


def cap_address_space(extra_bytes: int) -> int:
    """Limit this process's address space to its current size + ``extra_bytes``; returns the cap."""
    base = vsz_bytes()
    if base is None:
        raise UsageError("--max-memory needs /proc/self/status (Linux) to measure the baseline")
    limit = base + int(extra_bytes)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


def cap_cuda(device: torch.device, extra_bytes: int) -> None:  # untested here: no GPU on CI
    total = torch.cuda.get_device_properties(device).total_memory
    used = torch.cuda.memory_allocated(device)
    torch.cuda.set_per_process_memory_fraction(min(1.0, (used + extra_bytes) / total), device)


_OOM_PATTERNS = ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc",
                 "defaultcpuallocator", "std::bad_alloc", "failed to allocate")


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is an allocation failure (CPU or CUDA)."""
    if isinstance(exc, MemoryError):
        return True
    oom_cls = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_cls is not None and isinstance(exc, oom_cls):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(p in text for p in _OOM_PATTERNS)
