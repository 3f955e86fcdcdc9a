"""One run executor behind every sweep: each run a JSON job, each result one row.

A study (``profile``, ``ablate tokens``, ``ablate schemes``, ``ablate pos-embed``) turns its plan
into :class:`Job` objects (plain JSON: what to run, nothing live) and hands them to
:func:`execute` with an ``on_row`` callback that appends to the study's
:class:`~vattn_cli.report.rowlog.RowLog`. Only the parent writes the row log, one whole line per
finished run, so ``--resume``, atomic rows, OOM rows and progress behave the same whichever
launcher ran the jobs:

- ``pool`` with ``jobs=1``: each job in this process, one after another (what the studies did
  before; the default where timing is measured).
- ``pool`` with ``jobs=N``: N slots at once. A training job runs in a long-lived slot process
  (one torch import per slot, not per run; spawned, so nothing of the parent's thread pools is
  inherited; killed by the kernel if the parent dies, so a resumed study never races an orphan).
  A measurement job that is isolated already runs in a fresh worker process of its own
  (:func:`vattn_cli.measure.isolate.run_isolated`), so its slot is a thread. The machine's
  cores are split between slots (``threads`` each).
- ``local`` / ``slurm`` / ``debug``: submitit's local, Slurm or in-process executor
  (:mod:`vattn_cli.ablate.launchers`), with logs and a job ledger under ``OUT/slurm/``.

Rows measured while other jobs ran carry ``concurrent`` = the number of slots (1 when alone),
because latency and memory taken under sharing are not comparable with rows taken alone.

Jobs that share a ``group`` (the FLOP geometry of a measurement) never run at once, and
``refine(job)`` is called just before each is started, so a count made by one is passed to the
next instead of being traced again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vattn_cli.errors import UsageError

LAUNCHERS = ("pool", "local", "slurm")
#: Row column saying how many jobs ran at once while the row was measured (additive).
CONCURRENT_COLUMN = "concurrent"
KINDS = ("measure", "train")


@dataclass
class Job:
    """One run: ``kind`` says which function runs ``spec``; ``key`` names its row (for resume)."""

    kind: str
    key: str
    spec: dict[str, Any]
    label: str = ""
    group: str | None = None  # jobs of one group run one at a time (shared FLOP counts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(**data)


@dataclass
class SlurmOptions:
    """What each Slurm job asks for (submitit's ``slurm_*`` parameters)."""

    partition: str | None = None
    time_min: int = 60
    gpus: int = 0
    cpus: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    setup: tuple[str, ...] = ()
    array_parallelism: int | None = None


@dataclass
class Launch:
    """How a study's jobs are run: the launcher, slots and threads per slot (see the module)."""

    launcher: str = "pool"
    jobs: int = 1
    threads: int | None = None  # torch threads per job; None: cores // jobs (jobs > 1), torch's default (1)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    poll_s: float = 1.0  # how often submitit jobs are looked at

    def slot_threads(self) -> int | None:
        if self.threads:
            return int(self.threads)
        if self.jobs > 1:
            return max(1, cpu_count() // self.jobs)
        return None

    @property
    def concurrent(self) -> int:
        """How many jobs share this machine at once (a Slurm job has its own allocation: 1)."""
        return self.jobs if self.launcher in ("pool", "local") else 1


def cpu_count() -> int:
    """The cores this process may use (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_jobs(kind: str, *, timed: bool, device: str = "cpu", runs: int | None = None) -> int:
    """What measures fastest here: one job per core (one thread each) for training tiny models and
    for counting (params, FLOPs); one at a time where latency or memory is measured (sharing would
    make it incomparable) or on a GPU (one device)."""
    if device != "cpu" or (kind == "measure" and timed):
        return 1
    return max(1, min(cpu_count(), runs or cpu_count()))


def check_launch(launcher: str, jobs: int) -> None:
    """One line for a bad ``--launcher``/``--jobs``, before any work starts."""
    if launcher not in LAUNCHERS:
        raise UsageError(f"invalid --launcher {launcher!r}; accepted: {', '.join(LAUNCHERS)}")
    if jobs < 1:
        raise UsageError(f"invalid --jobs {jobs}; expected an integer >= 1")
    if launcher == "slurm":
        import shutil

        if shutil.which("sbatch") is None:
            raise UsageError("--launcher slurm needs Slurm, but sbatch is not on PATH; "
                             "run on the cluster's login node, or use --launcher local or --jobs N")
    if launcher in ("local", "slurm"):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UsageError(f"--launcher {launcher} needs submitit: pip install -e \".[slurm]\"") from None


# ----------------------------------------------------------------------------- running one job

def run_job(job: dict[str, Any] | Job, progress: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Run one job description in this process and return its row (what every launcher calls).

    ``progress``: the engine's per-epoch hook, for a training job run in the study's own process."""
    job = job if isinstance(job, Job) else Job.from_dict(job)
    if job.kind == "measure":
        from vattn_cli.ablate.jobs import run_measure_job

        return run_measure_job(job.spec)
    if job.kind == "train":
        from vattn_cli.ablate.jobs import run_train_job

        return run_train_job(job.spec, progress=progress)
    raise ValueError(f"unknown job kind {job.kind!r}; expected one of {', '.join(KINDS)}")


def _slot_init(threads: int | None) -> None:
    """A pool slot starts: die with the parent, size torch's thread pool once."""
    from vattn_cli.measure.worker import die_with_parent

    die_with_parent()
    if threads:
        import torch

        torch.set_num_threads(int(threads))


# ----------------------------------------------------------------------------- the pool

RowFn = Callable[[Job, dict[str, Any]], None]
RefineFn = Callable[[Job], Job]


def execute(jobs: Sequence[Job], launch: Launch, on_row: RowFn, *, refine: RefineFn | None = None,
            out: str | os.PathLike | None = None, on_start: Callable[[Job], None] | None = None,
            progress: Callable[[Any], None] | None = None) -> int:
    """Run ``jobs`` with ``launch``; ``on_row(job, row)`` in this process as each finishes.

    Returns how many rows were handed back. ``out``: the study folder (submitit keeps
    ``OUT/slurm/`` there). Exceptions of a job propagate (as they did when studies ran
    in-process); rows of jobs finished before are already handed back. ``progress``: the engine's
    per-epoch hook, fed where the jobs run in this process (``jobs=1``).
    """
    jobs = list(jobs)
    if not jobs:
        return 0
    refine = refine or (lambda j: j)
    if launch.launcher != "pool":
        from vattn_cli.ablate.launchers import run_submitit

        if out is None:
            raise ValueError("a submitit launcher needs the study folder (out)")
        return run_submitit(jobs, launch, on_row, refine=refine, out=out, on_start=on_start)
    if launch.jobs <= 1:
        for job in jobs:
            job = refine(job)
            if on_start:
                on_start(job)
            on_row(job, mark(run_job(job, progress), launch))
        return len(jobs)
    return _run_pool(jobs, launch, on_row, refine, on_start)


def mark(row: dict[str, Any], launch: Launch) -> dict[str, Any]:
    row.setdefault(CONCURRENT_COLUMN, launch.concurrent)
    return row


def _run_pool(jobs: list[Job], launch: Launch, on_row: RowFn, refine: RefineFn,
              on_start: Callable[[Job], None] | None) -> int:
    import concurrent.futures as cf
    import concurrent.futures.process  # noqa: F401 (cf.process.BrokenProcessPool)
    import multiprocessing

    threads = launch.slot_threads()
    in_process = all(j.kind == "measure" and j.spec.get("isolate", True) for j in jobs)
    if in_process:  # each job spawns its own fresh worker: a thread waits on it
        pool: cf.Executor = cf.ThreadPoolExecutor(max_workers=launch.jobs, thread_name_prefix="vattn-job")
    else:
        pool = cf.ProcessPoolExecutor(max_workers=launch.jobs, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_slot_init, initargs=(threads,))
    pending = list(jobs)
    running: dict[cf.Future, Job] = {}
    done = 0
    try:
        while pending or running:
            busy = {j.group for j in running.values() if j.group is not None}
            while pending and len(running) < launch.jobs:
                pick = next((i for i, j in enumerate(pending) if j.group is None or j.group not in busy), None)
                if pick is None:
                    break
                job = refine(pending.pop(pick))
                if threads and job.kind == "measure":
                    job.spec.setdefault("threads", threads)
                if on_start:
                    on_start(job)
                running[pool.submit(run_job, asdict(job))] = job
                if job.group is not None:
                    busy.add(job.group)
            finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                try:
                    row = future.result()  # a job's exception ends the study, as in one process
                except cf.process.BrokenProcessPool:
                    from vattn_cli.errors import RunError

                    raise RunError(f"the process running {job.label} died (killed, or out of memory?); "
                                   "finished runs are in the row log, --resume continues") from None
                on_row(job, mark(row, launch))
                done += 1
    except BaseException:
        slots = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
        for future in running:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        _stop_slots(slots)
        raise
    pool.shutdown(wait=True)
    return done


def _stop_slots(slots: list[Any]) -> None:
    """On Ctrl-C or a failed job: stop the slot processes now rather than after their runs."""
    for proc in slots:
        try:
            proc.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass


def describe(launch: Launch) -> str:
    """How the jobs run, for the study's first log line."""
    if launch.launcher != "pool":
        return f"launcher {launch.launcher}"
    threads = launch.slot_threads()
    return f"{launch.jobs} at once" + (f", {threads} torch thread{'s' if threads != 1 else ''} each" if threads else "")


def now() -> float:
    return time.perf_counter()


if __name__ == "__main__":  # pragma: no cover - python -m vattn_cli.ablate.executor JOB.json: one job, row to stdout
    print(json.dumps(run_job(json.loads(open(sys.argv[1], encoding="utf-8").read()))))
