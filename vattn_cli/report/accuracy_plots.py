"""Accuracy against compute: the figure and the table of ``vattn ablate schemes`` / ``pos-embed``.

x = GFLOPs per view (log), y = top-1; one colour per scheme (or position embedding), one marker
per token setting (frames x size), one panel per dataset, the Pareto frontier (the runs no
other run beats on both cost and accuracy) drawn as a step line, error bars (one standard
deviation over seeds) where a setting was trained with several seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from vattn_cli.report import plots

_TOKEN_MARKERS = ("o", "s", "^", "D", "v", "P", "*", "X")


def aggregate(frame: pd.DataFrame, label_by: str = "scheme") -> pd.DataFrame:
    """One row per dataset x label x token setting: mean over seeds (``top1_std``, ``n`` beside)."""
    if frame.empty:
        return frame.assign(top1_std=[], n=[], setting=[])
    keys = ["dataset", label_by, "frames", "size"]
    ok = frame[frame["status"].astype(str) == "ok"] if "status" in frame else frame
    grouped = ok.groupby(keys, sort=False)
    table = grouped.agg(top1=("top1", "mean"), top1_std=("top1", "std"), n=("top1", "size"),
                        gflops=("gflops", "mean"), params_m=("params_m", "mean"),
                        pair_acc=("pair_acc", "mean"), latency_ms=("latency_ms", "mean")).reset_index()
    table["setting"] = [f"{f}x{s}" for f, s in zip(table["frames"], table["size"])]
    return table


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """The rows not dominated by another (lower or equal GFLOPs and higher top-1), by GFLOPs."""
    best = -np.inf
    keep = []
    for index, row in points.sort_values(["gflops", "top1"], ascending=[True, False]).iterrows():
        if row["top1"] > best:
            keep.append(index)
            best = row["top1"]
    return points.loc[keep]


def pareto_by_dataset(frame: pd.DataFrame, label_by: str = "scheme") -> dict[str, list[str]]:
    """Dataset -> the Pareto-optimal points, as ``label frames x size``."""
    table = aggregate(frame, label_by)
    return {str(dataset): [f"{row[label_by]} {row['setting']}" for _, row in pareto_front(rows).iterrows()]
            for dataset, rows in table.groupby("dataset", sort=False)}


def accuracy_vs_gflops(frame: pd.DataFrame, stem: str | Path, *, title: str = "Accuracy against compute",
                       label_by: str = "scheme") -> list[Path]:
    """Write ``stem.png`` and ``stem.svg``; returns the paths (none when there are no rows)."""
    table = aggregate(frame, label_by)
    if table.empty:
        return []
    datasets = list(dict.fromkeys(table["dataset"]))
    styles = plots.group_styles([str(v) for v in dict.fromkeys(table[label_by])])
    settings = list(dict.fromkeys(table["setting"]))
    markers = {s: _TOKEN_MARKERS[i % len(_TOKEN_MARKERS)] for i, s in enumerate(settings)}
    fig, axes = plots.panels(len(datasets), suptitle=title)
    for ax, dataset in zip(axes, datasets):
        rows = table[table["dataset"] == dataset]
        for _, row in rows.iterrows():
            style = styles[str(row[label_by])]
            err = row["top1_std"] if row["n"] > 1 and np.isfinite(row["top1_std"]) else None
            ax.errorbar([row["gflops"]], [row["top1"]], yerr=None if err is None else [[err], [err]],
                        color=style["color"], marker=markers[row["setting"]], markersize=7, linestyle="none",
                        capsize=3)
        front = pareto_front(rows)
        ax.step(front["gflops"], front["top1"], where="post", color="0.35", linestyle="--", linewidth=1.1,
                zorder=0)
        chance = frame.loc[frame["dataset"] == dataset, "chance_top1"].dropna() if "chance_top1" in frame else []
        if len(chance):
            ax.axhline(float(chance.iloc[0]), color="0.6", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ticks = plots._merge_close(rows["gflops"], rel=0.3)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.2g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.12, y=0.1)
        ax.set_xlabel("GFLOPs per view (multiply-adds, log)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(str(dataset), pad=10)
        ax.grid(True, which="both", alpha=0.25)
    handles = [Line2D([], [], color=s["color"], marker="o", linestyle="none", label=name) for name, s in styles.items()]
    handles += [Line2D([], [], color="0.3", marker=mk, linestyle="none", label=f"{s} frames x px")
                for s, mk in markers.items()]
    handles += [Line2D([], [], color="0.35", linestyle="--", label="Pareto frontier"),
                Line2D([], [], color="0.6", linestyle=":", label="chance")]
    per_row = max(1, int(fig.get_figwidth() // 1.5))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), per_row), frameon=False)
    return plots.save_figure(fig, stem)


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def summary_markdown(frame: pd.DataFrame, pareto: dict[str, list[str]], title: str, figures: Sequence[Path],
                     label_by: str = "scheme") -> str:
    """The paper's Table 1 shape: one line per scheme and token setting, params, GFLOPs per view,
    top-1 per dataset (and the reversal-pair accuracy where the data has reversal pairs)."""
    table = aggregate(frame, label_by)
    if table.empty:
        return f"# {title}\n\nNo finished runs.\n"
    datasets = list(dict.fromkeys(table["dataset"]))
    with_pairs = [d for d in datasets if table.loc[table["dataset"] == d, "pair_acc"].notna().any()]
    header = [label_by, "frames x size", "params (M)", "GFLOPs/view"] + [f"{d} top-1" for d in datasets] \
        + [f"{d} reversal-pair acc" for d in with_pairs]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (label, setting), rows in table.groupby([label_by, "setting"], sort=False):
        by = rows.set_index("dataset")
        cells = [str(label), setting, _fmt(rows["params_m"].mean()), _fmt(rows["gflops"].mean())]
        for d in datasets:
            if d not in by.index:
                cells.append("-")
                continue
            r = by.loc[d]
            std = f" ± {r['top1_std']:.1f}" if r["n"] > 1 and np.isfinite(r["top1_std"]) else ""
            cells.append(f"{r['top1']:.1f}{std}")
        cells += [_fmt(by.loc[d, "pair_acc"]) if d in by.index else "-" for d in with_pairs]
        lines.append("| " + " | ".join(cells) + " |")
    chance = frame.groupby("dataset")["chance_top1"].first() if "chance_top1" in frame else {}
    lines += ["", "Top-1 in percent on each dataset's val split (mean over seeds, ± one standard deviation when "
              "several); chance: " + ", ".join(f"{d} {_fmt(float(chance[d]))}%" for d in datasets if d in chance)
              + (". Reversal-pair accuracy: share of clips of a time-reversal class pair whose true class outscores "
                 "its reversal; chance 50%." if with_pairs else "."), "", "## Pareto-optimal (GFLOPs vs top-1)", ""]
    lines += [f"- {d}: " + ", ".join(points) for d, points in pareto.items()]
    if figures:
        lines += ["", "Figure: " + ", ".join(Path(f).name for f in figures)]
    return "\n".join(lines) + "\n"
