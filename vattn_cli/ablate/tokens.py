"""Cost against token count, for every scheme: the TimeSformer paper's "varying the number of
tokens" study (its Figure 3), with latency and peak memory beside FLOPs.

Two sweeps, as in the paper: frames at a base resolution, and resolution at a base frame count
(or, with ``grid``, every combination). Each combination is one :func:`vattn_cli.measure.sweep`
row, appended to ``OUT/tokens.csv`` as soon as it is measured, so a killed study resumes where
it stopped. From the file come the figures (one per sweep: GFLOPs, latency and peak memory
against tokens, log-log, out-of-memory marked) and ``OUT/tokens.md``, whose growth exponents
(the log-log slopes) turn "joint is quadratic, divided near-linear" into numbers.

From Python::

    from vattn_cli.ablate import tokens
    plan = tokens.plan(["joint", "divided"], frames=[2, 4, 8], sizes=[32, 64], model="tiny")
    result = tokens.run(plan, "runs/tok", measures=["params", "flops"])
    result.exponents        # one row per sweep and scheme
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vattn_cli import measure as m
from vattn_cli.ablate.config import BASE_FRAMES, BASE_SIZE, TOKENS_FRAMES, TOKENS_MODEL, TOKENS_SIZES
from vattn_cli.ablate.executor import CONCURRENT_COLUMN, Launch
from vattn_cli.ablate.measuring import run_measurements, with_concurrent
from vattn_cli.errors import UsageError
from vattn_cli.measure.setting import Setting
from vattn_cli.report.rowlog import RowLog

if TYPE_CHECKING:  # pragma: no cover - numpy, pandas and matplotlib load where a frame or figure is made,
    import pandas as pd  # so planning (and `vattn ablate tokens` usage errors) stays instant

CSV_NAME = "tokens.csv"
SUMMARY_NAME = "tokens.md"
#: ``tokens.csv`` columns: the contract's, then how each row was timed and where (provenance);
#: ``run(samples=True)`` adds :data:`~vattn_cli.measure.setting.SAMPLES_COLUMN` at the end.
COLUMNS = m.ROW_COLUMNS + [c for c in m.EXTRA_COLUMNS if c not in ("mfu", m.SAMPLES_COLUMN)]
#: The columns of every version of ``tokens.csv`` (a file written before provenance resumes).
_FIRST_COLUMNS = m.ROW_COLUMNS + ["repeats", "timed_s", "wall_s"]
#: Defaults (torch-free home: :mod:`vattn_cli.ablate.config`).
DEFAULT_FRAMES, DEFAULT_SIZES = TOKENS_FRAMES, TOKENS_SIZES
#: (column, panel title, axis label) of each cost; the label's ``{step}`` names the timed step.
METRICS = (
    ("gflops", "Compute", "GFLOPs per clip (multiply-adds)"),
    ("attn_gflops", "Attention compute", "attention GFLOPs per clip (Q.K^T and A.V)"),
    ("latency_ms", "Latency", "median latency per {step} (ms)"),
    ("peak_mem_mb", "Peak memory", "peak memory (MB)"),
)

#: Column names of each cost in ``tokens.md``.
SHORT = {"gflops": "GFLOPs", "attn_gflops": "attention GFLOPs", "latency_ms": "latency", "peak_mem_mb": "memory"}


@dataclass(frozen=True)
class Plan:
    """The combinations of one study, in the order they are measured (fewest tokens first,
    so an interrupted study has every scheme at the small settings)."""

    settings: tuple[m.Setting, ...]
    schemes: tuple[str, ...]
    frames: tuple[int, ...]
    sizes: tuple[int, ...]
    base_frames: int
    base_size: int
    grid: bool = False

    def sweeps(self) -> list[tuple[str, str]]:
        """``(name, description)`` of each sweep that has at least two points."""
        found = []
        if len(self.frames) > 1:
            found.append(("frames", f"frames {_span(self.frames)} at {self.base_size} px"))
        if len(self.sizes) > 1:
            found.append(("size", f"resolution {_span(self.sizes)} px at {self.base_frames} frames"))
        if self.grid and len(self.frames) > 1 and len(self.sizes) > 1:
            found.append(("grid", f"frames {_span(self.frames)} × resolution {_span(self.sizes)} px, every combination"))
        return found

    def members(self, frame: pd.DataFrame, sweep: str) -> pd.DataFrame:
        """The rows of ``frame`` that belong to ``sweep``."""
        if sweep == "frames":
            return frame[frame["size"] == self.base_size]
        if sweep == "size":
            return frame[frame["frames"] == self.base_frames]
        return frame


def _span(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in sorted(values))


def base_value(values: Sequence[int], preferred: int) -> int:
    """The paper's base value when it is swept, else the smallest one (cheapest to hold fixed)."""
    return preferred if preferred in values else min(values)


def plan(
    schemes: Sequence[str],
    frames: Sequence[int] = DEFAULT_FRAMES,
    sizes: Sequence[int] = DEFAULT_SIZES,
    *,
    model: str = TOKENS_MODEL,
    patch: int | None = None,
    tubelet: int = Setting.tubelet,
    batch: int = Setting.batch,
    mode: str = Setting.mode,
    dtype: str = Setting.dtype,
    device: str = Setting.device,
    grid: bool = False,
) -> Plan:
    """The study's combinations: frames at the base size and sizes at the base frame count
    (``grid``: the cartesian product). Raises :class:`~vattn_cli.errors.UsageError` naming a
    bad value (an unknown scheme, a size the patch does not divide, ...)."""
    frames, sizes = list(dict.fromkeys(frames)), list(dict.fromkeys(sizes))
    base_frames, base_size = base_value(frames, BASE_FRAMES), base_value(sizes, BASE_SIZE)
    common = dict(schemes=list(schemes), models=[model], patches=[patch] if patch else None, tubelets=[tubelet],
                  batches=[batch],
                  modes=[mode], dtypes=[dtype], device=device)
    if grid:
        settings = m.expand(frames=frames, sizes=sizes, **common)
    else:
        settings = (m.expand(frames=frames, sizes=[base_size], **common)
                    + m.expand(frames=[base_frames], sizes=sizes, **common))
    names = list(dict.fromkeys(s.scheme for s in settings))
    ordered = sorted(dict.fromkeys(settings), key=lambda s: (s.frames * s.img_size**2, names.index(s.scheme)))
    return Plan(tuple(ordered), tuple(names), tuple(sorted(frames)), tuple(sorted(sizes)), base_frames, base_size,
                grid)


def fit_exponent(tokens: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``log(values)`` against ``log(tokens)``: the growth exponent.

    NaN unless there are two distinct token counts with positive values.
    """
    import numpy as np

    x, y = np.asarray(tokens, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = np.log(x[keep]), np.log(y[keep])
    if len(np.unique(x)) < 2:
        return math.nan
    return float(np.polyfit(x, y, 1)[0])


def top_half(count: int) -> int:
    """How many of the largest-token points the "top half" fit uses (at least 2)."""
    return max(2, math.ceil(count / 2))


def exponents(frame: pd.DataFrame, plan_: Plan) -> pd.DataFrame:
    """Growth exponents per sweep and scheme, over all measured points and the top half.

    A point counts for a cost wherever that cost was measured: FLOPs are counted even for a
    combination that then ran out of memory, so the FLOP exponent covers the whole sweep.
    """
    import pandas as pd

    records = []
    for sweep, _ in plan_.sweeps():
        rows = plan_.members(frame, sweep)
        for scheme in plan_.schemes:
            mine = rows[rows["scheme"] == scheme].sort_values("tokens")
            if mine.empty:
                continue
            oom = mine.loc[mine["status"] == "oom", "tokens"]
            record = {"sweep": sweep, "scheme": scheme, "points": len(mine),
                      "tokens_min": int(mine["tokens"].min()), "tokens_max": int(mine["tokens"].max()),
                      "oom_from_tokens": int(oom.min()) if len(oom) else None}
            for column, _, _ in METRICS:
                values = pd.to_numeric(mine[column], errors="coerce")
                measured = mine[values.notna() & (values > 0)]
                values = values[values.notna() & (values > 0)]
                record[f"{column}_exp"] = fit_exponent(measured["tokens"], values)
                n = top_half(len(values))
                record[f"{column}_exp_top"] = (fit_exponent(measured["tokens"].iloc[-n:], values.iloc[-n:])
                                               if len(values) >= 3 else math.nan)
            records.append(record)
    return pd.DataFrame(records)


def _setting_words(frame: pd.DataFrame) -> str:
    first = frame.iloc[0]
    return f"model {first['model']}, {first['mode']}, {first['dtype']}, batch {first['batch']}, {first['device']}"


def plot_sweeps(frame: pd.DataFrame, plan_: Plan, out: Path) -> list[Path]:
    """One figure per sweep, a panel per measured cost against tokens; PNG and SVG."""
    import pandas as pd

    from vattn_cli.report import plots

    styles = plots.group_styles(list(plan_.schemes))
    step = "train step" if plan_.settings and plan_.settings[0].mode == "train" else "forward pass"
    paths: list[Path] = []
    for sweep, description in plan_.sweeps():
        rows = plan_.members(frame, sweep)
        metrics = [mt for mt in METRICS if pd.to_numeric(rows[mt[0]], errors="coerce").gt(0).any()]
        if rows.empty or not metrics:
            continue
        fig, axes = plots.panels(len(metrics), f"Cost against tokens: {description}\n({_setting_words(rows)})")
        for ax, (column, title, label) in zip(axes, metrics):
            plots.plot_groups(ax, rows, "tokens", column, styles, connect=sweep != "grid")
            plots.log_log(ax, "tokens per clip", label.format(step=step), title, xticks=rows["tokens"])
        plots.legend_below(fig, {s: styles[s] for s in plan_.schemes if s in set(rows["scheme"])},
                           with_oom=bool((rows["status"] == "oom").any()))
        paths += plots.save_figure(fig, out / f"tokens_{sweep}")
    return paths


def _fmt(value: object, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_markdown(frame: pd.DataFrame, table: pd.DataFrame, plan_: Plan, figures: Sequence[Path]) -> str:
    """``tokens.md``: what was run, the growth exponents per sweep, and the figures."""
    import pandas as pd

    counts = frame["status"].map(lambda s: "error" if str(s).startswith("error") else s).value_counts()
    lines = [
        "# vattn ablate tokens", "",
        f"{_setting_words(frame)}; schemes {', '.join(plan_.schemes)}. "
        f"{len(frame)} combinations: {counts.get('ok', 0)} ok, {counts.get('oom', 0)} out of memory, "
        f"{counts.get('error', 0)} failed. Rows: `{CSV_NAME}`.", "",
        "**Growth exponent**: the least-squares slope of log(cost) against log(tokens). 1 means the cost "
        "grows in proportion to the tokens, 2 quadratically. *all* fits every point where the cost was "
        "measured (FLOPs are counted even where the run ran out of memory); *top* fits the larger-token "
        "half (at least 2 points; shown from 3), nearer the asymptote. In the figures an x marks a "
        "combination that ran out of memory: at its cost where that was measured anyway, at the top edge "
        "of the panel where not.", "",
    ]
    names = {f.stem: f.name for f in figures if f.suffix == ".png"}
    header = ("| scheme | points | tokens | "
              + " | ".join(f"{SHORT[c]} {t}" for c, _, _ in METRICS for t in ("all", "top"))
              + " | out of memory from |")
    for sweep, description in plan_.sweeps():
        mine = table[table["sweep"] == sweep] if len(table) else table
        if mine.empty:
            continue
        lines += [f"## {description}", "", header, "|" + "---|" * (4 + 2 * len(METRICS))]
        for _, r in mine.iterrows():
            oom = r["oom_from_tokens"]
            lines.append(
                f"| {r['scheme']} | {r['points']} | {r['tokens_min']:,}–{r['tokens_max']:,} | "
                + " | ".join(_fmt(r[f"{c}_exp{t}"]) for c, _, _ in METRICS for t in ("", "_top"))
                + f" | {'–' if oom is None or pd.isna(oom) else f'{int(oom):,} tokens'} |")
        if f"tokens_{sweep}" in names:
            lines += ["", f"![{description}]({names[f'tokens_{sweep}']})"]
        lines.append("")
    return "\n".join(lines)


@dataclass
class Result:
    """What a study produced: its rows (from the CSV), exponents, and the files written."""

    frame: pd.DataFrame
    exponents: pd.DataFrame
    skipped: int
    measured: int
    files: list[Path] = field(default_factory=list)


def read_rows(path: Path, plan_: Plan) -> pd.DataFrame:
    """The plan's rows of ``tokens.csv``, in plan order (rows of other runs are left out)."""
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={m.SAMPLES_COLUMN: str})
    if "tubelet" not in frame.columns:  # a file from before the tubelet column: per-frame patches
        frame["tubelet"] = 1
    order = {s.key(): i for i, s in enumerate(plan_.settings)}
    position = [order.get(m.row_key(row)) for row in frame.to_dict(orient="records")]
    frame = frame.assign(_order=position).dropna(subset=["_order"])
    frame = frame.drop_duplicates("_order", keep="last").sort_values("_order").drop(columns="_order")
    columns = (COLUMNS + [c for c in (CONCURRENT_COLUMN,) if c in frame.columns]
               + ([m.SAMPLES_COLUMN] if m.SAMPLES_COLUMN in frame.columns else []))
    if m.SAMPLES_COLUMN in frame.columns:  # back to lists of ms
        frame[m.SAMPLES_COLUMN] = frame[m.SAMPLES_COLUMN].map(m.parse_samples)
    return m.rows_frame(frame.to_dict(orient="records"))[columns].reset_index(drop=True)


def run(
    plan_: Plan,
    out: str | Path,
    measures: Sequence[str] = m.MEASURES,
    options: m.RunOptions = m.RunOptions(),
    *,
    resume: bool = False,
    max_memory: int | None = None,
    timeout_s: float | None = None,
    isolate: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    samples: bool = False,
    launch: Launch | None = None,
) -> Result:
    """Measure the plan's combinations into ``out/tokens.csv``, then plot and summarise it.

    Without ``resume`` an existing ``tokens.csv`` is refused (never overwritten); with it, the
    combinations already in the file are skipped and ``log`` says how many. ``samples``: keep
    every timed run's latency (the ``latency_samples_ms`` column). A resumed file keeps its own
    header where it is this one with fewer or more additive columns (an earlier version's, or
    one written with or without ``samples``). ``launch``: how the combinations are run
    (:mod:`vattn_cli.ablate.executor`; default one after another, each in a fresh worker).
    """
    import pandas as pd

    say = log or (lambda _msg: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    launch = launch or Launch()
    wanted_columns = COLUMNS + ([m.SAMPLES_COLUMN] if samples else [])
    columns = m.resume_columns(out / CSV_NAME, wanted_columns, _FIRST_COLUMNS) if resume else wanted_columns
    timed = bool({"latency", "memory"} & set(measures))
    columns = with_concurrent(out / CSV_NAME, columns, launch, timed=timed, resume=resume)
    wanted_columns = with_concurrent(out / CSV_NAME, wanted_columns, launch, timed=timed, resume=resume)
    if columns != wanted_columns:
        missing, extra = [c for c in wanted_columns if c not in columns], [c for c in columns if c not in wanted_columns]
        say(f"{out / CSV_NAME} keeps its columns: " + "; ".join(
            ([f"without {', '.join(missing)}"] if missing else []) + ([f"with {', '.join(extra)}"] if extra else [])))
    if "tubelet" not in columns and any(s.tubelet != 1 for s in plan_.settings):
        raise UsageError(f"{out / CSV_NAME} was written before the tubelet column (its rows are tubelet 1); "
                         "resume it without --tubelet, or choose another --out")
    rowlog = RowLog(out / CSV_NAME, columns)
    done = {m.row_key(row) for row in rowlog.open(resume=resume)}
    try:
        wanted = {s.key() for s in plan_.settings}
        skipped = len(wanted & done)
        if resume:
            torn = "; dropped a partly written last line" if rowlog.torn else ""
            say(f"resuming {rowlog.path}: {skipped} of {len(wanted)} combinations already there, skipped{torn}")
            if done - wanted:
                say(f"{len(done - wanted)} rows of {rowlog.path} are not part of this study: kept, not plotted")
        todo = [s for s in plan_.settings if s.key() not in done]
        measured = run_measurements(todo, measures, options, launch or Launch(), rowlog, out=out,
                                    max_memory=max_memory, timeout_s=timeout_s, isolate=isolate, progress=progress)
    finally:
        rowlog.close()
    frame = read_rows(rowlog.path, plan_)
    figures = plot_sweeps(frame, plan_, out) if len(frame) else []
    table = exponents(frame, plan_) if len(frame) else pd.DataFrame()
    summary = out / SUMMARY_NAME
    from vattn_cli.report.tables import atomic_write_text

    atomic_write_text(summary, summary_markdown(frame, table, plan_, figures) if len(frame) else "")
    return Result(frame, table, skipped, measured, [rowlog.path, summary, *figures])
