"""One measured combination (:class:`Setting`), the sweep grid, and the row contract.

A setting is plain data (JSON round-trips it), so a worker process can rebuild the model from
it and studies such as ``ablate tokens`` can key resumable CSVs on it.
"""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vattn_cli.errors import UsageError, one_of

#: Columns every measurement row carries, in this order (the contract; ``tubelet``, added later,
#: goes after ``status`` so the older columns keep their places).
ROW_COLUMNS = [
    "scheme", "model", "frames", "size", "patch", "tokens", "batch", "mode", "dtype", "device",
    "params_m", "gflops", "attn_gflops", "latency_ms", "latency_iqr_ms", "throughput",
    "peak_mem_mb", "status", "tubelet",
]
#: Contract columns added after the first files were written: a file without them still resumes.
LATER_ROW_COLUMNS = ("tubelet",)
#: Where and how a row was measured (:mod:`vattn_cli.measure.provenance` says what each holds).
PROVENANCE_COLUMNS = ["vattn_version", "torch_version", "device_name", "threads", "machine"]
#: Every timed run's latency in ms: a list in JSON (always), space-separated in CSV (``--samples``).
SAMPLES_COLUMN = "latency_samples_ms"
#: Every timed run's process CPU time in ms (CPU rows), kept like :data:`SAMPLES_COLUMN`.
CPU_SAMPLES_COLUMN = "cpu_samples_ms"
#: Columns a CPU row adds after :data:`EXTRA_COLUMNS` (profile's files; not in ``tokens.csv``):
#: median CPU time of a timed run, median CPU time of one reference run (:mod:`vattn_cli.measure.reference`),
#: every run's CPU time. ``vattn compare`` judges CPU rows on ``cpu_ms / ref_cpu_ms``.
TIMING_DETAIL_COLUMNS = ["cpu_ms", "ref_cpu_ms", CPU_SAMPLES_COLUMN]
#: Extra columns ``profile`` adds after the contract's (additive; new ones go at the end).
EXTRA_COLUMNS = ["mfu", "repeats", "timed_s", "wall_s", *PROVENANCE_COLUMNS, SAMPLES_COLUMN]

MODES = ("infer", "train")
DTYPES = ("fp32", "bf16", "fp16")
MEASURES = ("params", "flops", "latency", "memory")


@dataclass(frozen=True)
class Setting:
    """Everything that decides one row: the model, the clip, and how it is run."""

    scheme: str
    model: str  # what the user named: a size (``base``) or a preset (``timesformer``)
    arch: str  # the size it resolves to (``base``)
    frames: int
    img_size: int
    patch: int = 16
    batch: int = 1
    tubelet: int = 1  # frames per patch: a 3D patch embedding when > 1
    mode: str = "infer"
    dtype: str = "fp32"
    device: str = "cpu"
    num_classes: int = 400
    compile: bool = False
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)  # scheme options

    @property
    def tokens(self) -> int:
        from vattn_cli.zoo.registry import token_count

        return token_count(self.scheme, self.frames, self.img_size, self.patch, self.tubelet)

    def geometry(self) -> tuple:
        """What the FLOP count depends on (not batch, mode, dtype or device)."""
        return (self.scheme, self.arch, self.frames, self.img_size, self.patch, self.num_classes, self.options,
                self.tubelet)

    def key(self) -> tuple:
        """The row's identity, for resuming a sweep (compare with :func:`row_key`)."""
        return (self.scheme, self.model, self.frames, self.img_size, self.patch, self.batch, self.mode,
                self.dtype, self.device, self.tubelet)

    def label(self) -> str:
        tubelet = f" t{self.tubelet}" if self.tubelet != 1 else ""
        return (f"{self.scheme} {self.model} {self.frames}x{self.img_size}/{self.patch}{tubelet} b{self.batch} "
                f"{self.mode} {self.dtype}")

    def create_model(self):
        """Build the model on the current default device (``with torch.device(...)``)."""
        from vattn_cli.zoo import create_model

        return create_model(self.scheme, size=self.arch, frames=self.frames, img_size=self.img_size,
                            patch=self.patch, num_classes=self.num_classes, scheme_options=dict(self.options),
                            **({"tubelet": self.tubelet} if self.tubelet != 1 else {}))

    def row_base(self) -> dict[str, Any]:
        """The identifying columns of this setting's row."""
        return {
            "scheme": self.scheme, "model": self.model, "frames": self.frames, "size": self.img_size,
            "patch": self.patch, "tokens": self.tokens, "batch": self.batch, "mode": self.mode,
            "dtype": self.dtype, "device": self.device, "tubelet": self.tubelet,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = [list(kv) for kv in self.options]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Setting:
        data = dict(data)
        data["options"] = tuple((k, v) for k, v in data.get("options", ()))
        return cls(**data)


@dataclass(frozen=True)
class RunOptions:
    """How every setting of a sweep is measured: warm-up, repeats, time budget, seed, threads."""

    warmup: int = 1
    repeats: int | str = "auto"  # or ``auto``: fill ``budget_s`` (at least 3 runs)
    budget_s: float = 5.0
    seed: int = 0
    threads: int | None = None  # torch threads in a worker; None: torch's default
    reference: bool = False  # CPU: time the fixed reference workload after each timed run (profile)


def row_key(row: dict[str, Any]) -> tuple:
    """The identity of a row read back from a CSV, comparable with :meth:`Setting.key`; a row from
    before the ``tubelet`` column (or with it empty) is tubelet 1."""
    tubelet = row.get("tubelet")
    tubelet = 1 if tubelet is None or tubelet == "" or (isinstance(tubelet, float) and tubelet != tubelet) else tubelet
    return (str(row["scheme"]), str(row["model"]), int(row["frames"]), int(row["size"]), int(row["patch"]),
            int(row["batch"]), str(row["mode"]), str(row["dtype"]), str(row["device"]), int(float(tubelet)))


def format_samples(samples: Any) -> str:
    """``latency_samples_ms`` as a CSV cell: space-separated ms, 4 decimals (``""`` for none)."""
    if samples is None or isinstance(samples, str):
        return samples or ""
    return " ".join(f"{float(v):.4f}" for v in samples)


def parse_samples(cell: Any) -> list[float]:
    """A ``latency_samples_ms`` value read back (CSV cell, JSON list, empty or NaN) as floats."""
    if cell is None or (isinstance(cell, float) and cell != cell):
        return []
    if isinstance(cell, (int, float)):
        return [float(cell)]
    if isinstance(cell, str):
        return [float(v) for v in cell.split()]
    return [float(v) for v in cell]


def csv_cells(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its samples as a CSV cell (see :func:`format_samples`)."""
    if SAMPLES_COLUMN not in row:
        return row
    return {**row, SAMPLES_COLUMN: format_samples(row[SAMPLES_COLUMN])}


def resume_columns(path: str | os.PathLike, columns: Sequence[str], required: Sequence[str]) -> list[str]:
    """The header a study keeps when it resumes the row file ``path``: its own ``columns``,
    or the file's header when that is the same contract with fewer or more additive columns.

    The file's header is kept when it starts with ``required`` (the columns every version of
    the file has) and is a prefix of ``columns`` (an older version's file, or one written
    without ``--samples``) or has ``columns`` as its prefix (written with ``--samples``). A file
    from before the ``tubelet`` column is compared without it (its rows read back as tubelet 1;
    the study refuses to add rows of another tubelet to it). Any other header is left for
    :class:`~vattn_cli.report.rowlog.RowLog` to refuse.
    """
    columns = list(columns)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            first = fh.readline()
    except OSError:
        return columns
    if not first.endswith("\n"):  # no file, or a header torn while being written
        return columns
    header = next(csv.reader([first]), [])
    if "tubelet" not in header:  # a file from before the tubelet column: its rows are tubelet 1
        columns_now = columns
        columns = [c for c in columns if c not in LATER_ROW_COLUMNS]
        required = [c for c in required if c not in LATER_ROW_COLUMNS]
        if header[: len(required)] != list(required):
            return columns_now
        if header == columns[: len(header)] or columns == header[: len(columns)]:
            return header
        return columns_now
    if header[: len(required)] != list(required):
        return columns
    if header == columns[: len(header)] or columns == header[: len(columns)]:
        return header
    return columns


def _choices(name: str, values: Iterable[str], accepted: Sequence[str]) -> list[str]:
    values = list(values)
    for value in values:
        if value not in accepted:
            raise one_of(name, value, list(accepted))
    return values


def expand(
    schemes: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    frames: Sequence[int] | None = None,
    sizes: Sequence[int] | None = None,
    patches: Sequence[int] | None = None,
    tubelets: Sequence[int] | None = None,
    batches: Sequence[int] = (1,),
    modes: Sequence[str] = ("infer",),
    dtypes: Sequence[str] = ("fp32",),
    device: str = "cpu",
    num_classes: int | None = None,
    compile: bool = False,
    options: dict[str, Any] | None = None,
) -> list[Setting]:
    """Every combination of the given lists, validated; presets fill what is not given.

    ``models`` are sizes or presets; a preset sets scheme, frames and size unless those lists are
    given. Raises :class:`UsageError` naming the first bad value.
    """
    from vattn_cli.zoo.catalog import resolve_model, resolve_scheme_names, validate_setting  # torch-free

    if schemes is not None:  # registered names, import paths (module:Class) and "all"
        schemes = resolve_scheme_names(list(schemes))
    _choices("--mode", modes, MODES)
    _choices("--dtype", dtypes, DTYPES)
    for flag, values in (("--frames", frames), ("--size", sizes), ("--patch", patches), ("--tubelet", tubelets),
                         ("--batch", batches)):
        for value in values or ():
            if int(value) < 1:
                raise UsageError(f"invalid {flag} {value}; expected integers >= 1")
    settings: list[Setting] = []
    for model in models or [None]:
        for scheme in schemes or [None]:
            for f, s, p, t in itertools.product(frames or [None], sizes or [None], patches or [None],
                                                tubelets or [1]):
                resolved = resolve_model(model, scheme, None, f, s, p, num_classes)
                validate_setting(resolved["scheme"], resolved["size"], resolved["frames"],
                                 resolved["img_size"], resolved["patch"], int(t))
                for b, mode, dtype in itertools.product(batches, modes, dtypes):
                    settings.append(Setting(
                        scheme=resolved["scheme"], model=resolved["model"], arch=resolved["size"],
                        frames=int(resolved["frames"]), img_size=int(resolved["img_size"]),
                        patch=int(resolved["patch"]), tubelet=int(t), batch=int(b), mode=mode, dtype=dtype, device=device,
                        num_classes=int(resolved["num_classes"]), compile=compile,
                        options=tuple(sorted((options or {}).items())),
                    ))
    return list(dict.fromkeys(settings))  # a preset and an explicit list may repeat a combination
