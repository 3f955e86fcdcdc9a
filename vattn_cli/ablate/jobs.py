"""The job descriptions of the studies and the functions that run them (see :mod:`.executor`).

A job's ``spec`` is plain JSON, so any launcher can carry it (a pool slot, submitit's pickles,
a Slurm node); these functions rebuild what the study would have built in-process and return
the row it would have written.

- ``measure``: one :class:`~vattn_cli.measure.setting.Setting` of ``profile`` or ``ablate tokens``,
  measured in a fresh worker (``isolate``) or here; the FLOP count it made comes back in the
  row's ``_flops`` so the parent can hand it to the next setting of the same geometry.
- ``train``: one :class:`~vattn_cli.ablate.schemes.Run` of ``ablate schemes``/``pos-embed``:
  train, evaluate, profile (:func:`vattn_cli.ablate.schemes.run_one`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from typing import Any

from vattn_cli.ablate.executor import Job

FLOPS_KEY = "_flops"  # a measurement row's FLOP count, for the parent's cache (not a column)


def measure_job(setting: Any, measures: list[str], options: Any, *, max_memory: int | None = None,
                timeout_s: float | None = None, isolate: bool = True) -> Job:
    """The job of one measured setting (its key: the row key, as :func:`vattn_cli.measure.row_key` reads it)."""
    spec = {"setting": setting.to_dict(), "measures": list(measures), "options": asdict(options),
            "max_memory": max_memory, "timeout_s": timeout_s, "isolate": isolate, "flops": None}
    counts_flops = "flops" in measures and setting.mode == "infer"
    return Job("measure", repr(setting.key()), spec, label=setting.label(),
               group=repr(setting.geometry()) if counts_flops else None)


def with_flops(job: Job, count: Any | None) -> Job:
    """``job`` carrying a FLOP count made earlier for its geometry (so it is not traced again)."""
    if count is None or job.kind != "measure":
        return job
    return dataclasses.replace(job, spec={**job.spec, "flops": asdict(count)})


def run_measure_job(spec: dict[str, Any]) -> dict[str, Any]:
    from vattn_cli.measure.flops import FlopCount
    from vattn_cli.measure.run import run_setting
    from vattn_cli.measure.setting import RunOptions, Setting

    setting = Setting.from_dict(spec["setting"])
    options = RunOptions(**spec["options"])
    if spec.get("threads") and not options.threads:  # the slot's share of the cores
        options = dataclasses.replace(options, threads=int(spec["threads"]))
    known = FlopCount(**spec["flops"]) if spec.get("flops") else None
    if spec.get("isolate", True):
        from vattn_cli.measure.isolate import run_isolated

        row, counted = run_isolated(setting, spec["measures"], options, max_memory=spec.get("max_memory"),
                                    timeout_s=spec.get("timeout_s"), flops=known)
    else:
        found: list[FlopCount] = []
        row = run_setting(setting, spec["measures"], options, flops=known, on_flops=found.append)
        counted = found[0] if found else known
    row[FLOPS_KEY] = asdict(counted) if counted is not None else None
    return row


def train_job(run: Any, out: str, config: Any, *, resume: bool, threads: int | None = None) -> Job:
    """The job of one trained run (its key: :meth:`Run.key`)."""
    spec = {"run": asdict(run), "out": str(out), "config": asdict(config), "resume": bool(resume),
            "threads": threads}
    return Job("train", repr(run.key()), spec, label=f"{run.dataset} {run.name}")


def study_config(data: dict[str, Any]) -> Any:
    """A :class:`~vattn_cli.ablate.config.StudyConfig` back from its JSON form (tuples were lists)."""
    from vattn_cli.ablate.config import StudyConfig

    data = dict(data)
    if data.get("clips") is not None:
        data["clips"] = tuple(data["clips"])
    data["measures"] = tuple(data.get("measures") or ())
    return StudyConfig(**data)


def run_train_job(spec: dict[str, Any], progress: Any = None) -> dict[str, Any]:
    from pathlib import Path

    from vattn_cli.ablate.schemes import Run, run_one
    from vattn_cli.measure.run import torch_threads

    run = Run(**spec["run"])
    with torch_threads(spec.get("threads")):
        return run_one(run, Path(spec["out"]), study_config(spec["config"]), resume=bool(spec["resume"]),
                       progress=progress)
