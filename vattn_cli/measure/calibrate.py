"""This machine's matmul peak, measured once and cached, as the denominator of MFU.

A datasheet peak is rarely reachable on a CPU (turbo, AVX frequency, shared cores), so MFU
against a *measured* GEMM peak answers the useful question: how far is the model from the
best this machine does on its easiest kernel. The cache lives in
``$VATTN_CACHE_DIR`` or ``$XDG_CACHE_HOME/vattn`` or ``~/.cache/vattn``, in
``calibration.json``, keyed by device name, dtype and thread count.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from vattn_cli.errors import UsageError
from vattn_cli.report.tables import atomic_write_text

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cache_path() -> Path:
    root = os.environ.get("VATTN_CACHE_DIR")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vattn")
    return Path(root) / "calibration.json"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":  # untested here: no GPU on CI
        return torch.cuda.get_device_name(device)
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    return model or platform.processor() or platform.machine()


def cache_key(device: torch.device, dtype: str) -> str:
    threads = f"|threads={torch.get_num_threads()}" if device.type == "cpu" else ""
    return f"{device.type}|{device_name(device)}|{dtype}{threads}"


def measure_peak_tflops(device: torch.device, dtype: str = "fp32", n: int = 2048, budget_s: float = 2.0) -> float:
    """Best TFLOP/s of an ``n x n`` matmul (2 n^3 FLOPs) over ``budget_s`` seconds."""
    a = torch.randn(n, n, device=device, dtype=_DTYPES[dtype])
    b = torch.randn(n, n, device=device, dtype=_DTYPES[dtype])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up
    sync()
    best, deadline = float("inf"), time.perf_counter() + budget_s
    runs = 0
    while runs < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
        runs += 1
        if runs >= 1000:
            break
    return 2 * n**3 / best / 1e12


def calibrate(device: torch.device, dtype: str = "fp32") -> float:
    """Measure the peak now and store it in the cache; returns TFLOP/s."""
    peak = measure_peak_tflops(device, dtype)
    path = cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError):
        data = {}
    data[cache_key(device, dtype)] = {"peak_tflops": peak, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return peak


def cached_peak(device: torch.device, dtype: str = "fp32") -> float:
    """The cached peak for this device and dtype; a usage error if never calibrated."""
    path = cache_path()
    try:
        entry = json.loads(path.read_text(encoding="utf-8")).get(cache_key(device, dtype))
    except (OSError, ValueError):
        entry = None
    if not entry:
        raise UsageError(f"no calibration for {cache_key(device, dtype)!r} in {path}; run: vattn profile --calibrate")
    return float(entry["peak_tflops"])
