"""The figure of ``vattn compare --history``: each metric per setting across runs, gate failures marked.

One panel per metric (GFLOPs, parameters, latency with its inter-quartile band, memory, accuracy),
runs on x in time order, one line per setting in a fixed colour and marker. A point that the gate
would have failed against the run before is ringed in red (with its change), one it counts as an
improvement is ringed in green; a row that ran out of memory or failed is an ``x`` at the top edge,
as in the other figures (:mod:`vattn_cli.report.plots`, whose house style this follows).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter

from vattn_cli.report import plots
from vattn_cli.report.compare import IMPROVEMENT, REGRESSION, History

#: Panel titles and axis labels with units.
LABELS = {
    "gflops": ("GFLOPs", "GFLOPs per clip (multiply-adds)"),
    "attn_gflops": ("attention GFLOPs", "attention GFLOPs per clip"),
    "params_m": ("parameters", "parameters (M)"),
    "latency_ms": ("latency", "latency (ms, median; bars: IQR)"),
    "throughput": ("throughput", "throughput (clips/s)"),
    "peak_mem_mb": ("peak memory", "peak memory (MB)"),
    "mfu": ("MFU", "model FLOP utilisation"),
    "top1": ("top-1", "top-1 (%)"),
    "top5": ("top-5", "top-5 (%)"),
    "pair_acc": ("reversal-pair accuracy", "reversal-pair accuracy (%)"),
}
#: The latency panel on the clock the gate judged (``--clock``): CPU time, or CPU time in units of
#: the reference workload timed beside each step (a machine that slowed down moves neither).
CLOCK_LABELS = {
    "ref": ("latency (CPU time / reference)", "step CPU time in reference-workload units\n(median; bars: IQR)"),
    "cpu": ("latency (CPU time)", "step CPU time (ms, median; bars: IQR)"),
}
FAIL_COLOR = "#d62728"
GOOD_COLOR = "#2ca02c"
_RING = {"marker": "o", "markersize": 15, "markerfacecolor": "none", "markeredgewidth": 2.2, "linestyle": "none"}


def _grid(count: int, title: str) -> tuple[Figure, list]:
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(max(5.2 * cols, 6.5), 4.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=12)
    return fig, list(axes[:count])


def _change_label(before: float, after: float, metric: str) -> str:
    if metric in ("top1", "top5", "pair_acc"):
        return f"{after - before:+.1f} pt"
    if before == 0:
        return "from 0"
    return f"{100 * (after - before) / abs(before):+.0f}%"


def _change_labels(ax, labelled: dict[int, list[tuple[float, str, str]]], gap_pt: float = 11.0) -> None:
    """Each ringed point's change beside it, labels at one run nudged apart so none overlap."""
    to_pt = 72.0 / ax.figure.dpi
    for run, entries in labelled.items():
        placed: list[float] = []  # label heights in points, bottom to top
        for value, text, color in sorted(entries):
            y = ax.transData.transform((run, value))[1] * to_pt + 6
            if placed and y < placed[-1] + gap_pt:
                y = placed[-1] + gap_pt
            placed.append(y)
            offset = y - ax.transData.transform((run, value))[1] * to_pt
            ax.annotate(text, (run, value), textcoords="offset points", xytext=(10, offset), color=color,
                        fontsize=8.5, fontweight="bold", va="bottom")


def history_figure(hist: History, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg``; returns the paths."""
    points = hist.points
    metrics = [m for m in hist.metrics if points.loc[points["metric"] == m, "value"].notna().any()]
    settings = list(dict.fromkeys(points["setting"]))
    styles = plots.group_styles(settings)
    runs = list(range(len(hist.paths)))
    labels = [str(points.loc[points["run"] == r, "label"].iloc[0]) if (points["run"] == r).any() else str(r)
              for r in runs]
    n_fail = int(points.loc[points["failed"], ["run", "setting"]].drop_duplicates().shape[0])
    title = (f"vattn compare --history: {len(runs)} runs, {len(settings)} settings; the gate fails "
             f"{n_fail} time{'s' if n_fail != 1 else ''} (red rings)")
    fig, axes = _grid(max(1, len(metrics)), title)
    any_oom = any_good = any_fail = False
    pending = []  # (axes, its change labels): placed once the layout is final
    for ax, metric in zip(axes, metrics or [None]):
        if metric is None:
            plots.empty_panel(ax, "no metric", "no ruled metric in these files")
            break
        rows = points[points["metric"] == metric]
        positive = rows.loc[(rows["status"] == "ok") & (rows["value"] > 0), "value"]
        log = len(positive) > 0 and positive.max() / positive.min() > 20
        stacked: dict[int, int] = {}
        labelled: dict[int, list[tuple[float, str, str]]] = {}  # run -> (value, text, colour) of change labels
        for setting in settings:
            style = styles[setting]
            mine = rows[rows["setting"] == setting].sort_values("run")
            if mine.empty:
                continue
            ok = mine[(mine["status"] == "ok") & mine["value"].notna()]
            if len(ok):
                ax.plot(ok["run"], ok["value"], color=style["color"], marker=style["marker"], markersize=5,
                        linewidth=1.6, label=setting)
                banded = ok[ok["low"].notna() & ok["high"].notna()]
                if len(banded):
                    ax.errorbar(banded["run"], banded["value"],
                                yerr=[banded["value"] - banded["low"], banded["high"] - banded["value"]],
                                color=style["color"], linestyle="none", capsize=3, linewidth=1, alpha=0.7)
            for _, point in mine[mine["status"] != "ok"].iterrows():
                level = 1.0 - 0.045 * stacked.get(int(point["run"]), 0)
                stacked[int(point["run"])] = stacked.get(int(point["run"]), 0) + 1
                ax.plot([point["run"]], [level], color=style["color"], transform=ax.get_xaxis_transform(),
                        clip_on=False, **plots.OOM_STYLE)
                any_oom = True
            by_run = {int(r["run"]): r for _, r in mine.iterrows()}
            for _, point in mine[mine["verdict"].isin([REGRESSION, IMPROVEMENT])].iterrows():
                bad = point["verdict"] == REGRESSION
                color = FAIL_COLOR if bad else GOOD_COLOR
                any_fail |= bad
                any_good |= not bad
                if point["status"] != "ok" or not np.isfinite(point["value"]):
                    ax.plot([point["run"]], [1.0], color=color, transform=ax.get_xaxis_transform(), clip_on=False,
                            **_RING)
                    continue
                ax.plot([point["run"]], [point["value"]], color=color, zorder=5, **_RING)
                before = by_run.get(int(point["run"]) - 1)
                if before is not None and np.isfinite(before["value"]) and before["status"] == "ok":
                    labelled.setdefault(int(point["run"]), []).append(
                        (float(point["value"]), _change_label(float(before["value"]), float(point["value"]), metric),
                         color))
        short, long = LABELS.get(metric, (metric, metric))
        if metric == "latency_ms" and hist.latency_clock in CLOCK_LABELS:
            short, long = CLOCK_LABELS[hist.latency_clock]
        ax.set_title(short, pad=10)
        ax.set_ylabel(long)
        ax.set_xlabel("run (time order)")
        ax.xaxis.set_major_locator(FixedLocator(runs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: labels[int(v)] if 0 <= int(v) < len(labels) else ""))
        for tick in ax.get_xticklabels():
            tick.set_rotation(30)
            tick.set_ha("right")
        ax.set_xlim(-0.4, len(runs) - 0.6 + 0.01)
        ax.margins(y=0.15)
        ax.grid(True, alpha=0.3)
        if log:
            ax.set_yscale("log")
            plots._readable_log_y(ax)
        pending.append((ax, labelled))
    handles = [Line2D([], [], color=s["color"], marker=s["marker"], linewidth=1.6, label=name)
               for name, s in styles.items()]
    if any_fail:
        handles.append(Line2D([], [], color=FAIL_COLOR, label="gate fails vs the run before", **_RING))
    if any_good:
        handles.append(Line2D([], [], color=GOOD_COLOR, label="improvement vs the run before", **_RING))
    if any_oom:
        handles.append(Line2D([], [], color="0.2", label="oom / error", **plots.OOM_STYLE))
    per_row = max(1, int(fig.get_figwidth() // 2.6))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), per_row), frameon=False)
    fig.draw_without_rendering()  # the constrained layout, so the labels' spacing is in final points
    for ax, labelled in pending:
        _change_labels(ax, labelled)
    return plots.save_figure(fig, stem)


def history_summary(hist: History) -> pd.DataFrame:
    """One row per comparison of the history: which run, against which, and what the gate says."""
    rows = []
    for i, comp in enumerate(hist.comparisons):
        regressions = comp.regressions
        rows.append({"run": hist.paths[i + 1], "against": hist.paths[i], "matched": comp.matched,
                     "regressions": len(regressions), "improvements": len(comp.improvements),
                     "failing": "; ".join(f"{s}" for s in comp.regressed_settings()) or "-"})
    return pd.DataFrame(rows, columns=["run", "against", "matched", "regressions", "improvements", "failing"])
