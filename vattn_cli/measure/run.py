"""Measure one setting in this process: parameters, FLOPs, latency, peak memory.

Each measure runs on its own, so a setting whose timed run does not fit in memory still gets its
parameter and FLOP counts, with ``status=oom``. The timed run comes before the FLOP trace: memory
the trace freed could otherwise be reused by the run without showing in its peak. :mod:`vattn_cli.measure.isolate` runs this in a
fresh worker process per setting, which is what makes the memory figure and the caps honest.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vattn_cli.measure.flops import FlopCount, count_model_flops
from vattn_cli.measure.memory import PeakMemory, is_oom, release_free_memory
from vattn_cli.measure.provenance import provenance
from vattn_cli.measure.setting import (
    CPU_SAMPLES_COLUMN, MEASURES, ROW_COLUMNS, SAMPLES_COLUMN, RunOptions, Setting,
)
from vattn_cli.measure.timing import Timing, time_step

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def empty_row(setting: Setting, threads: int | None = None) -> dict[str, Any]:
    """A row with the setting's identity and provenance, and every measurement missing.

    ``threads``: the torch threads the measurement uses (default: the current count).
    """
    row = {column: None for column in ROW_COLUMNS}
    row.update(setting.row_base())
    row["status"] = "ok"
    row.update(provenance(setting.device, threads))
    row[SAMPLES_COLUMN] = []  # no timed run (yet)
    row.update({"cpu_ms": None, "ref_cpu_ms": None, CPU_SAMPLES_COLUMN: []})
    return row


def autocast(setting: Setting):
    """Mixed precision the usual way: fp32 weights, autocast to bf16/fp16 for the matmuls."""
    if setting.dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(setting.device).type, dtype=_TORCH_DTYPES[setting.dtype])


def make_step(setting: Setting, model: torch.nn.Module) -> Callable[[], object]:
    """One timed step: a forward pass (infer), or forward + backward + optimizer step (train)."""
    device = torch.device(setting.device)
    video = torch.randn(setting.batch, 3, setting.frames, setting.img_size, setting.img_size, device=device)
    runner = torch.compile(model) if setting.compile else model
    if setting.mode == "infer":
        model.eval()

        def infer() -> object:
            with torch.inference_mode(), autocast(setting):
                return runner(video)

        return infer

    model.train()
    labels = torch.randint(0, max(setting.num_classes, 1), (setting.batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train() -> object:
        optimizer.zero_grad(set_to_none=True)
        with autocast(setting):
            loss = torch.nn.functional.cross_entropy(runner(video).float(), labels)
        loss.backward()
        optimizer.step()
        return loss

    return train


def _params_m(setting: Setting) -> float:
    with torch.device("meta"):
        model = setting.create_model()
    return sum(p.numel() for p in model.parameters()) / 1e6


def mfu(gflops: float | None, throughput: float | None, mode: str, peak_tflops: float | None, *,
        includes_backward: bool = False) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak.

    ``gflops`` is fvcore's multiply-add count per clip, so one clip costs ``2 * gflops`` GFLOP.
    By default it is a forward count, and a training step is taken to cost three forward passes
    (forward, and backward at twice the forward). ``includes_backward``: ``gflops`` is a
    train row's own count, forward + backward counted (what :func:`run_setting` puts in
    ``--mode train`` rows), so it is one pass.
    """
    if not gflops or not throughput or not peak_tflops:
        return None
    passes = 3.0 if mode == "train" and not includes_backward else 1.0
    return passes * 2.0 * gflops * 1e9 * throughput / (peak_tflops * 1e12)


def run_setting(
    setting: Setting,
    measures: Sequence[str] = MEASURES,
    options: RunOptions = RunOptions(),
    *,
    peak_tflops: float | None = None,
    flops: FlopCount | None = None,
    on_flops: Callable[[FlopCount], None] | None = None,
) -> dict[str, Any]:
    """Measure ``setting`` in this process and return its row (contract columns + extras).

    ``flops`` reuses a count made earlier for the same geometry. The memory figure is only as
    good as the process is fresh: use :func:`vattn_cli.measure.isolate.run_isolated` for it.
    """
    unknown = set(measures) - set(MEASURES)
    if unknown:
        raise ValueError(f"unknown measures {sorted(unknown)}; accepted: {', '.join(MEASURES)}")
    with torch_threads(options.threads):
        return _measure(setting, measures, options, peak_tflops, flops, on_flops)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run with ``threads`` torch CPU threads, restoring the caller's count afterwards."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _measure(setting: Setting, measures: Sequence[str], options: RunOptions, peak_tflops: float | None,
             flops: FlopCount | None, on_flops: Callable[[FlopCount], None] | None) -> dict[str, Any]:
    row = empty_row(setting)
    started = time.perf_counter()
    failures: list[str] = []

    def attempt(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a row records the failure, the sweep goes on
            failures.append("oom" if is_oom(exc) else error_status(f"{name}: {type(exc).__name__}: {exc}"))
        finally:
            gc.collect()

    if "params" in measures:
        def params() -> None:
            row["params_m"] = _params_m(setting)

        attempt("params", params)

    if "latency" in measures or "memory" in measures:
        def execute() -> None:
            torch.manual_seed(options.seed)
            device = torch.device(setting.device)
            tracker = PeakMemory(device)
            release_free_memory()
            tracker.start()
            with device:
                model = setting.create_model()
            step = make_step(setting, model)
            if "latency" in measures:
                reference = None
                if options.reference and device.type == "cpu":
                    from vattn_cli.measure.reference import make_reference

                    reference = make_reference()
                timing: Timing = time_step(step, device, warmup=options.warmup, repeats=options.repeats,
                                           budget_s=options.budget_s, batch=setting.batch, reference=reference)
                row["cpu_ms"], row["ref_cpu_ms"] = timing.cpu_ms, timing.ref_cpu_ms
                row[CPU_SAMPLES_COLUMN] = timing.cpu_samples_ms
                row["latency_ms"], row["latency_iqr_ms"] = timing.median_ms, timing.iqr_ms
                row["throughput"], row["repeats"] = timing.throughput, len(timing.times_s)
                row["timed_s"], row[SAMPLES_COLUMN] = timing.total_s, timing.samples_ms
            else:
                step()
            if "memory" in measures:
                row["peak_mem_mb"] = tracker.stop()

        attempt("run", execute)

    if "flops" in measures:
        def count() -> None:
            if setting.mode == "train":
                # Forward + backward, counted (FlopCounterMode) on the twin in training mode. Not
                # shared through ``flops``/``on_flops``: those carry forward counts, keyed by geometry.
                result = count_model_flops(model_config(setting), device=setting.device, mode="train")
                row["gflops"], row["attn_gflops"] = result.gflops, result.attn_gflops
                return
            result = flops or count_model_flops(model_config(setting), device=setting.device)
            row["gflops"], row["attn_gflops"] = result.gflops, result.attn_gflops
            if on_flops is not None:
                on_flops(result)

        attempt("flops", count)

    row["mfu"] = mfu(row["gflops"], row["throughput"], setting.mode, peak_tflops, includes_backward=True)
    row["wall_s"] = time.perf_counter() - started
    if failures:
        row["status"] = "oom" if "oom" in failures else failures[0]
    return row


def error_status(reason: str, limit: int = 200) -> str:
    """``error: <reason>`` on one line, short enough for a table cell."""
    reason = " ".join(str(reason).split())
    return "error: " + (reason if len(reason) <= limit else reason[: limit - 3] + "...")


def model_config(setting: Setting):
    """The model config of a setting, without building the model."""
    with torch.device("meta"):
        return setting.create_model().config
