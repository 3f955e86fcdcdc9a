"""``--jobs``, ``--launcher`` and the ``--slurm-*`` flags, shared by every sweep command.

Declared once here (``Annotated`` types) so each command adds them with one line a flag, and
parsed by :func:`parse_launch` into the executor's :class:`~vattn_cli.ablate.executor.Launch`,
checked before torch loads (a bad value, or ``--launcher slurm`` where there is no Slurm, is
one line and exit 2).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from vattn_cli.ablate.executor import LAUNCHERS, Launch, SlurmOptions, check_launch, default_jobs
from vattn_cli.errors import UsageError

Jobs = Annotated[Optional[int], typer.Option(
    "--jobs", "-j", min=1, help="Runs at once on this machine, the cores split between them (default: one per core "
    "for training tiny models and for params/FLOPs-only sweeps; 1 where latency or memory is timed, or on a GPU). "
    "--jobs 1: one after another. Rows timed beside others get concurrent > 1.")]
Launcher = Annotated[Optional[str], typer.Option(
    "--launcher", help=f"Who runs the jobs: {', '.join(LAUNCHERS)} (default: pool, this machine; local and slurm go "
    "through submitit, pip install -e \".[slurm]\"; logs and the job ledger under OUT/slurm/).")]
SlurmPartition = Annotated[Optional[str], typer.Option("--slurm-partition", help="Slurm partition of each job.")]
SlurmTime = Annotated[Optional[int], typer.Option(
    "--slurm-time", min=1, help="Time limit of each job in minutes (default: 60).")]
SlurmGpus = Annotated[Optional[int], typer.Option("--slurm-gpus", min=0, help="GPUs per run (default: 0).")]
SlurmCpus = Annotated[Optional[int], typer.Option(
    "--slurm-cpus", min=1, help="CPUs per run (also its torch threads).")]
SlurmMem = Annotated[Optional[str], typer.Option("--slurm-mem", help="Memory per run, e.g. 16GB.")]
SlurmAccount = Annotated[Optional[str], typer.Option("--slurm-account", help="Slurm account to charge.")]
SlurmSetup = Annotated[Optional[list[str]], typer.Option(
    "--slurm-setup", help="A shell line run before each job (repeatable), e.g. 'module load cuda'.")]
SlurmArray = Annotated[Optional[int], typer.Option(
    "--slurm-array-parallelism", min=1, help="How many jobs of the study's job array run at once.")]


def parse_launch(*, jobs: int | None, launcher: str | None, kind: str, timed: bool, device: str = "cpu",
                 runs: int | None = None, threads: int | None = None, partition: str | None = None,
                 time_min: int | None = None, gpus: int | None = None, cpus: int | None = None,
                 mem: str | None = None, account: str | None = None, setup: list[str] | None = None,
                 array_parallelism: int | None = None) -> Launch:
    """The flags as a :class:`Launch` (``kind``: ``measure`` or ``train``; ``timed``: latency or
    memory measured), with ``--jobs`` defaulting to what measures fastest for that kind."""
    name = launcher if launcher is not None else "pool"
    count = jobs if jobs is not None else (1 if name == "slurm" else default_jobs(kind, timed=timed, device=device,
                                                                                  runs=runs))
    check_launch(name, count)
    slurm_given = [flag for flag, value in (("--slurm-partition", partition), ("--slurm-time", time_min),
                                            ("--slurm-gpus", gpus), ("--slurm-cpus", cpus), ("--slurm-mem", mem),
                                            ("--slurm-account", account), ("--slurm-setup", setup),
                                            ("--slurm-array-parallelism", array_parallelism)) if value]
    if slurm_given and name != "slurm":
        raise UsageError(f"{slurm_given[0]} needs --launcher slurm (got --launcher {name})")
    mem_gb = None
    if mem is not None:
        from vattn_cli.measure.parsing import parse_size

        size = parse_size(mem)
        if not size:
            raise UsageError(f"invalid --slurm-mem {mem!r}; expected a size such as 16GB")
        mem_gb = max(1, -(-size // 2**30))  # whole GB, rounded up (sbatch --mem=16GB)
    slurm = SlurmOptions(partition=partition, time_min=time_min or SlurmOptions.time_min, gpus=gpus or 0, cpus=cpus,
                         mem_gb=mem_gb, account=account, setup=tuple(setup or ()),
                         array_parallelism=array_parallelism)
    return Launch(launcher=name, jobs=count, threads=threads, slurm=slurm)


#: (parameter name, type) of every launch flag, in the order ``--help`` lists them.
FLAGS = (("jobs", Jobs), ("launcher", Launcher), ("slurm_partition", SlurmPartition), ("slurm_time", SlurmTime),
         ("slurm_gpus", SlurmGpus), ("slurm_cpus", SlurmCpus), ("slurm_mem", SlurmMem),
         ("slurm_account", SlurmAccount), ("slurm_setup", SlurmSetup),
         ("slurm_array_parallelism", SlurmArray))


class LaunchFlags:
    """The launch flags as given (unparsed); :meth:`parse` once the command knows its runs."""

    def __init__(self, **values: Any) -> None:
        self.values = values

    def parse(self, *, kind: str, timed: bool, device: str = "cpu", runs: int | None = None,
              threads: int | None = None) -> Launch:
        v = self.values
        return parse_launch(jobs=v.get("jobs"), launcher=v.get("launcher"), kind=kind, timed=timed, device=device,
                            runs=runs, threads=threads, partition=v.get("slurm_partition"),
                            time_min=v.get("slurm_time"), gpus=v.get("slurm_gpus"), cpus=v.get("slurm_cpus"),
                            mem=v.get("slurm_mem"), account=v.get("slurm_account"), setup=v.get("slurm_setup"),
                            array_parallelism=v.get("slurm_array_parallelism"))


def with_launch_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--jobs``, ``--launcher`` and the ``--slurm-*`` flags to a Typer command.

    The command takes a ``launch_flags: LaunchFlags`` keyword instead of ten parameters, so each
    sweep command gains the flags with one decorator line and parses them where it knows what it
    runs (:meth:`LaunchFlags.parse`).
    """
    signature = inspect.signature(command)
    hints = typing.get_type_hints(command, include_extras=True)
    kept = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
            if p.name != "launch_flags"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=kind)
             for name, kind in FLAGS]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        raw = {name: kwargs.pop(name, None) for name, _ in FLAGS}
        return command(*args, launch_flags=LaunchFlags(**raw), **kwargs)

    del wrapper.__wrapped__  # Typer reads the signature below, not the command's
    wrapper.__signature__ = signature.replace(parameters=kept + added, return_annotation=None)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in kept + added}
    return wrapper
