"""Sweeps that survive out-of-memory: one fresh worker process per setting.

A fresh process per setting makes the CPU peak-memory figure honest (nothing left over from the
previous setting) and contains failures: a setting that runs out of memory under ``max_memory``
becomes a row with ``status=oom``; a worker that crashes or is killed becomes
``status=error: ...``; either way the sweep goes on to the next setting.

The worker is ``python -m vattn_cli.measure.worker`` rather than a ``multiprocessing`` child so
a crash cannot take the parent's state with it and nothing needs pickling; schemes registered
outside vattn are re-imported in the worker from the module (or file) that defined them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from vattn_cli.measure.flops import FlopCount
from vattn_cli.measure.run import empty_row, error_status, mfu, run_setting
from vattn_cli.measure.setting import EXTRA_COLUMNS, MEASURES, ROW_COLUMNS, RunOptions, Setting

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def scheme_modules(scheme: str) -> list[list[str | None]]:
    """``[module, file]`` of the code that registered ``scheme``, unless it is built in."""
    from vattn_cli.zoo.registry import get_scheme

    cls = get_scheme(scheme)
    name = cls.__module__
    if name.startswith("vattn_cli."):
        return []
    module = sys.modules.get(name)
    return [[name, getattr(module, "__file__", None)]]


#: Worker folders are ``vattn-worker-<parent pid>-*`` in the temporary directory.
_FOLDER_PREFIX = "vattn-worker-"
_SWEPT = False  # whether this process has removed dead parents' folders yet


def _worker_env() -> dict[str, str]:
    from vattn_cli.measure.worker import PARENT_ENV

    env = dict(os.environ)
    env[PARENT_ENV] = str(os.getpid())  # the worker checks it still has this parent once its guard is armed
    # Run from a source checkout too (tests, `python -m vattn_cli` in the repo).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_folders(root: str | os.PathLike | None = None) -> int:
    """Remove worker folders whose parent process is gone; returns how many.

    A parent removes its worker's folder on every exit it lives through (a ``with`` block, so
    also on errors and Ctrl-C); only a parent killed outright (SIGKILL, the OOM killer) cannot,
    and the next sweep on the machine clears what it left.
    """
    import shutil

    removed = 0
    for folder in Path(root or tempfile.gettempdir()).glob(f"{_FOLDER_PREFIX}*"):
        pid = folder.name[len(_FOLDER_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)) and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def _crash_reason(code: int, stderr: str) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's OOM killer?)" if -code == signal.SIGKILL else ""
        return f"worker killed by {name}{hint}"
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    return f"worker exited with code {code}" + (f": {last}" if last else "")


def run_isolated(
    setting: Setting,
    measures: Sequence[str] = MEASURES,
    options: RunOptions = RunOptions(),
    *,
    max_memory: int | None = None,
    timeout_s: float | None = None,
    flops: FlopCount | None = None,
) -> tuple[dict[str, Any], FlopCount | None]:
    """Measure ``setting`` in a fresh worker; returns its row and the FLOP count it made."""
    job = {
        "setting": setting.to_dict(), "measures": list(measures), "options": asdict(options),
        "max_memory": max_memory, "flops": asdict(flops) if flops else None,
        "scheme_modules": scheme_modules(setting.scheme),
    }
    global _SWEPT
    if not _SWEPT:  # once per process, whichever sweep or executor runs the workers
        _SWEPT = True
        remove_stale_folders()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"{_FOLDER_PREFIX}{os.getpid()}-") as tmp:
        job_path, result_path, err_path = (Path(tmp) / n for n in ("job.json", "result.json", "stderr.txt"))
        job_path.write_text(json.dumps(job), encoding="utf-8")
        with open(err_path, "w", encoding="utf-8") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vattn_cli.measure.worker", str(job_path), str(result_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=_worker_env(),
            )
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = None
            except BaseException:  # Ctrl-C: do not leave the worker running (it ignores SIGINT itself)
                proc.kill()
                proc.wait()
                raise
            finally:
                if proc.poll() is None:  # pragma: no cover - every path above waits
                    proc.kill()
                    proc.wait()
        if result_path.exists():
            result = json.loads(result_path.read_text(encoding="utf-8"))
            row = result["row"]
            counted = FlopCount(**result["flops"]) if result.get("flops") else flops
        else:
            row, counted = empty_row(setting, options.threads), flops  # no result: provenance from here
            if flops is not None and "flops" in measures:
                row["gflops"], row["attn_gflops"] = flops.gflops, flops.attn_gflops
            reason = f"timeout after {timeout_s:g}s" if code is None else _crash_reason(
                code, err_path.read_text(encoding="utf-8", errors="replace"))
            row["status"] = error_status(reason)
            row["mfu"] = None
    row["wall_s"] = time.perf_counter() - started
    return row, counted


def rows_frame(rows: Iterable[dict[str, Any]], with_mfu: bool = False) -> pd.DataFrame:
    """Rows as a frame: the contract's columns first, then the extras (provenance and samples last)."""
    extras = [c for c in EXTRA_COLUMNS if with_mfu or c != "mfu"]
    frame = pd.DataFrame(list(rows))
    for column in ROW_COLUMNS + extras:
        if column not in frame.columns:
            frame[column] = None
    rest = [c for c in frame.columns if c not in ROW_COLUMNS + extras]
    frame = frame[ROW_COLUMNS + extras + rest]
    for column in ("frames", "size", "patch", "tokens", "batch", "repeats", "threads", "tubelet"):
        frame[column] = pd.array(frame[column], dtype="Int64")  # integers stay integers beside an oom row
    return frame


def _progress(enabled: bool, total: int):
    """A rich progress bar on stderr, or a no-op when off (not a terminal, ``--quiet``)."""
    from contextlib import nullcontext

    if not enabled or total < 1:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vattn_cli.report.tables import stderr_console

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=stderr_console, transient=False)


def sweep(
    settings: Sequence[Setting],
    measures: Sequence[str] = MEASURES,
    options: RunOptions = RunOptions(),
    *,
    peak_tflops: float | dict[str, float] | None = None,
    max_memory: int | None = None,
    timeout_s: float | None = None,
    isolate: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    skip: Callable[[Setting], bool] | None = None,
    progress: bool = False,
    flops_cache: dict[tuple, FlopCount] | None = None,
) -> pd.DataFrame:
    """Measure every setting, one row each, in order; returns the rows as a frame.

    ``on_row(row)`` is called as each row is ready (append it to a CSV to survive interruption);
    settings for which ``skip(setting)`` is true are not run and give no row (resume).
    FLOP counts are shared between settings of the same geometry (``flops_cache`` keeps them,
    keyed by :meth:`Setting.geometry`). ``peak_tflops`` (one figure, or one per dtype) adds
    the ``mfu`` column. ``isolate=False`` measures in this process: quicker,
    but no memory cap and a memory figure polluted by earlier settings.
    """
    if max_memory and not isolate:
        raise ValueError("max_memory needs isolate=True: a cap applies to a worker process")
    todo = [s for s in settings if not (skip and skip(s))]
    cache = flops_cache if flops_cache is not None else {}
    rows = []
    with _progress(progress, len(todo)) as bar:
        task = bar.add_task("profile", total=len(todo)) if bar else None
        for setting in todo:
            if bar:
                bar.update(task, description=setting.label())
            # The cache holds forward counts; a train row counts forward + backward itself.
            known = cache.get(setting.geometry()) if "flops" in measures and setting.mode == "infer" else None
            if isolate:
                row, counted = run_isolated(setting, measures, options, max_memory=max_memory,
                                            timeout_s=timeout_s, flops=known)
            else:
                found: list[FlopCount] = []
                row = run_setting(setting, measures, options, flops=known, on_flops=found.append)
                counted = found[0] if found else known
            if counted is not None:
                cache[setting.geometry()] = counted
            if peak_tflops is None:
                row.pop("mfu", None)
            else:
                peak = peak_tflops.get(setting.dtype) if isinstance(peak_tflops, dict) else peak_tflops
                row["mfu"] = mfu(row.get("gflops"), row.get("throughput"), setting.mode, peak, includes_backward=True)
            rows.append(row)
            if on_row is not None:
                on_row(row)
            if bar:
                bar.advance(task)
    return rows_frame(rows, with_mfu=peak_tflops is not None)
