"""Jobs through submitit: a Slurm cluster (``slurm``), or submitit's ``local`` and ``debug`` executors.

Everything lives under ``OUT/slurm/``: submitit's pickles and logs (``<job id>_0_log.out|err``),
``jobs.json`` (the ledger: each job's key -> the submitit job id it was last submitted as) and
``results/<hash>.json`` (the row a job returned, written atomically by the job itself where it
ran). The parent hands rows to the study's row log as result files appear, so the study's CSV
is written only by the parent and only whole rows.

A study killed on the login node and started again with ``--resume``:

- a job whose result file is there is collected, not run again;
- a job still queued or running (Slurm says so; locally, its controller process is alive) is
  waited for, not resubmitted;
- a job that ended without a result (failed, cancelled, timed out) or was never submitted is
  submitted (again);
- a job submitted in the instant the parent died, before its id reached the ledger, is found by
  its submitit files (``<id>_submitted.pkl``, an id the ledger does not hold): while any such job
  is alive, nothing unaccounted for is submitted; its result names its key and id, and the ledger
  takes both when it is collected.

So a finished job never runs twice. Local jobs run at most ``--jobs`` at once; a Slurm study is
submitted in one go (a job array, ``--slurm-array-parallelism`` bounding how many run at once).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vattn_cli.ablate.executor import Job, Launch, mark, run_job
from vattn_cli.atomic import atomic_open
from vattn_cli.errors import RunError

LEDGER = "jobs.json"
#: Slurm states in which a job may still write its result (wait for it rather than resubmit).
SLURM_LIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
                        "UNKNOWN", "READY"})


def result_name(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20] + ".json"


def run_job_to_file(job: dict[str, Any], result_path: str) -> dict[str, Any]:
    """What a submitit job runs: the job, then its row to ``result_path`` (atomically)."""
    row = run_job(job)
    data = json.dumps({"key": job["key"], "job_id": _own_job_id(), "row": row}, default=_plain).encode("utf-8")
    with atomic_open(result_path) as fh:
        fh.write(data)
    return row


def _own_job_id() -> str | None:
    """The id submitit gave the job running this (None where it gives none, as in the debug executor)."""
    try:
        import submitit

        return str(submitit.JobEnvironment().job_id)
    except Exception:  # noqa: BLE001 - only the ledger's bookkeeping needs it
        return None


def _plain(value: Any) -> Any:
    """JSON for what a row may hold besides plain values (NumPy scalars)."""
    try:
        return value.item()
    except AttributeError:
        return str(value)


def _executor(launch: Launch, folder: Path):
    import submitit

    s = launch.slurm
    if launch.launcher == "debug":
        return submitit.DebugExecutor(folder=str(folder))
    if launch.launcher == "local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=s.time_min)
        return executor
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params: dict[str, Any] = {"timeout_min": s.time_min, "name": "vattn", "nodes": 1, "tasks_per_node": 1}
    if s.partition:
        params["slurm_partition"] = s.partition
    if s.gpus:
        params["gpus_per_node"] = s.gpus
    if s.cpus:
        params["cpus_per_task"] = s.cpus
    if s.mem_gb:
        params["mem_gb"] = s.mem_gb
    if s.account:
        params["slurm_account"] = s.account
    if s.setup:
        params["slurm_setup"] = list(s.setup)
    if s.array_parallelism:
        params["slurm_array_parallelism"] = s.array_parallelism
    executor.update_parameters(**params)
    return executor


class Ledger:
    """``OUT/slurm/jobs.json``: key -> job id, rewritten atomically after every submission."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LEDGER
        try:
            self.ids: dict[str, str] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.ids = {}
        self.submissions: dict[str, int] = {}  # this session's, per key (tests check "never twice")

    def record(self, key: str, job_id: str) -> None:
        self.ids[key] = str(job_id)
        self.submissions[key] = self.submissions.get(key, 0) + 1
        self._write()

    def adopt(self, key: str, job_id: str) -> None:
        """A job whose id the parent did not live to record: its result says which it was."""
        if self.ids.get(key) != str(job_id):
            self.ids[key] = str(job_id)
            self._write()

    def _write(self) -> None:
        with atomic_open(self.path) as fh:
            fh.write(json.dumps(self.ids, indent=1, sort_keys=True).encode("utf-8"))

    def orphans(self, folder: Path) -> list[str]:
        """Ids submitit holds files for that the ledger never recorded (nor replaced by a resubmission)."""
        known = set(self.ids.values())
        found = (p.name[:-len("_submitted.pkl")] for p in folder.glob("*_submitted.pkl"))
        return sorted(i for i in found if i not in known)


def _local_alive(job_id: str) -> bool:
    """A local job's id is its controller's pid: alive, and still a submitit controller (not a reused pid)."""
    try:
        pid = int(job_id)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    try:
        return b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _alive(launch: Launch, folder: Path, job_id: str, live: Any = None) -> bool:
    if live is not None:  # a job submitted by this process
        return not live.done()
    if launch.launcher == "local":
        return _local_alive(job_id)
    if launch.launcher == "slurm":
        import submitit

        return submitit.SlurmJob(folder=str(folder), job_id=str(job_id)).state.split(" ")[0] in SLURM_LIVE
    return False


def _failure(folder: Path, job_id: str, live: Any = None) -> str:
    """Why a job ended without a result: its exception, else the last line of its stderr log."""
    if live is not None:
        try:
            live.result()
        except Exception as exc:  # noqa: BLE001 - reported, the study goes on
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            return lines[-1] if lines else type(exc).__name__
    for log in sorted(folder.glob(f"{job_id}_*_log.err")):
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return "ended without a result"


def run_submitit(jobs: Sequence[Job], launch: Launch, on_row: Callable[[Job, dict[str, Any]], None], *,
                 refine: Callable[[Job], Job], out: str | os.PathLike,
                 on_start: Callable[[Job], None] | None = None) -> int:
    """Run ``jobs`` through submitit (see the module); ``on_row`` as results come in. Raises
    :class:`RunError` at the end if any job failed (``--resume`` resubmits those)."""
    folder = Path(out) / "slurm"
    results = folder / "results"
    results.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(folder)
    executor = _executor(launch, folder)
    threads = launch.threads or launch.slurm.cpus or (launch.slot_threads() if launch.launcher == "local" else None)
    done = 0
    failed: list[tuple[Job, str]] = []

    def collect(job: Job) -> bool:
        path = results / result_name(job.key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if data.get("job_id"):
            ledger.adopt(job.key, data["job_id"])
        on_row(job, mark(data["row"], launch))
        return True

    orphans = [i for i in ledger.orphans(folder) if _alive(launch, folder, i)]
    while orphans:  # submitted as the last session died: wait, since any of the unrecorded keys may be theirs
        time.sleep(launch.poll_s)
        orphans = [i for i in orphans if _alive(launch, folder, i)]
    pending: list[Job] = []
    watching: dict[str, tuple[Job, str, Any]] = {}  # key -> (job, job id, live submitit job or None)
    for job in jobs:
        if collect(job):
            done += 1
        elif job.key in ledger.ids and _alive(launch, folder, ledger.ids[job.key]):
            watching[job.key] = (job, ledger.ids[job.key], None)  # left running by an earlier session
            if on_start:
                on_start(job)
        else:
            pending.append(job)
    limit = launch.jobs if launch.launcher == "local" else len(jobs)
    while pending or watching:
        busy = {w[0].group for w in watching.values() if w[0].group is not None}
        wave: list[Job] = []
        for job in list(pending):
            if len(watching) + len(wave) >= limit:
                break
            if job.group is not None and job.group in busy:
                continue
            pending.remove(job)
            job = refine(job)
            if threads and not job.spec.get("threads"):
                job.spec["threads"] = threads
            wave.append(job)
            if job.group is not None:
                busy.add(job.group)
        if wave:
            _submit(executor, launch, wave, results, ledger, watching, on_start)
        if launch.launcher == "debug":  # runs in this process, on result()
            for key, (job, _, live) in list(watching.items()):
                try:
                    live.result()
                except Exception:  # noqa: BLE001 - recorded below
                    pass
        for key, (job, job_id, live) in list(watching.items()):
            if collect(job):
                done += 1
                del watching[key]
            elif not _alive(launch, folder, job_id, live):
                if not collect(job):  # it may have written its result just now
                    failed.append((job, _failure(folder, job_id, live)))
                else:
                    done += 1
                del watching[key]
        if watching and not wave:
            time.sleep(launch.poll_s)
    if failed:
        job, reason = failed[0]
        raise RunError(f"{len(failed)} of {len(jobs)} jobs failed (logs under {folder}; --resume resubmits them); "
                       f"first, {job.label}: {reason}")
    return done


def _submit(executor: Any, launch: Launch, wave: list[Job], results: Path, ledger: Ledger,
            watching: dict, on_start: Callable[[Job], None] | None) -> None:
    def submit(job: Job) -> Any:
        return executor.submit(run_job_to_file, asdict(job), str(results / result_name(job.key)))

    if launch.launcher == "slurm" and len(wave) > 1:
        with executor.batch():
            live = [submit(j) for j in wave]
        for job, sj in zip(wave, live):
            ledger.record(job.key, sj.job_id)
    else:  # each id to the ledger as soon as it exists
        live = []
        for job in wave:
            live.append(submit(job))
            ledger.record(job.key, live[-1].job_id)
    for job, sj in zip(wave, live):
        watching[job.key] = (job, str(sj.job_id), sj)
        if on_start:
            on_start(job)
