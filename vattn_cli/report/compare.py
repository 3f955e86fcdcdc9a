"""``vattn compare``: match the rows of two result files, apply per-metric rules, give a verdict.

The library behind the CI gate. It reads what ``profile``, ``ablate tokens`` (``tokens.csv``),
``ablate schemes`` (``schemes.csv``) and ``eval`` write (CSV or JSON, or a folder of them),
matches rows on their setting key, and judges each metric by a rule:

- a rule is a threshold on the change, absolute (``top1:-1``: one point) or relative
  (``latency_ms:+10%``), in the metric's worse direction (costs are worse when higher; throughput,
  mfu and accuracies when lower);
- a timing metric (``latency_ms``, ``throughput``) regresses only with statistical evidence too:
  a one-sided Mann-Whitney U test on the samples where both rows carry them, else
  non-overlapping inter-quartile bands (``latency_ms +- latency_iqr_ms / 2``, or the quartile
  columns ``latency_q1_ms``/``latency_q3_ms`` where present);
- a timing metric is judged on a *clock* (``--clock``). ``wall``: the wall-clock latency and its
  samples, as measured. ``ref`` (what ``auto`` picks where both rows have it): the step's process
  CPU time in units of the fixed reference workload timed beside it in the same seconds
  (``cpu_ms / ref_cpu_ms``, samples ``cpu_samples_ms / ref_cpu_ms``; see
  :mod:`vattn_cli.measure.reference`), so that a machine that got slower between the two runs
  (the usual cause of a false alarm on a shared runner) moves both and cancels. ``cpu``: the CPU
  time alone. The judged ``current`` value is then the current run's latency (throughput) at the
  baseline run's machine speed: ``baseline x (judged current / judged baseline)``; ``measured``
  keeps the raw value;
- with two runs or more a side (a folder of rounds), a timing change also needs every current
  run past every baseline run on that clock: a rerun on a busy machine shifts a whole run, which
  a test on the pooled samples cannot tell from a slower step;
- a row whose status goes from ``ok`` to ``oom`` or ``error`` is a regression, the reverse an
  improvement.

Nothing here prints or exits: :func:`compare` returns a :class:`Comparison` (a long frame, one row
per setting and metric, and the verdict), bad input raises :class:`~vattn_cli.errors.UsageError`.
Rule parsing and the U test are plain Python: the CLI checks ``--fail-on`` and ``--alpha`` before
pandas loads, and pandas loads only once files are read.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vattn_cli.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover - pandas loads once files are read
    import pandas as pd

# --------------------------------------------------------------------------------------------
# Metrics and rules (no pandas)

#: Metrics a rule may name, and the direction that is *better*.
METRICS: dict[str, str] = {
    "gflops": "lower", "attn_gflops": "lower", "params_m": "lower", "latency_ms": "lower",
    "peak_mem_mb": "lower", "throughput": "higher", "mfu": "higher", "top1": "higher", "top5": "higher",
    "pair_acc": "higher",
}
#: Metrics measured by timing: a change beyond the rule needs statistical evidence too.
TIMING_METRICS = ("latency_ms", "throughput")
#: The gate's rules unless ``--fail-on`` overrides them (per metric).
DEFAULT_FAIL_ON = "gflops:+0.1%,params_m:+0%,latency_ms:+10%,peak_mem_mb:+10%,top1:-1"
#: Significance level of the U test (chosen by ``benchmarks/compare_noise.py``).
DEFAULT_ALPHA = 0.01
#: Columns that identify a row's setting, in this order; those present in both inputs are used.
KEY_COLUMNS = ("scheme", "model", "frames", "size", "patch", "tubelet", "batch", "mode", "dtype", "device",
               "dataset", "seed", "pos_embed", "views", "class")
#: Where the rows came from: a difference is a warning (an error with ``strict``).
PROVENANCE_COLUMNS = ("machine", "device_name", "torch_version", "vattn_version", "threads")
SAMPLES_COLUMN = "latency_samples_ms"
CPU_SAMPLES_COLUMN = "cpu_samples_ms"
#: How a timing metric is judged (``--clock``): ``auto`` is ``ref`` where both rows have the
#: reference workload's time and CPU samples, else ``wall``.
CLOCKS = ("auto", "ref", "cpu", "wall")
DEFAULT_CLOCK = "auto"
CLOCK_TEXT = {"ref": "CPU time in reference units", "cpu": "CPU time", "wall": "the wall clock"}
CLOCK_NEEDS = {"ref": "cpu_ms, ref_cpu_ms and cpu_samples_ms", "cpu": "cpu_ms and cpu_samples_ms"}
#: Verdicts of a comparison row.
REGRESSION, IMPROVEMENT, UNCHANGED = "regression", "improvement", "unchanged"
ADDED, REMOVED, UNMEASURED = "added", "removed", "unmeasured"
#: Result frame columns after the key columns.
RESULT_COLUMNS = ["setting", "metric", "baseline", "current", "change", "change_pct", "rule", "p_value",
                  "evidence", "verdict", "clock", "measured"]

_FORMS = "METRIC:+N% or METRIC:+N (absolute), sign optional, or METRIC:off"
_NUMBER = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)(%?)$")


@dataclass(frozen=True)
class Rule:
    """A threshold on one metric's change in its worse direction; ``limit`` None turns it off."""

    metric: str
    limit: float | None
    relative: bool = True

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric] == "higher"

    def text(self) -> str:
        """The rule as it is written: ``gflops:+0.1%``, ``top1:-1``, ``latency_ms:off``."""
        return f"{self.metric}:{self.limit_text()}"

    def limit_text(self) -> str:
        if self.limit is None:
            return "off"
        sign = "-" if self.higher_is_better else "+"
        return f"{sign}{self.limit:g}{'%' if self.relative else ''}"

    def worse_by(self, baseline: float, current: float) -> float:
        """How much ``current`` is worse than ``baseline``, in the rule's unit (negative: better)."""
        delta = current - baseline
        if self.higher_is_better:
            delta = -delta
        if not self.relative:
            return delta
        if baseline == 0:
            return 0.0 if delta == 0 else math.copysign(math.inf, delta)
        return 100.0 * delta / abs(baseline)

    def beyond(self, worse: float) -> int:
        """+1: past the limit in the worse direction, -1: as far in the better one, 0: within."""
        if self.limit is None:
            return 0
        slack = 1e-9 * max(1.0, self.limit)  # a CSV round trip must not turn 0 into a change
        if worse > self.limit + slack:
            return 1
        if worse < -self.limit - slack:
            return -1
        return 0


def parse_rule(text: str) -> Rule:
    """One ``--fail-on`` entry; :class:`UsageError` naming it and the accepted metrics and forms."""
    entry = text.strip()
    metric, sep, value = entry.partition(":")
    metric, value = metric.strip(), value.strip()
    accepted = ", ".join(METRICS)
    if not sep or not metric or not value:
        raise UsageError(f"invalid --fail-on rule {entry!r}; expected {_FORMS} (metrics: {accepted})")
    if metric not in METRICS:
        raise UsageError(f"invalid --fail-on metric {metric!r} in {entry!r}; accepted metrics: {accepted} "
                         f"(forms: {_FORMS})")
    if value.lower() in ("off", "none"):
        return Rule(metric, None)
    match = _NUMBER.match(value)
    if not match:
        raise UsageError(f"invalid --fail-on rule {entry!r}; expected {_FORMS}, e.g. latency_ms:+10% or top1:-1")
    sign, number, percent = match.groups()
    higher_better = METRICS[metric] == "higher"
    worse_sign = "-" if higher_better else "+"
    if sign and sign != worse_sign:
        direction = "higher" if higher_better else "lower"
        raise UsageError(f"invalid --fail-on rule {entry!r}: {metric} is better when {direction}, so its rule is "
                         f"the allowed {'drop' if higher_better else 'rise'} ({metric}:{worse_sign}{number}{percent})")
    return Rule(metric, float(number), relative=bool(percent))


def parse_rules(text: str | None, defaults: str = DEFAULT_FAIL_ON) -> dict[str, Rule]:
    """The default rules with the user's ``--fail-on`` entries overriding them metric by metric."""
    rules = {rule.metric: rule for rule in (parse_rule(item) for item in defaults.split(","))}
    if text is not None:
        items = [item for item in str(text).split(",")]
        if not any(item.strip() for item in items):
            raise UsageError(f"invalid --fail-on {text!r}; expected a comma-separated list of {_FORMS}")
        for item in items:
            if not item.strip():
                raise UsageError(f"invalid --fail-on {text!r}: an empty rule; expected a comma-separated list")
            rule = parse_rule(item)
            rules[rule.metric] = rule
    return rules


def check_clock(clock: str) -> str:
    if clock not in CLOCKS:
        raise UsageError(f"invalid --clock {clock!r}; accepted: {', '.join(CLOCKS)}")
    return clock


def check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise UsageError(f"invalid --alpha {alpha!r}; expected a significance level between 0 and 1, e.g. 0.01")
    return float(alpha)


# --------------------------------------------------------------------------------------------
# The Mann-Whitney U test (no scipy)

#: The exact null distribution is used without ties while the smaller sample has at most this
#: many values and m x n stays under ``_EXACT_MAX_PAIRS``; the normal approximation otherwise.
_EXACT_MAX_SMALL = 25
_EXACT_MAX_PAIRS = 2500


def u_statistic(x: Sequence[float], y: Sequence[float]) -> float:
    """U of ``x`` against ``y``: pairs with x > y, ties counting one half."""
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    ranks: list[float] = [0.0] * len(pooled)
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    rank_x = sum(r for r, (_, who) in zip(ranks, pooled) if who == 0)
    return rank_x - len(x) * (len(x) + 1) / 2


def _u_counts(m: int, n: int) -> list[int]:
    """How many of the C(m+n, m) orderings give U = 0..m*n (no ties): the coefficients of the
    Gaussian binomial [m+n choose m]_q = prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i)."""
    size = m * n + 1
    poly = [1] + [0] * (size - 1)
    for i in range(1, m + 1):
        step = n + i
        for k in range(size - 1, step - 1, -1):  # times (1 - q^step)
            poly[k] -= poly[k - step]
        for k in range(i, size):  # divided by (1 - q^i): a running sum with stride i
            poly[k] += poly[k - i]
    return poly


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, str]:
    """One-sided Mann-Whitney U test that ``x`` tends to be larger than ``y``.

    Returns ``(U, p, method)``: U of ``x`` (pairs with x > y, ties one half), the p-value
    P(U >= observed) under the null of one distribution, and ``exact`` or ``normal``. Exact
    without ties for small samples (the Gaussian binomial counts); otherwise the normal
    approximation with the tie correction of the variance and a continuity correction.
    """
    x, y = [float(v) for v in x], [float(v) for v in y]
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        raise ValueError("the U test needs at least one value in each sample")
    u = u_statistic(x, y)
    pooled = x + y
    tied = len(set(pooled)) < len(pooled)
    small, large = min(m, n), max(m, n)
    if not tied and small <= _EXACT_MAX_SMALL and m * n <= _EXACT_MAX_PAIRS:
        counts = _u_counts(small, large)  # U's null distribution is the same for (m, n) and (n, m)
        at_least = sum(counts[math.ceil(u - 1e-9):])
        return u, at_least / math.comb(m + n, m), "exact"
    total = m + n
    ties: dict[float, int] = {}
    for v in pooled:
        ties[v] = ties.get(v, 0) + 1
    tie_term = sum(t ** 3 - t for t in ties.values()) / (total * (total - 1))
    variance = m * n / 12 * ((total + 1) - tie_term)
    if variance <= 0:  # every value equal
        return u, 1.0, "normal"
    z = (u - m * n / 2 - 0.5) / math.sqrt(variance)
    return u, 0.5 * math.erfc(z / math.sqrt(2)), "normal"


# --------------------------------------------------------------------------------------------
# Reading result files


@dataclass
class Results:
    """The rows of one input (a file, or every result file of a folder)."""

    path: str
    frame: pd.DataFrame  # with a ``source`` column: the file each row came from
    folder: bool
    skipped: list[str] = field(default_factory=list)  # files of a folder that hold no result rows


def check_paths(paths: Iterable[str]) -> None:
    """Every input exists (checked before pandas loads, so the error is instant)."""
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"cannot read results {path!r}: no such file or folder")
        if os.path.isfile(path) and Path(path).suffix.lower() not in (".csv", ".json"):
            raise UsageError(f"cannot read results {path!r}: expected a .csv or .json file, or a folder of them")


def _read_table(path: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        if path.suffix.lower() == ".json":
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            if isinstance(data, dict) and isinstance(data.get("rows"), list):
                data = data["rows"]
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise UsageError(f"cannot read results {str(path)!r}: expected a JSON list of rows (objects)")
            return pd.DataFrame(data)
        return pd.read_csv(path, dtype={SAMPLES_COLUMN: str, CPU_SAMPLES_COLUMN: str, "status": str})
    except UsageError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(f"cannot read results {str(path)!r}: {reason}") from None


def _looks_like_results(frame: pd.DataFrame) -> bool:
    return "scheme" in frame.columns and any(metric in frame.columns for metric in METRICS)


def read_results(path: str | os.PathLike) -> Results:
    """Rows of a CSV/JSON file, or of every ``*.csv``/``*.json`` directly in a folder.

    In a folder, files without result rows (no ``scheme`` column or no metric) are skipped and
    listed in ``skipped``; a file given by name must hold result rows.
    """
    import pandas as pd

    path = Path(path)
    check_paths([str(path)])
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".json")
                       and not p.name.startswith("."))
        frames, skipped = [], []
        for file in files:
            try:
                table = _read_table(file)
            except UsageError:
                skipped.append(file.name)
                continue
            if table.empty or not _looks_like_results(table):
                skipped.append(file.name)
                continue
            frames.append(table.assign(source=file.name))
        if not frames:
            raise UsageError(f"cannot read results {str(path)!r}: no result rows in its .csv/.json files "
                             "(expected files written by profile, ablate tokens, ablate schemes or eval)")
        return Results(str(path), pd.concat(frames, ignore_index=True), folder=True, skipped=skipped)
    table = _read_table(path)
    if table.empty:
        raise UsageError(f"cannot read results {str(path)!r}: it has no rows")
    if not _looks_like_results(table):
        missing = "a scheme column" if "scheme" not in table.columns else "a metric column"
        raise UsageError(f"cannot read results {str(path)!r}: not a vattn results file (no {missing}; expected "
                         "rows from profile, ablate tokens, ablate schemes or eval)")
    return Results(str(path), table.assign(source=path.name), folder=False)


def parse_samples(value: Any) -> list[float] | None:
    """``latency_samples_ms`` as read back: a JSON list, or a CSV cell of space-separated floats."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        text = value.strip().strip("[]")
        if not text:
            return None
        try:
            values = [float(v) for v in re.split(r"[\s,;]+", text) if v]
        except ValueError:
            return None
    elif isinstance(value, Iterable):
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            return None
    else:
        return None
    values = [v for v in values if math.isfinite(v)]
    return values or None


def _key_value(value: Any) -> str:
    """A key cell as text, equal whether it came from CSV or JSON (``8``, ``8.0``, ``"8"``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d+\.0+", text):
        return text.split(".")[0]
    return "" if text.lower() in ("nan", "none") else text


def status_kind(value: Any) -> str:
    """``ok``, ``oom`` or ``error`` (``error: reason`` and anything else unknown)."""
    text = _key_value(value).lower()
    if text in ("", "ok"):
        return "ok"
    if text == "oom":
        return "oom"
    return "error"


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


# --------------------------------------------------------------------------------------------
# The comparison


@dataclass
class Comparison:
    """The verdict: one row per setting x metric (plus status changes and added/removed rows)."""

    baseline: str
    current: str
    frame: pd.DataFrame  # key columns, then RESULT_COLUMNS
    key_columns: list[str]
    rules: dict[str, Rule]
    alpha: float
    matched: int
    warnings: list[str]
    mismatches: list[str]  # provenance differences (warnings unless strict)
    notes: list[str] = field(default_factory=list)  # pooled runs, skipped files, clocks used
    clock: str = DEFAULT_CLOCK  # --clock: how timing metrics were judged

    def rows(self, verdict: str) -> pd.DataFrame:
        return self.frame[self.frame["verdict"] == verdict]

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows(REGRESSION)

    @property
    def improvements(self) -> pd.DataFrame:
        return self.rows(IMPROVEMENT)

    @property
    def failed(self) -> bool:
        return not self.regressions.empty

    def regressed_settings(self) -> list[str]:
        return list(dict.fromkeys(self.regressions["setting"]))

    def summary(self) -> str:
        """One line: the regressions by setting and metric, or that there were none."""
        if not self.failed:
            return (f"no regression: {self.matched} matched rows, {len(self.improvements)} improvements, "
                    f"{len(self.rows(ADDED))} added, {len(self.rows(REMOVED))} removed")
        parts = []
        for setting, rows in self.regressions.groupby("setting", sort=False):
            parts.append(f"{setting} (" + ", ".join(_change_text(r) for _, r in rows.iterrows()) + ")")
        shown = parts[:4] + ([f"and {len(parts) - 4} more rows"] if len(parts) > 4 else [])
        count = len(self.regressions)
        return (f"{count} regression{'s' if count != 1 else ''} in {len(parts)} of {self.matched} rows: "
                + "; ".join(shown))

    def markdown(self, title: str = "vattn compare") -> str:
        return comparison_markdown(self, title)


def rules_text(rules: Mapping[str, Rule]) -> str:
    return ", ".join(rule.text() for rule in rules.values())


def _label_parts(row: Mapping[str, str], varying: set[str], keys: Sequence[str]) -> str:
    geometry = f"{row.get('frames', '?')}x{row.get('size', '?')}"
    if row.get("patch"):
        geometry += f"/{row['patch']}"
    parts = [row.get("scheme", ""), row.get("model", ""), geometry]
    if row.get("tubelet") and row["tubelet"] != "1":
        parts.append(f"t{row['tubelet']}")
    for col in keys:
        if col in ("scheme", "model", "frames", "size", "patch", "tubelet") or col not in varying:
            continue
        value = row.get(col, "")
        if not value:
            continue
        if col == "batch":
            parts.append(f"b{value}")
        elif col in ("mode", "dtype", "device", "dataset", "views", "source"):
            parts.append(value)
        else:
            parts.append(f"{col}={value}")
    return " ".join(p for p in parts if p)


def pool_runs(rows: pd.DataFrame) -> dict[str, Any]:
    """One row from several runs of one setting (interleaved rounds of a CI job, say).

    Every metric is the median over the runs (so one disturbed run of three moves nothing), the
    IQR band spans the median run's edges, the samples are pooled for the U test, and the status
    is the worst (error, then oom). Each clock's per-run values are kept (``_wall_runs``,
    ``_cpu_runs``, ``_ref_runs``) for the runs' own check (:func:`_runs_apart`)."""
    import statistics

    out = rows.iloc[0].to_dict()
    out["runs"] = len(rows)
    for clock, column in (("wall", "latency_ms"), ("cpu", "_cpu"), ("ref", "_ref")):
        values = [_number(v) for v in rows[column]] if column in rows.columns else []
        out[f"_{clock}_runs"] = [v for v in values if math.isfinite(v)]
    if len(rows) == 1:
        return out
    statuses = list(rows["status"]) if "status" in rows.columns else ["ok"] * len(rows)
    kinds = [status_kind(v) for v in statuses]
    for worst in ("error", "oom"):
        if worst in kinds:
            out["status"] = statuses[kinds.index(worst)]
            break

    def median(values: Iterable[Any]) -> float:
        finite = [v for v in (_number(x) for x in values) if math.isfinite(v)]
        return statistics.median(finite) if finite else math.nan

    for metric in [*METRICS, "latency_iqr_ms"]:
        if metric in rows.columns:
            out[metric] = median(rows[metric])
    bands = [b for b in (_band(r) for _, r in rows.iterrows()) if b]
    if bands:
        out["latency_q1_ms"], out["latency_q3_ms"] = median(b[0] for b in bands), median(b[1] for b in bands)
    samples = [parse_samples(v) for v in rows[SAMPLES_COLUMN]] if SAMPLES_COLUMN in rows.columns else []
    out[SAMPLES_COLUMN] = [v for run in samples for v in run] if samples and all(samples) else None
    for clock in ("cpu", "ref"):  # each run judged on its own clock first, then the median run
        out[f"_{clock}"] = median(rows[f"_{clock}"])
        runs = list(rows[f"_{clock}_samples"])
        out[f"_{clock}_samples"] = [v for run in runs for v in run] if all(runs) else None
    for column in ("cpu_ms", "ref_cpu_ms"):
        if column in rows.columns:
            out[column] = median(rows[column])
    return out


def _clock_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Each row's CPU time (``_cpu``) and its CPU time in reference units (``_ref``), with their
    samples (``_cpu_samples``, ``_ref_samples``: None where the row lacks them)."""
    cpu = [_number(v) for v in frame["cpu_ms"]] if "cpu_ms" in frame.columns else [math.nan] * len(frame)
    ref = [_number(v) for v in frame["ref_cpu_ms"]] if "ref_cpu_ms" in frame.columns else [math.nan] * len(frame)
    cells = frame[CPU_SAMPLES_COLUMN] if CPU_SAMPLES_COLUMN in frame.columns else [None] * len(frame)
    cpu_samples = [parse_samples(v) for v in cells]
    usable = [math.isfinite(r) and r > 0 for r in ref]
    frame = frame.copy()
    frame["_cpu"] = cpu
    frame["_cpu_samples"] = cpu_samples
    frame["_ref"] = [c / r if ok else math.nan for c, r, ok in zip(cpu, ref, usable)]
    frame["_ref_samples"] = [[v / r for v in samples] if ok and samples else None
                             for samples, r, ok in zip(cpu_samples, ref, usable)]
    return frame


def _prepared(results: Results, keys: Sequence[str], role: str, notes: list[str],
              warnings: list[str] | None = None) -> pd.DataFrame:
    """Key cells normalised, and the runs of a setting (several files of a folder, repeated rows)
    pooled into one row (:func:`pool_runs`). Runs whose costs differ are named in ``warnings``:
    rows of different settings that the key does not tell apart look like that."""
    import pandas as pd

    frame = _clock_columns(results.frame)
    for col in keys:
        frame[col] = [_key_value(v) for v in frame[col]] if col in frame.columns else ""
    frame["_key"] = list(zip(*(frame[c] for c in keys))) if keys else [()] * len(frame)
    if not frame["_key"].duplicated().any():
        return pd.DataFrame([pool_runs(frame.iloc[[i]]) for i in range(len(frame))]).reset_index(drop=True)
    rows, differ = [], {}
    for key, group in frame.groupby("_key", sort=False):
        rows.append(pool_runs(group))
        for metric in ("gflops", "attn_gflops", "params_m"):  # exact: equal in every run of a setting
            if metric in group.columns and len(group) > 1:
                values = {round(v, 12) for v in (_number(x) for x in group[metric]) if math.isfinite(v)}
                if len(values) > 1:
                    differ.setdefault(key, []).append(metric)
    runs = [r["runs"] for r in rows]
    text = (f"{role} has {min(runs)}-{max(runs)}" if min(runs) != max(runs) else f"{role} has {max(runs)}")
    notes.append(f"{text} runs per setting: each metric is their median run, the U test pools their samples, "
                 "and a timing change needs every run past the other side's")
    if differ and warnings is not None:
        every = list(frame["_key"])
        varying = {c for i, c in enumerate(keys) if len({k[i] for k in every}) > 1}
        named = [f"{_label_parts(dict(zip(keys, k)), varying, keys)} ({', '.join(m)})" for k, m in differ.items()]
        warnings.append(f"{role} runs of one setting differ in their costs, so they may not be the same setting "
                        f"(their median is compared): " + "; ".join(named[:3]) + ("; ..." if len(named) > 3 else ""))
    return pd.DataFrame(rows).reset_index(drop=True)


def _evidence_samples(b: Sequence[float], c: Sequence[float], direction: int,
                      alpha: float) -> tuple[bool, float, str]:
    """U test on two sides' samples; ``direction`` +1: is current slower? -1: is it faster?"""
    x, y = (c, b) if direction > 0 else (b, c)
    _, p, method = mann_whitney_greater(x, y)
    sign = "<" if p < alpha else ">="
    return p < alpha, p, f"U test ({method}, {len(b)}+{len(c)} samples): p={p:.2g} {sign} {alpha:g}"


def _runs_apart(base: pd.Series, cur: pd.Series, clock: str, direction: int) -> tuple[bool, str] | None:
    """With two runs or more a side: is every current run slower (``direction`` +1; faster: -1)
    than every baseline run on ``clock``? A rerun on a shared machine moves whole runs (its
    samples move together), which the U test on pooled samples cannot see; the runs can. None
    where a side has one run."""
    b, c = base.get(f"_{clock}_runs"), cur.get(f"_{clock}_runs")
    if not (isinstance(b, (list, tuple)) and isinstance(c, (list, tuple)) and len(b) >= 2 and len(c) >= 2):
        return None
    apart = min(c) > max(b) if direction > 0 else max(c) < min(b)
    word = "every run slower" if direction > 0 else "every run faster"
    return apart, (f"{word} ({len(b)}+{len(c)} runs)" if apart else f"runs overlap ({len(b)}+{len(c)} runs)")


def _band(row: pd.Series) -> tuple[float, float] | None:
    q1, q3 = _number(row.get("latency_q1_ms")), _number(row.get("latency_q3_ms"))
    if math.isfinite(q1) and math.isfinite(q3):
        return q1, q3
    median, iqr = _number(row.get("latency_ms")), _number(row.get("latency_iqr_ms"))
    if math.isfinite(median) and math.isfinite(iqr):
        return median - iqr / 2, median + iqr / 2
    return None


def _evidence_bands(base: pd.Series, cur: pd.Series, direction: int) -> tuple[bool, str] | None:
    """Non-overlapping IQR bands of the latency; None where a row has no spread."""
    b, c = _band(base), _band(cur)
    if b is None or c is None:
        return None
    apart = c[0] > b[1] if direction > 0 else c[1] < b[0]
    word = "apart" if apart else "overlap"
    return apart, f"IQR bands {word}: {b[0]:.4g}-{b[1]:.4g} vs {c[0]:.4g}-{c[1]:.4g} ms"


def _clock_samples(row: pd.Series, clock: str) -> list[float] | None:
    if clock == "wall":
        return parse_samples(row.get(SAMPLES_COLUMN))
    value = row.get(f"_{clock}_samples")
    return [float(v) for v in value] if isinstance(value, (list, tuple)) and len(value) else None


def clock_for(clock: str, base: pd.Series, cur: pd.Series) -> str:
    """The clock a timing metric of this row pair is judged on: ``clock``, or ``wall`` where a
    row lacks what it needs (CPU time, the reference's time, their samples); ``auto``: ``ref``."""
    if clock == "wall":
        return "wall"
    wanted = "ref" if clock == "auto" else clock
    usable = all(math.isfinite(_number(row.get(f"_{wanted}"))) and _number(row.get(f"_{wanted}")) > 0
                 and _clock_samples(row, wanted) for row in (base, cur))
    return wanted if usable else "wall"


def _pct(before: float, after: float) -> str:
    return f"{100 * (after / before - 1):+.1f}%" if before else "-"


def judge_metric(rule: Rule, base: pd.Series, cur: pd.Series, alpha: float,
                 clock: str = DEFAULT_CLOCK) -> dict[str, Any]:
    """One metric of one matched row: change, evidence, verdict.

    A timing metric on the ``ref`` or ``cpu`` clock (:func:`clock_for`) is judged as the current
    run's value at the baseline run's machine speed: the baseline's measured value times the
    judged clock's ratio (its inverse for throughput); ``measured`` keeps the raw value."""
    metric = rule.metric
    b, c = _number(base.get(metric)), _number(cur.get(metric))
    out: dict[str, Any] = {"metric": metric, "baseline": b, "current": c, "rule": rule.limit_text(),
                           "p_value": math.nan, "evidence": "", "clock": "", "measured": c}
    if not (math.isfinite(b) and math.isfinite(c)):
        where = "baseline" if math.isfinite(b) else "current" if math.isfinite(c) else None
        out.update(change=math.nan, change_pct=math.nan, verdict=UNMEASURED,
                   evidence=f"measured in the {where} only" if where else "not measured")
        return out
    used = clock_for(clock, base, cur) if metric in TIMING_METRICS else ""
    drift = ""
    if used in ("ref", "cpu"):
        lb, lc = _number(base[f"_{used}"]), _number(cur[f"_{used}"])
        slowdown = lc / lb
        c = b * slowdown if metric == "latency_ms" else b / slowdown
        out["current"] = c
        if used == "ref":
            drift = (f"CPU/reference {_pct(lb, lc)} (reference "
                     f"{_pct(_number(base.get('ref_cpu_ms')), _number(cur.get('ref_cpu_ms')))}, wall "
                     f"{_pct(b, out['measured'])})")
        else:
            drift = f"CPU time {_pct(lb, lc)} (wall {_pct(b, out['measured'])})"
    out["clock"] = used
    out["change"] = c - b
    out["change_pct"] = 100.0 * (c - b) / abs(b) if b else (0.0 if c == b else math.copysign(math.inf, c - b))
    side = rule.beyond(rule.worse_by(b, c))
    verdict = {1: REGRESSION, -1: IMPROVEMENT, 0: UNCHANGED}[side]
    if side and metric in TIMING_METRICS:
        slower = side  # worse latency and worse (lower) throughput both mean slower
        b_samples, c_samples = _clock_samples(base, used), _clock_samples(cur, used)
        if b_samples and c_samples:
            significant, p, text = _evidence_samples(b_samples, c_samples, slower, alpha)
            out["p_value"] = p
        else:
            banded = _evidence_bands(base, cur, slower)
            significant, text = banded if banded else (True, "threshold only: no samples or IQR in both rows")
        apart = _runs_apart(base, cur, used or "wall", slower)
        if apart is not None:
            significant = significant and apart[0]
            text = f"{text}; {apart[1]}"
        out["evidence"] = f"{drift}; {text}" if drift else text
        if not significant:
            verdict = UNCHANGED
    elif side:
        out["evidence"] = f"past {rule.limit_text()}"
    out["verdict"] = verdict
    return out


def _provenance(base: pd.DataFrame, cur: pd.DataFrame) -> list[str]:
    out = []
    for col in PROVENANCE_COLUMNS:
        if col not in base.columns or col not in cur.columns:
            continue
        b = sorted({_key_value(v) for v in base[col]} - {""})
        c = sorted({_key_value(v) for v in cur[col]} - {""})
        if b and c and b != c:
            out.append(f"{col} differs: baseline {', '.join(b)}; current {', '.join(c)}")
    return out


def compare(baseline: Results, current: Results, rules: Mapping[str, Rule] | None = None,
            alpha: float = DEFAULT_ALPHA, clock: str = DEFAULT_CLOCK) -> Comparison:
    """Match ``baseline`` and ``current`` rows and judge every ruled metric of each match.

    Raises :class:`UsageError` when the inputs share no setting or one holds two rows of a setting.
    """
    import pandas as pd

    rules = dict(rules if rules is not None else parse_rules(None))
    alpha = check_alpha(alpha)
    clock = check_clock(clock)
    bcols, ccols = set(baseline.frame.columns), set(current.frame.columns)
    keys = [c for c in KEY_COLUMNS if c in bcols and c in ccols]
    warnings: list[str] = []
    for col in KEY_COLUMNS:
        if (col in bcols) != (col in ccols):
            side = "baseline" if col in bcols else "current"
            warnings.append(f"column {col} is only in the {side}: rows are not matched on it")
    if "scheme" not in keys:
        raise UsageError("no column to match rows on: both inputs need a scheme column")
    notes: list[str] = []
    for results in (baseline, current):
        if results.skipped:
            notes.append(f"skipped in {results.path}: {', '.join(results.skipped)} (no result rows)")
    base = _prepared(baseline, keys, "baseline", notes, warnings)
    cur = _prepared(current, keys, "current", notes, warnings)
    b_rows = {key: row for key, (_, row) in zip(base["_key"], base.iterrows())}
    c_rows = {key: row for key, (_, row) in zip(cur["_key"], cur.iterrows())}
    common = [k for k in b_rows if k in c_rows]
    every = list(b_rows) + list(c_rows)
    varying = {c for i, c in enumerate(keys) if len({k[i] for k in every}) > 1}

    def label(key: tuple) -> str:
        return _label_parts(dict(zip(keys, key)), varying, keys)

    if not common:
        def examples(frame: pd.DataFrame) -> str:
            return "; ".join(label(k) for k in list(frame["_key"])[:2]) + ("; ..." if len(frame) > 2 else "")

        raise UsageError(f"no common rows between {baseline.path!r} ({len(base)} rows, e.g. {examples(base)}) and "
                         f"{current.path!r} ({len(cur)} rows, e.g. {examples(cur)}); rows are matched on "
                         f"{', '.join(keys)}")
    applicable = [r for r in rules.values() if r.limit is not None and r.metric in bcols and r.metric in ccols]
    for rule in rules.values():
        if rule.limit is not None and rule not in applicable and (rule.metric in bcols or rule.metric in ccols):
            side = "baseline" if rule.metric in bcols else "current"
            warnings.append(f"{rule.metric} is only in the {side}: its rule {rule.text()} is not applied")
    out: list[dict[str, Any]] = []
    unmeasured: dict[str, int] = {}
    for key in common:
        b_row, c_row = b_rows[key], c_rows[key]
        head = {**dict(zip(keys, key)), "setting": label(key)}
        b_status, c_status = status_kind(b_row.get("status")), status_kind(c_row.get("status"))
        if b_status != c_status:
            verdict = REGRESSION if b_status == "ok" else IMPROVEMENT if c_status == "ok" else UNCHANGED
            out.append({**head, "metric": "status", "baseline": _key_value(b_row.get("status")) or "ok",
                        "current": _key_value(c_row.get("status")) or "ok", "change": math.nan,
                        "change_pct": math.nan, "rule": "ok -> oom/error", "p_value": math.nan,
                        "evidence": {REGRESSION: "always a regression", IMPROVEMENT: "now runs"}.get(verdict, "neither ok"),
                        "verdict": verdict})
        if b_status != "ok" or c_status != "ok":
            continue
        for rule in applicable:
            judged = judge_metric(rule, b_row, c_row, alpha, clock)
            if judged["verdict"] == UNMEASURED:
                if judged["evidence"] != "not measured":
                    unmeasured[rule.metric] = unmeasured.get(rule.metric, 0) + 1
                else:
                    continue
            out.append({**head, **judged})
    for key in [k for k in c_rows if k not in b_rows]:
        out.append({**dict(zip(keys, key)), "setting": label(key), "metric": "", "verdict": ADDED,
                    "current": _key_value(c_rows[key].get("status")) or "ok"})
    for key in [k for k in b_rows if k not in c_rows]:
        out.append({**dict(zip(keys, key)), "setting": label(key), "metric": "", "verdict": REMOVED,
                    "baseline": _key_value(b_rows[key].get("status")) or "ok"})
    for metric, count in unmeasured.items():
        warnings.append(f"{metric} is measured on one side only in {count} matched row{'s' if count != 1 else ''}")
    clocks = [o["clock"] for o in out if o.get("metric") in TIMING_METRICS and o.get("clock")]
    if clocks:
        used = {c: clocks.count(c) for c in dict.fromkeys(clocks)}
        text = ", ".join(f"{CLOCK_TEXT[c]} in {n} of {len(clocks)}" for c, n in used.items())
        notes.append(f"timing judged on {text} comparisons (--clock {clock})")
        if clock != "wall" and "wall" in used:
            wanted = "ref" if clock == "auto" else clock
            notes.append(f"the wall clock where a row lacks {CLOCK_NEEDS[wanted]} (profile --samples or --json "
                         "keeps the samples)")
    common_set = set(common)
    mismatches = _provenance(base[[k in common_set for k in base["_key"]]], cur[[k in common_set for k in cur["_key"]]])
    frame = pd.DataFrame(out, columns=keys + RESULT_COLUMNS)
    order = {REGRESSION: 0, IMPROVEMENT: 1, UNCHANGED: 2, UNMEASURED: 3, ADDED: 4, REMOVED: 5}
    frame = frame.iloc[sorted(range(len(frame)), key=lambda i: order[frame["verdict"].iloc[i]])]
    return Comparison(baseline=baseline.path, current=current.path, frame=frame.reset_index(drop=True),
                      key_columns=keys, rules=rules, alpha=alpha, matched=len(common), warnings=warnings,
                      mismatches=mismatches, notes=notes, clock=clock)


def compare_paths(baseline: str, current: str, fail_on: str | None = None, alpha: float = DEFAULT_ALPHA,
                  strict: bool = False, clock: str = DEFAULT_CLOCK) -> Comparison:
    """Read two inputs and compare them; with ``strict`` a provenance mismatch is a UsageError."""
    rules = parse_rules(fail_on)
    alpha = check_alpha(alpha)
    clock = check_clock(clock)
    check_paths([baseline, current])
    result = compare(read_results(baseline), read_results(current), rules, alpha, clock)
    if strict and result.mismatches:
        raise UsageError("the runs differ (--strict): " + "; ".join(result.mismatches))
    return result


# --------------------------------------------------------------------------------------------
# Rendering


def _fmt_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    number = _number(value)
    if not math.isfinite(number):
        return "-"
    if number == 0:
        return "0"
    magnitude = abs(number)
    if magnitude >= 1000:
        return f"{number:,.0f}"
    if magnitude >= 100:
        return f"{number:.1f}"
    return f"{number:.4g}"


def _change_text(row: Mapping[str, Any], arrows: bool = False) -> str:
    """``gflops +30.0%``, ``top1 -2.0 pt``, ``status ok -> oom``."""
    metric = row["metric"]
    if metric == "status":
        return f"status {row['baseline']} -> {row['current']}"
    return f"{metric} {change_cell(row, arrows)}"


def change_cell(row: Mapping[str, Any], arrows: bool = True) -> str:
    """The change as a reader wants it: an arrow, then percent (and points for accuracies)."""
    if row["metric"] == "status":
        return f"{row['baseline']} → {row['current']}" if arrows else f"{row['baseline']} -> {row['current']}"
    change, pct = _number(row.get("change")), _number(row.get("change_pct"))
    if not math.isfinite(change):
        return "-"
    arrow = ("↑ " if change > 0 else "↓ " if change < 0 else "= ") if arrows else ""
    if row["metric"] in ("top1", "top5", "pair_acc"):
        return f"{arrow}{change:+.2f} pt"
    if math.isinf(pct):
        return f"{arrow}from 0"
    return f"{arrow}{pct:+.1f}%" if abs(pct) >= 0.1 or pct == 0 else f"{arrow}{pct:+.2g}%"


def display_frame(result: Comparison, everything: bool = False) -> pd.DataFrame:
    """The rows people read: regressions, improvements, status changes, added/removed (all with
    ``everything``), with the change as text."""
    import pandas as pd

    frame = result.frame
    if not everything:
        frame = frame[frame["verdict"].isin([REGRESSION, IMPROVEMENT, ADDED, REMOVED])
                      | (frame["metric"] == "status")]
    rows = []
    for _, row in frame.iterrows():
        rows.append({"setting": row["setting"], "metric": row["metric"] or "-", "baseline": _fmt_value(row["baseline"]),
                     "current": _fmt_value(row["current"]),
                     "change": change_cell(row, arrows=True) if row["metric"] else "-",
                     "verdict": row["verdict"], "evidence": row["evidence"] if isinstance(row["evidence"], str) else ""})
    return pd.DataFrame(rows, columns=["setting", "metric", "baseline", "current", "change", "verdict", "evidence"])


def counts_text(result: Comparison) -> str:
    """``18 within their rules (gflops 6, params_m 6, latency_ms 6; 2 past the threshold, not significant)``."""
    unchanged = result.rows(UNCHANGED)
    unchanged = unchanged[unchanged["metric"] != "status"]
    per_metric = ", ".join(f"{m} {n}" for m, n in unchanged["metric"].value_counts(sort=False).items())
    noisy = unchanged[unchanged["evidence"].astype(str).str.len() > 0]
    text = f"{len(unchanged)} comparison{'s' if len(unchanged) != 1 else ''} within their rules"
    if per_metric:
        text += f" ({per_metric})"
    if len(noisy):
        text += f"; {len(noisy)} past the threshold without statistical evidence (noise)"
    return text


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _md_table(rows: pd.DataFrame, with_evidence: bool = True) -> list[str]:
    header = ["setting", "metric", "baseline", "current", "change"] + (["evidence"] if with_evidence else [])
    lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---:|---:|" + ("---|" if with_evidence else "")]
    for _, row in rows.iterrows():
        current = _fmt_value(row["current"]) + (" †" if row.get("clock") in ("ref", "cpu") else "")
        change = change_cell(row).replace(" ", "\u00a0")  # no break between the arrow and the number
        setting = str(row["setting"]).replace(" ", "\u00a0")  # a setting on one line
        cells = [f"`{setting}`", row["metric"], _fmt_value(row["baseline"]), current,
                 f"**{change}**" if row["verdict"] == REGRESSION else change]
        if with_evidence:
            evidence = row["evidence"] if isinstance(row["evidence"], str) else ""
            cells.append(evidence or f"past {row['rule']}")
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    return lines


def comparison_markdown(result: Comparison, title: str = "vattn compare") -> str:
    """A pull-request comment / ``$GITHUB_STEP_SUMMARY``: regressions first (arrows, percent),
    then improvements, unchanged counts, added and removed rows, warnings, and the rules."""
    regressions, improvements = result.regressions, result.improvements
    n_reg = len(regressions)
    if n_reg:
        head = (f"### ❌ {title}: {n_reg} regression{'s' if n_reg != 1 else ''} in "
                f"{len(result.regressed_settings())} of {result.matched} rows")
    else:
        head = f"### ✅ {title}: no regression in {result.matched} rows"
    added, removed = result.rows(ADDED), result.rows(REMOVED)
    matched = (f"Baseline `{result.baseline}`, current `{result.current}`: {result.matched} rows matched on "
               f"{', '.join(result.key_columns)}; {len(added)} added, {len(removed)} removed.")
    lines = [head, "", matched, ""]
    if n_reg:
        lines += ["#### Regressions", ""] + _md_table(regressions) + [""]
    if len(improvements):
        lines += ["#### Improvements", ""] + _md_table(improvements) + [""]
    others = result.frame[(result.frame["metric"] == "status") & (result.frame["verdict"] == UNCHANGED)]
    if len(others):
        lines += ["#### Status changes (neither ok)", ""] + _md_table(others) + [""]
    lines += ["#### Unchanged", "", counts_text(result) + ".", ""]
    if len(added) or len(removed):
        lines += [f"#### Added ({len(added)}) and removed ({len(removed)}) rows", ""]
        lines += [f"- added: `{s}` ({st})" for s, st in zip(added["setting"], added["current"])]
        lines += [f"- removed: `{s}` ({st})" for s, st in zip(removed["setting"], removed["baseline"])]
        lines.append("")
    warnings = [f"⚠️ {m}" for m in result.mismatches] + result.warnings
    if warnings:
        lines += ["#### Warnings", ""] + [f"- {_md_escape(n)}" for n in warnings] + [""]
    if result.notes:
        lines += ["#### Notes", ""] + [f"- {_md_escape(n)}" for n in result.notes] + [""]
    footer = (f"<sub>Rules (worse direction): {rules_text(result.rules)}. A timing change (latency_ms, "
              f"throughput) counts only with evidence: a one-sided Mann-Whitney U test on its samples at "
              f"p < {result.alpha:g}, or without samples non-overlapping IQR bands, and with several runs a side every "
              "current run past every baseline run. Timing clock "
              f"(--clock {result.clock}): where both rows have them, the step's CPU time in units of a fixed "
              "reference workload timed beside it (so a machine that slowed down between the runs moves both), "
              "and the current value shown is its latency at the baseline's machine speed; otherwise the wall "
              "clock. A status change from ok to oom/error is always a regression.</sub>")
    adjusted = result.frame[result.frame["clock"].isin(["ref", "cpu"]) & result.frame["verdict"].isin(
        [REGRESSION, IMPROVEMENT])]
    if len(adjusted):
        lines += ["† the current run's value at the baseline run's machine speed (the measured wall-clock change "
                  "is in the evidence).", ""]
    lines += [footer, ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# History


@dataclass
class History:
    """Each metric per setting across runs (files in time order), and where the gate would fail."""

    paths: list[str]
    points: pd.DataFrame  # run, label, setting, metric, value, low, high, status, failed, verdict
    comparisons: list[Comparison]  # run i against run i-1 (i >= 1)
    metrics: list[str]
    key_columns: list[str]
    latency_clock: str = "wall"  # what the latency points show: the clock the gate judged on


def _history_clock(clock: str, frames: Sequence[pd.DataFrame]) -> str:
    """``ref`` (or ``cpu``) when every timed row of every run has it, so each setting's line is on
    the clock the gate judged it on; otherwise ``wall``."""
    wanted = {"auto": "ref", "ref": "ref", "cpu": "cpu"}.get(clock)
    if wanted is None:
        return "wall"
    for frame in frames:
        for _, row in frame.iterrows():
            if math.isfinite(_number(row.get("latency_ms"))) and not (
                    math.isfinite(_number(row.get(f"_{wanted}"))) and _clock_samples(row, wanted)):
                return "wall"
    return wanted


def history(paths: Sequence[str], fail_on: str | None = None, alpha: float = DEFAULT_ALPHA,
            clock: str = DEFAULT_CLOCK) -> History:
    """Read every file, compare each with the one before, and gather the points to plot."""
    import pandas as pd

    rules = parse_rules(fail_on)
    alpha = check_alpha(alpha)
    check_paths(paths)
    inputs = [read_results(p) for p in paths]
    comparisons: list[Comparison] = []
    for before, after in itertools.pairwise(inputs):
        try:
            comparisons.append(compare(before, after, rules, alpha, clock))
        except UsageError as exc:
            raise UsageError(f"{after.path} against {before.path}: {exc}") from None
    columns = set.intersection(*(set(r.frame.columns) for r in inputs))
    keys = [c for c in KEY_COLUMNS if c in columns]
    metrics = [m for m, r in rules.items() if r.limit is not None and any(m in x.frame.columns for x in inputs)]
    failed: dict[tuple, str] = {}  # (run, key, metric) -> verdict of that comparison
    for run, comp in enumerate(comparisons, start=1):
        for _, row in comp.frame[comp.frame["verdict"].isin([REGRESSION, IMPROVEMENT])].iterrows():
            key = tuple(_key_value(row.get(c, "")) for c in keys)
            for metric in (metrics if row["metric"] == "status" else [row["metric"]]):
                failed.setdefault((run, key, metric), row["verdict"])
    rows = []
    prepared = [_prepared(results, keys, "run", []) for results in inputs]  # runs of a setting pooled
    all_keys = [key for frame in prepared for key in frame["_key"]]
    varying = {c for i, c in enumerate(keys) if len({k[i] for k in all_keys}) > 1}
    labels = [_run_label(p) for p in paths]
    latency_clock = _history_clock(check_clock(clock), prepared)
    for run, frame in enumerate(prepared):
        for _, r in frame.iterrows():
            key = r["_key"]
            setting = _label_parts(dict(zip(keys, key)), varying, keys)
            band = _band(r)
            for metric in metrics:
                value = _number(r.get(metric))
                low = high = math.nan
                if metric == "latency_ms" and latency_clock != "wall" and math.isfinite(value):
                    import statistics

                    value = _number(r.get(f"_{latency_clock}"))
                    samples = _clock_samples(r, latency_clock) or []
                    if len(samples) >= 2:
                        low, _, high = statistics.quantiles(samples, n=4, method="inclusive")
                elif metric == "latency_ms" and band:
                    low, high = band
                rows.append({"run": run, "label": labels[run], "setting": setting, "metric": metric,
                             "value": value, "low": low, "high": high, "status": status_kind(r.get("status")),
                             "verdict": failed.get((run, key, metric), "")})
    points = pd.DataFrame(rows, columns=["run", "label", "setting", "metric", "value", "low", "high", "status",
                                         "verdict"])
    points["failed"] = points["verdict"] == REGRESSION
    return History(list(paths), points, comparisons, metrics, keys, latency_clock)


def _run_label(path: str) -> str:
    p = Path(path)
    stem = p.stem if p.is_file() else p.name
    if stem in ("profile", "tokens", "schemes", "results", "eval") and p.parent.name:
        return p.parent.name
    return stem


def history_frame(hist: History) -> pd.DataFrame:
    """Every comparison of the history in one long frame, ``run`` naming the later file."""
    import pandas as pd

    frames = [c.frame.assign(run=hist.paths[i + 1]) for i, c in enumerate(hist.comparisons)]
    if not frames:
        return pd.DataFrame(columns=["run"] + RESULT_COLUMNS)
    frame = pd.concat(frames, ignore_index=True)
    return frame[["run"] + [c for c in frame.columns if c != "run"]]
